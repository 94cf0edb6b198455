"""Replay camera (backend ``replay``): streams a stored acquisition as if it came from a camera.

Sources (``camera.replay_path``, or ``camera.options.path``):

* a Zarr store written by the acquisition (``<run>.zarr``, or a run folder holding
  ``run.zarr``): the image ``raw`` (t, y, x) — the array ``raw/0`` of the run's OME-Zarr
  collection, or an array ``raw`` at the root of any Zarr store — and, when present, 1-D
  arrays ``frame_id``, ``device_time``, ``host_time``, ``exposure_s`` and ``pattern_id``
  (or ``pattern_index`` into the ``patterns`` attribute table). Only committed frames are
  replayed — the ``committed`` counter array if present, else the ``committed_frames``
  attribute — since a crash may leave trailing fill-value frames. Attributes are read from
  the root and from its ``dmicro`` entry.
  ``device_time`` is in ticks of ``timestamp_frequency_hz`` (default 1 GHz) when integer, in
  seconds when float;
* a multi-page TIFF (one frame per page) or a 3-D ``.npy`` stack (t, y, x);
* a folder of 2-D ``.npy`` / ``.tif`` / ``.tiff`` frames, in natural name order.

Recorded frame ids and device timestamps are preserved (frame index and ``index / rate`` when
not recorded); ``host_time`` is the replay's own delivery time and the recorded one, if any, is
in ``frame.meta["recorded_host_time"]``. Pacing: ``camera.frame_rate_hz`` if set, else the
recorded device timestamps (their real intervals, gaps included), else ``bench.frame_rate_hz``;
``options.paced: false`` replays as fast as possible. The stream ends after the last frame unless
``options.loop: true`` (frame ids and timestamps then continue past the recording). ROI and
binning settings are ignored: frames are replayed as stored.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.config import CameraDeviceConfig, RigConfig
from dmicro_hw.drivers.base import Frame
from dmicro_hw.drivers.camera_base import CameraBase
from dmicro_hw.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

FRAME_SUFFIXES = (".npy", ".tif", ".tiff")
_OPTIONS = {"path", "paced", "loop", "rate_hz"}
TICKS_HZ = 1e9


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and (
        p.suffix == ".zarr" or (p / "zarr.json").is_file() or (p / ".zgroup").is_file()
    )


class _Source:
    """Random access to recorded frames + optional per-frame metadata."""

    n: int = 0
    frame_id: np.ndarray | None = None
    device_ticks: np.ndarray | None = None
    host_time: np.ndarray | None = None
    exposure_s: np.ndarray | None = None
    pattern_id: list[str] | None = None
    ticks_hz: float = TICKS_HZ
    pixel_format: str | None = None

    damaged: dict[int, str] = {}

    def frame(self, i: int) -> np.ndarray | None:  # pragma: no cover - abstract
        """Frame ``i`` as stored; None when the source knows it is damaged."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZarrSource(_Source):
    def __init__(self, path: Path) -> None:
        import zarr

        self.path = path
        from dmicro_hw.acquisition.store import image_array

        g = zarr.open_group(str(path), mode="r")
        raw = image_array(g, "raw")
        if raw is None:
            raise DeviceError(f"camera.replay_path: {path} has no array 'raw' (t, y, x)")
        self.raw = raw
        if self.raw.ndim != 3:
            raise DeviceError(f"camera.replay_path: {path}/raw must be 3-D (t, y, x)")
        attrs = dict(g.attrs)
        attrs.update(attrs.get("dmicro", {}) if isinstance(attrs.get("dmicro"), dict) else {})
        n = int(self.raw.shape[0])
        # frames readers may trust: the `committed` counter array (written after each chunk),
        # else the `committed_frames` attribute (written at finalize), else all of `raw`
        keys = set(g.array_keys())
        self.damaged: dict[int, str] = {}
        self._reader: Any = None
        if "committed" in keys:
            # a dmicro run store: counters and records checked, damaged frames never replayed
            from dmicro_hw.acquisition.store import RunReader
            from dmicro_hw.errors import DataError

            try:
                self._reader = RunReader(path)
            except DataError as e:
                raise DeviceError(f"camera.replay_path: {e}") from None
            n = self._reader.committed
            self.damaged = dict(self._reader.record_damage())
        elif attrs.get("committed_frames") is not None:
            n = min(n, int(attrs["committed_frames"]))
        self.n = n
        self.pixel_format = attrs.get("pixel_format") or dict(self.raw.attrs).get("pixel_format")

        def col(name: str) -> np.ndarray | None:
            if name not in keys:
                return None
            a = np.asarray(g[name][: self.n])
            return a if a.shape[:1] == (self.n,) else None

        self.frame_id = col("frame_id")
        dt = col("device_time")
        hz = attrs.get("timestamp_frequency_hz")
        if dt is not None:
            hz = hz or dict(g["device_time"].attrs).get("timestamp_frequency_hz")
            if np.issubdtype(dt.dtype, np.floating):
                self.device_ticks = np.rint(dt * TICKS_HZ).astype(np.int64)
            else:
                self.device_ticks = dt.astype(np.int64)
                self.ticks_hz = float(hz or TICKS_HZ)
        self.host_time = col("host_time")
        self.exposure_s = col("exposure_s")
        pid = col("pattern_id")
        if pid is not None:
            self.pattern_id = [str(x) for x in pid]
        elif "pattern_index" in keys and isinstance(attrs.get("patterns"), list):
            table = {
                int(p.get("index", i)): str(p.get("id", ""))
                for i, p in enumerate(attrs["patterns"])
                if isinstance(p, dict)
            }
            idx = col("pattern_index")
            if idx is not None:
                self.pattern_id = [table.get(int(i), "") for i in idx]
        self._chunk = int(self.raw.chunks[0]) if self.raw.chunks else 1
        self._block: tuple[int, np.ndarray] | None = None

    def frame(self, i: int) -> np.ndarray | None:
        """Frame ``i``, or None when it is damaged (checksum, missing chunk, records)."""
        if i in self.damaged:
            return None
        b = i // self._chunk
        if self._block is None or self._block[0] != b:
            lo = b * self._chunk
            if self._reader is not None:
                data, why = self._reader.raw_chunk(b)
                if data is None:
                    for f in range(lo, min(lo + self._chunk, self.n)):
                        self.damaged[f] = f"raw chunk {b}: {why}"
                    return None
            else:
                data = np.asarray(self.raw[lo : min(lo + self._chunk, self.n)])
            self._block = (b, data)
        return self._block[1][i - b * self._chunk]


