"""Training progress: what a :class:`~dmicro_hw.training.trainer.Trainer` reports
(:class:`ProgressHook`: epoch start, each step's loss, the epoch's record) and its display for
the commands (:class:`RichProgress`, built on :func:`dmicro_hw.progress.make_progress`: a rich
bar on a terminal, whole periodic lines on stderr otherwise). Library code prints nothing: the
default hook does nothing.
"""

from __future__ import annotations

from typing import Any


class ProgressHook:
    """Receives training progress. Default: does nothing."""

    def start_epoch(self, stage: str, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, loss: float) -> None: ...

    def end_epoch(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class RichProgress(ProgressHook):
    """A rich progress bar: one bar per epoch with the running loss (off a terminal: one whole
    line per epoch on stderr, and every few seconds within long epochs)."""

    def __init__(self, console=None, label: str = "") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from dmicro_hw.progress import make_progress

        self.label = label
        self.progress = make_progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.progress.start()
        self.task = None
        self._sum = 0.0
        self._n = 0

    def start_epoch(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        prefix = f"{self.label} " if self.label else ""
        self._sum, self._n = 0.0, 0
        self.task = self.progress.add_task(
            f"{prefix}{stage:>7} {epoch}/{epochs}", total=steps, loss=float("nan")
        )

    def step(self, loss: float) -> None:
        self._sum += loss
        self._n += 1
        self.progress.update(self.task, advance=1, loss=self._sum / self._n)

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self.task is None:
            return
        desc = self.progress.tasks[self.task].description
        extra = ""
        if record.get("val_ssim") is not None:
            what = "linear read-out" if record.get("val_readout") == "linear" else "val"
            extra = f"  {what} SSIM {record['val_ssim']:.3f} PSNR {record['val_psnr']:.1f} dB"
        self.progress.update(self.task, description=desc + extra)

    def close(self) -> None:
        self.progress.stop()
