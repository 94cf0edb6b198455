"""``dmicro bench calibration``: calibrate virtual benches with hidden mismatches, score it.

For every seed: a virtual bench whose hidden mismatch is drawn from that seed is calibrated
through its simulated devices (``dmicro calibrate``'s sequence, the hidden values never read);
then the scorer reads the truth and reports the recovery errors (SLM offset, rotation, LUT RMS,
defocus …) and the reconstruction PSNR on held-out cells before calibration, after it, and on a
bench without mismatch — one table and a JSON file.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import typer

from dmicro_hw.safe_io import write_text_safely


def _seeds(text: str) -> list[int]:
    from dmicro_hw.errors import ConfigError

    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: comma-separated integers expected, got {text!r}") from None
    if not out:
        raise ConfigError("--seeds: at least one seed")
    return out


def _train_checkpoint(out: Path, console, epochs_scale: float) -> Path:
    """Train the sim-rig model (configs/train-sim-rig.yaml) when no checkpoint is given."""
    from dmicro_hw.config import load_train_config
    from dmicro_hw.training.progress import RichProgress
    from dmicro_hw.training.trainer import Trainer

    cfg_path = Path(__file__).resolve().parents[2] / "configs" / "train-sim-rig.yaml"
    cfg = load_train_config(cfg_path)
    if epochs_scale != 1.0:
        cfg.stages = [
            s.model_copy(update={"epochs": max(1, round(s.epochs * epochs_scale))})
            for s in cfg.stages
        ]
    console.print(f"training the sim-rig model ({cfg_path.name}) → {out}")
    trainer = Trainer(cfg, out_dir=out, progress=RichProgress(console))
    trainer.fit()
    return trainer.best_path


def _trained_checkpoint(rig) -> Path | None:
    """The rig's checkpoint when it is a trained one; for a calibration-adapted one (tuned to
    one particular mismatch, e.g. the shipped sim rig's) the shipped trained sim-rig model."""
    from dmicro_hw.calibration.adapt import is_adapted
    from dmicro_hw.training.checkpoint import checkpoint_config

    if rig.checkpoint is not None and not is_adapted(rig.checkpoint):
        return Path(rig.checkpoint)
    shipped = Path(__file__).resolve().parents[2] / "configs" / "assets" / "sim-rig.pt"
    if shipped.is_file() and checkpoint_config(shipped).optics == rig.optics:
        return shipped
    return None


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("calibration")
    def bench_calibration(
        config: Path = typer.Option(Path("configs/sim-rig.yaml"), "--config", "-c"),
        seeds: str = typer.Option("1,2,5", "--seeds", help="hidden-mismatch seeds"),
        checkpoint: Path | None = typer.Option(
            None,
            "--checkpoint",
            help="trained sim-rig checkpoint (default: rig.checkpoint unless it is "
            "calibration-adapted, then configs/assets/sim-rig.pt; else a model is trained with "
            "configs/train-sim-rig.yaml)",
        ),
        out: Path = typer.Option(Path("runs/bench-calibration"), "--out", "-o"),
        cells: int = typer.Option(64, "--cells", min=4, help="held-out cells for the PSNR"),
        frames: int = typer.Option(16, "--frames", min=2, help="frames averaged per probe"),
        adapt_steps: int = typer.Option(400, "--adapt-steps", min=0),
        no_psnr: bool = typer.Option(False, "--no-psnr", help="recovery errors only"),
        train_epochs_scale: float = typer.Option(
            1.0, "--train-epochs-scale", help="scale the epochs when a model must be trained"
        ),
    ) -> None:
        """Calibration recovery (offset, rotation, LUT, defocus) and PSNR before/after/no
        mismatch for several hidden-mismatch seeds: table + JSON."""
        import torch
        from rich.table import Table

        from dmicro_hw.calibration import scoring as S
        from dmicro_hw.calibration.bundle import ADAPTED_CHECKPOINT
        from dmicro_hw.calibration.sequence import CalibrationOptions, LogReporter, run_calibration
        from dmicro_hw.config import load_rig_config
        from dmicro_hw.errors import ConfigError
        from dmicro_hw.progress import make_console
        from dmicro_hw.rig import open_rig
        from dmicro_hw.simulators.bench import bench_of, reveal_mismatch_for_scoring

        torch.set_num_threads(1)
        console = make_console()
        rig0 = load_rig_config(config)
        if rig0.slm.backend != "sim" or rig0.camera.backend != "sim":
            raise ConfigError(f"{config}: the calibration benchmark needs the sim SLM and camera")
        seed_list = _seeds(seeds)
        out.mkdir(parents=True, exist_ok=True)
        ck = checkpoint or _trained_checkpoint(rig0)
        if ck is None and not no_psnr:
            ck = _train_checkpoint(out / "train", console, train_epochs_scale)
        held = None
        rows: list[dict] = []
        nomis = nomis_adapted = None
        opts = CalibrationOptions(frames_per_pattern=frames, adapt_steps=adapt_steps)
        adapt = ck is not None and not no_psnr and adapt_steps > 0

        def calibrate(rig, bdir: Path, label: str):
            """Calibrate one virtual bench through its devices; (result, hidden truth, s)."""
            steps = ["registration", "lut", "fit"] + (["adapt"] if adapt else [])
            t0 = time.monotonic()
            with contextlib.ExitStack() as stack:
                opened = open_rig(rig, stack)  # the SLM and camera share one virtual bench
                slm, cam = opened.slm, opened.camera
                with console.status(f"{label}: calibrating …"):
                    res = run_calibration(
                        rig, slm, cam, steps, bdir, opts, LogReporter(), None,
                        Path(ck) if adapt else None,
                    )  # fmt: skip
                truth = reveal_mismatch_for_scoring(bench_of(cam))  # scoring only
            return res, truth, time.monotonic() - t0

        if ck is not None and not no_psnr:
            from dmicro_hw.training.checkpoint import load_checkpoint

            pmax = float(load_checkpoint(ck)["phase_max_rad"])
            held = S.held_out_cells(rig0, cells, pmax)
            nomis = S.reconstruction_quality(rig0, ck, held, None, mismatch_enabled=False)
            console.print(f"no-mismatch bench, trained model: PSNR {nomis['psnr_db']:.2f} dB")
            if adapt:
                # the fair reference: a bench without mismatch, calibrated and adapted the same
                # way, so that its decoder gets the same extra fine-tuning as the seeds' ones
                rig_nm = rig0.model_copy(deep=True)
                rig_nm.bench.mismatch.enabled = False
                bdir = out / "no-mismatch"
                calibrate(rig_nm, bdir, "no-mismatch bench")
                adapted = bdir / ADAPTED_CHECKPOINT
                nomis_adapted = S.reconstruction_quality(
                    rig_nm, adapted, held, bdir, mismatch_enabled=False
                )
                console.print(
                    f"no-mismatch bench, calibrated + adapted: PSNR "
                    f"{nomis_adapted['psnr_db']:.2f} dB"
                )
        reference = nomis_adapted or nomis
        for seed in seed_list:
            rig = rig0.model_copy(deep=True)
            rig.bench.mismatch.seed = seed
            rig.bench.mismatch.enabled = True
            bdir = out / f"seed-{seed}"
            res, truth, elapsed = calibrate(rig, bdir, f"seed {seed}")
            sc = S.score_bundle(rig, bdir, truth)
            row = {"seed": seed, "calibration_s": round(elapsed, 1), **sc}
            row["chi2_dof"] = res.data["fits"]["joint"]["chi2_dof"]
            if held is not None:
                row["psnr_before"] = S.reconstruction_quality(rig, ck, held, None)
                row["psnr_export_only"] = S.reconstruction_quality(rig, ck, held, bdir)
                after_ck = bdir / ADAPTED_CHECKPOINT if adapt else ck
                row["psnr_after"] = S.reconstruction_quality(rig, after_ck, held, bdir)
                row["psnr_no_mismatch"] = nomis
                row["psnr_no_mismatch_adapted"] = nomis_adapted
            rows.append(row)
            e = sc["errors"]
            msg = (
                f"seed {seed}: offset {e['slm_offset_err_px']:.3f} px, rotation "
                f"{e['rotation_err_deg']:+.4f}°, LUT {e['lut_rms_err_rad']:.4f} rad, defocus "
                f"{100 * e['defocus_rel_err']:.2f} %"
            )
            if held is not None:
                msg += (
                    f"; PSNR {row['psnr_before']['psnr_db']:.2f} → "
                    f"{row['psnr_after']['psnr_db']:.2f} dB"
                )
            console.print(msg)

        t = Table(title="calibration on the virtual bench (hidden mismatch per seed)")
        for col in ("seed", "offset err (px)", "rotation err (°)", "LUT RMS (rad)", "defocus err"):
            t.add_column(col, justify="right")
        if held is not None:
            cols = ["PSNR before", "PSNR export only", "PSNR after", "PSNR no mismatch"]
            if nomis_adapted is not None:
                cols.append("no mismatch, adapted")
            for col in (*cols, "after − reference"):
                t.add_column(col, justify="right")
        t.add_column("targets met", justify="center")
        t.add_column("time (s)", justify="right")
        for r in rows:
            e, ok = r["errors"], r["meets"]
            cells_row = [
                str(r["seed"]),
                f"{e['slm_offset_err_px']:.4f}",
                f"{e['rotation_err_deg']:+.5f}",
                f"{e['lut_rms_err_rad']:.5f}",
                f"{100 * e['defocus_rel_err']:.2f} %",
            ]
            if held is not None:
                a = r["psnr_after"]["psnr_db"]
                cells_row += [
                    f"{r['psnr_before']['psnr_db']:.2f} dB",
                    f"{r['psnr_export_only']['psnr_db']:.2f} dB",
                    f"{a:.2f} dB",
                    f"{nomis['psnr_db']:.2f} dB",
                ]
                if nomis_adapted is not None:
                    cells_row.append(f"{nomis_adapted['psnr_db']:.2f} dB")
                cells_row.append(f"{a - reference['psnr_db']:+.2f} dB")
            cells_row += [f"{sum(ok.values())}/{len(ok)}", f"{r['calibration_s']:.0f}"]
            t.add_row(*cells_row)
        console.print(t)
        summary = {
            "config": str(config),
            "seeds": seed_list,
            "targets": S.TARGETS,
            "checkpoint": None if ck is None else str(ck),
            "held_out_cells": None if held is None else int(len(held)),
            "frames_per_pattern": frames,
            "adapt_steps": adapt_steps,
            "rows": rows,
        }
        if held is not None:
            gaps = [r["psnr_after"]["psnr_db"] - reference["psnr_db"] for r in rows]
            summary["psnr_reference"] = (
                "no-mismatch bench, calibrated and adapted the same way"
                if nomis_adapted is not None
                else "no-mismatch bench, trained model"
            )
            summary["psnr_no_mismatch"] = nomis
            summary["psnr_no_mismatch_adapted"] = nomis_adapted
            summary["worst_gap_after_vs_reference_db"] = min(gaps)
            summary["psnr_within_0p5db"] = all(g >= -0.5 for g in gaps)
            gaps_trained = [r["psnr_after"]["psnr_db"] - nomis["psnr_db"] for r in rows]
            summary["worst_gap_after_vs_trained_no_mismatch_db"] = min(gaps_trained)
        summary["all_recovery_targets_met"] = all(all(r["meets"].values()) for r in rows)
        path = out / "bench_calibration.json"
        write_text_safely(path, json.dumps(summary, indent=2, default=_json_default) + "\n")
        console.print(f"JSON: {path}")


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)
