"""Any GenICam camera through a GenTL producer (``.cti``) and harvesters (>= 1.4).

Producer: ``camera.cti`` in rig.yaml, else every ``*.cti`` in the folders of the
``GENICAM_GENTL64_PATH`` environment variable (the GenTL convention). A missing or unloadable
producer raises :class:`~dmicro_hw.errors.DeviceError` naming the path (the file is checked for the
GenTL entry points first: harvesters would crash the process on a library that is not a producer).

Device: ``camera.device`` matches a device's serial number, id, model, user-defined or display
name; an unknown value raises DeviceError listing what the producer found. Without it the first
device is used.

Configuration happens in :meth:`GenICamCamera.open`, before acquisition starts (GenTL locks
``Width``/``Height``/``PixelFormat`` while streaming). Only nodes the device has are written; the
requested ones it lacks are logged and listed in :meth:`GenICamCamera.info` (``missing_nodes``:
node → config key) —
the viky test camera, for instance, has no ExposureTime, Gain or Trigger nodes.

========================  ====================================================================
rig.yaml                  GenICam nodes (SFNC)
========================  ====================================================================
pixel_format              PixelFormat (Mono8/10/12/14/16, packed Mono10p/12p expanded)
binning                   BinningHorizontal, BinningVertical
width, height             Width, Height (offsets are zeroed first so any size fits)
offset_x, offset_y        OffsetX, OffsetY
frame_rate_hz             AcquisitionFrameRateEnable = True, AcquisitionFrameRate
exposure_s                ExposureAuto = Off, ExposureTime [µs]
options.gain              GainAuto = Off, Gain [dB]
acquisition.mode, --mode  triggered: TriggerSelector = FrameStart, TriggerMode = On,
                          TriggerSource = options.trigger_source (Line0);
                          free-run: TriggerMode = Off (set_trigger_mode; a device
                          without TriggerMode/TriggerSource refuses triggered)
options.nodes             {NodeName: value}: any further nodes, written last
========================  ====================================================================

Frames: every buffer is copied out inside ``with ia.fetch(timeout=...) as buf:`` (harvesters
requeues the buffer on exit and reuses its memory); the fetch always has a timeout
(``camera.fetch_timeout_s``; on expiry :class:`~dmicro_hw.errors.DeviceTimeoutError`). Mono10–16
data arrive in 16-bit containers; the driver returns right-justified values (``0 … 2**bits − 1``)
and records ``bits_per_pixel``. PFNC defines Mono10/12/14 as right (LSB) justified, but some
producers deliver them left (MSB) justified: ``options.justify: left|right|auto`` (``auto``, the
default, switches to left justification for good the first time a value exceeds ``2**bits − 1``).
Dropped frames are counted from gaps in the GenTL frame id; frame ids returned are kept increasing
across stop/start (the device restarts its counter), the raw id is in ``Frame.meta``. Device
timestamps are recorded with their tick frequency, or ``device_timestamp = 0`` and
``timestamp_frequency_hz = 0`` when the producer has none (viky); ``host_time`` always.

Recovery: a fetch that fails with anything but a timeout (a disconnect) triggers one full reset
(acquirer destroyed, Harvester reset, producer reloaded, device reopened and reconfigured,
acquisition restarted); a second failure in a row raises DeviceError. :meth:`reset` does the same
on demand, and ``close(); open()`` always starts from a fresh Harvester.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.drivers.base import Frame
from dmicro_hw.drivers.camera_base import CameraBase
from dmicro_hw.drivers.gentl import (  # noqa: F401 - discovery lives in gentl.py; re-exported
    GENTL_SYMBOLS,
    _hv_log,
    _label,
    bundled_producers,
    check_producer,
    describe_device,
    gentl_path_producers,
)
from dmicro_hw.drivers.pixel_formats import PIXEL_FORMATS, format_bits
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError

log = logging.getLogger(__name__)

_OPTIONS = {"justify", "gain", "trigger_source", "nodes", "num_buffers", "auto_recover"}


# ------------------------------------------------------------------------------ pixel data
def to_right_justified(data: np.ndarray, bits: int, justify: str) -> tuple[np.ndarray, str]:
    """Return (copy of ``data`` with right-justified values, justification used).

    ``justify``: ``right`` (PFNC), ``left`` (MSB-aligned: shifted down by ``16 − bits``) or
    ``auto`` (left if any value exceeds ``2**bits − 1``, else right). Always returns a new array.
    """
    out = np.array(data, copy=True)
    if bits >= 16 or out.dtype != np.uint16:
        return out, "right"
    if justify == "auto":
        justify = "left" if int(out.max(initial=0)) >> bits else "right"
    if justify == "left":
        out >>= 16 - bits
    return out, justify


def _as_image(raw: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) view of a component's 1-D data; drops row padding harvesters may leave in."""
    if raw.size == height * width:
        return raw.reshape(height, width)
    if height and raw.size % height == 0 and raw.size // height > width:
        return raw.reshape(height, -1)[:, :width]
    raise DeviceError(f"camera: buffer of {raw.size} values does not hold a {width}x{height} image")


