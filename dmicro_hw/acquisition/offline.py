"""Offline decoding of a stored run (``dmicro reconstruct``; ``dmicro view`` is in
:mod:`dmicro_hw.acquisition.view`).

Decoding uses the same :class:`~dmicro_hw.acquisition.reconstruct.Reconstructor` as the live
worker, configured from what the run recorded (rig config, checkpoint path and hash, camera
gain/offset, pixel format). It walks the committed frames chunk by chunk (Zarr chunks along t), or
hands the chunks to Dask (``use_dask``, with ``force``; extra ``[dask]``), writes phase and
``recon_status`` and advances ``phase_committed`` — so it can be interrupted and re-run, and it
only decodes frames that are not yet ``ok`` unless ``force``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.integrity import frame_ranges
from dmicro_hw.acquisition.reconstruct import decode_status
from dmicro_hw.acquisition.writer import (
    RECON_DAMAGED,
    RECON_ERROR,
    RECON_OK,
    PhaseWriter,
    RunReader,
)
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


def reconstruct_store(
    store: Path | str,
    recon: Any = None,
    *,
    checkpoint: Path | str | None = None,
    device: str = "auto",
    batch: int = 32,
    force: bool = False,
    use_dask: bool = False,
    progress: Callable[[int, int], None] | None = None,
    consistency: bool = True,
    refine: Any = None,
    consistency_threshold: float | None = None,
) -> dict[str, Any]:
    """Decode the committed frames of ``store`` that are not yet ``ok`` (all if ``force``).

    With ``consistency`` every decoded frame's χ²/dof is stored; ``refine``
    (:class:`~dmicro_hw.acquisition.reconstruct.RefineOptions`) refines the phase through the
    run's measurement model first. Returns counts: frames decoded, already ok, chunks, the
    decoder info and the consistency summary.
    """
    import time

    from dmicro_hw.acquisition.consistency import consistency_summary

    reader = RunReader(store, mode="r+")
    if recon is None:
        recon = reconstructor_for_run(reader, checkpoint, device, batch, consistency, refine)
    else:
        recon.check_frame_shape(reader.frame_shape)
    n = reader.committed
    trusted = reader.phase_committed
    pw = PhaseWriter(reader, recon.field_size, recon.pixel_size_m, recon.phase_max_rad)
    status_arr = pw.side.arrays["recon_status"]
    phase_arr = pw.side.arrays["phase"]
    chi2_arr = pw.side.arrays["consistency"]
    chunk = reader.chunk_frames
    t0 = time.perf_counter()
    decoded = already = errors = kept = 0
    n_chunks = math.ceil(n / chunk) if n else 0
    bad_records = reader.record_damage()
    damaged: dict[int, str] = {}
    if use_dask:
        if not force:
            raise ConfigError("use_dask decodes every frame again: it needs force=True (--force)")
        require("dask.array", "--dask")
        if bad_records or reader.damage()["frames"]:
            log.warning("%s: damaged frames: decoding chunk by chunk, not with Dask", reader.path)
            use_dask = False
    if use_dask:
        decoded = _dask_decode(reader, recon, phase_arr, chi2_arr, n)
        status_arr[:n] = np.full(n, RECON_OK, np.uint8)
        pw.set_committed(n)
    else:
        for c in range(n_chunks):
            s, e = c * chunk, min(n, (c + 1) * chunk)
            status, phase, chi2 = _stored_chunk(status_arr, phase_arr, chi2_arr, s, e)
            # past the old phase_committed nothing is trusted (a crash may have left a status
            # written without its phase, or the reverse)
            status[max(0, trusted - s) :] = 0
            raw, why = reader.raw_chunk(c)
            bad = np.zeros(e - s, dtype=bool)
            if raw is None:
                bad[:] = True
                damaged.update({f: f"raw chunk {c}: {why}" for f in range(s, e)})
            for f in range(s, e):
                if f in bad_records:
                    bad[f - s] = True
                    damaged.setdefault(f, bad_records[f])
            todo_mask = ~bad if force else (status != RECON_OK) & ~bad
            todo = np.nonzero(todo_mask)[0]
            already += int(((status == RECON_OK) & ~bad).sum()) if not force else 0
            # a phase decoded while the raw data was still intact stays (nothing lost); the
            # other damaged frames are never decoded from fill values or altered bytes
            keep = bad & (status == RECON_OK)
            mark = bad & ~keep
            kept += int(keep.sum())
            changed = len(todo) > 0 or bool((mark & (status != RECON_DAMAGED)).any())
            if len(todo):
                out, out_chi2 = recon.decode(raw[todo])
                st = decode_status(out)  # non-finite output: error, phase NaN
                phase[todo] = out
                status[todo] = st
                ok = st == RECON_OK
                chi2[todo] = np.nan if out_chi2 is None else np.where(ok, out_chi2, np.nan)
                decoded += int(ok.sum())
                errors += int((st == RECON_ERROR).sum())
            if mark.any():
                phase[mark] = np.nan
                status[mark] = RECON_DAMAGED
                chi2[mark] = np.nan
            if changed:
                pw.write(s, phase, status, chi2)
            pw.set_committed(e)
            if progress is not None:
                progress(e, n)
    dt = time.perf_counter() - t0
    if consistency_threshold is None:
        rig_acq = (reader.attrs.get("rig") or {}).get("acquisition") or {}
        consistency_threshold = float(rig_acq.get("consistency_threshold", 4.0))
    chi2 = RunReader(store).consistency()
    d = dict(reader.group.attrs.get("dmicro", {}))
    d.setdefault("recon", recon.info())
    d["recon_offline"] = {
        **recon.info(),
        "checkpoint": str(getattr(recon, "checkpoint_path", "")),
        "decoded": decoded,
    }
    reader.group.attrs.update({"dmicro": d})
    return {
        "store": str(reader.path),
        "frames": n,
        "decoded": decoded,
        "already_ok": already,
        "decode_errors": errors,
        "damaged": len(damaged),
        "damaged_kept_phase": kept,
        "damaged_frames": frame_ranges(list(damaged)),
        "damage_example": damaged[min(damaged)] if damaged else None,
        "chunks": n_chunks,
        "seconds": round(dt, 3),
        "fps": round(decoded / dt, 1) if dt > 0 and decoded else None,
        "decoder": recon.info(),
        "dask": bool(use_dask),
        "consistency": consistency_summary(chi2, consistency_threshold)
        if getattr(recon, "measurement", None) is not None
        else None,
        "ms_per_frame": round(1e3 * dt / decoded, 3) if decoded else None,
    }


def _stored_chunk(
    status_arr: Any, phase_arr: Any, chi2_arr: Any, s: int, e: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored status, phase and χ²/dof of frames [s, e); a damaged chunk reads as not decoded."""
    try:
        status = np.asarray(status_arr[s:e]).copy()
        phase = np.asarray(phase_arr[s:e]).copy()
        chi2 = np.asarray(chi2_arr[s:e]).astype(np.float32)
    except Exception:  # noqa: BLE001 - damaged phase/status chunk: decode these frames again
        status = phase = chi2 = np.zeros(0)
    if status.shape != (e - s,) or phase.shape[0] != e - s or chi2.shape != (e - s,):
        size = phase_arr.shape[1]
        status = np.zeros(e - s, dtype=np.uint8)
        phase = np.full((e - s, size, size), np.nan, dtype=np.float32)
        chi2 = np.full(e - s, np.nan, dtype=np.float32)
    return status, phase, chi2


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
