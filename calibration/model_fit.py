"""Camera-in-the-loop fit of the differentiable bench model to captured frames.

The bench is described by :class:`~dmicro_hw.optics.system.PhysicalSystem`; its mismatch
parameters (LUT γ/scale, SLM offset/rotation/scale, Zernike terms, illumination tilt, camera
shift/rotation/scale, gain/offset) are fitted so that the simulated frames of a *known* phase target
under a set of displayed SLM patterns match the captured ones.

Method: weighted non-linear least squares, solved by ``scipy.optimize.least_squares``
(trust-region reflective, parameter bounds inside the trust region).

* residual r_p = (model_p(θ) − mean_p) / σ_p for every camera pixel p of every observation,
  where mean_p is the average of the captured frames and σ_p² the variance of that mean (from the
  photon-transfer noise model, :func:`noise_model`);
* Jacobian by central finite differences in scaled parameter units (the optics contain
  ``grid_sample``, which has no forward-mode AD); filters are cached per parameter group so a
  camera parameter costs only a resampling, not a new 4f simulation;
* uncertainties: the Gauss–Newton covariance C = (JᵀJ)⁻¹ · max(1, χ²/dof) — the curvature of the
  loss at the optimum, inflated when the model does not explain the data down to the noise;
* per-observation residuals (RMS in noise units, χ²/pixel) tell which pattern is badly explained.

Everything works on plain arrays (frames in ADU), so the same code runs on a simulated and a real
bench; :mod:`dmicro_hw.calibration.sequence` acquires the observations through the devices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dmicro_hw.optics.fields import intensity, unit_phasor
from dmicro_hw.optics.slm import gaussian_blur
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One scalar fit parameter: where it lives in :class:`PhysicalSystem` and its scale.

    ``attr`` is the dotted attribute path of the tensor, ``index`` the element (None: scalar),
    ``step`` the typical size of a meaningful change (finite-difference step, LM scaling),
    ``group``: what a change invalidates — ``geometry`` (SLM placement: new sample positions),
    ``lut`` (SLM phase response), ``pupil`` (Zernike terms), ``field`` (illumination tilt: the
    spectrum's position on SLM and pupil), ``illum`` (the illumination envelope, flat-field
    step) or ``camera`` (only the camera resampling / gain); ``unit`` for reports.
    """

    name: str
    attr: str
    index: int | None
    step: float
    group: str
    unit: str


ILLUMINATION_TERMS = ("x", "y", "xx", "yy", "xy")  # log-amplitude polynomial of the envelope


def enable_illumination(system: PhysicalSystem) -> None:
    """Give ``system`` a smooth illumination envelope to fit: field amplitude
    exp(Σ c_k P_k(x, y)) with P = x, y, x², y², xy (x, y ∈ [−½, ½) across the field) — a
    Gaussian beam off the axis is exact, a vignette nearly so. It lives in the sample plane, so
    (unlike a camera flat field) it moves with the image when a ramp shifts it. The calibration
    adds it in the flat-field step; :class:`ForwardModel` applies it to the sample field."""
    if not hasattr(system, "illum_logamp"):
        system.illum_logamp = torch.nn.Parameter(
            torch.zeros(len(ILLUMINATION_TERMS), dtype=torch.float64), requires_grad=False
        )


