"""``dmicro calibrate``: the guided calibration sequence through the rig's devices.

dmicro calibrate --config configs/sim-rig.yaml [--steps registration,lut,fit,adapt,drift]
                 [--out DIR] [--bundle DIR] [--checkpoint CK.pt] [--frames 16]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
from pathlib import Path

import typer

from dmicro_hw.safe_io import write_text_safely


def _step_help() -> str:
    from dmicro_hw.calibration.sequence import STEPS, default_steps, steps_help

    return (
        f"comma-separated steps, run in the documented order {' → '.join(STEPS)} (default: "
        f"{','.join(default_steps())}; plus the checkpoint steps when a checkpoint is known). "
        f"{steps_help()}"
    )


class RichReporter:
    """The sequence's progress as rich bars: one per step, a status line, step summaries."""

    def __init__(self, console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        from dmicro_hw.progress import make_progress

        self.console = console
        self.progress = make_progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[step]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}", style="dim"),
            console=console,
        )
        self.task = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step(self, name: str, total: int, description: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total)
        self.task = self.progress.add_task(description, total=max(total, 1), step=name)

    def advance(self, n: int = 1, note: str = "") -> None:
        if self.task is None:
            return
        t = self.progress.tasks[self.task]
        if t.completed + n > t.total:
            self.progress.update(self.task, total=t.completed + n)
        self.progress.update(self.task, advance=n, description=note[:70] if note else t.description)

    def note(self, text: str) -> None:
        self.progress.console.print(f"[cyan]•[/] {text}", highlight=False)

    def done(self, name: str, summary: str) -> None:
        if self.task is not None:
            t = self.progress.tasks[self.task]
            self.progress.update(self.task, total=t.completed, description="done")
        self.progress.console.print(f"[green]✓ {name}[/]: {summary}", highlight=False)


