"""``dmicro bench optics``: our propagators and the LFF encoder against the two-FFT floor.

Every case runs on the same seeded input; rounds are interleaved (case A, B, C, A, B, C, …) and
the minimum over rounds is kept, so a busy machine slows every case alike and the *ratios* stay
meaningful. The floor of a propagator is what any FFT-based one must do: one forward and one
inverse FFT of the (padded) grid into preallocated outputs. ``before`` rows re-run the previous
implementation (fresh padded buffers per call, ``torch.polar``, ``.abs().square()``) in the same
process for a before/after ratio. Accuracy is the relative L2 error against a float64/complex128
NumPy reference of the same operator.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmicro_hw.config import OpticsConfig
from dmicro_hw.errors import ConfigError
from dmicro_hw.optics.fourier4f import LFFEncoder
from dmicro_hw.optics.propagation import angular_spectrum, asm_transfer

WAVELENGTH_M = 632.8e-9
PITCH_M = 316.4e-9


@dataclass
class Case:
    """One timed operation: ``fn()`` runs it once; ``floor`` names its floor case."""

    name: str
    size: int
    fn: Callable[[], object]
    floor: str | None = None
    rel_error: float | None = None
    ms: float = math.inf


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def _rel_up_to_phase(a: np.ndarray, ref: np.ndarray) -> float:
    """Relative L2 error after the best global phase factor (a constant exp(ikz) piston is a
    convention, not an error)."""
    c = np.vdot(a, ref)
    return _rel(a * (c / abs(c)) if abs(c) > 0 else a, ref)


def _asm_reference(field: np.ndarray, z: float, pad: bool) -> np.ndarray:
    """complex128 band-limited ASM with a float64 transfer function (no complex64 anywhere)."""
    n = field.shape[-1]
    m = 2 * n if pad else n
    fy = np.fft.fftfreq(m, d=PITCH_M)
    fyy, fxx = np.meshgrid(fy, fy, indexing="ij")
    arg = 1.0 / WAVELENGTH_M**2 - fxx**2 - fyy**2
    keep = arg > 0
    df = 1.0 / (m * PITCH_M)
    f_lim = 1.0 / (WAVELENGTH_M * math.sqrt((2 * df * abs(z)) ** 2 + 1))
    keep &= (np.abs(fxx) <= f_lim) & (np.abs(fyy) <= f_lim)
    h = np.where(keep, np.exp(1j * 2 * np.pi * z * np.sqrt(np.where(keep, arg, 0.0))), 0)
    if pad:
        p = n // 2
        g = np.zeros(field.shape[:-2] + (m, m), np.complex128)
        g[..., p : p + n, p : p + n] = field
        return np.fft.ifft2(np.fft.fft2(g) * h)[..., p : p + n, p : p + n]
    return np.fft.ifft2(np.fft.fft2(field) * h)


def _asm_before(field: torch.Tensor, z: float) -> torch.Tensor:
    """The previous padded ASM: F.pad and fresh spectra every call."""
    n = field.shape[-1]
    p = n // 2
    work = F.pad(field, (p, n - p, p, n - p))
    h = asm_transfer(tuple(work.shape[-2:]), PITCH_M, WAVELENGTH_M, z)
    return torch.fft.ifft2(torch.fft.fft2(work) * h)[..., p : p + n, p : p + n]


def _lff_before(enc: LFFEncoder, phase: torch.Tensor) -> torch.Tensor:
    """The previous encoder hot path: torch.polar and .abs().square()."""
    field = torch.polar(torch.ones_like(phase), phase)
    h = torch.polar(enc.filter.amplitude(), enc.filter.phase)
    h = torch.fft.ifftshift(h, dim=(-2, -1))
    return torch.fft.ifft2(torch.fft.fft2(field) * h).abs().square()


def build_cases(size: int, batch: int, distance_m: float, seed: int = 0) -> list[Case]:
    """The cases for one field size, with their accuracy already measured."""
    g = torch.Generator().manual_seed(seed)
    re, im = torch.randn(2, batch, size, size, generator=g, dtype=torch.float64)
    field64 = torch.complex(re, im)
    field = field64.to(torch.complex64)
    phase = torch.rand(batch, size, size, generator=g) * 2 * math.pi
    cases: list[Case] = []

    def floor_case(m: int, name: str) -> Case:
        x = torch.zeros(batch, m, m, dtype=torch.complex64)
        x[..., :size, :size] = field
        spec = torch.empty_like(x)
        out = torch.empty_like(x)

        def run() -> None:
            torch.fft.fft2(x, out=spec)
            torch.fft.ifft2(spec, out=out)

        return Case(name, size, run)

    cases.append(floor_case(size, "floor: 2 FFTs N²"))
    cases.append(floor_case(2 * size, "floor: 2 FFTs (2N)²"))
    for pad in (False, True):
        ref = _asm_reference(field64.numpy(), distance_m, pad)
        ours = angular_spectrum(field, distance_m, WAVELENGTH_M, PITCH_M, pad=pad)
        cases.append(
            Case(
                f"ASM {'padded' if pad else 'unpadded'}",
                size,
                lambda pad=pad: angular_spectrum(field, distance_m, WAVELENGTH_M, PITCH_M, pad=pad),
                "floor: 2 FFTs (2N)²" if pad else "floor: 2 FFTs N²",
                _rel(ours.numpy(), ref),
            )
        )
        if pad:
            before = _asm_before(field, distance_m)
            cases.append(
                Case(
                    "ASM padded (before)",
                    size,
                    lambda: _asm_before(field, distance_m),
                    "floor: 2 FFTs (2N)²",
                    _rel(before.numpy(), ref),
                )
            )
    # forward + backward of the padded ASM (training a D2NN)
    leaf = field.clone().requires_grad_(True)

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf.grad = None
            out = fn(leaf)
            (out.real.square() + out.imag.square()).sum().backward()

        return run

    cases.append(
        Case(
            "ASM padded fwd+bwd",
            size,
            fwd_bwd(lambda f: angular_spectrum(f, distance_m, WAVELENGTH_M, PITCH_M)),
        )
    )
    cases.append(
        Case("ASM padded fwd+bwd (before)", size, fwd_bwd(lambda f: _asm_before(f, distance_m)))
    )
    # the LFF encoder (no sensor): phasor → FFT → filter → IFFT → intensity
    enc = LFFEncoder(OpticsConfig(field_size=size, compression=4), init="random")
    with torch.no_grad():
        h = enc.filter().detach()
    ref = (
        np.abs(
            np.fft.ifft2(
                np.fft.fft2(np.exp(1j * phase.double().numpy()))
                * np.fft.ifftshift(h.numpy().astype(np.complex128))
            )
        )
        ** 2
    )
    with torch.no_grad():
        ours = enc.intensity(phase)
        before = _lff_before(enc, phase)
    cases.append(
        Case(
            "LFF encoder",
            size,
            torch.no_grad()(lambda: enc.intensity(phase)),
            "floor: 2 FFTs N²",
            _rel(ours.numpy(), ref),
        )
    )
    cases.append(
        Case(
            "LFF encoder (before)",
            size,
            torch.no_grad()(lambda: _lff_before(enc, phase)),
            "floor: 2 FFTs N²",
            _rel(before.numpy(), ref),
        )
    )
    return cases


def run_cases(cases: list[Case], rounds: int, min_seconds: float = 0.02) -> None:
    """Time every case: warm up, pick repetitions per round, interleave ``rounds`` rounds, keep
    the minimum per-call time (ms)."""
    reps: dict[int, int] = {}
    for i, c in enumerate(cases):
        c.fn()
        t0 = time.perf_counter()
        c.fn()
        dt = time.perf_counter() - t0
        reps[i] = max(1, int(min_seconds / max(dt, 1e-6)))
    for _ in range(rounds):
        for i, c in enumerate(cases):
            t0 = time.perf_counter()
            for _ in range(reps[i]):
                c.fn()
            c.ms = min(c.ms, 1e3 * (time.perf_counter() - t0) / reps[i])


def bench_optics(
    sizes: list[int], batch: int = 1, rounds: int = 10, distance_m: float = 20e-6
) -> list[dict]:
    """Rows (one per case and size): ms per call, ratio to its floor and to its ``before``
    version, relative error to the float64 reference."""
    rows: list[dict] = []
    for n in sizes:
        cases = build_cases(n, batch, distance_m)
        run_cases(cases, rounds)
        by = {c.name: c for c in cases}
        for c in cases:
            before = by.get(f"{c.name} (before)")
            rows.append(
                {
                    "size": n,
                    "batch": batch,
                    "case": c.name,
                    "ms": round(c.ms, 4),
                    "x_floor": round(c.ms / by[c.floor].ms, 3) if c.floor else None,
                    "speedup_vs_before": round(before.ms / c.ms, 3) if before else None,
                    "rel_error": c.rel_error,
                }
            )
    return rows


# ----------------------------------------------------------------------------- peers
PEER_RUNNER = Path(__file__).with_name("optics_peers_runner.py")


def peer_python(venv: Path) -> Path:
    """The python of a peer venv (made by scripts/install-optics-peers.sh)."""
    for rel in ("bin/python", "Scripts/python.exe"):
        p = Path(venv) / rel
        if p.exists():
            return p
    raise ConfigError(
        f"--peers: {venv} is not a virtual environment (no bin/python); make it with "
        "bash scripts/install-optics-peers.sh"
    )


def peer_field(n: int, seed: int = 0) -> np.ndarray:
    """The peers' common input (N, N) complex128: a thin phase object, exp(i·φ) with φ a random
    screen low-passed to σ = 3 px (±π), under a soft super-Gaussian aperture of radius 0.35 N.
    Smooth and compact, so conventions that only differ where a field has no energy (near the
    Nyquist frequency, the window's edge) do not count as error."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    low = np.exp(-2 * (np.pi * 3.0) ** 2 * (fx**2 + fy**2))  # Gaussian blur, σ = 3 px
    phi = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * low).real
    phi *= np.pi / np.abs(phi).max()
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    aperture = np.exp(-(((x**2 + y**2) / (0.35 * n) ** 2) ** 4))
    return aperture * np.exp(1j * phi)