class _StackSource(_Source):
    """Multi-page TIFF or 3-D .npy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tif = None
        if path.suffix.lower() == ".npy":
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            if a.ndim == 2:
                a = a[None]
            if a.ndim != 3:
                raise DeviceError(f"camera.replay_path: {path} must be 2-D or 3-D, got {a.shape}")
            self._stack = a
            self.n = a.shape[0]
        else:
            import tifffile

            self._tif = tifffile.TiffFile(path)
            self._pages = self._tif.pages
            self.n = len(self._pages)
            page = self._pages[0]
            if self.n == 1 and page.ndim == 3:
                # a (t, y, x) stack written as one page with separate planes (tifffile < 2026
                # does this for t ≤ 4); interleaved samples are a colour image, not a recording
                if int(page.planarconfig) != 2:
                    raise DeviceError(f"camera.replay_path: {path} is a colour image, not mono")
                self._stack = page.asarray()
                self._tif.close()
                self._tif = None
                self.n = self._stack.shape[0]

    def frame(self, i: int) -> np.ndarray:
        if self._tif is None:
            return np.asarray(self._stack[i])
        return self._pages[i].asarray()

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None


class _FolderSource(_Source):
    def __init__(self, path: Path) -> None:
        self.files = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
            key=_natural_key,
        )
        self.n = len(self.files)

    def frame(self, i: int) -> np.ndarray:
        p = self.files[i]
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        import tifffile

        return tifffile.imread(p)


def open_source(path: Path) -> _Source:
    """Open a recording; DeviceError naming the path when missing, empty or unreadable."""
    if not path.exists():
        raise DeviceError(f"camera.replay_path: {path} does not exist")
    if path.is_dir() and (path / "run.zarr").is_dir():  # an acquisition run folder
        path = path / "run.zarr"
    try:
        if _is_zarr(path):
            src: _Source = _ZarrSource(path)
        elif path.is_dir():
            src = _FolderSource(path)
            if src.n == 0:
                raise DeviceError(
                    f"camera.replay_path: {path} holds no frames ({', '.join(FRAME_SUFFIXES)})"
                )
        elif path.suffix.lower() in FRAME_SUFFIXES:
            src = _StackSource(path)
        else:
            raise DeviceError(
                f"camera.replay_path: {path} is not a .zarr store, a folder of frames, "
                "a multi-page TIFF or a .npy stack"
            )
    except DeviceError:
        raise
    except Exception as e:  # corrupt files: one clear line
        msg = f"camera.replay_path: cannot read {path} ({type(e).__name__}: {e})"
        raise DeviceError(msg) from None
    if src.n == 0:
        raise DeviceError(f"camera.replay_path: {path} holds no (committed) frames")
    return src


class ReplayCamera(CameraBase):
    """Camera backend that replays a stored acquisition (see the module docstring); the generic
    lifecycle is :class:`~dmicro_hw.drivers.camera_base.CameraBase`'s."""

    backend = "replay"
    AUTO_OPEN = False  # frames()/start() before open(): DeviceError "not open"

    def __init__(
        self,
        path: Path | str,
        *,
        frame_rate_hz: float | None = None,
        default_rate_hz: float = 100.0,
        paced: bool = True,
        loop: bool = False,
        pixel_format: str | None = None,
        exposure_s: float | None = None,
        fetch_timeout_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.frame_rate_hz = frame_rate_hz
        self.default_rate_hz = float(default_rate_hz)
        self.paced = bool(paced)
        self.loop = bool(loop)
        self._cfg_pixel_format = pixel_format
        self._cfg_exposure = exposure_s
        self.fetch_timeout_s = fetch_timeout_s
        self._src: _Source | None = None
        self._stop = threading.Event()
        self._pos = 0
        self.delivered = 0
        self.damaged_skipped = 0

    @classmethod
    def from_config(cls, section: CameraDeviceConfig, rig: RigConfig | None = None) -> ReplayCamera:
        """Registry factory (``camera.backend: replay``)."""
        opts = dict(section.options)
        unknown = set(opts) - _OPTIONS
        if unknown:
            raise ConfigError(
                f"camera.options: unknown option(s) {', '.join(sorted(unknown))} for the replay "
                f"backend; allowed: {', '.join(sorted(_OPTIONS))}"
            )
        path = section.replay_path or opts.get("path")
        if not path:
            raise ConfigError("camera.replay_path: required for the replay backend")
        rate = opts.get("rate_hz") or section.frame_rate_hz
        return cls(
            path,
            frame_rate_hz=float(rate) if rate else None,
            default_rate_hz=rig.bench.frame_rate_hz if rig is not None else 100.0,
            paced=bool(opts.get("paced", True)),
            loop=bool(opts.get("loop", False)),
            pixel_format=section.pixel_format,
            exposure_s=section.exposure_s,
            fetch_timeout_s=section.fetch_timeout_s,
        )

    # ------------------------------------------------------------------ trigger
    def _hw_set_trigger_mode(self, triggered: bool) -> None:
        """Recorded in :meth:`info`; a recording has no trigger input, so frames come at the
        recorded (or configured) pace in either mode."""

    def attach_trigger(self, trigger: Any) -> None:
        """Nothing to connect: a recording does not wait for trigger pulses."""

    # ------------------------------------------------------------------ lifecycle hooks
    def _hw_open(self) -> None:
        self._src = open_source(self.path)
        log.info("replay camera: %d frames from %s", self._src.n, self.path)

    def _hw_start(self) -> None:
        self._stop.clear()
        self._pos = 0

    def _hw_stop(self) -> None:
        self._stop.set()

    def _hw_close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    @property
    def n_frames(self) -> int:
        """Number of (committed) frames in the recording."""
        if self._src is None:
            raise DeviceError("camera (replay): not open; call open() first")
        return self._src.n

    # ------------------------------------------------------------------ frames
    def _data(self, i: int) -> tuple[np.ndarray, str] | None:
        src = self._src
        try:
            a = src.frame(i)
            if a is None:
                return None
            a = np.asarray(a)
        except Exception as e:
            msg = f"camera (replay): cannot read frame {i} of {self.path} ({e})"
            raise DeviceError(msg) from None
        if a.ndim != 2:
            raise DeviceError(f"camera (replay): frame {i} of {self.path} is not 2-D: {a.shape}")
        if a.dtype not in (np.uint8, np.uint16):
            if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 65535 or not np.isfinite(a).all()):
                raise DeviceError(
                    f"camera (replay): frame {i} of {self.path} has values outside 0…65535"
                )
            a = np.rint(a).astype(np.uint16)
        fmt = src.pixel_format or self._cfg_pixel_format or "Mono8"
        if (a.dtype == np.uint8) != (fmt == "Mono8"):
            fmt = "Mono8" if a.dtype == np.uint8 else "Mono16"
        return a, fmt

    def _timing(self, i: int, lap: int) -> tuple[int, int, float]:
        """(frame id, device ticks, seconds since the replay start) of frame i in lap ``lap``."""
        src = self._src
        n = src.n
        hz = src.ticks_hz
        if src.device_ticks is not None and n > 1:
            span = int(src.device_ticks[-1] - src.device_ticks[0])
            step = span // (n - 1) if span > 0 else int(hz / self.default_rate_hz)
            ticks = int(src.device_ticks[i]) + lap * (span + step)
            rel = (ticks - int(src.device_ticks[0])) / hz
        else:
            rate = self.frame_rate_hz or self.default_rate_hz
            k = lap * n + i
            ticks = int(round(k / rate * hz))
            rel = k / rate
        if self.frame_rate_hz:
            rel = (lap * n + i) / self.frame_rate_hz
        if src.frame_id is not None:
            last = int(src.frame_id[-1])
            fid = int(src.frame_id[i]) + lap * (last + 1)
        else:
            fid = lap * n + i
        return fid, ticks, rel

    def _hw_frames(self) -> Iterator[Frame]:
        """The recorded frames (paced) until the end of the recording or stop()."""
        src = self._src
        t0 = time.monotonic()
        rel0: float | None = None
        while True:
            if self._stop.is_set():
                return
            lap, i = divmod(self._pos, src.n)
            if lap and not self.loop:
                return
            fid, ticks, rel = self._timing(i, lap)
            if self.paced:
                if rel0 is None:
                    rel0 = rel
                wait = t0 + (rel - rel0) - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
            got = self._data(i)
            if got is None:  # damaged in the recording: never replayed (a frame-id gap)
                self._pos += 1
                self.damaged_skipped += 1
                log.warning("replay: frame %d of %s is damaged, skipped", i, self.path)
                continue
            data, fmt = got
            meta: dict[str, Any] = {"replay_index": self._pos}
            if src.host_time is not None:
                meta["recorded_host_time"] = float(src.host_time[i])
            exp = float("nan")
            if src.exposure_s is not None:
                exp = float(src.exposure_s[i])
            elif self._cfg_exposure is not None:
                exp = float(self._cfg_exposure)
            self._pos += 1
            self.delivered += 1
            yield Frame(
                data=data,
                frame_id=fid,
                device_timestamp=ticks,
                timestamp_frequency_hz=src.ticks_hz,
                host_time=time.time(),
                exposure_s=exp,
                pixel_format=fmt,
                pattern_id=src.pattern_id[i] if src.pattern_id is not None else "",
                meta=meta,
            )

    def _hw_info(self) -> dict[str, Any]:
        src = self._src
        return {
            "path": str(self.path),
            "frames": src.n if src is not None else None,
            "frame_rate_hz": self.frame_rate_hz,
            "paced": self.paced,
            "loop": self.loop,
            "delivered": self.delivered,
            "lost_damaged": self.damaged_skipped,  # damaged recorded frames not replayed
            "open": src is not None,
        }

    def __repr__(self) -> str:
        return f"ReplayCamera({self.path}, paced={self.paced}, loop={self.loop})"
