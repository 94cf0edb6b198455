"""Pattern files: ``pattern.npy`` + ``pattern.png`` + ``pattern.json`` sidecar — write, verify
(hashes), load, and check against a rig."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.calibration.bundle import WAVELENGTH_RTOL
from dmicro_hw.config import RigConfig
from dmicro_hw.errors import CheckpointError

log = logging.getLogger(__name__)

PATTERN_FORMAT = "dmicro-hw-slm-pattern"
PATTERN_FORMAT_VERSION = 1
MAX_PATTERN_BYTES = 512 * 1024**2


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_pattern(grey: np.ndarray) -> str:
    """SHA-256 of a pattern's grey levels: dtype string, shape and C-order little-endian bytes.

    Independent of the container (NPY or PNG), so the same pattern read from either file gives
    the same hash; this is the pattern id that frames are tagged with.
    """
    a = np.ascontiguousarray(grey)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Pattern files: write, verify, load
# --------------------------------------------------------------------------------------------


@dataclass
class ExportedPattern:
    """A pattern read back from disk (hashes verified).

    Attributes:
        grey: grey levels (rows, cols), uint8 or uint16.
        sidecar: the JSON sidecar.
        path: the sidecar file.
    """

    grey: np.ndarray
    sidecar: dict[str, Any]
    path: Path

    @property
    def sha256(self) -> str:
        return str(self.sidecar["sha256"]["pattern"])

    @property
    def pattern_id(self) -> str:
        """Short id to tag frames with (first 16 hex digits of the pattern's SHA-256)."""
        return self.sha256[:16]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def png_bytes(grey: np.ndarray) -> bytes:
    """8-bit (uint8) or 16-bit (uint16, raw grey levels) greyscale PNG, encoded."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, grey: np.ndarray) -> None:
    """8-bit (uint8) or 16-bit (uint16, raw grey levels) greyscale PNG (atomic, no symlinks)."""
    from dmicro_hw.safe_io import write_bytes_safely

    write_bytes_safely(path, png_bytes(grey))


def read_png(path: Path) -> np.ndarray:
    """Greyscale PNG → uint8 or uint16 array, exactly as stored."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "I;16", "I;16B", "I"):
                raise CheckpointError(f"{path}: not a greyscale pattern PNG (mode {im.mode})")
            a = np.asarray(im)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PNG ({e})") from None
    return a.astype(np.uint8 if im.mode == "L" else np.uint16)


def write_pattern(
    out_dir: Path | str, grey: np.ndarray, meta: dict[str, Any], stem: str = "pattern"
) -> Path:
    """Write ``<stem>.npy``, ``<stem>.png`` and the sidecar ``<stem>.json`` into ``out_dir``.

    ``meta`` is merged into the sidecar, which gains ``shape``, ``dtype``, ``files`` and the
    SHA-256 of the pattern (``sha256.pattern``, container-independent) and of both files. The
    sidecar is written last, atomically. Returns its path.
    """
    import io

    from dmicro_hw.safe_io import make_output_dir, write_bytes_safely, write_text_safely

    out = Path(out_dir)
    make_output_dir(out)
    npy, png, js = out / f"{stem}.npy", out / f"{stem}.png", out / f"{stem}.json"
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(grey), allow_pickle=False)
    write_bytes_safely(npy, buf.getvalue())
    write_png(png, grey)
    side: dict[str, Any] = {
        "format": PATTERN_FORMAT,
        "format_version": PATTERN_FORMAT_VERSION,
        "shape": [int(grey.shape[0]), int(grey.shape[1])],
        "dtype": str(grey.dtype),
    }
    side.update({k: v for k, v in meta.items() if k not in side})
    side["files"] = {"npy": npy.name, "png": png.name}
    hashes = dict(meta.get("sha256", {}))
    hashes.update(pattern=sha256_pattern(grey), npy=sha256_file(npy), png=sha256_file(png))
    side["sha256"] = hashes
    write_text_safely(js, json.dumps(side, indent=2, sort_keys=False) + "\n")
    return js


def _sidecar_path(p: Path) -> Path:
    if p.is_dir():
        return p / "pattern.json"
    if p.suffix.lower() == ".json":
        return p
    return p.with_suffix(".json")