def bench_peers(
    venv: Path,
    sizes: list[int],
    rounds: int = 10,
    distance_m: float = 20e-6,
    threads: int = 1,
    timeout_s: float = 900.0,
    ours_ms: dict[int, tuple[float, float]] | None = None,
) -> list[dict]:
    """Padded ASM of every peer installed in ``venv``, on the same seeded field as our cases.

    The peers run in their own interpreter (their venv, never ours), which also times the
    two-FFT floor at (2N)², so each peer's ``x_floor`` is load-normalised within its process;
    ``x_ours`` = peer's x_floor ÷ our padded ASM's x_floor (``ours_ms[N]`` = (ASM ms, floor
    ms) from :func:`bench_optics`), i.e. how many times slower than ours at equal load. The
    outputs come back as arrays and are scored here against the complex128 reference (the
    band-limited, 2× zero-padded ASM), up to a global phase: a peer with other conventions
    (paraxial transfer function, opposite sign, no band limit) shows that as error. Peers
    that are missing or fail are rows with the reason.
    """
    import json
    import subprocess
    import tempfile

    py = peer_python(venv)
    rows: list[dict] = []
    for n in sizes:
        field64 = peer_field(n)
        ref = _asm_reference(field64, distance_m, pad=True)
        ours = angular_spectrum(
            torch.from_numpy(field64).to(torch.complex64)[None], distance_m, WAVELENGTH_M, PITCH_M
        )[0].numpy()
        asm = ours_ms.get(n) if ours_ms else None
        rows.append(
            {
                "size": n,
                "batch": 1,
                "case": "ours: dmicro_hw angular_spectrum (padded)",
                "method": "band-limited ASM, 2N zero padding, complex64",
                "status": "ok",
                "ms": asm[0] if asm else None,
                "x_floor": round(asm[0] / asm[1], 3) if asm else None,
                "speedup_vs_before": None,
                "rel_error": _rel(ours, ref),
                "x_ours": 1.0 if asm else None,
            }
        )
        with tempfile.TemporaryDirectory(prefix="dmicro-peers-") as td:
            inp, out = Path(td) / "in.npz", Path(td) / "out.npz"
            np.savez(
                inp,
                field=field64,
                wavelength_m=WAVELENGTH_M,
                pitch_m=PITCH_M,
                distance_m=distance_m,
                rounds=rounds,
                threads=threads,
            )
            try:
                proc = subprocess.run(
                    [str(py), str(PEER_RUNNER), str(inp), str(out)],
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                    cwd=td,  # some peers write log files into the working directory
                )
            except subprocess.TimeoutExpired:
                rows.append({"size": n, "case": "peers", "status": f"timed out ({timeout_s} s)"})
                continue
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                rows.append({"size": n, "case": "peers", "status": f"runner failed: {tail[0]}"})
                continue
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs = dict(np.load(out)) if out.exists() else {}
        floor = report.get("floor_ms")
        for name, r in report["peers"].items():
            row = {
                "size": n,
                "batch": 1,
                "case": f"peer: {name} {r.get('version', '')}".strip(),
                "method": r.get("method"),
                "status": r["status"],
                "ms": r.get("ms"),
                "x_floor": round(r["ms"] / floor, 3) if r.get("ms") and floor else None,
                "speedup_vs_before": None,
                "rel_error": _rel_up_to_phase(outputs[name], ref) if name in outputs else None,
                "x_ours": None,
            }
            if row["x_floor"] and ours_ms and n in ours_ms:
                asm, asm_floor = ours_ms[n]
                row["x_ours"] = round(row["x_floor"] / (asm / asm_floor), 3)
            rows.append(row)
    return rows
