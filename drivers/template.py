"""Template for a lab's own camera or SLM backend — copy, fill in the ``_hw_*`` hooks, register.

The generic parts (lifecycle and state checks, frames iteration, trigger-mode checks, grey-level
mapping, settle time, safe close, context manager) live in the base classes every built-in backend
inherits too (:class:`~dmicro_hw.drivers.camera_base.CameraBase`,
:class:`~dmicro_hw.drivers.slm_base.SLMBase`); this template adds frame-id/drop counting from a raw
``(data, frame id, timestamp)`` read. A vendor backend only talks to its SDK in the hooks marked
``VENDOR``. Nothing in dmicro-hw needs to change. ``tests/drivers/test_device_contract.py``
(the contract every backend must meet, :mod:`dmicro_hw.drivers.contract`) can be run against
yours.

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
from typing import Any

import numpy as np

from dmicro_hw.drivers.base import Frame
from dmicro_hw.drivers.camera_base import CameraBase
from dmicro_hw.drivers.slm_base import SLMBase
from dmicro_hw.drivers.slm_pixels import load_lut
from dmicro_hw.errors import ConfigError, DeviceTimeoutError

log = logging.getLogger(__name__)


def _options(kind: str, section: Any, allowed: set[str]) -> dict[str, Any]:
    opts = dict(getattr(section, "options", None) or {})
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ConfigError(f"{kind}.options: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return opts


class TemplateCamera(CameraBase):
    """A camera backend skeleton implementing :class:`~dmicro_hw.drivers.base.Camera`."""

    #: options this backend accepts in ``camera.options`` (anything else is a ConfigError)
    OPTIONS: set[str] = {"serial"}
    #: device clock: ticks per second of the timestamps ``_hw_read`` returns (0 = no device clock)
    timestamp_frequency_hz: float = 1e9

    def __init__(self, section: Any, rig: Any = None) -> None:
        super().__init__()
        self.options = _options("camera", section, self.OPTIONS)
        self.section, self.rig = section, rig
        self.fetch_timeout_s = float(getattr(section, "fetch_timeout_s", 2.0))
        self.pixel_format = str(getattr(section, "pixel_format", "Mono8"))
        self.frames_received = 0
        self.dropped = 0
        self._prev_id: int | None = None

    @property
    def backend(self) -> str:  # type: ignore[override]
        return type(self).__name__

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
        super()._hw_set_trigger_mode(triggered)

    def _hw_read(self, timeout_s: float) -> tuple[np.ndarray, int, int] | None:
        """VENDOR: wait up to ``timeout_s`` for the next frame. Return ``(data, device_frame_id,
        device_timestamp)`` with ``data`` an (H, W) uint8/uint16 array that you own (copy it out of
        SDK buffers before requeueing them), or None on timeout."""
        raise NotImplementedError("TemplateCamera._hw_read: fetch one frame here")

    def _hw_stop(self) -> None:
        """VENDOR: stop streaming."""
        raise NotImplementedError("TemplateCamera._hw_stop: stop acquisition here")

    def _hw_close(self) -> None:
        """VENDOR: release the SDK handle."""
        raise NotImplementedError("TemplateCamera._hw_close: release the camera here")

    # ------------------------------------------------------------------ generic part
    def start(self) -> None:
        was = self._acquiring
        super().start()
        if not was:
            self._prev_id = None

    def _hw_frame(self) -> Frame:
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
        return Frame(
            data=data,
            frame_id=int(fid),
            device_timestamp=int(ts),
            timestamp_frequency_hz=self.timestamp_frequency_hz,
            host_time=time.time(),
            pixel_format=self.pixel_format,
        )

    def _hw_info(self) -> dict[str, Any]:
        return {"frames": self.frames_received, "dropped": self.dropped}


class TemplateSLM(SLMBase):
    """An SLM backend skeleton. Implements the :class:`~dmicro_hw.drivers.base.SLM` protocol.

    ``show`` accepts grey levels or radians exactly like the built-in backends (wrap, LUT,
    quantise: :func:`dmicro_hw.drivers.slm_pixels.to_grey`); the hook receives grey levels.
    """

    OPTIONS: set[str] = set()

    def __init__(self, section: Any, rig: Any = None) -> None:
        self.options = _options("slm", section, self.OPTIONS)
        bit_depth = int(section.bit_depth)
        lut = getattr(section, "lut", None)
        super().__init__(
            (int(section.pixels[0]), int(section.pixels[1])),
            pitch_m=float(section.pitch_m),
            bit_depth=bit_depth,
            settle_time_s=float(section.settle_time_s),
            phase_range_rad=float(getattr(section, "phase_range_rad", 2 * math.pi)),
            lut=load_lut(lut, bit_depth) if lut else None,
        )

    @property
    def backend(self) -> str:  # type: ignore[override]
        return type(self).__name__

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
        """VENDOR: release the SLM."""
        raise NotImplementedError("TemplateSLM._hw_close: release the SLM here")