def load_pattern(path: Path | str, rig: RigConfig | None = None) -> ExportedPattern:
    """Load an exported pattern (folder, ``.json`` sidecar, ``.npy`` or ``.png``), verify it.

    Checks, each failing with one :class:`CheckpointError` line naming the file:
    the sidecar exists and is a pattern sidecar; the data file's SHA-256 and the pattern's
    SHA-256 match the sidecar; shape and dtype match the sidecar; and, with ``rig``, that the
    pattern was made for this rig's SLM: shape = ``slm.pixels``, bit depth = ``slm.bit_depth``,
    wavelength = ``optics.wavelength_m`` (relative 1e-3). A different ``rig_id`` is only logged.
    """
    p = Path(path)
    side_p = _sidecar_path(p)
    if not p.exists():
        raise CheckpointError(f"{p}: pattern not found")
    if not side_p.is_file():
        raise CheckpointError(
            f"{p}: no sidecar {side_p.name} next to the pattern (export it with `dmicro export`)"
        )
    try:
        side = json.loads(side_p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{side_p}: sidecar is not valid JSON ({e})") from None
    if not isinstance(side, dict) or side.get("format") != PATTERN_FORMAT:
        raise CheckpointError(f"{side_p}: not a dmicro-hw SLM pattern sidecar")
    if side.get("format_version") != PATTERN_FORMAT_VERSION:
        raise CheckpointError(
            f"{side_p}: pattern format version {side.get('format_version')!r}, this dmicro-hw "
            f"reads {PATTERN_FORMAT_VERSION}"
        )
    files = side.get("files") or {}
    hashes = side.get("sha256") or {}
    if not isinstance(files, dict) or not isinstance(hashes, dict):
        raise CheckpointError(f"{side_p}: 'files' and 'sha256' must be mappings")
    shape = side.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)
    ):
        raise CheckpointError(f"{side_p}: 'shape' must be [rows, cols], got {shape!r}")
    if not isinstance(side.get("dtype"), str):
        raise CheckpointError(f"{side_p}: 'dtype' must be a string, got {side.get('dtype')!r}")
    for k, v in files.items():
        if not isinstance(v, str) or Path(v).name != v:
            raise CheckpointError(f"{side_p}: files.{k} must be a file name in the folder")
    kind = "png" if p.suffix.lower() == ".png" else "npy"
    if p.is_file() and p.suffix.lower() in (".npy", ".png"):
        data_p = p
    else:
        data_p = side_p.parent / str(files.get(kind, f"pattern.{kind}"))
        if not data_p.is_file() and kind == "npy" and files.get("png"):
            kind, data_p = "png", side_p.parent / str(files["png"])
    if not data_p.is_file():
        raise CheckpointError(f"{data_p}: pattern data file named in {side_p.name} not found")
    if data_p.stat().st_size > MAX_PATTERN_BYTES:
        raise CheckpointError(f"{data_p}: too large for an SLM pattern")
    file_hash = sha256_file(data_p)
    if hashes.get(kind) != file_hash:
        raise CheckpointError(
            f"{data_p}: SHA-256 does not match its sidecar {side_p.name} (file changed or "
            "corrupt; export it again)"
        )
    if kind == "png":
        grey = read_png(data_p)
    else:
        try:
            grey = np.load(data_p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{data_p}: not a readable .npy pattern ({e})") from None
    if list(grey.shape) != list(side.get("shape", [])) or str(grey.dtype) != side.get("dtype"):
        raise CheckpointError(
            f"{data_p}: holds {grey.dtype} {grey.shape}, sidecar says {side.get('dtype')} "
            f"{tuple(side.get('shape', []))}"
        )
    if sha256_pattern(grey) != hashes.get("pattern"):
        raise CheckpointError(f"{data_p}: pattern SHA-256 does not match its sidecar")
    _check_grey(grey, side.get("bit_depth"), data_p)
    if rig is not None:
        check_pattern_for_rig(side, rig, side_p)
    return ExportedPattern(grey=grey, sidecar=side, path=side_p)


def _check_grey(grey: np.ndarray, bits: Any, where: Path) -> None:
    """A pattern is a 2-D array of unsigned 8/16-bit grey levels within its bit depth."""
    if grey.dtype.kind != "u" or grey.dtype.itemsize > 2 or grey.ndim != 2:
        raise CheckpointError(
            f"{where}: an SLM pattern is a 2-D uint8/uint16 array of grey levels, this file "
            f"holds {grey.dtype} {tuple(grey.shape)}"
        )
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise CheckpointError(f"{where}: sidecar bit_depth must be an integer 1…16, got {bits!r}")
    top = int(grey.max()) if grey.size else 0
    if top >= 1 << bits:
        raise CheckpointError(
            f"{where}: grey level {top} is outside the sidecar's {bits}-bit range "
            f"0…{(1 << bits) - 1}"
        )


def check_pattern_for_rig(side: dict[str, Any], rig: RigConfig, where: Path | str) -> None:
    """Refuse a pattern exported for another SLM (shape, bit depth) or wavelength."""
    slm = rig.slm
    shape = tuple(side.get("shape", ()))
    if shape != tuple(slm.pixels):
        raise CheckpointError(
            f"{where}: pattern is {shape[0]}×{shape[1]} px, the rig's SLM (slm.pixels) is "
            f"{slm.pixels[0]}×{slm.pixels[1]} — export it for this rig"
        )
    if side.get("bit_depth") != slm.bit_depth:
        raise CheckpointError(
            f"{where}: pattern has {side.get('bit_depth')}-bit grey levels, the rig's SLM "
            f"(slm.bit_depth) is {slm.bit_depth}-bit — export it for this rig"
        )
    wl = side.get("wavelength_m")
    if not isinstance(wl, (int, float)) or not math.isclose(
        wl, rig.optics.wavelength_m, rel_tol=WAVELENGTH_RTOL
    ):
        got = f"{wl * 1e9:.1f} nm" if isinstance(wl, (int, float)) else repr(wl)
        raise CheckpointError(
            f"{where}: pattern was exported for λ = {got}, the rig (optics.wavelength_m) uses "
            f"{rig.optics.wavelength_m * 1e9:.1f} nm — the phase is wavelength-specific"
        )
    if side.get("rig_id") and side.get("rig_id") != rig.rig_id:
        log.warning(
            "%s: pattern exported for rig %r, used on rig %r", where, side["rig_id"], rig.rig_id
        )
