"""The napari-dmicro reader (npe2 manifest, no napari import): a run opens as raw + phase image
layers with physical scale, axis units and contrast limits — tested by calling the reader."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw.napari_reader import get_reader

MANIFEST = Path(__file__).resolve().parents[1] / "dmicro_hw" / "napari.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, make_run):
    d = tmp_path_factory.mktemp("napari") / "run-01"
    raw = np.stack([np.full((8, 8), 200 + i) for i in range(7)])
    phase = np.linspace(0.2, 2.8, 5 * 1024).reshape(5, 32, 32)
    make_run(d / "run.zarr", raw, phase)
    return d


def test_reader_opens_raw_and_phase_with_physical_scale(run_dir):
    for p in (run_dir, run_dir / "run.zarr", [str(run_dir)]):
        assert get_reader(p if isinstance(p, list) else str(p)) is not None
    layers = get_reader(str(run_dir))(str(run_dir))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("raw [ADU]", "image"),
        ("phase [rad]", "image"),
    ]
    (raw, rk, _), (phase, pk, _) = layers
    assert raw.shape == (7, 8, 8) and phase.shape == (5, 32, 32)  # committed / final only
    assert rk["scale"] == pytest.approx((1e-3, 1.2656, 1.2656))
    assert pk["scale"] == pytest.approx((1e-3, 0.3164, 0.3164))
    assert pk["units"] == ("second", "micrometer", "micrometer") and pk["axis_labels"] == (
        "t",
        "y",
        "x",
    )
    assert rk["contrast_limits"] == (200.0, 206.0)
    assert pk["contrast_limits"] == pytest.approx((0.2, 2.8))
    assert np.asarray(raw[3]).max() == 203
    assert pk["metadata"]["records"]["frame_id"].tolist() == [0, 1, 2, 3, 4]
    assert "napari" not in sys.modules  # the reader needs no napari


def test_reader_declines_what_is_not_a_run(tmp_path):
    assert get_reader(str(tmp_path)) is None
    (tmp_path / "x.zarr").mkdir()
    assert get_reader(str(tmp_path / "x.zarr")) is None
    assert get_reader([str(tmp_path), str(tmp_path)]) is None


def test_manifest_and_entry_point():
    import yaml

    m = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    cmd = m["contributions"]["commands"][0]
    mod, fn = cmd["python_name"].split(":")
    assert getattr(__import__(mod, fromlist=[fn]), fn) is get_reader
    assert m["contributions"]["readers"][0]["command"] == cmd["id"]
    eps = {e.name: e.value for e in metadata.entry_points(group="napari.manifest")}
    assert eps.get("napari-dmicro") == "dmicro_hw:napari.yaml"
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "dmicro-hw" and pm.contributions.readers[0].accepts_directories
