"""Folder datasets: real files in every supported format, splits, crops, rescaling, errors."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
import torch

from dmicro_hw.config import FolderDataConfig
from dmicro_hw.data import build_datasets
from dmicro_hw.data.folder import FolderPhaseDataset, load_folder, read_phase_images
from dmicro_hw.errors import DataError

RNG = np.random.default_rng(0)


def _img(h: int = 40, w: int = 44) -> np.ndarray:
    return RNG.uniform(-1.0, 3.0, size=(h, w)).astype(np.float32)


def _write_mat73(path: Path, name: str, value: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte MAT header, arrays stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(name, data=value.T)
        f[name].attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b"\0"))


def test_every_format_reads(tmp_path: Path) -> None:
    a = _img()
    stack = np.stack([_img(), _img(), _img()])
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", other=np.arange(3), phase=a)
    tifffile.imwrite(tmp_path / "c.tif", stack, photometric="minisblack")
    scipy.io.savemat(tmp_path / "d.mat", {"phi": np.moveaxis(stack, 0, 2)})  # MATLAB (H, W, n)
    _write_mat73(tmp_path / "e.mat", "phi", a.astype(np.float64))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("meta/scale", data=np.arange(4.0))
        f.create_dataset("phase", data=stack)
    ims = load_folder(tmp_path, min_size=32)
    names = [im.source for im in ims]
    assert names == ["a.npy", "b.npz", "c.tif[0]", "c.tif[1]", "c.tif[2]"] + [
        "d.mat[0]",
        "d.mat[1]",
        "d.mat[2]",
        "e.mat",
        "f.h5[0]",
        "f.h5[1]",
        "f.h5[2]",
    ]
    for im in ims[:2] + ims[8:9]:
        np.testing.assert_allclose(im.phase, a, rtol=1e-6)  # v7.3 axes restored
    for j in range(3):
        np.testing.assert_allclose(ims[2 + j].phase, stack[j])
        np.testing.assert_allclose(ims[5 + j].phase, stack[j])
        np.testing.assert_allclose(ims[9 + j].phase, stack[j])


def test_complex_fields_give_angle_and_amplitude(tmp_path: Path) -> None:
    phi = RNG.uniform(0.1, 3.0, size=(36, 36))
    amp = RNG.uniform(0.5, 1.0, size=(36, 36))
    np.save(tmp_path / "field.npy", (amp * np.exp(1j * phi)).astype(np.complex64))
    cfg = FolderDataConfig(
        path=tmp_path, content="complex", rescale="none", val_fraction=0, test_fraction=0
    )
    ds = build_datasets(cfg, 32)[0]
    ds.return_amplitude = True
    p, a = ds[0]
    y, x = ds._window(0, (36, 36))
    np.testing.assert_allclose(p.numpy(), phi[y : y + 32, x : x + 32], atol=1e-5)
    np.testing.assert_allclose(a.numpy(), amp[y : y + 32, x : x + 32], atol=1e-5)
    # a v7.3 complex field (HDF5 compound real/imag)
    z = (amp * np.exp(1j * phi)).T
    comp = np.empty(z.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
    comp["real"], comp["imag"] = z.real, z.imag
    _write_mat73(tmp_path / "g.mat", "E", comp.T)
    im = read_phase_images(tmp_path / "g.mat")[0]
    np.testing.assert_allclose(im.phase, phi, atol=1e-6)  # MATLAB axes restored


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data files"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "missing")
    cases = {
        "nan.npy": np.full((40, 40), np.nan),
        "small.npy": np.zeros((16, 40)),
        "line.npy": np.zeros(40),
        "cube.npy": np.zeros((2, 3, 40, 40)),
        "obj.npy": np.array([{"a": 1}], dtype=object),
    }
    msgs = {
        "nan.npy": "NaN",
        "small.npy": "smaller than the model field",
        "line.npy": "2-D image or a 3-D stack",
        "cube.npy": "2-D image or a 3-D stack",
        "obj.npy": "cannot read",  # allow_pickle=False refuses object arrays
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        with pytest.raises(DataError, match=msgs[name]) as e:
            read_phase_images(tmp_path / name, min_size=32)
        assert name in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"junk\.tif: cannot read"):
        read_phase_images(tmp_path / "junk.tif")
    np.save(tmp_path / "re.npy", np.zeros((40, 40)))
    with pytest.raises(DataError, match="content is 'complex'"):
        read_phase_images(tmp_path / "re.npy", content="complex")
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((40, 40)))
    with pytest.raises(DataError, match="no dataset named 'y'"):
        read_phase_images(tmp_path / "k.h5", key="y")
    stack = np.zeros((3, 40, 40))
    stack[2, 5, 5] = np.inf
    np.save(tmp_path / "st.npy", stack)
    with pytest.raises(DataError, match="sample 2 of the stack"):
        read_phase_images(tmp_path / "st.npy")


def _folder(tmp_path: Path, n_files: int, per_file: int = 1, size: int = 40) -> Path:
    for i in range(n_files):
        arr = np.stack([_img(size, size) + 10 * i + j for j in range(per_file)])
        np.save(tmp_path / f"s{i:02d}.npy", arr if per_file > 1 else arr[0])
    return tmp_path


def _sources(ds: FolderPhaseDataset) -> set[str]:
    return {im.source for im in ds.images}


def test_split_by_file_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    _folder(tmp_path, 10, per_file=2)
    cfg = FolderDataConfig(path=tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)
    tr, va, te = build_datasets(cfg, 32)
    assert (len(tr), len(va), len(te)) == (14, 4, 2)  # 7 / 2 / 1 files of 2 frames
    files = [{s.split("[")[0] for s in _sources(d)} for d in (tr, va, te)]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    tr2, va2, te2 = build_datasets(cfg, 32)
    assert _sources(va2) == _sources(va) and _sources(te2) == _sources(te)
    _, va3, _ = build_datasets(cfg.model_copy(update={"seed": 4}), 32)
    assert _sources(va3) != _sources(va)


def test_single_stack_splits_by_sample(tmp_path: Path) -> None:
    np.save(tmp_path / "stack.npy", np.stack([_img() for _ in range(10)]))
    tr, va, te = build_datasets(FolderDataConfig(path=tmp_path), 32)
    assert (len(tr), len(va), len(te)) == (8, 1, 1)
    assert not (_sources(tr) & _sources(va)) and not (_sources(va) & _sources(te))
    with pytest.raises(DataError, match="too few samples"):
        build_datasets(FolderDataConfig(path=tmp_path / "stack.npy", val_fraction=0.5,
                                        test_fraction=0.5), 32)  # fmt: skip


def test_crops_and_rescaling(tmp_path: Path) -> None:
    _folder(tmp_path, 3)
    base = dict(path=tmp_path, val_fraction=0, test_fraction=0, phase_max_rad=math.pi)
    tr = build_datasets(FolderDataConfig(**base), 32)[0]
    x = tr[0]
    assert x.shape == (32, 32) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(math.pi)  # per sample
    # random crops are reproducible and change with the epoch
    assert torch.equal(tr[1], tr[1])
    positions = set()
    for e in range(6):
        tr.set_epoch(e)
        positions.add(tr._window(1, (40, 40)))
    assert len(positions) > 1
    # rescale "none": values must already be in [0, phase_max]; centre crop
    with pytest.raises(DataError, match=r"s02\.npy: phase spans"):
        FolderPhaseDataset([tr.images[2]], 32, 30.0, rescale="none")  # fine for 30 rad …
        FolderPhaseDataset([tr.images[2]], 32, math.pi, rescale="none")  # … not for π
    raw = FolderPhaseDataset([tr.images[2]], 32, 30.0, crop="center", rescale="none")
    np.testing.assert_array_equal(raw[0].numpy(), tr.images[2].phase[4:36, 4:36])
    # dataset-wide min–max keeps relative levels between samples
    glob = build_datasets(FolderDataConfig(**base, rescale="dataset"), 32)[0]
    means = [float(glob[i].mean()) for i in range(3)]
    assert means[0] < means[1] < means[2]
    assert 0.0 <= min(float(glob[i].min()) for i in range(3))
    assert max(float(glob[i].max()) for i in range(3)) <= math.pi + 1e-6
