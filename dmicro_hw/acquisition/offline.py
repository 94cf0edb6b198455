"""Offline decoding of a stored run (``dmicro reconstruct``; ``dmicro view`` is in
:mod:`dmicro_hw.acquisition.view`).

Decoding uses the same :class:`~dmicro_hw.acquisition.reconstruct.Reconstructor` as the live
worker, configured from what the run recorded (rig config, checkpoint path and hash, camera
gain/offset, pixel format). It walks the committed frames chunk by chunk (Zarr chunks along t), or
hands the chunks to Dask (``use_dask``, with ``force``; extra ``[dask]``; ``scheduler`` for Dask
distributed, :mod:`dmicro_hw.acquisition.distributed`), writes phase and ``recon_status`` and
advances ``phase_committed`` — so it can be interrupted and re-run, and it only decodes frames
that are not yet ``ok`` unless ``force``. Frames are batched across chunks at ``batch``; reads
run ahead and writes behind in threads. Damaged raw chunks or records are never decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.integrity import frame_ranges
from dmicro_hw.acquisition.reconstruct import decode_status
from dmicro_hw.acquisition.store import RECON_DAMAGED, RECON_ERROR, RECON_OK, RunReader
from dmicro_hw.acquisition.writer import PhaseWriter
from dmicro_hw.config import AcquisitionConfig
from dmicro_hw.errors import CheckpointError, ConfigError, DataError
from dmicro_hw.extras import require

log = logging.getLogger(__name__)


def reconstructor_for_run(
    reader: RunReader,
    checkpoint: Path | str | None = None,
    device: str = "auto",
    batch: int = 32,
    consistency: bool = True,
    refine: Any = None,
) -> Any:
    """A Reconstructor configured from a run's recorded rig, assets and pixel format; with
    ``consistency`` (or ``refine``: :class:`RefineOptions`) it also checks every frame against
    the run's measurement model (the recorded pattern and calibration)."""
    from dmicro_hw.acquisition.reconstruct import Reconstructor
    from dmicro_hw.config import RigConfig, validate
    from dmicro_hw.export import sha256_file

    attrs = reader.attrs
    if "rig" not in attrs:
        raise DataError(f"{reader.path}: the run does not record its rig config")
    rig = validate(RigConfig, attrs["rig"], f"{reader.path} (recorded rig)")
    ck = Path(checkpoint) if checkpoint else None
    if ck is None:
        rec = attrs.get("checkpoint_path") or (str(rig.checkpoint) if rig.checkpoint else None)
        if not rec:
            raise CheckpointError(
                f"{reader.path}: the run names no checkpoint; pass --checkpoint PATH"
            )
        ck = Path(rec)
    if not ck.is_file():
        raise CheckpointError(f"{ck}: checkpoint not found (pass --checkpoint PATH)")
    want = attrs.get("checkpoint_sha256")
    if want and checkpoint is None and sha256_file(ck) != want:
        raise CheckpointError(
            f"{ck}: changed since the run was recorded (SHA-256 differs); pass --checkpoint "
            "explicitly to decode with it anyway"
        )
    rec = Reconstructor.from_checkpoint(
        ck,
        rig,
        camera_gain=float(attrs.get("camera_gain", 1.0) or 1.0),
        camera_offset_adu=float(attrs.get("camera_offset_adu", 0.0) or 0.0),
        device=device,
        max_batch=batch,
    )
    bits = attrs.get("bits_per_pixel")
    adc = attrs.get("adc_bits") or rig.sensor.bit_depth
    if bits:
        rec.set_pixel_scale(2.0 ** (int(bits) - int(adc)))
    rec.check_frame_shape(reader.frame_shape)
    rec.checkpoint_path = ck
    if consistency or (refine is not None and refine.iterations > 0):
        rec.set_measurement(_run_measurement(reader, rig, rec.model), refine)
    return rec


def _run_measurement(reader: RunReader, rig: Any, model: Any) -> Any:
    """The measurement model of a stored run: its recorded pattern (hash checked) and
    calibration, else the checkpoint's encoder."""
    from dmicro_hw.acquisition.consistency import measurement_for_rig
    from dmicro_hw.export import load_pattern

    attrs = reader.attrs
    grey = None
    want = attrs.get("pattern_sha256")
    if rig.pattern is not None and want:
        pattern = load_pattern(rig.pattern, rig)
        if pattern.sha256 != want:
            raise DataError(
                f"{rig.pattern}: not the pattern this run displayed (SHA-256 differs); "
                "cannot re-simulate its frames (use --no-consistency)"
            )
        grey = pattern.grey
    cal = attrs.get("calibration_path") or (str(rig.calibration) if rig.calibration else None)
    if grey is not None and attrs.get("calibration_sha256") and cal is None:
        raise DataError(f"{reader.path}: the run's calibration bundle is not recorded")
    return measurement_for_rig(rig, model, pattern_grey=grey, calibration=cal)


