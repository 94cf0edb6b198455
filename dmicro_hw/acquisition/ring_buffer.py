"""Bounded ring of preallocated frames between the camera thread and its consumers.

One producer (the camera thread) copies each :class:`~dmicro_hw.drivers.base.Frame` into a
preallocated slot and publishes it under a sequence number ``seq`` (0, 1, 2, …). Consumers read
frames in order through their own cursor:

* a **lossless** consumer (the Zarr writer) holds its slots until it has read them; when the ring
  is full the producer *waits* for it (backpressure towards the camera), up to ``put`` 's timeout,
  after which the frame is dropped and counted (``ring_dropped``) — never silently overwritten;
* a **lossy** consumer (the reconstruction worker) never holds the producer back: when it falls a
  whole ring behind, the oldest frames it has not read are *skipped* for it (counted per consumer,
  visible to it as a jump in ``seq``) while the lossless consumer still gets every frame.

Because every published frame reaches the lossless writer in order, ``seq`` is also the frame's
index along ``t`` in the stored run. Consumers copy frames out under the lock (a memcpy of a few
small compressed frames), so a slot is never read while it is being overwritten.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from dmicro_hw.drivers.base import Frame
from dmicro_hw.errors import FrameShapeError

#: Per-frame record fields kept beside every slot (name → dtype).
RECORD_FIELDS: dict[str, str] = {
    "frame_id": "int64",
    "device_time": "int64",
    "host_time": "float64",
    "exposure_s": "float64",
    "pattern_index": "int32",
    "recv_time": "float64",  # time.perf_counter() when the frame entered the ring
}


@dataclass
class Batch:
    """Frames ``seq0 … seq0+n-1`` copied out of the ring (``data`` is (n, H, W))."""

    seq0: int
    data: np.ndarray
    records: dict[str, np.ndarray]
    skipped_before: int = 0  # lossy consumers: frames skipped just before seq0

    @property
    def n(self) -> int:
        return int(self.data.shape[0])


@dataclass
class _Cursor:
    name: str
    lossy: bool
    next_seq: int = 0
    skipped: int = 0  # since the consumer's last read
    skipped_total: int = 0
    max_depth: int = 0


@dataclass
class RingStats:
    """Counters of a :class:`FrameRing` (a snapshot)."""

    capacity: int
    published: int
    ring_dropped: int
    put_wait_s: float
    depth: dict[str, int] = field(default_factory=dict)
    max_depth: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


class FrameRing:
    """Preallocated (capacity, H, W) ring with per-consumer cursors; thread-safe.

    Args:
        capacity: number of frame slots (``acquisition.ring_frames``).
        shape: (H, W) of every frame; a frame of another shape raises FrameShapeError.
        dtype: dtype of the slots (uint8 for Mono8, uint16 for deeper formats).
    """

    def __init__(self, capacity: int, shape: tuple[int, int], dtype: np.dtype | str) -> None:
        if capacity < 2:
            raise ValueError("ring capacity must be at least 2 frames")
        self.capacity = int(capacity)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.data = np.zeros((self.capacity, *self.shape), dtype=self.dtype)
        self.records = {k: np.zeros(self.capacity, dtype=v) for k, v in RECORD_FIELDS.items()}
        self._head = 0  # next seq to publish
        self._cond = threading.Condition()
        self._cursors: dict[str, _Cursor] = {}
        self._closed = False
        self.ring_dropped = 0
        self.put_wait_s = 0.0

    # ------------------------------------------------------------------ consumers
    def add_consumer(self, name: str, lossy: bool = False) -> str:
        """Register a consumer reading from the current head; returns its name."""
        with self._cond:
            if name in self._cursors:
                raise ValueError(f"consumer {name!r} already registered")
            self._cursors[name] = _Cursor(name, lossy, next_seq=self._head)
        return name

    def _min_lossless(self) -> int:
        tails = [c.next_seq for c in self._cursors.values() if not c.lossy]
        return min(tails) if tails else self._head

    # ------------------------------------------------------------------ producer
    def put(self, frame: Frame, pattern_index: int = 0, timeout: float | None = 1.0) -> bool:
        """Copy ``frame`` into the next slot and publish it.

        Waits while the ring is full for a lossless consumer (at most ``timeout`` seconds, None =
        forever). Returns False, and counts a ring drop, if the slot did not free up in time.
        """
        data = frame.data
        if data.shape != self.shape:
            raise FrameShapeError(
                f"frame {frame.frame_id}: shape {tuple(data.shape)} differs from the stream's "
                f"{self.shape} (camera ROI/binning changed?)"
            )
        with self._cond:
            if self._closed:
                raise RuntimeError("put() on a closed ring")
            seq = self._head
            if seq - self._min_lossless() >= self.capacity:
                t0 = time.perf_counter()
                ok = self._cond.wait_for(
                    lambda: seq - self._min_lossless() < self.capacity, timeout=timeout
                )
                self.put_wait_s += time.perf_counter() - t0
                if not ok:
                    self.ring_dropped += 1
                    return False
            # lossy consumers that are a full ring behind lose their oldest frame(s)
            oldest_kept = seq - self.capacity + 1
            for c in self._cursors.values():
                if c.lossy and c.next_seq < oldest_kept:
                    c.skipped += oldest_kept - c.next_seq
                    c.skipped_total += oldest_kept - c.next_seq
                    c.next_seq = oldest_kept
        # The slot is ours until published: no consumer reads seq >= head, and every lossless
        # consumer is past seq - capacity; lossy readers copy under the lock and were moved on.
        slot = seq % self.capacity
        np.copyto(self.data[slot], data, casting="unsafe")
        r = self.records
        r["frame_id"][slot] = frame.frame_id
        r["device_time"][slot] = frame.device_timestamp
        r["host_time"][slot] = frame.host_time
        r["exposure_s"][slot] = frame.exposure_s
        r["pattern_index"][slot] = pattern_index
        r["recv_time"][slot] = time.perf_counter()
        with self._cond:
            self._head = seq + 1
            for c in self._cursors.values():
                c.max_depth = max(c.max_depth, self._head - c.next_seq)
            self._cond.notify_all()
        return True

    def close(self) -> None:
        """No more frames: consumers drain what is left, then ``get`` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ consumer reads
    def get(
        self, consumer: str, max_n: int, timeout: float | None = 0.1, min_n: int = 1
    ) -> Batch | None:
        """Copy up to ``max_n`` frames for ``consumer`` out of the ring and release them.

        Waits up to ``timeout`` for at least ``min_n`` frames (fewer are returned once the ring
        is closed or on timeout, if any). Returns None if nothing is available: check
        :meth:`finished` to tell "drained and closed" from "nothing yet".
        """
        with self._cond:
            cur = self._cursors[consumer]
            self._cond.wait_for(
                lambda: self._head - cur.next_seq >= min_n or self._closed, timeout=timeout
            )
            avail = self._head - cur.next_seq
            if avail <= 0:
                return None
            n = min(avail, max_n)
            seq0 = cur.next_seq
            skipped_before = 0
            if cur.lossy:
                skipped_before = cur.skipped
                cur.skipped = 0
            idx = (np.arange(seq0, seq0 + n) % self.capacity).astype(np.intp)
            first = seq0 % self.capacity
            if first + n <= self.capacity:  # contiguous: slice copy (fast path)
                data = self.data[first : first + n].copy()
                recs = {k: v[first : first + n].copy() for k, v in self.records.items()}
            else:
                data = self.data[idx]
                recs = {k: v[idx] for k, v in self.records.items()}
            cur.next_seq = seq0 + n
            self._cond.notify_all()
        return Batch(seq0=seq0, data=data, records=recs, skipped_before=skipped_before)

    def finished(self, consumer: str) -> bool:
        """True once the ring is closed and ``consumer`` has read everything."""
        with self._cond:
            return self._closed and self._cursors[consumer].next_seq >= self._head

    def take_skipped(self, consumer: str) -> int:
        """Frames skipped for a lossy consumer since its last read (and reset the count)."""
        with self._cond:
            cur = self._cursors[consumer]
            n, cur.skipped = cur.skipped, 0
            return n

    def depth(self, consumer: str) -> int:
        with self._cond:
            return self._head - self._cursors[consumer].next_seq

    @property
    def published(self) -> int:
        return self._head

    def stats(self) -> RingStats:
        with self._cond:
            return RingStats(
                capacity=self.capacity,
                published=self._head,
                ring_dropped=self.ring_dropped,
                put_wait_s=self.put_wait_s,
                depth={n: self._head - c.next_seq for n, c in self._cursors.items()},
                max_depth={n: c.max_depth for n, c in self._cursors.items()},
                skipped={n: c.skipped_total for n, c in self._cursors.items()},
            )
