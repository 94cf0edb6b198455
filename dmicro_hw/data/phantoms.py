"""Synthetic phase samples: cell phantoms for training and exact phase targets for calibration.

Cell phantoms (:func:`generate_cells`) imitate adherent cells seen by quantitative phase imaging:
a few cells per field, each a smooth blob with a perturbed boundary (random low harmonics on an
ellipse), a dome-shaped thickness profile with soft edges, a textured cytoplasm (smoothed noise), an
elevated nucleus and one to four nucleoli. Every field is float32, in radians, with background
exactly 0 and maximum exactly ``phase_max_rad`` (the range the training normalises to [0, 1]).

Sample ``i`` depends only on ``(seed, stream, i)`` (and the size / phase range): each sample has
its own :class:`numpy.random.SeedSequence`, so any index range can be generated on its own and
splits that use different streams never share a sample.

Calibration targets (:func:`phase_target`) are piecewise-constant with sharp edges, so every pixel
value is known exactly: a multiple of ``phase_max_rad / (levels - 1)``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "TARGET_KINDS",
    "cell_phantom",
    "generate_cells",
    "phase_target",
    "sample_rng",
    "target_levels",
]

TARGET_KINDS = ("resolution", "steps", "spokes")
STEP_LEVELS = 8  # number of phase levels of the step wedge (0 … phase_max in equal steps)


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The independent random generator of sample ``index`` of ``stream`` for ``seed``."""
    mask = (1 << 64) - 1  # SeedSequence wants non-negative integers; negative seeds are allowed
    return np.random.default_rng(np.random.SeedSequence([seed & mask, stream & mask, index & mask]))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """C¹ ramp: 0 for t ≤ 0, 1 for t ≥ 1, 3t² − 2t³ between (compact support, no halo)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blob(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    aspect: float,
    harmonics: int,
    roughness: float,
) -> np.ndarray:
    """Normalised radial coordinate ρ of a perturbed ellipse (ρ < 1 inside, 1 on the boundary).

    The boundary is r(θ) = radius · (1 + Σ_m a_m cos(mθ + φ_m)), m = 2 … harmonics+1, on an ellipse
    of the given aspect ratio and a random orientation.
    """
    angle = rng.uniform(0.0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / radius
    v = (-s * dx + c * dy) / (radius * aspect)
    r = np.hypot(u, v)
    e = (u + 1j * v) / np.maximum(r, 1e-12)  # e^{iθ}; cos(mθ + φ) = Re(e^{imθ} e^{iφ})
    m = np.arange(2, harmonics + 2)
    amp = roughness * rng.uniform(0.2, 1.0, size=m.size) / m
    coef = amp * np.exp(1j * rng.uniform(0.0, 2 * math.pi, size=m.size))
    em = e * e
    acc = coef[0] * em
    for c_m in coef[1:]:  # powers by repeated multiplication: no trig per pixel
        em = em * e
        acc += c_m * em
    return r / (1.0 + acc.real)


def cell_phantom(rng: np.random.Generator, size: int) -> np.ndarray:
    """One unnormalised cell field (float64, (size, size), ≥ 0, background exactly 0).

    Geometry scales with ``size`` (cell radii are fractions of the field), so a 32-px field
    looks like a coarse 256-px one.
    """
    out = np.zeros((size, size), dtype=np.float64)
    # cytoplasm texture: smoothed white noise, unit std, shared by the cells of this field
    tex_sigma = max(0.8, size / 96.0) * rng.uniform(0.7, 1.5)
    noise = rng.standard_normal((size, size), dtype=np.float32)
    texture = ndimage.gaussian_filter(noise, tex_sigma, mode="wrap", truncate=3.0)
    texture /= texture.std() + 1e-12
    texture_strength = rng.uniform(0.08, 0.3)

    n_cells = int(rng.integers(1, 6))
    for _ in range(n_cells):
        radius = rng.uniform(0.11, 0.26) * size
        aspect = rng.uniform(0.55, 1.0)
        roughness = rng.uniform(0.05, 0.35)
        cy, cx = rng.uniform(0.12, 0.88, size=2) * size
        # bounding box of the perturbed boundary (|Σ a_m| ≤ roughness · Σ 1/m < 1.2 roughness)
        reach = radius * (1.0 + 1.2 * roughness) + 2.0
        y0, y1 = max(0, int(cy - reach)), min(size, int(math.ceil(cy + reach)) + 1)
        x0, x1 = max(0, int(cx - reach)), min(size, int(math.ceil(cx + reach)) + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)

        rho = _blob(rng, yy, xx, cy, cx, radius, aspect, harmonics=5, roughness=roughness)
        # soft edge at least ~2 px wide whatever the field size
        edge = _smoothstep((1.0 - rho) / max(rng.uniform(0.12, 0.3), 2.0 / radius))
        dome = np.clip(1.0 - rho * rho, 0.0, None) ** rng.uniform(0.3, 0.8)
        body = edge * (0.25 + 0.75 * dome)
        body *= np.clip(1.0 + texture_strength * texture[y0:y1, x0:x1], 0.0, None)
        cell = rng.uniform(0.35, 0.6) * body

        # nucleus: a smaller, smoother blob off-centre, well inside the cell body
        n_radius = radius * min(aspect, 0.9) * rng.uniform(0.35, 0.6)
        offset = rng.uniform(0.0, 1.0) * max(0.0, 0.7 * radius * aspect - 1.1 * n_radius)
        direction = rng.uniform(0.0, 2 * math.pi)
        ny, nx = cy + offset * math.sin(direction), cx + offset * math.cos(direction)
        n_rho = _blob(rng, yy, xx, ny, nx, n_radius, rng.uniform(0.65, 1.0), 3, 0.15)
        n_edge = _smoothstep((1.0 - n_rho) / max(0.35, 2.0 / n_radius))
        nucleus = n_edge * np.sqrt(np.clip(1.0 - n_rho**2, 0.0, None))
        cell += rng.uniform(0.25, 0.5) * nucleus * edge

        # nucleoli: small Gaussian bumps inside the nucleus
        for _ in range(int(rng.integers(1, 5))):
            r = rng.uniform(0.0, 0.55) * n_radius
            a = rng.uniform(0.0, 2 * math.pi)
            sigma = max(1.0, n_radius * rng.uniform(0.08, 0.18))
            d2 = (yy - ny - r * math.sin(a)) ** 2 + (xx - nx - r * math.cos(a)) ** 2
            cell += rng.uniform(0.1, 0.25) * np.exp(-d2 / (2 * sigma * sigma)) * (nucleus > 0)

        out[y0:y1, x0:x1] += cell
    return out


def generate_cells(
    n: int,
    size: int,
    phase_max_rad: float = math.pi,
    seed: int = 0,
    *,
    start: int = 0,
    stream: int = 0,
) -> np.ndarray:
    """Generate ``n`` cell phantoms as phase maps.

    Args:
        n: number of samples.
        size: side N of each N×N field (pixels, ≥ 8).
        phase_max_rad: phase of the thickest point of each field (radians, > 0).
        seed: random seed.
        start: index of the first sample; sample j of the result is sample ``start + j``.
        stream: independent stream id (the datasets use 0 = train, 1 = val, 2 = test).

    Returns:
        float32 array (n, size, size) in radians: background exactly 0, maximum of every
        sample exactly ``phase_max_rad``. Sample ``start + j`` depends only on
        ``(seed, stream, start + j, size, phase_max_rad)``.
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n ≥ 0 and size ≥ 8, got n={n}, size={size}")
    if not phase_max_rad > 0:
        raise ValueError(f"phase_max_rad must be > 0, got {phase_max_rad}")
    out = np.empty((n, size, size), dtype=np.float32)
    for j in range(n):
        rng = sample_rng(seed, start + j, stream)
        phi = cell_phantom(rng, size)
        peak = phi.max()
        if peak <= 0:  # all cells fell outside (cannot happen with centres inside the field)
            phi = cell_phantom(sample_rng(seed, start + j, stream + 1_000_003), size)
            peak = phi.max()
        out[j] = phi * (phase_max_rad / peak)
    return out


