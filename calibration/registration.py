"""Registration: camera grid ↔ simulated image grid, and SLM ↔ Fourier plane.

Three probe families, each with a documented measurement:

1. **Camera and pupil** (SLM flat, grey 0 — the filter is then the bare pupil): the frame of the
   known target is fitted for camera shift/rotation/scale, gain/offset, the pupil's Zernike
   terms and the illumination tilt (:func:`fit_camera_and_pupil`). Bright-field images of a phase
   target carry the aberrations only at second order, so the fit is started from several defocus
   values (both signs) with a coarse grid over the tilt, and the best χ² wins.
2. **Where the optical axis lands on the SLM** — a knife-edge scan in the Fourier plane
   (:func:`knife_edge_probes`, :func:`locate_dc`): a half-plane of grey 128 (≈ π) is stepped
   across the SLM along x and then y. The unscattered light (the DC of the target's spectrum)
   is focused to one filter sample; the frame changes most between two edge positions that
   enclose it, so the peak of ‖F(s_{i+1}) − F(s_i)‖² (parabolic interpolation) gives the DC
   position on the SLM in pixels — model-free, with no assumption on the LUT. This is
   offset + M·tilt (M the SLM placement matrix): the part of the placement every displayed mask
   is referenced to.
3. **SLM rotation and scale** — blazed gratings (:func:`ramp_probes`): a ramp of k rad/SLM px
   shifts the image by N·Mᵀk/2π samples, so four ramps (0°, 90°, 180°, 270°) fix the linear map
   M = scale·ratio·R(θ). Together with edges through the located DC and phase discs on it,
   :func:`fit_slm_placement` fits offset, rotation, scale, the LUT's γ/scale and gain/offset by
   Levenberg–Marquardt through the differentiable model, started at the knife-edge estimate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dmicro_hw.calibration import patterns as P
from dmicro_hw.calibration.model_fit import (
    FitResult,
    ForwardModel,
    Observation,
    fit,
    get_params,
    set_params,
)
from dmicro_hw.optics.system import PhysicalSystem

log = logging.getLogger(__name__)

CAMERA_PARAMS = [
    "cam_shift_y",
    "cam_shift_x",
    "cam_rotation",
    "cam_scale",
    "cam_gain",
    "cam_offset",
]
TILT_PARAMS = ["tilt_y", "tilt_x"]
SLM_GEOMETRY_PARAMS = ["slm_offset_y", "slm_offset_x", "slm_rotation", "slm_scale"]
LUT_PARAMS = ["lut_gamma", "lut_scale"]
BOUNDS: dict[str, tuple[float, float]] = {
    "cam_shift_y": (-8.0, 8.0),
    "cam_shift_x": (-8.0, 8.0),
    "cam_rotation": (-0.1, 0.1),
    "cam_scale": (0.8, 1.2),
    "cam_gain": (0.2, 5.0),
    "tilt_y": (-0.6, 0.6),
    "tilt_x": (-0.6, 0.6),
    "slm_rotation": (-0.2, 0.2),
    "slm_scale": (0.8, 1.2),
    "lut_gamma": (0.3, 3.0),
    "lut_scale": (0.5, 2.0),
}


def zernike_params(system: PhysicalSystem) -> list[str]:
    return [f"z{j}" for j in system.zernike_terms]


def joint_params(system: PhysicalSystem) -> list[str]:
    """Every parameter of the joint fit: camera, tilt, Zernike terms, SLM placement, LUT, and
    the illumination envelope once the flat-field step has added it."""
    from dmicro_hw.calibration.model_fit import param_specs

    illum = [n for n in param_specs(system) if n.startswith("illum_")]
    return (
        CAMERA_PARAMS + TILT_PARAMS + zernike_params(system) + SLM_GEOMETRY_PARAMS + LUT_PARAMS
    ) + illum


@dataclass
class Probe:
    """A pattern to display: id, family, grey levels (R, C) and metadata (e.g. edge position)."""

    pattern_id: str
    kind: str
    grey: np.ndarray
    meta: dict


# --------------------------------------------------------------------------------------------
# 1. camera registration and pupil
# --------------------------------------------------------------------------------------------


def camera_probes(shape: tuple[int, int]) -> list[Probe]:
    return [Probe("flat", "flat", P.flat(shape), {})]


def _tilt_grid(
    system: PhysicalSystem, targets, obs: Sequence[Observation], step: float = 0.02, sweeps: int = 2
):
    """Set the tilt to the best point of alternating 1-D grids over [−½, ½] cycles.

    With the SLM flat the tilt shows only where the spectrum meets the pupil (its edge and the
    aberrations at u + tilt), weakly; the knife-edge scan then fixes the DC on the SLM (offset +
    M·tilt) and the joint fit the split. Gain and offset are regressed at every grid point.
    """
    fm = ForwardModel(system, targets, obs)
    y = np.concatenate([o.mean.ravel() for o in obs])
    w = np.concatenate([o.weight.ravel() for o in obs])

    def chi2() -> float:
        f = fm.frames().numpy().ravel()
        a = np.stack([f, np.ones_like(f)], 1) * w[:, None]
        coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
        return float(np.mean((a @ coef - y * w) ** 2))

    grid = np.arange(-0.5, 0.5 + 1e-9, step)
    best = chi2()
    for _ in range(sweeps):
        for name in ("tilt_y", "tilt_x"):
            vals = []
            for t in grid:
                set_params(system, {name: float(t)})
                vals.append(chi2())
            k = int(np.argmin(vals))
            set_params(system, {name: float(grid[k])})
            best = vals[k]
    return best


def fit_camera_and_pupil(
    system: PhysicalSystem,
    targets: dict[str, np.ndarray],
    obs: Sequence[Observation],
    defocus_starts: Sequence[float] = (-0.3, 0.3, -0.6, 0.6, 0.0),
    max_iter: int = 20,
    rounds: int = 2,
    good_chi2: float = 1.5,
    progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Camera shift/rotation/scale, gain/offset, Zernike terms and tilt from flat-SLM frames.

    Multi-start over defocus (both signs), a tilt grid per start, then Levenberg–Marquardt;
    the start with the lowest χ² is kept and written into ``system``.
    """
    names = CAMERA_PARAMS + TILT_PARAMS + zernike_params(system)
    base = get_params(system, names)
    best: tuple[float, dict[str, float], FitResult] | None = None
    for i, z4 in enumerate(defocus_starts):
        set_params(system, {**base, **{n: 0.0 for n in zernike_params(system)}, "z4": z4})
        first = ["cam_shift_y", "cam_shift_x", "cam_gain", *zernike_params(system)]
        fit(system, targets, obs, first, max_iter=8, bounds=BOUNDS)
        for _ in range(rounds):
            _tilt_grid(system, targets, obs)
            res = fit(system, targets, obs, names, max_iter=max_iter, bounds=BOUNDS)
        if progress:
            progress(f"camera/pupil start {i + 1}/{len(defocus_starts)}: χ²/dof {res.chi2_dof:.2f}")
        if best is None or res.chi2_dof < best[0]:
            best = (res.chi2_dof, get_params(system, names), res)
        if i >= 1 and best[0] < good_chi2:
            break  # two starts tried and the fit explains the frames: no need for more
    assert best is not None
    set_params(system, best[1])
    return best[2]


