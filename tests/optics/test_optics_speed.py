"""The fast paths of the optics: reused work buffers, the byte-bounded kernel cache, the
polar/intensity helpers — same values and gradients as the plain formulas; the bench command."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from dmicro_hw.optics.fields import intensity, polar, unit_phasor
from dmicro_hw.optics.propagation import (
    KERNELS,
    _asm_transfer_np,
    angular_spectrum,
    asm_transfer,
    set_kernel_cache_limit,
)

WL, PITCH = 632.8e-9, 0.5e-6


def _plain_padded(field: torch.Tensor, z: float) -> torch.Tensor:
    n = field.shape[-1]
    p = n // 2
    work = F.pad(field, (p, n - p, p, n - p))
    h = torch.from_numpy(_asm_transfer_np(2 * n, 2 * n, PITCH, WL, z, True))
    return torch.fft.ifft2(torch.fft.fft2(work) * h)[..., p : p + n, p : p + n]


def _field(b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(*torch.randn(2, b, n, n, generator=g))


def test_padded_asm_reuses_buffers_without_aliasing_its_results():
    a, b = _field(2, 32, 0), _field(2, 32, 1)
    out_a = angular_spectrum(a, 5e-6, WL, PITCH)
    out_b = angular_spectrum(b, 5e-6, WL, PITCH)  # same shape: same work buffers
    torch.testing.assert_close(out_a, _plain_padded(a, 5e-6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_b, _plain_padded(b, 5e-6), rtol=1e-5, atol=1e-5)
    odd = _field(1, 33, 2)  # odd sizes pad asymmetrically
    torch.testing.assert_close(
        angular_spectrum(odd, 5e-6, WL, PITCH), _plain_padded(odd, 5e-6), rtol=1e-5, atol=1e-5
    )


def test_padded_asm_gradient_is_the_plain_one():
    x = _field(2, 24, 3)
    w = _field(2, 24, 4)
    grads = []
    for fn in (lambda f: angular_spectrum(f, 8e-6, WL, PITCH), lambda f: _plain_padded(f, 8e-6)):
        leaf = x.clone().requires_grad_(True)
        out = fn(leaf)
        (intensity(out) * w.real).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_kernel_cache_is_bounded_in_bytes_and_complex64():
    old = KERNELS.max_bytes
    try:
        KERNELS.clear()
        one = 64 * 64 * 8  # complex64
        set_kernel_cache_limit(3 * one)
        for i in range(10):
            h = asm_transfer((64, 64), PITCH, WL, 1e-6 * (i + 1))
            assert h.dtype == torch.complex64
        assert len(KERNELS) == 3 and KERNELS.nbytes <= 3 * one
        # the newest kernel is still cached, the oldest evicted
        assert asm_transfer((64, 64), PITCH, WL, 1e-6 * 10) is h
        assert KERNELS.hits == 1
    finally:
        set_kernel_cache_limit(old)
        KERNELS.clear()


def test_transfer_phase_is_float64_accurate():
    z = 1e-3  # k·z ≈ 1e4 rad: float32 would lose ~1e-3 rad
    h = asm_transfer((16, 16), PITCH, WL, z, band_limit=False)
    assert (
        abs(float(torch.angle(h[0, 0])) - math.remainder(2 * math.pi * z / WL, 2 * math.pi)) < 1e-5
    )


def test_polar_and_intensity_helpers_match_torch():
    g = torch.Generator().manual_seed(5)
    amp, ph = torch.rand(2, 7, 7, generator=g), 10 * torch.randn(2, 7, 7, generator=g)
    torch.testing.assert_close(polar(amp, ph), torch.polar(amp, ph), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(unit_phasor(ph), torch.polar(torch.ones_like(ph), ph))
    f = torch.polar(amp, ph)
    torch.testing.assert_close(intensity(f), f.abs().square(), rtol=1e-5, atol=1e-6)


def test_bench_optics_cli_writes_table_and_json(tmp_path, capsys):
    from dmicro_hw.cli import _run, app

    out = tmp_path / "o.json"
    args = ["bench", "optics", "--sizes", "32", "--rounds", "1", "-o", str(out)]
    assert _run(app, args) == 0
    assert "× floor" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    cases = {row["case"]: row for row in rows}
    assert {"ASM padded", "ASM unpadded", "LFF encoder", "floor: 2 FFTs N²"} <= set(cases)
    for name in ("ASM padded", "ASM unpadded", "LFF encoder"):
        assert cases[name]["rel_error"] < 1e-5 and cases[name]["x_floor"] > 0
