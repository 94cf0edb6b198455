"""The acquisition pipeline: camera thread → frame ring → Zarr writer + reconstruction worker.

    camera.frames() ──► FrameRing (preallocated, bounded) ──► writer thread ──► RUN.zarr raw+records
      (camera thread)          │  lossless cursor: backpressure, ring drops counted
                               └─► ReconWorker (lossy cursor) ──► RUN.zarr phase + recon_status

The caller owns the devices (opened as context managers, so they are left safe whatever happens);
:class:`Acquisition` shows the pattern, waits the SLM settle time, arms the trigger, streams until
the frame count, the duration, :meth:`Acquisition.request_stop` (Ctrl-C / SIGTERM) or a device
error, then shuts down in order: stop the camera thread, disarm the trigger, stop the camera,
drain the ring into the store, let the decoder finish (bounded by ``drain_s``; the rest is marked
skipped), finalize the store, blank the SLM. Live figures come from :meth:`Acquisition.snapshot`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.reconstruct import Reconstructor, ReconWorker
from dmicro_hw.acquisition.ring_buffer import FrameRing
from dmicro_hw.acquisition.writer import RunWriter
from dmicro_hw.drivers.base import Frame
from dmicro_hw.drivers.pixel_formats import PIXEL_FORMATS, format_bits
from dmicro_hw.errors import DeviceError, DmicroError

log = logging.getLogger(__name__)


def pixel_format_bits(pixel_format: str, data: np.ndarray) -> int:
    """Bits per pixel of a PFNC mono format (the one table, drivers/pixel_formats.py); the
    container's bits for a format the table does not know."""
    bits = format_bits(pixel_format)
    return bits if bits is not None else int(data.dtype.itemsize * 8)


def frame_dtype(pixel_format: str, data: np.ndarray) -> np.dtype:
    """Storage dtype for a PFNC pixel format: uint8 for Mono8, uint16 for deeper Mono formats."""
    if pixel_format in PIXEL_FORMATS:
        return PIXEL_FORMATS[pixel_format].dtype
    if data.dtype.kind in "ui" and data.dtype.itemsize <= 2:
        return np.dtype(np.uint16) if data.dtype.itemsize == 2 else np.dtype(np.uint8)
    return np.dtype(np.uint16)


def full_scale_value(bits: int, adc_bits: int) -> int:
    """Stored pixel value of a saturated ADC: (2^adc − 1)·2^(bits − adc), within the format."""
    return min((1 << bits) - 1, int(round(((1 << adc_bits) - 1) * 2.0 ** (bits - adc_bits))))


