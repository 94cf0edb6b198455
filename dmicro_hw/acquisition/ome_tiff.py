"""OME-TIFF export of a run (``dmicro export-tiff RUN``): one file per image (``raw.ome.tif``,
``phase.ome.tif``) with physical pixel sizes and the frame interval, via tifffile.

Frames are streamed chunk by chunk (a run larger than memory exports in constant memory); only
committed frames (and, for phase, only frames whose phase is final) are written. Phase is float32
radians with NaN where a frame was not decoded; the per-frame records stay in the Zarr store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.store import RunReader
from dmicro_hw.errors import DataError


def _frames(read: Any, n: int, chunk: int) -> Iterator[np.ndarray]:
    for s in range(0, n, chunk):
        block = read(s, min(n, s + chunk))
        yield from block


def export_ome_tiff(store: Path | str, out_dir: Path | str | None = None) -> dict[str, Any]:
    """Write ``raw.ome.tif`` and (when decoded) ``phase.ome.tif``; returns paths and shapes."""
    import tifffile

    reader = RunReader(store)
    n = reader.committed
    if n == 0:
        raise DataError(f"{reader.path}: no committed frames to export")
    out = Path(out_dir) if out_dir else reader.path.parent / "ome-tiff"
    out.mkdir(parents=True, exist_ok=True)
    chunk = reader.chunk_frames
    images: list[tuple[str, Any, int, str]] = [("raw", reader.raw_frames, n, "ADU")]
    if reader.has_phase and reader.phase_committed:
        images.append(("phase", reader.phase, reader.phase_committed, "rad"))
    files: dict[str, Any] = {}
    for name, read, count, unit in images:
        arr = reader.raw if name == "raw" else reader.phase_array
        t_s, y_um, x_um = reader.pixel_size_um(name)
        path = out / f"{name}.ome.tif"
        if path.is_symlink():
            raise DataError(f"{path}: is a symbolic link; refusing to write through it")
        shape = (count, *arr.shape[1:])
        meta = {
            "axes": "TYX",
            "Name": f"{reader.path.parent.name} {name} [{unit}]",
            "PhysicalSizeX": x_um,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": y_um,
            "PhysicalSizeYUnit": "µm",
            "TimeIncrement": t_s,
            "TimeIncrementUnit": "s",
            "Channel": {"Name": [f"{name} [{unit}]"]},
        }
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
            tif.write(
                _frames(read, count, chunk),
                shape=shape,
                dtype=arr.dtype,
                metadata=meta,
                resolutionunit="CENTIMETER",
                resolution=(1e4 / x_um, 1e4 / y_um),
            )
        files[name] = {"path": str(path), "shape": list(shape), "dtype": str(arr.dtype)}
    return {"out": str(out), "files": files}
