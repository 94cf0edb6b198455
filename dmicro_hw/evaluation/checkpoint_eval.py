"""Score any checkpoint on any phase data (``dmicro eval``), with and without refinement.

    phase φ (dataset: a family, a mixture, a user folder)
      → raw ADU frames: the checkpoint's own encoder (its training simulation), or with a rig the
        virtual bench's HIDDEN optics (the twin's true mismatch, revealed for scoring) showing
        the rig's exported pattern
      → Reconstructor (the live worker's decoder: camera response, calibration-adapted input)
      → φ̂, χ²/dof against the measurement model the rig is calibrated to;
        optionally refined through it (``refine`` iterations)
      → PSNR / SSIM on φ/phase_max (as in training) and RMSE in radians, per sample

Sensor noise is drawn from a fixed seed, so two checkpoints are scored on identical frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.scoring import score_frames
from dmicro_hw.config import DataConfigAny, FolderDataConfig, RigConfig
from dmicro_hw.errors import ConfigError, DataError

EVAL_NOISE_SEED = 20240


@dataclass
class EvalResult:
    """Per-sample scores of one evaluation (arrays of length n) and what produced them."""

    truth: np.ndarray  # (n, N, N) rad
    frames: np.ndarray  # (n, h, w) raw ADU
    decoded: np.ndarray  # (n, N, N) rad
    scores: dict[str, np.ndarray]  # psnr_db, ssim, rmse_rad of the decoder
    chi2: np.ndarray | None
    refined: np.ndarray | None = None
    refined_scores: dict[str, np.ndarray] | None = None
    refined_chi2: np.ndarray | None = None
    seconds_per_frame: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        def mean(v: np.ndarray | None) -> float | None:
            if v is None:
                return None
            v = v[np.isfinite(v)]
            return round(float(v.mean()), 4) if v.size else None

        def med(v: np.ndarray | None) -> float | None:
            if v is None:
                return None
            v = v[np.isfinite(v)]
            return round(float(np.median(v)), 4) if v.size else None

        out: dict[str, Any] = {
            "samples": int(len(self.truth)),
            **self.info,
            "decoder": {k: mean(v) for k, v in self.scores.items()},
            "chi2_dof_median": med(self.chi2),
            "ms_per_frame": {k: round(v * 1e3, 3) for k, v in self.seconds_per_frame.items()},
        }
        if self.chi2 is not None and len(self.chi2) > 2:
            from scipy.stats import spearmanr

            rho = spearmanr(self.chi2, self.scores["rmse_rad"]).statistic
            # does a high χ²/dof point at a bad reconstruction? (rank correlation)
            out["chi2_rmse_spearman"] = round(float(rho), 3) if np.isfinite(rho) else None
        if self.refined_scores is not None:
            out["refined"] = {k: mean(v) for k, v in self.refined_scores.items()}
            out["refined_chi2_dof_median"] = med(self.refined_chi2)
        return out


def load_eval_data(source: Path, phase_max_rad: float) -> tuple[DataConfigAny, str]:
    """A data config from a YAML file (a ``data:`` section, or the section itself) or a folder
    of phase maps in radians (used as they are, all samples). Returns (config, label)."""
    from dmicro_hw.config import TrainConfig, read_yaml, resolve_paths, validate

    if source.is_dir():
        return (
            FolderDataConfig(
                path=source,
                rescale="none",
                phase_max_rad=phase_max_rad,
                val_fraction=0.0,
                test_fraction=0.0,
            ),
            source.name,
        )
    if not source.is_file():
        raise ConfigError(f"{source}: --data is neither a YAML file nor a folder")
    raw = read_yaml(source)
    section = raw["data"] if "data" in raw else raw  # a data section, or a whole train config
    data = resolve_paths({"data": section}, source.resolve().parent)
    return validate(TrainConfig, data, str(source)).data, source.stem


def eval_dataset(cfg: DataConfigAny, field_size: int, n: int | None) -> Any:
    """The samples to score: the test split of generated data (``n`` overrides its size), or
    every sample of a folder (centre crops)."""
    from dmicro_hw.data import build_datasets

    if isinstance(cfg, FolderDataConfig):
        from dmicro_hw.data.folder import FolderPhaseDataset, load_folder

        images = load_folder(cfg.path, content=cfg.content, key=cfg.key, min_size=field_size)
        ds = FolderPhaseDataset(
            images, field_size, cfg.phase_max_rad, crop="center", rescale=cfg.rescale
        )
        return ds if n is None else _Subset(ds, n)
    if n is not None:
        cfg = cfg.model_copy(update={"n_test": int(n)})
    return build_datasets(cfg, field_size)[2]


class _Subset:
    def __init__(self, ds: Any, n: int) -> None:
        self.ds, self.n = ds, min(int(n), len(ds))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


def evaluate_checkpoint(
    checkpoint: Path | str,
    data: DataConfigAny,
    *,
    rig: RigConfig | None = None,
    n: int | None = None,
    refine_iterations: int = 0,
    refine_prior_weight: float = 1.0,
    batch: int = 16,
    noise_seed: int = EVAL_NOISE_SEED,
) -> EvalResult:
    """Score ``checkpoint`` on ``data`` (module docstring); with ``rig`` end to end on its twin."""
    import time

    import torch

    from dmicro_hw.acquisition.reconstruct import Reconstructor, RefineOptions
    from dmicro_hw.optics.measurement import EncoderMeasurement
    from dmicro_hw.training.checkpoint import build_model_from_checkpoint

    model, tcfg = build_model_from_checkpoint(checkpoint)
    pmax = float(model.phase_max_rad)
    field_size = tcfg.optics.field_size
    if data.phase_max_rad != pmax and not isinstance(data, FolderDataConfig):
        data = data.model_copy(update={"phase_max_rad": pmax})
    ds = eval_dataset(data, field_size, n)
    if len(ds) == 0:
        raise DataError("the evaluation data holds no samples")
    truth = np.stack([np.asarray(ds[i]) for i in range(len(ds))]).astype(np.float32)
    if truth.max() > pmax * (1 + 1e-5) or truth.min() < 0:
        raise DataError(
            f"evaluation phase spans [{truth.min():.4g}, {truth.max():.4g}] rad, outside the "
            f"checkpoint's [0, {pmax:.4g}] (rescale the data or use a data YAML with rescale)"
        )
    gen = torch.Generator().manual_seed(int(noise_seed))
    info: dict[str, Any] = {"checkpoint": str(checkpoint), "phase_max_rad": pmax}
    if rig is None:
        rec = Reconstructor(model, tcfg.sensor, device="cpu", max_batch=batch)
        measurement = EncoderMeasurement(model.encoder, tcfg.sensor)

        def frames_of(phi: torch.Tensor) -> torch.Tensor:
            return model.encoder.raw_frame(phi, generator=gen)

        info["frames"] = "checkpoint encoder (training simulation)"
    else:
        rec, measurement, frames_of = _rig_chain(checkpoint, rig, batch, gen)
        info["frames"] = f"virtual bench of rig {rig.rig_id!r} (hidden mismatch)"
    raw = np.empty((len(truth), field_size // rec.binning, field_size // rec.binning), "f4")
    with torch.no_grad():
        for s in range(0, len(truth), batch):
            raw[s : s + batch] = frames_of(torch.from_numpy(truth[s : s + batch])).numpy()
    rec.set_measurement(measurement)
    t0 = time.perf_counter()
    decoded, chi2 = rec.decode(raw)
    t1 = time.perf_counter()
    res = EvalResult(truth, raw, decoded, score_frames(decoded, truth, pmax), chi2, info=info)
    res.seconds_per_frame["decode+consistency"] = (t1 - t0) / len(truth)
    if refine_iterations > 0:
        rec.set_measurement(measurement, RefineOptions(refine_iterations, refine_prior_weight))
        t0 = time.perf_counter()
        res.refined, res.refined_chi2 = rec.decode(raw)
        res.seconds_per_frame[f"decode+refine({refine_iterations})"] = (
            time.perf_counter() - t0
        ) / len(truth)
        res.refined_scores = score_frames(res.refined, truth, pmax)
    return res


def _rig_chain(checkpoint: Path | str, rig: RigConfig, batch: int, gen: Any) -> tuple:
    """(reconstructor, measurement model, frames_of) of a rig's calibrated chain on its twin."""
    import torch

    from dmicro_hw.acquisition.consistency import measurement_for_rig
    from dmicro_hw.acquisition.reconstruct import Reconstructor
    from dmicro_hw.acquisition.session import load_assets
    from dmicro_hw.calibration.adapt import slm_model_config
    from dmicro_hw.optics.measurement import BenchMeasurement
    from dmicro_hw.optics.system import PhysicalSystem
    from dmicro_hw.simulators.bench import VirtualBench, reveal_mismatch_for_scoring

    if rig.camera.backend != "sim":
        raise ConfigError(
            f"--rig: scoring needs the true phase, which only a simulated rig has "
            f"(camera.backend is {rig.camera.backend!r})"
        )
    rig = rig.model_copy(update={"checkpoint": Path(checkpoint)})
    assets = load_assets(rig)
    if assets.pattern is None:
        raise ConfigError("--rig: the rig config names no pattern to display")
    rec = Reconstructor.from_checkpoint(
        checkpoint,
        rig,
        camera_gain=assets.camera_gain,
        camera_offset_adu=assets.camera_offset_adu,
        device="cpu",
        max_batch=batch,
    )
    grey = torch.as_tensor(assets.pattern.grey.astype(np.float32))
    truth_system = PhysicalSystem(
        rig.optics,
        rig.sensor,
        slm_model_config(rig),
        reveal_mismatch_for_scoring(VirtualBench.from_rig(rig)),
    ).eval()
    truth = BenchMeasurement(truth_system, grey)  # the bench's optics for this pattern, once

    def frames_of(phi: torch.Tensor) -> torch.Tensor:
        return truth_system.frame_from_intensity(truth.intensity(phi), gen, None)

    measurement = measurement_for_rig(
        rig, rec.model, pattern_grey=assets.pattern.grey, calibration=rig.calibration
    )
    return rec, measurement, frames_of


