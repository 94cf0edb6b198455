"""The one phase ↔ grey-level mapping of a phase SLM, as pure steps (beside the SLM model).

    phase (rad) ─ wrap to [0, 2π) ─ invert the LUT (relative to grey 0, linear between levels)
                ─ round to the bit depth ─ uint8/uint16 grey levels

The export (:mod:`dmicro_hw.export`, differentiable, in training too), the SLM drivers
(:func:`phase_to_grey` behind ``SLM.show`` of radians) and the calibration probe patterns all use
these steps, so what is trained is what a driver displays. The LUT is the phase of every grey
level (non-decreasing; :func:`validate_monotone_table`), taken relative to its first entry (a
global phase changes no image); without one the response is linear, φ(g) = range·g / 2**bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dmicro_hw.errors import CheckpointError
from dmicro_hw.optics.sensor import straight_through

TWO_PI = 2 * math.pi


def linear_table(bit_depth: int, phase_range_rad: float = TWO_PI) -> np.ndarray:
    """Nominal LUT φ(g) = phase_range_rad · g / 2**bit_depth, float64 (2**bit_depth,)."""
    levels = 2**bit_depth
    return np.arange(levels, dtype=np.float64) * (float(phase_range_rad) / levels)


def validate_monotone_table(
    table: np.ndarray, where: str = "LUT", err: type[Exception] = CheckpointError
) -> np.ndarray:
    """Make a measured LUT non-decreasing (running maximum removes measurement wiggles).

    A table that falls overall (last ≤ first) or whose wiggles exceed 5 % of its range is not a
    phase response this export can invert.
    """
    span = float(table[-1] - table[0])
    if span <= 0:
        raise err(
            f"{where}: phase must increase with grey level (first {table[0]:.3f} rad, "
            f"last {table[-1]:.3f} rad)"
        )
    mono = np.maximum.accumulate(table)
    if float(np.max(mono - table)) > 0.05 * span:
        raise err(f"{where}: not monotone (drops by more than 5 % of its range)")
    return mono


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Wrap radians into [0, 2π) (gradient 1)."""
    out = torch.remainder(phase, TWO_PI)
    # float rounding can give exactly 2π for tiny negative inputs
    return torch.where(out >= TWO_PI, out - TWO_PI, out)


def inverse_lut(phase_wrapped: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Wrapped phase [0, 2π) → fractional grey level [0, levels − 1], float32, differentiable.

    ``table`` (levels,) is the phase of each grey level, non-decreasing; it is used relative to
    its first entry. Inside the table the inversion interpolates linearly between levels (slope
    1/Δφ); a phase beyond the table's range (range < 2π) goes to the cyclically nearer end,
    0 or levels − 1, with zero gradient.
    """
    t = (table - table[0]).to(torch.float64)
    levels = t.shape[0]
    x = phase_wrapped.to(torch.float64)
    hi = torch.searchsorted(t, x.detach(), right=True).clamp(1, levels - 1)
    lo = hi - 1
    t_lo, t_hi = t[lo], t[hi]
    step = (t_hi - t_lo).clamp_min(1e-12)
    g = lo.to(torch.float64) + ((x - t_lo) / step).clamp(0.0, 1.0)
    top = t[-1]
    beyond = x > top
    if bool(beyond.any()):
        to_top = x - top
        to_zero = TWO_PI - x
        end = torch.where(to_top <= to_zero, float(levels - 1), 0.0).to(torch.float64)
        g = torch.where(beyond, end + 0.0 * x, g)
    return g.to(torch.float32)


def quantise(grey: torch.Tensor, bit_depth: int, ste: bool = True) -> torch.Tensor:
    """Round fractional grey levels to integers in [0, 2^bits − 1] (float32 tensor).

    With ``ste`` the gradient passes straight through the rounding (forward: rounded levels).
    """
    top = float(2**bit_depth - 1)
    g = grey.clamp(0.0, top)
    q = torch.round(g)
    return straight_through(q, g) if ste else q


def pattern_array(grey: torch.Tensor, bit_depth: int) -> np.ndarray:
    """Integer-valued grey tensor (R, C) → numpy uint8 (≤ 8 bit) or uint16 (9–16 bit)."""
    dtype = np.uint8 if bit_depth <= 8 else np.uint16
    a = grey.detach().cpu().round().clamp(0, 2**bit_depth - 1).numpy()
    return a.astype(dtype)


def phase_to_grey(
    phase: np.ndarray,
    bit_depth: int,
    phase_range_rad: float = TWO_PI,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Phase (radians, any real values, any shape) → grey levels (uint8 ≤ 8 bits, else uint16):
    :func:`wrap_phase` → :func:`inverse_lut` → :func:`quantise`, the export's steps.

    ``lut``: phase of every grey level (made non-decreasing by a running maximum); ``None``: the
    linear response of ``phase_range_rad``.
    """
    table = linear_table(bit_depth, phase_range_rad) if lut is None else np.asarray(lut)
    table = np.maximum.accumulate(table.astype(np.float64))
    phi = torch.from_numpy(np.asarray(phase, dtype=np.float64))
    with torch.no_grad():
        g = inverse_lut(wrap_phase(phi), torch.from_numpy(table))
        return pattern_array(quantise(g, bit_depth, ste=False), bit_depth)