# ------------------------------------------------------------------------------ the driver
class GenICamCamera(CameraBase):
    """A GenICam camera behind a GenTL producer (see the module doc for the config mapping).

    The generic lifecycle (open/start/stop/close, frames iteration, trigger-mode checks) is
    :class:`~dmicro_hw.drivers.camera_base.CameraBase`'s; this class fills its ``_hw_*`` hooks.
    """

    backend = "genicam"

    def __init__(self, section: Any, rig: Any = None) -> None:
        super().__init__()
        self.cfg = section
        opts = dict(section.options or {})
        unknown = sorted(set(opts) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"camera.options: unknown key(s) {unknown}; allowed: {sorted(_OPTIONS)}"
            )
        self.justify = str(opts.get("justify", "auto"))
        if self.justify not in ("auto", "left", "right"):
            raise ConfigError(
                f"camera.options.justify: must be auto, left or right, got {self.justify!r}"
            )
        self.gain = opts.get("gain")
        self.trigger_source = str(opts.get("trigger_source", "Line0"))
        self.extra_nodes = dict(opts.get("nodes") or {})
        self.num_buffers = int(opts.get("num_buffers", 8))
        self.auto_recover = bool(opts.get("auto_recover", True))
        acq = getattr(rig, "acquisition", None)
        self.triggered = getattr(acq, "mode", "free-run") == "triggered"
        self.trigger_mode = "triggered" if self.triggered else "free-run"
        self.fetch_timeout_s = float(section.fetch_timeout_s)

        self.producers: list[Path] = []
        self.device: dict[str, Any] = {}
        self.found: list[dict[str, Any]] = []
        self.set_nodes: dict[str, Any] = {}
        self.missing_nodes: dict[str, Any] = {}
        self.pixel_format = ""
        self.bits_per_pixel = 0
        self.width = self.height = 0
        self.frame_rate_hz: float | None = None
        self.exposure_s: float | None = None
        self.frames_received = 0
        self.dropped = 0
        self.recoveries = 0
        self._harvester: Any = None
        self._ia: Any = None
        self._node_names: set[str] = set()
        self._lock = threading.RLock()  # held while fetching: stop() from another thread waits
        self._last_id = 0  # last frame id handed out (kept increasing across restarts)
        self._session_base: int | None = None
        self._prev_device_id: int | None = None

    @classmethod
    def from_config(cls, section: Any, rig: Any = None) -> GenICamCamera:
        """``camera.backend: genicam``."""
        return cls(section, rig)

    # ---------------------------------------------------------------- open / configure
    def _resolve_producers(self) -> list[Path]:
        if self.cfg.cti is not None:
            return [check_producer(self.cfg.cti)]
        found = gentl_path_producers()
        if not found:
            hint = ", ".join(str(p) for p in bundled_producers()) or "your vendor's .cti"
            raise DeviceError(
                "camera.cti: not set and GENICAM_GENTL64_PATH names no .cti file; set camera.cti "
                f"to your camera's GenTL producer (test producer: {hint})"
            )
        return [check_producer(p) for p in found]

    def _hw_open(self) -> None:
        """Load the producer, open the device and write the configured nodes (not streaming)."""
        from dmicro_hw.extras import require

        require("harvesters.core", "camera.backend: genicam")
        from harvesters.core import Harvester, ParameterKey, ParameterSet

        self.producers = self._resolve_producers()
        h = Harvester(config=ParameterSet({ParameterKey.LOGGER: _hv_log}))
        try:
            for p in self.producers:
                h.add_file(str(p))
            h.update()
            infos = list(h.device_info_list)
            self.found = [describe_device(i) for i in infos]
            names = ", ".join(str(p) for p in self.producers)
            if not infos:
                raise DeviceError(f"camera: no device found by GenTL producer {names}")
            info = self._pick(infos)
            self.device = describe_device(info)
            try:
                ia = h.create(info)
            except Exception as e:
                raise DeviceError(
                    f"camera {_label(self.device)}: cannot open ({type(e).__name__}: {e}); "
                    "in use by another program?"
                ) from None
        except BaseException:
            h.reset()
            raise
        self._harvester, self._ia = h, ia
        try:
            ia.num_buffers = max(self.num_buffers, 1)
        except Exception:
            log.debug("could not set num_buffers", exc_info=True)
        nm = ia.remote_device.node_map
        self._node_names = {n.node.name for n in nm.nodes}
        try:
            self._configure()
        except BaseException:
            self._teardown()
            raise
        log.info(
            "camera %s open: %s %dx%d via %s",
            _label(self.device),
            self.pixel_format,
            self.width,
            self.height,
            self.producers[0],
        )

    def _pick(self, infos: list[Any]) -> Any:
        want = self.cfg.device
        if want is None:
            if len(infos) > 1:
                log.warning(
                    "camera.device not set; using the first of %d devices: %s",
                    len(infos),
                    _label(describe_device(infos[0])),
                )
            return infos[0]
        keys = ("serial_number", "id", "model", "user_defined_name", "display_name")
        for key in keys:
            hits = [
                i for i, d in zip(infos, self.found) if d[key] is not None and str(d[key]) == want
            ]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                which = "; ".join(_label(describe_device(i)) for i in hits)
                raise DeviceError(
                    f"camera.device {want!r} matches {len(hits)} devices by {key} ({which}); "
                    "use a serial number or id"
                )
        found = "; ".join(_label(d) for d in self.found)
        raise DeviceError(f"camera.device {want!r} not found; found: {found}")

    def _node(self, name: str) -> Any:
        return getattr(self._ia.remote_device.node_map, name)

    def _set(self, name: str, value: Any, key: str) -> bool:
        """Write node ``name`` if the device has it; record it as missing otherwise."""
        if name not in self._node_names:
            self.missing_nodes[name] = key
            log.warning(
                "camera %s has no node %s: %s not applied", self.device.get("id"), name, key
            )
            return False
        node = self._node(name)
        try:
            node.value = value
        except Exception as e:
            allowed = ""
            if hasattr(node, "symbolics"):
                allowed = f"; allowed: {', '.join(node.symbolics)}"
            elif hasattr(node, "min"):
                try:
                    inc = getattr(node, "inc", None)
                    allowed = f"; allowed: {node.min}..{node.max}" + (
                        f" step {inc}" if inc not in (None, 1) else ""
                    )
                except Exception:
                    allowed = ""
            raise DeviceError(
                f"{key}: camera {self.device.get('id')} refused {name} = {value!r}"
                f" ({type(e).__name__}){allowed}"
            ) from None
        self.set_nodes[name] = value
        return True

    def _configure(self) -> None:
        c = self.cfg
        self.set_nodes.clear()
        self.missing_nodes.clear()
        if c.pixel_format not in PIXEL_FORMATS:
            raise ConfigError(
                f"camera.pixel_format: {c.pixel_format!r} is not supported; use one of "
                f"{', '.join(PIXEL_FORMATS)}"
            )
        if "PixelFormat" in self._node_names:
            node = self._node("PixelFormat")
            available = list(getattr(node, "symbolics", ()))
            if available and c.pixel_format not in available:
                raise DeviceError(
                    f"camera.pixel_format: camera {self.device.get('id')} has no "
                    f"{c.pixel_format}; it offers {', '.join(available)}"
                )
        self._set("PixelFormat", c.pixel_format, "camera.pixel_format")
        if c.binning > 1:
            self._set("BinningHorizontal", c.binning, "camera.binning")
            self._set("BinningVertical", c.binning, "camera.binning")
        if c.width is not None or c.height is not None:
            for off in ("OffsetX", "OffsetY"):
                if off in self._node_names:
                    self._set(off, 0, "camera.offset")
        if c.width is not None:
            self._set("Width", c.width, "camera.width")
        if c.height is not None:
            self._set("Height", c.height, "camera.height")
        if c.offset_x:
            self._set("OffsetX", c.offset_x, "camera.offset_x")
        if c.offset_y:
            self._set("OffsetY", c.offset_y, "camera.offset_y")
        if c.frame_rate_hz is not None:
            if "AcquisitionFrameRateEnable" in self._node_names:
                self._set("AcquisitionFrameRateEnable", True, "camera.frame_rate_hz")
            self._set("AcquisitionFrameRate", float(c.frame_rate_hz), "camera.frame_rate_hz")
        if c.exposure_s is not None:
            if "ExposureAuto" in self._node_names:
                self._set("ExposureAuto", "Off", "camera.exposure_s")
            self._set("ExposureTime", float(c.exposure_s) * 1e6, "camera.exposure_s")
        if self.gain is not None:
            if "GainAuto" in self._node_names:
                self._set("GainAuto", "Off", "camera.options.gain")
            self._set("Gain", float(self.gain), "camera.options.gain")
        self._write_trigger_nodes()
        for name, value in self.extra_nodes.items():
            self._set(str(name), value, f"camera.options.nodes.{name}")
        self._read_back()

    def _hw_set_trigger_mode(self, triggered: bool) -> None:
        """``"triggered"``: TriggerSelector = FrameStart (when present), TriggerMode = On,
        TriggerSource = ``options.trigger_source``; ``"free-run"``: TriggerMode = Off.

        Written now when the camera is open (else at :meth:`open`), before :meth:`start` (GenTL
        locks trigger nodes while streaming). DeviceError naming the missing nodes when a device
        without TriggerMode/TriggerSource is asked to run triggered: it would free-run while the
        trigger box pulses.
        """
        self.triggered = triggered
        if self._ia is not None:
            self._write_trigger_nodes()

    def _write_trigger_nodes(self) -> None:
        for name in ("TriggerSelector", "TriggerMode", "TriggerSource"):
            self.set_nodes.pop(name, None)
            self.missing_nodes.pop(name, None)
        if not self.triggered:
            if "TriggerMode" in self._node_names:
                self._set("TriggerMode", "Off", "acquisition.mode")
            return
        lacking = [n for n in ("TriggerMode", "TriggerSource") if n not in self._node_names]
        if lacking:
            raise DeviceError(
                f"acquisition.mode: camera {self.device.get('id')} has no "
                f"{' or '.join(lacking)} node, so it cannot be hardware-triggered; "
                "run --mode free-run or use a camera with trigger input"
            )
        if "TriggerSelector" in self._node_names:
            self._set("TriggerSelector", "FrameStart", "acquisition.mode")
        self._set("TriggerMode", "On", "acquisition.mode")
        self._set("TriggerSource", self.trigger_source, "camera.options.trigger_source")

    def _read_back(self) -> None:
        def val(name: str, default: Any) -> Any:
            if name not in self._node_names:
                return default
            try:
                return self._node(name).value
            except Exception:
                return default

        self.pixel_format = str(val("PixelFormat", self.cfg.pixel_format))
        self.bits_per_pixel = format_bits(self.pixel_format, 0)
        self.width = int(val("Width", 0))
        self.height = int(val("Height", 0))
        self.frame_rate_hz = val("AcquisitionFrameRate", None)
        self.exposure_s = val("ExposureTime", None)
        if self.exposure_s is not None:
            self.exposure_s = float(self.exposure_s) * 1e-6

    # ---------------------------------------------------------------- streaming
    def _hw_start(self) -> None:
        """Start acquisition (hardware trigger pulses reach the camera on its input line,
        ``options.trigger_source``: nothing to attach in software)."""
        self._ia.start()
        self._session_base = None
        self._prev_device_id = None

    def _hw_stop(self) -> None:
        """Stop acquisition (buffers are flushed, nodes unlock).

        Safe to call from another thread: it waits for a fetch in progress (at most
        ``fetch_timeout_s``) and :meth:`frames` then ends.
        """
        with self._lock:
            if self._ia is not None and self._acquiring:
                try:
                    self._ia.stop()
                except Exception:
                    log.warning("camera: stop failed", exc_info=True)
            self._acquiring = False

    def _hw_frame(self) -> Frame | None:
        """The next frame; a broken stream (anything but a timeout) gets one full reset."""
        failures = 0
        while True:
            try:
                with self._lock:
                    if self._stop_requested or not self._acquiring:
                        return None
                    return self._fetch_one()
            except DeviceError:
                raise
            except Exception as e:  # the stream broke (disconnect, producer error)
                failures += 1
                if not self.auto_recover or failures > 1:
                    raise DeviceError(
                        f"camera {self.device.get('id')}: stream failed ({type(e).__name__}: "
                        f"{e}) and did not recover"
                    ) from None
                log.warning("camera stream failed (%s: %s); full reset", type(e).__name__, e)
                self.reset()
                self.start()

    def _fetch_one(self) -> Frame:
        from genicam.gentl import TimeoutException

        try:
            buf_cm = self._ia.fetch(timeout=self.fetch_timeout_s)
        except TimeoutException:
            raise DeviceTimeoutError(
                f"camera {self.device.get('id')}: no frame within {self.fetch_timeout_s:g} s "
                "(camera.fetch_timeout_s): missed trigger, stalled stream or exposure too long?"
            ) from None
        with buf_cm as buf:  # the buffer is requeued when this block exits: copy out inside
            host_time = time.time()
            comps = buf.payload.components
            if not comps:
                raise DeviceError(f"camera {self.device.get('id')}: buffer without image data")
            comp = comps[0]
            fmt = str(comp.data_format)
            bits = format_bits(fmt)
            if bits is None:
                raise DeviceError(
                    f"camera {self.device.get('id')}: delivered pixel format {fmt}; "
                    f"set camera.pixel_format to one of {', '.join(PIXEL_FORMATS)}"
                )
            image = _as_image(comp.data, int(comp.height), int(comp.width))
            data, used = to_right_justified(image, bits, self.justify)
            if self.justify == "auto" and used == "left":
                log.warning("camera: %s data are left-justified; shifting from now on", fmt)
                self.justify = "left"
            device_id = int(buf.module.frame_id)
            ts, freq = self._timestamps(buf)
        return self._make_frame(data, device_id, ts, freq, host_time, fmt, bits)

    @staticmethod
    def _timestamps(buf: Any) -> tuple[int, float]:
        mod = buf.module
        try:
            return int(mod.timestamp_ns), 1e9
        except Exception:
            pass
        try:
            ticks = int(mod.timestamp)
        except Exception:
            return 0, 0.0
        try:
            freq = float(mod.parent.parent.timestamp_frequency)
        except Exception:
            freq = 0.0
        return ticks, freq

    def _make_frame(
        self,
        data: np.ndarray,
        device_id: int,
        ts: int,
        freq: float,
        host: float,
        fmt: str,
        bits: int,
    ) -> Frame:
        prev = self._prev_device_id
        if self._session_base is None or (prev is not None and device_id <= prev):
            if prev is not None:
                log.warning("camera frame id went back (%d after %d); rebasing", device_id, prev)
            self._session_base = self._last_id + 1 - device_id
            gap = 0
        else:
            gap = max(device_id - prev - 1, 0) if prev is not None else 0
        self.dropped += gap
        self._prev_device_id = device_id
        frame_id = self._session_base + device_id
        self._last_id = frame_id
        self.frames_received += 1
        return Frame(
            data=data,
            frame_id=frame_id,
            device_timestamp=ts,
            timestamp_frequency_hz=freq,
            host_time=host,
            exposure_s=self.exposure_s if self.exposure_s is not None else float("nan"),
            pixel_format=fmt,
            meta={"device_frame_id": device_id, "bits_per_pixel": bits, "dropped_before": gap},
        )

    # ---------------------------------------------------------------- recovery / close
    def reset(self) -> None:
        """Full recovery: destroy the acquirer, reset the Harvester, reopen and reconfigure."""
        self.recoveries += 1
        self._teardown()
        self._hw_open()

    def _teardown(self) -> None:
        ia, h = self._ia, self._harvester
        self._ia = self._harvester = None
        if ia is not None:
            if self._acquiring:
                try:
                    ia.stop()
                except Exception:
                    log.debug("camera: stop during teardown failed", exc_info=True)
            try:
                ia.destroy()
            except Exception:
                log.debug("camera: destroy failed", exc_info=True)
        self._acquiring = False
        if h is not None:
            try:
                h.reset()
            except Exception:
                log.debug("camera: harvester reset failed", exc_info=True)

    def _hw_close(self) -> None:
        """Release device and producer."""
        with self._lock:
            self._teardown()

    def _hw_info(self) -> dict[str, Any]:
        """What is open and how it is configured (for run metadata and ``dmicro devices check``)."""
        return {
            "producers": [str(p) for p in self.producers],
            "device": self.device,
            "pixel_format": self.pixel_format,
            "bits_per_pixel": self.bits_per_pixel,
            "justify": self.justify,
            "width": self.width,
            "height": self.height,
            "frame_rate_hz": self.frame_rate_hz,
            "exposure_s": self.exposure_s,
            "triggered": self.triggered,
            "set_nodes": dict(self.set_nodes),
            "missing_nodes": dict(self.missing_nodes),
            "frames": self.frames_received,
            "dropped": self.dropped,
            "recoveries": self.recoveries,
            "fetch_timeout_s": self.fetch_timeout_s,
        }

    def __del__(self) -> None:  # last resort; close() is the contract
        try:
            if self._ia is not None:
                self.close()
        except Exception:
            pass
