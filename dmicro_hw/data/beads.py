"""Placeholder of the projected-sphere model (replaced by the beads branch on merge)."""

from __future__ import annotations

import math

import numpy as np


def sphere_phase(yy, xx, cy, cx, radius_m, delta_n, wavelength_m, pixel_size_m, supersample=4):
    """Projected phase (2π/λ)·Δn·2·sqrt(R² − r²), averaged over ``supersample²`` points/pixel."""
    r_px = radius_m / pixel_size_m
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    acc = np.zeros(np.broadcast(yy, xx).shape)
    for oy in off:
        for ox in off:
            d2 = (yy + oy - cy) ** 2 + (xx + ox - cx) ** 2
            acc += np.sqrt(np.clip(r_px * r_px - d2, 0.0, None))
    chord_m = 2.0 * acc / supersample**2 * pixel_size_m
    return (2 * math.pi / wavelength_m) * delta_n * chord_m
