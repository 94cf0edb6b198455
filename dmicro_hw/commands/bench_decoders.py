"""``dmicro bench decoders``: fps, p50/p99 latency and PSNR change of one trained decoder per
runtime (eager NCHW / channels_last, AOT-compiled graph, ONNX Runtime, int8; CUDA fp32/fp16/CUDA
graphs when a GPU is present)."""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_CHECKPOINT = Path("configs/assets/paper-x64.pt")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("decoders")
    def decoders(
        checkpoint: list[Path] = typer.Option(
            [DEFAULT_CHECKPOINT],
            "--checkpoint",
            "-c",
            help="trained checkpoint (repeat to compare architectures in one run)",
        ),
        runtimes: str = typer.Option(
            "all",
            "--runtimes",
            help="comma-separated runtimes, or 'all' (CUDA ones are skipped without a GPU): "
            "eager, compiled, onnx, onnx-int8, cuda-fp32, cuda-fp16, cuda-graph",
        ),
        batch: int = typer.Option(16, "--batch", min=1, max=1024, help="frames per batch"),
        threads: int = typer.Option(2, "--threads", min=1, max=256, help="CPU threads"),
        rounds: int = typer.Option(10, "--rounds", min=1, max=10000, help="interleaved rounds"),
        frames: int = typer.Option(
            64, "--frames", min=1, max=100000, help="evaluation frames for the PSNR columns"
        ),
        data: Path | None = typer.Option(
            None,
            "--data",
            help="evaluation data YAML or folder (default: the checkpoint's own test split)",
        ),
        cache: Path | None = typer.Option(
            None,
            "--cache",
            help="folder of built graphs (default: CKPT.runtimes/ beside each checkpoint, the "
            "folder the reconstruction worker loads them from)",
        ),
        out: Path = typer.Option(
            Path("runs/bench-decoders.json"), "--out", "-o", help="JSON results"
        ),
    ) -> None:
        """Decode the checkpoint's evaluation frames with every runtime: accuracy (PSNR against
        the true phase, its change vs eager float32, max |Δ|) and speed (interleaved rounds on
        one batch: fps at the median batch latency, best fps, p50/p99 ms, × the eager NCHW
        baseline). Built graphs are cached, so `dmicro-acquire` and `dmicro reconstruct` load
        them instead of building them."""
        import json
        import platform
        from dataclasses import asdict

        import torch
        from rich.table import Table

        from dmicro_hw.errors import ConfigError
        from dmicro_hw.evaluation.decoder_bench import bench_decoders
        from dmicro_hw.evaluation.machine_load import LoadMeter, describe
        from dmicro_hw.models.runtime import RUNTIMES
        from dmicro_hw.progress import make_console

        names = (
            list(RUNTIMES)
            if runtimes.strip() == "all"
            else [r.strip() for r in runtimes.split(",") if r.strip()]
        )
        bad = [r for r in names if r not in RUNTIMES]
        if bad or not names:
            raise ConfigError(
                f"--runtimes: {', '.join(bad) or repr(runtimes)} unknown; choose from "
                f"{', '.join(RUNTIMES)} or 'all'"
            )
        for ck in checkpoint:
            if not ck.is_file():
                raise ConfigError(f"--checkpoint: {ck} is not a file")
        data_cfg = None
        if data is not None:
            from dmicro_hw.evaluation.checkpoint_eval import load_eval_data
            from dmicro_hw.training.checkpoint import checkpoint_config

            pmax = checkpoint_config(checkpoint[0]).data.phase_max_rad
            data_cfg = load_eval_data(data, pmax)[0]
        torch.set_num_threads(threads)
        meter = LoadMeter()
        rows = bench_decoders(
            checkpoint,
            names,
            batch=batch,
            rounds=rounds,
            frames=frames,
            data=data_cfg,
            cache_dir=cache,
            threads=threads,
        )
        load = meter.stop()
        t = Table(
            title=f"dmicro bench decoders (batch {batch}, {threads} thread(s), "
            f"{rounds} interleaved rounds)",
            caption=describe(load),
        )
        cols = ("decoder", "runtime", "fps", "best fps", "p50 ms", "p99 ms", "× nchw",
                "PSNR dB", "ΔPSNR dB", "max |Δ|", "build s")  # fmt: skip
        for col in cols:
            t.add_column(col, justify="left" if col in ("decoder", "runtime") else "right")

        def f(v, fmt):
            return "" if v is None else format(v, fmt)

        for r in rows:
            if r.status != "ok":
                t.add_row(Path(r.checkpoint).name, r.runtime, r.status, *[""] * 8)
                continue
            built = "" if r.build_s is None else f"{r.build_s:.1f}" + (" (cache)" * bool(r.cached))
            t.add_row(
                f"{Path(r.checkpoint).name} ({r.arch})",
                r.runtime,
                f(r.fps, ".0f"),
                f(r.best_fps, ".0f"),
                f(r.p50_ms, ".1f"),
                f(r.p99_ms, ".1f"),
                f(r.speedup_vs_nchw, ".2f"),
                f(r.psnr_db, ".2f"),
                f(r.dpsnr_db, "+.3f"),
                f(r.max_abs_err, ".1e"),
                built,
            )
        console = make_console()
        console.print(t)
        try:
            import onnxruntime

            ort_version = onnxruntime.__version__
        except ImportError:
            ort_version = None
        meta = {
            "torch": torch.__version__,
            "onnxruntime": ort_version,
            "threads": threads,
            "batch": batch,
            "rounds": rounds,
            "frames": frames,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load": load,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "rows": [asdict(r) for r in rows]}
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"JSON: {out}")
