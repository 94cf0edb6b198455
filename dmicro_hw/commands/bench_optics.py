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
        peers: Path | None = typer.Option(
            None,
            "--peers",
            help="venv with peer libraries (bash scripts/install-optics-peers.sh): their "
            "padded ASM on the same input, timed against the floor in their process",
        ),
    ) -> None:
        """Time our ASM (padded, unpadded, forward+backward) and LFF encoder beside the two-FFT
        floor and the previous implementation, on identical inputs; accuracy against float64."""
        import json
        import os
        import platform

        import torch
        from rich.table import Table

        from dmicro_hw.errors import ConfigError
        from dmicro_hw.evaluation.machine_load import LoadMeter, describe
        from dmicro_hw.evaluation.optics_bench import bench_optics, bench_peers, peer_python
        from dmicro_hw.progress import make_console

        try:
            ns = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--sizes: {sizes!r} is not a comma-separated list of sizes"
            ) from None
        if not ns or any(n < 8 or n > 8192 for n in ns):
            raise ConfigError(f"--sizes: {sizes!r}: each size must be in 8…8192")
        if peers is not None:
            peer_python(peers)  # a wrong --peers fails before anything runs
            if batch != 1:
                raise ConfigError("--peers compares single fields: use --batch 1")
        torch.set_num_threads(threads)
        meter = LoadMeter()
        rows = bench_optics(ns, batch, rounds)
        peer_rows: list[dict] = []
        if peers is not None:
            by = {(r["size"], r["case"]): r["ms"] for r in rows}
            ours = {n: (by[(n, "ASM padded")], by[(n, "floor: 2 FFTs (2N)²")]) for n in ns}
            peer_rows = bench_peers(peers, ns, rounds, threads=threads, ours_ms=ours)
        load = meter.stop()
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
        t.caption = describe(load)
        console = make_console()
        console.print(t)
        if peers is not None:
            pt = Table(
                title="peers: padded angular spectrum, same input (their venv, their process)",
                caption="× floor: ms ÷ the two-FFT (2N)² floor timed in the same process; "
                "× ours: that ÷ our padded ASM's × floor; rel. error against the complex128 "
                "band-limited 2×-padded ASM, up to a global phase (other conventions count)",
            )
            for col in ("N", "peer", "status", "ms", "× floor", "× ours", "rel. error"):
                pt.add_column(col, justify="left" if col in ("peer", "status") else "right")
            for r in peer_rows:
                pt.add_row(
                    str(r["size"]),
                    r["case"],
                    r["status"],
                    "" if r.get("ms") is None else f"{r['ms']:.3f}",
                    "" if r.get("x_floor") is None else f"{r['x_floor']:.2f}",
                    "" if r.get("x_ours") is None else f"{r['x_ours']:.2f}",
                    "" if r.get("rel_error") is None else f"{r['rel_error']:.1e}",
                )
            console.print(pt)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "torch": torch.__version__,
            "threads": threads,
            "machine": platform.machine(),
            "load_avg": os.getloadavg(),
            "load": load,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "peers_venv": None if peers is None else str(peers),
        }
        doc = {"meta": meta, "rows": rows, "peers": peer_rows}
        out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        console.print(f"JSON: {out}")
