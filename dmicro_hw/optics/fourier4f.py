"""The LFF encoder: thin phase sample → 4f system with a learnable Fourier filter → sensor.

Conventions: a filter H is stored *centred* (DC at index N//2, as after ``fftshift``), shape
(N, N), complex64. :func:`apply_4f` folds the ``ifftshift`` into the filter once per call instead
of shifting the spectrum of every field. The 4f image is taken as upright with unit magnification
(the physical inversion x → −x of a 4f relay is a relabelling of camera pixels, handled by the
camera registration), so a filter H = 1 reproduces the input field exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dmicro_hw.config import OpticsConfig, SensorConfig
from dmicro_hw.optics.fields import intensity, polar, unit_phasor
from dmicro_hw.optics.sensor import Sensor

FilterTransform = Callable[[torch.Tensor], torch.Tensor]


def pupil_mask(size: int, radius_fraction: float = 1.0) -> torch.Tensor:
    """Centred circular pupil, float32 (size, size): 1 inside radius_fraction·size/2 samples."""
    c = size // 2
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) - c,
        torch.arange(size, dtype=torch.float64) - c,
        indexing="ij",
    )
    return (torch.hypot(x, y) <= radius_fraction * size / 2).to(torch.float32)


def phase_to_field(phase: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """Thin sample transmission: (B, H, W) radians → complex64 field A·exp(iφ)."""
    phase = phase.to(torch.float32)
    field = unit_phasor(phase)
    return field if amplitude is None else field * amplitude


def apply_4f(field: torch.Tensor, filter_centred: torch.Tensor) -> torch.Tensor:
    """Image of ``field`` (…, N, N) through a 4f system with centred Fourier filter (N, N)."""
    h = torch.fft.ifftshift(filter_centred, dim=(-2, -1))
    spec = torch.fft.fft2(field)
    if (
        (torch.is_grad_enabled() and (field.requires_grad or h.requires_grad))
        or torch.broadcast_shapes(spec.shape, h.shape) != spec.shape
        or torch.promote_types(spec.dtype, h.dtype) != spec.dtype
    ):
        return torch.fft.ifft2(spec * h)
    return torch.fft.ifft2(spec.mul_(h), out=spec)  # no autograd: in place, one buffer


class FourierFilter(nn.Module):
    """Learnable complex filter H = sigmoid(a) · exp(iθ) · pupil (paper's parametrisation).

    ``learn_amplitude=False`` gives a phase-only filter (amplitude 1 inside the pupil).
    ``init``: ``flat`` (clear aperture), ``gpc`` (π/2 on the DC disk, the GPC baseline's filter,
    so the learned filter starts at that baseline) or ``random`` (small random phase).
    """

    def __init__(
        self, size: int, pupil_radius: float = 1.0, learn_amplitude: bool = True, init: str = "flat"
    ) -> None:
        super().__init__()
        self.size = size
        self.learn_amplitude = learn_amplitude
        # sigmoid(4) ≈ 0.98: start close to a clear aperture so stage 1 starts from bright-field.
        self.amplitude_logit = nn.Parameter(torch.full((size, size), 4.0))
        self.amplitude_logit.requires_grad_(learn_amplitude)
        if init == "random":
            g = torch.Generator().manual_seed(0)
            phase0 = 0.1 * torch.randn(size, size, generator=g)
        elif init == "gpc":  # the GPC baseline's filter: π/2 on the DC disk
            from dmicro_hw.optics.baselines import phase_contrast_filter

            phase0 = torch.angle(phase_contrast_filter(size, pupil_radius=2.0)).float()
        elif init == "flat":
            phase0 = torch.zeros(size, size)
        else:
            raise ValueError(f"init must be 'flat', 'gpc' or 'random', got {init!r}")
        self.phase = nn.Parameter(phase0)
        self.register_buffer("pupil", pupil_mask(size, pupil_radius))

    def amplitude(self) -> torch.Tensor:
        if self.learn_amplitude:
            return torch.sigmoid(self.amplitude_logit) * self.pupil
        return self.pupil

    def forward(self) -> torch.Tensor:
        """The centred complex filter, complex64 (N, N)."""
        return polar(self.amplitude(), self.phase)


class Encoder(nn.Module):
    """Base of all optical encoders: phase (B, N, N) rad → normalised frame (B, N/k, N/k).

    Subclasses implement :meth:`image_field`. The frame is in intensity units (clear field ≈ 1)
    after the sensor chain (binning, noise, ADC) and :meth:`Sensor.normalise`.
    """

    def __init__(self, optics: OpticsConfig, sensor: SensorConfig | None = None) -> None:
        super().__init__()
        self.optics = optics
        self.field_size = optics.field_size
        self.binning = optics.binning
        self.compression = optics.compression
        self.sensor = Sensor(sensor or SensorConfig(), self.binning)

    def image_field(self, field: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def intensity(self, phase: torch.Tensor) -> torch.Tensor:
        """Full-resolution image-plane intensity |E|² (B, N, N), float32 — no sensor."""
        return intensity(self.image_field(phase_to_field(phase)))

    def raw_frame(self, phase: torch.Tensor, generator: torch.Generator | None = None):
        """Raw camera ADU (B, N/k, N/k) as the sensor would deliver."""
        return self.sensor(self.intensity(phase), generator=generator)

    def forward(self, phase: torch.Tensor, generator: torch.Generator | None = None):
        """Phase (B, N, N) radians → normalised compressed frame (B, N/k, N/k) float32."""
        return self.sensor.normalise(self.raw_frame(phase, generator))


class LFFEncoder(Encoder):
    """Learnable Fourier filter encoder (∂μ's LFF).

    ``filter_transform`` (optional) maps the ideal centred filter to the one the hardware
    realises — the SLM model / export-in-the-loop: training through it trains what is displayed.
    """

    def __init__(
        self,
        optics: OpticsConfig,
        sensor: SensorConfig | None = None,
        learn_amplitude: bool = True,
        filter_transform: FilterTransform | nn.Module | None = None,
        init: str = "flat",
    ) -> None:
        super().__init__(optics, sensor)
        self.filter = FourierFilter(optics.field_size, optics.pupil_radius, learn_amplitude, init)
        self.filter_transform = filter_transform

    def effective_filter(self) -> torch.Tensor:
        h = self.filter()
        if self.filter_transform is not None:
            h = self.filter_transform(h)
        return h

    def image_field(self, field: torch.Tensor) -> torch.Tensor:
        return apply_4f(field, self.effective_filter())
