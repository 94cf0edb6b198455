"""``dmicro reconstruct RUN`` (offline decoding of a stored run, the live worker's decoder) and
``dmicro view RUN`` (PNG montages of raw and phase frames, a short MP4 when OpenCV can encode)."""

from __future__ import annotations

from pathlib import Path

import typer

from dmicro_hw.commands._choices import Device, value


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("reconstruct")
    def reconstruct(
        run: Path = typer.Argument(..., help="run folder or its run.zarr"),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="decoder checkpoint (default: the one the run recorded)"
        ),
        device: Device = typer.Option(Device.auto, "--device", help="decoder device"),
        batch: int = typer.Option(32, "--batch", min=1, max=4096, help="frames per batch"),
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="torch CPU threads (default: torch's choice)"
        ),
        force: bool = typer.Option(False, "--force", help="decode every frame again"),
        dask: bool = typer.Option(
            False, "--dask", help="decode Zarr chunks with Dask (needs --force and [dask])"
        ),
        scheduler: str | None = typer.Option(
            None,
            "--scheduler",
            help="decode over Dask distributed: local[:N] (N worker processes, 1 thread each) "
            "or tcp://host:port (workers see the run at the same path); resumable",
        ),
        score: bool = typer.Option(
            True, "--score/--no-score", help="score against the simulated bench's true phase"
        ),
        consistency: bool = typer.Option(
            True,
            "--consistency/--no-consistency",
            help="re-simulate each frame from its phase and store χ²/dof",
        ),
        refine: int = typer.Option(
            0, "--refine", min=0, max=1000, help="refinement iterations per batch (0: off)"
        ),
        refine_prior: float = typer.Option(
            1.0, "--refine-prior", min=0.0, help="pull of the refinement towards the decoder"
        ),
    ) -> None:
        """Decode the frames of a stored run that have no phase yet (skipped, --no-recon)."""
        import json

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Table

        from dmicro_hw.acquisition.offline import reconstruct_store
        from dmicro_hw.acquisition.reconstruct import RefineOptions
        from dmicro_hw.errors import ConfigError
        from dmicro_hw.extras import require
        from dmicro_hw.progress import make_console, make_progress
        from dmicro_hw.safe_io import write_text_safely

        device = value(device)
        if dask and not force:
            raise ConfigError(
                "--dask decodes every frame again and needs --force (without --force, frames "
                "already decoded are kept and the chunks are walked one by one)"
            )
        if dask:
            require("dask.array", "--dask")
        if scheduler is not None:
            from dmicro_hw.acquisition.distributed import parse_scheduler

            if dask:
                raise ConfigError("--scheduler and --dask exclude each other (pick one)")
            parse_scheduler(scheduler)
            require("distributed", "--scheduler")
        if threads:
            import torch

            torch.set_num_threads(threads)
        console = make_console()
        with make_progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("decoding", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            res = reconstruct_store(
                run,
                checkpoint=checkpoint,
                device=device,
                batch=batch,
                force=force,
                use_dask=dask,
                scheduler=scheduler,
                progress=tick,
                consistency=consistency,
                refine=RefineOptions(refine, refine_prior),
            )
        if score and not res["damaged"]:
            res["score"] = _score_if_simulated(Path(res["store"]), res["decoder"])
        t = Table(title=f"reconstruct {res['store']}")
        t.add_column("figure")
        t.add_column("value", justify="right")
        for k in (
            "frames",
            "decoded",
            "already_ok",
            "decode_errors",
            "damaged",
            "chunks",
            "batch",
            "seconds",
            "fps",
        ):
            t.add_row(k, str(res[k]))
        t.add_row("decoder's own fps (time inside decode)", str(res["decoder_fps"]))
        t.add_row("fps / decoder's own fps", str(res["fps_vs_decoder"]))
        t.add_row("dask", str(res["dask"]))
        if res.get("scheduler"):
            t.add_row("scheduler (workers)", f"{res['scheduler']} ({res['workers']})")
        t.add_row("ms per frame", str(res["ms_per_frame"]))
        t.add_row("refine iterations", str(refine))
        con = res.get("consistency") or {}
        if con.get("checked"):
            t.add_row("χ²/dof median / p95", f"{con['chi2_dof_median']} / {con['chi2_dof_p95']}")
            t.add_row(f"unreliable (χ²/dof > {con['threshold']:g})", str(con["unreliable"]))
        t.add_row("decoder", f"{res['decoder']['device']} autocast={res['decoder']['autocast']}")
        sc = res.get("score") or {}
        for k in ("psnr_db_mean", "ssim_mean", "rmse_rad_mean"):
            if sc.get(k) is not None:
                t.add_row(k, f"{sc[k]:.4g}")
        console.print(t)
        out = Path(res["store"]).parent / "reconstruct.json"
        write_text_safely(out, json.dumps(res, indent=2, default=str) + "\n")
        console.print(f"summary: {out}")
        if res["damaged"]:
            from dmicro_hw.errors import DataError

            kept = res["damaged_kept_phase"]
            keep_note = f", {kept} keep the phase decoded before the damage" if kept else ""
            raise DataError(
                f"{res['store']}: {res['damaged']} frames with damaged raw data "
                f"({res['damaged_frames']}; {res['damage_example']}) not decoded, marked "
                f"recon_status 4{keep_note}; `dmicro verify` lists them"
            )

    @app.command("view")
    def view(
        run: Path = typer.Argument(..., help="run folder or its run.zarr"),
        out: Path | None = typer.Option(None, "--out", "-o", help="folder (default RUN/view)"),
        frames: int = typer.Option(16, "--frames", "-n", min=1, max=400, help="montage size"),
        mp4: bool | None = typer.Option(
            None,
            "--mp4/--no-mp4",
            help="H.264 video run.mp4 (default: when imageio-ffmpeg, extra [video], is installed)",
            show_default=False,
        ),
        fps: float = typer.Option(15.0, "--fps", min=1.0, max=240.0),
    ) -> None:
        """Write raw.png and phase.png montages and run.mp4 (raw | phase, frame ids burnt in);
        frames without phase (skipped, errors, not decoded) are marked and counted."""
        from dmicro_hw.acquisition.view import make_views
        from dmicro_hw.progress import make_console

        res = make_views(run, out, n_frames=frames, video=mp4, fps=fps)
        console = make_console()
        st = res["status"]
        rest = ", ".join(f"{v} {k}" for k, v in st.items() if v and k != "ok")
        console.print(
            f"{res['frames']} frames: {st.get('ok', 0)} with phase"
            + (f", {rest}" if rest else "")
            + f" → {res['out']}",
            soft_wrap=True,
        )
        for k, v in res["files"].items():
            if v:
                console.print(f"  {k}: {v}", soft_wrap=True)
            elif k == "mp4":
                console.print(
                    "  mp4: not written (needs imageio-ffmpeg: pip install 'dmicro-hw[video]')"
                )


def _score_if_simulated(store: Path, decoder: dict) -> dict | None:
    """Score against the ground truth of the recorded rig (the rig seam re-creates the twin of a
    simulated run); None for a real rig."""
    from dmicro_hw.acquisition.scoring import score_store
    from dmicro_hw.acquisition.store import RunReader
    from dmicro_hw.rig import recorded_ground_truth

    truth = recorded_ground_truth(RunReader(store).attrs.get("rig"), f"{store} (recorded rig)")
    if truth is None:
        return None
    return score_store(store, truth, float(decoder["phase_max_rad"]))
