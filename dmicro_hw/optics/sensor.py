"""Camera sensor model: k×k binning (optical compression), photon budget, noise, gain, ADC.

Intensities are float32 (B, H, W) in units of the illumination intensity (a clear field is 1).
:class:`Sensor` turns them into raw ADU values of shape (B, H/k, W/k) as a camera would deliver,
and :class:`ADUMap` (used by :meth:`Sensor.normalise`, the live and offline reconstructor and the
calibration scores) is the one map from camera pixel values back to decoder input.

Noise is differentiable where it can be: the Poisson sample and the ADC rounding use a
straight-through estimator (forward: the sample; backward: d/dmean = 1), read noise is additive.

*One noise chain, two array libraries.* :class:`Sensor` (torch, with the camera response of
:meth:`dmicro_hw.optics.system.PhysicalSystem.frame_from_intensity`) is what training and the
calibration fit differentiate through; :class:`NumpySensor` is its numpy twin for the virtual
bench's per-frame noise (a few (N/k)² values per frame, where torch's per-call overhead
dominates). Both read the same :class:`~dmicro_hw.config.SensorConfig` and the same camera
response (gain, offset, extra read noise) and apply the same steps in the same order::

    mean e⁻ → Poisson shot noise → + read noise → full well → ·gain + offset → round
      → ADC rails → + extra read noise → ·camera gain + camera offset → ADC rails

tests/optics/test_optics_noise_chain.py checks that their means and variances agree with noise on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmicro_hw.config import SensorConfig

#: mean photo-electrons below which the numpy twin draws exact Poisson counts; above, the Gaussian
#: limit N(λ, λ), rounded (skewness 1/√λ < 0.1; ~4× faster than numpy's Poisson sampler at the
#: λ ~ 10⁴ of a bright frame)
POISSON_EXACT_BELOW = 100.0


def adc_max(cfg: SensorConfig) -> float:
    """Largest raw ADU value of the sensor's ADC (2^bit_depth − 1)."""
    return float(2**cfg.bit_depth - 1)


def bin_frames(intensity: torch.Tensor, k: int) -> torch.Tensor:
    """Average k×k blocks: (B, H, W) → (B, H/k, W/k). k = 2, 4, 8, 16 give ×4 … ×256.

    Equivalent to the paper's repeated 2×2 average pooling; the mean (not the sum) keeps a
    clear field at 1 so that the photon budget is set per *binned* pixel.
    """
    if k == 1:
        return intensity
    h, w = intensity.shape[-2:]
    if h % k or w % k:
        raise ValueError(f"frame {h}×{w} is not divisible by the bin size {k}")
    squeeze = intensity.dim() == 2
    x = intensity[None] if squeeze else intensity
    out = F.avg_pool2d(x.unsqueeze(1), k).squeeze(1)
    return out[0] if squeeze else out


@dataclass(frozen=True)
class ADUMap:
    """The one map from camera pixel values to decoder input (intensity, clear field ≈ 1).

    Steps, each skipped when it is the identity::

        adc   = pixel / pixel_scale                         (e.g. 16: 12-bit ADC sent as Mono16)
        adc₀  = (adc − camera_offset_adu) / camera_gain     (calibrated camera response undone)
        input = (adc₀ − offset_adu) / (gain_adu_per_e · photons_per_pixel)   (sensor model)

    Works on numpy arrays and torch tensors alike; :meth:`affine` gives the same map as one
    ``scale·pixel + shift`` for a fused kernel.
    """

    gain_adu_per_e: float
    photons_per_pixel: float
    offset_adu: float = 0.0
    camera_gain: float = 1.0
    camera_offset_adu: float = 0.0
    pixel_scale: float = 1.0

    @classmethod
    def from_sensor(
        cls,
        cfg: SensorConfig | None,
        camera_gain: float = 1.0,
        camera_offset_adu: float = 0.0,
        pixel_scale: float = 1.0,
    ) -> ADUMap:
        """The map of the rig's sensor config and (optionally) a calibrated camera response."""
        cfg = cfg or SensorConfig()
        return cls(
            float(cfg.gain_adu_per_e),
            float(cfg.photons_per_pixel),
            float(cfg.offset_adu),
            float(camera_gain),
            float(camera_offset_adu),
            float(pixel_scale),
        )

    def with_pixel_scale(self, pixel_scale: float) -> ADUMap:
        return replace(self, pixel_scale=float(pixel_scale))

    def affine(self) -> tuple[float, float]:
        """(scale, shift) with ``input = scale·pixel + shift``."""
        inv = 1.0 / (self.gain_adu_per_e * self.photons_per_pixel)
        scale = inv / self.camera_gain / self.pixel_scale
        shift = -(self.camera_offset_adu / self.camera_gain + self.offset_adu) * inv
        return scale, shift

    def __call__(self, pixels: Any) -> Any:
        """Pixel values (any shape, float) → decoder input (same shape)."""
        x = pixels
        if self.pixel_scale != 1.0:
            x = x / self.pixel_scale
        if self.camera_gain != 1.0 or self.camera_offset_adu != 0.0:
            x = (x - self.camera_offset_adu) / self.camera_gain
        return (x - self.offset_adu) / (self.gain_adu_per_e * self.photons_per_pixel)


def straight_through(forward_value: torch.Tensor, backward_value: torch.Tensor) -> torch.Tensor:
    """Return ``forward_value`` in the forward pass with the gradient of ``backward_value``."""
    return backward_value + (forward_value - backward_value).detach()


