"""Simulated camera faults (``bench.faults``): drops, late, timeout, disconnect, saturation."""

from __future__ import annotations

import numpy as np
import pytest

from dmicro_hw.config import (
    BenchConfig,
    CameraDeviceConfig,
    FaultsConfig,
    OpticsConfig,
    RigConfig,
    SLMDeviceConfig,
)
from dmicro_hw.errors import DeviceError, DeviceTimeoutError
from dmicro_hw.simulators.faults import FaultInjector
from dmicro_hw.simulators.sim_camera import SimCamera


def camera(fetch_timeout_s: float = 0.05, pixel_format: str = "Mono8", **faults) -> SimCamera:
    rig = RigConfig(
        optics=OpticsConfig(field_size=32, compression=16, focal_length_m=0.01024),
        slm=SLMDeviceConfig(pixels=(96, 96)),
        camera=CameraDeviceConfig(
            pixel_format=pixel_format, fetch_timeout_s=fetch_timeout_s, options={"paced": False}
        ),
        bench=BenchConfig(faults=FaultsConfig(**faults)),
    )
    return SimCamera.from_config(rig.camera, rig)  # on a private bench


def test_dropped_frames_are_id_gaps_and_seeded():
    runs = []
    for _ in range(2):
        with camera(drop_probability=0.3, seed=5) as cam:
            runs.append([f.frame_id for f in cam.frames(max_frames=40)])
            assert cam.info()["faults"]["dropped"] == runs[-1][-1] + 1 - 40
    ids = runs[0]
    assert ids == runs[1]  # same seed → same faults
    assert all(b > a for a, b in zip(ids, ids[1:]))
    assert any(b - a > 1 for a, b in zip(ids, ids[1:]))
    inj = FaultInjector(FaultsConfig(drop_probability=0.3, seed=5))
    expected = [i for i in range(ids[-1] + 1) if not inj.frame(i).drop]
    assert ids == expected
    with camera(drop_probability=0.3, seed=6) as cam:
        assert [f.frame_id for f in cam.frames(max_frames=40)] != ids


def test_late_frames_are_marked():
    with camera(late_probability=0.5, late_s=0.002, seed=1) as cam:
        frames = list(cam.frames(max_frames=20))
    late = [f for f in frames if f.meta.get("fault") == "late"]
    assert 0 < len(late) < 20
    assert [f.frame_id for f in frames] == list(range(20))  # late, not lost


def test_timeout_at_frame_raises_once_then_stream_goes_on():
    with camera(timeout_at_frame=3) as cam:
        got = []
        with pytest.raises(DeviceTimeoutError, match="frame 3"):
            for f in cam.frames(max_frames=10):
                got.append(f.frame_id)
        assert got == [0, 1, 2]
        assert [f.frame_id for f in cam.frames(max_frames=2)] == [4, 5]  # frame 3 was lost


def test_disconnect_mid_stream_then_reopen():
    cam = camera(disconnect_at_frame=4)
    cam.open()
    got = []
    with pytest.raises(DeviceError, match="disconnected at frame 4"):
        for f in cam.frames():
            got.append(f.frame_id)
    assert got == [0, 1, 2, 3]
    with pytest.raises(DeviceError, match="disconnected"):
        next(cam.frames(max_frames=1))
    cam.close()
    cam.open()  # reconnect works; the one-shot fault does not fire again
    assert [f.frame_id for f in cam.frames(max_frames=6)] == list(range(6))
    cam.close()
    cam.close()  # idempotent


@pytest.mark.parametrize("fmt, top", [("Mono8", 255), ("Mono12", 4095)])
def test_saturated_frames(fmt, top):
    with camera(saturate_probability=1.0, pixel_format=fmt) as cam:
        f = next(cam.frames(max_frames=1))
    assert f.meta["fault"] == "saturated" and np.all(f.data == top)


def test_no_faults_by_default():
    inj = FaultInjector()
    assert not inj.active
    assert all(inj.frame(i) == inj.frame(0) for i in range(100))
    assert not inj.is_timeout(0) and not inj.is_disconnect(0)
