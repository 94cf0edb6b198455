"""Optional libraries: a backend or format whose library is missing stops with one line that
names the pip extra, not an ImportError traceback."""

from __future__ import annotations

import sys

import pytest

from dmicro_hw.extras import EXTRAS, MissingExtraError, available, require


@pytest.fixture
def without(monkeypatch):
    def hide(*modules: str) -> None:
        for m in modules:
            monkeypatch.setitem(sys.modules, m, None)  # import m → ImportError

    return hide


def test_require_names_the_extra(without):
    without("h5py")
    with pytest.raises(MissingExtraError) as e:
        require("h5py", "reading HDF5")
    assert str(e.value) == (
        "reading HDF5 needs h5py, which is not installed: pip install 'dmicro-hw[hdf5]' "
        "(or '.[hdf5]' in a checkout)"
    )
    assert not available("h5py") and available("numpy")
    assert {extra for extra, _ in EXTRAS.values()} == {
        "genicam",
        "screen",
        "hdf5",
        "dask",
        "video",
        "napari",
        "onnx",
    }


def test_genicam_backend_without_harvesters_is_one_line(without):
    from dmicro_hw.config import RigConfig
    from dmicro_hw.drivers.base import open_device

    without("harvesters", "harvesters.core")
    rig = RigConfig.model_validate({"camera": {"backend": "genicam"}})
    with pytest.raises(
        MissingExtraError, match=r"camera.backend: genicam needs harvesters.*\[genicam\]"
    ):
        with open_device("camera", rig.camera, rig):
            pass


def test_screen_slm_without_opencv_is_one_line(without):
    from dmicro_hw.drivers.screen_slm import ScreenSLM

    without("cv2")
    slm = ScreenSLM(shape=(8, 8), bit_depth=8)
    with pytest.raises(
        MissingExtraError, match=r"slm.backend: screen needs opencv-python.*\[screen\]"
    ):
        slm.open()


def test_hdf5_data_without_h5py_names_the_file_and_extra(tmp_path, without):
    from dmicro_hw.data.folder import read_array
    from dmicro_hw.errors import DataError

    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    without("h5py")
    with pytest.raises(DataError, match=r"x.h5: reading HDF5.*\[hdf5\]"):
        read_array(tmp_path / "x.h5")
