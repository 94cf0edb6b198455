"""Zernike polynomials indexed by Noll's convention, normalised to unit RMS over the unit disk.

Used for pupil aberrations in the Fourier plane: W(ρ, θ) = Σ_j c_j Z_j(ρ, θ) with c_j in radians
(RMS phase of each term). Noll (1976): j = 1 piston, 2/3 tilt, 4 defocus, 5/6 astigmatism,
7/8 coma, 11 primary spherical.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index j ≥ 1 → (radial order n, signed azimuthal frequency m)."""
    if j < 1:
        raise ValueError(f"Noll index must be >= 1, got {j}")
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2 - 1  # 0-based position within radial order n
    ms = [m for m in range(-n, n + 1, 2)]
    abs_m = sorted({abs(m) for m in ms})
    # ordering inside an order: by |m| ascending, with even j ↔ cos (m ≥ 0), odd j ↔ sin (m < 0)
    candidates = []
    for am in abs_m:
        candidates.extend([am] if am == 0 else [am, am])
    am = candidates[k]
    if am == 0:
        return n, 0
    return n, am if j % 2 == 0 else -am


def radial_polynomial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """Zernike radial polynomial R_n^|m|(ρ)."""
    m = abs(m)
    out = np.zeros_like(rho)
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * math.factorial(n - s)
        c /= math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s)
        out = out + c * rho ** (n - 2 * s)
    return out


def zernike_nm(n: int, m: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Noll-normalised Z_n^m on polar coordinates (zero outside ρ ≤ 1), float64."""
    norm = math.sqrt(n + 1) if m == 0 else math.sqrt(2 * (n + 1))
    r = radial_polynomial(n, m, rho)
    ang = np.cos(m * theta) if m >= 0 else np.sin(-m * theta)
    return np.where(rho <= 1.0, norm * r * ang, 0.0)


@lru_cache(maxsize=128)
def _zernike_grid(j: int, size: int, radius_px: float) -> np.ndarray:
    c = (size - 1) / 2 if size % 2 else size / 2  # FFT-centred: DC at index size//2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    y, x = (y - c) / radius_px, (x - c) / radius_px
    rho, theta = np.hypot(x, y), np.arctan2(y, x)
    n, m = noll_to_nm(j)
    return zernike_nm(n, m, rho, theta).astype(np.float32)


def zernike_noll(j: int, size: int, radius_px: float | None = None) -> torch.Tensor:
    """Z_j on a centred (size, size) grid (centre = index size//2, as after fftshift), float32.

    ``radius_px`` is the unit-disk radius in samples (default size/2, the paper's pupil).
    """
    return torch.from_numpy(_zernike_grid(int(j), int(size), float(radius_px or size / 2)))


def zernike_phase(coefficients: dict[int, float] | torch.Tensor, size: int, radius_px=None):
    """Σ c_j Z_j on a centred grid. ``coefficients``: {noll j: rad} or a tensor c[j-1] (j≥1)."""
    if isinstance(coefficients, dict):
        out = torch.zeros(size, size)
        for j, c in coefficients.items():
            out = out + float(c) * zernike_noll(j, size, radius_px)
        return out
    basis = torch.stack(
        [zernike_noll(j + 1, size, radius_px) for j in range(coefficients.shape[-1])]
    ).to(coefficients.device)
    return torch.einsum("j,jhw->hw", coefficients, basis)