def save_eval_figure(res: EvalResult, path: Path, k: int = 3) -> Path | None:
    """Worst and best ``k`` fields by PSNR: truth, raw frame, reconstruction, error (rad)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    psnr = res.scores["psnr_db"]
    order = np.argsort(psnr)
    picks = list(order[:k]) + [i for i in order[::-1][:k] if i not in order[:k]]
    pmax = float(res.info.get("phase_max_rad", math.pi))
    cols = ["true phase", "camera frame", "reconstruction", "error"]
    best = res.refined if res.refined is not None else res.decoded
    if res.refined is not None:
        cols[2] = "reconstruction (refined)"
    fig, axes = plt.subplots(len(picks), 4, figsize=(12, 2.9 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        err = best[i] - res.truth[i]
        lim = max(float(np.abs(err).max()), 1e-6)
        panels = [
            (res.truth[i], "viridis", 0, pmax, "rad"),
            (res.frames[i], "gray", None, None, "ADU"),
            (best[i], "viridis", 0, pmax, "rad"),
            (err, "RdBu_r", -lim, lim, "rad"),
        ]
        for c, (img, cmap, lo, hi, unit) in enumerate(panels):
            ax = axes[r, c]
            im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.set_label(unit)
            if r == 0:
                ax.set_title(cols[c])
        tag = "worst" if i in order[:k] else "best"
        axes[r, 0].set_ylabel(f"{tag} #{i}\n{psnr[i]:.1f} dB")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
