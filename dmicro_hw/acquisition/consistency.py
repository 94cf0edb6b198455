"""The measurement model a rig's frames are checked against, and the per-run consistency summary.

Which forward model explains a rig's frames:

- a displayed pattern and a calibration bundle: the bench model with the bundle's fitted mismatch
  (LUT, SLM placement, aberrations, tilt, camera registration, gain/offset, extra read noise)
  showing that pattern — the same model the calibration fitted to the rig;
- a pattern without calibration: the nominal bench model (no mismatch) showing it;
- no pattern: the checkpoint's own encoder (the simulation it was trained on).

Every decoded frame gets χ²/dof (see :mod:`dmicro_hw.optics.measurement`); frames above
``acquisition.consistency_threshold`` are counted as unreliable: the decoder's phase does not
explain what the camera measured, so it is guessing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.config import RigConfig


def measurement_for_rig(
    rig: RigConfig,
    model: Any,
    *,
    pattern_grey: np.ndarray | None = None,
    calibration: Path | str | None = None,
) -> Any:
    """The :class:`~dmicro_hw.optics.measurement.MeasurementModel` of ``rig`` (module docstring).

    ``model`` is the decoder's :class:`~dmicro_hw.training.model.DMicroModel` (its encoder is the
    fallback without a pattern).
    """
    import torch

    from dmicro_hw.optics.measurement import BenchMeasurement, EncoderMeasurement

    if pattern_grey is None:
        return EncoderMeasurement(model.encoder, rig.sensor)
    from dmicro_hw.calibration.adapt import slm_model_config
    from dmicro_hw.optics.system import Mismatch, PhysicalSystem

    mismatch = Mismatch()
    if calibration is not None:
        from dmicro_hw.calibration.bundle import load_bundle

        mismatch = load_bundle(calibration).mismatch
    system = PhysicalSystem(rig.optics, rig.sensor, slm_model_config(rig), mismatch)
    return BenchMeasurement(system, torch.as_tensor(np.asarray(pattern_grey, np.float32)))


def consistency_summary(chi2: np.ndarray, threshold: float) -> dict[str, Any]:
    """Median/p95/max of χ²/dof over checked frames and how many exceed ``threshold``."""
    v = np.asarray(chi2, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"checked": 0, "threshold": threshold, "unreliable": 0}

    def r(x: float) -> float | None:
        return round(float(x), 4) if math.isfinite(x) else None

    return {
        "checked": int(v.size),
        "threshold": threshold,
        "chi2_dof_median": r(np.median(v)),
        "chi2_dof_p95": r(np.percentile(v, 95)),
        "chi2_dof_max": r(v.max()),
        "unreliable": int((v > threshold).sum()),
        "unreliable_fraction": r((v > threshold).mean()),
    }
