"""Replay camera: NPY folder, multi-page TIFF, .npy stack and a Zarr run store; errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from dmicro_hw.config import CameraDeviceConfig, RigConfig
from dmicro_hw.drivers.base import Camera, open_device
from dmicro_hw.errors import ConfigError, DeviceError
from dmicro_hw.simulators.replay_camera import ReplayCamera


def stack(n: int = 5, dtype=np.uint16) -> np.ndarray:
    return (np.arange(n * 6 * 8).reshape(n, 6, 8) % 250).astype(dtype)


def test_npy_folder_natural_order_unpaced(tmp_path):
    frames = stack(12)
    for i, f in enumerate(frames):
        np.save(tmp_path / f"frame{i}.npy", f)
    (tmp_path / "notes.txt").write_text("ignored")
    cam = ReplayCamera(tmp_path, paced=False)
    assert isinstance(cam, Camera)
    with cam:
        got = list(cam.frames())
    assert [f.frame_id for f in got] == list(range(12))  # frame10 after frame9
    for i, f in enumerate(got):
        np.testing.assert_array_equal(f.data, frames[i])
    assert got[0].pixel_format == "Mono16"
    assert np.all(np.diff([f.device_timestamp for f in got]) > 0)


def test_multipage_tiff_paced_and_loop(tmp_path):
    frames = stack(4, np.uint8)
    path = tmp_path / "rec.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")  # one page per frame
    section = CameraDeviceConfig(
        backend="replay", replay_path=path, frame_rate_hz=1000.0, options={"loop": True}
    )
    cam = open_device("camera", section, RigConfig(camera=section))
    with cam:
        got = list(cam.frames(max_frames=10))
    assert [f.frame_id for f in got] == list(range(10))
    np.testing.assert_array_equal(got[5].data, frames[1])
    assert got[0].data.dtype == np.uint8 and got[0].pixel_format == "Mono8"
    assert np.all(np.diff([f.device_timestamp for f in got]) == 1_000_000)


def test_npy_stack_float_frames_become_uint16(tmp_path):
    np.save(tmp_path / "s.npy", stack(3).astype(np.float32))
    with ReplayCamera(tmp_path / "s.npy", paced=False) as cam:
        got = list(cam.frames())
    assert len(got) == 3 and got[0].data.dtype == np.uint16


def test_zarr_run_store_reads_committed_frames_only(tmp_path):
    path = tmp_path / "run.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    raw = g.create_array("raw", shape=(6, 6, 8), chunks=(4, 6, 8), dtype="uint16", fill_value=0)
    raw[:5] = stack(5)  # frame 5 is a trailing fill-value frame (crash before commit)
    ids = np.array([10, 11, 13, 14, 15, -1], np.int64)
    dev = np.array([0, 1, 3, 4, 5, 0], np.int64) * 2_000_000 + 7
    for name, data in [
        ("frame_id", ids),
        ("device_time", dev),
        ("host_time", 1.7e9 + np.arange(6) * 0.002),
        ("exposure_s", np.full(6, 1e-3)),
        ("pattern_index", np.array([0, 0, 1, 1, 1, -1], np.int32)),
    ]:
        g.create_array(name, data=data)
    g.create_array("committed", data=np.array([5], np.int64))
    g.attrs.update(
        {
            "dmicro": {
                "timestamp_frequency_hz": 1e9,
                "pixel_format": "Mono12",
                "patterns": [{"index": 0, "id": "p0"}, {"index": 1, "id": "p1"}],
            }
        }
    )
    with ReplayCamera(path, paced=True) as cam:
        got = list(cam.frames())
    assert [f.frame_id for f in got] == [10, 11, 13, 14, 15]
    assert [f.device_timestamp for f in got] == list(dev[:5])
    assert [f.pattern_id for f in got] == ["p0", "p0", "p1", "p1", "p1"]
    assert got[0].pixel_format == "Mono12" and got[0].exposure_s == 1e-3
    assert got[2].meta["recorded_host_time"] == pytest.approx(1.7e9 + 0.004)
    np.testing.assert_array_equal(got[4].data, stack(5)[4])
    # without the counter array, the committed_frames attribute is trusted
    g2 = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=3)
    g2.create_array("raw", data=stack(5))
    g2.attrs["committed_frames"] = 3
    with ReplayCamera(tmp_path / "b.zarr", paced=False) as cam:
        assert [f.frame_id for f in cam.frames()] == [0, 1, 2]
    # an acquisition run folder holding run.zarr is accepted as is
    with ReplayCamera(tmp_path, paced=False) as cam:
        assert cam.n_frames == 5


def test_replay_errors(tmp_path):
    with pytest.raises(DeviceError, match="does not exist"):
        ReplayCamera(tmp_path / "missing").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeviceError, match="no frames"):
        ReplayCamera(tmp_path / "empty").open()
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DeviceError, match="cannot read"):
        ReplayCamera(tmp_path / "bad.npy").open()
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(DeviceError, match="x.zarr"):
        ReplayCamera(tmp_path / "x.zarr").open()
    with pytest.raises(ConfigError, match="replay_path"):
        ReplayCamera.from_config(CameraDeviceConfig(backend="replay"))
    with pytest.raises(DeviceError, match="not open"):
        next(ReplayCamera(tmp_path).frames())


def test_replays_a_store_written_by_the_acquisition_writer_after_a_crash(tmp_path):
    """Record → replay round trip through the real RunWriter, never finalized (a crash)."""
    from dmicro_hw.acquisition.writer import RunWriter

    frames = stack(10)
    w = RunWriter(
        tmp_path / "run.zarr",
        frame_shape=(6, 8),
        dtype="uint16",
        chunk_frames=4,
        attrs={
            "pixel_format": "Mono12",
            "timestamp_frequency_hz": 1e9,
            "patterns": [{"index": 0, "id": "lff-1"}],
        },
    )
    ids = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 10])
    w.append(
        frames,
        {
            "frame_id": ids,
            "device_time": ids * 1_000_000,
            "host_time": 1.7e9 + ids * 1e-3,
            "exposure_s": np.full(10, 5e-4),
            "pattern_index": np.zeros(10, np.int32),
        },
    )
    assert w.committed == 8  # two whole chunks; the last 2 frames are still pending
    with ReplayCamera(tmp_path, paced=True) as cam:  # the run folder
        got = list(cam.frames())
    assert [f.frame_id for f in got] == list(ids[:8])
    assert [f.device_timestamp for f in got] == list(ids[:8] * 1_000_000)
    assert {f.pattern_id for f in got} == {"lff-1"} and got[0].pixel_format == "Mono12"
    np.testing.assert_array_equal(np.stack([f.data for f in got]), frames[:8])