@dataclass
class ChunkTask:
    """One Zarr chunk of the run (index ``index``): frames ``start`` … ``stop``-1; ``todo`` =
    indices (within the chunk) to decode by the stored status, ``status`` its recon_status
    (untrusted entries reset to 0), ``chi2`` its stored χ²/dof, ``stored_damaged`` when the
    stored status/phase could not be read (decoded again, phase starts as NaN)."""

    index: int
    start: int
    stop: int
    todo: np.ndarray
    status: np.ndarray
    chi2: np.ndarray
    stored_damaged: bool = False
    # filled by the read stage
    bad: np.ndarray | None = None
    prior: np.ndarray | None = None
    already: int = 0
    damaged: dict[int, str] = field(default_factory=dict)


def _stored_status(
    status_arr: Any, chi2_arr: Any, s: int, e: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Stored status and χ²/dof of frames [s, e); a damaged chunk reads as not decoded."""
    try:
        status = np.asarray(status_arr[s:e]).copy()
        chi2 = np.asarray(chi2_arr[s:e]).astype(np.float32)
    except Exception:  # noqa: BLE001 - damaged status/χ² chunk: decode these frames again
        status = chi2 = np.zeros(0)
    if status.shape != (e - s,) or chi2.shape != (e - s,):
        return np.zeros(e - s, np.uint8), np.full(e - s, np.nan, np.float32), True
    return status, chi2, False


def _stored_phase(phase_arr: Any, s: int, e: int) -> np.ndarray:
    """Stored phase of frames [s, e), NaN where it cannot be read."""
    try:
        phase = np.asarray(phase_arr[s:e]).astype(np.float32, copy=True)
    except Exception:  # noqa: BLE001 - damaged phase chunk: these frames are decoded again
        phase = np.zeros(0)
    if phase.shape[:1] != (e - s,):
        size = phase_arr.shape[1]
        phase = np.full((e - s, size, size), np.nan, dtype=np.float32)
    return phase


def plan_chunks(reader: RunReader, n: int, force: bool, pw: PhaseWriter) -> list[ChunkTask]:
    """The chunks of the first ``n`` committed frames and what each still needs by the stored
    status. Past the old ``phase_committed`` nothing is trusted: a crash may have left a status
    written without its phase, or the reverse."""
    chunk = reader.chunk_frames
    trusted = min(reader.phase_committed, n)
    status_arr = pw.side.arrays["recon_status"]
    chi2_arr = pw.side.arrays["consistency"]
    tasks = []
    for c, s in enumerate(range(0, n, chunk)):
        e = min(n, s + chunk)
        if s < trusted:
            status, chi2, damaged = _stored_status(status_arr, chi2_arr, s, e)
        else:
            status, chi2, damaged = np.zeros(e - s, np.uint8), np.full(e - s, np.nan, "f4"), False
        status[max(0, trusted - s) :] = 0
        todo = np.arange(e - s) if force else np.nonzero(status != RECON_OK)[0]
        tasks.append(ChunkTask(c, s, e, todo, status, chi2, damaged))
    return tasks


def group_windows(tasks: list[ChunkTask], batch: int) -> list[list[ChunkTask]]:
    """Consecutive chunks grouped until each group holds ≥ ``batch`` frames to decode (the last
    may hold fewer): the decoder then sees full batches across chunk boundaries."""
    windows: list[list[ChunkTask]] = []
    cur: list[ChunkTask] = []
    k = 0
    for t in tasks:
        cur.append(t)
        k += len(t.todo)
        if k >= batch:
            windows.append(cur)
            cur, k = [], 0
    if cur:
        windows.append(cur)
    return windows


def run_pipelined(
    items: list[Any],
    read: Callable[[Any], Any],
    compute: Callable[[Any, Any], Any],
    write: Callable[[Any, Any], None],
    depth: int = 2,
) -> None:
    """``write(item, compute(item, read(item)))`` for every item in order, with reads running
    ``depth`` items ahead and writes behind, each in its own thread; the first error of any
    stage is raised here."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with (
        ThreadPoolExecutor(1, thread_name_prefix="dmicro-read") as rd,
        ThreadPoolExecutor(1, thread_name_prefix="dmicro-write") as wr,
    ):
        reads = deque(rd.submit(read, it) for it in items[:depth])
        writes: deque = deque()
        for i, it in enumerate(items):
            data = reads.popleft().result()
            if i + depth < len(items):
                reads.append(rd.submit(read, items[i + depth]))
            writes.append(wr.submit(write, it, compute(it, data)))
            while len(writes) > depth:
                writes.popleft().result()
        for w in writes:
            w.result()


