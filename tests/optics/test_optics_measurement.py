"""Measurement consistency and refinement, tested against physics: χ²/dof of the true phase is
1 under the sensor's own noise; a wrong phase is far above; refinement through the bench model
lowers the residual (and the phase error) of a family the decoder never saw."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmicro_hw.config import OpticsConfig, SensorConfig, SLMModelConfig
from dmicro_hw.data.families import draw_family
from dmicro_hw.data.phantoms import sample_rng
from dmicro_hw.optics.baselines import GPCEncoder
from dmicro_hw.optics.measurement import BenchMeasurement, EncoderMeasurement, refine
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

OPTICS = OpticsConfig(field_size=64, compression=16, focal_length_m=0.0246)
SENSOR = SensorConfig(
    photons_per_pixel=10000, gain_adu_per_e=0.1, offset_adu=64, bit_depth=12, full_well_e=40000
)
SLM = SLMModelConfig(pixels=(192, 192), fringing_px=0.5)


def phases(family: str, n: int, peak: float = 1.5, seed: int = 0) -> torch.Tensor:
    return torch.stack(
        [
            torch.from_numpy(draw_family(family, sample_rng(seed, i, 9), 64) * peak).float()
            for i in range(n)
        ]
    )


@pytest.fixture(scope="module")
def bench():
    """The bench model with a drawn mismatch, showing a phase-contrast pattern."""
    system = PhysicalSystem(OPTICS, SENSOR, SLM, Mismatch.draw(7)).eval()
    grey = torch.zeros(SLM.pixels)
    c = (SLM.pixels[0] // 2, SLM.pixels[1] // 2)
    grey[c[0] - 2 : c[0] + 3, c[1] - 2 : c[1] + 3] = 64  # ≈ π/2 on the zero order
    return system, grey


def test_chi2_of_the_truth_is_one_under_the_noise_model(bench):
    system, grey = bench
    phi = phases("texture", 16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        raw = system(phi, grey, generator=g)
    m = BenchMeasurement(system, grey)
    chi2 = m.chi2(phi, raw)
    assert float(chi2.mean()) == pytest.approx(1.0, abs=0.08)
    assert float(m.chi2(phi * 0.8, raw).min()) > 1.5  # a 20 % wrong amplitude is visible


def test_chi2_gradient_matches_finite_difference(bench):
    system, grey = bench
    m = BenchMeasurement(system, grey)
    phi = phases("smooth", 1).double().requires_grad_(True)
    with torch.no_grad():
        raw = system(phi.float(), grey, generator=torch.Generator().manual_seed(2))
    loss = m.chi2(phi.float() + 0.05, raw).sum()
    (grad,) = torch.autograd.grad(loss, phi)
    # a fixed direction (not the global RNG, whose state depends on the tests run before):
    # float32 finite differences are too noisy where the directional derivative is near 0
    d = torch.randn(phi.shape, generator=torch.Generator().manual_seed(0), dtype=phi.dtype) * 1e-2
    with torch.no_grad():
        up = m.chi2((phi + d).float() + 0.05, raw).sum()
        dn = m.chi2((phi - d).float() + 0.05, raw).sum()
    fd = float(up - dn) / 2
    assert float((grad * d).sum()) == pytest.approx(fd, rel=0.05)


@pytest.mark.parametrize("family", ["spheres", "fibres"])
def test_refinement_lowers_the_residual_of_an_unseen_family(bench, family):
    """A 'decoder output' that paints the wrong amplitude and blurs: refinement through the
    bench model brings χ²/dof down to about 1 and the phase closer to the truth."""
    system, grey = bench
    truth = phases(family, 6, seed=4)
    with torch.no_grad():
        raw = system(truth, grey, generator=torch.Generator().manual_seed(3))
    blur = torch.nn.functional.avg_pool2d(truth[:, None], 3, 1, 1)[:, 0]
    start = (0.8 * blur).clamp(0, math.pi)
    m = BenchMeasurement(system, grey)
    r = refine(m, raw, start, iterations=60, phase_max_rad=math.pi)
    assert (r.chi2_after < r.chi2_before).all()
    assert float(r.chi2_after.median()) < 0.3 * float(r.chi2_before.median())
    err0 = float((start - truth).square().mean().sqrt())
    err1 = float((r.phase - truth).square().mean().sqrt())
    assert err1 < err0
    assert r.phase.min() >= 0 and r.phase.max() <= math.pi


def test_refinement_stops_at_the_noise_level():
    """The discrepancy principle: a frame already explained (χ²/dof ≤ 1) is not moved."""
    enc = GPCEncoder(OPTICS, SENSOR)
    m = EncoderMeasurement(enc)
    truth = phases("cells", 2)
    raw = enc.raw_frame(truth, generator=torch.Generator().manual_seed(0))
    r = refine(m, raw, truth, iterations=10, target_chi2=1e6)
    torch.testing.assert_close(r.phase, truth)
    r0 = refine(m, raw, truth, iterations=0)
    torch.testing.assert_close(r0.chi2_after, r0.chi2_before)


def test_saturated_pixels_are_left_out():
    enc = GPCEncoder(OPTICS, SENSOR)
    m = EncoderMeasurement(enc)
    truth = phases("cells", 1)
    raw = enc.raw_frame(truth, generator=torch.Generator().manual_seed(0))
    sat = raw.clone()
    sat[..., :4] = m.adc_max  # clipped columns say only "at least": no information
    assert float(m.chi2(truth, sat)) == pytest.approx(float(m.chi2(truth, raw)), rel=0.25)
    assert np.isfinite(float(m.chi2(truth, torch.full_like(raw, m.adc_max))))
