"""Measurement consistency: does a reconstructed phase explain the frame the camera measured?

    φ̂ (B, N, N) rad ─ forward model (the rig's calibrated optics, or the checkpoint's encoder)
      ─ full-resolution intensity on the camera grid ─ binning, photon budget, gain, offset
      → expected raw frame μ (B, n, n) in ADC units

    χ²/dof = mean over valid pixels of (raw − μ)² / σ²(μ),
    σ² = G²·(g²·(e + σ_read² + σ_extra²) + 1/12)        [ADU², e = μ's photo-electrons]

with the camera's ADU/e⁻ gain g, read noise σ_read (e⁻), the calibrated camera gain G and extra
read noise σ_extra, and the ADC quantisation step. A phase that explains the frame to within the
noise gives χ²/dof ≈ 1; a decoder that paints its prior over an unfamiliar sample gives much more.
Pixels at the ADC rails (0 or full scale) are left out: their value says only "at least".

:func:`refine` descends the same χ² from the decoder's output with a prior that keeps the phase
near it (the frame has k² times fewer pixels than the phase: the measurement alone does not
determine the phase, the decoder's output fills the gap):

    L(φ) = ½·χ²/dof(φ) + ½·λ · mean((φ − φ̂)²) / σ_φ²,        φ clamped to [0, phase_max_rad]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dmicro_hw.config import SensorConfig
from dmicro_hw.optics.fields import intensity
from dmicro_hw.optics.fourier4f import apply_4f
from dmicro_hw.optics.sensor import bin_frames


class MeasurementModel(nn.Module):
    """Expected raw frame and its noise variance for a phase, differentiable in the phase.

    Subclasses say how a phase (B, N, N) rad becomes image-plane intensity on the camera grid
    (:meth:`intensity`, clear field ≈ 1): :class:`BenchMeasurement` (the bench model, e.g. with a
    calibration's fitted mismatch) or :class:`EncoderMeasurement` (a trained model's encoder).

    Args:
        sensor: the camera's sensor config (photons per binned pixel, ADU/e⁻, offset, read
            noise, bit depth, full well).
        binning: k of the k×k bins.
        camera_gain, camera_offset_adu: calibrated camera response raw = G·raw₀ + O.
        extra_read_noise_e: calibrated read noise beyond the sensor's (e⁻ RMS).
    """

    def __init__(
        self,
        sensor: SensorConfig,
        binning: int,
        *,
        camera_gain: float = 1.0,
        camera_offset_adu: float = 0.0,
        extra_read_noise_e: float = 0.0,
    ) -> None:
        super().__init__()
        self.sensor = sensor
        self.binning = int(binning)
        self.camera_gain = float(camera_gain)
        self.camera_offset_adu = float(camera_offset_adu)
        self.read_var_e = float(sensor.read_noise_e) ** 2 + float(extra_read_noise_e) ** 2
        self.adc_max = float(2**sensor.bit_depth - 1)

    def intensity(self, phase: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ physics
    def electrons(self, phase: torch.Tensor) -> torch.Tensor:
        """Mean photo-electrons per binned pixel (B, n, n), clipped at the full well."""
        e = bin_frames(self.intensity(phase), self.binning) * self.sensor.photons_per_pixel
        return e.clamp(0.0, self.sensor.full_well_e)

    def expected(self, phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean raw ADU, variance ADU²), each (B, n, n), for phase (B, N, N) rad."""
        s = self.sensor
        e = self.electrons(phase)
        g2 = self.camera_gain**2
        mean = (e * s.gain_adu_per_e + s.offset_adu) * self.camera_gain + self.camera_offset_adu
        var = g2 * (s.gain_adu_per_e**2 * (e + self.read_var_e) + 1.0 / 12.0)
        return mean, var

    def chi2(self, phase: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """χ²/dof per frame (B,) of raw ADU frames (B, n, n) against the phase's expectation."""
        mean, var = self.expected(phase)
        raw = raw.to(mean.dtype)
        valid = (raw > 0) & (raw < self.adc_max)
        r2 = (raw - mean.clamp(0.0, self.adc_max)).square() / var
        dof = valid.flatten(1).sum(1).clamp_min(1)
        return (r2 * valid).flatten(1).sum(1) / dof


class BenchMeasurement(MeasurementModel):
    """The bench model (:class:`~dmicro_hw.optics.system.PhysicalSystem`, e.g. with a
    calibration's fitted mismatch) showing the SLM grey levels ``grey`` (R, C)."""

    def __init__(self, system: nn.Module, grey: torch.Tensor) -> None:
        with torch.no_grad():
            super().__init__(
                system.sensor_cfg,
                system.optics.binning,
                camera_gain=float(system.camera_gain),
                camera_offset_adu=float(system.camera_offset_adu),
                extra_read_noise_e=float(system.extra_read_noise_e),
            )
            h = system.realised_filter(torch.as_tensor(grey, dtype=torch.float32))
        self.system = system.eval().requires_grad_(False)
        self.register_buffer("filter", h.detach())

    def intensity(self, phase: torch.Tensor) -> torch.Tensor:
        field = apply_4f(self.system.illuminate(phase), self.filter)
        return self.system.register_camera(intensity(field))


class EncoderMeasurement(MeasurementModel):
    """A trained model's own encoder: the simulation it was trained on (no bench mismatch)."""

    def __init__(self, encoder: nn.Module, sensor: SensorConfig | None = None) -> None:
        super().__init__(sensor or encoder.sensor.cfg, encoder.binning)
        self.encoder = encoder

    def intensity(self, phase: torch.Tensor) -> torch.Tensor:
        return self.encoder.intensity(phase)


@dataclass
class Refinement:
    """Result of :func:`refine`: phase (B, N, N) rad and χ²/dof (B,) before and after."""

    phase: torch.Tensor
    chi2_before: torch.Tensor
    chi2_after: torch.Tensor


def refine(
    model: MeasurementModel,
    raw: torch.Tensor,
    phase0: torch.Tensor,
    *,
    iterations: int = 20,
    prior_weight: float = 1.0,
    prior_sigma_rad: float = 0.1,
    lr_rad: float = 0.02,
    phase_max_rad: float | None = None,
    target_chi2: float = 1.0,
) -> Refinement:
    """Refine ``phase0`` (B, N, N) rad towards agreement with ``raw`` (B, n, n) ADU.

    Adam on φ over at most ``iterations`` steps of L(φ) (module docstring), step size ``lr_rad``;
    the phase is clamped to [0, phase_max_rad] when given. A frame stops moving once its χ²/dof
    is at or below ``target_chi2`` (the discrepancy principle: explaining the frame better than
    its noise would fit the noise). Returns the refined phase (detached) and χ²/dof before/after.
    """
    raw = raw.detach().to(torch.float32)
    phase0 = phase0.detach().to(torch.float32)
    with torch.no_grad():
        before = model.chi2(phase0, raw)
    if iterations <= 0:
        return Refinement(phase0.clone(), before, before.clone())
    phi = phase0.clone().requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=float(lr_rad))
    w = float(prior_weight) / float(prior_sigma_rad) ** 2
    for _ in range(int(iterations)):
        opt.zero_grad(set_to_none=True)
        chi2 = model.chi2(phi, raw)
        moving = chi2.detach() > float(target_chi2)
        if not bool(moving.any()):
            break
        prior = (phi - phase0).square().flatten(1).mean(1)
        ((0.5 * chi2 + 0.5 * w * prior) * moving).sum().backward()
        held = phi.detach()[~moving].clone()
        opt.step()
        with torch.no_grad():
            phi[~moving] = held  # Adam's momentum would move a finished frame on
        if phase_max_rad is not None:
            with torch.no_grad():
                phi.clamp_(0.0, float(phase_max_rad))
    phi = phi.detach()
    with torch.no_grad():
        after = model.chi2(phi, raw)
    return Refinement(phi, before, after)