# --------------------------------------------------------------------------------------------
# 2. knife-edge scan: the DC position on the SLM
# --------------------------------------------------------------------------------------------


def knife_edge_probes(
    shape: tuple[int, int],
    span_px: float,
    step_px: float,
    grey: int,
    centre: tuple[float, float] = (0.0, 0.0),
) -> list[Probe]:
    """Half-planes stepped along x (angle 0) then y (angle 90°) over ±span around ``centre``."""
    positions = np.arange(-span_px, span_px + 1e-9, step_px)
    out = []
    for axis, angle in (("x", 0.0), ("y", math.pi / 2)):
        c0 = centre[1] if axis == "x" else centre[0]
        for k, s in enumerate(positions):
            pos = float(c0 + s)
            g = P.edge(shape, angle, pos, grey)
            out.append(Probe(f"edge_{axis}{k:02d}", "knife", g, {"axis": axis, "position": pos}))
    return out


def locate_dc(obs: Sequence[Observation]) -> dict[str, float]:
    """DC position on the SLM (dy, dx) in pixels from a knife-edge scan (see module docstring).

    Returns {"dy", "dx", "sigma_y", "sigma_x"}; σ is the half-width of the interpolation cell
    over √12 inflated by the peak's sharpness — a coarse start for the model fit.
    """
    out: dict[str, float] = {}
    for axis in ("y", "x"):
        scan = sorted(
            (o for o in obs if o.meta.get("axis") == axis), key=lambda o: o.meta["position"]
        )
        if len(scan) < 3:
            raise ValueError(f"knife-edge scan along {axis} needs ≥ 3 positions")
        pos = np.array([o.meta["position"] for o in scan])
        frames = np.stack([o.mean for o in scan])
        noise = np.stack([o.sigma_mean for o in scan])
        d = np.diff(frames, axis=0)
        nvar = noise[1:] ** 2 + noise[:-1] ** 2
        energy = np.sum(d**2 - nvar, axis=(1, 2))
        mid = 0.5 * (pos[1:] + pos[:-1])
        i = int(np.argmax(energy))
        step = float(np.median(np.diff(pos)))
        if 0 < i < len(energy) - 1:
            y0, y1, y2 = energy[i - 1], energy[i], energy[i + 1]
            den = y0 - 2 * y1 + y2
            frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
            frac = float(np.clip(frac, -0.5, 0.5))
        else:
            frac = 0.0
        out["d" + axis] = float(mid[i] + frac * step)
        out["sigma_" + axis] = step / math.sqrt(12)
    return out


