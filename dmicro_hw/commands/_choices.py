"""Fixed choices of command-line options, as enums: ``--help`` lists them, the shell completes
them and click refuses anything else with one usage line. Commands take ``.value`` (a plain str)."""

from __future__ import annotations

from enum import Enum


class Device(str, Enum):
    """Torch device of a command (``auto``: CUDA when available)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class AcquisitionMode(str, Enum):
    """Camera timing (``acquisition.mode``)."""

    free_run = "free-run"
    triggered = "triggered"


class SlmMode(str, Enum):
    """What the SLM modulates (``slm.mode``)."""

    phase = "phase"
    amplitude_phase = "amplitude_phase"


class Sampling(str, Enum):
    """Filter → SLM resampling."""

    nearest = "nearest"
    bilinear = "bilinear"


class BenchPreset(str, Enum):
    """Scale of ``dmicro bench paper``."""

    quick = "quick"
    paper_cpu = "paper-cpu"
    full = "full"


class DeviceKind(str, Enum):
    """A device of the rig."""

    slm = "slm"
    camera = "camera"
    trigger = "trigger"


def value(choice: Enum | str | None) -> str | None:
    """The plain string of an enum choice (None stays None)."""
    return None if choice is None else str(getattr(choice, "value", choice))
