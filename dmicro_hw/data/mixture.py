"""Drawing one sample of a phantom mixture (``data.kind: mixture``).

    component (by weight: a family of dmicro_hw.data.families, or a user folder)
      [+ a second component, overlaid, with probability overlay_probability]
      → random rotation by k·90° and flip
      → peak phase ~ U(peak_fraction) · phase_max_rad
      → [inverted: objects below a flat background, with probability invert_probability]
      → [smooth background: tilt + curvature, with probability background_probability]
      → referenced to its minimum (the phase of a field has no absolute zero) and kept within
        [0, phase_max_rad]

Varying the peak phase matters as much as the shapes: a decoder trained on fields that all reach
``phase_max_rad`` learns to stretch every object to that height.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dmicro_hw.config import FolderDataConfig, MixtureComponent, MixtureDataConfig
from dmicro_hw.data.families import draw_family


class Mixture:
    """Sampler of one split of a mixture config; :meth:`sample` draws from a given generator."""

    def __init__(self, cfg: MixtureDataConfig, size: int, split: str = "train") -> None:
        self.cfg = cfg
        self.size = int(size)
        w = np.array([c.weight for c in cfg.components], dtype=np.float64)
        self.p = w / w.sum()
        self._folders: dict[int, Any] = {}
        for i, c in enumerate(cfg.components):
            if c.folder is not None:
                self._folders[i] = _folder_split(c, cfg, self.size, split)

    def _relative(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """(map, absolute): a relative map in [0, 1], or radians when the folder says 'none'."""
        c: MixtureComponent = self.cfg.components[i]
        if c.family is not None:
            return draw_family(c.family, rng, self.size, c.options), False
        ds = self._folders[i]
        phi = ds[int(rng.integers(len(ds)))].numpy().astype(np.float64)
        if c.rescale == "none":
            return phi, True
        lo, hi = phi.min(), phi.max()
        return ((phi - lo) / (hi - lo) if hi > lo else phi * 0.0), False

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One phase map, float32 (size, size), radians within [0, phase_max_rad]."""
        cfg = self.cfg
        pmax = cfg.phase_max_rad
        i = int(rng.choice(len(self.p), p=self.p))
        rel, absolute = self._relative(i, rng)
        if absolute:  # user phase in radians: only rotated/flipped
            return _orient(rng, rel).clip(0.0, pmax).astype(np.float32)
        if rng.random() < cfg.overlay_probability:
            j = int(rng.choice(len(self.p), p=self.p))
            other, other_abs = self._relative(j, rng)
            if not other_abs:
                rel = rel + rng.uniform(0.2, 1.0) * other
                rel = rel / max(rel.max(), 1e-12)
        rel = _orient(rng, rel)
        peak = rng.uniform(*cfg.peak_fraction) * pmax
        phi = rel * peak
        if rng.random() < cfg.invert_probability:
            phi = peak - phi
        if rng.random() < cfg.background_probability:
            phi = phi + _background(rng, self.size) * cfg.background_fraction * peak
        phi -= phi.min()
        top = phi.max()
        if top > pmax:
            phi *= pmax / top
        return phi.astype(np.float32)


def _orient(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    a = np.rot90(a, int(rng.integers(4)))
    return np.ascontiguousarray(a[:, ::-1] if rng.random() < 0.5 else a)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth background in [-1, 1]·(random): tilt plus curvature (slide, coverslip, medium)."""
    c = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    a = rng.normal(0.0, 1.0, size=5)
    bg = a[0] * yy + a[1] * xx + a[2] * yy * yy + a[3] * xx * xx + a[4] * xx * yy
    span = bg.max() - bg.min()
    return (bg - bg.min()) / span if span > 0 else bg * 0.0


def _folder_split(c: MixtureComponent, cfg: MixtureDataConfig, size: int, split: str) -> Any:
    """The split of a folder component (random crops for train, centre crops else)."""
    from dmicro_hw.data.folder import folder_datasets
    from dmicro_hw.errors import DataError

    fcfg = FolderDataConfig(
        path=c.folder,
        content=c.content,
        key=c.key,
        seed=cfg.seed,
        rescale="none" if c.rescale == "none" else "sample",
        phase_max_rad=cfg.phase_max_rad,
        val_fraction=0.1,
        test_fraction=0.1,
    )
    tr, va, te = folder_datasets(fcfg, size)
    ds = {"train": tr, "val": va, "test": te}[split]
    if len(ds) == 0:
        ds = tr  # a folder too small to split: every split draws from all of it
    if len(ds) == 0:
        raise DataError(f"{c.folder}: mixture component folder holds no samples")
    return ds
