"""Drift check: a quick re-measurement compared with a stored calibration bundle.

The bundle's reference probes (flat, two edges through the DC, the DC disc, two ramps) are shown
again with the same known target. Two comparisons:

* **model check**: the bundle's fitted model predicts the new frames; χ²/dof per probe says
  whether the stored calibration still explains the bench;
* **re-fit**: the drift-prone parameters (DC position on the SLM, camera shift, gain/offset,
  defocus, tilt, and the LUT's scale when the reference has DC-disc LUT probes — the liquid
  crystal's response drifts with temperature) are re-fitted from the bundle's values (a few
  Levenberg–Marquardt iterations) and their changes compared with tolerances derived from the
  calibration targets:

    DC on the SLM moved > ``dc_px`` (0.25 SLM px)       camera shift moved > ``camera_px`` (0.25 px)
    defocus changed > ``defocus_rel`` (5 %) of its value (at least ``defocus_abs`` rad)
    camera gain changed > ``gain_rel`` (2 %)            LUT changed > ``lut_rad`` (0.03 rad RMS)
    model χ²/dof > ``chi2_max`` × the bundle's own joint-fit χ²/dof (at least ``chi2_max``)

The bundle's flat field and dark frame are applied to the new frames first (the same camera).

Any exceeded tolerance is a reason; "recalibrate: yes" when there is at least one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmicro_hw.calibration import registration as R
from dmicro_hw.calibration.bundle import CalibrationBundle
from dmicro_hw.calibration.model_fit import (
    LeastSquaresProblem,
    Observation,
    fit,
    get_params,
    residual_report,
)

log = logging.getLogger(__name__)

DRIFT_PARAMS = [
    "slm_offset_y",
    "slm_offset_x",
    "cam_shift_y",
    "cam_shift_x",
    "cam_gain",
    "cam_offset",
    "z4",
    "tilt_y",
    "tilt_x",
]


@dataclass
class DriftTolerances:
    dc_px: float = 0.25
    camera_px: float = 0.25
    defocus_rel: float = 0.05
    defocus_abs: float = 0.02
    gain_rel: float = 0.02
    lut_rad: float = 0.03
    chi2_max: float = 4.0


@dataclass
class DriftReport:
    recalibrate: bool
    reasons: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.recalibrate:
            return "recalibrate: no — every drift indicator within tolerance"
        return "recalibrate: yes — " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"recalibrate": self.recalibrate, "reasons": self.reasons, "metrics": self.metrics}


def evaluate_drift(
    run: Any, bundle: CalibrationBundle, obs: list[Observation], tol: DriftTolerances
) -> DriftReport:
    """Compare fresh observations with the bundle's model (``run.system`` holds the bundle)."""
    from dmicro_hw.calibration import lut as L

    system = run.system
    targets = run.targets
    names = DRIFT_PARAMS + (["lut_scale"] if any(o.kind == "lut" for o in obs) else [])
    before = get_params(system, names)
    dc0 = R.offset_to_dc(system)
    problem = LeastSquaresProblem(system, targets, obs, ["cam_gain"])
    r0 = problem.residuals(problem.x0)
    chi2_model = float(r0.square().sum()) / max(r0.numel() - 1, 1)
    per_probe = {k: v["rms_noise_units"] ** 2 for k, v in residual_report(problem).items()}
    res = fit(system, targets, obs, names, max_iter=10, bounds=R.BOUNDS)
    after = res.values
    dc1 = R.offset_to_dc(system)
    reasons = []
    d_dc = math.hypot(dc1[0] - dc0[0], dc1[1] - dc0[1])
    if d_dc > tol.dc_px:
        reasons.append(f"DC on the SLM moved {d_dc:.2f} px (> {tol.dc_px})")
    d_cam = math.hypot(
        after["cam_shift_y"] - before["cam_shift_y"], after["cam_shift_x"] - before["cam_shift_x"]
    )
    if d_cam > tol.camera_px:
        reasons.append(f"camera shifted {d_cam:.2f} px (> {tol.camera_px})")
    z0, z1 = before["z4"], after["z4"]
    lim = max(tol.defocus_rel * abs(z0), tol.defocus_abs)
    if abs(z1 - z0) > lim:
        reasons.append(f"defocus changed {z1 - z0:+.3f} rad (> {lim:.3f})")
    g0, g1 = before["cam_gain"], after["cam_gain"]
    if abs(g1 / g0 - 1) > tol.gain_rel:
        reasons.append(
            f"camera gain changed {100 * (g1 / g0 - 1):+.1f} % (> {100 * tol.gain_rel:g} %)"
        )
    d_lut = 0.0
    if "lut_scale" in names:
        bits, rng = system.slm_cfg.bit_depth, system.slm_cfg.phase_range_rad
        gm = get_params(system, ["lut_gamma"])["lut_gamma"]  # not re-fitted
        t0 = L.parametric_table(gm, before["lut_scale"], bits, rng)
        t1 = L.parametric_table(gm, after["lut_scale"], bits, rng)
        d_lut = L.lut_error_rms(t1, t0)
        if d_lut > tol.lut_rad:
            reasons.append(
                f"SLM phase response (LUT) changed {d_lut:.3f} rad RMS (> {tol.lut_rad})"
            )
    chi2_ref = float(bundle.data.get("fits", {}).get("joint", {}).get("chi2_dof", 1.0) or 1.0)
    chi2_lim = tol.chi2_max * max(chi2_ref, 1.0)
    if chi2_model > chi2_lim:
        worst = max(per_probe, key=per_probe.get)
        reasons.append(
            f"stored model χ²/dof {chi2_model:.1f} (> {chi2_lim:.3g}: {tol.chi2_max:g} × the "
            f"calibration's own {chi2_ref:.2f}; worst probe {worst})"
        )
    bad = [k for k, v in {**before, **after}.items() if not math.isfinite(float(v))]
    if not math.isfinite(chi2_model) or bad:
        what = ", ".join(sorted(set(bad))) or "χ²/dof"
        reasons.append(f"the model is not finite ({what} NaN/inf): the bundle cannot be trusted")
    metrics = {
        "chi2_dof_stored_model": chi2_model,
        "chi2_dof_per_probe": per_probe,
        "chi2_dof_refit": res.chi2_dof,
        "dc_shift_px": d_dc,
        "camera_shift_px": d_cam,
        "defocus_change_rad": z1 - z0,
        "gain_change_rel": g1 / g0 - 1,
        "lut_change_rms_rad": d_lut,
        "parameters_before": before,
        "parameters_after": after,
        "sigma_after": res.sigma,
        "tolerances": tol.__dict__,
        "bundle": str(bundle.path) if bundle.path else None,
    }
    return DriftReport(bool(reasons), reasons, metrics)


