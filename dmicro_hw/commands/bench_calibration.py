"""``dmicro bench calibration``: calibrate virtual benches with hidden mismatches, score it.

For every realism level (``--realism none|moderate|harsh``: effects of the twin that the
calibration model does not contain) and every seed: a virtual bench whose hidden mismatch (and
unmodelled effects) are drawn from that seed is calibrated through its devices, opened through
the rig seam (``dmicro calibrate``'s sequence, the hidden values never read); then
:mod:`dmicro_hw.evaluation.calibration_bench` reads the truth and reports recovery errors (SLM
offset, rotation, LUT RMS, defocus …), the fit's χ²/dof and what it flags, and the
reconstruction PSNR on held-out cells before calibration, with the calibrated export only and
after adaptation, against two references on the same bench without its mismatch (the trained
model; that bench calibrated and adapted the same way). Above realism ``none`` each seed's
bench has its own draw of unmodelled effects, so each seed gets its own references (the same
draw, no mismatch); at ``none`` one no-mismatch bench serves every seed. Tables and a JSON file.
"""

from __future__ import annotations

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


REALISM_LEVELS = ("none", "moderate", "harsh")


def _levels(text: str) -> list[str]:
    from dmicro_hw.errors import ConfigError

    out = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in out if s not in REALISM_LEVELS]
    if bad or not out:
        raise ConfigError(
            f"--realism: {', '.join(bad) or 'nothing given'}; allowed: {', '.join(REALISM_LEVELS)} "
            "(comma-separated)"
        )
    return list(dict.fromkeys(out))


def print_table(console, table) -> None:
    """Print a rich table whole: off a terminal the console is widened to the table's natural
    width, so no column is cut to '…' in a pipe or a log file."""
    if console.is_terminal:
        console.print(table)
        return
    old = console.width
    console.width = 10_000  # measuring is capped at the console's width, print() only narrows
    console.width = max(old, console.measure(table).maximum)
    try:
        console.print(table)
    finally:
        console.width = old


def _recovery_table(level: str, rows: list[dict]):
    from rich.table import Table

    t = Table(title=f"realism {level}: recovery of the hidden mismatch (target in brackets)")
    cols = (
        "seed",
        "SLM offset (DC) err px [0.25]",
        "physical offset err px",
        "rotation err ° [0.1]",
        "LUT RMS rad [0.05]",
        "LUT σ claimed rad",
        "defocus err [5 % | 0.005 rad]",
        "χ²/dof",
        "worst probes (χ²/pix)",
        "not determined",
        "targets",
        "time s",
    )
    for c in cols:
        t.add_column(c, justify="left" if c.startswith(("worst", "not")) else "right")
    for r in rows:
        e, ok, d = r["errors"], r["meets"], r.get("diagnostics", {})
        worst = ", ".join(f"{k} {v:.1f}" for k, v in list(d.get("worst_probes", {}).items())[:2])
        t.add_row(
            str(r["seed"]),
            f"{e['dc_err_px']:.4f}",
            f"{e['slm_offset_err_px']:.4f}",
            f"{e['rotation_err_deg']:+.4f}",
            f"{e['lut_rms_err_rad']:.4f}",
            f"{d.get('lut_sigma_rms_rad', float('nan')):.4f}",
            f"{100 * e['defocus_rel_err']:.2f} %",
            f"{r['chi2_dof']:.2f}",
            worst or "—",
            ", ".join(d.get("undetermined", [])) or "—",
            f"{sum(ok.values())}/{len(ok)}",
            f"{r['calibration_s']:.0f}",
        )
    return t


