"""One noise chain: the numpy twin (optics/sensor.py NumpySensor, the virtual bench's per-frame
noise) and the torch chain (Sensor + PhysicalSystem.frame_from_intensity, what training and the
calibration fit use) agree in distribution with noise ON.

For each mean photo-electron level (exact-Poisson range, both sides of the Gaussian-limit switch,
near the full well and saturated) S samples are drawn by each chain with a fixed seed; the
difference of their sample means must stay within 5 standard errors (SE² = s²_torch/S +
s²_numpy/S) and the difference of their sample variances within 5 standard errors of the
variance estimates (SE² of s² = (m₄ − s⁴(S−3)/(S−1))/S per chain, m₄ the fourth central moment).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmicro_hw.config import OpticsConfig, SensorConfig, SLMModelConfig
from dmicro_hw.optics.sensor import POISSON_EXACT_BELOW, NumpySensor, shot_noise
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

S = 20000  # samples per level and chain
Z = 5.0  # standard errors allowed
SENSOR = SensorConfig(read_noise_e=2.0, gain_adu_per_e=0.05, offset_adu=10.0, bit_depth=12)
MISMATCH = Mismatch(camera_gain=1.07, camera_offset_adu=3.2, extra_read_noise_e=1.5)
#: mean photo-electrons: Poisson range, the switch at 100 e⁻, bright, full well, saturated ADC
LEVELS = np.array([0.3, 3.0, 30.0, 99.5, 100.5, 400.0, 5000.0, 79000.0, 90000.0], np.float32)


def torch_samples(levels: np.ndarray, seed: int) -> np.ndarray:
    """(S, L) raw ADU of the torch chain for mean electron ``levels`` (L,)."""
    optics = OpticsConfig(field_size=32, compression=16, focal_length_m=0.01024)
    system = PhysicalSystem(optics, SENSOR, SLMModelConfig(pixels=(96, 96)), MISMATCH)
    k = optics.binning
    # constant k×k blocks, one per level: the binned mean is the level exactly
    inten = torch.from_numpy(np.repeat(levels / SENSOR.photons_per_pixel, k)).float()
    inten = inten[None, None, :].expand(S, k, -1).contiguous()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adu = system.frame_from_intensity(inten, generator=g, noise=True)
    return adu[:, 0, :].numpy().astype(np.float64)


def numpy_samples(levels: np.ndarray, seed: int) -> np.ndarray:
    twin = NumpySensor(
        SENSOR,
        camera_gain=MISMATCH.camera_gain,
        camera_offset_adu=MISMATCH.camera_offset_adu,
        extra_read_noise_e=MISMATCH.extra_read_noise_e,
    )
    e = np.broadcast_to(levels, (S, len(levels))).copy()
    return twin.adu(e, np.random.default_rng(seed), noise=True).astype(np.float64)


def var_se(x: np.ndarray) -> np.ndarray:
    """Standard error of the sample variance of each column of x (S, L)."""
    n = x.shape[0]
    d = x - x.mean(0)
    s2 = (d**2).sum(0) / (n - 1)
    m4 = (d**4).mean(0)
    return np.sqrt(np.maximum(m4 - s2**2 * (n - 3) / (n - 1), 0.0) / n)


def assert_same_distribution(a: np.ndarray, b: np.ndarray, levels: np.ndarray) -> None:
    n = a.shape[0]
    mean_tol = Z * np.sqrt(a.var(0, ddof=1) / n + b.var(0, ddof=1) / n)
    var_tol = Z * np.sqrt(var_se(a) ** 2 + var_se(b) ** 2)
    d_mean = np.abs(a.mean(0) - b.mean(0))
    d_var = np.abs(a.var(0, ddof=1) - b.var(0, ddof=1))
    for i, lv in enumerate(levels):
        # a saturated level has no spread: both chains sit on the ADC rail
        assert d_mean[i] <= max(mean_tol[i], 1e-6), (
            f"{lv} e⁻: means {a[:, i].mean()} vs {b[:, i].mean()}"
        )
        assert d_var[i] <= max(var_tol[i], 1e-6), (
            f"{lv} e⁻: variances {a[:, i].var()} vs {b[:, i].var()}"
        )


def test_numpy_twin_and_torch_chain_agree_in_mean_and_variance_with_noise_on():
    a, b = torch_samples(LEVELS, 0), numpy_samples(LEVELS, 0)
    assert_same_distribution(a, b, LEVELS)
    # the chain is noisy where it should be, and saturates where it should
    assert b[:, 2].var() > 0.1 and np.all(b[:, -1] == 4095.0)
    # the all-dim path (exact Poisson for every pixel)
    dim = LEVELS[LEVELS < POISSON_EXACT_BELOW]
    assert_same_distribution(torch_samples(dim, 1), numpy_samples(dim, 1), dim)


def test_the_comparison_sees_a_wrong_camera_gain():
    """The tolerances are tight enough to see a 1 % camera-gain error."""
    a = torch_samples(LEVELS, 2)
    b = numpy_samples(LEVELS, 2) * 1.01
    with pytest.raises(AssertionError, match="means"):
        assert_same_distribution(a, b, LEVELS)


def test_shot_noise_gaussian_limit_is_rounded_and_non_negative():
    rng = np.random.default_rng(3)
    m = np.array([50.0, 150.0, 1e4], np.float32)
    e = np.stack([shot_noise(m, rng) for _ in range(4000)])
    assert np.all(e == np.round(e)) and np.all(e >= 0) and e.dtype == np.float32
    assert np.allclose(e.mean(0), m, rtol=0.02) and np.allclose(e.var(0), m, rtol=0.1)