def reconstruct_store(
    store: Path | str,
    recon: Any = None,
    *,
    checkpoint: Path | str | None = None,
    device: str = "auto",
    batch: int = 32,
    force: bool = False,
    use_dask: bool = False,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    consistency: bool = True,
    refine: Any = None,
    consistency_threshold: float | None = None,
) -> dict[str, Any]:
    """Decode the committed frames of ``store`` that are not yet ``ok`` (all if ``force``).

    Frames are decoded in batches of ``batch`` across Zarr chunks, reads running ahead and
    writes behind in threads; ``phase_committed`` advances after each group of chunks, so an
    interrupted run resumes where it stopped. ``scheduler`` (``local[:N]`` or ``tcp://…``)
    decodes over Dask distributed instead (:mod:`dmicro_hw.acquisition.distributed`).
    Frames whose raw chunk or records are damaged are never decoded (status ``damaged``; a phase
    decoded before the damage is kept). With ``consistency`` every decoded frame's χ²/dof is
    stored; ``refine`` (:class:`~dmicro_hw.acquisition.reconstruct.RefineOptions`) refines the
    phase through the run's measurement model first. Returns counts (decoded, already ok,
    errors, damaged, chunks), seconds, fps, the decoder's own fps on the same frames (time
    inside ``decode``) and their ratio, the decoder info and the consistency summary.
    """
    import time

    reader = RunReader(store, mode="r+")
    if scheduler is not None:
        from dmicro_hw.acquisition.distributed import reconstruct_distributed

        return reconstruct_distributed(
            reader,
            scheduler,
            checkpoint=checkpoint,
            device=device,
            batch=batch,
            force=force,
            progress=progress,
            consistency=consistency,
            refine=refine,
            consistency_threshold=consistency_threshold,
        )
    if recon is None:
        recon = reconstructor_for_run(reader, checkpoint, device, batch, consistency, refine)
    else:
        recon.check_frame_shape(reader.frame_shape)
    n = reader.committed
    pw = PhaseWriter(reader, recon.field_size, recon.pixel_size_m, recon.phase_max_rad)
    status_arr = pw.side.arrays["recon_status"]
    phase_arr = pw.side.arrays["phase"]
    chi2_arr = pw.side.arrays["consistency"]
    t0 = time.perf_counter()
    counts = {"decoded": 0, "already": 0, "errors": 0, "kept": 0}
    decode_s = 0.0
    bad_records = reader.record_damage()
    damaged: dict[int, str] = {}
    tasks = plan_chunks(reader, n, force, pw)
    if use_dask:
        if not force:
            raise ConfigError("use_dask decodes every frame again: it needs force=True (--force)")
        require("dask.array", "--dask")
        if bad_records or reader.damage()["frames"]:
            log.warning("%s: damaged frames: decoding chunk by chunk, not with Dask", reader.path)
            use_dask = False
    if use_dask:
        counts["decoded"] = _dask_decode(reader, recon, phase_arr, chi2_arr, n)
        status_arr[:n] = np.full(n, RECON_OK, np.uint8)
        pw.set_committed(n)
        decode_s = time.perf_counter() - t0
    else:

        def read(window: list[ChunkTask]) -> np.ndarray:
            frames = []
            for t in window:
                s, e = t.start, t.stop
                raw, why = reader.raw_chunk(t.index)
                bad = np.zeros(e - s, dtype=bool)
                if raw is None:
                    bad[:] = True
                    t.damaged = {f: f"raw chunk {t.index}: {why}" for f in range(s, e)}
                for f in range(s, e):
                    if f in bad_records:
                        bad[f - s] = True
                        t.damaged.setdefault(f, bad_records[f])
                t.bad = bad
                mask = np.zeros(e - s, dtype=bool)
                mask[t.todo] = True
                t.todo = np.nonzero(mask & ~bad)[0]
                t.already = 0 if force else int(((t.status == RECON_OK) & ~bad).sum())
                mark = bad & (t.status != RECON_OK)
                if len(t.todo) < e - s or mark.any() or t.stored_damaged:
                    t.prior = (
                        np.full((e - s, *phase_arr.shape[1:]), np.nan, np.float32)
                        if t.stored_damaged or s >= reader.phase_committed
                        else _stored_phase(phase_arr, s, e)
                    )
                if len(t.todo):
                    frames.append(raw[t.todo])
            if not frames:
                return np.zeros((0, *reader.frame_shape), dtype=reader.raw.dtype)
            return np.concatenate(frames)

        def compute(window: list[ChunkTask], raw: np.ndarray) -> tuple:
            nonlocal decode_s
            if not len(raw):
                return None, None
            t = time.perf_counter()
            out = recon.decode(raw)
            decode_s += time.perf_counter() - t
            return out

        def write(window: list[ChunkTask], result: tuple) -> None:
            phase, chi2 = result
            k = 0
            for t in window:
                m = len(t.todo)
                keep = t.bad & (t.status == RECON_OK)
                mark = t.bad & ~keep
                counts["already"] += t.already
                counts["kept"] += int(keep.sum())
                damaged.update(t.damaged)
                changed = m > 0 or bool((mark & (t.status != RECON_DAMAGED)).any())
                ph = t.prior
                if m:
                    out = phase[k : k + m]
                    st = decode_status(out)  # non-finite output: error, phase NaN
                    ok = st == RECON_OK
                    if ph is None:
                        ph = out
                    else:
                        ph[t.todo] = out
                    t.status[t.todo] = st
                    c = chi2[k : k + m] if chi2 is not None else None
                    t.chi2[t.todo] = np.nan if c is None else np.where(ok, c, np.nan)
                    counts["decoded"] += int(ok.sum())
                    counts["errors"] += int((st == RECON_ERROR).sum())
                    k += m
                if mark.any():
                    ph[mark] = np.nan
                    t.status[mark] = RECON_DAMAGED
                    t.chi2[mark] = np.nan
                if changed:
                    pw.write(t.start, ph, t.status, t.chi2)
                t.prior = None  # memory stays flat: nothing kept once written
            pw.set_committed(window[-1].stop)
            if progress is not None:
                progress(window[-1].stop, n)

        run_pipelined(group_windows(tasks, max(1, int(batch))), read, compute, write)
    dt = time.perf_counter() - t0
    decoded = counts["decoded"]
    summary = finish_summary(reader, recon.info(), recon, consistency_threshold, decoded)
    return {
        "store": str(reader.path),
        "frames": n,
        "decoded": decoded,
        "already_ok": counts["already"],
        "decode_errors": counts["errors"],
        "damaged": len(damaged),
        "damaged_kept_phase": counts["kept"],
        "damaged_frames": frame_ranges(list(damaged)),
        "damage_example": damaged[min(damaged)] if damaged else None,
        "chunks": len(tasks),
        "seconds": round(dt, 3),
        "fps": round(decoded / dt, 1) if dt > 0 and decoded else None,
        "decoder_fps": round(decoded / decode_s, 1) if decode_s > 0 and decoded else None,
        "fps_vs_decoder": round(decode_s / dt, 3) if dt > 0 and decoded else None,
        "batch": int(batch),
        "decoder": recon.info(),
        "dask": bool(use_dask),
        "scheduler": None,
        "consistency": summary,
        "ms_per_frame": round(1e3 * dt / decoded, 3) if decoded else None,
    }


