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
from dmicro_hw.drivers.slm_base import SLMBase
from dmicro_hw.drivers.slm_pixels import load_lut, phase_to_grey
from dmicro_hw.errors import ConfigError
from dmicro_hw.simulators.bench import VirtualBench

log = logging.getLogger(__name__)

# The grey-level conversion is the one of the real display SLM drivers (drivers/slm_pixels.py),
# so the twin turns a phase map into exactly the pixels a real SLM would show.
radians_to_grey = phase_to_grey


class SimSLM(SLMBase):
    """Simulated SLM connected to a virtual bench (implements :class:`~dmicro_hw.drivers.base.SLM`;
    the generic part is :class:`~dmicro_hw.drivers.slm_base.SLMBase`'s).

    Args:
        section: the rig's ``slm`` config section (pixels, pitch, bit depth, LUT, settle time).
        bench: the bench to display onto (default: a private one built from ``section``).
    """

    backend = "sim"
    BLANK_ON_OPEN = False  # the bench starts blank; the settle model sees only real changes

    def __init__(self, section: SLMDeviceConfig, bench: VirtualBench | None = None) -> None:
        super().__init__(
            (int(section.pixels[0]), int(section.pixels[1])),
            pitch_m=float(section.pitch_m),
            bit_depth=int(section.bit_depth),
            settle_time_s=float(section.settle_time_s),
            phase_range_rad=float(section.phase_range_rad),
            lut=load_lut(section.lut, int(section.bit_depth)) if section.lut else None,
        )
        self.config = section
        if bench is None:
            bench = VirtualBench.from_rig(RigConfig(slm=section))
        if bench.slm_shape != self.shape:
            raise ConfigError(f"slm.pixels {self.shape} differ from the bench's {bench.slm_shape}")
        self._bench = bench
        self.pattern_id = "blank"
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

    # ------------------------------------------------------------------ hooks
    def _hw_open(self) -> None:
        """Nothing to open: the bench is there."""

    def _hw_write(self, grey: np.ndarray) -> str:
        """Tell the bench what is displayed from now on (frames captured during the next
        ``settle_time_s`` see the transition); returns the pattern's content key."""
        pattern_id = self._showing_id
        key = self._bench.display(grey, pattern_id, self.settle_time_s)
        if pattern_id != "blank":
            self.shown_count += 1
            log.debug("sim SLM shows pattern %s", pattern_id or key)
        return key

    def _hw_settle(self, grey: np.ndarray, t0: float) -> None:
        """No wait: the bench models the settle time on its clock."""

    def _hw_close(self) -> None:
        """Nothing to release."""

    def _blank_grey(self) -> np.ndarray:
        """Grey level 0 everywhere (zero phase: the safe state)."""
        return np.zeros(self.shape, np.uint8 if self.bit_depth <= 8 else np.uint16)

    def blank(self) -> None:
        """Display grey level 0 everywhere (zero phase: the safe state)."""
        if self._closed:
            return
        self._write(self._blank_grey(), "blank")
        self.pattern_id = "blank"

    def _hw_info(self) -> dict[str, Any]:
        return {"pitch_m": self.pitch_m, "lut": "file" if self.lut is not None else "linear"}

    def __repr__(self) -> str:
        return f"SimSLM(shape={self.shape}, bit_depth={self.bit_depth}, closed={self._closed})"
