"""Template for a lab's own camera or SLM backend — copy, fill in the ``_hw_*`` hooks, register.

The generic parts (frame ids and drop counting, grey-level mapping, settle time, safe close,
context manager) are done here once; a vendor backend only talks to its SDK in the hooks marked
``VENDOR``. Nothing in dmicro-hw needs to change.

1. Copy this file into your own package (e.g. ``mylab_dmicro/camera.py``), rename the class
   (``MyCamera``), and implement the hooks. Read backend-specific settings from
   ``section.options`` (rig.yaml ``camera.options: {...}``) and reject unknown keys with
   :class:`~dmicro_hw.errors.ConfigError`; report device problems as
   :class:`~dmicro_hw.errors.DeviceError` (one line naming the device) and missing frames as
   :class:`~dmicro_hw.errors.DeviceTimeoutError`.

2. Register it in your package's ``pyproject.toml`` (entry-point name ``<kind>.<backend>``, value a
   factory ``factory(config_section, rig_config) -> device``)::

       [project.entry-points."dmicro_hw.drivers"]
       "camera.mylab" = "mylab_dmicro.camera:MyCamera.from_config"
       "slm.mylab" = "mylab_dmicro.slm:MySLM.from_config"

   and ``pip install -e .``. Or, in a notebook or a test, without packaging::

       from dmicro_hw.drivers.base import register
       register("camera", "mylab", MyCamera.from_config)

3. Use it: ``dmicro devices list`` shows ``mylab`` under the camera backends; in rig.yaml write
   ``camera: {backend: mylab, options: {...}}``; ``dmicro devices check --config rig.yaml`` opens
   it, grabs a few frames and reports.

The classes below run as they are only once the hooks are filled in; the hooks raise
NotImplementedError naming what to do.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from dmicro_hw.drivers.base import Frame
from dmicro_hw.drivers.slm_pixels import load_lut, to_grey
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError

log = logging.getLogger(__name__)


class TemplateCamera:
    """A camera backend skeleton implementing :class:`~dmicro_hw.drivers.base.Camera`."""

    #: options this backend accepts in ``camera.options`` (anything else is a ConfigError)
    OPTIONS: set[str] = {"serial"}
    #: device clock: ticks per second of the timestamps ``_hw_read`` returns (0 = no device clock)
    timestamp_frequency_hz: float = 1e9

    def __init__(self, section: Any, rig: Any = None) -> None:
        opts = dict(getattr(section, "options", None) or {})
        unknown = sorted(set(opts) - self.OPTIONS)
        if unknown:
            raise ConfigError(
                f"camera.options: unknown key(s) {unknown}; allowed: {sorted(self.OPTIONS)}"
            )
        self.section, self.rig, self.options = section, rig, opts
        self.fetch_timeout_s = float(getattr(section, "fetch_timeout_s", 2.0))
        self.pixel_format = str(getattr(section, "pixel_format", "Mono8"))
        self.frames_received = 0
        self.dropped = 0
        self._opened = False
        self._acquiring = False
        self._stop = False
        self._prev_id: int | None = None
        self._hw_info: dict[str, Any] = {}
        self.trigger_mode = "free-run"

    @classmethod
    def from_config(cls, section: Any, rig: Any = None) -> TemplateCamera:
        """The registry factory: build (do not open yet)."""
        return cls(section, rig)

    # ------------------------------------------------------------------ VENDOR hooks
    def _hw_open(self) -> dict[str, Any]:
        """VENDOR: open the SDK handle, write width/height/offsets/pixel format/exposure/frame
        rate from ``self.section`` (before streaming: most SDKs lock them), return an info dict
        (model, serial, what was set, what the device lacks)."""
        raise NotImplementedError("TemplateCamera._hw_open: open your camera SDK here")

    def _hw_start(self) -> None:
        """VENDOR: start streaming (free-run or hardware-triggered)."""
        raise NotImplementedError("TemplateCamera._hw_start: start acquisition here")

    def _hw_set_trigger_mode(self, triggered: bool) -> None:
        """VENDOR: switch hardware triggering on (frame start on the trigger input) or off
        (free-run), before streaming; raise DeviceError when the device cannot. Until you
        override it the camera free-runs and refuses ``triggered``."""
        if triggered:
            raise DeviceError(
                f"acquisition.mode: camera {type(self).__name__} implements no hardware trigger "
                "(_hw_set_trigger_mode); run --mode free-run"
            )

    def _hw_read(self, timeout_s: float) -> tuple[np.ndarray, int, int] | None:
        """VENDOR: wait up to ``timeout_s`` for the next frame. Return ``(data, device_frame_id,
        device_timestamp)`` with ``data`` an (H, W) uint8/uint16 array that you own (copy it out of
        SDK buffers before requeueing them), or None on timeout."""
        raise NotImplementedError("TemplateCamera._hw_read: fetch one frame here")

    def _hw_stop(self) -> None:
        """VENDOR: stop streaming (must be safe to call when not streaming)."""
        raise NotImplementedError("TemplateCamera._hw_stop: stop acquisition here")

    def _hw_close(self) -> None:
        """VENDOR: release the SDK handle (must be safe to call twice)."""
        raise NotImplementedError("TemplateCamera._hw_close: release the camera here")

    # ------------------------------------------------------------------ generic part
    def open(self) -> TemplateCamera:
        if not self._opened:
            self._hw_info = dict(self._hw_open() or {})
            self._opened = True
        return self

    def start(self) -> None:
        self.open()
        if not self._acquiring:
            self._hw_start()
            self._acquiring, self._stop, self._prev_id = True, False, None

    def set_trigger_mode(self, mode: str) -> None:
        """``"free-run"`` or ``"triggered"`` (open, not streaming)."""
        if mode not in ("free-run", "triggered"):
            raise ConfigError(f"trigger mode must be 'free-run' or 'triggered', got {mode!r}")
        if self._acquiring:
            raise DeviceError(f"camera {type(self).__name__}: stop() before changing trigger mode")
        self.open()
        self._hw_set_trigger_mode(mode == "triggered")
        self.trigger_mode = mode

    def attach_trigger(self, trigger: Any) -> None:
        """Hardware trigger: pulses travel on a cable, nothing to connect in software."""

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        if not self._acquiring:
            self.start()
        n = 0
        while (max_frames is None or n < max_frames) and not self._stop:
            got = self._hw_read(self.fetch_timeout_s)
            if got is None:
                raise DeviceTimeoutError(
                    f"camera {type(self).__name__}: no frame within {self.fetch_timeout_s:g} s "
                    "(camera.fetch_timeout_s)"
                )
            data, fid, ts = got
            if self._prev_id is not None and fid > self._prev_id + 1:
                self.dropped += fid - self._prev_id - 1
            self._prev_id = fid
            self.frames_received += 1
            n += 1
            yield Frame(
                data=data,
                frame_id=int(fid),
                device_timestamp=int(ts),
                timestamp_frequency_hz=self.timestamp_frequency_hz,
                host_time=time.time(),
                pixel_format=self.pixel_format,
            )

    def stop(self) -> None:
        self._stop = True
        if self._acquiring:
            self._acquiring = False
            self._hw_stop()

    def close(self) -> None:
        """Stop and release; idempotent, never raises from a second call."""
        try:
            self.stop()
        finally:
            if self._opened:
                self._opened = False
                self._hw_close()

    def info(self) -> dict[str, Any]:
        return {
            "backend": type(self).__name__,
            **self._hw_info,
            "frames": self.frames_received,
            "dropped": self.dropped,
        }

    def __enter__(self) -> TemplateCamera:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class TemplateSLM:
    """An SLM backend skeleton. Implements the :class:`~dmicro_hw.drivers.base.SLM` protocol.

    ``show`` accepts grey levels or radians exactly like the built-in backends (wrap, LUT,
    quantise: :func:`dmicro_hw.drivers.slm_pixels.to_grey`); the hook receives grey levels.
    """

    OPTIONS: set[str] = set()

    def __init__(self, section: Any, rig: Any = None) -> None:
        opts = dict(getattr(section, "options", None) or {})
        unknown = sorted(set(opts) - self.OPTIONS)
        if unknown:
            raise ConfigError(
                f"slm.options: unknown key(s) {unknown}; allowed: {sorted(self.OPTIONS)}"
            )
        self.options = opts
        self.shape = (int(section.pixels[0]), int(section.pixels[1]))
        self.pitch_m = float(section.pitch_m)
        self.bit_depth = int(section.bit_depth)
        self.settle_time_s = float(section.settle_time_s)
        self.phase_range_rad = float(getattr(section, "phase_range_rad", 2 * math.pi))
        lut = getattr(section, "lut", None)
        self.lut = load_lut(lut, self.bit_depth) if lut else None
        self.pattern_id = ""
        self._opened = False
        self._closed = False

    @classmethod
    def from_config(cls, section: Any, rig: Any = None) -> TemplateSLM:
        return cls(section, rig)

    # ------------------------------------------------------------------ VENDOR hooks
    def _hw_open(self) -> tuple[int, int]:
        """VENDOR: open the SLM (SDK handle or window); return its (rows, cols)."""
        raise NotImplementedError("TemplateSLM._hw_open: open your SLM here")

    def _hw_write(self, grey: np.ndarray) -> None:
        """VENDOR: put ``grey`` ((rows, cols) uint8, or uint16 above 8 bits) on the SLM and return
        when the SDK has accepted it (the settle time is waited for you)."""
        raise NotImplementedError("TemplateSLM._hw_write: send the grey levels here")

    def _hw_close(self) -> None:
        """VENDOR: release the SLM (safe to call twice)."""
        raise NotImplementedError("TemplateSLM._hw_close: release the SLM here")

    # ------------------------------------------------------------------ generic part
    def open(self) -> TemplateSLM:
        if not self._opened:
            rows_cols = tuple(int(v) for v in self._hw_open())
            if rows_cols != self.shape:
                self._hw_close()
                raise DeviceError(
                    f"slm.pixels {list(self.shape)} but the device is {list(rows_cols)} "
                    "(rows, cols)"
                )
            self._opened, self._closed = True, False
            self._hw_write(self._zero())
            self.pattern_id = "blank"
        return self

    def _zero(self) -> np.ndarray:
        return to_grey(
            np.zeros(self.shape), self.shape, self.bit_depth, self.phase_range_rad, self.lut
        )

    def show(self, pattern: np.ndarray, pattern_id: str = "") -> None:
        if not self._opened:
            if self._closed:
                raise DeviceError("slm: show() after close()")
            self.open()
        self._hw_write(to_grey(pattern, self.shape, self.bit_depth, self.phase_range_rad, self.lut))
        time.sleep(self.settle_time_s)
        self.pattern_id = pattern_id

    def blank(self) -> None:
        self.show(np.zeros(self.shape), pattern_id="blank")

    def close(self) -> None:
        """Blank, then release; idempotent."""
        if self._opened:
            try:
                self._hw_write(self._zero())
            except Exception:
                log.warning("slm: could not blank before closing", exc_info=True)
            self._opened = False
            self._hw_close()
        self._closed = True

    def info(self) -> dict[str, Any]:
        return {"backend": type(self).__name__, "shape": self.shape, "bit_depth": self.bit_depth}

    def __enter__(self) -> TemplateSLM:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
