"""The rig seam: devices of a rig config, plus what only a digital twin can offer.

Calibration and acquisition talk to a rig through this module and never import the simulators:

* :class:`SamplePlane` — mount a known phase target in the sample plane and give the configured
  sample back (on a real bench the operator mounts the physical target: there is none);
* :class:`GroundTruth` — the true phase of a frame id (only a simulated bench knows it).

:func:`open_rig` opens SLM, trigger (triggered mode) and camera of a rig config, sets the camera's
trigger mode and wires the trigger, and returns them with the twins' sample plane and ground
truth (``None`` on a real bench). This is the one module besides :mod:`dmicro_hw.evaluation` that
imports :mod:`dmicro_hw.simulators` (the virtual bench implements both Protocols).

*Wiring of the twins.* When the SLM or the camera of a rig is simulated, :func:`open_rig` builds
the rig's one :class:`~dmicro_hw.simulators.bench.VirtualBench` and hands it to the simulated
devices (``bench=`` of their factories), so that the camera images what the SLM shows. Nothing is
kept between calls: the bench lives as long as the devices that hold it. A simulated device
opened alone (``open_device``) gets a private bench of its own.
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


#: (device kind, backend) pairs that are twins on the rig's shared virtual bench
TWIN_BACKENDS = frozenset({("slm", "sim"), ("camera", "sim")})


def shared_bench(rig: Any) -> Any:
    """A fresh :class:`~dmicro_hw.simulators.bench.VirtualBench` of ``rig`` when its SLM or
    camera is simulated, else ``None``."""
    if not any((k, getattr(rig, k).backend) in TWIN_BACKENDS for k in ("slm", "camera")):
        return None
    from dmicro_hw.simulators.bench import VirtualBench

    return VirtualBench.from_rig(rig)


def recorded_ground_truth(rig: dict[str, Any] | None, where: str) -> GroundTruth | None:
    """The ground truth of a run recorded on ``rig`` (the config dict stored with the run, as
    ``rig.model_dump()``): the virtual bench re-created from it when the camera was simulated (its
    sample stream depends only on the config), ``None`` for a real camera or no recorded rig.
    ``where`` names the run in the message of an invalid recorded config."""
    if not rig or ("camera", (rig.get("camera") or {}).get("backend")) not in TWIN_BACKENDS:
        return None
    from dmicro_hw.config import RigConfig, validate

    return shared_bench(validate(RigConfig, rig, where))


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

    bench = shared_bench(rig)

    def device(kind: Any, section: Any) -> Any:
        wiring = {"bench": bench} if (kind, section.backend) in TWIN_BACKENDS else {}
        return stack.enter_context(open_device(kind, section, rig, **wiring))

    slm = device("slm", rig.slm)
    trigger = None
    if mode == "triggered":
        trigger = device("trigger", rig.trigger)
    camera = device("camera", rig.camera)
    camera.set_trigger_mode(mode)
    if mode == "triggered":
        camera.attach_trigger(trigger)
    return OpenRig(slm, camera, trigger, twins_of(camera, slm))
