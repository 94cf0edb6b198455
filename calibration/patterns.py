"""Probe patterns for the calibration, as grey levels on the SLM's own pixel grid.

All coordinates are SLM pixels relative to the nominal optical axis, pixel (R//2, C//2) — the
point the SLM model maps to the filter centre when the offset is zero. Angles are counter-clockwise
in (row, col) image coordinates, as in :class:`~dmicro_hw.optics.slm.SLMGeometry`.

Phase patterns (ramps, lenses) are wrapped to [0, 2π) and converted to grey levels with a LUT
(``phase_to_grey``; the linear nominal LUT until one is measured). Grey-level patterns (flat,
edges, discs) are exact: they are what the LUT measurement itself needs.
"""

from __future__ import annotations

import math

import numpy as np

from dmicro_hw.optics import slm_grey


def slm_coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (R, C) relative to the nominal axis (R//2, C//2)."""
    r = np.arange(shape[0], dtype=np.float64)[:, None] - shape[0] // 2
    c = np.arange(shape[1], dtype=np.float64)[None, :] - shape[1] // 2
    return np.broadcast_to(r, shape), np.broadcast_to(c, shape)


def phase_to_grey(phase: np.ndarray, bit_depth: int, lut: np.ndarray | None = None) -> np.ndarray:
    """Wrap ``phase`` (rad) to [0, 2π) and convert to grey levels (uint16) with the one mapping
    (:func:`dmicro_hw.optics.slm_grey.phase_to_grey`; ``lut`` None: grey = φ / 2π · 2^bits)."""
    return slm_grey.phase_to_grey(phase, bit_depth, lut=lut).astype(np.uint16)


def flat(shape: tuple[int, int], grey: int = 0) -> np.ndarray:
    return np.full(shape, grey, dtype=np.uint16)


def ramp(
    shape: tuple[int, int],
    period_px: float,
    angle_rad: float,
    bit_depth: int,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Blazed grating (wrapped linear phase ramp) of ``period_px`` SLM pixels along ``angle``.

    In the Fourier plane a ramp of k rad/px shifts the image by N·Mᵀk/2π samples, M the SLM
    placement matrix (scale·ratio·rotation): the image shifts give rotation and scale.
    """
    r, c = slm_coords(shape)
    u = c * math.cos(angle_rad) + r * math.sin(angle_rad)
    return phase_to_grey(2 * math.pi * u / period_px, bit_depth, lut)


def edge(
    shape: tuple[int, int], angle_rad: float, position_px: float, grey: int, centre=(0.0, 0.0)
) -> np.ndarray:
    """Half-plane: ``grey`` where (q − centre)·n ≥ position, 0 elsewhere (n at ``angle``)."""
    r, c = slm_coords(shape)
    u = (c - centre[1]) * math.cos(angle_rad) + (r - centre[0]) * math.sin(angle_rad)
    return np.where(u >= position_px, grey, 0).astype(np.uint16)


def disc(
    shape: tuple[int, int], centre: tuple[float, float], radius_px: float, grey: int, back: int = 0
) -> np.ndarray:
    """Disc of ``grey`` (radius in SLM px) centred at ``centre`` (dy, dx), ``back`` elsewhere."""
    r, c = slm_coords(shape)
    inside = (r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius_px**2
    return np.where(inside, grey, back).astype(np.uint16)


def sector(
    shape: tuple[int, int],
    centre: tuple[float, float],
    inner_px: float,
    outer_px: float,
    angle_rad: float,
    width_rad: float,
    grey: int,
) -> np.ndarray:
    """Annular sector of ``grey`` on grey 0: radii in [``inner_px``, ``outer_px``) SLM px about
    ``centre`` (dy, dx), angles within ±``width_rad``/2 of ``angle_rad``."""
    r, c = slm_coords(shape)
    dy, dx = r - centre[0], c - centre[1]
    rad = np.hypot(dy, dx)
    off = np.angle(np.exp(1j * (np.arctan2(dy, dx) - angle_rad)))
    inside = (rad >= inner_px) & (rad < outer_px) & (np.abs(off) <= width_rad / 2)
    return np.where(inside, grey, 0).astype(np.uint16)


def lens(
    shape: tuple[int, int],
    phase_at_radius: float,
    radius_px: float,
    bit_depth: int,
    centre: tuple[float, float] = (0.0, 0.0),
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Quadratic phase (a displayed defocus) reaching ``phase_at_radius`` rad at ``radius_px``."""
    r, c = slm_coords(shape)
    rho2 = ((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / radius_px**2
    return phase_to_grey(phase_at_radius * rho2, bit_depth, lut)


def checker(shape: tuple[int, int], grey_a: int, grey_b: int, period_px: int = 2) -> np.ndarray:
    """Checkerboard of two grey levels with square cells of period_px/2 pixels."""
    r, c = slm_coords(shape)
    h = max(period_px // 2, 1)
    sel = ((np.floor(r / h) + np.floor(c / h)) % 2) == 0
    return np.where(sel, grey_a, grey_b).astype(np.uint16)
