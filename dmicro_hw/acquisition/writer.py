"""Writing the Zarr v3 run store: raw frames, per-frame records, phase, and crash-safe commit
counters (the layout, the record tables and the reader: :mod:`dmicro_hw.acquisition.store`).

Zarr-python 3 resizes an array (rewrites its metadata) before a chunk is written, so after a crash
``raw`` may be longer than what was written and end in fill-value frames. Every commit therefore
writes the data and the records first and the counter last (each file write is atomic in
zarr ≥ 3.1.3); :class:`~dmicro_hw.acquisition.store.RunReader` only exposes ``[:committed]``.
``finalize`` trims every array to the committed length and records the run summary in the root
attributes.

Two threads write: the raw side (writer thread: ``raw``, the records, ``committed``) and the phase
side (reconstruction worker: ``phase``, ``recon_status``, ``phase_committed``); they touch disjoint
arrays and each side resizes only its own.

Integrity (:mod:`~dmicro_hw.acquisition.integrity`): every chunk of every array carries a CRC32C
checksum that zarr checks on read, and all-fill chunks are written too, so a missing chunk inside
the committed range is damage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition import ome
from dmicro_hw.acquisition.integrity import INTEGRITY, WRITE_CONFIG, with_checksum, writable
from dmicro_hw.acquisition.store import (
    RAW_RECORDS,
    RECON_STATUS_NAMES,
    RECORD_UNITS,
    SCHEMA,
    RunReader,
)
from dmicro_hw.errors import DataError

log = logging.getLogger(__name__)

#: a frame delivered this much later than its neighbours' best case counts as late
LATE_DELIVERY_S = 0.05
#: device-time window over which the best-case host−device offset is taken (clock drift)
DELAY_WINDOW_S = 10.0


def _blosc() -> list[Any]:
    """Image chunks: Blosc-zstd with bitshuffle, then the CRC32C checksum."""
    from zarr.codecs import BloscCodec

    return with_checksum(BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"))


def _zstd() -> list[Any]:
    """1-D record chunks: zstd, then the CRC32C checksum."""
    from zarr.codecs import ZstdCodec

    return with_checksum(ZstdCodec())


def create_image(
    g: Any,
    name: str,
    *,
    shape: tuple[int, int],
    dtype: Any,
    chunk: int,
    cap: int,
    fill: Any,
    pixel_m: float,
    frame_interval_s: float,
    window: tuple[float, float, float, float],
    unit: str,
    long_name: str,
    color: str = "FFFFFF",
) -> Any:
    """Create image group ``name`` (OME multiscales + omero) holding a (cap, *shape) array in
    chunks of ``chunk`` frames, list it in the collection index, and return the array."""
    ig = g.create_group(
        name,
        attributes={
            "ome": ome.image_attrs(
                name,
                pixel_m=pixel_m,
                frame_interval_s=frame_interval_s,
                window=window,
                color=color,
                unit=unit,
            )
        },
    )
    arr = ig.create_array(
        ome.LEVEL0,
        shape=(cap, *shape),
        chunks=(chunk, *shape),
        dtype=dtype,
        compressors=_blosc(),
        fill_value=fill,
        config=WRITE_CONFIG,
        dimension_names=["t", "y", "x"],
        attributes={"units": unit, "long_name": long_name},
    )
    if ome.INDEX_GROUP in g:
        idx = g[ome.INDEX_GROUP]
        series = list(dict(idx.attrs).get("ome", {}).get("series", []))
    else:
        idx = g.create_group(ome.INDEX_GROUP)
        series = []
    if name not in series:
        series.append(name)
    idx.attrs.update({"ome": ome.index_attrs(series)})
    return arr


def set_image_window(g: Any, name: str, start: float, end: float) -> None:
    """Set the displayed contrast range of image ``name`` (omero window start/end)."""
    if name not in g or not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        return
    ig = g[name]
    attrs = dict(ig.attrs)
    if "ome" in attrs:
        ig.attrs.update({"ome": ome.set_window(attrs["ome"], start, end)})


class _Range:
    """Running finite min/max of the values written (for the omero contrast window)."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def add(self, a: np.ndarray) -> None:
        if a.size == 0:
            return
        if a.dtype.kind == "f":
            with np.errstate(all="ignore"):
                fin = a[np.isfinite(a)]
            if fin.size == 0:
                return
            a = fin
        self.lo = min(self.lo, float(a.min()))
        self.hi = max(self.hi, float(a.max()))


