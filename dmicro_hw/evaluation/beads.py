"""Known-object validation: find beads in a phase image and fit each with the projected sphere.

Detection (:func:`detect_beads`): the background level and its noise are estimated robustly
(median and 1.4826·MAD of the pixels outside the objects, two passes); pixels beyond
``threshold = background ± max(k_sigma·noise, rel_threshold·|peak − background|)`` are labelled
(:func:`scipy.ndimage.label`, 8-connected); objects touching the image border or smaller than
``min_area_px`` are discarded.

Fit (:func:`fit_bead`): on a square window around each object (other objects masked out) the
model ``offset + sphere_phase(cy, cx, R, Δn)`` — the same function that generates beads,
:func:`dmicro_hw.data.beads.sphere_phase` — is fitted by :func:`scipy.optimize.least_squares`
(trust-region reflective, bounds) with parameters centre (px), radius (px internally, reported in
metres), Δn and a background offset (rad). Uncertainties are the square roots of the diagonal of
``s²·(JᵀJ)⁻¹`` (J the Jacobian at the solution, s² the residual variance per degree of freedom):
exact for white noise, an underestimate when the residual is correlated (decoder errors are).
The refractive index is ``medium_index + Δn`` (σ of the index = σ of Δn; the medium index is
taken as known).

:func:`fit_beads` runs both on one image, :func:`summarize_fits` gives medians, robust spreads
(1.4826·MAD) and, when given, the errors against the nominal index and radius.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares

from dmicro_hw.data.beads import sphere_phase

__all__ = [
    "BeadCandidate",
    "BeadFit",
    "detect_beads",
    "fit_bead",
    "fit_beads",
    "summarize_fits",
]

MAD_TO_SIGMA = 1.4826  # σ of a Gaussian from its median absolute deviation
BORDER_CLEAR_PX = 1.0  # a fitted sphere must end this far inside the image (else it may be cut)


@dataclass(frozen=True)
class BeadCandidate:
    """One detected object (before the fit).

    Attributes:
        label: its id in the label image.
        cy, cx: phase-weighted centroid, pixels.
        area_px: pixels above the threshold.
        peak_rad: largest |phase − background| inside, radians.
        radius0_px: starting radius from the volume/peak ratio of a sphere, pixels.
    """

    label: int
    cy: float
    cx: float
    area_px: int
    peak_rad: float
    radius0_px: float


@dataclass
class BeadFit:
    """The fit of one bead. Lengths in metres unless ``_px``; phases in radians.

    ``ok`` is False when the fit did not converge, a parameter ended on its bound, the
    covariance is singular, the fitted sphere ends within ``BORDER_CLEAR_PX`` of the image border
    (it may be cut) or the residual RMS
    exceeds ``max_rel_residual`` of the peak phase; ``reason`` says which.
    """

    cy_px: float
    cx_px: float
    cy_sigma_px: float
    cx_sigma_px: float
    radius_m: float
    radius_sigma_m: float
    delta_n: float
    delta_n_sigma: float
    index: float
    index_sigma: float
    offset_rad: float
    offset_sigma_rad: float
    peak_rad: float
    residual_rms_rad: float
    pixels: int
    ok: bool
    reason: str = ""
    source: str = ""

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return asdict(self)


def _background(phase: np.ndarray, objects: np.ndarray | None) -> tuple[float, float]:
    """(median, 1.4826·MAD) of the pixels outside ``objects`` (all pixels when None)."""
    vals = phase[~objects] if objects is not None and (~objects).sum() >= 16 else phase.ravel()
    bg = float(np.median(vals))
    noise = MAD_TO_SIGMA * float(np.median(np.abs(vals - bg)))
    return bg, noise


def detect_beads(
    phase: np.ndarray,
    *,
    polarity: int = 1,
    k_sigma: float = 5.0,
    rel_threshold: float = 0.25,
    min_area_px: int = 9,
) -> tuple[np.ndarray, list[BeadCandidate], float, float]:
    """Find bead-like objects in a phase image.

    Args:
        phase: (H, W) phase in radians (any background level).
        polarity: +1 for beads above the background (Δn > 0), −1 for beads below it.
        k_sigma: the threshold is at least this many background noise σ from the background.
        rel_threshold: … and at least this fraction of the largest |phase − background|.
        min_area_px: smaller objects are discarded.

    Returns:
        ``(labels, candidates, background_rad, noise_rad)``: the (H, W) int label image of
        every object above the threshold (kept or not), the kept candidates (not touching the
        border, large enough), the background level and its noise σ.
    """
    a = np.asarray(phase, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(f"detect_beads: need a 2-D image of at least 8×8, got {a.shape}")
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be +1 or -1, got {polarity}")
    bg, noise = _background(a, None)
    mask = np.zeros(a.shape, dtype=bool)
    for _ in range(2):  # second pass: background from the pixels outside the objects
        signal = polarity * (a - bg)
        top = float(np.percentile(signal, 99.95))
        thr = max(k_sigma * noise, rel_threshold * top, 1e-12)
        mask = signal > thr
        bg, noise = _background(a, ndimage.binary_dilation(mask, iterations=2))
    signal = polarity * (a - bg)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    cands: list[BeadCandidate] = []
    h, w = a.shape
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w:
            continue  # cut by the border: the sphere model does not apply
        inside = labels[sl] == lab
        area = int(inside.sum())
        if area < min_area_px:
            continue
        s = np.where(inside, signal[sl], 0.0)
        peak = float(s.max())
        vol = float(s.sum())
        yy, xx = np.mgrid[sl]
        cy, cx = float((s * yy).sum() / vol), float((s * xx).sum() / vol)
        # sphere: volume / peak = (2/3)·π·R² (in px²); the object above the threshold holds
        # slightly less than the full volume, so also keep the equivalent-disc radius as a floor
        r0 = max(math.sqrt(1.5 * vol / (math.pi * peak)), math.sqrt(area / math.pi))
        cands.append(BeadCandidate(lab, cy, cx, area, peak, r0))
    return labels, cands, bg, noise


def fit_bead(
    phase: np.ndarray,
    candidate: BeadCandidate,
    *,
    wavelength_m: float,
    pixel_size_m: float,
    medium_index: float,
    labels: np.ndarray | None = None,
    background_rad: float = 0.0,
    polarity: int = 1,
    window: float = 1.6,
    max_rel_residual: float = 0.2,
) -> BeadFit:
    """Fit one detected bead with the projected-sphere model (see the module docstring).

    Args:
        phase: (H, W) phase image, radians.
        candidate: from :func:`detect_beads`.
        wavelength_m, pixel_size_m: vacuum wavelength and object-plane pixel pitch, metres.
        medium_index: refractive index of the medium around the bead.
        labels: the label image of :func:`detect_beads`; pixels of other objects (dilated by
            2 px) are left out of the fit.
        background_rad: starting value of the background offset.
        polarity: sign of Δn expected (the bound on Δn).
        window: half-side of the fit window in units of the starting radius (+3 px).
        max_rel_residual: residual RMS above this fraction of the peak phase marks the fit not ok.
    """
    a = np.asarray(phase, dtype=np.float64)
    h, w = a.shape
    r0 = candidate.radius0_px
    half = int(math.ceil(window * r0 + 3))
    y0, y1 = max(0, int(candidate.cy) - half), min(h, int(candidate.cy) + half + 2)
    x0, x1 = max(0, int(candidate.cx) - half), min(w, int(candidate.cx) + half + 2)
    data = a[y0:y1, x0:x1]
    use = np.ones(data.shape, dtype=bool)
    if labels is not None:
        # other objects, grown past their threshold contour (≈ 0.97 R at the default threshold)
        # to their rim; dilated on a padded window so objects just outside it count too
        grow = 2 + int(math.ceil(0.05 * r0))
        py0, py1 = max(0, y0 - grow), min(h, y1 + grow)
        px0, px1 = max(0, x0 - grow), min(w, x1 + grow)
        lab = labels[py0:py1, px0:px1]
        other = (lab != 0) & (lab != candidate.label)
        if other.any():
            other = ndimage.binary_dilation(other, iterations=grow)
            use &= ~other[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dn0 = polarity * candidate.peak_rad * wavelength_m / (4 * math.pi * r0 * pixel_size_m)

    def model(p: np.ndarray) -> np.ndarray:
        cy, cx, r_px, dn, off = p
        return off + sphere_phase(
            yy, xx, cy, cx, r_px * pixel_size_m, dn, wavelength_m, pixel_size_m
        )

    def residual(p: np.ndarray) -> np.ndarray:
        return (model(p) - data)[use]

    dn_lo, dn_hi = (1e-9, 1.0) if polarity > 0 else (-1.0, -1e-9)
    lo = np.array([y0, x0, 0.5, dn_lo, -np.inf])
    hi = np.array([y1 - 1, x1 - 1, max(2.0 * half, 3.0 * r0), dn_hi, np.inf])
    p0 = np.clip(
        np.array([candidate.cy, candidate.cx, r0, dn0, background_rad]),
        lo + 1e-6 * (hi - lo).clip(max=1.0),
        hi - 1e-6 * (hi - lo).clip(max=1.0),
    )
    res = least_squares(
        residual, p0, bounds=(lo, hi), method="trf", x_scale="jac", ftol=1e-10, xtol=1e-10
    )
    m = int(use.sum())
    dof = max(1, m - p0.size)
    s2 = 2.0 * float(res.cost) / dof
    reason = ""
    try:
        jtj = res.jac.T @ res.jac
        cov = s2 * np.linalg.inv(jtj)
        sig = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        if not np.all(np.isfinite(sig)):
            raise np.linalg.LinAlgError("non-finite covariance")
    except np.linalg.LinAlgError:
        sig = np.full(p0.size, np.nan)
        reason = "singular Jacobian (no uncertainty)"
    cy, cx, r_px, dn, off = (float(v) for v in res.x)
    e = BORDER_CLEAR_PX - 0.5  # pixel edges are at −0.5 and size − 0.5
    rms = math.sqrt(s2 * dof / m) if m else float("nan")
    peak = 4 * math.pi * r_px * pixel_size_m * dn / wavelength_m
    if not res.success:
        reason = reason or f"did not converge ({res.message})"
    elif np.any(res.active_mask != 0):
        names = ("cy", "cx", "radius", "Δn", "offset")
        at = [names[i] for i in np.flatnonzero(res.active_mask)]
        reason = reason or f"{', '.join(at)} on its bound"
    elif min(cy - r_px, cx - r_px) < e or max(cy + r_px - h, cx + r_px - w) > -1 - e:
        reason = reason or f"sphere within {BORDER_CLEAR_PX:g} px of the image border (cut?)"
    elif rms > max_rel_residual * abs(peak):
        reason = reason or f"poor fit (residual {rms:.3g} rad > {max_rel_residual:g} of peak)"
    return BeadFit(
        cy_px=cy,
        cx_px=cx,
        cy_sigma_px=float(sig[0]),
        cx_sigma_px=float(sig[1]),
        radius_m=r_px * pixel_size_m,
        radius_sigma_m=float(sig[2]) * pixel_size_m,
        delta_n=dn,
        delta_n_sigma=float(sig[3]),
        index=medium_index + dn,
        index_sigma=float(sig[3]),
        offset_rad=off,
        offset_sigma_rad=float(sig[4]),
        peak_rad=peak,
        residual_rms_rad=rms,
        pixels=m,
        ok=not reason,
        reason=reason,
    )


def bead_window_model(
    fit: BeadFit, shape: tuple[int, int], *, wavelength_m: float, pixel_size_m: float
) -> np.ndarray:
    """The fitted model (offset + sphere) over a whole image of ``shape`` (radians)."""
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    return fit.offset_rad + sphere_phase(
        yy, xx, fit.cy_px, fit.cx_px, fit.radius_m, fit.delta_n, wavelength_m, pixel_size_m
    )


def fit_beads(
    phase: np.ndarray,
    *,
    wavelength_m: float,
    pixel_size_m: float,
    medium_index: float,
    polarity: int = 1,
    k_sigma: float = 5.0,
    rel_threshold: float = 0.25,
    min_area_px: int = 9,
    max_rel_residual: float = 0.2,
    source: str = "",
) -> list[BeadFit]:
    """Detect and fit every bead of one (H, W) phase image (radians); one :class:`BeadFit` each
    (also those not ok), in label order. Arguments as in :func:`detect_beads` and
    :func:`fit_bead`; ``source`` is copied into each record (e.g. a file name or frame id)."""
    labels, cands, bg, _ = detect_beads(
        phase,
        polarity=polarity,
        k_sigma=k_sigma,
        rel_threshold=rel_threshold,
        min_area_px=min_area_px,
    )
    fits = []
    for c in cands:
        f = fit_bead(
            phase,
            c,
            wavelength_m=wavelength_m,
            pixel_size_m=pixel_size_m,
            medium_index=medium_index,
            labels=labels,
            background_rad=bg,
            polarity=polarity,
            max_rel_residual=max_rel_residual,
        )
        f.source = source
        fits.append(f)
    return fits


def _median(v: list[float]) -> float | None:
    v = [x for x in v if math.isfinite(x)]
    return float(np.median(v)) if v else None


def _robust(v: np.ndarray) -> dict[str, float | None]:
    if v.size == 0:
        return {"median": None, "spread": None}
    med = float(np.median(v))
    return {"median": med, "spread": MAD_TO_SIGMA * float(np.median(np.abs(v - med)))}


def summarize_fits(
    fits: list[BeadFit],
    *,
    given_index: float | None = None,
    given_radius_m: float | None = None,
) -> dict[str, float | int | None]:
    """Medians and robust spreads (1.4826·MAD) of index and radius over the ok fits.

    Returns a flat dict: ``count`` (ok fits), ``rejected`` (fits not ok), ``index_median``,
    ``index_spread``, ``radius_median_m``, ``radius_spread_m``, ``residual_rms_median_rad``,
    ``index_sigma_median`` and ``radius_sigma_median_m`` (the fits' own uncertainties);
    with ``given_index``: ``index_error_median`` (median of |index − given|) and
    ``index_bias`` (median index − given); with ``given_radius_m``: ``radius_error_median_rel``
    (median of |R − given| / given) and ``radius_bias_rel``.
    """
    ok = [f for f in fits if f.ok]
    idx = np.array([f.index for f in ok], dtype=np.float64)
    rad = np.array([f.radius_m for f in ok], dtype=np.float64)
    ri, rr = _robust(idx), _robust(rad)
    out: dict[str, float | int | None] = {
        "count": len(ok),
        "rejected": len(fits) - len(ok),
        "index_median": ri["median"],
        "index_spread": ri["spread"],
        "radius_median_m": rr["median"],
        "radius_spread_m": rr["spread"],
        "residual_rms_median_rad": _median([f.residual_rms_rad for f in ok]),
        "index_sigma_median": _median([f.index_sigma for f in ok]),
        "radius_sigma_median_m": _median([f.radius_sigma_m for f in ok]),
    }
    if given_index is not None:
        out["index_error_median"] = float(np.median(np.abs(idx - given_index))) if ok else None
        out["index_bias"] = float(np.median(idx) - given_index) if ok else None
    if given_radius_m is not None:
        rel = (rad - given_radius_m) / given_radius_m
        out["radius_error_median_rel"] = float(np.median(np.abs(rel))) if ok else None
        out["radius_bias_rel"] = float(np.median(rel)) if ok else None
    return out
