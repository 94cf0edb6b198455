"""The rig seam: devices of a rig config, plus what only a digital twin can offer.

Calibration and acquisition talk to a rig through this module and never import the simulators:

* :class:`SamplePlane` — mount a known phase target in the sample plane and give the configured
  sample back (on a real bench the operator mounts the physical target: there is none);
* :class:`GroundTruth` — the true phase of a frame id (only a simulated bench knows it).

:func:`open_rig` opens SLM, trigger (triggered mode) and camera of a rig config, sets the camera's
trigger mode and wires the trigger, and returns them with the twins' sample plane and ground
truth (``None`` on a real bench). This is the one module besides :mod:`dmicro_hw.evaluation` that
imports :mod:`dmicro_hw.simulators` (the virtual bench implements both Protocols).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SamplePlane(Protocol):
    """Where the sample sits: ``mount(phase)`` puts a known phase (N, N) rad there, ``restore()``
    gives the configured sample back."""

    def mount(self, phase: np.ndarray) -> None: ...
    def restore(self) -> None: ...


@runtime_checkable
class GroundTruth(Protocol):
    """The true phase (N, N) rad of the sample in frame ``frame_id``."""

    def true_phase(self, frame_id: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Twins:
    """What a digital twin behind some devices offers (all ``None`` on a real bench).

    ``frame_rate_hz``: the twin's free-run frame rate (Hz) when the camera is simulated.
    """

    sample_plane: SamplePlane | None = None
    ground_truth: GroundTruth | None = None
    frame_rate_hz: float | None = None


def twins_of(*devices: Any) -> Twins:
    """The twin (virtual bench) behind any of ``devices``, as a :class:`Twins`."""
    from dmicro_hw.simulators.bench import VirtualBench

    for d in devices:
        bench = getattr(d, "_bench", None)
        if isinstance(bench, VirtualBench):
            return Twins(bench, bench, float(bench.bench_cfg.frame_rate_hz))
    return Twins()


def release_twins(rig: Any) -> None:
    """Drop the twin shared by the simulated devices of ``rig`` (its rendered stream is large):
    a process that runs many sessions must not keep one per rig config."""
    if "sim" in (rig.camera.backend, rig.slm.backend):
        from dmicro_hw.simulators.bench import release_bench

        release_bench(rig)


@dataclass
class OpenRig:
    """Opened devices of a rig (closed by the ExitStack given to :func:`open_rig`)."""

    slm: Any
    camera: Any
    trigger: Any
    twins: Twins

    @property
    def sample_plane(self) -> SamplePlane | None:
        return self.twins.sample_plane

    @property
    def ground_truth(self) -> GroundTruth | None:
        return self.twins.ground_truth


def open_rig(rig: Any, stack: contextlib.ExitStack, mode: str = "free-run") -> OpenRig:
    """Open SLM, trigger (``triggered`` only) and camera of ``rig`` onto ``stack`` (closing it
    leaves every device safe), switch the camera to ``mode`` and wire the trigger to it."""
    from dmicro_hw.drivers.base import open_device

    slm = stack.enter_context(open_device("slm", rig.slm, rig))
    trigger = None
    if mode == "triggered":
        trigger = stack.enter_context(open_device("trigger", rig.trigger, rig))
    camera = stack.enter_context(open_device("camera", rig.camera, rig))
    camera.set_trigger_mode(mode)
    if mode == "triggered":
        camera.attach_trigger(trigger)
    return OpenRig(slm, camera, trigger, twins_of(camera, slm))
