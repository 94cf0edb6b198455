"""``dmicro bench decoders``: one trained decoder run by every runtime, side by side.

For each checkpoint: phase maps of an evaluation set → the checkpoint's own encoder (sensor noise
on, fixed seed) → frames; then per runtime (:mod:`dmicro_hw.models.runtime`, plus ``eager-nchw``:
the decoder as it ran before channels_last, the baseline):

* accuracy: PSNR (dB, normalised phase, clamped to [0, 1] as the worker does) of its output
  against the true phase, its change vs eager float32, max |Δ| vs eager;
* speed: batch latency over ``rounds`` interleaved rounds (every runtime once per round, so load
  changes hit all of them alike): p50/p99 ms per batch, fps = batch / p50, best fps = batch / min;
* build: seconds to build or load it, and whether it came from the cache.

Runtimes that cannot run here (no GPU, library missing) are rows with the reason, not errors.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmicro_hw.models.runtime import (
    DecoderRuntime,
    RuntimeUnavailable,
    Standardised,
    build_runtime,
)

log = logging.getLogger(__name__)


@dataclass
class DecoderRow:
    """One (checkpoint, runtime) result; ``None`` fields were not measured (skipped)."""

    checkpoint: str
    arch: str
    runtime: str
    status: str = "ok"
    batch: int = 0
    fps: float | None = None
    best_fps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    psnr_db: float | None = None
    dpsnr_db: float | None = None
    max_abs_err: float | None = None
    build_s: float | None = None
    cached: bool | None = None
    speedup_vs_nchw: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def describe_arch(tcfg: Any) -> str:
    """'unet b24 d3 head×4' style summary of a checkpoint's decoder."""
    d = tcfg.decoder
    if d.kind == "unet":
        head = "full-res head" if d.head_shuffle == 1 else f"sub-pixel head ×{d.head_shuffle}"
        return f"unet b{d.base_channels} d{d.depth} {head}"
    return f"swinir e{d.embed_dim} {d.num_groups}×{d.blocks_per_group}"


def _nchw(module: torch.nn.Module) -> DecoderRuntime:
    mod = copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return mod(x)

    return DecoderRuntime("eager-nchw", fn)


def eval_frames(
    checkpoint: Path | str, data: Any, n: int, seed: int
) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """(model, train config, frames (n, h, w) in the decoder's input units, normalised truth
    (n, N, N)) of ``data`` (a data config; None: the checkpoint's own test split)."""
    from dmicro_hw.evaluation.checkpoint_eval import eval_dataset
    from dmicro_hw.training.checkpoint import build_model_from_checkpoint

    model, tcfg = build_model_from_checkpoint(checkpoint, device="cpu")
    model.eval()
    pmax = float(model.phase_max_rad)
    data = tcfg.data if data is None else data
    if getattr(data, "phase_max_rad", pmax) != pmax and getattr(data, "kind", "") != "folder":
        data = data.model_copy(update={"phase_max_rad": pmax})
    ds = eval_dataset(data, tcfg.optics.field_size, n)
    truth = torch.stack([torch.as_tensor(ds[i]) for i in range(min(n, len(ds)))]).float()
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        frames = torch.cat([model.encode(c, generator=gen) for c in truth.split(16)])
    return model, tcfg, frames.float(), model.normalised_target(truth)


def _psnr(pred: torch.Tensor, truth: torch.Tensor) -> float:
    from dmicro_hw.training.metrics import psnr

    return float(psnr(pred.clamp(0, 1), truth, reduction="mean", dtype=torch.float32))


