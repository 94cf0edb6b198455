"""``dmicro bench acquire``: raw capture rate with zero loss, decode throughput and latency per
compression (CPU, and CUDA where present) next to the camera's frame rate, and a live check."""

from __future__ import annotations

from pathlib import Path

import typer

from dmicro_hw.safe_io import write_text_safely


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("acquire")
    def bench_acquire(
        config: Path = typer.Option(
            Path("configs/sim-rig.yaml"), "--config", "-c", help="rig (optics, sensor, decoder)"
        ),
        compressions: str = typer.Option("16,64,256", "--compressions", help="e.g. 16,64,256"),
        frames: int = typer.Option(3000, "--frames", min=100, help="frames per capture run"),
        rate: float = typer.Option(1000.0, "--rate", min=1.0, help="paced camera rate, Hz"),
        live_rate: float = typer.Option(100.0, "--live-rate", min=1.0, help="live check, Hz"),
        live_compression: int = typer.Option(64, "--live-compression"),
        live_frames: int = typer.Option(300, "--live-frames", min=10),
        decode_seconds: float = typer.Option(2.0, "--decode-seconds", min=0.2),
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="torch CPU threads (default: the live setting)"
        ),
        out: Path = typer.Option(
            Path("runs/bench-acquire.json"), "--out", "-o", help="JSON output"
        ),
    ) -> None:
        """Measure acquisition: capture fps and losses, decode fps and p99 latency; table + JSON."""
        import json
        import platform

        from rich.table import Table

        from dmicro_hw.config import COMPRESSIONS, load_rig_config
        from dmicro_hw.errors import ConfigError
        from dmicro_hw.evaluation.acquire_bench import run_benchmark
        from dmicro_hw.progress import make_console

        try:
            comps = tuple(int(x) for x in compressions.split(","))
        except ValueError:
            raise ConfigError(
                f"--compressions: {compressions!r} is not a list like 16,64,256"
            ) from None
        bad = [c for c in comps if c not in COMPRESSIONS]
        if bad or live_compression not in COMPRESSIONS:
            raise ConfigError(f"--compressions: each must be one of {list(COMPRESSIONS)}")
        rig = load_rig_config(config)
        for c in (*comps, live_compression):
            k = int(round(c**0.5))
            if rig.optics.field_size % k:
                raise ConfigError(
                    f"--compressions: ×{c} needs field_size divisible by {k} "
                    f"(rig has {rig.optics.field_size})"
                )
        console = make_console()
        res = run_benchmark(
            rig,
            compressions=comps,
            capture_frames=frames,
            capture_rate_hz=rate,
            live_rate_hz=live_rate,
            live_compression=live_compression,
            live_frames=live_frames,
            threads=threads,
            decode_seconds=decode_seconds,
            progress=lambda m: console.print(f"[dim]{m}[/]"),
        )
        res["platform"] = platform.platform()
        res["config"] = str(config)

        cap = Table(title=f"raw capture (SimCamera → ring → Zarr, no decoding), {frames} frames")
        for col in ("×k²", "frame", "camera", "sustained fps", "lost", "writer s", "waits s"):
            cap.add_column(col, justify="right")
        paced_fps: dict[int, float] = {}
        for r in res["capture"]:
            mode = f"paced {r['target_hz']:g} Hz" if r["paced"] else "unpaced"
            if r["paced"]:
                paced_fps[r["compression"]] = r["target_hz"]
            cap.add_row(
                f"×{r['compression']}",
                "×".join(map(str, r["frame_shape"])),
                mode,
                f"{r['sustained_fps'] or 0:.0f}",
                str(r["lost"]),
                f"{r['writer_s']:.2f}",
                f"{r['producer_wait_s']:.2f}",
            )
        console.print(cap)

        dec = Table(
            title=f"decode (N={res['field_size']}, {res['decoder']['kind']} from "
            f"{Path(res['decoder_from']).name}; live threads {res['torch_threads_live']})"
        )
        for col in (
            "×k²",
            "device",
            "batch",
            "frames/s",
            "batch p50 ms",
            "batch p99 ms",
            "÷ camera",
            f"÷ {live_rate:g} fps",
        ):
            dec.add_column(col, justify="right")
        for r in res["decode"]:
            cam = paced_fps.get(r["compression"], rate)
            r["ratio_to_camera"] = round(r["decode_fps"] / cam, 3)
            r["ratio_to_live_rate"] = round(r["decode_fps"] / live_rate, 3)
            dec.add_row(
                f"×{r['compression']}",
                f"{r['device']} ({r['threads'] or 'gpu'})",
                str(r["batch"]),
                f"{r['decode_fps']:.0f}",
                f"{r['batch_ms_p50']:.1f}",
                f"{r['batch_ms_p99']:.1f}",
                f"{r['ratio_to_camera']:.2f}",
                f"{r['ratio_to_live_rate']:.2f}",
            )
        console.print(dec)

        live = Table(title="live: paced stream with decoding on")
        for col in (
            "×k²",
            "rate",
            "device",
            "frames",
            "lost",
            "decoded",
            "skipped",
            "latency p50/p99 ms",
        ):
            live.add_column(col, justify="right")
        for r in res["live"]:
            live.add_row(
                f"×{r['compression']}",
                f"{r['rate_hz']:g}",
                str(r["device"]),
                str(r["frames"]),
                str(r["lost"]),
                str(r["decoded"]),
                str(r["skipped"]),
                f"{r['latency_ms_p50'] or 0:.0f} / {r['latency_ms_p99'] or 0:.0f}",
            )
        console.print(live)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_safely(out, json.dumps(res, indent=2) + "\n")
        console.print(f"written {out}")
