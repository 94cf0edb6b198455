"""The paper's comparison in one run: LFF + decoder vs plain intensity, GPC and D2NN, each with the
same decoder, at every compression ratio, scored on held-out synthetic cells with sensor noise on.

Presets:

* ``quick`` — 64×64 fields, a few hundred samples, a few epochs, small U-Net: minutes on two CPU
  cores for the whole grid. Good for *orderings* (LFF ≫ plain intensity), not for absolute numbers.
* ``paper-cpu`` — the paper's field size (256×256) and ratios with the fast U-Net decoder, sized
  to finish in about an hour on two idle CPU cores (the ×4 runs cost most: their decoder works on
  128×128 frames). Absolute numbers sit below what a longer training reaches
  (``configs/train-paper-cpu.yaml`` makes the shipped ×64 model).
* ``full`` — the paper's scale and decoder: 256×256 fields, thousands of samples, tens of epochs,
  the SwinIR-style decoder of ``configs/train-paper.yaml``. Hours on a GPU (``--device cuda``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dmicro_hw.config import (
    DecoderConfig,
    EncoderConfig,
    OpticsConfig,
    SensorConfig,
    StageConfig,
    SyntheticDataConfig,
    TrainConfig,
)
from dmicro_hw.errors import ConfigError

METHODS = ("lff", "gpc", "plain", "d2nn")
RATIOS = (4, 16, 64, 256)


@dataclass(frozen=True)
class Preset:
    field_size: int
    n_train: int
    n_val: int
    n_test: int
    decoder: DecoderConfig
    optics_epochs: int
    decoder_epochs: int
    joint_epochs: int
    batch_size: int
    lr_optics: float = 2e-2
    lr_decoder: float = 2e-3
    lr_joint: float = 5e-4


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        field_size=64,
        n_train=192,
        n_val=32,
        n_test=48,
        decoder=DecoderConfig(kind="unet", base_channels=16, depth=3),
        optics_epochs=8,  # optics steps are cheap (no decoder): more of them
        decoder_epochs=6,
        joint_epochs=2,
        batch_size=8,  # more, cheaper updates: the decoder is the bottleneck at this budget
        lr_optics=5e-2,
    ),
    "paper-cpu": Preset(
        field_size=256,
        n_train=256,
        n_val=32,
        n_test=64,
        decoder=DecoderConfig(kind="unet", base_channels=16, depth=3),
        optics_epochs=6,
        decoder_epochs=6,
        joint_epochs=2,
        batch_size=8,
        lr_optics=5e-2,
    ),
    "full": Preset(
        field_size=256,
        n_train=4096,
        n_val=256,
        n_test=256,
        decoder=DecoderConfig(  # = configs/train-paper.yaml (∂μ's SwinIR-style decoder)
            kind="swinir",
            embed_dim=180,
            num_groups=6,
            blocks_per_group=6,
            window_size=8,
            num_heads=6,
        ),
        optics_epochs=10,
        decoder_epochs=60,
        joint_epochs=20,
        batch_size=16,
        lr_optics=1e-2,
        lr_decoder=1e-3,
        lr_joint=2e-4,
    ),
}


def bench_config(
    preset: str | Preset,
    method: str,
    ratio: int,
    seed: int = 0,
    device: str = "auto",
    n_train: int | None = None,
) -> TrainConfig:
    """The TrainConfig of one cell of the grid (sensor noise always on)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    return TrainConfig(
        seed=seed,
        device=device,
        optics=OpticsConfig(field_size=p.field_size, compression=ratio),
        sensor=SensorConfig(noise=True),
        encoder=EncoderConfig(kind=method),
        decoder=p.decoder,
        data=SyntheticDataConfig(
            n_train=n_train or p.n_train, n_val=p.n_val, n_test=p.n_test, seed=seed
        ),
        stages=[
            StageConfig(
                name="optics", epochs=p.optics_epochs, lr=p.lr_optics, batch_size=p.batch_size
            ),
            StageConfig(
                name="decoder", epochs=p.decoder_epochs, lr=p.lr_decoder, batch_size=p.batch_size
            ),
            StageConfig(
                name="joint",
                epochs=p.joint_epochs,
                lr=p.lr_joint,
                batch_size=p.batch_size,
                loss="ssim_l1",
            ),
        ],
    )


