"""User datasets: a folder of phase maps or complex fields in .npy/.npz/.tif/.mat/.h5 files.

Reading rules
    * ``.npy``/``.npz``: :func:`numpy.load` with ``allow_pickle=False``.
    * ``.tif``/``.tiff``: :func:`tifffile.imread` (multi-page files are stacks).
    * ``.mat``: :func:`scipy.io.loadmat`; MATLAB v7.3 files are HDF5 and read with h5py (axes
      reversed back to MATLAB order).
    * ``.h5``/``.hdf5``: h5py.
    In files holding several arrays the one named ``key`` is used, else the first 2-D/3-D
    numeric array (file order for .mat/.npz, alphabetical path order for HDF5).
    A 2-D array is one sample; a 3-D array is a stack of samples along its smallest axis when
    that axis is the first or the last one (``(n, H, W)`` or MATLAB-style ``(H, W, n)``), else
    along the first axis. Complex arrays (also HDF5 compound ``real``/``imag``) are fields:
    phase = angle, amplitude = modulus (returned with ``return_amplitude=True``).

Every problem (unreadable file, wrong dimensionality, non-numeric data, NaN/Inf, image smaller
than the model field, complex vs. phase mismatch, empty folder) raises
:class:`~dmicro_hw.errors.DataError` with one line naming the file.

Phase scaling (``rescale``): ``sample`` maps each returned crop min→0, max→``phase_max_rad``;
``dataset`` does the same with the min/max over the whole folder; ``none`` keeps radians (complex
angles wrapped to [0, 2π)) and requires every value to lie in [0, ``phase_max_rad``].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dmicro_hw.config import FolderDataConfig
from dmicro_hw.errors import DataError

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".mat", ".h5", ".hdf5")
FILE_SPLIT_MIN_FILES = 5  # with at least this many files the split is by file, else by sample

Content = Literal["phase", "complex", "auto"]
Rescale = Literal["sample", "dataset", "none"]


@dataclass
class PhaseImage:
    """One full-size sample read from a file (before cropping and rescaling)."""

    phase: np.ndarray  # float32 (H, W), radians (or arbitrary units for real data to rescale)
    amplitude: np.ndarray | None  # float32 (H, W) for complex fields, else None
    source: str  # "file.tif" or "file.tif[3]" for stack element 3
    group: int  # index of the file it came from (split unit when splitting by file)


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


def _is_numeric(a: Any) -> bool:
    return isinstance(a, np.ndarray) and (
        np.issubdtype(a.dtype, np.number)
        or np.issubdtype(a.dtype, np.bool_)
        or _compound_complex(a.dtype)
    )


def _compound_complex(dtype: np.dtype) -> bool:
    return dtype.names is not None and {"real", "imag"} <= set(dtype.names)


def _pick(arrays: dict[str, Any], key: str | None, path: Path) -> np.ndarray:
    """The array named ``key`` or the first 2-D/3-D numeric one."""
    if key is not None:
        if key not in arrays:
            names = ", ".join(sorted(arrays)) or "none"
            raise DataError(f"{path}: no array named {key!r} (arrays in the file: {names})")
        return np.asarray(arrays[key])
    for v in arrays.values():
        a = np.asarray(v) if not isinstance(v, np.ndarray) else v
        if _is_numeric(a) and np.squeeze(a).ndim in (2, 3):
            return a
    raise DataError(f"{path}: no 2-D or 3-D numeric array found")


def _read_hdf5(path: Path, key: str | None, matlab: bool) -> np.ndarray:
    from dmicro_hw.extras import MissingExtraError, require

    try:
        h5py = require("h5py", "reading HDF5 / MATLAB v7.3 files")
    except MissingExtraError as e:
        raise DataError(f"{path}: {e}") from None

    with h5py.File(path, "r") as f:
        if key is not None:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                listed = ", ".join(names) or "none"
                raise DataError(f"{path}: no dataset named {key!r} (datasets: {listed})")
            data = f[key][()]
        else:
            found: list[str] = []

            def visit(name: str, obj: Any) -> None:
                if found or not isinstance(obj, h5py.Dataset) or name.startswith("#refs#"):
                    return
                if obj.attrs.get("MATLAB_class", b"") in (b"char", "char"):
                    return
                dt = obj.dtype
                numeric = np.issubdtype(dt, np.number) or _compound_complex(dt)
                if numeric and sum(s > 1 for s in obj.shape) in (2, 3):
                    found.append(name)

            f.visititems(visit)
            if not found:
                raise DataError(f"{path}: no 2-D or 3-D numeric dataset found")
            data = f[found[0]][()]
    data = np.asarray(data)
    if _compound_complex(data.dtype):
        data = data["real"] + 1j * data["imag"]
    if matlab:  # MATLAB writes column-major: reverse the axes back
        data = data.T
    return data


def read_array(path: Path | str, key: str | None = None) -> np.ndarray:
    """Read the raw array of one supported file (no checks beyond readability)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return _pick({k: z[k] for k in z.files}, key, path)
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if suffix == ".mat":
            import scipy.io

            try:
                mat = scipy.io.loadmat(path)
            except NotImplementedError:  # v7.3 → HDF5
                return _read_hdf5(path, key, matlab=True)
            return _pick({k: v for k, v in mat.items() if not k.startswith("__")}, key, path)
        if suffix in (".h5", ".hdf5"):
            return _read_hdf5(path, key, matlab=False)
    except DataError:
        raise
    except Exception as e:  # any reader failure: one line naming the file
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {msg})") from None
    raise DataError(f"{path}: unsupported file type (use {', '.join(SUPPORTED_SUFFIXES)})")


