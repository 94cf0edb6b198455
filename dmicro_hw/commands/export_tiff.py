"""``dmicro export-tiff RUN``: OME-TIFF files of a run's raw and phase images (tifffile), for
software that reads OME-TIFF but not OME-Zarr (Fiji/Bio-Formats, OMERO import, …)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("export-tiff")
    def export_tiff(
        run: Path = typer.Argument(..., help="run folder or its run.zarr"),
        out: Path | None = typer.Option(None, "--out", "-o", help="folder (default RUN/ome-tiff)"),
    ) -> None:
        """Write RUN/ome-tiff/raw.ome.tif and phase.ome.tif (T, Y, X; µm pixels, s per frame)."""
        from dmicro_hw.acquisition.ome_tiff import export_ome_tiff

        res = export_ome_tiff(run, out)
        for name, f in res["files"].items():
            shape = "×".join(str(s) for s in f["shape"])
            typer.echo(f"{name}: {f['path']} ({shape} {f['dtype']})")