def _psnr_table(level: str, rows: list[dict]):
    """PSNR before / export only / after, and the references of each row's bench without the
    mismatch (the trained model; calibrated and adapted the same way = the fair reference)."""
    from rich.table import Table

    t = Table(title=f"realism {level}: PSNR on held-out cells (dB)")
    cols = ["seed", "before", "export only", "after", "ref trained", "after − ref trained"]
    fair = any(r["references"]["adapted"] is not None for r in rows)
    if fair:
        cols += ["ref fair", "after − ref fair"]
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        a = r["psnr_after"]["psnr_db"]
        tr = r["references"]["trained"]["psnr_db"]
        cells = [
            str(r["seed"]),
            f"{r['psnr_before']['psnr_db']:.2f}",
            f"{r['psnr_export_only']['psnr_db']:.2f}",
            f"{a:.2f}",
            f"{tr:.2f}",
            f"{a - tr:+.2f}",
        ]
        if fair:
            ref = r["references"]["adapted"]
            cells += (
                ["—", "—"]
                if ref is None
                else [f"{ref['psnr_db']:.2f}", f"{a - ref['psnr_db']:+.2f}"]
            )
        t.add_row(*cells)
    return t


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("calibration")
    def bench_calibration(
        config: Path = typer.Option(Path("configs/sim-rig.yaml"), "--config", "-c"),
        seeds: str = typer.Option("1,2,5", "--seeds", help="hidden-mismatch seeds"),
        realism: str = typer.Option(
            "none",
            "--realism",
            help="unmodelled effects of the virtual bench: none|moderate|harsh, or a comma list "
            "(the same seeds run at each level)",
        ),
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
        """Calibration recovery (offset, rotation, LUT, defocus), χ²/dof and PSNR before /
        export only / after against two references, for several hidden-mismatch seeds at each
        realism level: tables + JSON."""
        import torch

        from dmicro_hw.calibration import scoring as S
        from dmicro_hw.calibration.bundle import ADAPTED_CHECKPOINT
        from dmicro_hw.calibration.sequence import (
            CalibrationOptions,
            LogReporter,
            default_steps,
            run_calibration,
        )
        from dmicro_hw.config import load_rig_config
        from dmicro_hw.evaluation import calibration_bench as E
        from dmicro_hw.progress import make_console
        from dmicro_hw.rig import open_rig

        torch.set_num_threads(1)
        console = make_console()
        rig0 = load_rig_config(config)
        E.require_twin(rig0, config)
        seed_list = _seeds(seeds)
        level_list = _levels(realism)
        out.mkdir(parents=True, exist_ok=True)
        ck = checkpoint or _trained_checkpoint(rig0)
        if ck is None and not no_psnr:
            ck = _train_checkpoint(out / "train", console, train_epochs_scale)
        opts = CalibrationOptions(frames_per_pattern=frames, adapt_steps=adapt_steps)
        adapt = ck is not None and not no_psnr and adapt_steps > 0
        held = None
        if ck is not None and not no_psnr:
            from dmicro_hw.training.checkpoint import load_checkpoint

            pmax = float(load_checkpoint(ck)["phase_max_rad"])
            held = S.held_out_cells(rig0, cells, pmax)

        def calibrate(rig, bdir: Path, label: str):
            """Calibrate one virtual bench through its devices; (result, truth, effects, s)."""
            import contextlib

            steps = default_steps(adapt)
            t0 = time.monotonic()
            with contextlib.ExitStack() as stack:
                r = open_rig(rig, stack)
                with console.status(f"{label}: calibrating …"):
                    res = run_calibration(
                        rig, r.slm, r.camera, steps, bdir, opts, LogReporter(), None,
                        Path(ck) if adapt else None,
                    )  # fmt: skip
                truth, effects = E.reveal_truth(r.camera, r.slm)  # scoring only
            return res, truth, effects, time.monotonic() - t0

        levels: dict[str, dict] = {}
        summary = {
            "config": str(config),
            "seeds": seed_list,
            "realism": level_list,
            "targets": S.TARGETS,
            "defocus_floor_rad": S.DEFOCUS_FLOOR_RAD,
            "psnr_targets_db": {"none": -0.5, "moderate": -1.0},
            "checkpoint": None if ck is None else str(ck),
            "held_out_cells": None if held is None else int(len(held)),
            "frames_per_pattern": frames,
            "adapt_steps": adapt_steps,
            "psnr_references": {
                "trained": "the seed's bench without its mismatch (same realism level and, "
                "above none, the same draw of unmodelled effects), trained model",
                "adapted": "the same bench without mismatch, calibrated and adapted the same "
                "way (the fair reference); one per seed above realism none",
            },
            "levels": levels,
        }
        path = out / "bench_calibration.json"

        def save() -> None:  # after every seed: a long run interrupted keeps what it measured
            text = json.dumps(summary, indent=2, default=_json_default) + "\n"
            write_text_safely(path, text)

        def references(rig_l, label: str, bdir: Path) -> dict[str, dict | None]:
            """PSNR of the trained model and of the fair reference (calibrated + adapted the
            same way) on ``rig_l``'s bench with the mismatch removed."""
            refs: dict[str, dict | None] = {"trained": None, "adapted": None}
            if held is None:
                return refs
            refs["trained"] = E.reconstruction_quality(
                rig_l, ck, held, None, mismatch_enabled=False
            )
            if adapt:
                rig_nm = rig_l.model_copy(deep=True)
                rig_nm.bench.mismatch.enabled = False
                calibrate(rig_nm, bdir, f"{label}: no-mismatch bench")
                refs["adapted"] = E.reconstruction_quality(
                    rig_nm, bdir / ADAPTED_CHECKPOINT, held, bdir, mismatch_enabled=False
                )
            console.print(
                f"{label}: no-mismatch bench PSNR trained {refs['trained']['psnr_db']:.2f} dB"
                + (
                    f", calibrated + adapted {refs['adapted']['psnr_db']:.2f} dB"
                    if refs["adapted"]
                    else ""
                )
            )
            return refs

        for level in level_list:
            rig_l = rig0.model_copy(deep=True)
            rig_l.bench.realism.level = level
            # the fair reference is the same bench without the mismatch: at `none` one bench
            # serves every seed; with unmodelled effects each seed's bench has its own draw of
            # them (realism.seed = the seed), so each seed gets its own reference
            shared = level == "none"
            refs = (
                references(rig_l, f"realism {level}", out / level / "no-mismatch")
                if shared
                else None
            )
            rows: list[dict] = []
            levels[level] = {"rows": rows, "references": refs}
            for seed in seed_list:
                rig = rig_l.model_copy(deep=True)
                rig.bench.mismatch.seed = seed
                rig.bench.mismatch.enabled = True
                bdir = out / level / f"seed-{seed}"
                if not shared:
                    rig_ref = rig_l.model_copy(deep=True)
                    rig_ref.bench.realism.seed = seed
                    row_refs = references(
                        rig_ref, f"{level} seed {seed}", out / level / f"no-mismatch-{seed}"
                    )
                else:
                    row_refs = refs
                res, truth, effects, elapsed = calibrate(rig, bdir, f"{level}: seed {seed}")
                sc = S.score_bundle(rig, bdir, truth)
                row = {"seed": seed, "calibration_s": round(elapsed, 1), **sc}
                row["chi2_dof"] = res.data["fits"]["joint"]["chi2_dof"]
                row["diagnostics"] = res.data.get("diagnostics", {})
                row["realism"] = effects
                row["references"] = row_refs
                if held is not None:
                    row["psnr_before"] = E.reconstruction_quality(rig, ck, held, None)
                    row["psnr_export_only"] = E.reconstruction_quality(rig, ck, held, bdir)
                    after_ck = bdir / ADAPTED_CHECKPOINT if adapt else ck
                    row["psnr_after"] = E.reconstruction_quality(rig, after_ck, held, bdir)
                rows.append(row)
                save()
                e = sc["errors"]
                msg = (
                    f"{level} seed {seed}: SLM offset (DC) {e['dc_err_px']:.3f} px, rotation "
                    f"{e['rotation_err_deg']:+.4f}°, LUT {e['lut_rms_err_rad']:.4f} rad, "
                    f"defocus {100 * e['defocus_rel_err']:.2f} %, χ²/dof {row['chi2_dof']:.2f}"
                )
                if held is not None:
                    msg += (
                        f"; PSNR {row['psnr_before']['psnr_db']:.2f} → "
                        f"{row['psnr_after']['psnr_db']:.2f} dB"
                    )
                console.print(msg)
            print_table(console, _recovery_table(level, rows))
            if held is not None:
                print_table(console, _psnr_table(level, rows))
            entry = levels[level]
            entry["all_recovery_targets_met"] = all(all(r["meets"].values()) for r in rows)
            if held is not None:
                for key in ("trained", "adapted"):
                    gaps = [
                        r["psnr_after"]["psnr_db"] - r["references"][key]["psnr_db"]
                        for r in rows
                        if r["references"][key] is not None
                    ]
                    if gaps:
                        entry[f"worst_gap_after_vs_{key}_db"] = min(gaps)
        save()
        console.print(f"JSON: {path}")


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)
