"""``dmicro bench optics``: propagators and the LFF encoder against the two-FFT floor."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("optics")
    def optics(
        sizes: str = typer.Option("256,1024", "--sizes", help="field sizes N, comma-separated"),
        batch: int = typer.Option(1, "--batch", min=1, max=256, help="fields per call"),
        rounds: int = typer.Option(10, "--rounds", min=1, help="interleaved rounds (min kept)"),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads"),
        out: Path = typer.Option(Path("runs/bench-optics.json"), "--out", "-o", help="JSON"),
    ) -> None:
        """Time our ASM (padded, unpadded, forward+backward) and LFF encoder beside the two-FFT
        floor and the previous implementation, on identical inputs; accuracy against float64."""
        import json
        import os
        import platform

        import torch
        from rich.table import Table

        from dmicro_hw.errors import ConfigError
        from dmicro_hw.evaluation.optics_bench import bench_optics
        from dmicro_hw.progress import make_console

        try:
            ns = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--sizes: {sizes!r} is not a comma-separated list of sizes"
            ) from None
        if not ns or any(n < 8 or n > 8192 for n in ns):
            raise ConfigError(f"--sizes: {sizes!r}: each size must be in 8…8192")
        torch.set_num_threads(threads)
        rows = bench_optics(ns, batch, rounds)
        t = Table(
            title=f"dmicro bench optics (batch {batch}, {threads} thread(s), min of {rounds})"
        )
        for col in ("N", "case", "ms", "× floor", "× faster than before", "rel. error"):
            t.add_column(col, justify="left" if col == "case" else "right")
        for r in rows:
            t.add_row(
                str(r["size"]),
                r["case"],
                f"{r['ms']:.3f}",
                "" if r["x_floor"] is None else f"{r['x_floor']:.2f}",
                "" if r["speedup_vs_before"] is None else f"{r['speedup_vs_before']:.2f}",
                "" if r["rel_error"] is None else f"{r['rel_error']:.1e}",
            )
        console = make_console()
        console.print(t)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "torch": torch.__version__,
            "threads": threads,
            "machine": platform.machine(),
            "load_avg": os.getloadavg(),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "peers": "not run: odak, svetlanna, torchoptics, hcipy, prysm, diffractsim are not "
            "installed here (no separate peer venv yet)",
        }
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
        console.print(f"JSON: {out}")