def check_drift(
    run: Any, bundle: CalibrationBundle, tol: DriftTolerances | None = None
) -> DriftReport:
    """Capture the bundle's reference probes again and evaluate the drift (see docstring)."""
    tol = tol or DriftTolerances()
    ids = list(bundle.data.get("drift_reference", []))
    if not ids or not bundle.probes:
        raise ValueError(f"{bundle.path}: bundle has no drift reference probes")
    if bundle.target is not None:
        run.target = np.asarray(bundle.target, dtype=np.float32)
        run.targets = {"target": run.target}
    run.rep.step("drift", len(ids) + 10, "re-measure the reference probes")
    probes = [
        R.Probe(k, "lut" if k.startswith("lut_") else "drift", np.asarray(bundle.probes[k]), {})
        for k in ids
        if k in bundle.probes
    ]
    from dmicro_hw.calibration.capture import place_target

    place_target((run.slm, run.camera), run.target)
    obs = run.capture(probes)
    run.update_noise()
    if bundle.flat is not None:  # the same camera: its flat field and dark frame apply
        g, dk, hot = bundle.flat[:3]
        for o in obs:
            o.mean = (o.mean - dk) / g
            o.var = o.var / g**2
            keep = (~np.asarray(hot, bool)).astype(np.float64)
            o.valid = keep if o.valid is None else o.valid * keep
    rep = evaluate_drift(run, bundle, obs, tol)
    run.rep.done("drift", rep.summary())
    return rep
