"""The phantom library: families of thin phase objects a bench sees, and how to draw from them.

Every family is a function ``(rng, size, **knobs) -> (size, size) float64`` that returns a
*relative* phase map: non-negative, minimum 0 (the field's phase reference), maximum 1. The
mixture (:mod:`dmicro_hw.data.mixture`) scales it to a peak phase in ``[0, phase_max_rad]`` and
may add a smooth background. Families and their knobs (defaults in :data:`FAMILIES`):

``cells``     adherent cells (:func:`~dmicro_hw.data.phantoms.cell_phantom`): few large blobs with
              nucleus, nucleoli, textured cytoplasm.
``clusters``  clustered and dividing cells: many small cells packed around a few centres, and
              dividing pairs (two rounded, taller cells joined by a neck).
``spheres``   dielectric spheres with the exact projected phase 2·sqrt(R² − r²) (pixel-integrated;
              :func:`dmicro_hw.data.beads.sphere_phase`), random radii and counts, may touch.
``debris``    small irregular fragments with sharp edges and their own phase levels.
``smooth``    smooth random fields (Gaussian-filtered noise, random correlation length).
``texture``   natural-texture phase: a dead-leaves image (occluding discs and ellipses with a
              power-law size law, the classic model of natural image statistics) plus fine noise.
``targets``   resolution and step targets: random bars, rectangles, discs, wedges and stars of
              piecewise-constant phase with sharp edges, at random orientations.
``fibres``    filaments: smooth random curves of 1–4 px width (cytoskeleton, fibres, scratches).

All draws use the ``rng`` passed in (see :func:`dmicro_hw.data.phantoms.sample_rng`), so sample
``i`` of any family is reproducible on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from dmicro_hw.data.phantoms import _blob, _smoothstep, cell_phantom

__all__ = ["FAMILIES", "FAMILY_NAMES", "draw_family", "family_knobs"]


def _unit(phi: np.ndarray) -> np.ndarray:
    """Reference to the minimum and scale to a maximum of 1 (all-equal → zeros)."""
    phi = phi - phi.min()
    peak = phi.max()
    return phi / peak if peak > 0 else phi


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float64)


def _range(rng: np.random.Generator, r: Any) -> float:
    """A knob given as a number or a (lo, hi) range → one uniform draw."""
    if isinstance(r, (tuple, list)):
        return float(rng.uniform(float(r[0]), float(r[1])))
    return float(r)


def _int_range(rng: np.random.Generator, r: Any) -> int:
    if isinstance(r, (tuple, list)):
        return int(rng.integers(int(r[0]), int(r[1]) + 1))
    return int(r)


# ----------------------------------------------------------------------------------- families


def cells(rng: np.random.Generator, size: int) -> np.ndarray:
    return cell_phantom(rng, size)


def clusters(
    rng: np.random.Generator,
    size: int,
    groups: tuple[int, int] = (1, 3),
    cells_per_group: tuple[int, int] = (3, 12),
    cell_radius: tuple[float, float] = (0.04, 0.1),
    dividing_probability: float = 0.35,
) -> np.ndarray:
    """Packed small cells around a few cluster centres; some are dividing pairs."""
    yy, xx = _grid(size)
    out = np.zeros((size, size))
    for _ in range(_int_range(rng, groups)):
        gy, gx = rng.uniform(0.15, 0.85, size=2) * size
        spread = rng.uniform(0.08, 0.22) * size
        for _ in range(_int_range(rng, cells_per_group)):
            radius = _range(rng, cell_radius) * size
            cy, cx = gy + rng.normal(0, spread), gx + rng.normal(0, spread)
            height = rng.uniform(0.4, 1.0)
            parts = [(cy, cx, radius)]
            if rng.random() < dividing_probability:  # two daughters, rounded and taller
                a = rng.uniform(0, math.pi)
                d = radius * rng.uniform(0.7, 1.0)
                r2 = radius * rng.uniform(0.7, 0.85)
                parts = [
                    (cy + d * math.sin(a), cx + d * math.cos(a), r2),
                    (cy - d * math.sin(a), cx - d * math.cos(a), r2),
                ]
                height = rng.uniform(0.8, 1.3)
            for py, px, r in parts:
                rho = _blob(rng, yy, xx, py, px, r, rng.uniform(0.7, 1.0), 3, rng.uniform(0, 0.2))
                edge = _smoothstep((1.0 - rho) / max(0.2, 1.5 / r))
                dome = np.clip(1.0 - rho * rho, 0.0, None) ** rng.uniform(0.3, 0.7)
                out = np.maximum(out, height * edge * (0.3 + 0.7 * dome))
    return out


def spheres(
    rng: np.random.Generator,
    size: int,
    count: tuple[int, int] = (1, 12),
    radius: tuple[float, float] = (0.02, 0.2),
) -> np.ndarray:
    """Dielectric spheres: exact projected phase ∝ 2·sqrt(R² − r²) (pixel-integrated)."""
    from dmicro_hw.data.beads import sphere_phase

    yy, xx = _grid(size)
    out = np.zeros((size, size))
    n = _int_range(rng, count)
    for _ in range(n):
        r_px = max(1.5, _range(rng, radius) * size)
        cy, cx = rng.uniform(0.05, 0.95, size=2) * size
        dn = rng.uniform(0.3, 1.0)  # relative index contrast of this sphere
        # unit pixel and wavelength 2π: phase = Δn · 2·sqrt(R² − r²) in pixel units
        out += sphere_phase(yy, xx, cy, cx, r_px, dn, 2 * math.pi, 1.0)
    return out


def debris(
    rng: np.random.Generator,
    size: int,
    count: tuple[int, int] = (3, 40),
    extent: tuple[float, float] = (0.01, 0.07),
) -> np.ndarray:
    """Irregular fragments with sharp edges (polygons and jagged blobs), own phase levels."""
    yy, xx = _grid(size)
    out = np.zeros((size, size))
    for _ in range(_int_range(rng, count)):
        r = max(1.0, _range(rng, extent) * size)
        cy, cx = rng.uniform(0, size, size=2)
        if rng.random() < 0.5:  # polygon: half-plane intersection of a random convex shape
            k = int(rng.integers(3, 8))  # edges at jittered, evenly spread normals: bounded
            angles = (np.arange(k) + rng.uniform(-0.3, 0.3, size=k)) * 2 * math.pi / k
            inside = np.ones((size, size), bool)
            for a in angles:
                d = r * rng.uniform(0.6, 1.2)
                inside &= (yy - cy) * math.sin(a) + (xx - cx) * math.cos(a) <= d
        else:  # jagged blob: strongly perturbed boundary, hard edge
            rho = _blob(rng, yy, xx, cy, cx, r, rng.uniform(0.3, 1.0), 8, rng.uniform(0.3, 0.7))
            inside = rho < 1.0
        level = rng.uniform(0.2, 1.0)
        slope = rng.normal(0, 0.3, size=2) / r  # slightly wedge-shaped fragments
        frag = level * (1 + slope[0] * (yy - cy) + slope[1] * (xx - cx))
        out = np.where(inside, np.maximum(out, np.clip(frag, 0.05, None)), out)
    return out


def smooth(
    rng: np.random.Generator,
    size: int,
    correlation: tuple[float, float] = (0.01, 0.15),
    exponent: tuple[float, float] = (0.5, 2.0),
) -> np.ndarray:
    """Smooth random field: white noise through a Gaussian of random width, then a power law."""
    sigma = max(0.7, _range(rng, correlation) * size)
    f = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    f = _unit(f)
    return f ** _range(rng, exponent)


def texture(
    rng: np.random.Generator,
    size: int,
    leaves: tuple[int, int] = (150, 700),
    radius: tuple[float, float] = (0.008, 0.4),
    power: float = 2.5,
    grain: tuple[float, float] = (0.0, 0.15),
) -> np.ndarray:
    """Dead-leaves texture: occluding shaded ellipses, radii from a power law p(r) ∝ r^-power."""
    out = np.full((size, size), rng.uniform(0, 1))
    covered = np.zeros((size, size), bool)
    r_lo, r_hi = max(0.7, float(radius[0]) * size), float(radius[1]) * size
    a = 1.0 - power
    for _ in range(_int_range(rng, leaves)):
        r = (r_lo**a + rng.random() * (r_hi**a - r_lo**a)) ** (1.0 / a)  # inverse CDF
        cy, cx = rng.uniform(-r, size + r, size=2)
        y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 2)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        ang, asp = rng.uniform(0, math.pi), rng.uniform(0.4, 1.0)
        c, s = math.cos(ang), math.sin(ang)
        u = ((xx - cx) * c + (yy - cy) * s) / r
        v = (-(xx - cx) * s + (yy - cy) * c) / (r * asp)
        box = covered[y0:y1, x0:x1]
        leaf = (u * u + v * v <= 1.0) & ~box  # earlier leaves lie on top
        shade = rng.normal(0, 0.2, size=2) / max(r, 1.0)
        value = rng.uniform(0, 1) + shade[0] * (yy - cy) + shade[1] * (xx - cx)
        out[y0:y1, x0:x1] = np.where(leaf, value, out[y0:y1, x0:x1])
        box |= leaf
    g = _range(rng, grain)
    if g > 0:
        out = out + g * ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.7)
    return out


def targets(
    rng: np.random.Generator,
    size: int,
    shapes: tuple[int, int] = (2, 10),
    levels: tuple[int, int] = (2, 8),
) -> np.ndarray:
    """Piecewise-constant test objects: bars, rectangles, discs, wedges, stars (sharp edges)."""
    yy, xx = _grid(size)
    n_levels = _int_range(rng, levels)
    level_set = np.arange(1, n_levels + 1) / n_levels
    out = np.zeros((size, size))
    for _ in range(_int_range(rng, shapes)):
        kind = rng.choice(["bars", "rect", "disc", "wedge", "star"])
        cy, cx = rng.uniform(0.1, 0.9, size=2) * size
        ext = rng.uniform(0.05, 0.35) * size
        ang = rng.uniform(0, math.pi)
        c, s = math.cos(ang), math.sin(ang)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        value = rng.choice(level_set)
        if kind == "bars":
            width = max(1.0, rng.choice([1, 2, 3, 4, 6, 8]) * size / 256 * rng.uniform(1, 2))
            mask = (np.abs(v) <= ext) & (np.abs(u) <= 2.5 * width)
            mask &= np.floor((u + 2.5 * width) / width) % 2 == 0
        elif kind == "rect":
            mask = (np.abs(u) <= ext) & (np.abs(v) <= ext * rng.uniform(0.2, 1.0))
        elif kind == "disc":
            mask = np.hypot(u, v) <= ext
        elif kind == "wedge":  # step wedge along u
            mask = (np.abs(u) <= ext) & (np.abs(v) <= 0.5 * ext)
            steps = np.clip(np.floor((u + ext) / (2 * ext) * n_levels), 0, n_levels - 1)
            out = np.where(mask, level_set[steps.astype(int)], out)
            continue
        else:  # Siemens star
            spokes = int(rng.integers(6, 20))
            theta = np.arctan2(v, u)
            mask = (np.floor(theta * spokes / math.pi) % 2 == 0) & (np.hypot(u, v) <= ext)
        out = np.where(mask, value, out)
    return out


def fibres(
    rng: np.random.Generator,
    size: int,
    count: tuple[int, int] = (2, 25),
    width: tuple[float, float] = (0.6, 2.5),
) -> np.ndarray:
    """Smooth random curves with a Gaussian cross-section (filaments, fibres, scratches)."""
    out = np.zeros((size, size))
    for _ in range(_int_range(rng, count)):
        steps = int(rng.integers(size // 4, 2 * size))
        heading = rng.uniform(0, 2 * math.pi)
        curl = rng.uniform(0.0, 0.15)
        turn = np.cumsum(rng.normal(0, curl, size=steps)) + heading
        y = rng.uniform(0, size) + np.cumsum(np.sin(turn) * 0.5)
        x = rng.uniform(0, size) + np.cumsum(np.cos(turn) * 0.5)
        keep = (y >= 0) & (y < size) & (x >= 0) & (x < size)
        if not keep.any():
            continue
        line = np.zeros((size, size))
        np.add.at(line, (y[keep].astype(int), x[keep].astype(int)), 1.0)
        line = ndimage.gaussian_filter(np.minimum(line, 1.0), _range(rng, width))
        out += rng.uniform(0.3, 1.0) * line / max(line.max(), 1e-12)
    return out


FamilyFn = Callable[..., np.ndarray]

FAMILIES: dict[str, FamilyFn] = {
    "cells": cells,
    "clusters": clusters,
    "spheres": spheres,
    "debris": debris,
    "smooth": smooth,
    "texture": texture,
    "targets": targets,
    "fibres": fibres,
}
FAMILY_NAMES = tuple(FAMILIES)


def family_knobs(name: str) -> dict[str, Any]:
    """The knobs of family ``name`` and their defaults."""
    import inspect

    fn = FAMILIES[name]
    params = list(inspect.signature(fn).parameters.values())[2:]  # after (rng, size)
    return {p.name: p.default for p in params}


def check_knobs(name: str, knobs: dict[str, Any]) -> None:
    """Raise ValueError naming an unknown family or knob, or a knob of the wrong shape.

    A range knob takes ``[lo, hi]`` or one number (that value every time)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; allowed: {', '.join(FAMILY_NAMES)}")
    allowed = family_knobs(name)
    for k, v in knobs.items():
        if k not in allowed:
            raise ValueError(
                f"family {name!r} has no knob {k!r}; allowed: {', '.join(allowed) or 'none'}"
            )
        default = allowed[k]
        if isinstance(default, tuple) and isinstance(v, (list, tuple)):  # a range
            ok = (
                len(v) == 2
                and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
                and v[0] <= v[1]
            )
            if not ok:
                raise ValueError(f"family {name!r} knob {k!r}: expected [lo, hi], got {v!r}")
        elif not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"family {name!r} knob {k!r}: expected a number, got {v!r}")


def draw_family(
    name: str, rng: np.random.Generator, size: int, knobs: dict[str, Any] | None = None
) -> np.ndarray:
    """One relative phase map of family ``name``: float64 (size, size), min 0, max 1.

    A draw that comes out flat (every object fell outside) is redrawn from the same generator.
    """
    fn = FAMILIES[name]
    for _ in range(8):
        phi = _unit(fn(rng, size, **(knobs or {})))
        if phi.max() > 0:
            return phi
    return phi