class _Side:
    """Chunk-aligned, buffered appends to a set of t-arrays, followed by a counter write."""

    def __init__(
        self,
        arrays: dict[str, Any],
        counter: Any,
        chunk: int,
        grow: int,
        committed: int = 0,
    ) -> None:
        self.arrays = arrays
        self.counter = counter
        self.chunk = chunk
        self.grow = grow
        self.committed = committed
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
        self.n_pending = 0
        self.oldest_pending = 0.0
        self.lock = threading.Lock()
        self.write_s = 0.0
        self.commits = 0

    def add(self, values: dict[str, np.ndarray], n: int) -> None:
        if n <= 0:
            return
        if self.n_pending == 0:
            self.oldest_pending = time.monotonic()
        for k in self.arrays:
            self.pending[k].append(values[k])
        self.n_pending += n

    def commit(self, force: bool = False) -> int:
        """Write whole chunks (all pending frames if ``force``); returns frames committed."""
        with self.lock:
            total = self.committed + self.n_pending
            end = total if force else (total // self.chunk) * self.chunk
            if end <= self.committed:
                return 0
            n = end - self.committed
            t0 = time.perf_counter()
            cat = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in self.pending.items()}
            first = next(iter(self.arrays.values()))
            cap = 0
            if end > first.shape[0]:
                cap = max(end, first.shape[0] + self.grow)
                cap = int(math.ceil(cap / self.chunk) * self.chunk)
            values = {k: v[:n] for k, v in cat.items()}
            from zarr.core.sync import sync  # zarr's event loop: one round trip per commit

            sync(self._write(cap, slice(self.committed, end), values, end))
            self.committed = end
            for k in self.pending:
                rest = cat[k][n:]
                self.pending[k] = [rest] if len(rest) else []
            self.n_pending -= n
            if self.n_pending:
                self.oldest_pending = time.monotonic()
            self.write_s += time.perf_counter() - t0
            self.commits += 1
            return n

    async def _write(self, cap: int, s: slice, values: dict[str, np.ndarray], end: int) -> None:
        """Resize (if needed), write every array concurrently, then the counter — one round
        trip to zarr's event loop instead of one per array."""
        arrays = self.arrays
        if cap:
            await asyncio.gather(
                *(a.async_array.resize((cap, *a.shape[1:])) for a in arrays.values())
            )
        await asyncio.gather(*(a.async_array.setitem(s, values[k]) for k, a in arrays.items()))
        await self.counter.async_array.setitem(0, end)  # written last: readers trust it

    def age_s(self) -> float:
        return time.monotonic() - self.oldest_pending if self.n_pending else 0.0

    def trim(self) -> None:
        for a in self.arrays.values():
            if a.shape[0] != self.committed:
                a.resize((self.committed, *a.shape[1:]))


