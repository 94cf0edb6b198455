"""Chunk integrity of a run store: CRC32C checksums on every chunk, missing chunks told apart
from data.

Every array of a run store written by :class:`~dmicro_hw.acquisition.writer.RunWriter` ends its
codec chain with Zarr v3's ``crc32c`` codec: the checksum of each encoded chunk is stored with
it and checked by zarr on every read (a mismatch raises). Empty chunks are written too
(``write_empty_chunks``), so inside the committed range every chunk file must exist: a missing
one is damage, not fill value. Stores written before checksums existed (no ``integrity``
attribute) are read as before; there a missing chunk may be a legitimately all-fill chunk.

Helpers here know nothing of the run layout; :class:`~dmicro_hw.acquisition.store.RunReader`
uses them per array and per frame range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: value of the ``integrity`` root attribute of stores whose chunks carry checksums
INTEGRITY = "crc32c+all-chunks/1"
#: array runtime config: write chunks even when they equal the fill value
WRITE_CONFIG = {"write_empty_chunks": True}


def with_checksum(*codecs: Any) -> list[Any]:
    """``codecs`` (bytes→bytes compressors) followed by the CRC32C checksum codec."""
    from zarr.codecs import Crc32cCodec

    return [*codecs, Crc32cCodec()]


def writable(array: Any) -> Any:
    """``array`` reopened so that its all-fill chunks are written too (none go missing)."""
    return array.with_config(WRITE_CONFIG)


def chunk_path(root: Path, array: Any, index: int) -> Path:
    """File of chunk ``index`` along t of ``array`` (a local Zarr v3 array under ``root``)."""
    coords = (index,) + (0,) * (array.ndim - 1)
    return root / array.path / array.metadata.encode_chunk_key(coords)


def read_chunk(
    root: Path, array: Any, index: int, stop: int, require_file: bool
) -> tuple[np.ndarray | None, str | None]:
    """Read chunk ``index`` of ``array`` along t, up to frame ``stop`` (exclusive).

    Returns ``(data, None)`` or ``(None, reason)`` where reason is ``"missing"`` (no chunk file
    while ``require_file``) or what failed (``checksum mismatch``, a decode error).
    """
    c = int(array.chunks[0])
    s, e = index * c, min(stop, (index + 1) * c)
    if require_file and not chunk_path(root, array, index).is_file():
        return None, "missing"
    try:
        return np.asarray(array[s:e]), None
    except Exception as ex:  # noqa: BLE001 - any decode failure is damage to report
        msg = str(ex)
        if "checksum" in msg.lower():
            return None, "checksum mismatch"
        return None, f"unreadable ({type(ex).__name__}: {msg[:120]})"


def read_checked(
    root: Path, array: Any, n: int, require_file: bool
) -> tuple[np.ndarray, dict[int, str]]:
    """The first ``n`` entries of ``array`` chunk by chunk: damaged chunks hold the fill value.

    Returns ``(values, bad)`` with ``bad`` mapping each damaged *frame index* to its reason.
    """
    c = int(array.chunks[0])
    out = np.empty((n, *array.shape[1:]), dtype=array.dtype)
    bad: dict[int, str] = {}
    for i in range(-(-n // c) if n else 0):
        s, e = i * c, min(n, (i + 1) * c)
        data, why = read_chunk(root, array, i, n, require_file)
        if data is None or data.shape[0] != e - s:
            fill = array.fill_value
            out[s:e] = fill if fill is not None else 0
            for f in range(s, e):
                bad[f] = f"{array.path} chunk {i}: {why or 'short chunk'}"
        else:
            out[s:e] = data
    return out, bad


def frame_ranges(frames: list[int] | np.ndarray) -> str:
    """Compact text of sorted frame indices: ``0-15, 32, 40-47``."""
    idx = sorted(int(f) for f in frames)
    parts: list[str] = []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(parts)
