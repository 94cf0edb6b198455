"""Phase data: phantom families and their mixtures, beads (exact spheres), calibration targets,
user folders of phase maps.

Every dataset yields float32 tensors (N, N) of phase in radians within [0, ``phase_max_rad``]
and exposes ``phase_max_rad`` so the training can normalise targets to [0, 1].

Import cost: :mod:`dmicro_hw.data.phantoms` needs only numpy/scipy; the datasets import torch
(loaded lazily on first use of the names below).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FAMILY_NAMES",
    "FolderPhaseDataset",
    "MixturePhaseDataset",
    "SyntheticPhaseDataset",
    "build_datasets",
    "generate_beads",
    "generate_cells",
    "phase_target",
    "sphere_phase",
]

_LAZY = {
    "FAMILY_NAMES": "dmicro_hw.data.families",
    "FolderPhaseDataset": "dmicro_hw.data.folder",
    "MixturePhaseDataset": "dmicro_hw.data.synthetic",
    "SyntheticPhaseDataset": "dmicro_hw.data.synthetic",
    "build_datasets": "dmicro_hw.data.datasets",
    "generate_beads": "dmicro_hw.data.beads",
    "generate_cells": "dmicro_hw.data.phantoms",
    "phase_target": "dmicro_hw.data.phantoms",
    "sphere_phase": "dmicro_hw.data.beads",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dmicro_hw.data' has no attribute {name!r}")
