"""The one pixel-format table: PFNC mono format name → bits per pixel and the array dtype frames
of that format are handed out and stored in.

Packed formats (``Mono10p``, ``Mono12Packed`` …) are unpacked by the driver into 16-bit containers
with right-justified values (``0 … 2**bits − 1``), so their dtype is ``uint16`` like ``Mono10``.
Drivers, simulators, calibration and the acquisition pipeline all look formats up here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PixelFormat:
    """One PFNC mono format: ``bits`` significant bits, delivered as ``dtype``."""

    name: str
    bits: int
    dtype: np.dtype
    packed: bool = False


def _fmt(name: str, bits: int, packed: bool = False) -> PixelFormat:
    return PixelFormat(name, bits, np.dtype(np.uint8 if bits <= 8 else np.uint16), packed)


#: every mono format dmicro-hw reads, in the order error messages list them
PIXEL_FORMATS: dict[str, PixelFormat] = {
    f.name: f
    for f in (
        _fmt("Mono8", 8),
        _fmt("Mono10", 10),
        _fmt("Mono12", 12),
        _fmt("Mono14", 14),
        _fmt("Mono16", 16),
        _fmt("Mono10p", 10, packed=True),
        _fmt("Mono12p", 12, packed=True),
        _fmt("Mono10Packed", 10, packed=True),
        _fmt("Mono12Packed", 12, packed=True),
    )
}
#: the formats a frame source can produce without unpacking (what the simulated camera offers)
UNPACKED_FORMATS: tuple[str, ...] = tuple(n for n, f in PIXEL_FORMATS.items() if not f.packed)


def format_bits(pixel_format: str, default: int | None = None) -> int | None:
    """Bits per pixel of ``pixel_format``; ``default`` when the table does not know it."""
    f = PIXEL_FORMATS.get(pixel_format)
    return f.bits if f is not None else default
