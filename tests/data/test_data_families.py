"""The phantom library and the mixture: every family reproducible, in range, with its knobs
checked; mixture configs (weights, folders) validated with one readable error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmicro_hw.config import MixtureDataConfig, SyntheticDataConfig, TrainConfig, validate
from dmicro_hw.data import build_datasets
from dmicro_hw.data.families import FAMILY_NAMES, check_knobs, draw_family, family_knobs
from dmicro_hw.data.phantoms import sample_rng
from dmicro_hw.errors import ConfigError


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_relative_range_and_reproducible(name):
    a = draw_family(name, sample_rng(3, 7, 0), 48)
    b = draw_family(name, sample_rng(3, 7, 0), 48)
    c = draw_family(name, sample_rng(3, 8, 0), 48)
    assert a.shape == (48, 48) and np.isfinite(a).all()
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_family_knobs_change_the_draw_and_are_checked():
    few = draw_family("spheres", sample_rng(0, 0, 0), 64, {"count": [1, 1], "radius": [0.1, 0.1]})
    assert (few > 0.99).sum() < 20  # one sphere: a single peak
    assert set(family_knobs("spheres")) == {"count", "radius"}
    with pytest.raises(ValueError, match="no knob 'radius_px'"):
        check_knobs("spheres", {"radius_px": 3})
    with pytest.raises(ValueError, match=r"expected \[lo, hi\]"):
        check_knobs("spheres", {"radius": [0.3, 0.1]})
    with pytest.raises(ValueError, match="unknown family"):
        check_knobs("blobs", {})


def test_sphere_family_is_the_exact_projection():
    """A lone sphere: phase ∝ sqrt(R² − r²) — its profile matches the analytic chord."""
    from dmicro_hw.data.beads import sphere_phase

    yy, xx = np.mgrid[0:65, 0:65].astype(np.float64)
    phi = sphere_phase(yy, xx, 32.0, 32.0, 10e-6, 0.02, 0.5e-6, 1e-6)
    r = np.hypot(yy - 32, xx - 32)
    exact = 2 * math.pi / 0.5e-6 * 0.02 * 2 * np.sqrt(np.clip(100 - r**2, 0, None)) * 1e-6
    inner = r < 6  # away from the rim, where a pixel average departs from the point value
    np.testing.assert_allclose(phi[inner], exact[inner], rtol=5e-3)
    assert phi[r > 11].max() == 0.0


def test_mixture_samples_vary_peak_and_stay_in_range():
    cfg = MixtureDataConfig(n_train=48, n_val=4, n_test=4, phase_max_rad=2.0, seed=1)
    train, val, test = build_datasets(cfg, 32)
    x = train.as_tensor().numpy()
    assert x.shape == (48, 32, 32) and np.isfinite(x).all()
    assert x.min() >= 0 and x.max() <= 2.0 + 1e-6
    peaks = x.reshape(48, -1).max(1)
    assert peaks.min() < 1.0 < peaks.max()  # peak phase varies (0.1 … 1 of phase_max)
    assert (x.reshape(48, -1).min(1) == 0).all()  # the minimum is the phase reference
    # splits are disjoint streams and reproducible
    again = build_datasets(cfg, 32)[0].as_tensor().numpy()
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(val.as_tensor().numpy(), test.as_tensor().numpy())


def test_mixture_weights_and_folder_component(tmp_path):
    maps = np.random.default_rng(0).uniform(0, 1.5, size=(6, 40, 40)).astype(np.float32)
    np.save(tmp_path / "user.npy", maps)
    cfg = validate(
        TrainConfig,
        {
            "data": {
                "kind": "mixture",
                "n_train": 12,
                "overlay_probability": 0,
                "components": [
                    {"folder": str(tmp_path), "weight": 1, "rescale": "none"},
                    {"family": "targets", "weight": 1e-6},
                ],
            }
        },
    )
    x = build_datasets(cfg.data, 32)[0].as_tensor().numpy()
    # a user folder used as it is ('none'): values are the maps' own radians
    assert x.max() <= 1.5 + 1e-6 and x.min() >= 0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"kind": "mixture", "components": []}, "at least 1"),
        ({"kind": "mixture", "components": [{"family": "cells", "folder": "x"}]}, "exactly one"),
        ({"kind": "mixture", "components": [{"family": "nope"}]}, "unknown family"),
        ({"kind": "mixture", "peak_fraction": [0.5, 0.2]}, "peak_fraction"),
        ({"kind": "synthetic", "family": "spheres", "options": {"count": 3}}, None),
        ({"kind": "synthetic", "family": "spheres", "options": {"count": "many"}}, "number"),
    ],
)
def test_bad_data_configs_give_one_line(data, message):
    if message is None:  # a plain number knob is fine
        validate(TrainConfig, {"data": data})
        return
    with pytest.raises(ConfigError, match=message) as e:
        validate(TrainConfig, {"data": data}, "train.yaml")
    assert "\n" not in str(e.value) and "train.yaml" in str(e.value)


def test_single_family_dataset_spans_phase_max():
    ds = build_datasets(SyntheticDataConfig(family="fibres", n_test=3), 32)[2]
    x = ds.as_tensor().numpy()
    np.testing.assert_allclose(x.reshape(3, -1).max(1), math.pi, rtol=1e-6)