def illumination_amplitude(system: PhysicalSystem) -> torch.Tensor | None:
    """The fitted envelope (N, N) float32 of ``system`` (None when it has none)."""
    c = getattr(system, "illum_logamp", None)
    if c is None:
        return None
    n = system.optics.field_size
    u = (torch.arange(n, dtype=torch.float64) - n // 2) / n
    y, x = torch.meshgrid(u, u, indexing="ij")
    basis = torch.stack([x, y, x * x, y * y, x * y])
    return torch.exp(torch.einsum("k,khw->hw", c.detach(), basis)).to(torch.float32)


def _specs(zernike_terms: Sequence[int], illumination: bool = False) -> dict[str, ParamSpec]:
    s = [
        ParamSpec("lut_gamma", "slm.response.gamma", None, 2e-3, "lut", ""),
        ParamSpec("lut_scale", "slm.response.scale_factor", None, 1e-3, "lut", ""),
        ParamSpec("slm_offset_y", "slm.geometry.offset_px", 0, 0.05, "geometry", "SLM px"),
        ParamSpec("slm_offset_x", "slm.geometry.offset_px", 1, 0.05, "geometry", "SLM px"),
        ParamSpec("slm_rotation", "slm.geometry.rotation_rad", None, 5e-4, "geometry", "rad"),
        ParamSpec("slm_scale", "slm.geometry.scale", None, 5e-4, "geometry", ""),
    ]
    for i, j in enumerate(zernike_terms):
        s.append(ParamSpec(f"z{j}", "zernike", i, 5e-3, "pupil", "rad RMS"))
    s += [
        ParamSpec("tilt_y", "tilt_cycles", 0, 0.01, "field", "cycles"),
        ParamSpec("tilt_x", "tilt_cycles", 1, 0.01, "field", "cycles"),
        ParamSpec("cam_shift_y", "camera_shift_px", 0, 0.02, "camera", "px"),
        ParamSpec("cam_shift_x", "camera_shift_px", 1, 0.02, "camera", "px"),
        ParamSpec("cam_rotation", "camera_rotation_rad", None, 5e-4, "camera", "rad"),
        ParamSpec("cam_scale", "camera_scale", None, 5e-4, "camera", ""),
        ParamSpec("cam_gain", "camera_gain", None, 1e-3, "camera", ""),
        ParamSpec("cam_offset", "camera_offset_adu", None, 0.05, "camera", "ADU"),
    ]
    if illumination:
        s += [
            ParamSpec(f"illum_{t}", "illum_logamp", i, 0.01, "illum", "")
            for i, t in enumerate(ILLUMINATION_TERMS)
        ]
    return {p.name: p for p in s}


def param_specs(system: PhysicalSystem) -> dict[str, ParamSpec]:
    """All fit parameters of ``system`` by name (order: SLM, pupil, field, camera)."""
    return _specs(system.zernike_terms, hasattr(system, "illum_logamp"))


def _tensor(system: PhysicalSystem, attr: str) -> torch.Tensor:
    obj = system
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_param(system: PhysicalSystem, spec: ParamSpec) -> float:
    t = _tensor(system, spec.attr)
    return float(t.detach().reshape(-1)[spec.index or 0])


def set_param(system: PhysicalSystem, spec: ParamSpec, value: float) -> None:
    t = _tensor(system, spec.attr)
    with torch.no_grad():
        if spec.index is None:
            t.fill_(float(value))
        else:
            t[spec.index] = float(value)


def get_params(system: PhysicalSystem, names: Iterable[str]) -> dict[str, float]:
    specs = param_specs(system)
    return {n: get_param(system, specs[n]) for n in names}


def set_params(system: PhysicalSystem, values: dict[str, float]) -> None:
    specs = param_specs(system)
    for n, v in values.items():
        set_param(system, specs[n], v)


# --------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------


@dataclass
class Observation:
    """Averaged camera frames of one known target under one displayed SLM pattern.

    ``grey``: displayed grey levels (R, C) on the model's SLM grid; ``target``: key of the
    sample phase in the ``targets`` mapping of the fit; ``mean``: mean frame (h, w) in ADU;
    ``var``: variance of a *single* frame per pixel (ADU²) — the fit uses var / n_frames;
    ``kind``: probe family (flat, ramp, edge, disc, lut, lens, mask, …) for reports;
    ``valid``: optional 0/1 mask (h, w), 0 on saturated pixels (left out of every fit).
    """

    pattern_id: str
    kind: str
    grey: np.ndarray
    target: str
    mean: np.ndarray
    var: np.ndarray
    n_frames: int
    meta: dict = field(default_factory=dict)
    valid: np.ndarray | None = None

    @property
    def sigma_mean(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.var, 1e-6) / max(self.n_frames, 1))

    @property
    def weight(self) -> np.ndarray:
        """1/σ of the mean per pixel, 0 on invalid (saturated) pixels."""
        w = 1.0 / self.sigma_mean
        return w if self.valid is None else w * self.valid


@dataclass
class NoiseModel:
    """Photon-transfer line: var(ADU) = slope · (mean − dark) + floor (per single frame)."""

    slope: float
    floor: float
    dark: float

    def variance(self, mean: np.ndarray) -> np.ndarray:
        return np.maximum(self.slope * np.maximum(mean - self.dark, 0.0) + self.floor, 0.05)

    def to_dict(self) -> dict:
        return {"slope_adu": self.slope, "floor_adu2": self.floor, "dark_adu": self.dark}


