"""Scoring a calibration on the virtual bench (tests and ``dmicro bench calibration`` only).

Two kinds of numbers:

* **recovery errors** of the fitted mismatch against the bench's hidden one (which only the
  scorer reads, through :func:`~dmicro_hw.simulators.bench.reveal_mismatch_for_scoring`): SLM
  offset (SLM px), rotation (degrees), LUT phase error RMS over all grey levels (rad, both
  relative to grey 0), defocus (relative), plus the DC position, tilt, camera shift and gain;
* **reconstruction quality** on held-out synthetic cells (a stream the decoder never saw):
  PSNR/SSIM on phase normalised to [0, 1] and phase RMSE (rad), for the trained model on the
  bench *before* calibration (nominal export, original decoder), *after* (adapted checkpoint:
  compensated filter exported with the bundle's placement and LUT, adapted decoder), and on a
  bench *without mismatch* (nominal export, original decoder).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmicro_hw.calibration import lut as L
from dmicro_hw.calibration.adapt import slm_model_config
from dmicro_hw.config import RigConfig
from dmicro_hw.optics.sensor import ADUMap
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

HELD_OUT_SEED = 424242  # cells of the held-out evaluation set (never used for training)
HELD_OUT_STREAM = 9


def dc_on_slm(rig: RigConfig, mm: Mismatch) -> tuple[float, float]:
    from dmicro_hw.calibration.registration import offset_to_dc

    s = PhysicalSystem(rig.optics, rig.sensor, slm_model_config(rig), mm)
    return offset_to_dc(s)


def recovery_errors(
    rig: RigConfig, fitted: Mismatch, truth: Mismatch, lut_table: np.ndarray | None = None
) -> dict[str, float]:
    """Errors of a fitted mismatch against the truth (see the module docstring)."""
    bits, rng = rig.slm.bit_depth, rig.slm.phase_range_rad
    true_lut = L.parametric_table(truth.lut_gamma, truth.lut_scale, bits, rng)
    table = (
        np.asarray(lut_table)
        if lut_table is not None
        else L.parametric_table(fitted.lut_gamma, fitted.lut_scale, bits, rng)
    )
    dy = fitted.slm_offset_px[0] - truth.slm_offset_px[0]
    dx = fitted.slm_offset_px[1] - truth.slm_offset_px[1]
    dc_f, dc_t = dc_on_slm(rig, fitted), dc_on_slm(rig, truth)
    z_t = truth.zernike_rad.get(4, 0.0)
    z_f = fitted.zernike_rad.get(4, 0.0)
    return {
        "slm_offset_err_px": math.hypot(dy, dx),
        "slm_offset_err_y_px": dy,
        "slm_offset_err_x_px": dx,
        "dc_err_px": math.hypot(dc_f[0] - dc_t[0], dc_f[1] - dc_t[1]),
        "rotation_err_deg": math.degrees(fitted.slm_rotation_rad - truth.slm_rotation_rad),
        "scale_err": fitted.slm_scale - truth.slm_scale,
        "lut_rms_err_rad": L.lut_error_rms(table, true_lut),
        "defocus_true_rad": z_t,
        "defocus_fit_rad": z_f,
        "defocus_rel_err": abs(z_f - z_t) / max(abs(z_t), 1e-9),
        "tilt_err_cycles": math.hypot(
            fitted.tilt_cycles[0] - truth.tilt_cycles[0],
            fitted.tilt_cycles[1] - truth.tilt_cycles[1],
        ),
        "camera_shift_err_px": math.hypot(
            fitted.camera_shift_px[0] - truth.camera_shift_px[0],
            fitted.camera_shift_px[1] - truth.camera_shift_px[1],
        ),
        "camera_gain_rel_err": fitted.camera_gain / truth.camera_gain - 1,
        "zernike_rms_err_rad": float(
            np.sqrt(
                np.mean(
                    [
                        (fitted.zernike_rad.get(j, 0.0) - truth.zernike_rad.get(j, 0.0)) ** 2
                        for j in set(fitted.zernike_rad) | set(truth.zernike_rad)
                    ]
                )
            )
        ),
    }


TARGETS = {
    "slm_offset_err_px": 0.25,
    "rotation_err_deg": 0.1,
    "lut_rms_err_rad": 0.05,
    "defocus_rel_err": 0.05,
}


def meets_targets(err: dict[str, float]) -> dict[str, bool]:
    return {k: abs(err[k]) <= v for k, v in TARGETS.items()}


def held_out_cells(rig: RigConfig, n: int, phase_max_rad: float) -> np.ndarray:
    from dmicro_hw.data.phantoms import generate_cells

    return generate_cells(
        n, rig.optics.field_size, phase_max_rad, seed=HELD_OUT_SEED, stream=HELD_OUT_STREAM
    )


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


def score_bundle(rig: RigConfig, bundle_path: Path | str, truth: Mismatch) -> dict[str, Any]:
    """Recovery errors of a written bundle (its mismatch and LUT table) against the truth."""
    from dmicro_hw.calibration.bundle import load_bundle

    b = load_bundle(bundle_path, rig)
    err = recovery_errors(rig, b.mismatch, truth, b.lut)
    return {"errors": err, "meets": meets_targets(err)}