# --------------------------------------------------------------------------------------------
# Calibration targets
# --------------------------------------------------------------------------------------------


def target_levels(phase_max_rad: float = math.pi) -> np.ndarray:
    """The phase values a calibration target may contain: k · phase_max / 7, k = 0 … 7."""
    return (np.arange(STEP_LEVELS) * (phase_max_rad / (STEP_LEVELS - 1))).astype(np.float32)


def _steps(h: int, w: int, levels: np.ndarray) -> np.ndarray:
    """Step wedge: equal-width vertical bands, levels 0 … max from left to right."""
    cols = np.minimum((np.arange(w) * len(levels)) // w, len(levels) - 1)
    return np.broadcast_to(levels[cols], (h, w)).copy()


def _star(size: int, value: float, spokes: int = 16) -> np.ndarray:
    """Binary Siemens star of ``spokes`` bright sectors inside a disc of radius 0.45·size."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size] - c
    theta = np.arctan2(yy, xx)
    on = (np.floor(theta * spokes / math.pi) % 2 == 0) & (np.hypot(yy, xx) <= 0.45 * size)
    return np.where(on, value, 0.0).astype(np.float32)


def _bars(h: int, w: int, value: float) -> np.ndarray:
    """Groups of three bars, vertical above horizontal, line widths 8, 4, 2, 1 px (as fit)."""
    out = np.zeros((h, w), dtype=np.float32)
    widths = [lw for lw in (8, 4, 2, 1) if 5 * lw <= 0.2 * w and 5 * lw <= 0.35 * h] or [1]
    cell_w = w // len(widths)
    y_v, y_h = int(0.1 * h), int(0.55 * h)
    length = max(3, int(0.35 * h))
    for g, lw in enumerate(widths):
        x0 = g * cell_w
        xv = x0 + (cell_w - 5 * lw) // 2
        for b in range(3):  # vertical bars: resolve x
            out[y_v : y_v + length, xv + 2 * b * lw : xv + 2 * b * lw + lw] = value
        xa, xb = x0 + int(0.15 * cell_w), x0 + int(0.85 * cell_w)
        for b in range(3):  # horizontal bars: resolve y
            out[y_h + 2 * b * lw : y_h + 2 * b * lw + lw, xa:xb] = value
    return out


def phase_target(
    size: int,
    kind: Literal["resolution", "steps", "spokes"] = "resolution",
    phase_max_rad: float = math.pi,
) -> np.ndarray:
    """A known phase target (float32 (size, size), radians) for calibration and checks.

    Every pixel is exactly one of :func:`target_levels` (``k · phase_max_rad / 7``); edges are
    sharp (no anti-aliasing), background 0.

    Kinds:
        ``steps``: an 8-level step wedge (vertical bands from 0 to ``phase_max_rad``) inside a
            background-0 frame of width size/8 — for the SLM/phase response (LUT).
        ``spokes``: a 16-spoke binary Siemens star (0 / ``phase_max_rad``) — for resolution,
            rotation and centring.
        ``resolution``: a composite: step wedge (top left), Siemens star at 4/7 of the full
            value (top right), and bar groups at full value with line widths 8, 4, 2, 1 px
            (those that fit; bottom) — everything at once.
    """
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; allowed: {', '.join(TARGET_KINDS)}")
    if size < 16:
        raise ValueError(f"target size must be ≥ 16, got {size}")
    levels = target_levels(phase_max_rad)
    top = levels[-1]
    out = np.zeros((size, size), dtype=np.float32)
    if kind == "steps":
        m = size // 8
        out[m : size - m, m : size - m] = _steps(size - 2 * m, size - 2 * m, levels)
    elif kind == "spokes":
        out[:] = _star(size, top)
    else:
        half = size // 2
        m = max(1, size // 32)
        out[m : half - m, m : half - m] = _steps(half - 2 * m, half - 2 * m, levels)
        out[:half, half : half + half] = _star(half, levels[(STEP_LEVELS - 1) // 2 + 1])[
            :, : size - half
        ]
        out[half:, :] = _bars(size - half, size, top)
    return out
