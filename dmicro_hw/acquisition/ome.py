"""OME-Zarr 0.5 metadata of a run store: one collection, one image group per image.

OME readers (ome-zarr-py, ngff-zarr, napari-ome-zarr) read ``multiscales[0]`` of a group only, so
every image (``raw``, ``phase``, and any later per-frame map) is its own image group, listed in
the collection's index (bioformats2raw layout 3, OME-Zarr 0.5 §"bioformats2raw.layout")::

    run.zarr/                 ome: {version: "0.5", bioformats2raw.layout: 3} + dmicro attributes
      OME/                    ome: {version: "0.5", series: ["raw", "phase", …]}  ← the index
      raw/                    image: ome.multiscales (t, y, x) + ome.omero (name, contrast)
        0                     (t, y, x) array, full resolution (the only level)
      phase/                  image, same shape of metadata; pixel size of the object plane
        0
      frame_id, host_time, …  per-frame records (1-D over t), counters — not images

The functions here only build JSON-ready dicts (plain data, no OME library needed at run time);
the tests validate them with ``ome-zarr-models`` and open the stores with ome-zarr-py and
ngff-zarr.
"""

from __future__ import annotations

from typing import Any

OME_VERSION = "0.5"
#: name of the level-0 array inside each image group
LEVEL0 = "0"
#: image group holding the collection index (bioformats2raw layout)
INDEX_GROUP = "OME"

AXES: list[dict[str, str]] = [
    {"name": "t", "type": "time", "unit": "second"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def collection_attrs() -> dict[str, Any]:
    """The ``ome`` attributes of the run's root group (a collection of images)."""
    return {"version": OME_VERSION, "bioformats2raw.layout": 3}


def index_attrs(series: list[str]) -> dict[str, Any]:
    """The ``ome`` attributes of ``OME/``: the paths of the image groups, in order."""
    return {"version": OME_VERSION, "series": list(series)}


def image_attrs(
    name: str,
    *,
    pixel_m: float,
    frame_interval_s: float,
    window: tuple[float, float, float, float],
    color: str = "FFFFFF",
    unit: str = "",
) -> dict[str, Any]:
    """The ``ome`` attributes of one (t, y, x) image group.

    Args:
        name: image name (also the omero channel label).
        pixel_m: pixel pitch in the object plane, metres (stored as µm).
        frame_interval_s: time between frames, seconds (scale along t).
        window: contrast ``(min, max, start, end)`` in the data's units: min/max the range the
            data can take, start/end the displayed range.
        color: display colour, RRGGBB hex.
        unit: unit of the values (e.g. ``ADU``, ``rad``), added to the channel label.
    """
    um = float(pixel_m) * 1e6
    lo, hi, start, end = (float(v) for v in window)
    label = f"{name} [{unit}]" if unit else name
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [dict(a) for a in AXES],
                "datasets": [
                    {
                        "path": LEVEL0,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(frame_interval_s), um, um]}
                        ],
                    }
                ],
            }
        ],
        "omero": {
            "name": name,
            "channels": [
                {
                    "label": label,
                    "color": color,
                    "active": True,
                    "window": {"min": lo, "max": hi, "start": start, "end": end},
                }
            ],
            "rdefs": {"model": "greyscale", "defaultT": 0, "defaultZ": 0},
        },
    }


def set_window(ome: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """Copy of image ``ome`` attributes with the displayed range set to [start, end]
    (min/max widened to hold it)."""
    out = dict(ome)
    omero = dict(out.get("omero", {}))
    chans = [dict(c) for c in omero.get("channels", [])]
    for c in chans:
        w = dict(c.get("window", {}))
        w["start"], w["end"] = float(start), float(end)
        w["min"] = min(float(w.get("min", start)), float(start))
        w["max"] = max(float(w.get("max", end)), float(end))
        c["window"] = w
    omero["channels"] = chans
    out["omero"] = omero
    return out


def pixel_size_um(ome: dict[str, Any]) -> tuple[float, float, float]:
    """(t seconds, y µm, x µm) scale of an image's level 0 from its ``ome`` attributes."""
    ds = ome["multiscales"][0]["datasets"][0]
    for tr in ds.get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            t, y, x = (float(v) for v in tr["scale"])
            return t, y, x
    return 1.0, 1.0, 1.0
