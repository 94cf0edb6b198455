"""SLM model and physical-bench model: geometry, LUT, realised filter, mismatch gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dmicro_hw.config import OpticsConfig, SensorConfig, SLMModelConfig
from dmicro_hw.optics.fourier4f import apply_4f, phase_to_field, pupil_mask
from dmicro_hw.optics.slm import PhaseResponse, SLMGeometry, SLMModel, gaussian_blur
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

# 32-sample field whose Fourier plane spans 2 SLM pixels per sample on a 96×96 SLM.
OPTICS = OpticsConfig(field_size=32, compression=16, focal_length_m=0.01024)
SLM = SLMModelConfig(pixels=(96, 96), pitch_m=8e-6, bit_depth=8, fill_factor=1.0)


def test_geometry_round_trip_and_ratio():
    g = SLMGeometry.from_configs(OPTICS, SLM, offset_px=(1.5, -2.0), rotation_rad=0.1, scale=1.02)
    assert g.ratio == pytest.approx(OPTICS.fourier_pitch_m / SLM.pitch_m)
    ij = torch.rand(10, 2, dtype=torch.float64) * 32
    assert torch.allclose(g.slm_to_filter(g.filter_to_slm(ij)), ij, atol=1e-9)
    # the optical axis (filter index N//2) lands at SLM centre + offset
    axis = g.filter_to_slm(torch.tensor([16.0, 16.0], dtype=torch.float64))
    assert torch.allclose(axis, torch.tensor([48 + 1.5, 48 - 2.0], dtype=torch.float64))


def test_phase_response_linear_gamma_and_table():
    r = PhaseResponse(8)
    assert float(r(torch.tensor(128.0))) == pytest.approx(math.pi)
    r_g = PhaseResponse(8, gamma=2.0)
    assert float(r_g(torch.tensor(128.0))) == pytest.approx(math.pi / 2)
    table = torch.linspace(0, 6.0, 256)
    r_t = PhaseResponse(8, table=table)
    assert float(r_t(torch.tensor(127.5))) == pytest.approx(float(table[127:129].mean()), rel=1e-5)
    assert torch.allclose(r_t.as_table(), table)
    with pytest.raises(ValueError, match="256 entries"):
        PhaseResponse(8, table=torch.zeros(10))


def test_uniform_grey_gives_uniform_phase_filter():
    m = SLMModel(OPTICS, SLM)
    h = m(torch.full((96, 96), 64.0))
    inside = pupil_mask(32) > 0
    assert torch.allclose(
        h[inside].angle(), torch.full_like(h[inside].real, math.pi / 2), atol=1e-5
    )
    assert torch.allclose(h[inside].abs(), torch.ones_like(h[inside].real), atol=1e-5)


def test_displayed_ramp_shifts_image_like_the_ideal_filter():
    """A linear phase ramp on the SLM shifts the image by the expected number of pixels."""
    n, shift = 32, 3
    g = SLMGeometry.from_configs(OPTICS, SLM)
    rc = torch.stack(
        torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij"), -1
    ).double()
    u = g.slm_to_filter(rc)[..., 1] - n // 2  # filter column index of each SLM pixel
    slm_phase = torch.remainder(-2 * math.pi * u * shift / n, 2 * math.pi).float()
    grey = slm_phase / (2 * math.pi) * 256
    model = SLMModel(OPTICS, SLM.model_copy(update={"bit_depth": 16}), supersample=1)
    model.response = PhaseResponse(8)  # grey in [0, 256) ↔ [0, 2π)
    h = model(grey)
    phi = torch.zeros(1, n, n)
    phi[0, 10:20, 8:14] = 1.0
    img = apply_4f(phase_to_field(phi), h * pupil_mask(n, 0.6))
    ref = apply_4f(phase_to_field(torch.roll(phi, shift, -1)), pupil_mask(n, 0.6).cfloat())
    assert float((img - ref).abs().max()) < 0.05


def test_fringing_blur_and_fill_factor_reduce_contrast():
    point = torch.zeros(16, 16)
    point[8, 8] = 1.0
    blurred = gaussian_blur(point, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(blurred.max()) < 0.2
    m = SLMModel(OPTICS, SLM.model_copy(update={"fill_factor": 0.8}))
    h = m(torch.full((96, 96), 128.0))  # φ = π: 0.8·(−1) + 0.2 = −0.6
    assert float(h[16, 16].real) == pytest.approx(-0.6, abs=1e-4)


def test_physical_system_nominal_matches_ideal_4f_and_mismatch_changes_frames():
    sens = SensorConfig(noise=False)
    nominal = PhysicalSystem(OPTICS, sens, SLM)
    grey = torch.zeros(96, 96)
    phi = torch.rand(2, 32, 32)
    ideal = apply_4f(phase_to_field(phi), pupil_mask(32).cfloat()).abs().square()
    assert torch.allclose(nominal.intensity(phi, grey), ideal, atol=1e-4)
    skewed = PhysicalSystem(OPTICS, sens, SLM, Mismatch.draw(seed=5))
    a, b = nominal(phi, grey), skewed(phi, grey)
    assert a.shape == (2, 8, 8) and float((a - b).abs().mean()) > 0.1


def test_mismatch_round_trips_and_every_parameter_gets_a_gradient():
    mm = Mismatch.draw(seed=11)
    assert Mismatch.from_dict(mm.to_dict()) == mm
    sys = PhysicalSystem(OPTICS, SensorConfig(noise=False), SLM, mm, trainable=True)
    back = sys.mismatch()
    assert back.slm_offset_px == pytest.approx(mm.slm_offset_px)
    assert back.zernike_rad[4] == pytest.approx(mm.zernike_rad[4])
    grey = torch.linspace(0, 255, 96 * 96).reshape(96, 96)
    sys(torch.rand(1, 32, 32) * 2, grey).square().mean().backward()
    for name, p in sys.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
