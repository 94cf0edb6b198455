"""Free-space propagation of scalar fields: band-limited angular spectrum and Fresnel.

Fields are complex64 tensors of shape (B, H, W) (or (H, W)) sampled at ``pitch_m``. Transfer
functions are computed in float64 (the phase k·z is large; float32 loses ~1e-3 rad) and cast to
complex64, then cached per (shape, pitch, λ, z, device). Zero padding (``pad=True``) doubles the
grid so that the circular convolution of the FFT does not wrap light around the edges.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def frequency_grid(n_y: int, n_x: int, pitch_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/m) in FFT order, float64, each of shape (n_y, n_x)."""
    fy = np.fft.fftfreq(n_y, d=pitch_m)
    fx = np.fft.fftfreq(n_x, d=pitch_m)
    return np.meshgrid(fy, fx, indexing="ij")


@lru_cache(maxsize=64)
def _asm_transfer_np(
    n_y: int, n_x: int, pitch_m: float, wavelength_m: float, distance_m: float, band_limit: bool
) -> np.ndarray:
    fy, fx = frequency_grid(n_y, n_x, pitch_m)
    arg = 1.0 / wavelength_m**2 - fx**2 - fy**2
    propagating = arg > 0
    kz = 2 * math.pi * np.sqrt(np.where(propagating, arg, 0.0))
    h = np.exp(1j * kz * distance_m) * propagating
    if band_limit:
        # Matsushima & Shimobaba (2009): beyond f_lim the sampled chirp aliases.
        for n, f in ((n_x, fx), (n_y, fy)):
            df = 1.0 / (n * pitch_m)
            f_lim = 1.0 / (wavelength_m * math.sqrt((2 * df * abs(distance_m)) ** 2 + 1))
            h = h * (np.abs(f) <= f_lim)
    return h.astype(np.complex64)


@lru_cache(maxsize=64)
def _fresnel_transfer_np(
    n_y: int, n_x: int, pitch_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    fy, fx = frequency_grid(n_y, n_x, pitch_m)
    k = 2 * math.pi / wavelength_m
    phase = k * distance_m - math.pi * wavelength_m * distance_m * (fx**2 + fy**2)
    return np.exp(1j * phase).astype(np.complex64)


def asm_transfer(
    shape: tuple[int, int],
    pitch_m: float,
    wavelength_m: float,
    distance_m: float,
    band_limit: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Band-limited angular-spectrum transfer function H(fx, fy), FFT order, complex64 (H, W)."""
    h = _asm_transfer_np(
        int(shape[0]),
        int(shape[1]),
        float(pitch_m),
        float(wavelength_m),
        float(distance_m),
        bool(band_limit),
    )
    return torch.from_numpy(h).to(device)


def fresnel_transfer(
    shape: tuple[int, int],
    pitch_m: float,
    wavelength_m: float,
    distance_m: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Paraxial (Fresnel) transfer function exp(ikz − iπλz(fx²+fy²)), FFT order, complex64."""
    h = _fresnel_transfer_np(
        int(shape[0]), int(shape[1]), float(pitch_m), float(wavelength_m), float(distance_m)
    )
    return torch.from_numpy(h).to(device)


def _pad(field: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = field.shape[-2:]
    py, px = h // 2, w // 2
    padded = torch.nn.functional.pad(field, (px, w - px, py, h - py))
    return padded, (py, py + h, px, px + w)


def _propagate(field: torch.Tensor, transfer_fn, pad: bool) -> torch.Tensor:
    if not field.is_complex():
        raise TypeError("field must be a complex tensor")
    if pad:
        work, (y0, y1, x0, x1) = _pad(field)
    else:
        work = field
    h = transfer_fn(tuple(work.shape[-2:]), work.device)
    out = torch.fft.ifft2(torch.fft.fft2(work) * h)
    return out[..., y0:y1, x0:x1] if pad else out


def angular_spectrum(
    field: torch.Tensor,
    distance_m: float,
    wavelength_m: float,
    pitch_m: float,
    pad: bool = True,
    band_limit: bool = True,
) -> torch.Tensor:
    """Propagate ``field`` (…, H, W) complex over ``distance_m`` with the band-limited ASM.

    Exact for the scalar Helmholtz equation (evanescent waves dropped); ``pad`` zero-pads ×2 to
    avoid wrap-around. Differentiable with respect to ``field``.
    """
    return _propagate(
        field,
        lambda s, d: asm_transfer(s, pitch_m, wavelength_m, distance_m, band_limit, d),
        pad,
    )


def fresnel(
    field: torch.Tensor,
    distance_m: float,
    wavelength_m: float,
    pitch_m: float,
    pad: bool = True,
) -> torch.Tensor:
    """Propagate ``field`` (…, H, W) complex with the Fresnel (paraxial) transfer function."""
    return _propagate(
        field, lambda s, d: fresnel_transfer(s, pitch_m, wavelength_m, distance_m, d), pad
    )
