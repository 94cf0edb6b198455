"""Checkpoint → pattern files, the work of ``dmicro export`` (the command layer: it joins the
training checkpoint and the export, so the export package never imports training)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from dmicro_hw.calibration.bundle import WAVELENGTH_RTOL, SLMCalibration, load_slm_calibration
from dmicro_hw.config import RigConfig
from dmicro_hw.errors import CheckpointError
from dmicro_hw.export.exporter import ExportResult, Mode, export_filter
from dmicro_hw.export.exporter import Sampling as SamplingMode
from dmicro_hw.export.files import sha256_file, write_pattern

log = logging.getLogger(__name__)


def export_checkpoint(
    checkpoint: Path | str,
    rig: RigConfig,
    calibration: Path | str | SLMCalibration | None = None,
    out_dir: Path | str = "runs/export",
    mode: Mode | None = None,
    sampling: SamplingMode = "nearest",
) -> ExportResult:
    """``dmicro export``: the learned filter of ``checkpoint`` → pattern files for ``rig``.

    Raises:
        CheckpointError: unreadable checkpoint, no learned filter, a field size other than the
            rig's, or a calibration for another rig/wavelength.
    """
    from dmicro_hw.training.checkpoint import checkpoint_config, learned_filter, load_checkpoint

    ck_path = Path(checkpoint)
    ck = load_checkpoint(ck_path)
    h = learned_filter(ck)
    tcfg = checkpoint_config(ck)
    n = int(h.shape[-1])
    if n != rig.optics.field_size:
        raise CheckpointError(
            f"{ck_path}: filter is {n}×{n} (trained field_size), the rig's optics.field_size is "
            f"{rig.optics.field_size} — set optics.field_size: {n} in the rig config or re-train"
        )
    for key, rel in (("wavelength_m", WAVELENGTH_RTOL), ("pixel_size_m", 1e-3)):
        a, b = getattr(tcfg.optics, key), getattr(rig.optics, key)
        if not math.isclose(a, b, rel_tol=rel):
            log.warning("%s: trained with optics.%s = %g, the rig has %g", ck_path, key, a, b)
    cal = calibration
    if cal is not None and not isinstance(cal, SLMCalibration):
        cal = load_slm_calibration(cal)
    grey, realised, meta = export_filter(h, rig, cal, mode=mode, sampling=sampling)
    meta["checkpoint"] = {"path": str(ck_path), "sha256": sha256_file(ck_path)}
    meta["calibration"] = (
        {"path": str(cal.path) if cal.path else None, "sha256": cal.sha256} if cal else None
    )
    meta["sha256"] = {
        "checkpoint": meta["checkpoint"]["sha256"],
        "calibration": cal.sha256 if cal else None,
    }
    side_p = write_pattern(out_dir, grey, meta)
    side = json.loads(side_p.read_text(encoding="utf-8"))
    return ExportResult(side_p, side, grey, h, realised)
