"""Generic SLM behaviour, once: phase → grey, state checks, settle, safe close.

A backend subclasses :class:`SLMBase` and fills the ``_hw_*`` hooks (slmsuite's ``set_phase``
around ``_set_phase_hw``; python-microscope's ``shutdown`` around ``_do_shutdown``); everything
the pipeline calls (:class:`~dmicro_hw.drivers.base.SLM`) is here:

* ``open()`` → ``_hw_open()`` once (it may return the device's (rows, cols), checked against
  ``slm.pixels``), then blank (``BLANK_ON_OPEN``; else the hook left it blank):
  ``pattern_id == "blank"``;
* ``show(pattern, pattern_id)``: grey levels or radians through the one phase → grey mapping
  (:func:`~dmicro_hw.drivers.slm_pixels.to_grey`: wrap, LUT, quantise; FrameShapeError on a
  wrong shape or non-finite phase), ``_hw_write(grey)``, then ``_hw_settle`` (default:
  sleep ``settle_time_s``); opens on first use, DeviceError after ``close()``;
* ``blank()`` shows zero phase (the safe state; a no-op once closed, close left it blank);
* ``close()`` blanks (best effort) and ``_hw_close()`` once — idempotent;
* ``info()`` = ``{"backend", "shape", "bit_depth", "settle_time_s", "pattern_id", **_hw_info()}``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from dmicro_hw.drivers.slm_pixels import to_grey
from dmicro_hw.errors import DeviceError

log = logging.getLogger(__name__)


class SLMBase:
    """Generic part of every SLM backend (see the module docstring).

    Args:
        shape: (rows, cols) SLM pixels; pitch_m: pixel pitch (m); bit_depth: grey-level bits;
        settle_time_s: liquid-crystal response (s) waited after each show; phase_range_rad:
        phase of the full grey range without a LUT; lut: phase (rad) of each grey level.
    """

    #: registry name, reported by :meth:`info`
    backend: str = "slm"
    #: open() writes zero phase after ``_hw_open`` (False: the hook leaves the device blank)
    BLANK_ON_OPEN: bool = True

    def __init__(
        self,
        shape: tuple[int, int],
        pitch_m: float = 8e-6,
        bit_depth: int = 8,
        settle_time_s: float = 0.05,
        phase_range_rad: float = 2 * math.pi,
        lut: np.ndarray | None = None,
    ) -> None:
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.pitch_m = float(pitch_m)
        self.bit_depth = int(bit_depth)
        self.settle_time_s = float(settle_time_s)
        self.phase_range_rad = float(phase_range_rad)
        self.lut = lut
        self.pattern_id = ""
        self.shown_at = 0.0
        self._showing_id = ""
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------------ VENDOR hooks
    def _hw_open(self) -> tuple[int, int] | None:
        """VENDOR: open the SLM (SDK handle or window); return its (rows, cols) to be checked
        against ``slm.pixels``, or None when the hook checked the size itself."""
        raise NotImplementedError(f"{type(self).__name__}._hw_open: open the SLM here")

    def _hw_write(self, grey: np.ndarray) -> str | None:
        """VENDOR: put ``grey`` ((rows, cols) uint8, or uint16 above 8 bits) on the SLM and
        return when the device has accepted it (the settle time is waited for you); may return
        an id of what is shown (used when the caller gave none). ``self._showing_id`` is the id
        the caller gave."""
        raise NotImplementedError(f"{type(self).__name__}._hw_write: send the grey levels here")

    def _hw_settle(self, grey: np.ndarray, t0: float) -> None:
        """Wait until ``grey`` (written at ``time.monotonic() == t0``) is on the glass and
        settled; default: sleep ``settle_time_s``."""
        time.sleep(self.settle_time_s)

    def _hw_close(self) -> None:
        """VENDOR: release the SLM (called once per open)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_close: release the SLM here")

    def _hw_info(self) -> dict[str, Any]:
        """VENDOR: further facts for :meth:`info`."""
        return {}

    def _blank_grey(self) -> np.ndarray:
        """Grey levels of zero phase (the safe state)."""
        return to_grey(
            np.zeros(self.shape, np.float64),
            self.shape,
            self.bit_depth,
            self.phase_range_rad,
            self.lut,
        )

    # ------------------------------------------------------------------ generic part
    def _write(self, grey: np.ndarray, pattern_id: str) -> str | None:
        self._showing_id = pattern_id
        return self._hw_write(grey)

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self) -> Any:
        """Open and blank the SLM (idempotent)."""
        if not self._opened:
            got = self._hw_open()
            if got is not None and tuple(int(v) for v in got) != self.shape:
                try:
                    self._hw_close()
                finally:
                    raise DeviceError(
                        f"slm.pixels {list(self.shape)} but the device is "
                        f"{[int(v) for v in got]} (rows, cols)"
                    )
            self._opened, self._closed = True, False
            if self.BLANK_ON_OPEN:
                self._write(self._blank_grey(), "blank")
            self.pattern_id = "blank"
        return self

    def to_grey(self, pattern: np.ndarray) -> np.ndarray:
        """Validate ``pattern`` (grey levels or radians) and return the grey levels to display."""
        return to_grey(pattern, self.shape, self.bit_depth, self.phase_range_rad, self.lut)

    def show(self, pattern: np.ndarray, pattern_id: str = "") -> None:
        """Display ``pattern`` (grey levels or radians, shape ``shape``) and wait until it has
        settled; afterwards ``pattern_id``/``shown_at`` describe what is on the SLM."""
        if not self._opened:
            if self._closed:
                raise DeviceError(
                    f"slm ({self.backend}): show() after close(): the SLM is closed; open a new one"
                )
            self.open()
        grey = self.to_grey(pattern)
        t0 = time.monotonic()
        shown = self._write(grey, pattern_id)
        self._hw_settle(grey, t0)
        self.pattern_id = pattern_id or shown or ""
        self.shown_at = time.time()

    def blank(self) -> None:
        """Show zero phase (the safe state); a no-op once closed (close() left it blank)."""
        if self._closed and not self._opened:
            return
        self.show(np.zeros(self.shape, np.float64), pattern_id="blank")

    def close(self) -> None:
        """Blank (best effort), then release. Idempotent."""
        if self._opened:
            try:
                self._write(self._blank_grey(), "blank")
                self.pattern_id = "blank"
            except Exception:
                log.warning("slm: could not blank before closing", exc_info=True)
            self._opened = False
            self._hw_close()
        self._closed = True

    def info(self) -> dict[str, Any]:
        """What the SLM is and shows (run metadata, ``dmicro devices check``)."""
        return {
            "backend": self.backend,
            "shape": self.shape,
            "bit_depth": self.bit_depth,
            "settle_time_s": self.settle_time_s,
            "pattern_id": self.pattern_id,
            **self._hw_info(),
        }

    def __enter__(self) -> Any:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
