"""SLM phase response (grey level → radians) measured through the optics.

Method — Fourier phase stepping of the unscattered light (the principle of Fourier phase
microscopy): a small disc (radius ≈ 1.5 filter samples) centred on the DC position found by the
registration is displayed at grey g on a grey-0 background, so the light the target does not
scatter is phase-shifted by φ(g) − φ(0) relative to the scattered light. The frame of the known
target, |a·e^{iφ(g)} + s(x)|² blurred by the optics, changes with φ(g) at first order (phase
contrast) — the contrast flips sign between φ ≈ π/2 and 3π/2 — so each grey level's phase is read
off its frame by a one-dimensional fit through the differentiable model (grid over [0, 2π),
then Newton steps), with everything else fixed at the registration values. Its 1-σ error comes
from the curvature of χ² in φ (inflated by χ²/dof when larger than 1).

The curve: the per-level phases are unwrapped in grey order and fitted by the parametric response
φ(g) = s·range·(g/levels)^γ (weighted least squares with a systematic floor of
``LUT_SYSTEMATIC_RAD`` added to each level's σ, covariance of γ and s); when that curve does
not explain the points (χ²/dof > ``PARAMETRIC_CHI2_MAX``), a monotone curve is used instead:
isotonic regression of the points (scipy.optimize.isotonic_regression) interpolated by a
shape-preserving PCHIP. The table has one phase per grey level (relative to grey 0: a global
phase does not change images) and a 1-σ band per level. The export inverts it (``lut.npy`` in
the bundle).

Across the pupil: the DC disc reads the response of the few SLM pixels the unscattered light
falls on, and a real SLM's pixels do not all respond alike (liquid-crystal thickness, backplane
voltage). The pupil outside the DC is therefore split into zones — two annuli (3–12 and 12 filter
samples to the pupil edge) of ``ZONES`` sectors each — each shown alone at three grey levels
(phases ≈ 0.3, 0.55, 0.8 of the range by the DC curve); each zone's levels, read through the
same model, give its response relative to the DC curve (:func:`zone_response`). The exported
table is the DC curve × the zones' area-weighted mean (what the mask over the whole pupil sees);
the zones' scatter joins the table's σ (:attr:`ZoneResponse.uncertainty`) and is reported as the
SLM's spatial non-uniformity (no single table corrects it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dmicro_hw.calibration import patterns as P
from dmicro_hw.calibration.model_fit import ForwardModel, Observation
from dmicro_hw.calibration.registration import Probe
from dmicro_hw.optics.slm import PhaseResponse
from dmicro_hw.optics.system import PhysicalSystem

log = logging.getLogger(__name__)

PARAMETRIC_CHI2_MAX = 4.0
# Per-level phases carry a systematic error from the not-yet-refined registration of a few mrad;
# it is added in quadrature before judging the power law (below that, deviations mean nothing).
LUT_SYSTEMATIC_RAD = 0.005
TWO_PI = 2 * math.pi


def lut_probes(
    shape: tuple[int, int],
    dc: tuple[float, float],
    radius_px: float,
    bit_depth: int,
    n_levels: int = 16,
) -> list[Probe]:
    """DC-disc probes at ``n_levels`` grey levels spread over the range (0 excluded)."""
    top = 2**bit_depth - 1
    levels = np.unique(np.round(np.linspace(0, top, n_levels + 1)[1:]).astype(int))
    return [
        Probe(f"lut_g{g:05d}", "lut", P.disc(shape, dc, radius_px, int(g)), {"grey": int(g)})
        for g in levels
    ]


ZONES = 4
ZONE_PHASE_FRACTIONS = (0.3, 0.55, 0.8)
ZONE_RADII_SAMPLES = (3.0, 12.0)  # inner radii of the annuli; the last ends at the pupil edge


def zone_radii_px(pupil_samples: float, px_per_sample: float) -> list[float]:
    """Annulus boundaries (SLM px from the DC) of the pupil zones: ``ZONE_RADII_SAMPLES`` (the
    outer ones capped at half the pupil) and the pupil edge, in filter samples × px/sample."""
    inner = [ZONE_RADII_SAMPLES[0]] + [min(r, pupil_samples / 2) for r in ZONE_RADII_SAMPLES[1:]]
    return [r * px_per_sample for r in (*inner, pupil_samples)]


def zone_probe_count() -> int:
    """How many probes :func:`zone_probes` makes with the default zones and levels."""
    return len(ZONE_RADII_SAMPLES) * ZONES * len(ZONE_PHASE_FRACTIONS)


def zone_greys(
    table: np.ndarray, phase_range_rad: float, fractions: Sequence[float] = ZONE_PHASE_FRACTIONS
) -> list[int]:
    """Grey levels whose phase on ``table`` (relative to grey 0) is nearest each fraction of the
    range (distinct, ascending)."""
    t = np.asarray(table, dtype=np.float64) - float(table[0])
    return sorted({int(np.argmin(np.abs(t - f * phase_range_rad))) for f in fractions} - {0})


def zone_probes(
    shape: tuple[int, int],
    dc: tuple[float, float],
    radii_px: Sequence[float],
    greys: Sequence[int],
    sectors: int = ZONES,
) -> list[Probe]:
    """Zones of the pupil outside the DC: each annulus between consecutive ``radii_px`` (SLM
    px from the DC) split into ``sectors`` sectors centred on 0°, 90°, …; each zone shown at
    every grey of ``greys`` on a grey-0 background (meta: grey, zone, its SLM pixel count)."""
    width = TWO_PI / sectors
    out = []
    for b, (r0, r1) in enumerate(zip(radii_px[:-1], radii_px[1:])):
        for q in range(sectors):
            mask = P.sector(shape, dc, r0, r1, q * width, width, 1)
            zone, px = b * sectors + q, int(mask.sum())
            out += [
                Probe(
                    f"lutzone{zone:02d}_g{int(g):05d}",
                    "lut_zone",
                    mask * np.uint16(g),
                    {"grey": int(g), "zone": zone, "pixels": px},
                )
                for g in greys
            ]
    return out


@dataclass
class ZoneResponse:
    """Phase response of pupil zones relative to the DC curve (see the module docstring).

    ``scales``/``sigmas``: per zone, φ_zone(g) = scale·φ_DC(g) (1-σ); ``mean``: their mean
    weighted by zone area; ``sem``: its standard error (zone-to-zone scatter and the zones' own
    σ); ``spread``: zone-to-zone standard deviation — the SLM's spatial non-uniformity plus
    whatever the model does not explain in one zone's frames.
    """

    scales: list[float]
    sigmas: list[float]
    mean: float
    sem: float
    spread: float

    @property
    def uncertainty(self) -> float:
        """Relative 1-σ of one table for the whole pupil: hypot(spread, sem).

        Not only the standard error: on the sim rig's moderate bench the zones' readings
        scatter about the true per-zone response by about their own spread (unmodelled
        aberrations and source size bias one zone's frames), so the mean is not better known
        than one zone — seed 9: DC curve 0.9 % low, zones' mean 0.04 % from the DC, spread
        0.8 %. The spread also bounds how far any part of the pupil is from the table.
        """
        return math.hypot(self.spread, self.sem)

    @classmethod
    def from_dict(cls, d: dict | None) -> ZoneResponse | None:
        """From :meth:`to_dict` (a bundle's ``lut.zones``); None when absent or not finite."""
        if not d:
            return None
        try:
            z = cls(
                [float(x) for x in d["scales"]],
                [float(x) for x in d["sigmas"]],
                float(d["mean_scale"]),
                float(d["mean_scale_sigma"]),
                float(d["spread"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        ok = all(math.isfinite(x) for x in (z.mean, z.sem, z.spread)) and z.mean > 0
        return z if ok else None

    def to_dict(self) -> dict:
        return {
            "scales": self.scales,
            "sigmas": self.sigmas,
            "mean_scale": self.mean,
            "mean_scale_sigma": self.sem,
            "spread": self.spread,
            "uncertainty_rel": self.uncertainty,
            "dc_vs_zones_rel": 1.0 / self.mean - 1.0,
        }


def zone_response(
    obs: Sequence[Observation], levels: Sequence[LevelPhase], table: np.ndarray
) -> ZoneResponse | None:
    """Each zone's scale relative to ``table`` (the DC curve) from its measured levels.

    A level's phase is unwrapped to the branch nearest the table's; the scale is the weighted
    least-squares ratio, its σ inflated by the zone's χ²/dof when above 1. None when fewer than
    two zones were measured.
    """
    t = np.asarray(table, dtype=np.float64) - float(table[0])
    by_zone: dict[int, list[tuple[float, float, float]]] = {}
    area: dict[int, float] = {}
    for o, lv in zip(obs, levels):
        ref = float(t[lv.grey])
        phi = ref + float(np.angle(np.exp(1j * (lv.phase_rad - ref))))
        by_zone.setdefault(int(o.meta["zone"]), []).append((ref, phi, lv.sigma_rad))
        area[int(o.meta["zone"])] = float(o.meta.get("pixels", 1.0))
    scales, sigmas = [], []
    for q in sorted(by_zone):
        ref, phi, sig = (np.array(x) for x in zip(*by_zone[q]))
        w = 1.0 / np.maximum(sig, 1e-6) ** 2
        den = float(np.sum(w * ref**2))
        s = float(np.sum(w * ref * phi) / den)
        chi2 = float(np.sum(w * (phi - s * ref) ** 2)) / max(len(ref) - 1, 1)
        scales.append(s)
        sigmas.append(math.sqrt(max(1.0, chi2) / den))
    if len(scales) < 2:
        return None
    sc, sg = np.array(scales), np.array(sigmas)
    w = np.array([area[q] for q in sorted(by_zone)])
    w = w / w.sum()
    mean = float(np.sum(w * sc))
    spread = float(np.sqrt(np.sum(w * (sc - mean) ** 2) * len(sc) / (len(sc) - 1)))
    n_eff = 1.0 / float(np.sum(w**2))  # Kish's effective number of zones
    sem = math.hypot(spread / math.sqrt(n_eff), float(np.sqrt(np.sum((w * sg) ** 2))))
    return ZoneResponse(scales, sigmas, mean, sem, spread)


@dataclass
class LevelPhase:
    grey: int
    phase_rad: float
    sigma_rad: float
    chi2_dof: float


def _table_response(system: PhysicalSystem, grey: int, phase: float) -> None:
    """Make ``system``'s SLM respond φ(grey) = phase, φ(0) = 0 (table, exact at integers)."""
    levels = 2**system.slm_cfg.bit_depth
    table = torch.zeros(levels)
    table[grey] = float(phase)
    r = system.slm.response
    if r.table is None or r.table.shape != table.shape:
        r.table = table
    else:
        r.table.copy_(table)


def _level_chi2(system: PhysicalSystem, fm: ForwardModel, o: Observation, phi: float) -> float:
    _table_response(system, int(o.meta["grey"]), phi)
    fm.invalidate("reflectance", "slm", "filter", "intensity")
    f = fm.frames().numpy().ravel()
    return float(np.sum(((f - o.mean.ravel()) * o.weight.ravel()) ** 2))


def measure_level_phases(
    system: PhysicalSystem,
    targets: dict[str, np.ndarray],
    obs: Sequence[Observation],
    start: Sequence[float] | None = None,
    grid: int = 12,
    newton_steps: int = 4,
    chi2_retry: float = 3.0,
) -> list[LevelPhase]:
    """Per-grey-level phase from the DC-disc frames (see the module docstring).

    ``system`` is used with its current geometry, pupil, tilt and camera parameters; its phase
    response is temporarily replaced by a table. ``start``: predicted phase per observation
    (e.g. the registration's parametric LUT); Newton steps start there, and a grid over
    [0, 2π) is searched first when there is no start or the result has χ²/dof > ``chi2_retry``.
    """
    saved = system.slm.response
    levels = 2**system.slm_cfg.bit_depth
    out: list[LevelPhase] = []
    try:
        system.slm.response = PhaseResponse(
            system.slm_cfg.bit_depth, system.slm_cfg.phase_range_rad, table=torch.zeros(levels)
        )
        for idx, o in enumerate(obs):
            fm = ForwardModel(system, targets, [o])
            dof = max(int(np.count_nonzero(o.weight)) - 1, 1)
            tries = [None] if start is None else [float(start[idx]), None]
            for guess in tries:
                if guess is None:
                    phis = np.linspace(0, TWO_PI, grid, endpoint=False)
                    vals = [_level_chi2(system, fm, o, p) for p in phis]
                    phi, h = float(phis[int(np.argmin(vals))]), TWO_PI / grid
                else:
                    phi, h = guess, 0.3
                for _ in range(newton_steps):
                    c0 = _level_chi2(system, fm, o, phi)
                    cp = _level_chi2(system, fm, o, phi + h)
                    cm = _level_chi2(system, fm, o, phi - h)
                    curv = (cp - 2 * c0 + cm) / h**2
                    if curv <= 0:
                        phi += h if cp < cm else -h
                        continue
                    phi += float(np.clip(-0.5 * (cp - cm) / h / curv, -h, h))
                    h = max(h / 3, 2e-3)
                d = 0.01
                c0 = _level_chi2(system, fm, o, phi)
                cp = _level_chi2(system, fm, o, phi + d)
                cm = _level_chi2(system, fm, o, phi - d)
                if c0 / dof <= chi2_retry:
                    break
            curv = max((cp - 2 * c0 + cm) / d**2, 1e-12)
            chi2_dof = c0 / dof
            sigma = math.sqrt(2.0 / curv * max(1.0, chi2_dof))
            out.append(LevelPhase(int(o.meta["grey"]), float(np.mod(phi, TWO_PI)), sigma, chi2_dof))
    finally:
        system.slm.response = saved
    return out


def unwrap_monotone(greys: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Unwrap phases in grey order assuming a non-decreasing response starting at φ(0) = 0."""
    out = np.empty_like(phases, dtype=np.float64)
    prev = 0.0
    for i, p in enumerate(phases):
        k = math.floor((prev - p) / TWO_PI)
        cand = p + TWO_PI * np.array([k, k + 1, k + 2])
        cand = cand[cand >= prev - 0.5]  # allow small measured decreases
        v = float(cand[np.argmin(np.abs(cand - prev))]) if cand.size else p + TWO_PI * (k + 1)
        out[i] = v
        prev = v
    return out


def isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) regression (scipy's pool-adjacent-violators)."""
    from scipy.optimize import isotonic_regression

    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return np.asarray(isotonic_regression(y, weights=w, increasing=True).x)


@dataclass
class LUTFit:
    """The fitted phase response.

    ``table``/``table_sigma``: phase and 1-σ per grey level (levels,); ``method``: 'parametric'
    or 'monotone_pchip'; ``gamma``/``scale`` and their covariance (parametric fit, always
    computed); ``points``: the measured levels (grey, phase, σ) after unwrapping.
    """

    table: np.ndarray
    table_sigma: np.ndarray
    method: str
    gamma: float
    scale: float
    cov: np.ndarray
    chi2_dof: float
    points: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "gamma": self.gamma,
            "scale": self.scale,
            "gamma_sigma": float(math.sqrt(max(self.cov[0, 0], 0))),
            "scale_sigma": float(math.sqrt(max(self.cov[1, 1], 0))),
            "gamma_scale_corr": float(
                self.cov[0, 1] / max(math.sqrt(self.cov[0, 0] * self.cov[1, 1]), 1e-300)
            ),
            "chi2_dof": self.chi2_dof,
            "table_sigma_rms_rad": float(np.sqrt(np.mean(self.table_sigma**2))),
            "points": self.points,
        }


def parametric_table(
    gamma: float, scale: float, bit_depth: int, phase_range_rad: float
) -> np.ndarray:
    levels = 2**bit_depth
    g = np.arange(levels, dtype=np.float64)
    return scale * phase_range_rad * np.power(np.maximum(g / levels, 1e-9), gamma)


def parametric_sigma(
    gamma: float, scale: float, cov: np.ndarray, bit_depth: int, phase_range_rad: float
) -> np.ndarray:
    """1-σ of the parametric table per grey level (delta method)."""
    levels = 2**bit_depth
    x = np.maximum(np.arange(levels, dtype=np.float64) / levels, 1e-9)
    base = phase_range_rad * np.power(x, gamma)
    d_gamma = scale * base * np.log(x)
    d_scale = base
    jac = np.stack([d_gamma, d_scale], 1)
    var = np.einsum("li,ij,lj->l", jac, cov, jac)
    var[0] = 0.0
    return np.sqrt(np.maximum(var, 0.0))


def fit_lut(
    levels: Sequence[LevelPhase],
    bit_depth: int,
    phase_range_rad: float = TWO_PI,
    chi2_max: float = PARAMETRIC_CHI2_MAX,
    systematic_rad: float = LUT_SYSTEMATIC_RAD,
) -> LUTFit:
    """Fit the monotone phase-response curve to per-level phases (see the module docstring)."""
    from scipy.interpolate import PchipInterpolator
    from scipy.optimize import least_squares

    lv = sorted(levels, key=lambda x: x.grey)
    g = np.array([x.grey for x in lv], dtype=np.float64)
    phi = unwrap_monotone(g, np.array([x.phase_rad for x in lv]))
    sig = np.hypot([x.sigma_rad for x in lv], systematic_rad)
    n_levels = 2**bit_depth

    def resid(p: np.ndarray) -> np.ndarray:
        gm, sc = p
        return (sc * phase_range_rad * np.power(g / n_levels, gm) - phi) / sig

    sol = least_squares(resid, x0=np.array([1.0, 1.0]), bounds=([0.2, 0.2], [5.0, 3.0]))
    jac = sol.jac
    dof = max(len(g) - 2, 1)
    chi2_dof = float(np.sum(sol.fun**2) / dof)
    try:
        cov = np.linalg.inv(jac.T @ jac) * max(1.0, chi2_dof)
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), np.nan)
    gamma, scale = float(sol.x[0]), float(sol.x[1])
    points = [
        {"grey": int(a), "phase_rad": float(b), "sigma_rad": float(c)}
        for a, b, c in zip(g, phi, sig)
    ]
    if chi2_dof <= chi2_max:
        table = parametric_table(gamma, scale, bit_depth, phase_range_rad)
        tsig = parametric_sigma(gamma, scale, cov, bit_depth, phase_range_rad)
        method = "parametric"
    else:
        mono = isotonic(phi, 1 / sig**2)
        xs = np.concatenate([[0.0], g])
        ys = np.concatenate([[0.0], mono])
        xs, idx = np.unique(xs, return_index=True)
        ys = np.maximum.accumulate(ys[idx])
        table = PchipInterpolator(xs, ys, extrapolate=True)(np.arange(n_levels, dtype=np.float64))
        table = np.maximum.accumulate(table)
        tsig = np.interp(np.arange(n_levels), xs, np.concatenate([[0.0], sig])[idx])
        method = "monotone_pchip"
        log.info("LUT: power law rejected (χ²/dof %.1f); monotone PCHIP used", chi2_dof)
    return LUTFit(table, tsig, method, gamma, scale, cov, chi2_dof, points)


def lut_error_rms(table: np.ndarray, truth: np.ndarray) -> float:
    """RMS phase error (rad) of a LUT against a reference, both relative to grey 0."""
    a = np.asarray(table, dtype=np.float64) - float(table[0])
    b = np.asarray(truth, dtype=np.float64) - float(truth[0])
    return float(np.sqrt(np.mean((a - b) ** 2)))
