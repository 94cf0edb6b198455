"""``dmicro train``: the three training stages, checkpoints, metrics log and figures."""

from __future__ import annotations

from pathlib import Path

import typer

from dmicro_hw.commands._choices import Device, value
from dmicro_hw.errors import ConfigError
from dmicro_hw.safe_io import write_text_safely


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Path = typer.Option(..., "--config", "-c", help="training config (YAML)"),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="output folder (default: out_dir)"
        ),
        resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="start afresh even if OUT holds an earlier run"
        ),
        device: Device | None = typer.Option(
            None, "--device", help="torch device (default: the config's device)"
        ),
        examples: int = typer.Option(3, "--examples", min=0, max=16, help="example figures"),
        threads: int = typer.Option(
            0, "--threads", min=0, help="torch CPU threads (0: torch's default, one per core)"
        ),
        nproc: int = typer.Option(
            1,
            "--nproc",
            min=1,
            max=64,
            help="data-parallel processes on this machine (DDP: gloo on CPU, NCCL on CUDA)",
        ),
    ) -> None:
        """Train encoder + decoder (optics → decoder → joint); writes last.pt, best.pt,
        metrics.jsonl, summary.json, mask.png and reconstructions.png. ``--nproc N`` trains
        data-parallel in N processes (each a slice of every batch, gradients summed)."""
        from dmicro_hw.config import load_train_config

        if threads:
            import torch

            torch.set_num_threads(threads)
        device = value(device)
        cfg = load_train_config(config)
        out_dir = out if out is not None else cfg.out_dir
        last = out_dir / "last.pt"
        if not resume and last.exists() and not overwrite:
            raise ConfigError(
                f"{out_dir}: already holds a training run (last.pt); pass --resume to continue "
                "it, --overwrite to start afresh, or choose another --out"
            )
        if not resume and overwrite:
            for name in ("last.pt", "best.pt", "metrics.jsonl", "summary.json"):
                (out_dir / name).unlink(missing_ok=True)

        if nproc > 1:
            import torch.multiprocessing as mp

            port = _free_port()
            args = (nproc, port, config, out_dir, device, resume, examples, threads)
            mp.spawn(_ddp_worker, args=args, nprocs=nproc, join=True)
            return
        _train_and_report(config, cfg, out_dir, device, resume, examples)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(
    rank: int,
    world: int,
    port: int,
    config: Path,
    out_dir: Path,
    device: str | None,
    resume: bool,
    examples: int,
    threads: int,
) -> None:
    """One data-parallel training process: joins the process group, trains its slice of every
    batch; rank 0 also reports and writes the files."""
    import os

    import torch
    import torch.distributed as dist

    from dmicro_hw.config import load_train_config

    cfg = load_train_config(config)
    dev = device or cfg.device
    cuda = str(dev).startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        dev = f"cuda:{rank % torch.cuda.device_count()}"
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    try:
        _train_and_report(config, cfg, out_dir, dev, resume, examples, rank, world)
    finally:
        dist.destroy_process_group()


def _train_and_report(
    config: Path,
    cfg,
    out_dir: Path,
    device: str | None,
    resume: bool,
    examples: int,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Train (this rank's share) and, on rank 0, evaluate the test set, write summary.json and
    the figures and print the tables."""
    import json

    from rich.table import Table

    from dmicro_hw.progress import make_console
    from dmicro_hw.training.progress import RichProgress
    from dmicro_hw.training.trainer import Trainer

    console = make_console()
    trainer = Trainer(cfg, out_dir=out_dir, device=device, progress=None)
    if world > 1:
        trainer.enable_distributed(rank, world)
    if resume:
        trainer.resume()
    if rank != 0:
        trainer.fit()
        return
    o, e = cfg.optics, cfg.encoder.kind
    console.print(
        f"[bold]dmicro train[/] {config} → {out_dir}  encoder [cyan]{e}[/], "
        f"{o.field_size}×{o.field_size} field, ×{o.compression} "
        f"({o.field_size // o.binning}×{o.field_size // o.binning} frame), "
        f"decoder {cfg.decoder.kind}, device {trainer.device}, "
        f"stages {' → '.join(f'{s.name}×{s.cfg.epochs}' for s in trainer.plan)}"
        + (f", {world} data-parallel processes" if world > 1 else "")
    )
    trainer.progress = RichProgress(console)
    result = trainer.fit()

    trainer.load_best()
    test = trainer.evaluate("test", batch_size=16)
    summary = {
        "config": str(config),
        "out_dir": str(out_dir),
        "encoder": e,
        "compression": o.compression,
        "field_size": o.field_size,
        "epochs": len(result.history),
        "best_val": result.best,
        "test": test,
        "speed": trainer.stage_speed(),
        "processes": world,
        "checkpoint": str(trainer.best_path if trainer.best_path.exists() else trainer.last_path),
    }
    write_text_safely((out_dir / "summary.json"), json.dumps(summary, indent=2))
    figures = _figures(trainer, out_dir, examples)

    table = Table(
        title=f"test set ({len(trainer.test_set)} held-out samples, sensor noise "
        f"{'on' if cfg.sensor.noise else 'off'})"
    )
    for col in ("SSIM", "PSNR (dB)", "phase RMSE (rad)"):
        table.add_column(col, justify="right")
    table.add_row(f"{test['ssim']:.4f}", f"{test['psnr']:.2f}", f"{test['rmse_rad']:.4f}")
    console.print(table)
    if summary["speed"]:
        speed = Table(title="training speed per stage (validation excluded)")
        for col in ("stage", "epochs", "steps", "seconds", "steps/s", "optimizer"):
            speed.add_column(col, justify="left" if col in ("stage", "optimizer") else "right")
        for name, d in summary["speed"].items():
            speed.add_row(
                name,
                str(d["epochs"]),
                str(d["steps"]),
                f"{d['train_s']:.1f}",
                f"{d['steps_per_s']:.2f}" if d["steps_per_s"] else "",
                d["optimizer"],
            )
        console.print(speed)
    console.print(f"checkpoint: {summary['checkpoint']}")
    for f in figures:
        console.print(f"figure: {f}")


def _figures(trainer, out_dir: Path, examples: int) -> list[Path]:
    import torch

    from dmicro_hw.training.plots import save_mask_png, save_reconstructions_png
    from dmicro_hw.training.trainer import EVAL_NOISE_SEED, phase_batch

    out: list[Path] = []
    model = trainer.model.eval()
    mask = save_mask_png(model.encoder, out_dir / "mask.png")
    if mask is not None:
        out.append(mask)
    n = min(examples, len(trainer.test_set))
    if n:
        phase = torch.stack([phase_batch(trainer.test_set[i]) for i in range(n)]).to(trainer.device)
        gen = torch.Generator(device=trainer.device).manual_seed(EVAL_NOISE_SEED)
        with torch.no_grad():
            frame, pred = model(phase, generator=gen)
        out.append(
            save_reconstructions_png(
                phase,
                frame,
                model.to_radians(pred),
                out_dir / "reconstructions.png",
                title=f"{trainer.cfg.encoder.kind.upper()} ×{trainer.cfg.optics.compression}",
            )
        )
    return out
