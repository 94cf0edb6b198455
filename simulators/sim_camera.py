"""Simulated camera: implements the Camera protocol with frames rendered by a VirtualBench.

An honest twin: each frame is what the bench images for that frame id with whatever the SimSLM
of the same rig shows at the frame's capture time (settle model included), through the sensor
model (binning, photon/read noise, gain, ADC) and the bench's hidden mismatch.

Modes:
  * free-run, paced (default): frame ``i`` is exposed at ``t_start + i / frame_rate`` on the
    bench clock and delivered ``latency_s`` after its exposure ends. The device buffers at most
    ``buffer_frames`` frames: a consumer that falls behind loses frames (frame id gaps), as with a
    real GenTL stream in "oldest first" mode.
  * free-run, not paced (``camera.options.paced: false``): frames as fast as the host reads
    them (throughput benchmarks); capture time = read time.
  * triggered (``acquisition.mode: triggered`` or ``camera.options.trigger_mode``): each call of
    :meth:`SimCamera.trigger_pulse` (hook it to a trigger with :meth:`attach_trigger`, which uses
    the trigger's ``on_pulse(callback)``) exposes one frame; no pulse within
    ``fetch_timeout_s`` raises DeviceTimeoutError (a missed trigger).

Geometry and format: the sensor grid is (N/k, N/k) (the optically compressed frame). ROI
(``width``/``height``/``offset_x``/``offset_y``, sensor pixels) is cut first, then ``binning``
averages b×b blocks (width and height must be divisible by b). ``pixel_format`` Mono8/10/12/14/16:
the ADC value (``sensor.bit_depth`` bits) is scaled by 2^(format bits − ADC bits), rounded and
clipped; uint8 for Mono8, uint16 otherwise.

Frames carry the frame id, device timestamps in ticks of 1 GHz since open(), host time at
delivery, exposure and the id of the pattern the SLM was commanded to show. Faults come from
``bench.faults`` (:mod:`.faults`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from dmicro_hw.config import CameraDeviceConfig, FaultsConfig, RigConfig
from dmicro_hw.drivers.base import Frame
from dmicro_hw.drivers.camera_base import CameraBase
from dmicro_hw.drivers.pixel_formats import PIXEL_FORMATS, UNPACKED_FORMATS
from dmicro_hw.errors import ConfigError, DeviceError
from dmicro_hw.simulators.bench import VirtualBench
from dmicro_hw.simulators.faults import DeviceDisconnected, FaultInjector

log = logging.getLogger(__name__)

TICKS_HZ = 1e9
_OPTIONS = {"paced", "noise", "buffer_frames", "trigger_mode", "prefill"}


class SimCamera(CameraBase):
    """Simulated streaming camera on a :class:`VirtualBench` (see the module docstring).

    The generic lifecycle (open/start/stop/close, frames iteration, trigger-mode checks) is
    :class:`~dmicro_hw.drivers.camera_base.CameraBase`'s; this class fills its ``_hw_*`` hooks.
    """

    backend = "sim"
    AUTO_OPEN = False  # frames()/start() before open(): DeviceError "not open"

    def __init__(
        self,
        section: CameraDeviceConfig,
        bench: VirtualBench,
        *,
        frame_rate_hz: float = 100.0,
        latency_s: float = 0.0,
        faults: FaultsConfig | None = None,
        trigger_mode: str = "free-run",
        device_id: str = "sim-rig",
    ) -> None:
        opts = dict(section.options)
        unknown = set(opts) - _OPTIONS
        if unknown:
            raise ConfigError(
                f"camera.options: unknown option(s) {', '.join(sorted(unknown))} for the sim "
                f"backend; allowed: {', '.join(sorted(_OPTIONS))}"
            )
        super().__init__()
        self.config = section
        self._bench = bench
        self.device_id = device_id
        self.paced = bool(opts.get("paced", True))
        noise = opts.get("noise")
        self.noise: bool = bench.noise if noise is None else bool(noise)
        self.buffer_frames = int(opts.get("buffer_frames", 64))
        if self.buffer_frames < 1:
            raise ConfigError("camera.options.buffer_frames: must be ≥ 1")
        self.prefill = bool(opts.get("prefill", False))
        self.trigger_mode = str(opts.get("trigger_mode", trigger_mode))
        if self.trigger_mode not in ("free-run", "triggered"):
            raise ConfigError(
                f"camera.options.trigger_mode: must be 'free-run' or 'triggered', "
                f"got {self.trigger_mode!r}"
            )
        if section.pixel_format not in UNPACKED_FORMATS:
            raise ConfigError(
                f"camera.pixel_format: {section.pixel_format!r} not supported by the sim camera; "
                f"allowed: {', '.join(UNPACKED_FORMATS)}"
            )
        self.pixel_format = section.pixel_format
        self.bits_per_pixel = PIXEL_FORMATS[self.pixel_format].bits
        self._dtype = np.uint8 if self.bits_per_pixel <= 8 else np.uint16
        self._fmt_scale = np.float32(2.0 ** (self.bits_per_pixel - bench.sensor_cfg.bit_depth))
        self._fmt_max = float(2**self.bits_per_pixel - 1)
        self._set_roi(section)
        self.exposure_s = float(section.exposure_s or bench.sensor_cfg.exposure_s)
        self.frame_rate_hz = float(frame_rate_hz)
        self.latency_s = float(latency_s)
        self.fetch_timeout_s = float(section.fetch_timeout_s)
        self._faults = FaultInjector(faults)

        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._disconnected = False
        self._t_open = 0.0
        self._t_start = 0.0
        self._produced = 0  # next frame id the device will expose
        self._queue: deque[tuple[int, float]] = deque()  # (frame id, exposure start) in buffer
        self.delivered = 0
        self.lost_overflow = 0
        self._unsubscribe: Any = None

    @classmethod
    def from_config(
        cls,
        section: CameraDeviceConfig,
        rig: RigConfig | None = None,
        bench: VirtualBench | None = None,
    ) -> SimCamera:
        """Registry factory: the camera of ``rig`` imaging ``bench`` (the rig's shared bench, from
        :func:`dmicro_hw.rig.open_rig`; default a private one built from ``rig``)."""
        rig = rig if rig is not None else RigConfig(camera=section)
        return cls(
            section,
            bench if bench is not None else VirtualBench.from_rig(rig),
            frame_rate_hz=section.frame_rate_hz or rig.bench.frame_rate_hz,
            latency_s=rig.bench.latency_s,
            faults=rig.bench.faults,
            trigger_mode=rig.acquisition.mode,
            device_id=rig.rig_id,
        )

    # ------------------------------------------------------------------ geometry/format
    def _set_roi(self, c: CameraDeviceConfig) -> None:
        sh, sw = self._bench.frame_shape
        b = int(c.binning)
        w = c.width if c.width is not None else sw - c.offset_x
        h = c.height if c.height is not None else sh - c.offset_y
        if c.offset_x + w > sw or w < 1:
            raise ConfigError(
                f"camera.width/offset_x: {c.offset_x}+{w} exceeds the sensor width {sw} px"
            )
        if c.offset_y + h > sh or h < 1:
            raise ConfigError(
                f"camera.height/offset_y: {c.offset_y}+{h} exceeds the sensor height {sh} px"
            )
        if w % b or h % b:
            raise ConfigError(f"camera.binning: ROI {h}×{w} is not divisible by binning {b}")
        self.binning = b
        self._roi = (slice(c.offset_y, c.offset_y + h), slice(c.offset_x, c.offset_x + w))
        self.sensor_shape = (sh, sw)
        self.width, self.height = w // b, h // b
        self.offset_x, self.offset_y = c.offset_x, c.offset_y

    def _to_pixels(self, adu: np.ndarray) -> np.ndarray:
        a = adu[self._roi]
        b = self.binning
        if b > 1:
            h, w = a.shape
            a = a.reshape(h // b, b, w // b, b).mean(axis=(1, 3), dtype=np.float32)
        a = a * self._fmt_scale
        np.rint(a, out=a)
        np.clip(a, 0.0, self._fmt_max, out=a)
        return a.astype(self._dtype)

    def set_exposure(self, exposure_s: float) -> None:
        """Exposure time in seconds (scales the photon budget linearly)."""
        if not 0 < exposure_s <= 10:
            raise ConfigError(f"camera.exposure_s: must be in (0, 10] s, got {exposure_s}")
        self.exposure_s = float(exposure_s)

    def set_frame_rate(self, frame_rate_hz: float) -> None:
        """Free-run frame rate (Hz); takes effect at the next start()."""
        if not 0 < frame_rate_hz <= 100000:
            raise ConfigError(f"camera.frame_rate_hz: must be in (0, 100000], got {frame_rate_hz}")
        self.frame_rate_hz = float(frame_rate_hz)

    def _hw_set_trigger_mode(self, triggered: bool) -> None:
        """Free-run paced/unpaced, or one frame per :meth:`trigger_pulse`."""

    # ------------------------------------------------------------------ lifecycle hooks
    def _hw_open(self) -> None:
        """Connect (also after a disconnect)."""
        self._disconnected = False
        self._t_open = self._bench.clock()
        log.debug("sim camera %s opened", self.device_id)

    def _hw_start(self) -> None:
        """Start acquisition: frame ids restart at 0."""
        with self._cv:
            self._stop.clear()
            self._queue.clear()
            self._produced = 0
            self._acquiring = True
            self._t_start = self._bench.clock()
        if self.prefill:
            n = self._bench.prefill()
            self._t_start = self._bench.clock()
            log.info("sim camera: prefilled %d frames of the bench bank", n)

    def _hw_stop(self) -> None:
        with self._cv:
            self._acquiring = False
            self._stop.set()
            self._queue.clear()
            self._cv.notify_all()

    def _hw_close(self) -> None:
        """Disconnect (the trigger is detached by :meth:`close`)."""

    def close(self) -> None:
        """Stop, unsubscribe from the trigger and disconnect (idempotent)."""
        try:
            super().close()
        finally:
            self._detach_trigger()

    def _check_streamable(self) -> None:
        if self._disconnected:
            raise DeviceDisconnected(
                "camera (sim): device is disconnected; close() and open() to reconnect"
            )

    # ------------------------------------------------------------------ trigger
    def trigger_pulse(self, index: int | None = None, t: float | None = None) -> None:
        """One trigger pulse: expose a frame (triggered mode; ignored otherwise).

        Matches the trigger firmware's ``on_pulse`` callback ``(pulse_index, t)``: ``t`` is the
        pulse time on ``time.monotonic``, used as exposure start when the bench runs on that
        clock (so late callbacks do not shift timestamps); otherwise the exposure starts now.
        """
        with self._cv:
            if not self._acquiring or self.trigger_mode != "triggered":
                return
            t_exp = self._bench.clock()
            if t is not None and self._bench.clock is time.monotonic:
                t_exp = min(float(t), t_exp)
            fid = self._produced
            self._produced += 1
            if len(self._queue) < self.buffer_frames:
                self._queue.append((fid, t_exp))
            else:
                self.lost_overflow += 1
            self._cv.notify_all()

    software_trigger = trigger_pulse

    def attach_trigger(self, trigger: Any) -> None:
        """Route a trigger's pulses to this camera (needs ``trigger.on_pulse(callback)``)."""
        hook = getattr(trigger, "on_pulse", None)
        if hook is None:
            raise DeviceError(f"{type(trigger).__name__} has no on_pulse(callback) hook")
        self._detach_trigger()
        unsubscribe = hook(self.trigger_pulse)
        self._unsubscribe = unsubscribe if callable(unsubscribe) else None

    def _detach_trigger(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    # ------------------------------------------------------------------ streaming
    def _wait_until(self, t: float) -> bool:
        """Sleep until bench time ``t``; False when stopped meanwhile."""
        while True:
            dt = t - self._bench.clock()
            if dt <= 0:
                return True
            if self._stop.wait(min(dt, 0.05)):
                return False

    def _next_exposure(self) -> tuple[int, float] | None:
        """(frame id, exposure start) of the next frame out of the device, or None if stopped."""
        if self.trigger_mode == "triggered":
            with self._cv:
                deadline = time.monotonic() + self.fetch_timeout_s
                while not self._queue:
                    left = deadline - time.monotonic()
                    if self._stop.is_set():
                        return None
                    if left <= 0:
                        raise FaultInjector.timeout_error(self._produced, self.fetch_timeout_s)
                    self._cv.wait(min(left, 0.05))
                return self._queue.popleft()
        if not self.paced:
            fid = self._produced
            self._produced += 1
            return fid, self._bench.clock()
        period = 1.0 / self.frame_rate_hz
        with self._cv:
            now = self._bench.clock()
            # frames exposed since the last read enter the buffer until it is full
            due = int((now - self._t_start) / period) + 1 if now >= self._t_start else 0
            if due > self._produced:
                take = max(0, min(due - self._produced, self.buffer_frames - len(self._queue)))
                for i in range(self._produced, self._produced + take):
                    self._queue.append((i, self._t_start + i * period))
                self.lost_overflow += due - self._produced - take
                self._produced = due
            if self._queue:
                return self._queue.popleft()
            fid = self._produced
            self._produced += 1
        t = self._t_start + fid * period
        if not self._wait_until(t):
            return None
        return fid, t

    def _hw_frame(self) -> Frame | None:
        faults = self._faults
        while True:
            nxt = self._next_exposure()
            if nxt is None:
                return None
            fid, t_exp = nxt
            if faults.is_disconnect(fid):
                self._disconnected = True
                self._acquiring = False
                self._opened = False
                raise faults.disconnect_error(fid)
            if faults.is_timeout(fid):
                self._stop.wait(self.fetch_timeout_s)
                raise faults.timeout_error(fid, self.fetch_timeout_s)
            ff = faults.frame(fid)
            if ff.drop:
                continue
            adu, label = self._bench.capture(
                fid, t_exp + 0.5 * self.exposure_s, noise=self.noise, exposure_s=self.exposure_s
            )
            meta: dict[str, Any] = {}
            if ff.saturate:
                adu = np.full_like(adu, self._bench.adc_max)
                meta["fault"] = "saturated"
            data = self._to_pixels(adu)
            if self.paced or ff.late_s:
                t_ready = t_exp + self.exposure_s + self.latency_s + ff.late_s
                if ff.late_s:
                    meta["fault"] = "late"
                if not self.paced:
                    t_ready = self._bench.clock() + ff.late_s
                if not self._wait_until(t_ready):
                    return None
            self.delivered += 1
            return Frame(
                data=data,
                frame_id=fid,
                device_timestamp=int(round((t_exp - self._t_open) * TICKS_HZ)),
                timestamp_frequency_hz=TICKS_HZ,
                host_time=time.time(),
                exposure_s=self.exposure_s,
                pixel_format=self.pixel_format,
                pattern_id=label,
                meta=meta,
            )

    def _hw_info(self) -> dict[str, Any]:
        """Device description and counters (no simulation internals)."""
        return {
            "model": "dmicro SimCamera",
            "serial": self.device_id,
            "sensor_shape": self.sensor_shape,
            "width": self.width,
            "height": self.height,
            "offset_x": self.offset_x,
            "offset_y": self.offset_y,
            "binning": self.binning,
            "pixel_format": self.pixel_format,
            "bits_per_pixel": self.bits_per_pixel,
            "adc_bits": self._bench.sensor_cfg.bit_depth,
            "exposure_s": self.exposure_s,
            "frame_rate_hz": self.frame_rate_hz,
            "paced": self.paced,
            "trigger_mode": self.trigger_mode,
            "latency_s": self.latency_s,
            "timestamp_frequency_hz": TICKS_HZ,
            "delivered": self.delivered,
            "lost_buffer_overflow": self.lost_overflow,
            "faults": dict(self._faults.counts),
            "open": self._opened,
            "streaming": self._acquiring,
        }

    def __repr__(self) -> str:
        return (
            f"SimCamera({self.height}×{self.width} {self.pixel_format}, "
            f"{self.frame_rate_hz:g} Hz, {self.trigger_mode}, paced={self.paced})"
        )