def parse_list(text: str, allowed: Sequence, what: str, cast=str) -> list:
    """'4,16' → [4, 16], checking every item is allowed (ConfigError otherwise)."""
    items = []
    for raw in text.split(","):
        raw = raw.strip().lower().lstrip("x×")
        if not raw:
            continue
        try:
            v = cast(raw)
        except ValueError:
            v = None
        if v not in allowed:
            raise ConfigError(
                f"--{what}: {raw!r} is not allowed (choose from {', '.join(map(str, allowed))})"
            )
        if v not in items:
            items.append(v)
    if not items:
        raise ConfigError(f"--{what}: empty list")
    return items


def run_paper_bench(
    preset: str = "quick",
    ratios: Sequence[int] = RATIOS,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    device: str = "auto",
    n_train: int | None = None,
    progress_factory=None,
    on_result=None,
    done: dict[tuple[str, int], tuple[dict[str, Any], Any]] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (method, ratio); returns the JSON-able report.

    ``progress_factory(label) -> ProgressHook`` gives each run a progress display;
    ``on_result(row, recon)`` is called after each run (recon: the example's reconstruction in
    radians, (N, N)); ``done`` maps (method, ratio) → (row, recon) of runs finished earlier
    (``--resume``), which are kept and not trained again.
    """
    from dmicro_hw import __version__
    from dmicro_hw.data import build_datasets
    from dmicro_hw.training.trainer import EVAL_NOISE_SEED, Trainer, phase_batch, resolve_device

    if preset not in PRESETS:
        raise ConfigError(f"--preset: must be one of {', '.join(PRESETS)} (got {preset!r})")
    p = PRESETS[preset]
    base = bench_config(p, methods[0], ratios[0], seed, device, n_train)
    datasets = build_datasets(base.data, p.field_size)  # shared by every run
    for ds in datasets:
        if hasattr(ds, "as_tensor"):
            ds.as_tensor()  # generate once
    example = phase_batch(datasets[2][0]).unsqueeze(0)

    rows: list[dict[str, Any]] = []
    recons: dict[tuple[str, int], Any] = {}
    t_all = time.perf_counter()
    dev_name = str(resolve_device(device))
    done = done or {}
    for ratio in ratios:
        for method in methods:
            if (method, ratio) in done:
                row, recons[(method, ratio)] = done[(method, ratio)]
                rows.append(row)
                continue
            cfg = bench_config(p, method, ratio, seed, device, n_train)
            label = f"{method:>5} ×{ratio:<3}"
            hook = progress_factory(label) if progress_factory else None
            t0 = time.perf_counter()
            trainer = Trainer(cfg, datasets=datasets, device=device, progress=hook, save=False)
            dev_name = str(trainer.device)
            result = trainer.fit()
            train_s = time.perf_counter() - t0
            trainer.load_best()
            test = trainer.evaluate("test", batch_size=32)
            model = trainer.model.eval()
            with torch.no_grad():
                gen = torch.Generator(device=trainer.device).manual_seed(EVAL_NOISE_SEED)
                _, pred = model(example.to(trainer.device), generator=gen)
            recons[(method, ratio)] = model.to_radians(pred)[0].cpu().numpy()
            side = p.field_size // cfg.optics.binning
            row = {
                "method": method,
                "ratio": ratio,
                "frame": f"{side}x{side}",
                "ssim": test["ssim"],
                "psnr": test["psnr"],
                "rmse_rad": test["rmse_rad"],
                "best_val_ssim": result.best.get("ssim"),
                "epochs": len(result.history),
                "train_time_s": train_s,
            }
            rows.append(row)
            if on_result:
                on_result(row, recons[(method, ratio)])
    report = {
        "benchmark": "paper",
        "software_version": __version__,
        "preset": preset,
        "seed": seed,
        "device": dev_name,
        "torch_threads": torch.get_num_threads(),
        "field_size": p.field_size,
        "n_train": base.data.n_train,
        "n_val": base.data.n_val,
        "n_test": base.data.n_test,
        "phase_max_rad": base.data.phase_max_rad,
        "sensor": base.sensor.model_dump(mode="json"),
        "decoder": p.decoder.model_dump(mode="json"),
        "stages": [s.model_dump(mode="json") for s in base.stages],
        "ratios": list(ratios),
        "methods": list(methods),
        "results": rows,
        "total_time_s": time.perf_counter() - t_all,  # this invocation (resumed runs excluded)
        "train_time_total_s": sum(r["train_time_s"] for r in rows),
    }
    return {"report": report, "recons": recons, "example": example[0].numpy()}
