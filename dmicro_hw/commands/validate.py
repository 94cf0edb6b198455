"""``dmicro validate beads RUN|FOLDER``: known-object validation — fit every bead (projected
sphere: refractive index and radius with uncertainties) and compare with what was given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "–" if v is None else format(v * scale, spec)


def report_table(report: Any) -> Any:
    """A rich table of a :class:`~dmicro_hw.evaluation.bead_validation.BeadReport`."""
    from rich.table import Table

    s, p, tr, ref = report.summary, report.params, report.truth, report.reference
    t = Table(title=f"beads in {report.source}", header_style="bold")
    t.add_column("figure")
    t.add_column("measured", justify="right")
    t.add_column("given / truth", justify="right")
    what = "decoded frames" if report.kind == "run" else "phase maps"
    t.add_row(what, str(len(report.images)), "")
    t.add_row("beads ok / rejected", f"{s['count']} / {s['rejected']}", "")
    if tr is not None:
        t.add_row(
            "found / expected",
            f"{tr['found']} / {tr['expected']}",
            f"lost {tr['lost']}, spurious {tr['spurious']}",
        )
    t.add_row(
        "index: median ± spread",
        f"{_fmt(s['index_median'], '.4f')} ± {_fmt(s['index_spread'], '.4f')}",
        _fmt(p.index, ".4f"),
    )
    if "index_error_median" in s:
        t.add_row(
            "index: median |error| (bias)",
            f"{_fmt(s['index_error_median'], '.4f')} ({_fmt(s['index_bias'], '+.4f')})",
            "",
        )
    t.add_row("index: fit σ (median)", _fmt(s["index_sigma_median"], ".1e"), "")
    t.add_row("medium index", "", f"{p.medium_index:.4f}")
    t.add_row(
        "radius µm: median ± spread",
        f"{_fmt(s['radius_median_m'], '.3f', 1e6)} ± {_fmt(s['radius_spread_m'], '.3f', 1e6)}",
        _fmt(p.radius_m, ".3f", 1e6),
    )
    if tr is not None:
        t.add_row(
            "radius: |error| median (max)",
            f"{_fmt(tr['radius_error_median_rel'], '.1%')} "
            f"({_fmt(tr['radius_error_max_rel'], '.1%')})",
            "per-bead truth",
        )
    t.add_row("residual RMS rad (median)", _fmt(s["residual_rms_median_rad"], ".3f"), "")
    if ref is not None:
        t.add_row(
            "same fit on the true phase",
            f"index {_fmt(ref.get('truth_index_error_median'), '.0e')}, "
            f"radius {_fmt(ref.get('truth_radius_error_median_rel'), '.2%')}",
            f"{ref.get('truth_found')} / {ref.get('truth_expected')} found",
        )
    return t


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    validate_app = typer.Typer(
        help="Known-object validation of measured phase (beads).", no_args_is_help=True
    )
    app.add_typer(validate_app, name="validate")

    @validate_app.command("beads")
    def beads(
        path: Path = typer.Argument(
            ..., help="a run folder (RUN/run.zarr) or a folder/file of phase maps in radians"
        ),
        config: Path | None = typer.Option(
            None,
            "--config",
            "-c",
            help="rig.yaml: optics (wavelength, pixel size) and bench.beads (medium index, "
            "bead index, radius); default for a run: the rig it recorded",
        ),
        medium_index: float | None = typer.Option(None, "--medium-index", help="medium index"),
        index: float | None = typer.Option(None, "--index", help="given bead index (compare)"),
        radius_m: float | None = typer.Option(None, "--radius-m", help="given bead radius, m"),
        wavelength_m: float | None = typer.Option(None, "--wavelength-m", help="wavelength, m"),
        pixel_size_m: float | None = typer.Option(
            None, "--pixel-size-m", help="object-plane pixel pitch, m"
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            help="folder for beads.json and beads.png (default: the run folder, or "
            "runs/validate-beads for a folder of maps)",
        ),
        frames: int = typer.Option(
            32, "--frames", "-n", min=1, max=100000, help="fit at most N frames/maps (spread)"
        ),
    ) -> None:
        """Fit every bead (projected sphere) and report index and radius against the given."""
        from dmicro_hw.evaluation.bead_validation import (
            BeadOverrides,
            is_run,
            validate_beads,
            write_report,
        )
        from dmicro_hw.progress import make_console

        given = BeadOverrides(wavelength_m, pixel_size_m, medium_index, index, radius_m)
        report = validate_beads(path, frames=frames, rig_config=config, given=given)
        if out is None:
            out = Path(report.source) if is_run(path) else Path("runs/validate-beads")
        files = write_report(report, out)
        console = make_console()
        console.print(report_table(report))
        console.print(f"beads.json: {files['json']}")
        if files["figure"] is not None:
            console.print(f"figure: {files['figure']}")