class RunWriter:
    """Create ``path`` (a new ``.zarr`` directory) and append frames, records and phase to it.

    Args:
        path: store directory; must not exist.
        frame_shape, dtype: raw frame (H, W) and dtype.
        chunk_frames: frames per chunk along t (``acquisition.chunk_frames``).
        phase_size: N of the reconstructed N×N phase, or None to add it later (offline).
        raw_pixel_m, phase_pixel_m: pixel pitch in the object plane, metres.
        frame_interval_s: nominal time between frames (OME scale along t).
        attrs: run metadata stored under root attributes ``dmicro`` (rig id, pattern and
            calibration hashes, pixel format, timestamp frequency, patterns table, …).
        expected_frames: preallocate this many frames (fewer resizes); trimmed at finalize.
        full_scale: pixel value (ADU as stored) at which the ADC saturates; each frame's count of
            pixels at or above it is stored in ``saturated_px`` (None: dtype maximum).
        claimed: ``path`` may be an empty folder the caller created exclusively for this run.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        frame_shape: tuple[int, int],
        dtype: np.dtype | str,
        chunk_frames: int = 16,
        phase_size: int | None = None,
        raw_pixel_m: float = 1e-6,
        phase_pixel_m: float | None = None,
        frame_interval_s: float = 0.01,
        attrs: dict[str, Any] | None = None,
        expected_frames: int | None = None,
        full_scale: int | None = None,
        claimed: bool = False,
    ) -> None:
        import zarr

        self.path = Path(path)
        claimed_ok = claimed and self.path.is_dir() and not any(self.path.iterdir())
        if self.path.is_symlink() or (self.path.exists() and not claimed_ok):
            raise DataError(f"{self.path}: output already exists; choose another --out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.chunk = int(chunk_frames)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.dtype = np.dtype(dtype)
        dmax = int(np.iinfo(self.dtype).max) if self.dtype.kind in "ui" else None
        self.full_scale = full_scale if full_scale is not None else dmax
        self.frames_saturated = 0
        self.frames_late = 0
        self.ticks_hz = float((attrs or {}).get("timestamp_frequency_hz") or 0.0)
        self._win_min: dict[int, float] = {}
        self.frame_interval_s = float(frame_interval_s)
        self.raw_pixel_m = float(raw_pixel_m)
        self.phase_pixel_m = phase_pixel_m
        meta_chunk = self.chunk * max(1, 1024 // self.chunk)
        cap = int(math.ceil((expected_frames or self.chunk * 16) / self.chunk) * self.chunk)
        self._grow = max(self.chunk * 16, cap // 4)
        self._meta_chunk = meta_chunk
        self._cap0 = cap

        self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        dmicro = {
            "schema": SCHEMA,
            "created": time.time(),
            "complete": False,
            "integrity": INTEGRITY,
        }
        dmicro.update(attrs or {})
        dmicro["recon_status_codes"] = {str(k): v for k, v in RECON_STATUS_NAMES.items()}
        self.group.attrs.update({"ome": ome.collection_attrs(), "dmicro": dmicro})
        g = self.group
        bits = int(dmicro.get("bits_per_pixel") or 8 * self.dtype.itemsize)
        full = float(2**bits - 1) if self.dtype.kind in "ui" else 1.0
        raw = create_image(
            g,
            "raw",
            shape=self.frame_shape,
            dtype=self.dtype,
            chunk=self.chunk,
            cap=cap,
            fill=0,
            pixel_m=raw_pixel_m,
            frame_interval_s=frame_interval_s,
            window=(0.0, full, 0.0, full),
            unit="ADU",
            long_name="raw compressed camera frames",
        )
        self._phase_max = float((dmicro.get("recon") or {}).get("phase_max_rad") or math.pi)
        self._ranges = {"raw": _Range(), "phase": _Range()}
        arrays: dict[str, Any] = {"raw": raw}
        for name, (dt, fill, desc) in RAW_RECORDS.items():
            arrays[name] = g.create_array(
                name,
                shape=(cap,),
                chunks=(meta_chunk,),
                dtype=dt,
                fill_value=fill,
                compressors=_zstd(),
                config=WRITE_CONFIG,
                dimension_names=["t"],
                attributes={"description": desc, "units": RECORD_UNITS[name]},
            )
        counter = _counter(g, "committed")
        self._raw = _Side(arrays, counter, self.chunk, self._grow)
        self._phase: _Side | None = None
        self._last_frame_id: int | None = None
        self.frames_lost = 0
        self.frame_id_resets = 0
        if phase_size is not None:
            self.add_phase(phase_size, phase_pixel_m or raw_pixel_m)

    # ------------------------------------------------------------------ phase side
    def add_phase(self, n: int, pixel_m: float) -> None:
        """Create the ``phase`` (t, n, n) and ``recon_status`` arrays."""
        self._phase = _create_phase_side(
            self.group,
            n,
            pixel_m,
            self.chunk,
            self._meta_chunk,
            self._cap0,
            self._grow,
            self.frame_interval_s,
            self._phase_max,
        )

    # ------------------------------------------------------------------ raw side
    def append(self, data: np.ndarray, records: dict[str, np.ndarray]) -> int:
        """Buffer ``data`` (n, H, W) with its records (frame_id, device_time, host_time,
        exposure_s, pattern_index); commit whole chunks. Returns frames committed now."""
        n = int(data.shape[0])
        if n == 0:
            return 0
        if data.shape[1:] != self.frame_shape:
            raise DataError(f"frame shape {data.shape[1:]} differs from {self.frame_shape}")
        fid = np.asarray(records["frame_id"], dtype=np.int64)
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = fid[:-1]
        prev[0] = fid[0] - 1 if self._last_frame_id is None else self._last_frame_id
        gap = fid - prev - 1
        self.frame_id_resets += int((gap < 0).sum())
        dropped = np.clip(gap, 0, None).astype(np.int32)
        self.frames_lost += int(dropped.sum())
        self._last_frame_id = int(fid[-1])
        values_dt = np.asarray(records["device_time"], dtype=np.int64)
        values_ht = np.asarray(records["host_time"], dtype=np.float64)
        values = {
            "raw": np.ascontiguousarray(data, dtype=self.dtype),
            "frame_id": fid,
            "device_time": np.asarray(records["device_time"], dtype=np.int64),
            "host_time": np.asarray(records["host_time"], dtype=np.float64),
            "exposure_s": np.asarray(records["exposure_s"], dtype=np.float64),
            "pattern_index": np.asarray(records["pattern_index"], dtype=np.int32),
            "dropped_before": dropped,
            "saturated_px": self._saturated(data),
            "delivery_delay_s": self._delays(values_dt, values_ht),
        }
        self._ranges["raw"].add(values["raw"])
        self._raw.add(values, n)
        return self._raw.commit()

    def _delays(self, device_ticks: np.ndarray, host_time: np.ndarray) -> np.ndarray:
        """Per-frame delivery delay, s: (host − device) offset above the smallest offset seen in
        this and the previous ``DELAY_WINDOW_S`` of device time (so clock drift does not add
        up); NaN without device timestamps. Counts frames later than ``LATE_DELIVERY_S``."""
        if self.ticks_hz <= 0 or not len(device_ticks) or not device_ticks.any():
            return np.full(len(device_ticks), np.nan, dtype=np.float32)
        dev_s = device_ticks / self.ticks_hz
        offset = host_time - dev_s
        win = np.floor(dev_s / DELAY_WINDOW_S).astype(np.int64)
        for w in np.unique(win):
            m = float(offset[win == w].min())
            self._win_min[int(w)] = min(self._win_min.get(int(w), m), m)
        for w in [k for k in self._win_min if k < int(win.max()) - 1]:
            del self._win_min[w]  # keep the current and the previous window only
        base = np.array(
            [min(self._win_min[int(w)], self._win_min.get(int(w) - 1, np.inf)) for w in win]
        )
        delay = np.maximum(offset - base, 0.0).astype(np.float32)
        self.frames_late += int((delay > LATE_DELIVERY_S).sum())
        return delay

    def _saturated(self, data: np.ndarray) -> np.ndarray:
        """Pixels at or above the full scale, per frame (−1 when the scale is unknown)."""
        if self.full_scale is None:
            return np.full(data.shape[0], -1, dtype=np.int32)
        sat = (data >= self.full_scale).sum(axis=(1, 2)).astype(np.int32)
        self.frames_saturated += int((sat > 0).sum())
        return sat

    def flush(self, max_age_s: float | None = None) -> int:
        """Commit pending raw frames now (a partial chunk), or only if older than ``max_age_s``."""
        if max_age_s is not None and self._raw.age_s() < max_age_s:
            return 0
        return self._raw.commit(force=True)

    @property
    def committed(self) -> int:
        return self._raw.committed

    @property
    def pending(self) -> int:
        return self._raw.n_pending

    @property
    def write_seconds(self) -> float:
        return self._raw.write_s

    # ------------------------------------------------------------------ phase appends
    def append_phase(
        self, phase: np.ndarray | None, status: np.ndarray, consistency: np.ndarray | None = None
    ) -> int:
        """Append the next ``len(status)`` frames of phase (n, N, N) radians in t order, with
        their χ²/dof ``consistency`` (n,) when checked.

        ``phase`` may be None (all skipped/errors: NaN stored). Commits whole chunks.
        """
        side = self._require_phase()
        n = int(len(status))
        if phase is None:
            size = side.arrays["phase"].shape[1]
            phase = np.full((n, size, size), np.nan, dtype=np.float32)
        self._ranges["phase"].add(phase)
        side.add(
            {
                "phase": phase.astype(np.float32, copy=False),
                "recon_status": status.astype(np.uint8),
                "consistency": _consistency(consistency, n),
            },
            n,
        )
        return side.commit()

    def flush_phase(self) -> int:
        return self._require_phase().commit(force=True) if self._phase else 0

    @property
    def phase_committed(self) -> int:
        return self._phase.committed if self._phase else 0

    def _require_phase(self) -> _Side:
        if self._phase is None:
            raise DataError(f"{self.path}: this run has no phase array (no checkpoint loaded)")
        return self._phase

    # ------------------------------------------------------------------ finish
    def set_attrs(self, **values: Any) -> None:
        """Merge ``values`` into the root ``dmicro`` attributes."""
        d = dict(self.group.attrs.get("dmicro", {}))
        d.update(values)
        self.group.attrs.update({"dmicro": d})

    def finalize(self, summary: dict[str, Any] | None = None) -> None:
        """Commit everything, trim arrays to the committed length, mark the run complete."""
        self._raw.commit(force=True)
        self._raw.trim()
        if self._phase is not None:
            self._phase.commit(force=True)
            self._phase.trim()
            # phase frames past the raw end cannot exist; never more than committed
        for name, r in self._ranges.items():
            set_image_window(self.group, name, r.lo, r.hi)
        self.set_attrs(
            complete=True,
            committed_frames=self.committed,
            frames_lost=self.frames_lost,
            frame_id_resets=self.frame_id_resets,
            frames_saturated=self.frames_saturated,
            frames_late=self.frames_late,
            **({"summary": summary} if summary else {}),
        )


def _counter(g: Any, name: str) -> Any:
    """A (1,) int64 commit counter, checksummed, set to 0."""
    counter = g.create_array(
        name,
        shape=(1,),
        chunks=(1,),
        dtype="int64",
        fill_value=0,
        compressors=with_checksum(),
        config=WRITE_CONFIG,
    )
    counter[0] = 0
    return counter


def _create_phase_side(
    g: Any,
    n: int,
    pixel_m: float,
    chunk: int,
    meta_chunk: int,
    cap: int,
    grow: int,
    frame_interval_s: float,
    phase_max_rad: float,
) -> _Side:
    phase = create_image(
        g,
        "phase",
        shape=(n, n),
        dtype="float32",
        chunk=chunk,
        cap=cap,
        fill=float("nan"),
        pixel_m=pixel_m,
        frame_interval_s=frame_interval_s,
        window=(0.0, phase_max_rad, 0.0, phase_max_rad),
        unit="rad",
        long_name="reconstructed phase",
    )
    status = g.create_array(
        "recon_status",
        shape=(cap,),
        chunks=(meta_chunk,),
        dtype="uint8",
        fill_value=0,
        compressors=_zstd(),
        config=WRITE_CONFIG,
        dimension_names=["t"],
        attributes={"codes": {str(k): v for k, v in RECON_STATUS_NAMES.items()}},
    )
    consistency = _create_consistency(g, cap, meta_chunk)
    counter = _counter(g, "phase_committed")
    return _Side(
        {"phase": phase, "recon_status": status, "consistency": consistency},
        counter,
        chunk,
        grow,
    )


def _create_consistency(g: Any, cap: int, meta_chunk: int) -> Any:
    return g.create_array(
        "consistency",
        shape=(cap,),
        chunks=(meta_chunk,),
        dtype="float32",
        fill_value=float("nan"),
        compressors=_zstd(),
        config=WRITE_CONFIG,
        dimension_names=["t"],
        attributes={
            "units": "1",
            "description": "chi-square per degree of freedom of the frame re-simulated from its "
            "phase under the calibrated noise model (about 1: consistent; NaN: not checked)",
        },
    )


def _consistency(values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan, dtype=np.float32)
    return np.asarray(values, dtype=np.float32).reshape(n)


class PhaseWriter:
    """Write phase into an existing run (offline ``dmicro reconstruct``), chunk-aligned blocks."""

    def __init__(
        self, reader: RunReader, size: int, pixel_m: float, phase_max_rad: float | None = None
    ) -> None:
        g = reader.group
        self.reader = reader
        chunk = reader.chunk_frames
        n = reader.committed
        meta_chunk = chunk * max(1, 1024 // chunk)
        stored = reader.phase_array
        if stored is not None and stored.shape[1] != size:
            raise DataError(
                f"{reader.path}: stored phase is {stored.shape[1]}² but the decoder makes "
                f"{size}² (another checkpoint?)"
            )
        if stored is None:
            fi = float(reader.attrs.get("frame_interval_s", 0.01))
            pmax = float(phase_max_rad or math.pi)
            self.side = _create_phase_side(
                g, size, pixel_m, chunk, meta_chunk, max(n, 1), chunk, fi, pmax
            )
        else:
            if "consistency" not in g:  # a run stored before consistency was recorded
                _create_consistency(g, max(n, 1), meta_chunk)
            self.side = _Side(
                {
                    "phase": writable(stored),
                    "recon_status": writable(g["recon_status"]),
                    "consistency": writable(g["consistency"]),
                },
                writable(g["phase_committed"]),
                chunk,
                chunk * 16,
            )
        for a in self.side.arrays.values():
            if a.shape[0] < n:
                a.resize((n, *a.shape[1:]))

    def write(
        self,
        t0: int,
        phase: np.ndarray,
        status: np.ndarray,
        consistency: np.ndarray | None = None,
    ) -> None:
        """Write frames t0 … t0+len-1 in place (no counter change)."""
        s = slice(t0, t0 + len(status))
        self.side.arrays["phase"][s] = phase.astype(np.float32, copy=False)
        self.side.arrays["recon_status"][s] = status.astype(np.uint8)
        self.side.arrays["consistency"][s] = _consistency(consistency, len(status))

    def set_committed(self, n: int) -> None:
        self.side.counter[0] = int(n)

    def set_window(self, start: float, end: float) -> None:
        """Displayed contrast range of the phase image (omero window), radians."""
        set_image_window(self.reader.group, "phase", start, end)