def finish_summary(
    reader: RunReader,
    info: dict[str, Any],
    recon: Any,
    consistency_threshold: float | None,
    decoded: int,
) -> dict[str, Any] | None:
    """Record the offline decoder in the run's attributes; the consistency summary (None
    without a measurement model)."""
    from dmicro_hw.acquisition.consistency import consistency_summary

    if consistency_threshold is None:
        rig_acq = (reader.attrs.get("rig") or {}).get("acquisition") or {}
        default = AcquisitionConfig.model_fields["consistency_threshold"].default
        consistency_threshold = float(rig_acq.get("consistency_threshold", default))
    chi2 = RunReader(reader.path).consistency()
    d = dict(reader.group.attrs.get("dmicro", {}))
    d.setdefault("recon", info)
    d["recon_offline"] = {
        **info,
        "checkpoint": str(getattr(recon, "checkpoint_path", "")),
        "decoded": decoded,
    }
    reader.group.attrs.update({"dmicro": d})
    if getattr(recon, "measurement", None) is None:
        return None
    return consistency_summary(chi2, consistency_threshold)


def _dask_decode(reader: RunReader, recon: Any, phase_arr: Any, chi2_arr: Any, n: int) -> int:
    """Decode all ``n`` frames with Dask: one task per Zarr chunk, written chunk-aligned; the
    χ²/dof of each frame (NaN when no measurement model is set) is written after."""
    import dask
    import dask.array as da

    raw = da.from_zarr(reader.raw)[:n]
    size = recon.field_size
    chi2 = np.full(n, np.nan, dtype=np.float32)

    def block(x: np.ndarray, block_info: Any = None) -> np.ndarray:
        out, c = recon.decode(np.asarray(x))
        if c is not None and block_info is not None:
            lo = int(block_info[0]["array-location"][0][0])
            chi2[lo : lo + len(c)] = c
        return out

    out = raw.map_blocks(block, dtype=np.float32, chunks=(raw.chunks[0], (size,), (size,)))
    # threads share the one model; the decoder itself is already parallel
    with dask.config.set(scheduler="threads", num_workers=1):
        da.store(out, phase_arr, regions=(slice(0, n),), lock=False)
    chi2_arr[:n] = chi2
    return n
