"""Shared look of every PNG figure (matplotlib, Agg backend): colour maps that stay readable
with colour-vision deficiencies, and colour bars that carry the unit.

| quantity | map | why |
|---|---|---|
| phase (rad) | ``cividis`` | made for deuteranopia/protanopia, perceptually uniform |
| raw camera frames (ADU) | ``gray`` | |
| errors, magnitudes | ``magma`` | perceptually uniform, readable in greyscale |
| signed residuals | ``RdBu_r`` | blue/red diverging (no red/green) |
| cyclic phase (wrapped) | ``twilight`` | cyclic and uniform |
| two-image overlays | magenta / green | (not red/green): equal parts show white |
"""

from __future__ import annotations

from typing import Any

import numpy as np

PHASE_CMAP = "cividis"
RAW_CMAP = "gray"
ERROR_CMAP = "magma"
DIVERGING_CMAP = "RdBu_r"
CYCLIC_CMAP = "twilight"


def plt() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def colorbar(fig: Any, im: Any, ax: Any, label: str, **kw: Any) -> Any:
    """A colour bar beside ``ax`` labelled with the quantity and its unit."""
    kw.setdefault("fraction", 0.046)
    kw.setdefault("pad", 0.03)
    cb = fig.colorbar(im, ax=ax, **kw)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two images in [0, 1] as one RGB image: ``a`` magenta, ``b`` green (white where equal),
    readable with red/green colour blindness."""
    a = np.clip(np.asarray(a, dtype=np.float64), 0, 1)
    b = np.clip(np.asarray(b, dtype=np.float64), 0, 1)
    return np.stack([a, b, a], -1)


def rgb(values: np.ndarray, cmap: str, vmin: float, vmax: float, bad: float = 0.5) -> np.ndarray:
    """uint8 RGB (…, 3) of ``values`` through colour map ``cmap``; NaN → grey ``bad``."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    z = np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    out = colormaps[cmap](np.nan_to_num(z, nan=0.0))[..., :3]
    out[~np.isfinite(v)] = bad
    return (out * 255 + 0.5).astype(np.uint8)