def noise_model(
    means: Sequence[np.ndarray],
    variances: Sequence[np.ndarray],
    valid: Sequence[np.ndarray | None] | None = None,
    adc_max: float | None = None,
) -> NoiseModel:
    """Fit the photon-transfer line to per-pixel means and variances of repeated frames.

    Straight-line fit var = a·mean + b over all valid pixels below 70 % of the ADC range (the
    full well compresses the variance near saturation), binned by mean so bright and dark pixels
    weigh alike; ``dark`` is where the line meets the ADU-quantisation floor (1/12 ADU²).
    """
    m = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in means])
    v = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in variances])
    keep = np.ones_like(m, dtype=bool)
    if valid is not None:
        keep &= np.concatenate(
            [
                (np.ones(np.asarray(x).size) if q is None else np.asarray(q).ravel()) > 0
                for x, q in zip(means, valid)
            ]
        )
    if adc_max is not None:
        keep &= m < 0.7 * adc_max
    m, v = m[keep], v[keep]
    if m.size < 8 or float(np.ptp(m)) < 1e-9:
        return NoiseModel(slope=0.0, floor=float(np.median(v)) if v.size else 1.0, dark=0.0)
    edges = np.unique(np.quantile(m, np.linspace(0, 1, 25)))
    xs, ys, ws = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (m >= lo) & (m <= hi)
        if sel.sum() >= 4:
            xs.append(m[sel].mean())
            ys.append(v[sel].mean())
            ws.append(math.sqrt(sel.sum()) / max(v[sel].mean(), 1e-3))
    xs_a, ys_a, ws_a = np.array(xs), np.array(ys), np.array(ws)
    if xs_a.size < 2 or float(np.ptp(xs_a)) < 0.05 * max(abs(float(xs_a.mean())), 1.0):
        return NoiseModel(slope=float(np.mean(v) / max(np.mean(m), 1.0)), floor=0.0, dark=0.0)
    a, b = np.polyfit(xs_a, ys_a, 1, w=ws_a)
    a = max(float(a), 0.0)
    dark = float((1.0 / 12 - b) / a) if a > 0 else 0.0
    floor = float(a * dark + b)
    return NoiseModel(slope=a, floor=max(floor, 1.0 / 12), dark=dark)


# --------------------------------------------------------------------------------------------
# Batched forward model with caching per parameter group
# --------------------------------------------------------------------------------------------


