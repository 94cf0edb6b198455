"""Pattern → SLM grey levels → displayable image; shared by the display-based SLM backends.

``to_grey`` accepts what :meth:`SLM.show` accepts:

* unsigned integers (uint8/uint16): grey levels, shown unchanged (must be < 2**bit_depth);
* floats: phase in radians, wrapped to [0, 2π) and mapped to grey levels through the LUT
  (``lut[g]`` = phase in radians of grey level ``g``, nearest level on the circle), or linearly:
  ``g = round(φ / phase_range_rad · 2**bit_depth)`` — the inverse of the SLM model
  (:class:`dmicro_hw.optics.slm.PhaseResponse`: φ(g) = range · g / 2**bits), with the level
  2**bits (= 2π at a 2π range) wrapping to 0.

``to_display`` turns grey levels into the 8-bit image a monitor output carries:

* ``bit_depth <= 8``: one grey channel (the video card sends R = G = B = g);
* ``bit_depth > 8``, ``high_bit_mode="rgb"`` (default): 16-bit packing, high byte (g >> 8) on the
  red channel, low byte (g & 255) on green, blue 0 — the convention of SLMs that take >8-bit data
  over DVI/HDMI (check your SLM manual: some use other channel orders);
* ``bit_depth > 8``, ``high_bit_mode="top8"``: the top 8 bits as grey (g >> (bit_depth − 8));
  precision is lost — for SLMs driven at 8 bits with a higher-bit LUT upstream.

The arrays returned by ``to_display`` are BGR (OpenCV order) when they have 3 channels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dmicro_hw.errors import ConfigError, FrameShapeError

TWO_PI = 2.0 * math.pi
HighBitMode = Literal["rgb", "top8"]


def load_lut(path: Path | str, bit_depth: int) -> np.ndarray:
    """Load a measured LUT (.npy, float phase in radians per grey level, 2**bit_depth entries)."""
    p = Path(path)
    try:
        lut = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"slm.lut: cannot read {p} ({e})") from None
    levels = 2**bit_depth
    if lut.ndim != 1 or lut.shape[0] != levels or not np.issubdtype(lut.dtype, np.number):
        raise ConfigError(
            f"slm.lut: {p} must be a 1-D array of {levels} phases (bit_depth {bit_depth}), "
            f"got shape {lut.shape} dtype {lut.dtype}"
        )
    lut = lut.astype(np.float64)
    if not np.all(np.isfinite(lut)):
        raise ConfigError(f"slm.lut: {p} contains NaN or infinite values")
    return lut


def phase_to_grey(
    phase: np.ndarray,
    bit_depth: int,
    phase_range_rad: float = TWO_PI,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Phase (radians, any real values) → grey levels (uint8 for ≤8 bits, else uint16): the one
    mapping, :func:`dmicro_hw.optics.slm_grey.phase_to_grey` (the export's steps; torch is
    imported on first use)."""
    from dmicro_hw.optics.slm_grey import phase_to_grey as mapping

    return mapping(phase, bit_depth, phase_range_rad, lut)


def to_grey(
    pattern: np.ndarray,
    shape: tuple[int, int],
    bit_depth: int,
    phase_range_rad: float = TWO_PI,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Validate ``pattern`` (shape ``(rows, cols)``) and return grey levels (see module doc)."""
    a = np.asarray(pattern)
    if a.shape != tuple(shape):
        raise FrameShapeError(
            f"SLM pattern has shape {a.shape}, the SLM is {tuple(shape)} (rows, cols)"
        )
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise FrameShapeError("SLM pattern (radians) contains NaN or infinite values")
        return phase_to_grey(a, bit_depth, phase_range_rad, lut)
    if a.dtype in (np.uint8, np.uint16):
        top = int(a.max()) if a.size else 0
        if top >= 2**bit_depth:
            raise FrameShapeError(
                f"SLM pattern grey level {top} does not fit the SLM's {bit_depth} bits"
            )
        return a.astype(np.uint8 if bit_depth <= 8 else np.uint16, copy=False)
    raise FrameShapeError(
        f"SLM pattern dtype {a.dtype}: use uint8/uint16 grey levels or float radians"
    )


def to_display(grey: np.ndarray, bit_depth: int, high_bit_mode: HighBitMode = "rgb") -> np.ndarray:
    """Grey levels → uint8 image for a video output: (H, W) grey or (H, W, 3) BGR."""
    if bit_depth <= 8:
        return np.ascontiguousarray(grey, dtype=np.uint8)
    g = grey.astype(np.uint16, copy=False)
    if high_bit_mode == "top8":
        return (g >> (bit_depth - 8)).astype(np.uint8)
    if high_bit_mode != "rgb":
        raise ConfigError(
            f"slm.options.high_bit_mode: must be 'rgb' or 'top8', got {high_bit_mode!r}"
        )
    out = np.zeros((*g.shape, 3), dtype=np.uint8)
    out[..., 2] = g >> 8  # red (BGR order)
    out[..., 1] = g & 0xFF  # green
    return out


def from_display_rgb(
    rgb: np.ndarray, bit_depth: int, high_bit_mode: HighBitMode = "rgb"
) -> np.ndarray:
    """Inverse of :func:`to_display` for an RGB screenshot (H, W, 3): the grey levels it carries."""
    rgb = np.asarray(rgb)
    if bit_depth <= 8:
        return rgb[..., 0].astype(np.uint8)
    if high_bit_mode == "top8":
        return rgb[..., 0].astype(np.uint16) << (bit_depth - 8)
    return (rgb[..., 0].astype(np.uint16) << 8) | rgb[..., 1].astype(np.uint16)


def display_slm_kwargs(section: Any, allowed_options: set[str]) -> tuple[dict[str, Any], dict]:
    """Constructor arguments shared by the display SLM backends, from the rig's ``slm`` section.

    Returns (common keyword arguments: shape, pitch_m, bit_depth, settle_time_s,
    phase_range_rad, lut; the backend's ``slm.options`` as a new dict). Raises ConfigError
    naming unknown option keys and the allowed ones.
    """
    from dmicro_hw.errors import ConfigError

    opts = dict(section.options or {})
    unknown = sorted(set(opts) - allowed_options)
    if unknown:
        raise ConfigError(
            f"slm.options: unknown key(s) {unknown}; allowed: {sorted(allowed_options)}"
        )
    common = {
        "shape": tuple(section.pixels),
        "pitch_m": section.pitch_m,
        "bit_depth": section.bit_depth,
        "settle_time_s": section.settle_time_s,
        "phase_range_rad": section.phase_range_rad,
        "lut": load_lut(section.lut, section.bit_depth) if section.lut else None,
    }
    return common, opts