def _fmt(v, s, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "rad" and abs(v) < 0.2:
        txt = f"{math.degrees(v):+.4f}°"
        return txt + (f" ± {math.degrees(s):.4f}°" if s is not None else "")
    txt = f"{v:+.5g}"
    return txt + (f" ± {s:.2g}" if s is not None else "") + (f" {unit}" if unit else "")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate(
        config: Path = typer.Option(..., "--config", "-c", help="rig.yaml"),
        steps: str = typer.Option("", "--steps", help=_step_help()),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="bundle folder (default runs/calibration/<rig>-<UTC time>)"
        ),
        bundle: Path | None = typer.Option(
            None, "--bundle", help="previous bundle (default: rig.calibration): start values, drift"
        ),
        checkpoint: Path | None = typer.Option(
            None,
            "--checkpoint",
            help="trained checkpoint (default: rig.checkpoint): mask probe, adapt",
        ),
        frames: int = typer.Option(
            16, "--frames", min=2, max=1024, help="frames averaged per probe"
        ),
        target: Path | None = typer.Option(
            None, "--target", help="known phase target (.npy, N×N rad) mounted on a real bench"
        ),
        adapt_steps: int = typer.Option(
            400, "--adapt-steps", min=0, help="decoder fine-tuning steps"
        ),
        seed: int = typer.Option(0, "--seed", help="seed of the decoder fine-tuning"),
    ) -> None:
        """Calibrate the rig: LUT, registration, camera-in-the-loop fit, decoder adaptation,
        drift; writes a calibration bundle with plots."""
        import torch
        from rich.table import Table

        from dmicro_hw.calibration.adapt import is_adapted
        from dmicro_hw.calibration.bundle import ADAPTED_CHECKPOINT, load_bundle
        from dmicro_hw.calibration.sequence import (
            STEP_BY_NAME,
            CalibrationOptions,
            default_steps,
            run_calibration,
        )
        from dmicro_hw.config import load_rig_config
        from dmicro_hw.errors import CheckpointError
        from dmicro_hw.progress import make_console
        from dmicro_hw.rig import open_rig

        torch.set_num_threads(1)  # small problems: extra threads only spin on a shared machine
        console = make_console()
        rig = load_rig_config(config)
        ck = checkpoint or rig.checkpoint
        if ck is not None and not Path(ck).is_file():
            raise CheckpointError(
                f"{ck}: checkpoint file not found (--checkpoint / rig.checkpoint)"
            )
        prev_path = bundle or rig.calibration
        previous = load_bundle(prev_path, rig) if prev_path else None
        if steps.strip():
            step_list = [s for s in steps.split(",") if s.strip()]
        else:
            step_list = default_steps(with_checkpoint=ck is not None and not is_adapted(ck))
            if ck is not None and is_adapted(ck):
                console.print(
                    f"[yellow]note:[/] {ck} is already calibration-adapted: no decoder adaptation "
                    "(give the trained checkpoint with --checkpoint to adapt it to this "
                    "calibration)"
                )
        opts = CalibrationOptions(
            frames_per_pattern=frames, target_path=target, adapt_steps=adapt_steps, seed=seed
        )
        alone = len(step_list) == 1 and STEP_BY_NAME.get(step_list[0].strip().lower())
        if out is None and not (alone and alone.alone_needs_bundle):  # a drift check writes none
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            out = Path("runs/calibration") / f"{rig.rig_id}-{stamp}"
        console.print(
            f"[bold]dmicro calibrate[/] rig [cyan]{rig.rig_id}[/] "
            f"(N={rig.optics.field_size}, ×{rig.optics.compression}, SLM {rig.slm.pixels[0]}×"
            f"{rig.slm.pixels[1]}, {rig.slm.bit_depth} bit); steps: {', '.join(step_list)}"
        )
        with contextlib.ExitStack() as stack, RichReporter(console) as rep:
            r = open_rig(rig, stack)
            result = run_calibration(
                rig, r.slm, r.camera, step_list, out, opts, rep, previous, Path(ck) if ck else None
            )
        if result.drift is not None:
            d = result.drift
            t = Table(title="drift check")
            t.add_column("indicator")
            t.add_column("value", justify="right")
            m = d.metrics
            t.add_row("stored model χ²/dof", f"{m['chi2_dof_stored_model']:.2f}")
            t.add_row("DC on SLM moved", f"{m['dc_shift_px']:.3f} px")
            t.add_row("camera moved", f"{m['camera_shift_px']:.3f} px")
            t.add_row("defocus change", f"{m['defocus_change_rad']:+.4f} rad")
            t.add_row("gain change", f"{100 * m['gain_change_rel']:+.2f} %")
            if m.get("lut_change_rms_rad"):
                t.add_row("LUT change", f"{m['lut_change_rms_rad']:.4f} rad RMS")
            console.print(t)
            color = "red" if d.recalibrate else "green"
            console.print(f"[bold {color}]{d.summary()}[/]")
            if out is not None:
                import json

                out.mkdir(parents=True, exist_ok=True)
                write_text_safely(
                    (out / "drift.json"), json.dumps(d.to_dict(), indent=2, default=str)
                )
                console.print(f"drift report: {out / 'drift.json'}")
            raise typer.Exit(0)
        data = result.data
        t = Table(title="calibration parameters (1-σ)")
        t.add_column("parameter")
        t.add_column("value", justify="right")
        for name, p in data["parameters"].items():
            t.add_row(name, _fmt(p["value"], p.get("sigma"), p.get("unit", "")))
        console.print(t)
        fits = data.get("fits", {})
        if "joint" in fits:
            r = Table(title="per-pattern residual (joint fit)")
            r.add_column("pattern")
            r.add_column("kind")
            r.add_column("RMS (σ)", justify="right")
            r.add_column("RMS (ADU)", justify="right")
            r.add_column("signal RMS (ADU)", justify="right")
            for pid, v in fits["joint"]["per_observation"].items():
                r.add_row(
                    pid,
                    v["kind"],
                    f"{v['rms_noise_units']:.2f}",
                    f"{v['rms_adu']:.2f}",
                    f"{v['signal_rms_adu']:.1f}",
                )
            console.print(r)
        diag = data.get("diagnostics", {})
        if diag:
            bad = ", ".join(f"{k} {v:.1f}" for k, v in diag.get("disagreeing_probes", {}).items())
            color = "yellow" if diag.get("model_error") or diag.get("undetermined") else "green"
            console.print(
                f"[{color}]fit: χ²/dof {diag.get('chi2_dof', float('nan')):.2f}"
                + (
                    " (model error: the bench does more than the model)"
                    if diag.get("model_error")
                    else ""
                )
                + f"; probes that disagree (χ²/pixel): {bad or 'none'}; not determined by the "
                f"probes: {', '.join(diag.get('undetermined', [])) or 'none'}; LUT σ "
                f"{diag.get('lut_sigma_rms_rad', float('nan')):.4f} rad RMS"
                + (
                    f"; SLM response across the pupil ±{100 * diag['slm_zone_spread_rel']:.2f} % "
                    f"(DC vs pupil mean {100 * diag['lut_dc_vs_pupil_rel']:+.2f} %)"
                    if "slm_zone_spread_rel" in diag
                    else ""
                )
                + "[/]",
                highlight=False,
            )
        console.print(
            f"[bold green]bundle:[/] {result.out_dir} ({data['n_patterns']} patterns, "
            f"{data['elapsed_s']} s); plots: {', '.join(data.get('plots', []))}"
        )
        console.print(f"use it: set [cyan]calibration: {result.out_dir}[/] in {config}")
        if "adapt" in data:
            adapted_ck = result.out_dir / ADAPTED_CHECKPOINT
            console.print(
                f"decoder adapted: set [cyan]checkpoint: {adapted_ck}[/] and export its pattern "
                f"with `dmicro export {adapted_ck} --config {config} --calibration "
                f"{result.out_dir} --out PATTERN_DIR` (then [cyan]pattern: PATTERN_DIR[/])"
            )
