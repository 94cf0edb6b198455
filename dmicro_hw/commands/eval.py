"""``dmicro eval CHECKPOINT --data DATA.yaml|FOLDER [--rig rig.yaml]``: score any checkpoint on
any phase data (families, mixtures, user folders), with and without refinement."""

from __future__ import annotations

from pathlib import Path

import typer

from dmicro_hw.safe_io import write_text_safely


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        checkpoint: Path = typer.Argument(..., help="checkpoint (.pt) from dmicro train"),
        data: list[Path] = typer.Option(
            ...,
            "--data",
            "-d",
            help="data YAML (a data: section or a train config) or a folder of phase maps in "
            "radians; repeat to score several sets",
        ),
        rig: Path | None = typer.Option(
            None,
            "--rig",
            help="simulated rig config: frames from its virtual bench (hidden mismatch) through "
            "its pattern, decoded with its calibration (end to end)",
        ),
        n: int | None = typer.Option(None, "--n", min=1, help="samples per set (test split)"),
        refine: int = typer.Option(
            0, "--refine", min=0, max=1000, help="also score refinement with this many steps"
        ),
        refine_prior: float = typer.Option(1.0, "--refine-prior", min=0.0),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="folder for eval.json and figures (default: none)"
        ),
    ) -> None:
        """Score CHECKPOINT on each --data set: SSIM/PSNR (normalised phase), RMSE (rad),
        χ²/dof; with --refine also after refinement. Writes eval.json and eval-SET.png figures
        of the worst and best fields with --out."""
        import json

        from rich.table import Table

        from dmicro_hw.config import load_rig_config
        from dmicro_hw.errors import CheckpointError
        from dmicro_hw.evaluation.checkpoint_eval import (
            evaluate_checkpoint,
            load_eval_data,
            save_eval_figure,
        )
        from dmicro_hw.progress import make_console
        from dmicro_hw.training.checkpoint import load_checkpoint

        if not checkpoint.is_file():
            raise CheckpointError(f"{checkpoint}: checkpoint not found")
        pmax = float(load_checkpoint(checkpoint)["phase_max_rad"])
        rig_cfg = load_rig_config(rig) if rig is not None else None
        sets = [load_eval_data(d, pmax) for d in data]  # every input checked before scoring
        console = make_console()
        title = f"dmicro eval {checkpoint.name}" + (f" on rig {rig_cfg.rig_id}" if rig else "")
        table = Table(title=title)
        for col in ("data", "n", "SSIM", "PSNR dB", "RMSE rad", "χ²/dof"):
            table.add_column(col, justify="right" if col != "data" else "left")
        if refine:
            for col in ("SSIM ref", "PSNR ref", "RMSE ref", "χ²/dof ref"):
                table.add_column(col, justify="right")
        report = {"checkpoint": str(checkpoint), "rig": str(rig) if rig else None, "sets": {}}
        for cfg, label in sets:
            res = evaluate_checkpoint(
                checkpoint,
                cfg,
                rig=rig_cfg,
                n=n,
                refine_iterations=refine,
                refine_prior_weight=refine_prior,
            )
            s = res.summary()
            d = s["decoder"]
            row = [
                label,
                str(s["samples"]),
                f"{d['ssim']:.3f}",
                f"{d['psnr_db']:.2f}",
                f"{d['rmse_rad']:.3f}",
                _fmt(s["chi2_dof_median"]),
            ]
            if refine:
                r = s["refined"]
                row += [
                    f"{r['ssim']:.3f}",
                    f"{r['psnr_db']:.2f}",
                    f"{r['rmse_rad']:.3f}",
                    _fmt(s["refined_chi2_dof_median"]),
                ]
            table.add_row(*row)
            report["sets"][label] = s
            if out is not None:
                fig = save_eval_figure(res, out / f"eval-{label}.png")
                s["figure"] = str(fig) if fig else None
        console.print(table)
        for label, s in report["sets"].items():
            ms = ", ".join(f"{k} {v} ms" for k, v in s["ms_per_frame"].items())
            console.print(f"{label}: per frame {ms}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_safely(out / "eval.json", json.dumps(report, indent=2) + "\n")
            console.print(f"report: {out / 'eval.json'}")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"
