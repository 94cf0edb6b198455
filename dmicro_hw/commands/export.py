"""``dmicro export``: a trained checkpoint's Fourier filter → SLM pattern files (+ ``--show``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from dmicro_hw.commands._choices import Sampling, SlmMode, value


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="checkpoint (.pt) written by `dmicro train`"),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="rig.yaml (optics + slm); default: built-in sim rig"
        ),
        calibration: Path | None = typer.Option(
            None,
            "--calibration",
            help="calibration bundle folder (placement + LUT); default: the rig's `calibration`",
        ),
        out: Path = typer.Option(Path("runs/export"), "--out", "-o", help="output folder"),
        mode: SlmMode | None = typer.Option(
            None, "--mode", help="what the SLM modulates (default: the rig's slm.mode)"
        ),
        sampling: Sampling = typer.Option(
            Sampling.nearest, "--sampling", help="filter → SLM resampling"
        ),
        show: bool = typer.Option(False, "--show", help="display it on the rig's SLM"),
        hold: float | None = typer.Option(
            None,
            "--hold",
            help="with --show: seconds to keep it displayed (default: until Enter/Ctrl-C on a "
            "terminal, 0 otherwise)",
        ),
    ) -> None:
        """Export the learned filter of CHECKPOINT to the SLM: pattern.png/.npy + pattern.json."""
        from rich.table import Table

        from dmicro_hw.commands._export_pattern import export_checkpoint
        from dmicro_hw.config import RigConfig, load_rig_config
        from dmicro_hw.export import load_pattern
        from dmicro_hw.progress import make_console

        console = make_console()
        mode, sampling = value(mode), value(sampling)
        rig = load_rig_config(config) if config is not None else RigConfig()
        cal = calibration if calibration is not None else rig.calibration
        res = export_checkpoint(checkpoint, rig, cal, out, mode=mode, sampling=sampling)
        side = res.sidecar
        q = side["quality"]
        t = Table(title=f"SLM pattern for rig {side['rig_id']!r}", show_header=False)
        t.add_column("", style="bold")
        t.add_column("")
        t.add_row("pattern", f"{out / side['files']['png']}  {out / side['files']['npy']}")
        t.add_row("sidecar", str(res.sidecar_path))
        t.add_row("shape / bits", f"{side['shape'][0]}×{side['shape'][1]}  {side['bit_depth']}-bit")
        t.add_row("mode / encoding", f"{side['mode']} / {side['encoding']}")
        t.add_row(
            "scale",
            f"{side['slm_pixels_per_filter_sample']:.3f} SLM px per filter sample "
            f"(Fourier pitch {side['fourier_pitch_m'] * 1e6:.2f} µm, λ "
            f"{side['wavelength_m'] * 1e9:.1f} nm)",
        )
        t.add_row("placement", str(side["placement"]))
        t.add_row("global phase ψ", f"{side['phase_offset_rad']:+.3f} rad (keeps the wrap off H)")
        t.add_row("LUT", side["lut"]["source"])
        t.add_row(
            "realised filter",
            f"correlation {q['filter_correlation']:.4f} with the target, "
            f"{q['correlation_to_trained']:.4f} with the trained filter, "
            f"coverage {100 * q['coverage']:.1f} %",
        )
        t.add_row("pattern sha256", side["sha256"]["pattern"])
        console.print(t)
        if not show:
            return
        from dmicro_hw.drivers.base import open_device

        pattern = load_pattern(res.sidecar_path, rig)
        with open_device("slm", rig.slm, rig) as slm:
            slm.show(pattern.grey, pattern_id=pattern.pattern_id)
            console.print(
                f"showing pattern {pattern.pattern_id} on the {rig.slm.backend} SLM",
                highlight=False,
            )
            if hold is None and sys.stdin.isatty():
                console.print("press Enter (or Ctrl-C) to blank the SLM and exit")
                try:
                    input()
                except (EOFError, KeyboardInterrupt):
                    pass
            elif hold:
                try:
                    time.sleep(max(0.0, hold))
                except KeyboardInterrupt:
                    pass
