"""Generic camera behaviour, once: lifecycle, state checks, frames iteration, trigger mode.

A backend subclasses :class:`CameraBase` and fills the ``_hw_*`` hooks (the shape of slmsuite's
``get_image`` around ``_get_image_hw`` and python-microscope's ``shutdown`` around
``_do_shutdown``); everything the pipeline calls (:class:`~dmicro_hw.drivers.base.Camera`) is
here:

* ``open()`` → ``_hw_open()`` once (it may return a dict of device facts — model, serial —
  that :meth:`info` reports); ``close()`` → ``stop()`` then ``_hw_close()`` once —
  idempotent, also when never opened, also after an error;
* ``start()`` → ``_hw_start()`` once per streaming session (a no-op while streaming); ``stop()``
  → ``_hw_stop()`` while streaming (may come from another thread; ends ``frames()``);
* ``frames(max_frames)`` starts streaming if needed and yields what ``_hw_frames()`` delivers
  (by default ``_hw_frame()`` until it returns ``None``) until ``max_frames`` or ``stop()``;
* ``set_trigger_mode(mode)`` validates the mode, refuses while streaming and calls
  ``_hw_set_trigger_mode`` (which must really switch the device or raise DeviceError);
  ``attach_trigger`` is a no-op (pulses travel on a cable) unless the backend overrides it;
* ``info()`` = ``{"backend": backend, **what _hw_open returned, **_hw_info()}``;
* ``with camera:`` opens and closes.

``AUTO_OPEN``: ``start()``/``frames()`` on a camera that is not open open it (True) or raise
DeviceError "not open" (False).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from dmicro_hw.drivers.base import TRIGGER_MODES, Frame
from dmicro_hw.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)


class CameraBase:
    """Generic part of every camera backend (see the module docstring)."""

    #: registry name, reported by :meth:`info`
    backend: str = "camera"
    #: start()/frames() open a camera that is not open (False: DeviceError "not open")
    AUTO_OPEN: bool = True

    def __init__(self) -> None:
        self._opened = False
        self._acquiring = False
        self._stop_requested = False
        self._open_info: dict[str, Any] = {}
        self.trigger_mode: str = "free-run"

    # ------------------------------------------------------------------ VENDOR hooks
    def _hw_open(self) -> dict[str, Any] | None:
        """VENDOR: open the SDK handle and write the configuration (before streaming); may
        return device facts (model, serial, what was set) for :meth:`info`."""
        raise NotImplementedError(f"{type(self).__name__}._hw_open: open the camera here")

    def _hw_close(self) -> None:
        """VENDOR: release the device (called once per open; must not raise on a dead device)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_close: release the camera here")

    def _hw_start(self) -> None:
        """VENDOR: start streaming (free-run or hardware-triggered)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_start: start acquisition here")

    def _hw_stop(self) -> None:
        """VENDOR: stop streaming (called while streaming; may come from another thread)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_stop: stop acquisition here")

    def _hw_set_trigger_mode(self, triggered: bool) -> None:
        """VENDOR: switch hardware triggering on (frame start on the trigger input) or off
        (free-run), not streaming; raise DeviceError when the device cannot. Until overridden
        the camera free-runs and refuses ``triggered``."""
        if triggered:
            raise DeviceError(
                f"acquisition.mode: camera {type(self).__name__} implements no hardware trigger "
                "(_hw_set_trigger_mode); run --mode free-run"
            )

    def _hw_frame(self) -> Frame | None:
        """VENDOR: the next frame (waiting at most the fetch timeout, then DeviceTimeoutError),
        or ``None`` when the stream ended or was stopped."""
        raise NotImplementedError(f"{type(self).__name__}._hw_frame: fetch one frame here")

    def _hw_frames(self) -> Iterator[Frame]:
        """The device's frames, one streaming pass; default: :meth:`_hw_frame` until ``None``.
        Override instead of ``_hw_frame`` when a pass keeps state (pacing of a recording)."""
        while True:
            frame = self._hw_frame()
            if frame is None:
                return
            yield frame

    def _hw_info(self) -> dict[str, Any]:
        """VENDOR: device description and counters for :meth:`info`."""
        return {}

    def _check_streamable(self) -> None:
        """Raise DeviceError when ``frames()`` cannot run (override for e.g. a lost device)."""

    # ------------------------------------------------------------------ generic part
    @property
    def is_open(self) -> bool:
        return self._opened

    @property
    def streaming(self) -> bool:
        return self._acquiring

    def open(self) -> Any:
        """Open the device (idempotent)."""
        if not self._opened:
            self._open_info = dict(self._hw_open() or {})
            self._opened = True
        return self

    def _require_open(self) -> None:
        if not self._opened:
            if not self.AUTO_OPEN:
                raise DeviceError(f"camera ({self.backend}): not open; call open() first")
            self.open()

    def start(self) -> None:
        """Start streaming (opens first when ``AUTO_OPEN``); a no-op while streaming."""
        self._check_streamable()
        self._require_open()
        if self._acquiring:
            return
        self._stop_requested = False
        self._hw_start()
        self._acquiring = True

    def stop(self) -> None:
        """Stop streaming (idempotent); a running :meth:`frames` loop ends."""
        self._stop_requested = True
        if self._acquiring:
            self._hw_stop()
        self._acquiring = False

    def close(self) -> None:
        """Stop and release the device. Idempotent; never raises from a second call."""
        try:
            self.stop()
        finally:
            if self._opened:
                self._opened = False
                self._hw_close()

    def set_trigger_mode(self, mode: str) -> None:
        """``"free-run"`` or ``"triggered"`` (before ``start()``): really switches the device
        or raises DeviceError saying why it cannot."""
        if mode not in TRIGGER_MODES:
            raise ConfigError(f"trigger mode must be 'free-run' or 'triggered', got {mode!r}")
        if self._acquiring:
            raise DeviceError(f"camera ({self.backend}): stop() before changing the trigger mode")
        self._hw_set_trigger_mode(mode == "triggered")
        self.trigger_mode = mode

    def attach_trigger(self, trigger: Any) -> None:
        """Hardware trigger: pulses travel on a cable, nothing to connect in software."""

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield frames until ``max_frames``, :meth:`stop` or the end of the stream (starts
        streaming if needed)."""
        self._check_streamable()
        self._require_open()
        if not self._acquiring:
            self.start()
        if max_frames is not None and max_frames <= 0:
            return
        n = 0
        if self._stop_requested or not self._acquiring:
            return
        for frame in self._hw_frames():
            n += 1
            yield frame
            if max_frames is not None and n >= max_frames:
                return
            if self._stop_requested or not self._acquiring:
                return

    def grab(self) -> Frame:
        """One frame (convenience for calibration loops)."""
        for f in self.frames(max_frames=1):
            return f
        raise DeviceError(f"camera ({self.backend}): stopped before a frame arrived")

    def info(self) -> dict[str, Any]:
        """Device description and counters (run metadata, ``dmicro devices check``)."""
        return {"backend": self.backend, **self._open_info, **self._hw_info()}

    def __enter__(self) -> Any:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
