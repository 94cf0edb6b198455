"""``dmicro bench sim``: frame rates of the virtual bench and the simulated camera."""

from __future__ import annotations

from pathlib import Path

import typer

from dmicro_hw.safe_io import write_text_safely


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("sim")
    def sim(
        config: Path | None = typer.Option(
            None, "--config", "-c", help="rig.yaml to measure as is (default: sizes below)"
        ),
        sizes: str = typer.Option(
            "64x16,256x64", "--sizes", help="field size × compression pairs, e.g. 64x16,256x64"
        ),
        frames: int = typer.Option(2000, "--frames", min=10, help="frames per measurement"),
        rate: float | None = typer.Option(
            1000.0, "--rate", help="paced camera rate (Hz); default the rig's bench.frame_rate_hz"
        ),
        paced_seconds: float = typer.Option(
            1.0, "--paced-seconds", min=0.01, help="length of the paced-camera run"
        ),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads"),
        out: Path = typer.Option(Path("runs/bench-sim.json"), "--out", "-o", help="JSON output"),
    ) -> None:
        """Measure bench render and SimCamera rates (paced and not); prints a table, writes JSON."""
        import json
        import os
        import platform

        import torch
        from pydantic import ValidationError
        from rich.table import Table

        from dmicro_hw.config import RigConfig, load_rig_config
        from dmicro_hw.errors import ConfigError
        from dmicro_hw.evaluation.sim_throughput import measure, rig_for
        from dmicro_hw.progress import make_console

        torch.set_num_threads(threads)
        console = make_console()
        rigs: list[RigConfig] = []
        if config is not None:
            rigs.append(load_rig_config(config))
        else:
            base = RigConfig()
            for item in sizes.split(","):
                try:
                    n, c = (int(x) for x in item.lower().split("x"))
                    rigs.append(rig_for(base, n, c))
                except (ValueError, ValidationError):
                    raise ConfigError(
                        f"--sizes: {item!r} is not N x compression (e.g. 64x16, compression "
                        "one of 4, 16, 64, 256, N divisible by its bin size)"
                    ) from None
        rows = []
        for rig in rigs:
            console.print(
                f"measuring N={rig.optics.field_size} ×{rig.optics.compression} "
                f"(SLM {rig.slm.pixels[0]}×{rig.slm.pixels[1]}) …"
            )
            rows.append(
                measure(rig, frames=frames, paced_seconds=paced_seconds, paced_rate_hz=rate)
            )
        table = Table(title=f"dmicro bench sim — frames/s, {threads} torch thread(s)")
        table.add_column("measure")
        for r in rows:
            table.add_column(f"N={r['field_size']} ×{r['compression']}", justify="right")
        lines = [
            ("camera frame", lambda r: "×".join(map(str, r["frame_shape"]))),
            ("SLM pixels", lambda r: "×".join(map(str, r["slm_pixels"]))),
            ("filter build (s)", lambda r: f"{r['filter_build_s']:.3f}"),
            ("optics, 1 frame/call", lambda r: f"{r['optics_fps_single']:.0f}"),
            ("optics, batched", lambda r: f"{r['optics_fps_batched']:.0f} (b={r['optics_batch']})"),
            ("bench.render, cold bank", lambda r: f"{r['render_fps_cold_bank']:.0f}"),
            ("bench.render, warm bank", lambda r: f"{r['render_fps_warm_bank']:.0f}"),
            ("SimCamera unpaced, cold", lambda r: f"{r['camera_unpaced_fps_cold']:.0f}"),
            ("SimCamera unpaced, prefilled", lambda r: f"{r['camera_unpaced_fps_prefilled']:.0f}"),
            ("prefill one period (s)", lambda r: f"{r['camera_prefill_s']:.2f}"),
            (
                "SimCamera paced: got/target (lost)",
                lambda r: (
                    f"{r['camera_paced_fps']:.0f}/{r['camera_paced_target_hz']:.0f} "
                    f"({r['camera_paced_lost']})"
                ),
            ),
        ]
        for name, fn in lines:
            table.add_row(name, *(fn(r) for r in rows))
        console.print(table)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "torch_threads": threads,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        }
        write_text_safely(out, json.dumps({"meta": meta, "results": rows}, indent=2))
        console.print(f"wrote {out}")