class ForwardModel:
    """Simulates the noise-free mean frames of a list of observations, with caches.

    The SLM part of each realised filter is computed on a window of the SLM around the filter
    footprint (``max_offset_px`` of placement slack), and cached per (geometry, LUT) state; the
    pupil/aberration part per Zernike state; sample spectra per tilt state; so a finite-difference
    step in a camera parameter costs one resampling, in a Zernike term one FFT per pattern.
    """

    def __init__(
        self,
        system: PhysicalSystem,
        targets: dict[str, np.ndarray | torch.Tensor],
        observations: Sequence[Observation],
        max_offset_px: float = 24.0,
    ) -> None:
        self.system = system
        self.obs = list(observations)
        self.targets = {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in targets.items()
        }
        missing = {o.target for o in self.obs} - set(self.targets)
        if missing:
            raise KeyError(f"observations refer to unknown targets {sorted(missing)}")
        self.specs = param_specs(system)
        geo = system.slm.geometry
        rows, cols = geo.slm_pixels
        n = system.optics.field_size
        half = math.ceil(geo.ratio * 1.1 * (n / 2 + 1) * math.sqrt(2) + max_offset_px + 4)
        r0, r1 = max(0, rows // 2 - half), min(rows, rows // 2 + half)
        c0, c1 = max(0, cols // 2 - half), min(cols, cols // 2 + half)
        self.origin = torch.tensor([r0, c0], dtype=torch.float64)
        self._greys = [
            torch.as_tensor(np.asarray(o.grey)[r0:r1, c0:c1].astype(np.float32)) for o in self.obs
        ]
        self._cache: dict[str, dict] = {}
        self._indicators: dict[int, tuple] = {}

    def _reflectance(self, i: int, grey: torch.Tensor) -> torch.Tensor:
        """SLM reflectance of pattern i; few-level patterns use cached blurred indicators.

        The fringing blur is linear in the phase, so for a pattern of a few grey levels v_k,
        blur(φ(grey)) = Σ_k φ(v_k)·blur(1[grey = v_k]) — exact, and no convolution per LUT
        change (the LUT measurement changes only φ).
        """
        slm = self.system.slm
        if slm.fringing_px <= 0:
            return slm.reflectance(grey)
        parts = self._indicators.get(i)
        if parts is None:
            levels = torch.unique(grey)
            if levels.numel() > 4:
                self._indicators[i] = ()
                return slm.reflectance(grey)
            parts = tuple(
                (v.reshape(()), gaussian_blur((grey == v).float(), slm.fringing_px)) for v in levels
            )
            self._indicators[i] = parts
        if not parts:
            return slm.reflectance(grey)
        values = slm.response(torch.stack([v for v, _ in parts]))
        phase = sum(val * ind for val, (_, ind) in zip(values, parts))
        ff = slm.fill_factor
        return ff * unit_phasor(phase) + (1 - ff)

    def _key(self, *groups: str) -> tuple:
        return tuple(
            round(get_param(self.system, s), 12) for s in self.specs.values() if s.group in groups
        )

    def invalidate(self, *names: str) -> None:
        """Drop cached stages (e.g. ``"slm"`` after replacing the SLM's phase response)."""
        for n in names or tuple(self._cache):
            self._cache.pop(n, None)

    def _cached(self, name: str, key: tuple, make: Callable[[], object]):
        """Two-entry cache per stage: the base state survives a finite-difference step."""
        slot = self._cache.setdefault(name, {})
        if key in slot:
            return slot[key]
        value = make()
        if len(slot) >= 2:
            slot.pop(next(iter(slot)))
        slot[key] = value
        return value

    @torch.no_grad()
    def slm_filters(self) -> torch.Tensor:
        """SLM part of the realised filters (P, N, N), centred (no pupil)."""
        slm = self.system.slm

        h, w = self._greys[0].shape if self._greys else (1, 1)

        def grid() -> torch.Tensor:
            # the spectrum's coordinate u sees the SLM at u + tilt (PhysicalSystem's tilt note)
            ij = slm._sub_ij + self.system.tilt_cycles.detach()
            rc = slm.geometry.filter_to_slm(ij) - self.origin  # (N, N, m, m, 2)
            y = 2 * rc[..., 0] / max(h - 1, 1) - 1
            x = 2 * rc[..., 1] / max(w - 1, 1) - 1
            return torch.stack([x, y], -1).reshape(1, -1, 1, 2).to(torch.float32)

        g = self._cached("coords", self._key("geometry", "field"), grid)

        def reflectances() -> torch.Tensor:
            planes = []
            for i, grey in enumerate(self._greys):
                r = self._reflectance(i, grey)
                planes += [r.real, r.imag]
            return torch.stack(planes)[None].float()  # (1, 2P, h, w)

        refl = self._cached("reflectance", self._key("lut"), reflectances)

        def make() -> torch.Tensor:
            n = self.system.optics.field_size
            vals = F.grid_sample(refl, g, mode="bilinear", padding_mode="zeros", align_corners=True)
            vals = vals.reshape(len(self._greys), 2, n, n, -1).mean(-1)
            return torch.complex(vals[:, 0], vals[:, 1])

        return self._cached("slm", self._key("geometry", "lut", "field"), make)

    @torch.no_grad()
    def filters(self) -> torch.Tensor:
        """Realised filters × pupil function, ifftshifted for the FFT (P, N, N)."""

        def make() -> torch.Tensor:
            f = self.slm_filters() * self.system.pupil_function()
            return torch.fft.ifftshift(f, dim=(-2, -1))

        return self._cached("filter", self._key("geometry", "lut", "pupil", "field"), make)

    @torch.no_grad()
    def spectra(self) -> dict[str, torch.Tensor]:
        def make() -> dict[str, torch.Tensor]:
            amp = illumination_amplitude(self.system)
            out = {}
            for k, v in self.targets.items():
                f = self.system.illuminate(v[None])
                out[k] = torch.fft.fft2(f if amp is None else f * amp)[0]
            return out

        return self._cached("field", self._key("illum"), make)

    @torch.no_grad()
    def intensity(self) -> torch.Tensor:
        """Image-plane intensity before the camera registration (P, N, N)."""

        def make() -> torch.Tensor:
            h = self.filters()
            spec = self.spectra()
            s = torch.stack([spec[o.target] for o in self.obs])
            return intensity(torch.fft.ifft2(s * h))

        return self._cached(
            "intensity", self._key("geometry", "lut", "pupil", "field", "illum"), make
        )

    @torch.no_grad()
    def frames(self) -> torch.Tensor:
        """Noise-free mean frames in ADU (P, h, w), float64."""
        inten = self.system.register_camera(self.intensity())
        return self.system.frame_from_intensity(inten, noise=False).double()


# --------------------------------------------------------------------------------------------
# Least squares (scipy)
# --------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """Outcome of a least-squares fit.

    ``values``/``sigma``: fitted parameters and 1-σ uncertainties (same units as the system),
    ``correlation``: parameter correlation matrix (names order), ``chi2_dof``: reduced χ²,
    ``per_observation``: pattern id → {kind, rms_noise_units, rms_adu, chi2_pixel},
    ``history``: ‖r‖² per accepted iterate, ``converged``: the solver stopped on a tolerance.
    """

    names: list[str]
    values: dict[str, float]
    sigma: dict[str, float]
    correlation: np.ndarray
    chi2_dof: float
    per_observation: dict[str, dict]
    history: list[float]
    converged: bool
    n_residuals: int

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "values": self.values,
            "sigma": self.sigma,
            "correlation": np.round(self.correlation, 4).tolist(),
            "chi2_dof": self.chi2_dof,
            "per_observation": self.per_observation,
            "history": self.history,
            "converged": self.converged,
            "n_residuals": self.n_residuals,
        }


class LeastSquaresProblem:
    """Scaled residual function r(x) over the free parameters ``names`` of ``system``."""

    def __init__(
        self,
        system: PhysicalSystem,
        targets: dict[str, np.ndarray],
        observations: Sequence[Observation],
        names: Sequence[str],
        sigma: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.system = system
        self.fm = ForwardModel(system, targets, observations)
        self.specs = [self.fm.specs[n] for n in names]
        self.names = list(names)
        if sigma is not None:
            ws = [1.0 / np.asarray(s) for s in sigma]
        else:
            ws = [o.weight for o in observations]
        self.w = torch.as_tensor(np.stack(ws), dtype=torch.float64)
        self.y = torch.as_tensor(np.stack([o.mean for o in observations]), dtype=torch.float64)
        self.x0 = np.array([get_param(system, s) / s.step for s in self.specs])
        self._last: tuple[np.ndarray, torch.Tensor] | None = None

    def set_x(self, x: np.ndarray) -> None:
        for s, v in zip(self.specs, x):
            set_param(self.system, s, float(v) * s.step)

    def residuals(self, x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float64)
        if self._last is not None and np.array_equal(self._last[0], x):
            self.set_x(x)
            return self._last[1]
        self.set_x(x)
        r = ((self.fm.frames() - self.y) * self.w).reshape(-1)
        self._last = (x.copy(), r)
        return r

    def jacobian(
        self,
        x: np.ndarray,
        central: bool = False,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual at x and its Jacobian (n_res, n_par) by finite differences (h = 1 unit).

        Forward differences by default (one simulation per parameter, MINPACK-style); the step
        of one scaled unit is each parameter's ``step``, small against its plausible range. A
        forward step that would leave ``upper`` is taken backwards instead.
        """
        x = np.asarray(x, dtype=np.float64)
        r0 = self.residuals(x)
        jac: list[torch.Tensor | None] = [None] * len(x)
        for i in range(len(x)):
            h = 0.5 if central else 1.0
            if upper is not None and x[i] + h > upper[i]:
                h = -h
            xp = x.copy()
            xp[i] += h
            rp = self.residuals(xp)
            if central:
                xm = x.copy()
                xm[i] -= h
                jac[i] = (rp - self.residuals(xm)) * math.copysign(1.0, h)
            else:
                jac[i] = (rp - r0) / h
        self.set_x(x)
        return r0, torch.stack(jac, dim=1)


def _bounds(
    problem: LeastSquaresProblem, bounds: dict[str, tuple[float, float]] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the scaled parameters (±inf where none is given)."""
    lo = np.full(len(problem.specs), -np.inf)
    hi = np.full(len(problem.specs), np.inf)
    for i, s in enumerate(problem.specs):
        if bounds and s.name in bounds:
            lo[i], hi[i] = sorted(b / s.step for b in bounds[s.name])
    return lo, hi


def solve(
    problem: LeastSquaresProblem,
    max_iter: int = 30,
    tol: float = 1e-5,
    callback: Callable[[int, float], None] | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
    loss: str = "linear",
    f_scale: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, list[float], bool]:
    """Minimise ½‖r(x)‖² over the scaled parameters with ``scipy.optimize.least_squares``
    (trust-region reflective, bounds honoured by the trust region rather than by clipping).

    The Jacobian is the problem's finite-difference one (one scaled unit per parameter, steps
    taken inwards at a bound; filters cached per parameter group), evaluated only at accepted
    points. Returns x, the Jacobian at x, ‖r‖² at each accepted point, and whether the solver
    stopped on a tolerance (not on the evaluation budget). ``loss``: scipy's robust losses
    (``soft_l1``, ``huber`` …; residuals beyond ``f_scale`` noise σ weigh less — hot pixels,
    ghosts), ``linear`` for plain least squares.
    """
    from scipy.optimize import least_squares

    lo, hi = _bounds(problem, bounds)
    x0 = np.clip(problem.x0, lo, hi)
    history: list[float] = []
    first = problem.jacobian(x0, lower=lo, upper=hi)
    a = decorrelating_map(first[1].numpy(), lo, hi)
    a_inv = np.linalg.inv(a)
    z0 = a_inv @ x0
    zlo, zhi = _z_bounds(a, lo, hi)

    def fun(z: np.ndarray) -> np.ndarray:
        return problem.residuals(a @ z).numpy()

    def jac(z: np.ndarray) -> np.ndarray:
        x = a @ z
        r, j = first if np.array_equal(z, z0) else problem.jacobian(x, lower=lo, upper=hi)
        history.append(float(r.square().sum()))
        if callback and len(history) > 1:
            callback(len(history) - 2, history[-1])
        return j.numpy() @ a

    sol = least_squares(
        fun,
        z0,
        jac=jac,
        bounds=(zlo, zhi),
        method="trf",
        x_scale=1.0,  # parameters are already in units of their typical change
        ftol=tol,
        xtol=1e-8,
        gtol=1e-10,
        max_nfev=2 * max_iter + 1,
        loss=loss,
        f_scale=f_scale,
    )
    x = a @ sol.x
    problem.set_x(x)
    if not history or len(history) < 1:
        history.append(float(2 * sol.cost))
    return x, np.asarray(sol.jac) @ a_inv, history, bool(sol.status > 0)


def decorrelating_map(
    jac: np.ndarray, lo: np.ndarray, hi: np.ndarray, threshold: float = 0.95
) -> np.ndarray:
    """Change of variables x = A·z that the solver works in, so a valley of two nearly
    degenerate parameters lies along an axis.

    For each pair (a, b) whose Jacobian columns correlate beyond ``threshold`` (strongest
    first, each parameter in one pair), z_b moves x_b and x_a together along the valley
    (x_a = z_a − k·z_b, k the regression coefficient of column b on column a), which makes the
    solver's columns a and b orthogonal. Without it the trust-region solver zig-zags down a
    |ρ| ≈ 0.999 valley (SLM offset vs illumination tilt: only the DC position, their sum, is
    well measured) and stops on its evaluation budget far from the minimum (sim-rig seed 8 at
    realism none: χ²/dof 4.05). ``a`` must be unbounded (its bounds could not be kept in z);
    pairs of two bounded parameters are left alone.
    """
    n = jac.shape[1]
    out = np.eye(n)
    g = jac.T @ jac
    d = np.sqrt(np.maximum(np.diag(g), 1e-300))
    rho = g / np.outer(d, d)
    pairs = sorted(
        ((abs(rho[i, j]), i, j) for i in range(n) for j in range(i + 1, n)),
        reverse=True,
    )
    used: set[int] = set()
    for r, i, j in pairs:
        if r <= threshold:
            break
        if i in used or j in used:
            continue
        for p, q in ((i, j), (j, i)):
            if not (np.isfinite(lo[p]) or np.isfinite(hi[p])) and g[p, p] > 0:
                out[p, q] = -g[p, q] / g[p, p]
                used |= {p, q}
                break
    return out


def _z_bounds(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of z for x = A·z (A from :func:`decorrelating_map`): a coupled parameter's z is
    unbounded like it, the other keeps its bounds (z_b = x_b)."""
    zlo, zhi = lo.copy(), hi.copy()
    coupled = np.any(a - np.eye(len(a)) != 0, axis=1)  # rows a with x_a = z_a − k·z_b
    zlo[coupled], zhi[coupled] = -np.inf, np.inf
    return zlo, zhi


def fit(
    system: PhysicalSystem,
    targets: dict[str, np.ndarray],
    observations: Sequence[Observation],
    names: Sequence[str],
    max_iter: int = 30,
    sigma: Sequence[np.ndarray] | None = None,
    callback: Callable[[int, float], None] | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
    loss: str = "linear",
    extra_dof: int = 0,
) -> FitResult:
    """Fit the parameters ``names`` of ``system`` (in place) to ``observations``.

    ``targets`` maps target keys to the known sample phase (N, N) in radians. Parameters not
    named stay fixed. Returns the values, 1-σ uncertainties and per-observation residuals.
    ``loss``: see :func:`solve` (χ²/dof is always the plain one); ``extra_dof``: parameters
    estimated outside this fit from the same frames (flat-field maps), taken off the dof.
    """
    problem = LeastSquaresProblem(system, targets, observations, names, sigma)
    x, jac, history, converged = solve(
        problem, max_iter, callback=callback, bounds=bounds, loss=loss
    )
    r = problem.residuals(x)
    n_res, n_par = int(torch.count_nonzero(problem.w)), len(names) + int(extra_dof)
    dof = max(n_res - n_par, 1)
    chi2_dof = float(r.square().sum()) / dof
    jtj = jac.T @ jac
    try:
        cov = np.linalg.inv(jtj)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(jtj)
    cov *= max(1.0, chi2_dof)
    steps = np.array([s.step for s in problem.specs])
    cov_phys = cov * np.outer(steps, steps)
    sd = np.sqrt(np.clip(np.diag(cov_phys), 0, None))
    corr = cov_phys / np.maximum(np.outer(sd, sd), 1e-300)
    # σ: the larger of the Gauss–Newton one and the probe jackknife (correlations stay GN)
    sd = np.maximum(sd, probe_jackknife_sigma(jac, r.numpy(), len(observations)) * steps)
    values = {n: get_param(system, problem.fm.specs[n]) for n in names}
    per_obs = residual_report(problem, r)
    return FitResult(
        names=list(names),
        values=values,
        sigma={n: float(s) for n, s in zip(names, sd)},
        correlation=corr,
        chi2_dof=chi2_dof,
        per_observation=per_obs,
        history=history,
        converged=converged,
        n_residuals=n_res,
    )


def probe_jackknife_sigma(jac: np.ndarray, r: np.ndarray, n_obs: int) -> np.ndarray:
    """1-σ of the fitted (scaled) parameters from leaving out one probe at a time
    (linearised at the optimum: the fit without probe p moves by (JᵀJ − J_pᵀJ_p)⁻¹·J_pᵀr_p;
    jackknife variance (P − 1)/P·Σ_p (Δ_p − mean Δ)²).

    When the model is right this agrees with the Gauss–Newton σ. When the bench does something
    the model does not, each probe pulls the parameters its own way, and a parameter that one or
    two probes carry (defocus: the displayed lenses) is far less certain than χ²/dof-scaled
    Gauss–Newton claims — small sim rig at realism moderate, seed 24: defocus σ 0.0026 rad while
    the estimate is 0.024 rad off. Zeros when there are fewer than 3 probes. With a robust
    loss ``jac`` is scipy's loss-weighted Jacobian and ``r`` the plain residual, which weighs
    down-weighted pixels more than a strictly robust score would (a conservative σ).
    """
    n_par = jac.shape[1]
    if n_obs < 3 or r.size % n_obs or jac.shape[0] != r.size:
        return np.zeros(n_par)
    jp = jac.reshape(n_obs, -1, n_par)
    rp = r.reshape(n_obs, -1)
    jtj = jac.T @ jac
    deltas = []
    for p in range(n_obs):
        a = jtj - jp[p].T @ jp[p]
        b = jp[p].T @ rp[p]
        try:
            deltas.append(np.linalg.solve(a, b))
        except np.linalg.LinAlgError:
            deltas.append(np.linalg.lstsq(a, b, rcond=None)[0])
    d = np.array(deltas)
    var = (n_obs - 1) / n_obs * np.sum((d - d.mean(0)) ** 2, axis=0)
    return np.sqrt(var)


def residual_report(problem: LeastSquaresProblem, r: torch.Tensor | None = None) -> dict[str, dict]:
    """Per-observation residual summary at the current parameters (valid pixels only)."""
    sim = problem.fm.frames()
    out = {}
    for i, o in enumerate(problem.fm.obs):
        w = problem.w[i].numpy()
        keep = w > 0
        d = (sim[i] - problem.y[i]).numpy()[keep]
        z = d * w[keep]
        out[o.pattern_id] = {
            "kind": o.kind,
            "rms_adu": float(np.sqrt(np.mean(d**2))) if d.size else math.nan,
            "rms_noise_units": float(np.sqrt(np.mean(z**2))) if z.size else math.nan,
            "signal_rms_adu": float(np.std(o.mean)),
        }
    return out


def disagreeing_probes(result: FitResult, factor: float = 2.0) -> dict[str, float]:
    """Probes the model explains worse than the rest: χ² per pixel above ``factor`` × the
    median and above 1.5 (pattern id → χ²/pixel, worst first)."""
    chi = {k: v["rms_noise_units"] ** 2 for k, v in result.per_observation.items()}
    if not chi:
        return {}
    med = float(np.median(list(chi.values())))
    bad = {k: v for k, v in chi.items() if v > max(factor * med, 1.5)}
    return dict(sorted(bad.items(), key=lambda kv: -kv[1]))


def degeneracies(result: FitResult, threshold: float = 0.98) -> list[tuple[str, str, float]]:
    """Parameter pairs whose estimates are correlated beyond ``threshold`` (|ρ|): the probes
    determine only a combination of the two."""
    out = []
    c = result.correlation
    for i, a in enumerate(result.names):
        for j in range(i + 1, len(result.names)):
            if abs(c[i, j]) > threshold:
                out.append((a, result.names[j], float(c[i, j])))
    return out


def flat_field(
    observations: Sequence[Observation], model_frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel flat field G and dark frame D (ADU) from the probes' diversity.

    Every pixel p sees different intensities under the different probes, so the per-pixel
    straight line y_kp = G_p · m_kp + D_p (m: the fitted model's frames, y: the captured ones,
    weighted by 1/σ²) separates what is the pixel's (gain, dark signal — PRNU, DSNU, hot pixels,
    a slowly varying illumination envelope) from what the optics do. G is normalised to mean 1
    and D to mean 0 (the global gain/offset stay with the camera parameters). Returns (G, D,
    hot): ``hot`` marks pixels whose dark signal or gain is an outlier (> 8 robust σ), which
    are left out of the fits afterwards.
    """
    y = np.stack([o.mean for o in observations]).astype(np.float64)
    m = np.asarray(model_frames, dtype=np.float64)
    w = np.stack([o.weight for o in observations]).astype(np.float64) ** 2
    sw, sm, sy = w.sum(0), (w * m).sum(0), (w * y).sum(0)
    smm, smy = (w * m * m).sum(0), (w * m * y).sum(0)
    det = sw * smm - sm**2
    ok = det > 1e-12 * np.maximum(sw * smm, 1e-300)
    g = np.where(ok, (sw * smy - sm * sy) / np.where(ok, det, 1), 1.0)
    d = np.where(ok, (smm * sy - sm * smy) / np.where(ok, det, 1), 0.0)
    g = g / max(float(np.mean(g[ok])) if ok.any() else 1.0, 1e-9)
    d = d - (float(np.mean(d[ok])) if ok.any() else 0.0)

    def outliers(a: np.ndarray) -> np.ndarray:
        med = float(np.median(a))
        mad = 1.4826 * float(np.median(np.abs(a - med))) + 1e-12
        return np.abs(a - med) > 8 * mad

    hot = (outliers(d) & (np.abs(d) > 3.0)) | outliers(g) | ~ok
    return g, d, hot


def residual_maps(
    system: PhysicalSystem, targets: dict[str, np.ndarray], observations: Sequence[Observation]
) -> np.ndarray:
    """Captured − simulated mean frames (P, h, w) in ADU for the current parameters."""
    fm = ForwardModel(system, targets, observations)
    sim = fm.frames().numpy()
    return np.stack([o.mean for o in observations]) - sim


def system_from(
    template: PhysicalSystem, mismatch: Mismatch | None = None, trainable: bool = False
) -> PhysicalSystem:
    """A new :class:`PhysicalSystem` with the configs of ``template`` and ``mismatch``."""
    return PhysicalSystem(
        template.optics,
        template.sensor_cfg,
        template.slm_cfg,
        mismatch or Mismatch(),
        trainable=trainable,
        zernike_terms=template.zernike_terms,
    )
