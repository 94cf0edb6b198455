"""``dmicro bench paper``: LFF vs plain intensity, GPC and D2NN (same decoder) at every ratio."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from dmicro_hw.commands._choices import BenchPreset, Device, value
from dmicro_hw.errors import ConfigError
from dmicro_hw.safe_io import make_output_dir, write_bytes_safely, write_text_safely

RUNS_DIR = "runs"  # one .npz per finished (method, ratio): the row and the example's recon


def runs_folder(out: Path) -> Path:
    """``out/runs``, refused (ConfigError) when it is a symlink: runs are neither written nor
    read through a link the bench did not make."""
    folder = out / RUNS_DIR
    if folder.is_symlink():
        raise ConfigError(f"{folder} is a symlink; refusing to write or read runs through it")
    return folder


def save_finished_run(out: Path, settings: dict, row: dict, recon: np.ndarray) -> None:
    """Keep one finished run on disk as soon as it ends (an interrupted bench loses nothing)."""
    folder = runs_folder(out)
    folder.mkdir(exist_ok=True)
    buf = io.BytesIO()
    meta = json.dumps({"settings": settings, "row": row})
    np.savez(buf, recon=np.asarray(recon, np.float32), meta=np.array(meta))
    write_bytes_safely(folder / f"{row['method']}-x{row['ratio']}.npz", buf.getvalue())


def load_finished_runs(out: Path, settings: dict) -> dict[tuple[str, int], tuple[dict, Any]]:
    """The runs :func:`save_finished_run` kept in ``out`` for the same settings
    (ConfigError naming the file when one is unreadable or was made with other settings)."""
    folder = runs_folder(out)
    done: dict[tuple[str, int], tuple[dict, Any]] = {}
    if not folder.is_dir():
        return done
    for f in sorted(folder.glob("*.npz")):
        if f.is_symlink():
            raise ConfigError(f"--resume: {f} is a symlink; refusing to read it")
        try:
            with np.load(f, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                recon = np.array(z["recon"])
            row = meta["row"]
            key = (str(row["method"]), int(row["ratio"]))
        except Exception as e:  # noqa: BLE001 — any damage: one clear message
            raise ConfigError(f"--resume: {f} is not a finished run of bench paper ({e})") from None
        if meta.get("settings") != settings:
            raise ConfigError(
                f"--resume: {f} was made with {meta.get('settings')}, not {settings}; "
                "use another --out or the same settings"
            )
        done[key] = (row, recon)
    return done


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("paper")
    def paper(
        preset: BenchPreset = typer.Option(
            BenchPreset.quick,
            "--preset",
            help="quick: minutes on a CPU; paper-cpu: 256² fields, about an hour on 2 CPU "
            "cores; full: the paper's scale and decoder, hours on a GPU",
        ),
        out: Path = typer.Option(Path("runs/bench-paper"), "--out", "-o", help="output folder"),
        ratios: str = typer.Option("4,16,64,256", "--ratios", help="compression ratios k²"),
        methods: str = typer.Option("lff,gpc,plain,d2nn", "--methods", help="encoders"),
        seed: int = typer.Option(0, "--seed"),
        device: Device = typer.Option(Device.auto, "--device", help="torch device"),
        n_train: int | None = typer.Option(
            None, "--n-train", min=8, help="override the preset's number of training samples"
        ),
        threads: int = typer.Option(
            0, "--threads", min=0, help="torch CPU threads (0: torch's default, one per core)"
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="keep the runs already finished in --out (same preset, seed and --n-train) "
            "and train only the missing ones",
        ),
    ) -> None:
        """Train and score every (method, ratio) on held-out synthetic cells, sensor noise on;
        prints a table, writes bench-paper.json and bench-paper.png."""
        from rich.table import Table

        from dmicro_hw.evaluation.paper_bench import (
            METHODS,
            PRESETS,
            RATIOS,
            parse_list,
            run_paper_bench,
        )
        from dmicro_hw.progress import make_console
        from dmicro_hw.training.plots import save_bench_figure
        from dmicro_hw.training.progress import RichProgress
        from dmicro_hw.training.trainer import resolve_device

        console = make_console()
        if threads:
            import torch

            torch.set_num_threads(threads)
        preset, device = value(preset), value(device)
        ratio_list = sorted(parse_list(ratios, RATIOS, "ratios", int))
        method_list = parse_list(methods, METHODS, "methods", str)
        resolve_device(device)
        console.print(
            f"[bold]dmicro bench paper[/] preset {preset}: methods {', '.join(method_list)} × "
            f"ratios {', '.join('×' + str(r) for r in ratio_list)}, "
            f"{PRESETS[preset].field_size}×{PRESETS[preset].field_size} fields, sensor noise on"
        )

        def progress(label: str):
            return RichProgress(console, label=label)

        make_output_dir(out)
        settings = {"preset": preset, "seed": seed, "n_train": n_train}
        done = load_finished_runs(out, settings) if resume else {}
        if done:
            console.print(
                f"resuming: {len(done)} finished run(s) kept from {out / RUNS_DIR} "
                f"({', '.join(f'{m} ×{r}' for m, r in done)})"
            )

        def on_result(row: dict, recon) -> None:
            save_finished_run(out, settings, row, recon)
            console.print(
                f"  {row['method']:>5} ×{row['ratio']:<3} SSIM {row['ssim']:.4f}  "
                f"PSNR {row['psnr']:.2f} dB  RMSE {row['rmse_rad']:.4f} rad  "
                f"({row['train_time_s']:.0f} s)"
            )

        res = run_paper_bench(
            preset, ratio_list, method_list, seed, device, n_train, progress, on_result, done
        )
        report = res["report"]
        write_text_safely((out / "bench-paper.json"), json.dumps(report, indent=2))
        scores = {(r["method"], r["ratio"]): r["ssim"] for r in report["results"]}
        fig = save_bench_figure(
            res["example"], res["recons"], method_list, ratio_list, scores, out / "bench-paper.png"
        )

        table = Table(
            title=f"bench paper ({preset}): held-out synthetic cells, "
            f"{report['n_test']} samples, sensor noise on"
        )
        table.add_column("ratio", justify="right")
        table.add_column("frame", justify="right")
        table.add_column("method")
        table.add_column("SSIM ↑", justify="right")
        table.add_column("PSNR (dB) ↑", justify="right")
        table.add_column("RMSE (rad) ↓", justify="right")
        table.add_column("train (s)", justify="right")
        for ratio in ratio_list:
            rows = [r for r in report["results"] if r["ratio"] == ratio]
            best = max(r["ssim"] for r in rows)
            for i, r in enumerate(rows):
                style = "bold green" if r["ssim"] == best and len(rows) > 1 else None
                table.add_row(
                    f"×{ratio}" if i == 0 else "",
                    r["frame"] if i == 0 else "",
                    r["method"].upper(),
                    f"{r['ssim']:.4f}",
                    f"{r['psnr']:.2f}",
                    f"{r['rmse_rad']:.4f}",
                    f"{r['train_time_s']:.0f}",
                    style=style,
                )
            table.add_section()
        console.print(table)
        console.print(
            f"training {report['train_time_total_s']:.0f} s in all "
            f"({report['total_time_s']:.0f} s in this run) on {report['device']}"
        )
        console.print(f"wrote {out / 'bench-paper.json'} and {fig}")
