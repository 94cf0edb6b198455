"""Baseline encoders in the same framework as the LFF: plain intensity, GPC/Zernike phase
contrast (fixed π/2 DC filter) and a D2NN (learnable diffractive phase layers, ASM between them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmicro_hw.config import EncoderConfig, OpticsConfig, SensorConfig
from dmicro_hw.optics.fields import polar, unit_phasor
from dmicro_hw.optics.fourier4f import Encoder, LFFEncoder, apply_4f, pupil_mask
from dmicro_hw.optics.propagation import angular_spectrum


class PlainIntensityEncoder(Encoder):
    """No filter: the camera sees |exp(iφ)|² through the pupil (low-pass contrast only)."""

    def __init__(self, optics: OpticsConfig, sensor: SensorConfig | None = None) -> None:
        super().__init__(optics, sensor)
        self.register_buffer(
            "h", pupil_mask(optics.field_size, optics.pupil_radius).to(torch.cfloat)
        )

    def image_field(self, field: torch.Tensor) -> torch.Tensor:
        return apply_4f(field, self.h)


def phase_contrast_filter(
    size: int,
    dc_radius_px: float = 1.0,
    shift_rad: float = math.pi / 2,
    dc_amplitude: float = 1.0,
    pupil_radius: float = 1.0,
) -> torch.Tensor:
    """Centred Zernike/GPC filter: a phase shift ``shift_rad`` on a disk of ``dc_radius_px``
    samples around DC (and amplitude ``dc_amplitude`` there), 1 elsewhere in the pupil."""
    c = size // 2
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) - c,
        torch.arange(size, dtype=torch.float64) - c,
        indexing="ij",
    )
    dc = (torch.hypot(x, y) <= dc_radius_px).to(torch.float32)
    amp = (1 - dc) + dc * dc_amplitude
    phase = dc * shift_rad
    return polar(amp * pupil_mask(size, pupil_radius), phase.to(torch.float32))


class GPCEncoder(Encoder):
    """Generalised phase contrast: fixed π/2 phase shift on the zero order."""

    def __init__(
        self,
        optics: OpticsConfig,
        sensor: SensorConfig | None = None,
        dc_radius_px: float = 1.0,
        shift_rad: float = math.pi / 2,
    ) -> None:
        super().__init__(optics, sensor)
        h = phase_contrast_filter(
            optics.field_size, dc_radius_px, shift_rad, 1.0, optics.pupil_radius
        )
        self.register_buffer("h", h)

    def image_field(self, field: torch.Tensor) -> torch.Tensor:
        return apply_4f(field, self.h)


class D2NNEncoder(Encoder):
    """Diffractive network: ``layers`` learnable phase masks spaced ``distance_m`` apart in the
    object space (pitch = optics.pixel_size_m), band-limited ASM between them."""

    def __init__(
        self,
        optics: OpticsConfig,
        sensor: SensorConfig | None = None,
        layers: int = 3,
        distance_m: float = 5e-6,
    ) -> None:
        super().__init__(optics, sensor)
        n = optics.field_size
        self.distance_m = distance_m
        self.phases = nn.Parameter(torch.zeros(layers, n, n))

    def image_field(self, field: torch.Tensor) -> torch.Tensor:
        o = self.optics
        for mask in self.phases:
            field = angular_spectrum(field, self.distance_m, o.wavelength_m, o.pixel_size_m)
            field = field * unit_phasor(mask)
        return angular_spectrum(field, self.distance_m, o.wavelength_m, o.pixel_size_m)


def build_encoder(
    kind: str | EncoderConfig,
    optics: OpticsConfig,
    sensor: SensorConfig | None = None,
    **kwargs,
) -> Encoder:
    """Encoder by name: ``lff`` | ``gpc`` | ``plain`` | ``d2nn``."""
    cfg = kind if isinstance(kind, EncoderConfig) else EncoderConfig(kind=kind)
    if cfg.kind == "lff":
        return LFFEncoder(optics, sensor, init=cfg.init, **kwargs)
    if cfg.kind == "gpc":
        return GPCEncoder(optics, sensor, **kwargs)
    if cfg.kind == "plain":
        return PlainIntensityEncoder(optics, sensor)
    if cfg.kind == "d2nn":
        return D2NNEncoder(optics, sensor, cfg.d2nn_layers, cfg.d2nn_distance_m)
    raise ValueError(f"unknown encoder kind {cfg.kind!r}")
