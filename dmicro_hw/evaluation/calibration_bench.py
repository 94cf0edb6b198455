"""Calibration on the virtual bench, scored: the one place that reads the twin's hidden truth.

* :func:`reveal_truth` — the hidden mismatch (effective values of what the model family can
  describe) and the drawn unmodelled effects (``bench.realism``) of the twin behind devices;
* :func:`reconstruction_quality` — PSNR/SSIM/RMSE of a checkpoint on held-out cells imaged by a
  fresh virtual bench of a rig: the trained model *before* calibration (nominal export, original
  decoder), *export only* (the bundle's placement and LUT), *after* (adapted checkpoint), and on a
  bench *without mismatch* (the references).

The calibration itself (:mod:`dmicro_hw.calibration`) never imports this module nor the
simulators: it reaches the twin only through the rig seam (:mod:`dmicro_hw.rig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmicro_hw.calibration.adapt import slm_model_config
from dmicro_hw.config import RigConfig
from dmicro_hw.optics.sensor import ADUMap
from dmicro_hw.optics.system import Mismatch


def require_twin(rig: RigConfig, source: Any) -> None:
    """Refuse (ConfigError naming ``source``) a rig whose SLM or camera is not simulated: only
    a virtual bench has a hidden truth to score against."""
    from dmicro_hw.errors import ConfigError

    if rig.slm.backend != "sim" or rig.camera.backend != "sim":
        raise ConfigError(f"{source}: the calibration benchmark needs the sim SLM and camera")


def reveal_truth(*devices: Any) -> tuple[Mismatch, dict[str, Any]]:
    """(hidden mismatch, unmodelled effects) of the virtual bench behind ``devices``."""
    from dmicro_hw.simulators.bench import (
        bench_of,
        reveal_mismatch_for_scoring,
        reveal_realism_for_scoring,
    )

    for d in devices:
        try:
            bench = bench_of(d)
        except TypeError:
            continue
        return reveal_mismatch_for_scoring(bench), reveal_realism_for_scoring(bench)
    raise TypeError("no simulated device with a virtual bench among the devices")


def truth_of_rig(rig: RigConfig) -> tuple[Mismatch, dict[str, Any]]:
    """(hidden mismatch, unmodelled effects) of a fresh virtual bench of ``rig``."""
    from dmicro_hw.simulators.bench import (
        VirtualBench,
        reveal_mismatch_for_scoring,
        reveal_realism_for_scoring,
    )

    b = VirtualBench.from_rig(rig)
    return reveal_mismatch_for_scoring(b), reveal_realism_for_scoring(b)


@torch.no_grad()
def reconstruction_quality(
    rig: RigConfig,
    checkpoint: Path | str,
    cells: np.ndarray,
    calibration: Path | str | None = None,
    mismatch_enabled: bool = True,
    batch: int = 16,
) -> dict[str, float]:
    """PSNR/SSIM/RMSE of ``checkpoint`` on ``cells`` imaged by the virtual bench of ``rig``.

    The pattern is the checkpoint's filter through the one export path, with ``calibration``
    (a bundle folder) or the nominal placement/LUT; the frames are the bench's raw ADU (noise
    on); the decoder reads them with ``decode_adu`` (an adapted checkpoint has the camera
    response folded in; otherwise the bundle's gain/offset are undone first when given).
    """
    from dmicro_hw.calibration.adapt import was_adapted
    from dmicro_hw.export import SLMExporter, load_slm_calibration
    from dmicro_hw.simulators.bench import VirtualBench
    from dmicro_hw.training import metrics as M
    from dmicro_hw.training.checkpoint import (
        build_model_from_checkpoint,
        learned_filter,
        load_checkpoint,
    )

    ck = load_checkpoint(checkpoint)
    model, _ = build_model_from_checkpoint(ck)
    cal = load_slm_calibration(calibration) if calibration is not None else None
    grey = SLMExporter(rig.optics, slm_model_config(rig), cal).export_array(learned_filter(ck))
    bench_cfg = rig.bench.model_copy(
        update={"mismatch": rig.bench.mismatch.model_copy(update={"enabled": mismatch_enabled})}
    )
    bench = VirtualBench(rig.optics, rig.sensor, rig.slm, bench_cfg)
    adapted = was_adapted(ck)
    gain, offset = 1.0, 0.0
    if calibration is not None and not adapted:
        from dmicro_hw.calibration.bundle import load_bundle

        mm = load_bundle(calibration).mismatch
        gain, offset = mm.camera_gain, mm.camera_offset_adu
    adu_map = ADUMap.from_sensor(model.encoder.sensor.cfg, gain, offset)
    preds, targets = [], []
    for i in range(0, len(cells), batch):
        phi = cells[i : i + batch]
        adu = torch.from_numpy(bench.render_phase(phi, grey, noise=True))
        preds.append(model.decode(adu_map(adu)).clamp(0, 1))
        targets.append(model.normalised_target(torch.from_numpy(phi)))
    pred, target = torch.cat(preds), torch.cat(targets)
    m = M.phase_metrics(pred, target, model.phase_max_rad)
    return {
        "psnr_db": m["psnr"],
        "ssim": m["ssim"],
        "rmse_rad": m["rmse_rad"],
        "n_cells": int(len(cells)),
    }
