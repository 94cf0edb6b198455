"""SimSLM and SimCamera: protocol, settle model, pacing/ids/timestamps, ROI/binning/formats,
triggered mode (also from the simulated trigger firmware), registry and the shipped sim rig."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw.config import (
    BenchConfig,
    CameraDeviceConfig,
    OpticsConfig,
    RigConfig,
    SensorConfig,
    SLMDeviceConfig,
    load_rig_config,
)
from dmicro_hw.drivers.base import SLM, Camera, open_device
from dmicro_hw.errors import (
    ConfigError,
    DeviceError,
    DeviceTimeoutError,
    FrameShapeError,
)
from dmicro_hw.rig import open_rig
from dmicro_hw.simulators.bench import VirtualBench, bench_of
from dmicro_hw.simulators.sim_camera import SimCamera
from dmicro_hw.simulators.sim_slm import SimSLM, radians_to_grey

ROOT = Path(__file__).resolve().parents[2]
SLM_PX = 160


class ManualClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rig64(camera: dict | None = None, slm: dict | None = None, **bench: object) -> RigConfig:
    """64-px field, ×16 → 16×16 sensor; 160×160 SLM at 2 SLM pixels per filter sample."""
    cam = {"options": {"paced": False}}
    cam.update(camera or {})
    return RigConfig(
        optics=OpticsConfig(field_size=64, compression=16, focal_length_m=0.02048),
        sensor=SensorConfig(photons_per_pixel=5000, gain_adu_per_e=0.2, offset_adu=20),
        slm=SLMDeviceConfig(**{"pixels": (SLM_PX, SLM_PX), "settle_time_s": 0.0, **(slm or {})}),
        camera=CameraDeviceConfig(**cam),
        bench=BenchConfig(**bench),
    )


def grey(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SLM_PX, SLM_PX)).astype(np.uint8)


def devices(rig: RigConfig, clock=None) -> tuple[SimSLM, SimCamera, VirtualBench]:
    bench = VirtualBench.from_rig(rig, **({"clock": clock} if clock else {}))
    cam = SimCamera(
        rig.camera,
        bench,
        frame_rate_hz=rig.camera.frame_rate_hz or rig.bench.frame_rate_hz,
        faults=rig.bench.faults,
    )
    return SimSLM(rig.slm, bench), cam, bench


# ---------------------------------------------------------------------------------- SLM


def test_slm_protocol_conversions_and_errors():
    slm, _, bench = devices(rig64())
    assert isinstance(slm, SLM)
    assert slm.shape == (SLM_PX, SLM_PX) and slm.bit_depth == 8
    g = grey(3)
    slm.show(g, "mine")
    assert slm.pattern_id == "mine" == bench.displayed_label()
    # radians: wrapped to [0, 2π) and mapped with the linear LUT
    phase = np.full((SLM_PX, SLM_PX), math.pi)
    slm.show(phase)
    assert slm.pattern_id == bench.displayed_label() != "mine"
    assert slm.to_grey(phase)[0, 0] == 128
    assert slm.to_grey(phase - 4 * math.pi)[0, 0] == 128
    np.testing.assert_array_equal(
        radians_to_grey(np.array([0.0, 2 * math.pi - 1e-4, math.pi / 2]), 8), [0, 0, 64]
    )
    with pytest.raises(FrameShapeError, match="shape"):
        slm.show(np.zeros((10, 10), np.uint8))
    with pytest.raises(FrameShapeError, match="8 bits"):
        slm.show(np.full((SLM_PX, SLM_PX), 300, np.uint16))
    with pytest.raises(FrameShapeError, match="NaN"):
        slm.show(np.full((SLM_PX, SLM_PX), np.nan))


def test_slm_measured_lut_file(tmp_path):
    lut = np.linspace(0, 1.5 * math.pi, 256) ** 1.0
    np.save(tmp_path / "lut.npy", lut)
    slm, _, _ = devices(rig64(slm={"lut": tmp_path / "lut.npy"}))
    g = slm.to_grey(np.full((SLM_PX, SLM_PX), 0.75 * math.pi))
    assert abs(int(g[0, 0]) - 128) <= 1
    np.save(tmp_path / "bad.npy", np.zeros(10))
    with pytest.raises(ConfigError, match="slm.lut"):
        devices(rig64(slm={"lut": tmp_path / "bad.npy"}))


def test_slm_context_manager_blanks_and_closes_idempotently():
    slm, cam, bench = devices(rig64(camera={"options": {"paced": False, "noise": False}}))
    with slm:
        slm.show(grey(1), "p1")
    assert slm.closed and bench.displayed_label() == "blank"
    slm.close()  # idempotent
    with pytest.raises(DeviceError, match="closed"):
        slm.show(grey(1))
    blank = np.zeros((SLM_PX, SLM_PX), np.uint8)
    with cam:
        f = next(cam.frames(max_frames=1))
    ref = bench.render(f.frame_id, blank, noise=False) / 16  # Mono8 from a 12-bit ADC
    np.testing.assert_array_equal(f.data, np.rint(ref).astype(np.uint8))
    assert f.pattern_id == "blank"


def test_settle_model_previous_then_blend_then_new():
    clock = ManualClock(0.0)
    rig = rig64(
        camera={"options": {"paced": False, "noise": False}, "pixel_format": "Mono16"},
        slm={"settle_time_s": 1.0},
    )
    slm, cam, bench = devices(rig, clock)
    a, b = grey(1), grey(2)
    cam.set_exposure(1e-3)
    with slm, cam:
        slm.show(a, "A")
        clock.t = 10.0  # long after: A settled
        f0 = next(cam.frames(max_frames=1))
        slm.show(b, "B")  # at t = 10
        clock.t = 10.1  # within the first quarter of the settle time: still A
        f1 = next(cam.frames(max_frames=1))
        clock.t = 10.6  # half-way: a blend, neither A nor B
        f2 = next(cam.frames(max_frames=1))
        clock.t = 12.0  # settled on B
        f3 = next(cam.frames(max_frames=1))

    def expect(fid: int, g: np.ndarray) -> np.ndarray:
        adu = bench.render(fid, g, noise=False) * 16  # Mono16 from a 12-bit ADC
        return np.rint(adu).astype(np.uint16)

    assert [f.pattern_id for f in (f0, f1, f2, f3)] == ["A", "B", "B", "B"]
    np.testing.assert_array_equal(f0.data, expect(f0.frame_id, a))
    np.testing.assert_array_equal(f1.data, expect(f1.frame_id, a))
    assert not np.array_equal(f2.data, expect(f2.frame_id, a))
    assert not np.array_equal(f2.data, expect(f2.frame_id, b))
    np.testing.assert_array_equal(f3.data, expect(f3.frame_id, b))


# ---------------------------------------------------------------------------------- camera


def test_camera_protocol_ids_and_timestamps_paced():
    rig = rig64(camera={"frame_rate_hz": 500.0, "options": {"paced": True}})
    _, cam, _ = devices(rig)
    assert isinstance(cam, Camera)
    with pytest.raises(DeviceError, match="not open"):
        next(cam.frames(max_frames=1))
    with cam:
        frames = list(cam.frames(max_frames=12))
    ids = [f.frame_id for f in frames]
    assert ids == list(range(12))
    ticks = np.diff([f.device_timestamp for f in frames])
    assert np.all(ticks == 2_000_000)  # 500 Hz at 1 GHz ticks, from the device clock
    host = [f.host_time for f in frames]
    assert all(b >= a for a, b in zip(host, host[1:]))
    f = frames[0]
    assert f.timestamp_frequency_hz == 1e9 and f.exposure_s == rig.sensor.exposure_s
    assert f.data.shape == (16, 16) and f.data.dtype == np.uint8 and f.pixel_format == "Mono8"
    cam.close()  # idempotent


def test_camera_slow_reader_loses_frames_to_buffer_overflow():
    rig = rig64(camera={"frame_rate_hz": 2000.0, "options": {"paced": True, "buffer_frames": 2}})
    _, cam, _ = devices(rig)
    with cam:
        it = cam.frames(max_frames=6)
        first = next(it)
        time.sleep(0.1)  # 200 frame periods: the device buffer (2) overflows
        rest = [f.frame_id for f in it]
    assert first.frame_id == 0 and rest[:2] == [1, 2]
    assert rest[2] > 3  # frame id gap
    assert cam.info()["lost_buffer_overflow"] >= rest[2] - 3


@pytest.mark.parametrize(
    "fmt, dtype, top",
    [("Mono8", np.uint8, 255), ("Mono12", np.uint16, 4095), ("Mono16", np.uint16, 65535)],
)
def test_camera_pixel_formats(fmt, dtype, top):
    rig = rig64(camera={"pixel_format": fmt, "options": {"paced": False, "noise": False}})
    _, cam, bench = devices(rig)
    with cam:
        f = next(cam.frames(max_frames=1))
    assert f.data.dtype == dtype and f.pixel_format == fmt and cam.info()["bits_per_pixel"] <= 16
    adu = bench.render(f.frame_id, np.zeros((SLM_PX, SLM_PX), np.uint8), noise=False)
    scale = 2.0 ** (int(fmt[4:]) - 12)
    np.testing.assert_array_equal(f.data, np.clip(np.rint(adu * scale), 0, top).astype(dtype))


def test_camera_roi_binning_and_exposure():
    rig = rig64(
        camera={
            "width": 8,
            "height": 12,
            "offset_x": 4,
            "offset_y": 2,
            "binning": 2,
            "pixel_format": "Mono16",
            "options": {"paced": False, "noise": False},
        }
    )
    _, cam, bench = devices(rig)
    with cam:
        f = next(cam.frames(max_frames=1))
        cam.set_exposure(2 * rig.sensor.exposure_s)
        f2 = next(cam.frames(max_frames=1))
    assert f.data.shape == (6, 4) and (cam.height, cam.width) == (6, 4)
    full = bench.render(f.frame_id, np.zeros((SLM_PX, SLM_PX), np.uint8), noise=False) * 16
    roi = full[2:14, 4:12].reshape(6, 2, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(f.data, np.rint(roi), atol=1)
    # doubling the exposure doubles the signal above the offset (16 × 20 ADU in Mono16)
    off = 16 * rig.sensor.offset_adu
    ref2 = bench.render(f2.frame_id, np.zeros((SLM_PX, SLM_PX), np.uint8), noise=False) * 16
    ref2 = ref2[2:14, 4:12].reshape(6, 2, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(f2.data - off, 2 * (np.rint(ref2) - off), rtol=0.02, atol=40)
    assert f2.exposure_s == 2 * rig.sensor.exposure_s
    with pytest.raises(ConfigError, match="camera.width"):
        devices(rig64(camera={"width": 17}))
    with pytest.raises(ConfigError, match="binning"):
        devices(rig64(camera={"width": 9, "binning": 2}))
    with pytest.raises(ConfigError, match="pixel_format"):
        devices(rig64(camera={"pixel_format": "RGB8"}))
    with pytest.raises(ConfigError, match="camera.options"):
        devices(rig64(camera={"options": {"pacedd": True}}))


def test_triggered_mode_pulses_and_missed_trigger_timeout():
    rig = rig64(
        camera={"fetch_timeout_s": 0.05, "options": {"paced": False, "trigger_mode": "triggered"}}
    )
    _, cam, _ = devices(rig)
    with cam:
        cam.start()
        for _ in range(3):
            cam.trigger_pulse()
        frames = list(cam.frames(max_frames=3))
        assert [f.frame_id for f in frames] == [0, 1, 2]
        assert frames[0].device_timestamp <= frames[1].device_timestamp
        with pytest.raises(DeviceTimeoutError, match="no frame within"):
            next(cam.frames(max_frames=1))


def test_triggered_by_simulated_trigger_box():
    """Pulses from the trigger firmware (real serial driver over a pty) expose frames."""
    rig = rig64(camera={"fetch_timeout_s": 5.0, "options": {"trigger_mode": "triggered"}})
    rig.trigger.backend = "sim"
    _, cam, _ = devices(rig)
    with open_device("trigger", rig.trigger, rig) as trig, cam:
        cam.attach_trigger(trig)
        cam.start()
        trig.arm(200.0, 5)
        trig.fire()
        frames = list(cam.frames(max_frames=5))
    assert [f.frame_id for f in frames] == list(range(5))
    ticks = np.diff([f.device_timestamp for f in frames])
    assert np.all(np.abs(ticks - 5_000_000) < 1_000)  # pulse times, not callback times


def test_registry_and_shipped_sim_rig():
    rig = load_rig_config(ROOT / "configs" / "sim-rig.yaml")
    assert rig.slm.backend == "sim" and rig.camera.backend == "sim"
    assert rig.trigger.backend == "none"
    rig.camera.options = {**rig.camera.options, "paced": False, "prefill": False}
    with contextlib.ExitStack() as stack:
        opened = open_rig(rig, stack)
        slm, cam = opened.slm, opened.camera
        assert isinstance(slm, SimSLM) and isinstance(cam, SimCamera)
        assert bench_of(slm) is bench_of(cam) is opened.ground_truth
        slm.show(np.zeros(rig.slm.pixels))
        frames = list(cam.frames(max_frames=3))
    n = rig.optics.field_size // rig.optics.binning
    assert frames[-1].data.shape == (n, n) and frames[-1].data.dtype == np.uint16
    assert 0 < frames[-1].data.mean() < 4095
    # opened alone through the registry, each simulated device gets a private bench
    assert bench_of(open_device("slm", rig.slm, rig)) is not bench_of(
        open_device("camera", rig.camera, rig)
    )


def test_bench_sim_command_writes_json(tmp_path):
    out = tmp_path / "bench-sim.json"
    dmicro = str(Path(sys.executable).with_name("dmicro"))
    cmd = [dmicro, "bench", "sim", "--sizes", "32x16"]
    cmd += ["--frames", "20", "--rate", "2000", "--paced-seconds", "0.05", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["field_size"] == 32 and rows[0]["camera_unpaced_fps_prefilled"] > 0
    from dmicro_hw.cli import main

    with pytest.raises(SystemExit) as bad:  # the same CLI in-process: one clear error line
        main(["bench", "sim", "--sizes", "33x16", "--out", str(out)])
    assert bad.value.code == 2
