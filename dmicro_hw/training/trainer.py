"""Seeded, resumable three-stage training (optics → decoder → joint).

Reproducibility: the model is initialised after ``torch.manual_seed(cfg.seed)``; the data order
and the sensor noise of every epoch come from generators seeded by (seed, stage, epoch), so an
epoch does not depend on how the run got there. After every epoch ``last.pt`` is written with the
optimizer and scheduler states, the stage and epoch reached, the global RNG states and the best
score; ``resume=True`` continues from it and gives the same weights as an uninterrupted run.

Outputs in ``out_dir``: ``last.pt`` (resumable), ``best.pt`` (best validation SSIM of a stage that
trains the decoder), ``metrics.jsonl`` (one record per epoch), ``config.json`` (the config).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmicro_hw.config import TrainConfig
from dmicro_hw.errors import CheckpointError, ConfigError
from dmicro_hw.training import metrics as M
from dmicro_hw.training.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from dmicro_hw.training.model import DMicroModel
from dmicro_hw.training.optim import adam_kind, make_adam
from dmicro_hw.training.progress import ProgressHook
from dmicro_hw.training.stages import (
    PlannedStage,
    affine_fit,
    optics_loss,
    plan_stages,
    reconstruction_loss,
    set_trainable,
    upsample_frame,
)

log = logging.getLogger(__name__)

EVAL_NOISE_SEED = 0x5EED  # fixed sensor-noise seed of every evaluation (comparable epochs)
CALIBRATION_BATCHES = 4


def resolve_device(device: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(device)


def lr_schedule(total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """LR factor per step: linear warm-up (a fresh Adam's first steps are full-size for every
    parameter, which knocks a trained decoder off its optimum), then cosine decay to 5 %."""
    warmup = max(1, min(steps_per_epoch, total_steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(step - warmup, total_steps - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (independent streams per stage/epoch/purpose)."""
    mask = (1 << 64) - 1
    ss = np.random.SeedSequence([int(p) & mask for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def phase_batch(batch: Any) -> torch.Tensor:
    """The phase (B, N, N) radians of a data-loader batch (tensor, (phase, …) or {'phase': …})."""
    if isinstance(batch, dict):
        batch = batch["phase"]
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    return batch.to(torch.float32)


# ------------------------------------------------------------------------------------------
# RNG state (only tensors and plain values, for weights_only checkpoints)
# ------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    st = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(st[1].astype(np.int64)),
            "pos": int(st[2]),
            "has_gauss": int(st[3]),
            "cached_gaussian": float(st[4]),
        },
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: DMicroModel,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 16,
    noise_seed: int = EVAL_NOISE_SEED,
    stage: PlannedStage | None = None,
    readout: str = "decoder",
) -> dict[str, float]:
    """Mean PSNR (dB), SSIM (normalised phase), phase RMSE (rad) over ``dataset``, with the
    sensor noise drawn from a fixed seed; with ``stage`` also that stage's loss (``loss``).

    ``readout="decoder"`` scores the decoder's reconstruction; ``readout="linear"`` scores the
    optics alone: the best per-image affine map of the upsampled frame (the optics-stage
    read-out, no decoder involved).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(noise_seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    sums = {"psnr": 0.0, "ssim": 0.0, "rmse_rad": 0.0, "loss": 0.0}
    n = 0
    for batch in loader:
        phase = phase_batch(batch).to(device)
        target = model.normalised_target(phase)
        if readout == "linear":
            frame = model.encode(phase, gen)
            pred = affine_fit(upsample_frame(frame, target.shape[-1]), target)
        else:
            frame, pred = model(phase, generator=gen)
        m = len(phase)
        sums["psnr"] += float(M.psnr(pred, target).sum())
        sums["ssim"] += float(M.ssim(pred, target).sum())
        sums["rmse_rad"] += float(M.rmse_rad(pred, target, model.phase_max_rad).sum())
        if stage is not None:
            loss = _stage_loss(stage, frame, pred, target)
            sums["loss"] += float(loss) * m
        n += m
    model.train(was_training)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    if stage is None:
        out.pop("loss")
    return out


def _stage_loss(stage: PlannedStage, frame, pred, target) -> torch.Tensor:
    if stage.name == "optics":
        return optics_loss(frame, target, stage.cfg.loss)
    return reconstruction_loss(stage.cfg.loss, pred, target)


# ------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    finished: bool = True
    out_dir: Path | None = None


class Trainer:
    """Runs the configured stages on ``datasets`` = (train, val, test).

    Args:
        cfg: the training config (``cfg.out_dir`` is used unless ``out_dir`` is given).
        datasets: (train, val, test) datasets; default ``build_datasets(cfg.data, N)``.
        out_dir: where checkpoints and logs go; ``None`` with ``save=False`` keeps everything
            in memory (benchmarks).
        device: overrides ``cfg.device``.
        progress: a :class:`ProgressHook` (e.g. :class:`RichProgress`).
        save: write checkpoints / metrics.jsonl (default True).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        datasets: tuple[Dataset, Dataset, Dataset] | None = None,
        out_dir: Path | str | None = None,
        device: str | None = None,
        progress: ProgressHook | None = None,
        save: bool = True,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(device or cfg.device)
        self.out_dir = Path(out_dir) if out_dir is not None else Path(cfg.out_dir)
        self.save = save
        self.rank, self.world = 0, 1  # data-parallel rank / size (enable_distributed)
        self.progress = progress or ProgressHook()
        if datasets is None:
            from dmicro_hw.data import build_datasets

            datasets = build_datasets(cfg.data, cfg.optics.field_size)
        self.train_set, self.val_set, self.test_set = datasets
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        self.model = DMicroModel.from_config(cfg).to(self.device)
        self.plan = plan_stages(cfg, self.model.has_optics_params)
        if not self.plan:
            raise ConfigError(
                "stages: nothing to train (every stage has 0 epochs or needs trainable optics)"
            )
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, Any] | None = None
        self.calibrated = False
        # resume position: stage position in self.plan and epochs completed in it
        self._stage_pos = 0
        self._epoch = 0
        self._global_epoch = 0
        self._opt_state: dict[str, Any] | None = None
        self._sched_state: dict[str, Any] | None = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    # -- resume -----------------------------------------------------------------------------
    def resume(self, path: Path | str | None = None) -> None:
        """Load the training state of ``last.pt`` (or ``path``) to continue where it stopped."""
        p = Path(path) if path else self.last_path
        if not p.exists():
            raise CheckpointError(f"{p}: nothing to resume (no checkpoint from an earlier run)")
        ck = load_checkpoint(p)
        saved_cfg = checkpoint_config(ck)
        mine = self.cfg.model_dump(mode="json", exclude={"out_dir", "device"})
        theirs = saved_cfg.model_dump(mode="json", exclude={"out_dir", "device"})
        if mine != theirs:
            diff = sorted(k for k in mine if mine.get(k) != theirs.get(k))
            raise CheckpointError(
                f"{p}: was trained with a different config (sections differ: "
                f"{', '.join(diff)}); resume with the same config or use another --out"
            )
        tr = ck.get("training")
        if not tr:
            raise CheckpointError(f"{p}: has no training state (not a last.pt); cannot resume")
        self.model.encoder.load_state_dict(ck["encoder"])
        self.model.decoder.load_state_dict(ck["decoder"])
        self.model.frame_mean.fill_(ck["frame_norm"]["mean"])
        self.model.frame_std.fill_(ck["frame_norm"]["std"])
        self._stage_pos = int(tr["stage_pos"])
        self._epoch = int(tr["epoch"])
        self._global_epoch = int(tr["global_epoch"])
        self._opt_state = tr.get("optimizer")
        self._sched_state = tr.get("scheduler")
        self.best_score = float(tr["best_score"])
        self.best_metrics = dict(tr.get("best_metrics") or {})
        self.calibrated = bool(tr["calibrated"])
        set_rng_state(tr["rng"])
        if self.best_path.exists() and self.best_score > -math.inf:
            best = load_checkpoint(self.best_path)
            self.best_state = {
                "encoder": best["encoder"],
                "decoder": best["decoder"],
                "frame_norm": best["frame_norm"],
            }
        # the log may hold epochs written after the checkpoint (crash in between): drop them
        self.history = [
            r for r in _read_jsonl(self.metrics_path) if r["global_epoch"] <= self._global_epoch
        ]
        if self.save:
            _write_jsonl(self.metrics_path, self.history)
        log.info("resumed %s at stage %d epoch %d", p, self._stage_pos, self._epoch)

    def enable_distributed(self, rank: int, world: int) -> None:
        """Data-parallel training over an initialised ``torch.distributed`` process group:
        every rank draws the same global batches, trains on its slice ``batch[rank::world]``
        with its loss weighted by its share of the batch, and the gradients are summed over
        the ranks before each step — the mean-loss gradient of the whole batch, as one process
        computes it (exactly so for losses that are means over images; the optics stage's
        per-batch linear read-out is fitted on each rank's slice). Only rank 0 writes files."""
        self.rank, self.world = int(rank), int(world)
        if self.rank != 0:
            self.save = False

    def _sum_gradients(self, opt: torch.optim.Optimizer) -> None:
        """All-reduce (sum) the gradients of ``opt``'s parameters over the ranks, in one
        flat buffer; a rank without samples contributes zeros."""
        import torch.distributed as dist

        params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        k = 0
        for p in params:
            m = p.numel()
            p.grad.copy_(flat[k : k + m].view_as(p))
            k += m

    def stage_speed(self) -> dict[str, dict]:
        """Training speed per stage from the history: optimiser steps, seconds spent in them
        (validation excluded) and steps/s; plus the Adam implementation in use."""
        out: dict[str, dict] = {}
        for r in self.history:
            if r.get("steps") is None or not r.get("train_s"):
                continue  # epochs recorded before speed was logged
            d = out.setdefault(r["stage"], {"epochs": 0, "steps": 0, "train_s": 0.0})
            d["epochs"] += 1
            d["steps"] += int(r["steps"])
            d["train_s"] += float(r["train_s"])
        for d in out.values():
            d["steps_per_s"] = round(d["steps"] / d["train_s"], 3) if d["train_s"] > 0 else None
            d["train_s"] = round(d["train_s"], 3)
            d["optimizer"] = f"Adam ({getattr(self, 'optimizer_kind', 'fused')})"
        return out

    # -- training ---------------------------------------------------------------------------
    def fit(self, stop_after_epochs: int | None = None) -> TrainResult:
        """Train all stages (continuing a resumed state). ``stop_after_epochs`` stops after that
        many epochs of *this call* (simulates an interruption; used by tests)."""
        if self.save:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            from dmicro_hw.safe_io import write_text_safely

            config_json = json.dumps(self.cfg.model_dump(mode="json"), indent=2)
            write_text_safely(self.out_dir / "config.json", config_json)
        done_here = 0
        try:
            while self._stage_pos < len(self.plan):
                stage = self.plan[self._stage_pos]
                finished = self._run_stage(stage, stop_after_epochs, done_here)
                done_here = finished[1]
                if not finished[0]:
                    return TrainResult(self.history, self.best_metrics, False, self.out_dir)
                self._stage_pos += 1
                self._epoch = 0
                self._opt_state = self._sched_state = None
        finally:
            self.progress.close()
        return TrainResult(self.history, self.best_metrics, True, self.out_dir)

    def _run_stage(
        self, stage: PlannedStage, stop_after: int | None, done_here: int
    ) -> tuple[bool, int]:
        st = stage.cfg
        params = set_trainable(self.model, stage.name)
        opt = make_adam(params, st.lr)
        self.optimizer_kind = adam_kind(opt)
        loader_len = math.ceil(len(self.train_set) / st.batch_size)
        total_steps = max(1, st.epochs * loader_len)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(total_steps, loader_len))
        if self._opt_state is not None:
            opt.load_state_dict(self._opt_state)
            sched.load_state_dict(self._sched_state)
        if stage.trains_decoder and not self.calibrated and self._epoch == 0:
            self._calibrate_input(stage)

        # the optics stage is scored by the optics alone (linear read-out), later stages by
        # the decoder's reconstruction
        readout = "decoder" if stage.trains_decoder else "linear"
        while self._epoch < st.epochs:
            if stop_after is not None and done_here >= stop_after:
                return False, done_here
            t0 = time.perf_counter()
            t_train = time.perf_counter()
            train_loss, steps = self._train_epoch(stage, opt, sched, loader_len)
            train_s = time.perf_counter() - t_train
            self._epoch += 1
            self._global_epoch += 1
            val = evaluate(
                self.model,
                self.val_set,
                self.device,
                batch_size=max(st.batch_size, 16),
                stage=stage,
                readout=readout,
            )
            record = {
                "stage": stage.name,
                "stage_index": stage.index,
                "epoch": self._epoch,
                "epochs": st.epochs,
                "global_epoch": self._global_epoch,
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_psnr": val["psnr"],
                "val_ssim": val["ssim"],
                "val_rmse_rad": val["rmse_rad"],
                "val_readout": readout,
                "lr": opt.param_groups[0]["lr"],
                "time_s": time.perf_counter() - t0,
                "steps": steps,
                "train_s": train_s,
                "steps_per_s": steps / train_s if train_s > 0 else None,
            }
            self.history.append(record)
            metrics = {k: val[k] for k in ("loss", "psnr", "ssim", "rmse_rad")}
            if stage.trains_decoder and val["ssim"] > self.best_score:
                self.best_score = val["ssim"]
                self.best_metrics = metrics
                self.best_state = self._snapshot()
                if self.save:
                    save_checkpoint(self.best_path, self.model, self.cfg, metrics)
            if self.save:
                finished_stage = self._epoch >= st.epochs
                training = self._training_state(opt, sched, finished_stage)
                _append_jsonl(self.metrics_path, record)
                save_checkpoint(self.last_path, self.model, self.cfg, metrics, training)
            self.progress.end_epoch(record)
            done_here += 1
            log.info("epoch %s", record)
        return True, done_here

    def _train_epoch(self, stage: PlannedStage, opt, sched, steps: int) -> tuple[float, int]:
        """One epoch of ``stage``: (mean training loss, optimiser steps taken)."""
        st = stage.cfg
        gen_data = torch.Generator().manual_seed(
            derived_seed(self.cfg.seed, stage.index, self._epoch, 1)
        )
        gen_noise = torch.Generator(device=self.device).manual_seed(
            derived_seed(self.cfg.seed, stage.index, self._epoch, 2)
        )
        loader = DataLoader(
            self.train_set, batch_size=st.batch_size, shuffle=True, generator=gen_data
        )
        self.model.train()
        if stage.name == "decoder":
            self.model.encoder.eval()
        self.progress.start_epoch(stage.name, self._epoch + 1, st.epochs, steps)
        total, n, taken = 0.0, 0, 0
        for batch in loader:
            phase = phase_batch(batch).to(self.device)
            weight = 1.0
            if self.world > 1:
                full = len(phase)
                phase = phase[self.rank :: self.world]
                weight = len(phase) / full  # Σ_ranks weight·mean_rank = mean over the batch
                if not len(phase):
                    opt.zero_grad(set_to_none=True)
                    self._sum_gradients(opt)
                    opt.step()
                    sched.step()
                    taken += 1
                    continue
            target = self.model.normalised_target(phase)
            if stage.name == "optics":
                frame = self.model.encode(phase, gen_noise)
                loss = optics_loss(frame, target, st.loss)
            elif stage.name == "decoder":
                with torch.no_grad():
                    frame = self.model.encode(phase, gen_noise)
                loss = reconstruction_loss(st.loss, self.model.decode(frame), target)
            else:
                _, pred = self.model(phase, gen_noise)
                loss = reconstruction_loss(st.loss, pred, target)
            opt.zero_grad(set_to_none=True)
            (loss * weight if self.world > 1 else loss).backward()
            if self.world > 1:
                self._sum_gradients(opt)
            opt.step()
            sched.step()
            taken += 1
            val = float(loss.detach())
            total += val * len(phase)
            n += len(phase)
            self.progress.step(val)
        return total / max(n, 1), taken

    @torch.no_grad()
    def _calibrate_input(self, stage: PlannedStage) -> None:
        """Fix the decoder input standardisation from frames of the (current) encoder."""
        gen = torch.Generator(device=self.device).manual_seed(derived_seed(self.cfg.seed, 3))
        gen_data = torch.Generator().manual_seed(derived_seed(self.cfg.seed, 4))
        loader = DataLoader(
            self.train_set, batch_size=stage.cfg.batch_size, shuffle=True, generator=gen_data
        )
        frames = []
        for b, batch in enumerate(loader):
            if b >= CALIBRATION_BATCHES:
                break
            frames.append(self.model.encode(phase_batch(batch).to(self.device), gen))
        self.model.calibrate_input(torch.cat(frames))
        self.calibrated = True
        log.info(
            "decoder input standardisation: mean %.4g std %.4g",
            float(self.model.frame_mean),
            float(self.model.frame_std),
        )

    def _training_state(self, opt, sched, finished_stage: bool) -> dict[str, Any]:
        if finished_stage:  # the next stage starts from scratch
            stage_pos, epoch, opt_state, sched_state = self._stage_pos + 1, 0, None, None
        else:
            stage_pos, epoch = self._stage_pos, self._epoch
            opt_state, sched_state = opt.state_dict(), sched.state_dict()
        return {
            "stage_pos": stage_pos,
            "epoch": epoch,
            "global_epoch": self._global_epoch,
            "optimizer": opt_state,
            "scheduler": sched_state,
            "best_score": self.best_score,
            "best_metrics": self.best_metrics,
            "calibrated": self.calibrated,
            "rng": rng_state(),
        }

    def _snapshot(self) -> dict[str, Any]:
        return {
            "encoder": copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.model.encoder.state_dict().items()}
            ),
            "decoder": copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.model.decoder.state_dict().items()}
            ),
            "frame_norm": {
                "mean": float(self.model.frame_mean),
                "std": float(self.model.frame_std),
            },
        }

    def load_best(self) -> None:
        """Put the best-validation weights into ``self.model`` (no-op if none recorded)."""
        if self.best_state is None:
            return
        self.model.encoder.load_state_dict(self.best_state["encoder"])
        self.model.decoder.load_state_dict(self.best_state["decoder"])
        self.model.frame_mean.fill_(self.best_state["frame_norm"]["mean"])
        self.model.frame_std.fill_(self.best_state["frame_norm"]["std"])

    def evaluate(self, split: str = "test", **kw) -> dict[str, float]:
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return evaluate(self.model, ds, self.device, **kw)


# ------------------------------------------------------------------------------------------
# JSONL helpers
# ------------------------------------------------------------------------------------------


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from dmicro_hw.safe_io import write_text_safely

    write_text_safely(path, "".join(json.dumps(r) + "\n" for r in records))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the log
    return out


Callback = Callable[[dict[str, Any]], None]
