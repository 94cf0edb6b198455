"""The run store: its layout, the per-frame records and status codes, and :class:`RunReader`.

Layout of ``RUN.zarr`` (one local Zarr v3 hierarchy, an OME-Zarr 0.5 collection — see
:mod:`dmicro_hw.acquisition.ome`; every OME reader opens each image whole)::

    zarr.json      ome: {version 0.5, bioformats2raw.layout 3}; dmicro: run metadata
    OME/           ome.series = ["raw", "phase"]: the index of the image groups
    raw/0          (t, y, x)  uint8/uint16 ADU, chunks (chunk_frames, y, x), Blosc-zstd bitshuffle
    phase/0        (t, N, N)  float32 radians, NaN where not decoded, chunks (chunk_frames, N, N)
                   (raw/ and phase/ are image groups: multiscales with t [s], y, x [µm] scales
                   in the object plane, and omero channel name + contrast limits)
    frame_id       (t,) int64    device frame counter (gaps = frames lost before this one)
    device_time    (t,) int64    device timestamp ticks (attribute timestamp_frequency_hz)
    host_time      (t,) float64  host clock at receipt, Unix seconds
    exposure_s     (t,) float64
    pattern_index  (t,) int32    index into attrs["dmicro"]["patterns"] (id + sha256 of each)
    dropped_before (t,) int32    frames missing just before this one (camera gap or ring overflow)
    saturated_px   (t,) int32    pixels at the ADC's full scale in this frame
    delivery_delay_s (t,) float32 delivery later than the best case of the surrounding 10 s
    recon_status   (t,) uint8    0 not reconstructed, 1 ok, 2 skipped (backpressure), 3 error,
                                 4 damaged raw data (not decoded)
    consistency    (t,) float32  χ²/dof of the frame re-simulated from its phase (NaN: not checked)
    committed      (1,) int64    frames of raw + records fully written  ← readers trust this
    phase_committed(1,) int64    leading frames whose phase/recon_status are final

Runs written before the collection layout (``raw`` and ``phase`` arrays at the root) are still
read: :func:`image_array` finds either.

The counters are the truth: :class:`~dmicro_hw.acquisition.writer.RunWriter` writes the data
and the records of a commit first and its counter last, so :class:`RunReader` only exposes
``[:committed]`` (and phase ``[:phase_committed]``), also after a crash.

Integrity (:mod:`~dmicro_hw.acquisition.integrity`): every chunk of every array carries a CRC32C
checksum that zarr checks on read, and all-fill chunks are written too, so a missing chunk inside
the committed range is damage. :class:`RunReader` refuses a store whose counters or ``frame_id``
cannot be trusted and reports damaged frames; it never hands out fill values as frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition import ome
from dmicro_hw.acquisition.integrity import INTEGRITY, frame_ranges, read_checked, read_chunk
from dmicro_hw.errors import DataError

SCHEMA = "dmicro-run/1"
RECON_NONE, RECON_OK, RECON_SKIPPED, RECON_ERROR, RECON_DAMAGED = 0, 1, 2, 3, 4
RECON_STATUS_NAMES = {
    RECON_NONE: "not reconstructed",
    RECON_OK: "ok",
    RECON_SKIPPED: "skipped (decoder behind)",
    RECON_ERROR: "error (decoder failed or non-finite output)",
    RECON_DAMAGED: "damaged raw data (not decoded)",
}

#: raw-side per-frame arrays (name → (dtype, fill value, description))
RAW_RECORDS: dict[str, tuple[str, Any, str]] = {
    "frame_id": ("int64", -1, "device frame counter"),
    "device_time": ("int64", 0, "device timestamp, ticks (see timestamp_frequency_hz)"),
    "host_time": ("float64", float("nan"), "host clock at receipt, Unix seconds"),
    "exposure_s": ("float64", float("nan"), "exposure time, seconds"),
    "pattern_index": ("int32", -1, "index into attributes dmicro.patterns"),
    "dropped_before": ("int32", 0, "frames lost just before this frame"),
    "saturated_px": ("int32", -1, "pixels at the ADC full scale (-1 = not counted)"),
    "delivery_delay_s": (
        "float32",
        float("nan"),
        "host receipt minus the device timestamp, above the smallest such offset of the "
        "surrounding 10 s (NaN without device timestamps)",
    ),
}
#: arrays a run store must have besides the raw image; without them no frame can be trusted
REQUIRED_ARRAYS = ("committed", "frame_id")

#: unit of each per-frame record (stored as the array attribute ``units``)
RECORD_UNITS: dict[str, str] = {
    "frame_id": "count",
    "device_time": "tick",
    "host_time": "s (Unix time)",
    "exposure_s": "s",
    "pattern_index": "index",
    "dropped_before": "count",
    "saturated_px": "count",
    "delivery_delay_s": "s",
}

#: the nearest pymmcore-plus ``FrameMetaV1`` key of each record (None: no counterpart there),
#: with the conversion — for users moving data between the two
FRAME_META_V1: dict[str, str | None] = {
    "frame_id": None,  # camera_metadata (vendor keys, e.g. ImageNumber) when the camera sets it
    "device_time": None,  # camera_metadata (vendor keys)
    "host_time": "runner_time_ms",  # ms since the MDA start there; Unix s here
    "exposure_s": "exposure_ms",  # × 1000
    "pattern_index": None,
    "dropped_before": None,
    "saturated_px": None,
    "delivery_delay_s": None,
}


def image_array(group: Any, name: str) -> Any:
    """Level-0 array of image ``name`` in a run group: ``name/0`` (collection layout), or the
    array ``name`` itself (runs written before it, plain Zarr stacks); None when absent."""
    import zarr

    if name not in group:
        return None
    node = group[name]
    if isinstance(node, zarr.Array):
        return node
    return node[ome.LEVEL0] if ome.LEVEL0 in node else None


def image_names(group: Any) -> list[str]:
    """The image groups of a run, in the order of the collection index (``OME/``)."""
    if ome.INDEX_GROUP in group:
        series = dict(group[ome.INDEX_GROUP].attrs).get("ome", {}).get("series")
        if isinstance(series, list):
            return [str(s) for s in series if str(s) in group]
    return [n for n in ("raw", "phase") if image_array(group, n) is not None]


class RunReader:
    """Read a run store; only committed frames are exposed (safe after a crash).

    Refused (:class:`~dmicro_hw.errors.DataError`, one line naming the store): no ``zarr.json``,
    unreadable metadata, a missing raw image, ``committed`` or ``frame_id`` array, an unreadable
    or negative commit counter. ``problems`` lists lesser inconsistencies (a counter past the end
    of ``raw``, which is then clipped). Damaged chunks: :meth:`raw_frames` and :meth:`records`
    raise naming the frames; :meth:`raw_chunk` and :meth:`record_damage` report them so that
    callers can skip and mark those frames; :meth:`damage` scans the whole store.
    """

    def __init__(self, path: Path | str, mode: str = "r") -> None:
        import zarr

        self.path = Path(path)
        if (self.path / "run.zarr").is_dir():
            self.path = self.path / "run.zarr"
        if not (self.path / "zarr.json").is_file():
            raise DataError(f"{path}: not a run store (no zarr.json)")
        self.problems: list[str] = []
        self._arrays: dict[str, Any] = {}
        self._record_damage: dict[int, str] | None = None
        try:
            self.group = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
            keys = set(self.group.keys())
            self._raw = image_array(self.group, "raw")
        except Exception as e:  # noqa: BLE001 - corrupt store → one-line user error
            raise DataError(f"{path}: damaged run store: cannot open it ({_short(e)})") from None
        if self._raw is None or "committed" not in keys:
            raise DataError(f"{path}: not a dmicro run store (no raw/committed arrays)")
        missing = [k for k in REQUIRED_ARRAYS if k not in keys]
        if missing:
            raise DataError(f"{self.path}: damaged run store: array {missing[0]!r} is missing")
        self.checksummed = self.attrs.get("integrity") == INTEGRITY
        if self._raw.ndim != 3:
            raise DataError(
                f"{self.path}: damaged run store: raw is not (t, y, x): {self._raw.shape}"
            )
        self.committed = self._counter("committed", int(self._raw.shape[0]))

    def _counter(self, name: str, limit: int) -> int:
        a = self.array(name)
        data, why = read_chunk(self.path, a, 0, 1, self.checksummed)
        if data is None or data.shape != (1,):
            raise DataError(f"{self.path}: damaged run store: counter {name!r} {why or 'bad'}")
        v = int(data[0])
        if v < 0:
            raise DataError(
                f"{self.path}: damaged run store: counter {name!r} is {v} (must be ≥ 0)"
            )
        if v > limit:
            self.problems.append(f"{name} = {v} but only {limit} frames are stored; using {limit}")
            v = limit
        return v

    def array(self, name: str) -> Any:
        """Array ``name`` of the store — a per-frame record, a counter, or the level-0 array of
        image ``raw``/``phase`` (DataError naming it when its metadata is damaged)."""
        if name not in self._arrays:
            try:
                a = image_array(self.group, name) if name in ("raw", "phase") else None
                self._arrays[name] = a if a is not None else self.group[name]
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"{self.path}: damaged run store: cannot open array {name!r} ({_short(e)})"
                ) from None
        return self._arrays[name]

    @property
    def attrs(self) -> dict[str, Any]:
        d = self.group.attrs.get("dmicro", {})
        return dict(d) if isinstance(d, dict) else {}

    @property
    def raw(self) -> Any:
        """Level-0 array of the raw image (t, y, x), including uncommitted frames."""
        return self._raw

    @property
    def phase_array(self) -> Any:
        """Level-0 array of the phase image (t, N, N) radians, or None."""
        try:
            return image_array(self.group, "phase")
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"{self.path}: damaged run store: cannot open the phase image ({_short(e)})"
            ) from None

    def image_names(self) -> list[str]:
        """Images of this run (``raw``, ``phase``, …) in the order of the OME index."""
        return image_names(self.group)

    def pixel_size_um(self, image: str = "raw") -> tuple[float, float, float]:
        """(t s, y µm, x µm) scale of an image, from its OME metadata."""
        node = self.group[image] if image in self.group else None
        meta = dict(node.attrs).get("ome") if node is not None else None
        if not meta:  # a run written before the collection layout: root multiscales
            ms = dict(self.group.attrs).get("ome", {}).get("multiscales", [])
            meta = {"multiscales": [m for m in ms if m.get("name") == image][:1]}
            if not meta["multiscales"]:
                return 1.0, 1.0, 1.0
        return ome.pixel_size_um(meta)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.raw.shape[1:])  # type: ignore[return-value]

    @property
    def chunk_frames(self) -> int:
        return int(self.raw.chunks[0])

    # ------------------------------------------------------------------ checked reads
    def raw_chunk(self, index: int) -> tuple[np.ndarray | None, str | None]:
        """Committed frames of raw chunk ``index``: ``(frames, None)`` or ``(None, reason)``."""
        return read_chunk(self.path, self.raw, index, self.committed, self.checksummed)

    def record_damage(self) -> dict[int, str]:
        """Frame index → reason, for committed frames whose per-frame records are damaged."""
        if self._record_damage is None:
            bad: dict[int, str] = {}
            for k in RAW_RECORDS:
                if k in self.group:
                    _, b = read_checked(self.path, self.array(k), self.committed, self.checksummed)
                    for f, why in b.items():
                        bad.setdefault(f, why)
            self._record_damage = bad
        return self._record_damage

    def _refuse(self, bad: dict[int, str], what: str) -> None:
        if bad:
            first = bad[min(bad)]
            raise DataError(
                f"{self.path}: {what} of frames {frame_ranges(list(bad))} damaged ({first}); "
                "run `dmicro verify` for the full list"
            )

    def raw_frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed raw frames ``[start, stop)``; DataError naming damaged frames."""
        stop = self.committed if stop is None else min(stop, self.committed)
        if stop <= start:
            return np.zeros((0, *self.frame_shape), dtype=self.raw.dtype)
        c = self.chunk_frames
        parts, bad = [], {}
        for i in range(start // c, -(-stop // c)):
            data, why = self.raw_chunk(i)
            if data is None:
                for f in range(max(start, i * c), min(stop, (i + 1) * c)):
                    bad[f] = f"raw chunk {i}: {why}"
                continue
            parts.append(data[max(0, start - i * c) : stop - i * c])
        self._refuse(bad, "raw data")
        return np.concatenate(parts)

    def records(self) -> dict[str, np.ndarray]:
        """Per-frame records of the committed frames; DataError naming damaged frames."""
        self._refuse(self.record_damage(), "per-frame records")
        n = self.committed
        return {k: np.asarray(self.array(k)[:n]) for k in RAW_RECORDS if k in self.group}

    def records_checked(self) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Records with damaged chunks holding fill values, and frame index → reason."""
        out = {}
        for k in RAW_RECORDS:
            if k in self.group:
                out[k], _ = read_checked(self.path, self.array(k), self.committed, self.checksummed)
        return out, self.record_damage()

    def damage(self) -> dict[str, Any]:
        """Scan the whole store (every chunk in the committed ranges).

        Returns ``{"frames": {index: reason}`` (raw or record damage), ``"phase": {index:
        reason}`` (phase/recon_status/consistency damage below ``phase_committed``),
        ``"problems": [...]}``.
        """
        frames = dict(self.record_damage())
        c = self.chunk_frames
        for i in range(-(-self.committed // c)):
            _, why = self.raw_chunk(i)
            if why:
                for f in range(i * c, min(self.committed, (i + 1) * c)):
                    frames[f] = f"raw chunk {i}: {why}"
        phase: dict[int, str] = {}
        if self.has_phase:
            for k in ("phase", "recon_status", "consistency"):
                if k != "phase" and k not in self.group:
                    continue
                _, b = read_checked(
                    self.path, self.array(k), self.phase_committed, self.checksummed
                )
                for f, why in b.items():
                    phase.setdefault(f, why)
        return {"frames": frames, "phase": phase, "problems": list(self.problems)}

    # ------------------------------------------------------------------ phase
    @property
    def has_phase(self) -> bool:
        return self.phase_array is not None and "recon_status" in self.group

    @property
    def phase_committed(self) -> int:
        if "phase_committed" not in self.group:
            return 0
        if not hasattr(self, "_phase_committed"):
            self._phase_committed = self._counter("phase_committed", self.committed)
        return self._phase_committed

    def phase(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        if not self.has_phase:
            raise DataError(f"{self.path}: no phase in this run (run `dmicro reconstruct`)")
        stop = self.phase_committed if stop is None else min(stop, self.phase_committed)
        try:
            return np.asarray(self.phase_array[start:stop])
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"{self.path}: phase of frames {start}-{stop - 1} damaged ({_short(e)}); "
                "run `dmicro reconstruct --force`"
            ) from None

    def recon_status(self) -> np.ndarray:
        n = self.phase_committed
        if "recon_status" not in self.group:
            return np.zeros(0, dtype=np.uint8)
        st, bad = read_checked(self.path, self.array("recon_status"), n, self.checksummed)
        for f in bad:
            st[f] = RECON_NONE  # unreadable status: not trusted as decoded
        return st

    def consistency(self) -> np.ndarray:
        """χ²/dof per phase-committed frame (NaN where not checked; all NaN in older runs)."""
        n = self.phase_committed
        if "consistency" not in self.group:
            return np.full(n, np.nan, dtype=np.float32)
        vals, _ = read_checked(self.path, self.array("consistency"), n, self.checksummed)
        return vals  # a damaged chunk reads as NaN (not checked)


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160]}"