def device_lost(info: dict[str, Any]) -> int:
    """Frames the device itself reports lost: the sum of its integer ``lost_*`` counters."""
    return sum(
        int(v)
        for k, v in info.items()
        if k.startswith("lost_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    )


def percentile(values: Any, q: float) -> float | None:
    v = list(values)
    return float(np.percentile(v, q)) if v else None


@dataclass
class AcquisitionOptions:
    """What to acquire and how (from ``rig.acquisition`` and the command line)."""

    out: Path
    frames: int | None = None
    duration_s: float | None = None
    mode: str = "free-run"  # or "triggered"
    ring_frames: int = 256
    chunk_frames: int = 16
    recon_batch: int = 8
    trigger_rate_hz: float = 100.0
    put_timeout_s: float = 1.0  # how long the camera thread waits for a full ring
    drain_s: float = 10.0  # how long the decoder may catch up after the camera stopped
    settle: bool = True
    adc_bits: int | None = None  # sensor ADC bits (rig.sensor.bit_depth); None = format bits
    frame_interval_s: float = 0.01
    raw_pixel_m: float = 1e-6
    attrs: dict[str, Any] = field(default_factory=dict)
    patterns: list[dict[str, Any]] = field(default_factory=list)
    out_claimed: bool = False  # ``out`` is an empty folder made exclusively for this run


@dataclass
class Snapshot:
    """Live figures of a running acquisition (what the status line shows)."""

    elapsed_s: float = 0.0
    received: int = 0
    fps: float = 0.0
    written: int = 0
    camera_dropped: int = 0
    ring_dropped: int = 0
    queue_writer: int = 0
    queue_recon: int = 0
    decoded: int = 0
    recon_skipped: int = 0
    decode_p50_ms: float | None = None
    decode_p99_ms: float | None = None
    target: int | None = None
    state: str = "starting"


class Acquisition:
    """One acquisition run over already-opened devices.

    Args:
        camera: a :class:`~dmicro_hw.drivers.base.Camera`.
        options: :class:`AcquisitionOptions`.
        slm: SLM to show ``pattern`` on (None: leave it as it is).
        pattern: grey levels to display (None: nothing shown).
        pattern_id: id shown with the pattern (also stored per frame via the patterns table).
        trigger: a :class:`~dmicro_hw.drivers.base.Trigger` (used in triggered mode; always
            disarmed at the end).
        recon: a :class:`Reconstructor`, or None for ``--no-recon``.
    """

    def __init__(
        self,
        camera: Any,
        options: AcquisitionOptions,
        *,
        slm: Any = None,
        pattern: np.ndarray | None = None,
        pattern_id: str = "",
        trigger: Any = None,
        recon: Reconstructor | None = None,
    ) -> None:
        self.camera = camera
        self.opt = options
        self.slm = slm
        self.pattern = pattern
        self.pattern_id = pattern_id
        self.trigger = trigger
        self.recon = recon
        self._stop = threading.Event()
        self.stop_reason = ""
        self.errors: list[str] = []
        self.ring: FrameRing | None = None
        self.writer: RunWriter | None = None
        self.worker: ReconWorker | None = None
        self._cam_thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        self._t_start = 0.0
        self._t_first = 0.0
        self._t_last = 0.0
        self.received = 0
        self.camera_dropped = 0
        self._last_fid: int | None = None
        self._dev_first = self._dev_last = (0, 0.0)  # (device timestamp, ticks per second)
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)
        self._state = "starting"
        self._first: Frame | None = None
        self._frames_iter: Any = None
        self.camera_info: dict[str, Any] = {}
        self._pattern_index = {str(p["id"]): int(p["index"]) for p in options.patterns}
        self._default_pattern = 0 if options.patterns else -1

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "stopped") -> None:
        """Ask the run to end (thread- and signal-safe); the first reason given is kept."""
        if not self._stop.is_set():
            self.stop_reason = self.stop_reason or reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Show the pattern, settle, start camera/trigger, take the first frame, start threads."""
        opt = self.opt
        self._state = "pattern"
        if self.slm is not None and self.pattern is not None:
            self.slm.show(self.pattern, pattern_id=self.pattern_id)
            settle = float(self.slm.settle_time_s) if opt.settle else 0.0
            if settle > 0:
                self._state = "settling"
                self._stop.wait(settle)
        self.camera_info = _safe_info(self.camera)
        self.camera.start()
        if opt.mode == "triggered":
            if self.trigger is None:
                raise DeviceError("acquisition.mode: triggered needs a trigger device")
            count = int(opt.frames) if opt.frames else 0
            self.trigger.arm(opt.trigger_rate_hz, count)
            self.trigger.fire()
        self._state = "waiting for first frame"
        self._t_start = time.perf_counter()
        self._frames_iter = iter(self.camera.frames(opt.frames))
        first = self._next_frame()
        if first is None:
            if self._stop.is_set():  # Ctrl-C while settling/waiting: nothing to store
                self._state = "stopped before the first frame"
                return
            raise DeviceError("camera: the frame stream ended before the first frame")
        self._first = first
        self._setup(first)

    def _next_frame(self) -> Frame | None:
        if self._stop.is_set():
            return None
        try:
            return next(self._frames_iter)
        except StopIteration:
            return None

    def _setup(self, first: Frame) -> None:
        opt = self.opt
        shape = tuple(int(s) for s in first.data.shape)
        if len(shape) != 2:
            raise DeviceError(f"camera frames must be 2-D (mono), got shape {shape}")
        dtype = frame_dtype(first.pixel_format, first.data)
        bits = pixel_format_bits(first.pixel_format, first.data)
        adc_bits = int(self.camera_info.get("adc_bits") or opt.adc_bits or bits)
        if self.recon is not None:
            self.recon.check_frame_shape(shape)
            self.recon.set_pixel_scale(2.0 ** (bits - adc_bits))
        attrs = {
            "pixel_format": first.pixel_format,
            "bits_per_pixel": bits,
            "adc_bits": adc_bits,
            "storage_dtype": dtype.name,
            "timestamp_frequency_hz": float(first.timestamp_frequency_hz),
            "frame_interval_s": opt.frame_interval_s,
            "mode": opt.mode,
            "camera": self.camera_info,
            "patterns": opt.patterns,
        }
        attrs.update(opt.attrs)
        if self.recon is not None:
            attrs["recon"] = self.recon.info()
        self.writer = RunWriter(
            opt.out,
            frame_shape=shape,  # type: ignore[arg-type]
            dtype=dtype,
            chunk_frames=opt.chunk_frames,
            phase_size=self.recon.field_size if self.recon else None,
            raw_pixel_m=opt.raw_pixel_m,
            phase_pixel_m=self.recon.pixel_size_m if self.recon else None,
            frame_interval_s=opt.frame_interval_s,
            attrs=attrs,
            expected_frames=opt.frames,
            full_scale=full_scale_value(bits, adc_bits),
            claimed=opt.out_claimed,
        )
        self.ring = FrameRing(opt.ring_frames, shape, dtype)  # type: ignore[arg-type]
        self.ring.add_consumer("writer")
        if self.recon is not None:
            self.worker = ReconWorker(self.ring, self.writer, self.recon, batch=opt.recon_batch)
        self._writer_thread = threading.Thread(
            target=self._writer_loop, name="dmicro-writer", daemon=True
        )
        self._cam_thread = threading.Thread(
            target=self._camera_loop, name="dmicro-camera", daemon=True
        )
        self._writer_thread.start()
        if self.worker is not None:
            self.worker.start()
        self._state = "running"
        self._cam_thread.start()

    # ------------------------------------------------------------------ threads
    def _accept(self, frame: Frame) -> None:
        assert self.ring is not None
        fid = int(frame.frame_id)
        if self._last_fid is not None and fid > self._last_fid + 1:
            self.camera_dropped += fid - self._last_fid - 1
        self._last_fid = fid
        pid = frame.pattern_id
        index = self._pattern_index.get(pid, -1) if pid else self._default_pattern
        self.ring.put(frame, index, timeout=self.opt.put_timeout_s)
        self.received += 1
        now = time.perf_counter()
        self._dev_last = (int(frame.device_timestamp), float(frame.timestamp_frequency_hz))
        if self.received == 1:
            self._t_first = now
            self._dev_first = self._dev_last
        self._t_last = now
        self._recent.append((now, self.received))

    def _camera_loop(self) -> None:
        opt = self.opt
        try:
            frame = self._first
            self._first = None
            while frame is not None:
                self._accept(frame)
                if opt.frames is not None and self.received >= opt.frames:
                    self.request_stop("frames")
                    break
                if opt.duration_s is not None and time.perf_counter() - self._t_start >= (
                    opt.duration_s
                ):
                    self.request_stop("duration")
                    break
                frame = self._next_frame()
            else:
                self.request_stop(self.stop_reason or "camera ended")
        except DmicroError as e:
            self.errors.append(str(e))
            self.request_stop("device error")
        except Exception as e:  # noqa: BLE001 - reported in run.json, run still finalized
            log.exception("camera thread failed")
            self.errors.append(f"camera thread: {type(e).__name__}: {e}")
            self.request_stop("camera error")
        finally:
            if self._frames_iter is not None and hasattr(self._frames_iter, "close"):
                try:
                    self._frames_iter.close()  # run the camera generator's cleanup here
                except Exception as e:  # noqa: BLE001
                    log.warning("closing the frame stream failed: %s", e)
            if self.ring is not None:
                self.ring.close()

    def _writer_loop(self) -> None:
        assert self.ring is not None and self.writer is not None
        ring, writer = self.ring, self.writer
        max_n = max(self.opt.chunk_frames * 4, 16)
        try:
            while True:
                b = ring.get("writer", max_n, timeout=0.2, min_n=self.opt.chunk_frames)
                if b is not None:
                    writer.append(b.data, b.records)
                elif ring.finished("writer"):
                    break
                writer.flush(max_age_s=1.0)
            writer.flush()
        except Exception as e:  # noqa: BLE001 - a storage failure ends the run, loudly
            # reported once, in run.json's errors and the command's last line
            log.info("writer stopped: %s: %s", type(e).__name__, e)
            log.debug("writer failure", exc_info=True)
            self.errors.append(f"writer: {type(e).__name__}: {e}")
            self.request_stop("storage error")
            # keep the camera thread from waiting on a ring nobody drains
            while not ring.finished("writer"):
                ring.get("writer", 1 << 20, timeout=0.2)

    # ------------------------------------------------------------------ supervision
    def wait(self, poll_s: float = 0.1, on_tick: Any = None) -> None:
        """Block until the run should end; ``on_tick(snapshot)`` every ``poll_s``.

        Returns on stop request (frames/duration reached, Ctrl-C, errors) or when the camera
        thread ends. Signal handlers run between polls.
        """
        while True:
            if on_tick is not None:
                on_tick(self.snapshot())
            if self._stop.wait(poll_s):
                return
            if self._cam_thread is not None and not self._cam_thread.is_alive():
                return
            if self.opt.duration_s is not None and time.perf_counter() - self._t_start >= (
                self.opt.duration_s + 1.0
            ):
                # no frame arrived for a while: the duration still ends the run
                self.request_stop("duration")
                return

    def shutdown(self, on_tick: Any = None) -> dict[str, Any]:
        """Stop everything in order and finalize the store; returns the run summary."""
        self._state = "stopping"
        self.request_stop("stopped")
        t_stop = time.perf_counter()
        if self._cam_thread is not None:
            timeout = float(getattr(self.camera, "fetch_timeout_s", 2.0) or 2.0) + 3.0
            self._cam_thread.join(timeout)
            if self._cam_thread.is_alive():
                self.errors.append("camera thread did not stop in time")
        elif self.ring is not None:
            self.ring.close()
        _quietly(self.errors, "trigger.disarm", self.trigger, "disarm")
        _quietly(self.errors, "camera.stop", self.camera, "stop")
        if self.ring is not None and not self.ring.closed:
            self.ring.close()
        if self._writer_thread is not None:
            while self._writer_thread.is_alive():
                self._writer_thread.join(0.1)
                if on_tick is not None:
                    on_tick(self.snapshot())
        if self.worker is not None:
            self.worker.stop_after(self.opt.drain_s)
            self._state = "decoding the rest"
            while self.worker.is_alive():
                self.worker.join(0.1)
                if on_tick is not None:
                    on_tick(self.snapshot())
            if self.worker.error is not None:
                self.errors.append(f"reconstruction: {self.worker.error}")
        self._state = "finalizing"
        summary = self.summary(t_stop)
        if self.writer is not None:
            try:
                self.writer.finalize(summary)
            except Exception as e:  # noqa: BLE001
                log.info("finalize failed: %s", e)
                self.errors.append(f"finalize: {e}")
                summary["errors"] = list(self.errors)
        if self.slm is not None:
            _quietly(self.errors, "slm.blank", self.slm, "blank")
        self._state = "done"
        return summary

    # ------------------------------------------------------------------ figures
    def _fps(self) -> float:
        r = self._recent
        if len(r) < 2:
            return 0.0
        (t0, n0), (t1, n1) = r[0], r[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _device_fps(self) -> float | None:
        """Frames stored per second of *device* time (first → last frame's timestamp): the
        sustained capture rate, independent of host-side bursts. None without timestamps."""
        (t0, f0), (t1, f1) = self._dev_first, self._dev_last
        if self.received < 2 or f1 <= 0 or f0 != f1 or t1 <= t0:
            return None
        return round((self.received - 1) * f1 / (t1 - t0), 2)

    def snapshot(self) -> Snapshot:
        s = Snapshot(
            elapsed_s=time.perf_counter() - self._t_start if self._t_start else 0.0,
            received=self.received,
            fps=self._fps(),
            target=self.opt.frames,
            state=self._state,
            camera_dropped=self.camera_dropped,
        )
        if self.writer is not None:
            s.written = self.writer.committed
        if self.ring is not None:
            st = self.ring.stats()
            s.ring_dropped = st.ring_dropped
            s.queue_writer = st.depth.get("writer", 0)
            s.queue_recon = st.depth.get("recon", 0)
        w = self.worker
        if w is not None:
            s.decoded = w.decoded
            s.recon_skipped = w.skipped
            recent = w.latency_ms[-512:]
            s.decode_p50_ms = percentile(recent, 50)
            s.decode_p99_ms = percentile(recent, 99)
        return s

    def summary(self, t_stop: float | None = None) -> dict[str, Any]:
        """The run's figures (run.json)."""
        span = self._t_last - self._t_first if self.received > 1 else 0.0
        ring = self.ring.stats() if self.ring else None
        counters = _safe_info(self.camera)
        lost_dev = max(0, device_lost(counters) - device_lost(self.camera_info))
        written = self.writer.committed if self.writer else 0
        out: dict[str, Any] = {
            "out": str(self.opt.out),
            "mode": self.opt.mode,
            "stop_reason": self.stop_reason,
            "frames_requested": self.opt.frames,
            "duration_requested_s": self.opt.duration_s,
            "frames_received": self.received,
            "frames_written": written,
            # received but never committed to the store (a write error ended the run)
            "frames_unwritten": max(0, self.received - written),
            # the larger of: gaps in the frame ids, the device's own loss counters (which also
            # see frames lost after the last delivered one)
            "camera_dropped": max(self.camera_dropped, lost_dev),
            "camera_dropped_gaps": self.camera_dropped,
            "camera_lost_device": lost_dev,
            "frames_saturated": self.writer.frames_saturated if self.writer else 0,
            # delivered more than LATE_DELIVERY_S after the best case (per frame:
            # delivery_delay_s in the store)
            "frames_late": self.writer.frames_late if self.writer else 0,
            # the trigger link's own counters (serial box: requests, retries, garbled, timeouts)
            "trigger_counters": _trigger_counters(self.trigger),
            "ring_dropped": ring.ring_dropped if ring else 0,
            "ring_capacity": self.opt.ring_frames,
            "ring_max_depth": ring.max_depth if ring else {},
            "producer_wait_s": round(ring.put_wait_s, 4) if ring else 0.0,
            "elapsed_s": round((t_stop or time.perf_counter()) - self._t_start, 4),
            "mean_fps": round((self.received - 1) / span, 2) if span > 0 else None,
            "device_fps": self._device_fps(),
            "writer": {
                "commits": self.writer._raw.commits if self.writer else 0,
                "write_s": round(self.writer.write_seconds, 4) if self.writer else 0.0,
                "frames_lost_in_ids": self.writer.frames_lost if self.writer else 0,
            },
            "camera": self.camera_info,
            "camera_counters": counters,
            "errors": list(self.errors),
        }
        w = self.worker
        if w is not None:
            decode_s = sum(w.batch_ms) / 1e3
            out["recon"] = {
                **(self.recon.info() if self.recon else {}),
                "decoded": w.decoded,
                "skipped": w.skipped,
                "errors": w.errors,
                "phase_written": self.writer.phase_committed if self.writer else 0,
                "latency_ms_p50": _r(percentile(w.latency_ms, 50)),
                "latency_ms_p99": _r(percentile(w.latency_ms, 99)),
                "batch_ms_p50": _r(percentile(w.batch_ms, 50)),
                "batch_ms_p99": _r(percentile(w.batch_ms, 99)),
                "decode_fps": round(w.decoded / decode_s, 1) if decode_s > 0 else None,
            }
        else:
            out["recon"] = None
        return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _safe_info(device: Any) -> dict[str, Any]:
    try:
        info = device.info() if hasattr(device, "info") else {}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    return {str(k): _jsonable(v) for k, v in dict(info).items()}


def _trigger_counters(trigger: Any) -> dict[str, Any] | None:
    if trigger is None:
        return None
    stats = getattr(trigger, "stats", None)
    if isinstance(stats, dict):
        return {str(k): _jsonable(v) for k, v in stats.items()}
    return _safe_info(trigger)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _quietly(errors: list[str], what: str, obj: Any, method: str) -> None:
    if obj is None or not hasattr(obj, method):
        return
    try:
        getattr(obj, method)()
    except Exception as e:  # noqa: BLE001 - leave-safe calls must all be attempted
        log.warning("%s failed: %s", what, e)
        errors.append(f"{what}: {e}")


def snapshot_dict(s: Snapshot) -> dict[str, Any]:
    return asdict(s)
