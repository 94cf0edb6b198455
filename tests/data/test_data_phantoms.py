"""Synthetic cell phantoms, calibration targets and the synthetic dataset splits."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from dmicro_hw.config import SyntheticDataConfig
from dmicro_hw.data import build_datasets
from dmicro_hw.data.phantoms import generate_cells, phase_target, target_levels
from dmicro_hw.data.synthetic import SyntheticPhaseDataset


@pytest.mark.parametrize("phase_max", [math.pi, 2 * math.pi, 1.0])
def test_cells_range_dtype_background(phase_max: float) -> None:
    x = generate_cells(6, 48, phase_max, seed=3)
    assert x.shape == (6, 48, 48) and x.dtype == np.float32
    assert x.min() == 0.0  # background exactly 0
    np.testing.assert_allclose(x.max(axis=(1, 2)), phase_max, rtol=1e-6)  # full scale per sample
    background = (x == 0).mean(axis=(1, 2))
    assert np.all(background > 0.05) and np.all(background < 0.98)  # cells and background


def test_cells_reproducible_and_index_addressable() -> None:
    a = generate_cells(5, 32, seed=7)
    b = generate_cells(5, 32, seed=7)
    np.testing.assert_array_equal(a, b)
    # sample i depends only on (seed, i): a slice generated alone is identical
    np.testing.assert_array_equal(generate_cells(2, 32, seed=7, start=3), a[3:5])
    # other seeds / streams give other samples
    assert not np.array_equal(generate_cells(1, 32, seed=8)[0], a[0])
    assert not np.array_equal(generate_cells(1, 32, seed=7, stream=1)[0], a[0])


def test_cells_are_varied_and_smooth() -> None:
    x = generate_cells(12, 128, 1.0, seed=0).astype(np.float64)
    # all distinct, different cell coverage
    flat = x.reshape(len(x), -1)
    assert len({hashlib.sha1(r.tobytes()).hexdigest() for r in flat}) == len(x)
    coverage = (x > 0).mean(axis=(1, 2))
    assert coverage.std() > 0.02
    # smooth edges: no pixel-to-pixel jump anywhere near the full range
    jumps = max(np.abs(np.diff(x, axis=1)).max(), np.abs(np.diff(x, axis=2)).max())
    assert jumps < 0.5
    # texture: inside cells the phase is not just a smooth dome (nonzero Laplacian energy)
    lap = x[:, 1:-1, 1:-1] * 4 - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    assert np.abs(lap).mean() > 1e-3


def test_generate_cells_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        generate_cells(1, 4)
    with pytest.raises(ValueError):
        generate_cells(1, 32, phase_max_rad=0.0)


@pytest.mark.parametrize("kind", ["resolution", "steps", "spokes"])
@pytest.mark.parametrize("size", [32, 64, 256])
def test_targets_take_known_values(kind: str, size: int) -> None:
    t = phase_target(size, kind, 2 * math.pi)
    assert t.shape == (size, size) and t.dtype == np.float32
    levels = target_levels(2 * math.pi)
    assert set(np.unique(t)) <= set(levels.tolist())  # every value known exactly
    assert t[0, 0] == 0.0 and t.max() == pytest.approx(2 * math.pi)


def test_step_wedge_has_all_levels_in_order() -> None:
    t = phase_target(64, "steps", math.pi)
    row = t[32, 8:56]
    np.testing.assert_array_equal(np.unique(row), target_levels(math.pi))
    assert np.all(np.diff(row) >= 0)  # increasing from left to right
    with pytest.raises(ValueError, match="allowed"):
        phase_target(64, "usaf")  # type: ignore[arg-type]


def _digests(ds: SyntheticPhaseDataset) -> set[str]:
    return {hashlib.sha1(ds[i].numpy().tobytes()).hexdigest() for i in range(len(ds))}


def test_synthetic_splits_never_overlap_and_are_stable() -> None:
    cfg = SyntheticDataConfig(n_train=24, n_val=8, n_test=8, seed=5)
    train, val, test = build_datasets(cfg, 32)
    assert (len(train), len(val), len(test)) == (24, 8, 8)
    d_train, d_val, d_test = _digests(train), _digests(val), _digests(test)
    assert len(d_train) == 24 and len(d_val) == 8 and len(d_test) == 8  # distinct within
    assert not (d_train & d_val) and not (d_train & d_test) and not (d_val & d_test)
    # the val set does not depend on the train size
    _, val2, _ = build_datasets(cfg.model_copy(update={"n_train": 3}), 32)
    assert _digests(val2) == d_val


def test_synthetic_dataset_items_cache_and_tensor() -> None:
    ds = SyntheticPhaseDataset(6, 32, math.pi, seed=1, split="val")
    x = ds[2]
    assert isinstance(x, torch.Tensor) and x.shape == (32, 32) and x.dtype == torch.float32
    assert ds[2] is not None and torch.equal(ds[2], x) and torch.equal(ds[-4], x)
    allx = ds.as_tensor()
    assert allx.shape == (6, 32, 32) and torch.equal(allx[2], x)
    pre = SyntheticPhaseDataset(6, 32, math.pi, seed=1, split="val", precompute=True)
    assert torch.equal(pre[5], allx[5])
    with pytest.raises(IndexError):
        ds[6]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader)).shape == (4, 32, 32)
