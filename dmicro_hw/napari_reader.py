"""napari reader for dmicro runs (``napari-dmicro``; npe2 manifest ``dmicro_hw/napari.yaml``).

``napari RUN`` (a run folder or its ``run.zarr``) opens every image of the run — ``raw`` (ADU)
and ``phase`` (rad), and any image added later — as image layers with their physical scale
(t in s, y/x in µm in the object plane), axis labels and units, contrast limits from the store's
``omero`` metadata, and the per-frame records in the layer metadata. Only committed frames are
shown (and only final phase frames). Nothing here imports napari: the reader returns plain
LayerData tuples, so it runs (and is tested) without a GUI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmicro_hw.acquisition.store import RunReader, image_array
from dmicro_hw.errors import DmicroError

LayerData = tuple[Any, dict[str, Any], str]

#: colour map and unit per image name (others: grey, no unit)
STYLE = {
    "raw": ("gray", "ADU"),
    "phase": ("cividis", "rad"),
    "consistency": ("magma", "chi2/dof"),  # the per-frame model consistency map, when stored
}


def _is_run(path: Path) -> bool:
    if (path / "run.zarr").is_dir():
        path = path / "run.zarr"
    if not (path / "zarr.json").is_file():
        return False
    try:
        RunReader(path)
    except DmicroError:
        return False
    return True


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: the reader when ``path`` is a dmicro run, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_run if _is_run(Path(path)) else None


def _lazy(arr: Any, n: int) -> Any:
    """The first ``n`` frames of a Zarr array, lazily (dask, which napari brings) if possible."""
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - napari depends on dask
        import numpy as np

        return np.asarray(arr[:n])
    return da.from_zarr(arr)[:n]


def read_run(path: str | list[str]) -> list[LayerData]:
    """Layers of a run: one image layer per image (raw, phase, …) with physical scale."""
    if isinstance(path, list):
        path = path[0]
    r = RunReader(path)
    recs = r.records()
    layers: list[LayerData] = []
    for name in r.image_names():
        if name == "raw":
            arr, n = r.raw, r.committed
        elif name == "phase":
            arr, n = r.phase_array, r.phase_committed
        else:  # another per-frame image (e.g. consistency), written beside the phase
            arr = image_array(r.group, name)
            n = min(r.phase_committed or r.committed, arr.shape[0]) if arr is not None else 0
        if arr is None or n == 0:
            continue
        cmap, unit = STYLE.get(name, ("gray", ""))
        t_s, y_um, x_um = r.pixel_size_um(name)
        meta: dict[str, Any] = {
            "dmicro_run": str(r.path),
            "unit": unit,
            "records": {k: v[:n] for k, v in recs.items()},
        }
        kwargs: dict[str, Any] = {
            "name": f"{name} [{unit}]" if unit else name,
            "scale": (t_s, y_um, x_um),
            "axis_labels": ("t", "y", "x"),
            "units": ("second", "micrometer", "micrometer"),
            "colormap": cmap,
            "metadata": meta,
            "blending": "additive" if layers else "translucent",
        }
        window = _window(r, name)
        if window is not None:
            kwargs["contrast_limits"] = window
        layers.append((_lazy(arr, n), kwargs, "image"))
    return layers


def _window(r: RunReader, name: str) -> tuple[float, float] | None:
    """Displayed range (omero window start/end) of an image, if recorded."""
    try:
        w = dict(r.group[name].attrs)["ome"]["omero"]["channels"][0]["window"]
        lo, hi = float(w["start"]), float(w["end"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return (lo, hi) if hi > lo else None