def _as_stack(a: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) → (1, H, W); 3-D → (n, H, W) with n the smallest of first/last axis."""
    if a.ndim > 3:
        a = np.squeeze(a)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        if a.shape[2] < min(a.shape[0], a.shape[1]):
            return np.moveaxis(a, 2, 0)
        return a
    raise DataError(
        f"{path}: expected a 2-D image or a 3-D stack, got an array of shape {tuple(a.shape)}"
    )


def read_phase_images(
    path: Path | str,
    *,
    content: Content = "auto",
    key: str | None = None,
    min_size: int = 1,
    group: int = 0,
) -> list[PhaseImage]:
    """Read and check all samples of one file (see the module docstring for the rules)."""
    path = Path(path)
    a = read_array(path, key)
    if not _is_numeric(a):
        raise DataError(f"{path}: expected numeric data, got dtype {a.dtype}")
    if _compound_complex(a.dtype):
        a = a["real"] + 1j * a["imag"]
    stack = _as_stack(a, path)
    is_complex = np.iscomplexobj(stack)
    if content == "phase" and is_complex:
        raise DataError(f"{path}: holds complex values but data.content is 'phase'")
    if content == "complex" and not is_complex:
        raise DataError(f"{path}: holds real values but data.content is 'complex'")
    h, w = stack.shape[1:]
    if h < min_size or w < min_size:
        raise DataError(
            f"{path}: images are {h}×{w}, smaller than the model field {min_size}×{min_size}"
        )
    if stack.shape[0] == 0:
        raise DataError(f"{path}: empty stack")
    finite = np.isfinite(stack).reshape(stack.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        where = f" (sample {bad} of the stack)" if stack.shape[0] > 1 else ""
        raise DataError(f"{path}: contains NaN or Inf values{where}")
    out = []
    for i, s in enumerate(stack):
        name = path.name if stack.shape[0] == 1 else f"{path.name}[{i}]"
        if is_complex:
            out.append(
                PhaseImage(
                    np.angle(s).astype(np.float32), np.abs(s).astype(np.float32), name, group
                )
            )
        else:
            out.append(PhaseImage(s.astype(np.float32), None, name, group))
    return out


def list_files(path: Path | str) -> list[Path]:
    """Supported files in a folder (recursive, sorted) or the file itself."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: data folder not found")
    files = sorted(
        f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES
    )
    if not files:
        raise DataError(f"{p}: no data files (looked for {', '.join(SUPPORTED_SUFFIXES)})")
    return files


