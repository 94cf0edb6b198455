"""Digital twins of the bench devices, used by CI in place of hardware.

* :class:`~.bench.VirtualBench`: sample stream + 4f optics with a hidden mismatch + sensor.
* :class:`~.sim_slm.SimSLM`, :class:`~.sim_camera.SimCamera`: SLM/Camera protocol devices on a
  shared bench (``slm.backend: sim``, ``camera.backend: sim``), built and handed to both by
  :func:`dmicro_hw.rig.open_rig`.
* :class:`~.replay_camera.ReplayCamera` (``camera.backend: replay``): replays a recording.
* :mod:`.faults`: dropped/late frames, timeouts, disconnects, saturation.

Scoring helpers (tests and benchmarks only): :func:`~.bench.bench_of` (the bench behind a sim
device, for ``true_phase``) and :func:`~.bench.reveal_mismatch_for_scoring`.

Submodules are imported lazily (``import dmicro_hw.simulators`` pulls in no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VirtualBench": "bench",
    "bench_of": "bench",
    "reveal_mismatch_for_scoring": "bench",
    "SimSLM": "sim_slm",
    "SimCamera": "sim_camera",
    "ReplayCamera": "replay_camera",
    "FaultInjector": "faults",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