class Sensor(nn.Module):
    """Binning + photon/electron/ADU chain of a camera.

    Args:
        cfg: photon budget (mean photo-electrons per binned pixel at unit intensity at the
            configured exposure), read noise (e⁻ RMS), gain (ADU/e⁻), offset (ADU), ADC bits,
            full well (e⁻) and whether noise is on.
        binning: k of the k×k bins.
    """

    def __init__(self, cfg: SensorConfig | None = None, binning: int = 8) -> None:
        super().__init__()
        self.cfg = cfg or SensorConfig()
        self.binning = int(binning)
        self.noise = self.cfg.noise

    @property
    def adc_max(self) -> float:
        return adc_max(self.cfg)

    def electrons(self, intensity: torch.Tensor, exposure_s: float | None = None) -> torch.Tensor:
        """Mean photo-electrons per binned pixel (no noise)."""
        scale = (exposure_s or self.cfg.exposure_s) / self.cfg.exposure_s
        return bin_frames(intensity, self.binning) * (self.cfg.photons_per_pixel * scale)

    def forward(
        self,
        intensity: torch.Tensor,
        exposure_s: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, H, W) intensity → (B, H/k, W/k) raw ADU (float32, integer-valued when noisy)."""
        c = self.cfg
        mean_e = self.electrons(intensity, exposure_s).clamp_min(0)
        if self.noise:
            shot = torch.poisson(mean_e.detach(), generator=generator)
            e = straight_through(shot, mean_e)
            if c.read_noise_e > 0:
                e = e + c.read_noise_e * torch.randn(
                    e.shape, generator=generator, device=e.device, dtype=e.dtype
                )
        else:
            e = mean_e
        e = straight_through(e.clamp(max=c.full_well_e), e)
        adu = e * c.gain_adu_per_e + c.offset_adu
        if self.noise:
            adu = straight_through(adu.round(), adu)
        # ADC saturation is physical and has no useful gradient beyond the rails.
        return adu.clamp(0.0, self.adc_max)

    def normalise(self, adu: torch.Tensor) -> torch.Tensor:
        """Raw ADU → intensity units (a clear field ≈ 1): :class:`ADUMap` of this sensor."""
        return ADUMap.from_sensor(self.cfg)(adu)

    def expected_saturation_intensity(self) -> float:
        """Intensity (units of the clear field) at which the ADC or the full well saturates."""
        c = self.cfg
        e_max = min(c.full_well_e, (self.adc_max - c.offset_adu) / c.gain_adu_per_e)
        return e_max / c.photons_per_pixel


class NumpySensor:
    """The numpy twin of :class:`Sensor` plus the camera response of
    :meth:`~dmicro_hw.optics.system.PhysicalSystem.frame_from_intensity` (see the module
    docstring): mean photo-electrons → raw ADU, no autograd.

    Args:
        cfg: the sensor config (shared with :class:`Sensor`).
        camera_gain, camera_offset_adu, extra_read_noise_e: the camera response (``raw' =
            gain·raw + offset``, extra read noise in e⁻ RMS), as in
            :class:`~dmicro_hw.optics.system.Mismatch`.
    """

    def __init__(
        self,
        cfg: SensorConfig,
        camera_gain: float = 1.0,
        camera_offset_adu: float = 0.0,
        extra_read_noise_e: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.adc_max = adc_max(cfg)
        self.camera_gain = float(camera_gain)
        self.camera_offset_adu = float(camera_offset_adu)
        self.extra_read_noise_e = float(extra_read_noise_e)

    def adu(
        self,
        e_ref: np.ndarray,
        rng: np.random.Generator,
        noise: bool,
        exposure_s: float | None = None,
    ) -> np.ndarray:
        """Mean electrons at the reference exposure (any shape) → raw ADU float32 (same shape).

        ``exposure_s`` (default ``cfg.exposure_s``) scales the mean linearly; ``noise`` draws from
        ``rng`` (shot, read, rounding, extra read), else the mean response is returned.
        """
        c = self.cfg
        scale = (exposure_s or c.exposure_s) / c.exposure_s
        mean = np.maximum(e_ref * np.float32(scale), 0, dtype=np.float32)
        if noise:
            e = shot_noise(mean, rng)
            if c.read_noise_e > 0:
                e += np.float32(c.read_noise_e) * rng.standard_normal(e.shape, dtype=np.float32)
        else:
            e = mean
        adu = np.minimum(e, np.float32(c.full_well_e)) * np.float32(c.gain_adu_per_e)
        adu += np.float32(c.offset_adu)
        if noise:
            np.round(adu, out=adu)
        np.clip(adu, 0.0, self.adc_max, out=adu)
        if noise and self.extra_read_noise_e > 0:
            adu += rng.standard_normal(adu.shape, dtype=np.float32) * np.float32(
                self.extra_read_noise_e * c.gain_adu_per_e
            )
        adu = adu * np.float32(self.camera_gain) + np.float32(self.camera_offset_adu)
        return np.clip(adu, 0.0, self.adc_max, out=adu)


def shot_noise(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson photo-electron counts (float32) of ``mean`` (≥ 0); above
    :data:`POISSON_EXACT_BELOW` the Gaussian limit N(λ, λ), rounded and kept ≥ 0."""
    if float(mean.max(initial=0.0)) < POISSON_EXACT_BELOW:
        return rng.poisson(mean).astype(np.float32)
    e = rng.standard_normal(mean.shape, dtype=np.float32)
    e *= np.sqrt(mean)
    e += mean
    np.rint(e, out=e)
    np.maximum(e, 0, out=e)
    small = mean < POISSON_EXACT_BELOW
    if small.any():
        e[small] = rng.poisson(mean[small])
    return e