def _outputs(rt: DecoderRuntime, frames: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([rt(c).to("cpu", torch.float32) for c in frames.split(batch)])


def _sync(name: str) -> None:
    if name.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class _Prepared:
    rows: dict[str, DecoderRow]
    built: dict[str, DecoderRuntime]
    xb: torch.Tensor  # the timing batch


def _prepare(
    checkpoint: Path | str,
    runtimes: Sequence[str],
    *,
    batch: int,
    frames: int,
    data: Any,
    seed: int,
    cache_dir: Path | str | None,
    threads: int | None,
) -> _Prepared:
    """Build every runtime of one checkpoint and score its accuracy (no timing yet)."""
    model, tcfg, x, truth = eval_frames(checkpoint, data, frames, seed)
    net = Standardised(model.decoder, model.frame_mean, model.frame_std).eval()
    arch = describe_arch(tcfg)
    ck = str(checkpoint)
    built: dict[str, DecoderRuntime] = {"eager-nchw": _nchw(net)}
    rows: dict[str, DecoderRow] = {"eager-nchw": DecoderRow(ck, arch, "eager-nchw", batch=batch)}
    calib = x[: min(len(x), 32)]
    for name in runtimes:
        if name in rows:
            continue
        row = rows[name] = DecoderRow(ck, arch, name, batch=batch)
        try:
            rt = build_runtime(
                name,
                net,
                x.shape[1:],
                cache_dir=cache_dir,
                threads=threads,
                max_batch=batch,
                calibration=calib,
            )
        except RuntimeUnavailable as e:
            row.status = f"skipped: {e}"
            continue
        built[name] = rt
        row.build_s, row.cached = round(rt.build_s, 3), rt.cached
    ref = _outputs(built["eager-nchw"], x, batch)
    ref_psnr = _psnr(ref, truth)
    for name, rt in built.items():
        out = _outputs(rt, x, batch)
        p = _psnr(out, truth)
        rows[name].psnr_db = round(p, 4)
        rows[name].dpsnr_db = round(p - ref_psnr, 4)
        rows[name].max_abs_err = float((out - ref).abs().max())
    # timing batch: real frames (repeated if fewer than the batch)
    xb = x.repeat((batch + len(x) - 1) // len(x), 1, 1)[:batch].contiguous()
    return _Prepared(rows, built, xb)


def bench_decoders(
    checkpoints: Sequence[Path | str],
    runtimes: Sequence[str],
    *,
    batch: int = 16,
    rounds: int = 10,
    frames: int = 64,
    data: Any = None,
    seed: int = 20240,
    cache_dir: Path | str | None = None,
    threads: int | None = None,
) -> list[DecoderRow]:
    """Rows per checkpoint: ``eager-nchw`` (the baseline) then each of ``runtimes``.

    Timing runs after every runtime of every checkpoint is built: ``rounds`` rounds, each
    timing one batch of every (checkpoint, runtime) in turn, so ratios between checkpoints
    (architectures) and runtimes come from the same minutes of machine load.
    """
    preps = [
        _prepare(
            ck,
            runtimes,
            batch=batch,
            frames=frames,
            data=data,
            seed=seed,
            cache_dir=cache_dir,
            threads=threads,
        )
        for ck in checkpoints
    ]
    lat: list[dict[str, list[float]]] = [{n: [] for n in p.built} for p in preps]
    for p in preps:  # warm-up (lazy initialisation, caches)
        for name, rt in p.built.items():
            rt(p.xb)
            _sync(name)
    for _ in range(rounds):
        for p, lp in zip(preps, lat):
            for name, rt in p.built.items():
                t0 = time.perf_counter()
                rt(p.xb)
                _sync(name)
                lp[name].append((time.perf_counter() - t0) * 1e3)
    rows: list[DecoderRow] = []
    for p, lp in zip(preps, lat):
        base = None
        for name in p.built:
            v = np.asarray(lp[name])
            r = p.rows[name]
            r.p50_ms = round(float(np.median(v)), 3)
            r.p99_ms = round(float(np.quantile(v, 0.99)), 3)
            r.fps = round(batch / (r.p50_ms / 1e3), 1)
            r.best_fps = round(batch / (float(v.min()) / 1e3), 1)
            if name == "eager-nchw":
                base = r.fps
            r.speedup_vs_nchw = round(r.fps / base, 2) if base else None
        rows += list(p.rows.values())
    return rows
