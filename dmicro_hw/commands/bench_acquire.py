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
        min_repeats: int = typer.Option(
            3, "--min-repeats", min=1, max=100, help="whole runs before judging stability"
        ),
        max_repeats: int = typer.Option(
            6, "--max-repeats", min=1, max=100, help="stop after this many runs, stable or not"
        ),
        tolerance: float = typer.Option(
            0.15,
            "--tolerance",
            min=0.0,
            help="stable when every figure of the last 3 runs is within this fraction "
            "((max − min) / median)",
        ),
    ) -> None:
        """Measure acquisition: capture fps and losses, decode fps and p99 latency; repeated
        until the figures are stable (or --max-repeats), with the machine's load of each run;
        tables show the median of the last 3 runs; table + JSON."""
        import json
        import platform

        from rich.table import Table

        from dmicro_hw.config import COMPRESSIONS, load_rig_config
        from dmicro_hw.errors import ConfigError
        from dmicro_hw.evaluation.acquire_bench import run_benchmark
        from dmicro_hw.evaluation.machine_load import describe
        from dmicro_hw.evaluation.stable_repeats import repeat_until_stable
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
        if min_repeats > max_repeats:
            raise ConfigError(
                f"--min-repeats ({min_repeats}) must not exceed --max-repeats ({max_repeats})"
            )
        console = make_console()

        def once(i: int) -> dict:
            console.print(f"[bold]run {i + 1} (at most {max_repeats})[/]")
            return run_benchmark(
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

        def said(i: int, load: dict, stable: bool) -> None:
            console.print(f"[dim]run {i + 1}: {describe(load)}; stable: {stable}[/]")

        rep = repeat_until_stable(
            once,
            acquire_figures,
            min_repeats=min_repeats,
            max_repeats=max_repeats,
            window=min(3, max_repeats),
            tol=tolerance,
            on_repeat=said,
        )
        res = with_medians(rep.runs[-1], rep.figures)
        res["stability"] = rep.to_json()
        res["platform"] = platform.platform()
        res["config"] = str(config)
        reps = Table(
            title=f"runs ({'stable' if rep.stable else 'NOT stable'}: last {rep.window} within "
            f"{100 * tolerance:.0f} %; tables below = their medians)"
        )
        for col in ("run", "seconds", "load 1/5/15 min", "CPUs", "other processes' CPU"):
            reps.add_column(col, justify="right")
        for i, ld in enumerate(rep.loads):
            la = ld.get("load_avg")
            others = ld.get("others_share")
            reps.add_row(
                str(i + 1),
                f"{ld['seconds']:.0f}",
                "/".join(f"{x:.1f}" for x in la) if la else "n/a",
                str(ld.get("usable_cpus")),
                "n/a" if others is None else f"{100 * others:.0f} %",
            )
        worst = sorted(rep.figures.items(), key=lambda kv: -kv[1]["spread"])[:3]
        reps.caption = "largest spreads: " + ", ".join(
            f"{k} {100 * v['spread']:.0f} %" for k, v in worst
        )

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
        console.print(reps)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_safely(out, json.dumps(res, indent=2) + "\n")
        console.print(f"written {out}")


#: per table, the row fields that must be stable across runs, and how a row is named
_FIGURES = {
    "capture": (("sustained_fps",), lambda r: f"capture ×{r['compression']} "
                + ("paced" if r["paced"] else "unpaced")),
    "decode": (("decode_fps",), lambda r: f"decode ×{r['compression']} {r['device']} "
               f"b{r['batch']}"),
    "live": (("latency_ms_p99",), lambda r: f"live ×{r['compression']} {r['device']}"),
}  # fmt: skip


def acquire_figures(res: dict) -> dict[str, float]:
    """The numbers of one ``run_benchmark`` result that must agree between runs, by name
    ('decode ×64 cpu b8 decode_fps': 231.0, …)."""
    out = {}
    for table, (keys, name) in _FIGURES.items():
        for r in res.get(table, []):
            for k in keys:
                if r.get(k) is not None:
                    out[f"{name(r)} {k}"] = float(r[k])
    return out


def with_medians(res: dict, figures: dict[str, dict]) -> dict:
    """A copy of ``res`` whose stability figures are replaced by their medians over the window."""
    import copy

    res = copy.deepcopy(res)
    for table, (keys, name) in _FIGURES.items():
        for r in res.get(table, []):
            for k in keys:
                f = figures.get(f"{name(r)} {k}")
                if f is not None:
                    r[k] = f["median"]
    return res
