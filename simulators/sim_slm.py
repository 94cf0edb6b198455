"""Simulated phase SLM: implements the SLM protocol and displays onto a :class:`VirtualBench`.

``show(pattern)`` accepts integer grey levels (uint8/uint16, < 2^bit_depth) or float radians
(wrapped to [0, 2π) and converted to grey levels with the configured LUT, else a linear one). The
bench is told what is displayed and when, so frames captured during ``settle_time_s`` after a
change see the previous pattern and then a blend (see :meth:`VirtualBench._state_at`).

The SLM and the camera of one rig share the same bench (:func:`~.bench.get_bench`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from dmicro_hw.simulators.bench import VirtualBench, get_bench

from dmicro_hw.config import RigConfig, SLMDeviceConfig
from dmicro_hw.errors import ConfigError, DataError, DeviceError, FrameShapeError

log = logging.getLogger(__name__)

TWO_PI = 2 * math.pi


def load_lut(path: Any, bit_depth: int) -> np.ndarray:
    """A measured LUT file (.npy, float radians per grey level, 2^bit_depth entries, monotone)."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"slm.lut: cannot read {path} ({e})") from None
    levels = 2**bit_depth
    if table.shape != (levels,) or not np.all(np.isfinite(table)):
        raise ConfigError(
            f"slm.lut: {path} must hold {levels} finite phases (one per grey level), "
            f"got shape {table.shape}"
        )
    if np.any(np.diff(table) < 0):
        raise ConfigError(f"slm.lut: {path} must be non-decreasing (grey → radians)")
    return table.astype(np.float64)


def radians_to_grey(
    phase: np.ndarray,
    bit_depth: int,
    phase_range_rad: float = TWO_PI,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Wrap ``phase`` (radians) to [0, 2π) and map it to grey levels (uint8/uint16).

    The grey level whose phase is nearest on the circle is chosen, from ``lut`` (phase in radians
    per grey level, non-decreasing) or the linear response φ(g) = phase_range · g / 2^bits.
    """
    levels = 2**bit_depth
    phi = np.mod(np.asarray(phase, dtype=np.float64), TWO_PI)
    if lut is None:
        lut = phase_range_rad * np.arange(levels, dtype=np.float64) / levels
    idx = np.clip(np.searchsorted(lut, phi), 1, levels - 1)
    lo, hi = lut[idx - 1], lut[idx]
    g = np.where(phi - lo <= hi - phi, idx - 1, idx)
    g = np.where(phi <= lut[0], 0, np.where(phi >= lut[-1], levels - 1, g))
    # on the phase circle, φ just below 2π may be nearer to grey 0 than to the top level
    top_gap = phi - lut[-1]
    wrap_gap = TWO_PI + lut[0] - phi
    g = np.where((top_gap > 0) & (wrap_gap < top_gap), 0, g)
    return g.astype(np.uint8 if bit_depth <= 8 else np.uint16)


class SimSLM:
    """Simulated SLM connected to a virtual bench (implements :class:`~dmicro_hw.drivers.base.SLM`).

    Args:
        section: the rig's ``slm`` config section (pixels, pitch, bit depth, LUT, settle time).
        bench: the bench to display onto (default: a private one built from ``section``).
    """

    def __init__(self, section: SLMDeviceConfig, bench: VirtualBench | None = None) -> None:
        self.config = section
        self.shape: tuple[int, int] = (int(section.pixels[0]), int(section.pixels[1]))
        self.pitch_m: float = float(section.pitch_m)
        self.bit_depth: int = int(section.bit_depth)
        self.settle_time_s: float = float(section.settle_time_s)
        self.phase_range_rad: float = float(section.phase_range_rad)
        self._lut = load_lut(section.lut, self.bit_depth) if section.lut else None
        if bench is None:
            bench = VirtualBench.from_rig(RigConfig(slm=section))
        if bench.slm_shape != self.shape:
            raise ConfigError(f"slm.pixels {self.shape} differ from the bench's {bench.slm_shape}")
        self._bench = bench
        self._closed = False
        self.pattern_id: str = "blank"
        self.shown_count = 0

    @classmethod
    def from_config(cls, section: SLMDeviceConfig, rig: RigConfig | None = None) -> SimSLM:
        """Registry factory: the SLM of ``rig`` on the rig's shared bench."""
        rig = rig if rig is not None else RigConfig(slm=section)
        return cls(section, get_bench(rig))

    # ------------------------------------------------------------------ protocol
    def to_grey(self, pattern: np.ndarray) -> np.ndarray:
        """Validate ``pattern`` and return the grey levels this SLM would display."""
        a = np.asarray(pattern)
        if a.shape != self.shape:
            raise FrameShapeError(f"SLM pattern must have shape {self.shape}, got {a.shape}")
        if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            levels = 2**self.bit_depth
            if a.size and (int(a.min()) < 0 or int(a.max()) >= levels):
                raise DataError(
                    f"SLM grey levels must be in [0, {levels - 1}] for {self.bit_depth} bits, "
                    f"got [{int(a.min())}, {int(a.max())}]"
                )
            return a.astype(np.uint8 if self.bit_depth <= 8 else np.uint16)
        if np.issubdtype(a.dtype, np.floating):
            if not np.all(np.isfinite(a)):
                raise DataError("SLM phase pattern contains NaN or inf")
            return radians_to_grey(a, self.bit_depth, self.phase_range_rad, self._lut)
        raise DataError(f"SLM pattern dtype {a.dtype} is neither integer grey nor float radians")

    def show(self, pattern: np.ndarray, pattern_id: str = "") -> None:
        """Display grey levels (uint8/uint16) or a phase map (float radians) of shape ``shape``.

        Frames captured during the next ``settle_time_s`` see the transition.
        """
        if self._closed:
            raise DeviceError("SLM (sim) is closed; create a new one to display patterns")
        grey = self.to_grey(pattern)
        key = self._bench.display(grey, pattern_id, self.settle_time_s)
        self.pattern_id = pattern_id or key
        self.shown_count += 1
        log.debug("sim SLM shows pattern %s", self.pattern_id)

    def blank(self) -> None:
        """Display grey level 0 everywhere (zero phase: the safe state)."""
        if self._closed:
            return
        dtype = np.uint8 if self.bit_depth <= 8 else np.uint16
        self._bench.display(np.zeros(self.shape, dtype), "blank", self.settle_time_s)
        self.pattern_id = "blank"

    def close(self) -> None:
        """Blank the SLM and close it (idempotent)."""
        if self._closed:
            return
        try:
            self.blank()
        finally:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def info(self) -> dict[str, Any]:
        return {
            "backend": "sim",
            "shape": self.shape,
            "pitch_m": self.pitch_m,
            "bit_depth": self.bit_depth,
            "settle_time_s": self.settle_time_s,
            "pattern_id": self.pattern_id,
            "lut": "file" if self._lut is not None else "linear",
        }

    def __enter__(self) -> SimSLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimSLM(shape={self.shape}, bit_depth={self.bit_depth}, closed={self._closed})"
