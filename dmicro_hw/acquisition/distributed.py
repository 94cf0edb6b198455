"""Offline reconstruction over Dask distributed (``dmicro reconstruct RUN --scheduler …``).

The run's Zarr chunks are planned into groups of whole chunks that each hold ≥ ``batch`` frames
still to decode (the same plan as the threaded path,
:func:`~dmicro_hw.acquisition.offline.plan_chunks`). One task per group: the worker loads the
checkpoint once (cached per worker process), reads the group's raw chunks through
:meth:`RunReader.raw_chunk` (checksums verified; a damaged chunk is left to the in-process path,
which marks it), decodes the group in batches, writes its phase
chunks straight into the store (phase is chunked along t like the raw frames, so workers never
touch the same Zarr chunk) and returns the χ²/dof and status of its frames. The client writes
those (their arrays have coarser chunks) and advances ``phase_committed`` over the leading groups
that are finished, so an interrupted run resumes: chunks already ``ok`` are skipped.

Schedulers: ``local`` / ``local:N`` start a :class:`distributed.LocalCluster` of N worker
processes with one thread each (default: CPU count); ``tcp://host:port`` connects to a running
scheduler, whose workers must see the run at the same path (shared storage) and have dmicro-hw
installed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.offline import (
    ChunkTask,
    finish_summary,
    group_windows,
    plan_chunks,
    reconstructor_for_run,
)
from dmicro_hw.acquisition.store import RECON_OK, RunReader
from dmicro_hw.acquisition.writer import PhaseWriter
from dmicro_hw.errors import ConfigError, DataError
from dmicro_hw.extras import require

log = logging.getLogger(__name__)

_RECONS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def parse_scheduler(spec: str) -> tuple[str, Any]:
    """``local`` / ``local:N`` → ("local", N or None); ``tcp://…`` (any ``scheme://``) →
    ("address", spec). Anything else is a :class:`ConfigError` naming the option."""
    s = spec.strip()
    if s == "local":
        return "local", None
    if s.startswith("local:"):
        try:
            n = int(s[6:])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--scheduler {spec!r}: local:N needs a worker count N ≥ 1")
        return "local", n
    if "://" in s:
        return "address", s
    raise ConfigError(
        f"--scheduler {spec!r}: expected local, local:N or a scheduler address (tcp://host:port)"
    )


def _worker_reconstructor(key: tuple) -> Any:
    """The Reconstructor of this worker process for ``key`` (built once, then reused)."""
    with _LOCK:
        rec = _RECONS.get(key)
        if rec is None:
            store, checkpoint, device, batch, consistency, refine = key
            ref = None
            if refine is not None:
                from dmicro_hw.acquisition.reconstruct import RefineOptions

                ref = RefineOptions(*refine)
            reader = RunReader(store)
            rec = reconstructor_for_run(reader, checkpoint, device, batch, consistency, ref)
            _RECONS[key] = rec
        return rec


def decode_group(key: tuple, chunks: list[tuple[int, int, int, list[int]]]) -> dict:
    """Worker task: for each chunk ``(index, start, stop, todo)`` of a group, read its raw frames
    (checksums verified), decode the frames ``todo`` in batches, write the chunk's phase into
    the store. Returns per decoded chunk its todo indices, recon_status (error where the output
    is not finite) and χ²/dof (None without a measurement model); the damaged chunks (left
    untouched, with the reason); the seconds spent decoding."""
    import torch

    from dmicro_hw.acquisition.reconstruct import decode_status

    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
    except (ImportError, ValueError, AttributeError):
        pass
    rec = _worker_reconstructor(key)
    reader = RunReader(key[0], mode="r+")
    frames, good, damaged = [], [], []
    for c, s, e, todo in chunks:
        raw, why = reader.raw_chunk(c)
        if raw is None:
            damaged.append((c, s, e, str(why)))
            continue
        frames.append(raw[np.asarray(todo, np.int64)])
        good.append((s, e, todo))
    out: list[tuple] = []
    decode_s = 0.0
    if frames:
        t = time.perf_counter()
        phase, chi2 = rec.decode(np.concatenate(frames))
        decode_s = time.perf_counter() - t
        arr = reader.phase_array
        k = 0
        for s, e, todo in good:
            m = len(todo)
            ph_new = phase[k : k + m]
            st = decode_status(ph_new)  # NaN phase where the output is not finite
            if m < e - s:  # partial chunk: keep the frames already decoded
                ph = np.asarray(arr[s:e]).astype(np.float32, copy=True)
                ph[np.asarray(todo, np.int64)] = ph_new
            else:
                ph = ph_new
            arr[s:e] = ph.astype(np.float32, copy=False)
            out.append((s, e, todo, st, None if chi2 is None else chi2[k : k + m]))
            k += m
    return {
        "chunks": out,
        "damaged": damaged,
        "decode_s": decode_s,
        "frames": int(sum(len(t) for _, _, t in good)),
        "pid": os.getpid(),
    }


def _client(scheduler: str) -> tuple[Any, Any]:
    """A distributed Client (and the LocalCluster it owns, or None)."""
    require("distributed", "--scheduler")
    from distributed import Client, LocalCluster

    kind, arg = parse_scheduler(scheduler)
    if kind == "local":
        n = arg or os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster
    try:
        return Client(arg, timeout="15s"), None
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--scheduler {arg}: cannot reach the Dask scheduler ({exc})") from None


def reconstruct_distributed(
    reader: RunReader,
    scheduler: str,
    *,
    checkpoint: Path | str | None = None,
    device: str = "cpu",
    batch: int = 32,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    consistency: bool = True,
    refine: Any = None,
    consistency_threshold: float | None = None,
) -> dict[str, Any]:
    """Decode the run of ``reader`` (opened r+) over Dask distributed; same result dict as
    :func:`~dmicro_hw.acquisition.offline.reconstruct_store` plus the worker count."""
    import dask
    from distributed import as_completed

    kind, _ = parse_scheduler(scheduler)
    device = "cpu" if device == "auto" else device
    if reader.record_damage():
        from dmicro_hw.acquisition.offline import reconstruct_store

        log.warning("%s: damaged frame records: decoding in this process", reader.path)
        return reconstruct_store(
            reader.path,
            checkpoint=checkpoint,
            device=device,
            batch=batch,
            force=force,
            progress=progress,
            consistency=consistency,
            refine=refine,
            consistency_threshold=consistency_threshold,
        )
    # the client builds the decoder once too: it checks checkpoint, frame shape and
    # measurement model before any worker starts, and sizes the phase arrays
    recon = reconstructor_for_run(reader, checkpoint, device, batch, consistency, refine)
    n = reader.committed
    pw = PhaseWriter(reader, recon.field_size, recon.pixel_size_m, recon.phase_max_rad)
    status_arr = pw.side.arrays["recon_status"]
    chi2_arr = pw.side.arrays["consistency"]
    tasks = plan_chunks(reader, n, force, pw)
    windows = group_windows(tasks, max(1, int(batch)))
    already = sum((t.stop - t.start) - len(t.todo) for t in tasks)
    ref = None if refine is None else (int(refine.iterations), float(refine.prior_weight))
    ck = str(Path(getattr(recon, "checkpoint_path", checkpoint)).resolve())
    key = (str(Path(reader.path).resolve()), ck, device, int(batch), bool(consistency), ref)
    t_start = time.perf_counter()
    decoded, decode_s, pids = 0, 0.0, set()
    client, cluster = _client(scheduler)
    t0 = time.perf_counter()  # fps counts from a running cluster; its start-up is reported apart
    damaged: list[tuple] = []
    errors = 0
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        todo = [i for i, w in enumerate(windows) if any(len(t.todo) for t in w)]
        jobs = [
            dask.delayed(decode_group)(
                key,
                [(t.index, t.start, t.stop, t.todo.tolist()) for t in windows[i] if len(t.todo)],
            )
            for i in todo
        ]
        futures = client.compute(jobs)
        index = {f.key: i for f, i in zip(futures, todo)}
        done = [not any(len(t.todo) for t in w) for w in windows]
        by_start: dict[int, ChunkTask] = {t.start: t for t in tasks}
        head = 0
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker's error, named with its frames
                w = windows[index[fut.key]]
                raise DataError(
                    f"{reader.path}: a Dask worker failed on frames {w[0].start}–"
                    f"{w[-1].stop - 1}: {type(exc).__name__}: {exc}"
                ) from None
            for s, e, td, st, chi2 in res["chunks"]:
                t = by_start[s]
                t.status[td] = st
                ok = st == RECON_OK
                t.chi2[td] = np.nan if chi2 is None else np.where(ok, chi2, np.nan)
                chi2_arr[s:e] = t.chi2
                status_arr[s:e] = t.status
                decoded += int(ok.sum())
                errors += int((~ok).sum())
            decode_s += res["decode_s"]
            pids.add(res["pid"])
            damaged += res["damaged"]
            # a group with a damaged chunk stays unfinished: phase_committed stops before it
            done[index[fut.key]] = not res["damaged"]
            while head < len(windows) and done[head]:
                head += 1
            if head:
                pw.set_committed(windows[head - 1][-1].stop)
            if progress is not None:
                progress(windows[head - 1][-1].stop if head else 0, n)
        if windows and all(done):
            pw.set_committed(n)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    dt = time.perf_counter() - t0
    rest = None
    if damaged:
        # damaged raw chunks are marked (never decoded) by the in-process path, which also
        # finishes the frames after them that phase_committed does not cover yet
        from dmicro_hw.acquisition.offline import reconstruct_store

        log.warning(
            "%s: %d damaged raw chunk(s) (first: %s); marking them in this process",
            reader.path,
            len(damaged),
            damaged[0][3],
        )
        rest = reconstruct_store(
            reader.path,
            recon,
            batch=batch,
            progress=progress,
            consistency_threshold=consistency_threshold,
        )
        decoded += rest["decoded"]
        errors += rest["decode_errors"]
    summary = finish_summary(reader, recon.info(), recon, consistency_threshold, decoded)
    return {
        "store": str(reader.path),
        "frames": n,
        "decoded": decoded,
        "already_ok": already,
        "decode_errors": errors,
        "damaged": rest["damaged"] if rest else 0,
        "damaged_kept_phase": rest["damaged_kept_phase"] if rest else 0,
        "damaged_frames": rest["damaged_frames"] if rest else "",
        "damage_example": rest["damage_example"] if rest else None,
        "chunks": len(tasks),
        "seconds": round(dt, 3),
        "cluster_start_s": round(t0 - t_start, 3),
        "fps": round(decoded / dt, 1) if dt > 0 and decoded else None,
        "decoder_fps": round(decoded / decode_s, 1) if decode_s > 0 and decoded else None,
        "fps_vs_decoder": round(decode_s / dt, 3) if dt > 0 and decoded else None,
        "batch": int(batch),
        "decoder": recon.info(),
        "dask": True,
        "scheduler": scheduler if kind == "address" else f"local:{workers}",
        "workers": workers,
        "worker_processes_used": len(pids),
        "consistency": summary,
        "ms_per_frame": round(1e3 * dt / decoded, 3) if decoded else None,
    }
