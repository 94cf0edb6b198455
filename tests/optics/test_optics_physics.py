"""Physics tests of the differentiable optics against analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmicro_hw.config import OpticsConfig, SensorConfig
from dmicro_hw.optics import (
    D2NNEncoder,
    GPCEncoder,
    LFFEncoder,
    PlainIntensityEncoder,
    Sensor,
    angular_spectrum,
    apply_4f,
    bin_frames,
    fresnel,
    phase_contrast_filter,
    phase_to_field,
    pupil_mask,
)
from dmicro_hw.optics.aberrations import noll_to_nm, zernike_noll

WL = 632.8e-9


def gaussian_beam(n: int, pitch: float, w0: float) -> torch.Tensor:
    c = (torch.arange(n, dtype=torch.float64) - n / 2) * pitch
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.exp(-(x**2 + y**2) / w0**2).to(torch.complex128)


def energy(f: torch.Tensor) -> float:
    return float(f.abs().square().sum())


def second_moment_radius(f: torch.Tensor, pitch: float) -> float:
    """Beam radius w = 2·σ of the intensity (1/e² radius of a Gaussian)."""
    n = f.shape[-1]
    c = (torch.arange(n, dtype=torch.float64) - n / 2) * pitch
    y, x = torch.meshgrid(c, c, indexing="ij")
    i = f.abs().square()
    return float(2 * torch.sqrt((i * x**2).sum() / i.sum()))


def test_parseval_asm_and_4f_conserve_energy():
    beam = gaussian_beam(128, 1e-6, 12e-6)
    out = angular_spectrum(beam, 50e-6, WL, 1e-6)
    assert energy(out) == pytest.approx(energy(beam), rel=1e-4)
    # a unit-modulus Fourier filter (phase only, no pupil) is unitary
    g = torch.Generator().manual_seed(0)
    h = torch.polar(torch.ones(64, 64), 2 * math.pi * torch.rand(64, 64, generator=g))
    field = phase_to_field(torch.rand(3, 64, 64, generator=g) * 3)
    assert energy(apply_4f(field, h)) == pytest.approx(energy(field), rel=1e-5)


def test_fourier_phase_ramp_shifts_the_image():
    n, shift = 64, (5, -3)
    phi = torch.zeros(1, n, n)
    phi[0, 20:30, 10:18] = 1.0
    u = torch.arange(n) - n // 2
    uy, ux = torch.meshgrid(u, u, indexing="ij")
    ramp = -2 * math.pi * (uy * shift[0] + ux * shift[1]) / n
    h = torch.polar(torch.ones(n, n), ramp.float())
    out = apply_4f(phase_to_field(phi), h)
    expected = torch.roll(phase_to_field(phi), shifts=shift, dims=(-2, -1))
    assert torch.allclose(out, expected, atol=1e-5)


def test_pi_half_dc_filter_gives_zernike_contrast():
    """Weak phase object through a π/2 DC filter: I ≈ 1 + 2(φ − mean φ)."""
    n = 64
    g = torch.Generator().manual_seed(1)
    phi = 0.02 * torch.nn.functional.avg_pool2d(torch.rand(1, 1, n, n, generator=g), 5, 1, 2)[0]
    h = phase_contrast_filter(n, dc_radius_px=0.5, pupil_radius=2.0)  # DC sample only
    i = apply_4f(phase_to_field(phi), h).abs().square()
    expected = 1 + 2 * (phi - phi.mean())
    assert torch.allclose(i, expected, atol=2e-4)
    # without the filter a pure phase object shows no intensity contrast at all
    i_plain = apply_4f(phase_to_field(phi), torch.ones(n, n, dtype=torch.cfloat)).abs().square()
    assert float(i_plain.std()) < 1e-5
    assert float(i.std()) > 100 * float(i_plain.std())


def test_gaussian_beam_spreads_as_predicted():
    w0, pitch, z = 8e-6, 0.5e-6, 300e-6
    beam = gaussian_beam(256, pitch, w0)
    z_r = math.pi * w0**2 / WL
    w_expected = w0 * math.sqrt(1 + (z / z_r) ** 2)
    assert second_moment_radius(beam, pitch) == pytest.approx(w0, rel=1e-3)
    out = angular_spectrum(beam, z, WL, pitch)
    assert second_moment_radius(out, pitch) == pytest.approx(w_expected, rel=1e-2)


def test_asm_matches_fresnel_in_paraxial_regime():
    w0, pitch, z = 40e-6, 2e-6, 2e-3  # NA ~ λ/(π w0) ≈ 0.005: deeply paraxial
    beam = gaussian_beam(128, pitch, w0)
    a = angular_spectrum(beam, z, WL, pitch)
    f = fresnel(beam, z, WL, pitch)
    err = (a - f).abs().norm() / a.abs().norm()
    assert float(err) < 1e-3


def test_asm_differs_from_fresnel_out_of_paraxial_regime():
    w0, pitch, z = 1e-6, 0.1e-6, 20e-6  # strongly diverging beam
    beam = gaussian_beam(256, pitch, w0)
    a = angular_spectrum(beam, z, WL, pitch)
    f = fresnel(beam, z, WL, pitch)
    assert float((a - f).abs().norm() / a.abs().norm()) > 0.05


def test_zernike_noll_indices_and_orthonormality():
    assert [noll_to_nm(j) for j in range(1, 12)] == [
        (0, 0), (1, 1), (1, -1), (2, 0), (2, -2), (2, 2), (3, -1), (3, 1), (3, -3), (3, 3), (4, 0)
    ]  # fmt: skip
    n = 256
    basis = torch.stack([zernike_noll(j, n, n / 2 - 0.5) for j in range(1, 12)]).double()
    disk = (zernike_noll(1, n, n / 2 - 0.5) != 0).double()
    gram = torch.einsum("ahw,bhw->ab", basis, basis) / disk.sum()
    assert torch.allclose(gram, torch.eye(11, dtype=torch.float64), atol=2e-2)


def test_gradients_through_4f_by_gradcheck():
    n = 8
    g = torch.Generator().manual_seed(2)
    field = phase_to_field(torch.rand(1, n, n, generator=g)).to(torch.complex128)
    h = torch.randn(n, n, dtype=torch.complex128, generator=g, requires_grad=True)

    def intensity_of_filter(h):
        return apply_4f(field, h).abs().square()

    assert torch.autograd.gradcheck(intensity_of_filter, (h,))

    def d2nn_like(phase):
        f = angular_spectrum(field * torch.polar(torch.ones_like(phase), phase), 3e-6, WL, 0.5e-6)
        return f.abs().square()

    ph = torch.rand(n, n, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(d2nn_like, (ph,))


@pytest.mark.parametrize("compression", [4, 16, 64, 256])
def test_binning_gives_compression_ratio(compression):
    o = OpticsConfig(field_size=64, compression=compression)
    x = torch.rand(2, 64, 64)
    y = bin_frames(x, o.binning)
    assert y.numel() * compression == x.numel()
    assert float(y.mean()) == pytest.approx(float(x.mean()), rel=1e-5)


def test_sensor_noise_statistics_and_saturation():
    cfg = SensorConfig(photons_per_pixel=400, read_noise_e=0.0, gain_adu_per_e=1.0, offset_adu=0,
                       bit_depth=16, full_well_e=1e6)  # fmt: skip
    s = Sensor(cfg, binning=2)
    g = torch.Generator().manual_seed(3)
    adu = s(torch.ones(64, 64, 64), generator=g)
    assert float(adu.mean()) == pytest.approx(400, rel=5e-3)
    assert float(adu.var()) == pytest.approx(400, rel=5e-2)  # Poisson: var = mean
    # noise off: deterministic and exact
    s.noise = False
    assert torch.equal(s(torch.ones(1, 4, 4)), torch.full((1, 2, 2), 400.0))
    # saturation at the ADC rail and normalisation back to intensity units
    small = Sensor(SensorConfig(noise=False, bit_depth=8, gain_adu_per_e=1, offset_adu=5,
                                photons_per_pixel=100), 1)  # fmt: skip
    assert float(small(torch.full((1, 2, 2), 10.0)).max()) == 255.0
    assert float(small.normalise(small(torch.full((1, 2, 2), 1.0))).mean()) == pytest.approx(1.0)


def test_sensor_noise_is_differentiable_straight_through():
    s = Sensor(SensorConfig(photons_per_pixel=100), binning=2)
    x = torch.full((1, 4, 4), 0.5, requires_grad=True)
    s(x).sum().backward()
    expected = s.cfg.photons_per_pixel * s.cfg.gain_adu_per_e / 4
    assert torch.allclose(x.grad, torch.full_like(x, expected))


def test_encoders_shapes_and_gradients():
    o = OpticsConfig(field_size=32, compression=16)
    phase = torch.rand(2, 32, 32) * math.pi
    for enc in (LFFEncoder(o), GPCEncoder(o), PlainIntensityEncoder(o), D2NNEncoder(o, layers=2)):
        y = enc(phase)
        assert y.shape == (2, 8, 8) and y.dtype == torch.float32
        params = [p for p in enc.parameters() if p.requires_grad]
        if params:
            y.sum().backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_lff_with_clear_filter_equals_pupil_filtered_field():
    o = OpticsConfig(field_size=32, compression=4, pupil_radius=1.0)
    enc = LFFEncoder(o, SensorConfig(noise=False), learn_amplitude=False)
    phase = torch.rand(1, 32, 32)
    expected = apply_4f(phase_to_field(phase), pupil_mask(32).to(torch.cfloat)).abs().square()
    assert torch.allclose(enc.intensity(phase), expected, atol=1e-6)
    assert np.isclose(
        float(enc(phase).detach().mean()), float(bin_frames(expected, 2).mean()), rtol=1e-4
    )


def test_lff_gpc_init_starts_at_the_gpc_baseline():
    """encoder.init: gpc — the learned filter starts as the fixed GPC filter (π/2 on the DC),
    so training never starts below that baseline; 'flat' is the clear aperture."""
    import torch

    from dmicro_hw.config import EncoderConfig, OpticsConfig, SensorConfig
    from dmicro_hw.optics.baselines import build_encoder

    optics = OpticsConfig(field_size=32, compression=4)
    sensor = SensorConfig(noise=False)
    lff = build_encoder(EncoderConfig(kind="lff", init="gpc"), optics, sensor)
    gpc = build_encoder(EncoderConfig(kind="gpc"), optics, sensor)
    torch.testing.assert_close(lff.filter.phase, torch.angle(gpc.h))
    phi = torch.rand(2, 32, 32)
    # amplitude sigmoid(4) ≈ 0.982 of GPC's 1: the same image up to that factor squared
    torch.testing.assert_close(
        lff.intensity(phi), gpc.intensity(phi) * torch.sigmoid(torch.tensor(4.0)) ** 2,
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    flat = build_encoder(EncoderConfig(kind="lff", init="flat"), optics, sensor)
    assert float(flat.filter.phase.detach().abs().max()) == 0.0
