"""``dmicro acquire`` / ``dmicro-acquire``: stream frames from the rig into a run store, decoding
them live; a rich status line while it runs, a summary table and ``run.json`` at the end.

Ctrl-C or SIGTERM ends the run cleanly (exit 0): frames in flight are written, the decoder gets a
bounded time to catch up, the store is closed, the SLM blanked, the camera stopped and the trigger
disarmed. A second Ctrl-C aborts at once (devices are still left safe).
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import typer

from dmicro_hw.commands._choices import AcquisitionMode, Device, value


def _status_text(s: Any) -> str:
    p50 = "–" if s.decode_p50_ms is None else f"{s.decode_p50_ms:.0f}"
    p99 = "–" if s.decode_p99_ms is None else f"{s.decode_p99_ms:.0f}"
    state = "" if s.state == "running" else f"{s.state} · "
    return (
        f"{state}{s.fps:5.0f} fps · drop {s.camera_dropped + s.ring_dropped} · "
        f"queue {s.queue_writer}/{s.queue_recon} · decoded {s.decoded} "
        f"(skip {s.recon_skipped}) · p50/p99 {p50}/{p99} ms"
    )


def summary_table(summary: dict[str, Any]) -> Any:
    """A rich table of a run summary (acquire and reconstruct print it)."""
    from rich.table import Table

    from dmicro_hw.acquisition.session import scalar_summary

    t = Table(title="run summary", show_header=True, header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in scalar_summary(summary).items():
        if isinstance(v, tuple):
            v = " / ".join(
                "–" if x is None else f"{x:.1f}" if isinstance(x, float) else str(x) for x in v
            )
        elif isinstance(v, float):
            v = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        t.add_row(k, "–" if v is None else str(v))
    rec = summary.get("recon") or {}
    if rec:
        t.add_row("decoder", f"{rec.get('device')} autocast={rec.get('autocast')}")
    t.add_row("stop reason", str(summary.get("stop_reason")))
    return t


class _Preview:
    """Latest decoded phase in an OpenCV window (``--preview``), refreshed by the main thread."""

    def __init__(self, phase_max: float) -> None:
        import cv2

        self.cv2 = cv2
        self.phase_max = phase_max
        self.latest: Any = None
        self.shown = False
        cv2.namedWindow("dmicro phase", cv2.WINDOW_NORMAL)

    def push(self, frame_ids: Any, phase: Any) -> None:
        self.latest = phase[-1]

    def tick(self) -> None:
        import numpy as np

        if self.latest is not None:
            img = np.clip(self.latest / self.phase_max, 0, 1)
            self.cv2.imshow("dmicro phase", (img * 255).astype(np.uint8))
            self.shown = True
        self.cv2.waitKey(1)

    def close(self) -> None:
        self.cv2.destroyAllWindows()


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("acquire")
    def acquire(
        config: Path = typer.Option(..., "--config", "-c", help="rig config (rig.yaml)"),
        frames: int | None = typer.Option(None, "--frames", "-n", min=1, help="stop after N"),
        duration: float | None = typer.Option(
            None, "--duration", "-d", help="stop after S seconds"
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            help="run folder (run.zarr + run.json); default under acquisition.out",
        ),
        no_recon: bool = typer.Option(False, "--no-recon", help="store raw frames only"),
        mode: AcquisitionMode | None = typer.Option(
            None, "--mode", help="camera timing (default: acquisition.mode)"
        ),
        recon_device: Device | None = typer.Option(
            None, "--recon-device", help="decoder device (default: acquisition.recon_device)"
        ),
        preview: bool = typer.Option(False, "--preview", help="live phase window (OpenCV)"),
    ) -> None:
        """Acquire frames (free-run or triggered) with live reconstruction into RUN/run.zarr."""
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

        from dmicro_hw.acquisition.session import Session
        from dmicro_hw.config import load_rig_config
        from dmicro_hw.errors import ConfigError, DeviceError
        from dmicro_hw.extras import require
        from dmicro_hw.progress import make_console, make_progress

        console = make_console()
        if frames is not None and duration is not None:
            raise ConfigError("give either --frames or --duration, not both")
        if duration is not None and not (math.isfinite(duration) and 0 < duration <= 366 * 86400):
            raise ConfigError(f"--duration must be a finite number of seconds > 0, got {duration}")
        mode, recon_device = value(mode), value(recon_device)
        if preview:  # asked for on the command line: it must be able to work
            if no_recon:
                raise ConfigError(
                    "--preview shows the decoded phase: it cannot be used with --no-recon"
                )
            if not os.environ.get("DISPLAY"):
                raise ConfigError("--preview: no display to show it on (DISPLAY is not set)")
            require("cv2", "--preview")
        overrides: dict[str, Any] = {}
        if frames is not None or duration is not None:
            overrides["acquisition"] = {"frames": frames, "duration_s": duration}
        rig = load_rig_config(config, overrides or None)

        state: dict[str, Any] = {"acq": None, "signals": 0}

        def on_signal(signum: int, _frame: Any) -> None:
            state["signals"] += 1
            if state["signals"] > 1:
                raise KeyboardInterrupt  # second signal: abort now (devices still closed)
            name = signal.Signals(signum).name
            state["stop"] = name
            if state["acq"] is not None:
                state["acq"].request_stop(f"interrupted ({name})")

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        prev: _Preview | None = None
        try:
            with Session(
                rig,
                config_path=Path(config),
                frames=rig.acquisition.frames,
                duration_s=rig.acquisition.duration_s,
                out=out,
                recon=not no_recon,
                mode=mode,
                recon_device=recon_device,
            ) as session:
                console.print(f"[bold]dmicro acquire[/] rig {rig.rig_id!r} → {session.out_dir}")
                session.prepare()
                if preview and session.reconstructor is None:
                    raise ConfigError(
                        "--preview shows the decoded phase, but this run decodes nothing "
                        "(acquisition.recon: false or no checkpoint)"
                    )
                if (preview or rig.acquisition.preview) and session.reconstructor is not None:
                    if os.environ.get("DISPLAY"):
                        prev = _Preview(session.reconstructor.phase_max_rad)
                        session.on_phase = prev.push
                    else:  # acquisition.preview from the config, on a machine without display
                        console.print("[yellow]acquisition.preview: no DISPLAY, no preview[/]")
                if session.reconstructor is not None:
                    info = session.reconstructor.info()
                    console.print(
                        f"decoder: {info['device']}, field {info['field_size']}, "
                        f"×{info['compression']}, autocast {info['autocast']}"
                    )
                if "stop" in state:
                    raise KeyboardInterrupt
                acq = session.start()
                state["acq"] = acq
                if "stop" in state:
                    acq.request_stop(f"interrupted ({state['stop']})")
                total = session.frames
                progress = make_progress(
                    TextColumn("[bold blue]{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}" if total else "{task.completed}"),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"),
                    console=console,
                )
                with progress:
                    task = progress.add_task("acquiring", total=total, status="")

                    def tick(s: Any) -> None:
                        progress.update(task, completed=s.received, status=_status_text(s))
                        if prev is not None:
                            prev.tick()

                    acq.wait(poll_s=0.1, on_tick=tick)
                    summary = session.finish(on_tick=tick)
                    tick(acq.snapshot())
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if prev is not None:
                prev.close()
        console.print(summary_table(summary))
        console.print(f"store: {summary['store']}\nrun.json: {summary['run_json']}")
        errors = summary.get("errors") or []
        if errors:
            raise DeviceError(
                f"run ended early: {errors[0]} ({summary['frames_written']} frames saved in "
                f"{summary['store']})"
            )
