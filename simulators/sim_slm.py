"""Simulated phase SLM: implements the SLM protocol and displays onto a :class:`VirtualBench`.

``show(pattern)`` accepts integer grey levels (uint8/uint16, < 2^bit_depth) or float radians
(wrapped to [0, 2π) and converted to grey levels with the configured LUT, else a linear one),
through the same conversion as the real display SLMs (:mod:`dmicro_hw.drivers.slm_pixels`). The
bench is told what is displayed and when, so frames captured during ``settle_time_s`` after a
change see the previous pattern and then a blend (see :meth:`VirtualBench._state_at`).

The SLM and the camera of one rig share the bench that :func:`dmicro_hw.rig.open_rig` builds and
hands to both (``bench=``); an SLM built alone has a private bench.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dmicro_hw.config import RigConfig, SLMDeviceConfig
from dmicro_hw.drivers.slm_pixels import load_lut, phase_to_grey, to_grey
from dmicro_hw.errors import ConfigError, DeviceError
from dmicro_hw.simulators.bench import VirtualBench

log = logging.getLogger(__name__)

# The grey-level conversion is the one of the real display SLM drivers (drivers/slm_pixels.py),
# so the twin turns a phase map into exactly the pixels a real SLM would show.
radians_to_grey = phase_to_grey


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
    def from_config(
        cls,
        section: SLMDeviceConfig,
        rig: RigConfig | None = None,
        bench: VirtualBench | None = None,
    ) -> SimSLM:
        """Registry factory: the SLM of ``rig`` displaying onto ``bench`` (the rig's shared bench,
        from :func:`dmicro_hw.rig.open_rig`; default a private one built from ``rig``)."""
        if bench is None:
            bench = VirtualBench.from_rig(rig if rig is not None else RigConfig(slm=section))
        return cls(section, bench)

    # ------------------------------------------------------------------ protocol
    def to_grey(self, pattern: np.ndarray) -> np.ndarray:
        """Validate ``pattern`` and return the grey levels this SLM would display."""
        return to_grey(pattern, self.shape, self.bit_depth, self.phase_range_rad, self._lut)

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