def load_folder(
    path: Path | str, *, content: Content = "auto", key: str | None = None, min_size: int = 1
) -> list[PhaseImage]:
    """All samples of all supported files under ``path``, checked."""
    images: list[PhaseImage] = []
    for g, f in enumerate(list_files(path)):
        images.extend(read_phase_images(f, content=content, key=key, min_size=min_size, group=g))
    log.info("loaded %d samples from %s", len(images), path)
    return images


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val, n_test = int(round(val_fraction * n)), int(round(test_fraction * n))
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    return n_val, n_test


def split_indices(
    groups: list[int], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Deterministic (train, val, test) sample indices.

    Splits by file (``groups``) when there are at least :data:`FILE_SPLIT_MIN_FILES` files,
    so correlated frames of one stack stay together; otherwise by sample.
    """
    units = sorted(set(groups))
    by_file = len(units) >= FILE_SPLIT_MIN_FILES
    if not by_file:
        units = list(range(len(groups)))
    rng = np.random.default_rng(np.random.SeedSequence([seed & ((1 << 64) - 1), 0x5B1]))
    order = [units[i] for i in rng.permutation(len(units))]
    n_val, n_test = _split_counts(len(units), val_fraction, test_fraction)
    if len(units) - n_val - n_test < 1:
        raise DataError(
            f"too few samples ({len(units)} {'files' if by_file else 'samples'}) for "
            f"val_fraction {val_fraction} and test_fraction {test_fraction}"
        )
    val_u, test_u = set(order[:n_val]), set(order[n_val : n_val + n_test])
    unit_of = groups if by_file else list(range(len(groups)))
    train, val, test = [], [], []
    for i, u in enumerate(unit_of):
        (val if u in val_u else test if u in test_u else train).append(i)
    return train, val, test


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class FolderPhaseDataset(Dataset):
    """Crops of user phase maps; item ``i`` is a float32 tensor (size, size) in radians.

    Args:
        images: samples from :func:`load_folder` (shared between splits, not copied).
        size: N of the N×N crops (the model field).
        phase_max_rad: the range [0, phase_max_rad] the phase is mapped to (see ``rescale``).
        crop: ``random`` (position drawn from ``(seed, epoch, index)``; call :meth:`set_epoch`
            each epoch for new positions) or ``center``.
        rescale: ``sample`` | ``dataset`` | ``none`` (module docstring).
        value_range: (min, max) of the raw phase over the folder, needed for ``dataset``.
        return_amplitude: items become ``(phase, amplitude)``; amplitude is 1 for real data.
    """

    def __init__(
        self,
        images: list[PhaseImage],
        size: int,
        phase_max_rad: float = 2 * math.pi,
        *,
        crop: Literal["random", "center"] = "center",
        rescale: Rescale = "sample",
        value_range: tuple[float, float] | None = None,
        seed: int = 0,
        return_amplitude: bool = False,
        split: str = "train",
    ) -> None:
        self.images = images
        self.size = int(size)
        self.phase_max_rad = float(phase_max_rad)
        self.crop = crop
        self.rescale = rescale
        self.seed = int(seed)
        self.epoch = 0
        self.return_amplitude = return_amplitude
        self.split = split
        if rescale == "dataset" and value_range is None and images:
            value_range = (
                min(float(im.phase.min()) for im in images),
                max(float(im.phase.max()) for im in images),
            )
        self.value_range = value_range
        for im in images:
            h, w = im.phase.shape
            if h < self.size or w < self.size:
                raise DataError(f"{im.source}: {h}×{w} is smaller than the model field {size}")
            if rescale == "none":
                self._check_range(im)

    def _check_range(self, im: PhaseImage) -> None:
        phi = self._raw_phase(im.phase, im.amplitude is not None)
        lo, hi = float(phi.min()), float(phi.max())
        tol = 1e-5 * self.phase_max_rad
        if lo < -tol or hi > self.phase_max_rad + tol:
            raise DataError(
                f"{im.source}: phase spans [{lo:.4g}, {hi:.4g}] rad, outside [0, "
                f"{self.phase_max_rad:.4g}] (set data.rescale: sample or dataset, or "
                "data.phase_max_rad)"
            )

    def _raw_phase(self, phase: np.ndarray, from_complex: bool) -> np.ndarray:
        if self.rescale == "none" and from_complex:
            return np.mod(phase, 2 * math.pi)
        return phase

    def set_epoch(self, epoch: int) -> None:
        """Choose a new set of random crop positions (``crop='random'`` only)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def _window(self, i: int, shape: tuple[int, int]) -> tuple[int, int]:
        h, w = shape
        if self.crop == "center":
            return (h - self.size) // 2, (w - self.size) // 2
        mask = (1 << 64) - 1
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed & mask, self.epoch & mask, i, 0xC0])
        )
        return int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        im = self.images[i]
        y, x = self._window(i, im.phase.shape)
        sl = (slice(y, y + self.size), slice(x, x + self.size))
        phi = self._raw_phase(im.phase[sl], im.amplitude is not None).astype(np.float64)
        if self.rescale == "sample":
            lo, hi = phi.min(), phi.max()
            phi = (phi - lo) * (self.phase_max_rad / (hi - lo)) if hi > lo else phi * 0.0
        elif self.rescale == "dataset":
            lo, hi = self.value_range or (0.0, 1.0)
            phi = (phi - lo) * (self.phase_max_rad / (hi - lo)) if hi > lo else phi * 0.0
            phi = np.clip(phi, 0.0, self.phase_max_rad)
        else:
            phi = np.clip(phi, 0.0, self.phase_max_rad)  # removes the tolerance overshoot
        phase = torch.from_numpy(phi.astype(np.float32))
        if not self.return_amplitude:
            return phase
        amp = im.amplitude[sl] if im.amplitude is not None else np.ones_like(phi)
        return phase, torch.from_numpy(np.ascontiguousarray(amp, dtype=np.float32))

    def __repr__(self) -> str:
        return (
            f"FolderPhaseDataset(split={self.split}, n={len(self)}, size={self.size}, "
            f"crop={self.crop}, rescale={self.rescale}, phase_max_rad={self.phase_max_rad:.4g})"
        )


def folder_datasets(
    cfg: FolderDataConfig, size: int, *, return_amplitude: bool = False
) -> tuple[FolderPhaseDataset, FolderPhaseDataset, FolderPhaseDataset]:
    """(train, val, test) from a folder config: random crops for train, centre crops else."""
    images = load_folder(cfg.path, content=cfg.content, key=cfg.key, min_size=size)
    groups = [im.group for im in images]
    tr, va, te = split_indices(groups, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    value_range = None
    if cfg.rescale == "dataset":
        value_range = (
            min(float(im.phase.min()) for im in images),
            max(float(im.phase.max()) for im in images),
        )
    common = dict(
        size=size,
        phase_max_rad=cfg.phase_max_rad,
        rescale=cfg.rescale,
        value_range=value_range,
        seed=cfg.seed,
        return_amplitude=return_amplitude,
    )
    return (
        FolderPhaseDataset([images[i] for i in tr], crop="random", split="train", **common),
        FolderPhaseDataset([images[i] for i in va], crop="center", split="val", **common),
        FolderPhaseDataset([images[i] for i in te], crop="center", split="test", **common),
    )