def refine_dc(
    system: PhysicalSystem,
    targets: dict[str, np.ndarray],
    obs: Sequence[Observation],
    dc: dict[str, float],
    window_px: float,
) -> FitResult:
    """Model-based refinement of the knife-edge estimate.

    The knife-edge frames whose edge lies within ``window_px`` of the estimated DC are fitted for
    the SLM offset (and the LUT scale, standing in for the unknown phase of grey 128) with the
    camera and pupil parameters of step 1 fixed; ``system``'s offset is started at the estimate.
    """
    near = [
        o
        for o in obs
        if abs(o.meta["position"] - (dc["dx"] if o.meta["axis"] == "x" else dc["dy"])) <= window_px
    ]
    off = dc_to_offset(system, (dc["dy"], dc["dx"]))
    set_params(system, {"slm_offset_y": off[0], "slm_offset_x": off[1]})
    names = ["slm_offset_y", "slm_offset_x", "lut_scale", "cam_gain"]
    return fit(system, targets, near, names, max_iter=15, bounds=BOUNDS)


# --------------------------------------------------------------------------------------------
# 3. SLM placement: ramps, edges and discs through the located DC
# --------------------------------------------------------------------------------------------


def ramp_probes(shape: tuple[int, int], period_px: float, bit_depth: int) -> list[Probe]:
    out = []
    for deg in (0, 90, 180, 270):
        g = P.ramp(shape, period_px, math.radians(deg), bit_depth)
        out.append(Probe(f"ramp{deg:03d}", "ramp", g, {"period_px": period_px, "angle_deg": deg}))
    return out


def placement_probes(
    shape: tuple[int, int], dc: tuple[float, float], ratio: float, grey: int = 128
) -> list[Probe]:
    """Edges through the DC at 4 angles, and phase discs on it (radii 1.5 and 4 filter samples)."""
    out = []
    for deg in (0, 90, 180, 270):
        a = math.radians(deg)
        g = P.edge(shape, a, 0.0, grey, centre=dc)
        out.append(Probe(f"edge{deg:03d}", "edge", g, {"angle_deg": deg, "centre": list(dc)}))
    for rf in (1.5, 4.0):
        g = P.disc(shape, dc, rf * ratio, grey)
        out.append(Probe(f"disc_r{rf:g}", "disc", g, {"radius_samples": rf, "centre": list(dc)}))
    return out


def dc_to_offset(system: PhysicalSystem, dc: tuple[float, float]) -> tuple[float, float]:
    """SLM offset for which the tilted DC lands at ``dc`` (SLM px from the nominal centre)."""
    import torch

    g = system.slm.geometry
    n = system.optics.field_size
    with torch.no_grad():
        saved = g.offset_px.detach().clone()
        g.offset_px.zero_()
        t = system.tilt_cycles.detach()
        q = (
            g.filter_to_slm(torch.tensor([n // 2, n // 2], dtype=torch.float64) + t)
            - g.slm_centre()
        )
        g.offset_px.copy_(saved)
    return float(dc[0] - q[0]), float(dc[1] - q[1])


def offset_to_dc(system: PhysicalSystem) -> tuple[float, float]:
    """Where the (tilted) DC lands on the SLM, SLM px from the nominal centre."""
    import torch

    g = system.slm.geometry
    n = system.optics.field_size
    with torch.no_grad():
        q = g.filter_to_slm(
            torch.tensor([n // 2, n // 2], dtype=torch.float64) + system.tilt_cycles.detach()
        )
        q = q - g.slm_centre()
    return float(q[0]), float(q[1])


def fit_slm_placement(
    system: PhysicalSystem,
    targets: dict[str, np.ndarray],
    obs: Sequence[Observation],
    max_iter: int = 25,
) -> FitResult:
    """Offset, rotation, scale, LUT γ/scale and gain/offset (others fixed) by LM."""
    names = SLM_GEOMETRY_PARAMS + LUT_PARAMS + ["cam_gain", "cam_offset"]
    return fit(system, targets, obs, names, max_iter=max_iter, bounds=BOUNDS)
