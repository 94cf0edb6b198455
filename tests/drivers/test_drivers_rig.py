"""Hardware-in-the-loop checks of a real rig: skipped unless ``DMICRO_HW_RIG=path/to/rig.yaml``.

    DMICRO_HW_RIG=configs/my-bench.yaml pytest tests/drivers/test_drivers_rig.py -v

Each configured device is opened through the registry exactly as ``dmicro-acquire`` opens it and
exercised briefly; every device is left in its safe state (SLM blank, camera stopped, trigger
disarmed). Works with any backend, simulated ones included.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from dmicro_hw.config import load_rig_config
from dmicro_hw.drivers.base import SLM, Camera, Trigger, open_device

RIG = os.environ.get("DMICRO_HW_RIG")
pytestmark = [
    pytest.mark.hardware,
    pytest.mark.skipif(not RIG, reason="needs a real rig: set DMICRO_HW_RIG=path/to/rig.yaml"),
]


@pytest.fixture(scope="module")
def rig():
    return load_rig_config(RIG)


def test_slm_shows_and_blanks(rig) -> None:
    slm = open_device("slm", rig.slm, rig)
    assert isinstance(slm, SLM)
    with slm:
        assert tuple(slm.shape) == tuple(rig.slm.pixels)
        rows, cols = slm.shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        ramp = 2 * math.pi * xx / max(cols, 1)  # radians: wrapped, LUT, quantised by the driver
        slm.show(ramp, pattern_id="rig-test-ramp")
        assert slm.pattern_id == "rig-test-ramp"
        slm.show(np.zeros((rows, cols), np.uint16 if slm.bit_depth > 8 else np.uint8))
        slm.blank()
    slm.close()  # idempotent


def test_camera_streams_configured_frames(rig) -> None:
    cam = open_device("camera", rig.camera, rig)
    assert isinstance(cam, Camera)
    n = 10
    with cam:
        frames = list(cam.frames(n))
        cam.stop()
        info = cam.info()
    assert len(frames) == n
    ids = [f.frame_id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == n
    first = frames[0]
    assert first.data.ndim == 2 and first.data.dtype in (np.uint8, np.uint16)
    assert all(f.data.shape == first.data.shape for f in frames)
    if rig.camera.width and rig.camera.height and rig.camera.binning == 1:
        assert first.data.shape == (rig.camera.height, rig.camera.width)
    assert first.pixel_format == rig.camera.pixel_format
    hosts = [f.host_time for f in frames]
    assert hosts == sorted(hosts)
    print(f"\ncamera info: {info}")


def test_trigger_arms_fires_and_disarms(rig) -> None:
    if rig.trigger.backend == "none":
        pytest.skip("trigger.backend is none (free-run rig)")
    trig = open_device("trigger", rig.trigger, rig)
    assert isinstance(trig, Trigger)
    with trig:
        trig.arm(rig.trigger.rate_hz, 5)
        assert trig.status()["armed"]
        trig.fire()
        end = time.monotonic() + 5 / rig.trigger.rate_hz + 2.0
        while trig.status().get("running") and time.monotonic() < end:
            time.sleep(0.01)
        assert trig.status()["fired"] == 5
        trig.disarm()
        assert not trig.status()["armed"]
