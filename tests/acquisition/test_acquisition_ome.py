"""The run store as other microscopy software sees it: an OME-Zarr 0.5 collection whose images
(raw, phase) each open whole in ome-zarr-py and ngff-zarr, with metadata that ome-zarr-models
validates, and a store of the old single-group layout that the readers still open."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

from dmicro_hw.acquisition.store import RECON_OK, RunReader

PIXEL_M = 0.3164e-6  # object-plane pixel of the phase; raw is ×4 (k = 4)


@pytest.fixture(scope="module")
def run_store(tmp_path_factory, make_run):
    rng = np.random.default_rng(0)
    ph = np.linspace(0.5, 2.5, 9 * 32 * 32, dtype=np.float32).reshape(9, 32, 32)
    raw = rng.integers(100, 4000, (10, 8, 8))
    return make_run(tmp_path_factory.mktemp("ome") / "run.zarr", raw, ph, skipped=1)


def test_metadata_validates_with_ome_zarr_models(run_store):
    models = pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.common.omero import Omero
    from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw
    from ome_zarr_models.v05.image import Image

    del models
    g = zarr.open_group(str(run_store), mode="r")
    coll = BioFormats2Raw.from_zarr(g)  # root: a bioformats2raw-layout collection
    assert coll.attributes.ome.bioformats2raw_layout == 3
    assert g["OME"].attrs["ome"]["series"] == ["raw", "phase"]
    for name, scale, window in (
        ("raw", [1e-3, 4 * PIXEL_M * 1e6, 4 * PIXEL_M * 1e6], (0.0, 4095.0)),
        ("phase", [1e-3, PIXEL_M * 1e6, PIXEL_M * 1e6], (0.0, 3.0)),
    ):
        img = Image.from_zarr(g[name])  # validates multiscales, axes, arrays
        ms = img.attributes.ome.multiscales[0]
        assert [(a.name, a.type, a.unit) for a in ms.axes] == [
            ("t", "time", "second"),
            ("y", "space", "micrometer"),
            ("x", "space", "micrometer"),
        ]
        assert ms.datasets[0].coordinateTransformations[0].scale == pytest.approx(scale)
        omero = Omero.model_validate(g[name].attrs["ome"]["omero"])
        w = omero.channels[0].window
        assert (w.min, w.max) == window
        assert w.min <= w.start < w.end <= w.max
    # the displayed range is what was written (NaN of skipped frames ignored)
    pw = g["phase"].attrs["ome"]["omero"]["channels"][0]["window"]
    assert (pw["start"], pw["end"]) == pytest.approx((0.5, 2.5))


def test_ome_zarr_py_reader_opens_both_images(run_store):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    series = zarr.open_group(str(run_store), mode="r")["OME"].attrs["ome"]["series"]
    seen = {}
    for name in series:  # the collection index names the image groups
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            node = list(Reader(parse_url(str(run_store / name)))())[0]
        seen[name] = node
        assert [a["unit"] for a in node.metadata["axes"]] == ["second", "micrometer", "micrometer"]
        assert node.metadata["channel_names"] == [f"{name} [{'ADU' if name == 'raw' else 'rad'}]"]
    assert seen["raw"].data[0].shape == (10, 8, 8)
    assert seen["phase"].data[0].shape == (10, 32, 32)
    sc = seen["phase"].metadata["coordinateTransformations"][0][0]["scale"]
    assert sc == pytest.approx([1e-3, 0.3164, 0.3164])
    assert np.isnan(np.asarray(seen["phase"].data[0][9])).all()


def test_ngff_zarr_lists_and_opens_both_images(run_store):
    nz = pytest.importorskip("ngff_zarr")
    with pytest.raises(ValueError, match="2 images") as e:
        nz.from_ngff_zarr(str(run_store))  # the container: it names both images
    assert "run.zarr/raw" in str(e.value) and "run.zarr/phase" in str(e.value)
    shapes = {}
    for name in ("raw", "phase"):
        ms = nz.from_ngff_zarr(str(run_store / name))
        im = ms.images[0]
        shapes[name] = im.data.shape
        assert im.dims == ("t", "y", "x")
        assert im.axes_units == {"t": "second", "y": "micrometer", "x": "micrometer"}
        k = 4 if name == "raw" else 1
        assert im.scale["x"] == pytest.approx(k * 0.3164) and im.scale["t"] == 1e-3
    assert shapes == {"raw": (10, 8, 8), "phase": (10, 32, 32)}


def test_reader_opens_a_run_of_the_old_single_group_layout(tmp_path):
    """Runs written before the collection layout kept raw/phase arrays at the root."""
    path = tmp_path / "old.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("raw", shape=(6, 4, 4), chunks=(2, 4, 4), dtype="uint8", fill_value=0)[:] = 7
    g.create_array("phase", shape=(6, 8, 8), chunks=(2, 8, 8), dtype="float32")[:] = 1.5
    g.create_array("recon_status", shape=(6,), dtype="uint8")[:] = RECON_OK
    for name, v in (("committed", 5), ("phase_committed", 4)):
        g.create_array(name, shape=(1,), dtype="int64")[0] = v
    g.create_array("frame_id", shape=(6,), dtype="int64")[:] = np.arange(6)
    scale = [{"type": "scale", "scale": [0.01, 2.0, 2.0]}]
    ms = {
        "name": "raw",
        "axes": [],
        "datasets": [{"path": "raw", "coordinateTransformations": scale}],
    }
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [ms]}, "dmicro": {}})
    r = RunReader(path)
    assert r.committed == 5 and r.raw_frames().shape == (5, 4, 4)
    assert r.phase().shape == (4, 8, 8) and r.image_names() == ["raw", "phase"]
    assert r.pixel_size_um("raw") == (0.01, 2.0, 2.0)


def test_export_tiff_command_writes_ome_tiff_with_physical_sizes(run_store, tmp_path, capsys):
    import tifffile

    from dmicro_hw.cli import _run, app

    assert _run(app, ["export-tiff", str(run_store), "--out", str(tmp_path / "t")]) == 0
    assert "phase.ome.tif (10×32×32 float32)" in capsys.readouterr().out
    with tifffile.TiffFile(tmp_path / "t" / "raw.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "TYX" and tif.series[0].shape == (10, 8, 8)
        raw = tif.asarray()
        px = tif.ome_metadata
    assert 'PhysicalSizeX="1.2656"' in px and 'TimeIncrement="0.001"' in px
    np.testing.assert_array_equal(raw, RunReader(run_store).raw_frames())
    ph = tifffile.imread(tmp_path / "t" / "phase.ome.tif")
    np.testing.assert_array_equal(ph[:9], RunReader(run_store).phase()[:9])
    assert np.isnan(ph[9]).all()
