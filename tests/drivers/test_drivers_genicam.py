"""GenICam camera driver against a real GenTL producer: viky.cti from the genicam wheel
(three simulated devices, serials 0/1/2; Width/Height 100–800, PixelFormat RGBa8|Mono8,
AcquisitionFrameRate 1–200; no ExposureTime, Gain, Offset or Trigger nodes)."""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pytest

from dmicro_hw.config import CameraDeviceConfig, RigConfig
from dmicro_hw.drivers.base import Camera, open_device
from dmicro_hw.drivers.genicam_camera import (
    GenICamCamera,
    _as_image,
    bundled_producers,
    check_producer,
    gentl_path_producers,
    to_right_justified,
)
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError

VIKY = next((p for p in bundled_producers() if p.name == "viky.cti"), None)
needs_viky = pytest.mark.skipif(VIKY is None, reason="genicam wheel without viky.cti")


def cam_cfg(**kw) -> CameraDeviceConfig:
    base = dict(backend="genicam", cti=VIKY, device="0", fetch_timeout_s=2.0)
    base.update(kw)
    return CameraDeviceConfig(**base)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


@needs_viky
def test_stream_stop_reopen_against_viky() -> None:
    cfg = cam_cfg(
        width=160, height=120, frame_rate_hz=200.0, exposure_s=1e-3, options={"gain": 2.0}
    )
    cam = open_device("camera", cfg, RigConfig())
    assert isinstance(cam, Camera)
    with cam:
        info = cam.info()
        assert info["device"]["serial_number"] == "0" and info["device"]["model"] == "Viky"
        assert info["pixel_format"] == "Mono8" and info["bits_per_pixel"] == 8  # default RGBa8
        assert info["set_nodes"] == {
            "PixelFormat": "Mono8",
            "Width": 160,
            "Height": 120,
            "AcquisitionFrameRate": 200.0,
        }
        assert info["missing_nodes"] == {
            "ExposureTime": "camera.exposure_s",
            "Gain": "camera.options.gain",
        }
        frames = list(cam.frames(12))
        assert len(frames) == 12
        assert [f.frame_id for f in frames] == list(range(1, 13))
        assert [f.meta["device_frame_id"] for f in frames] == list(range(1, 13))
        assert cam.dropped == 0 and all(f.meta["dropped_before"] == 0 for f in frames)
        for f in frames:
            assert f.data.shape == (120, 160) and f.data.dtype == np.uint8
            assert f.pixel_format == "Mono8" and f.meta["bits_per_pixel"] == 8
            assert f.data.flags.owndata  # copied out of the GenTL buffer
            assert f.timestamp_frequency_hz == 0.0 and f.device_timestamp == 0  # viky: none
        hosts = [f.host_time for f in frames]
        assert hosts == sorted(hosts)
        assert len({digest(f.data) for f in frames}) > 1  # the scene moves
        before = [digest(f.data) for f in frames]
        more = list(cam.frames(8))  # buffers are reused by these fetches ...
        assert [digest(f.data) for f in frames] == before  # ... and our copies did not change
        assert more[0].frame_id == 13
        cam.stop()
        cam.stop()  # idempotent
        again = list(cam.frames(3))  # restart: the device counter restarts, ours continues
        assert [f.frame_id for f in again] == [21, 22, 23]
        assert [f.meta["device_frame_id"] for f in again] == [1, 2, 3]
    cam.close()  # idempotent
    assert cam._ia is None and cam._harvester is None

    # reopen with other settings: a fresh Harvester, nodes written before start
    cam.cfg = cam_cfg(width=320, height=200, frame_rate_hz=100.0)
    with cam:
        f = next(cam.frames(1))
        assert f.data.shape == (200, 320) and f.frame_id == 24
        assert cam.info()["set_nodes"]["AcquisitionFrameRate"] == 100.0


@needs_viky
def test_device_selection_and_errors() -> None:
    with open_device("camera", cam_cfg(device="VikyTL_DEV_blue", width=100, height=100)) as cam:
        assert cam.info()["device"]["serial_number"] == "2"
        assert next(cam.frames(1)).data.shape == (100, 100)
    with pytest.raises(DeviceError, match=r"camera.device 'nope' not found; found: VikyTL_DEV_red"):
        open_device("camera", cam_cfg(device="nope")).open()
    with pytest.raises(DeviceError, match=r"'Viky' matches 3 devices by model"):
        open_device("camera", cam_cfg(device="Viky")).open()
    with pytest.raises(DeviceError, match=r"refused Width = 50 .*allowed: 100\.\.800"):
        open_device("camera", cam_cfg(width=50)).open()
    with pytest.raises(DeviceError, match="has no Mono12; it offers RGBa8, Mono8"):
        open_device("camera", cam_cfg(pixel_format="Mono12")).open()
    with pytest.raises(ConfigError, match="camera.pixel_format: 'RGBa8' is not supported"):
        open_device("camera", cam_cfg(pixel_format="RGBa8")).open()
    with pytest.raises(ConfigError, match="camera.options: unknown key"):
        open_device("camera", cam_cfg(options={"gian": 1}))


@needs_viky
def test_triggered_mode_on_a_camera_without_trigger_nodes_is_a_clear_error() -> None:
    """viky has no TriggerMode/TriggerSource: asked to run triggered (by the YAML or by
    ``set_trigger_mode``) it refuses, instead of free-running while the trigger box pulses."""
    rig = RigConfig.model_validate({"acquisition": {"mode": "triggered"}})
    cam = open_device("camera", cam_cfg(), rig)
    with pytest.raises(DeviceError, match=r"acquisition.mode: camera .* has no TriggerMode or Tr"):
        cam.open()
    assert cam._ia is None  # nothing left open
    with open_device("camera", cam_cfg(), RigConfig()) as cam:  # YAML: free-run
        with pytest.raises(DeviceError, match="cannot be hardware-triggered; run --mode free-run"):
            cam.set_trigger_mode("triggered")
        cam.set_trigger_mode("free-run")  # nothing to switch off on viky
        assert len(list(cam.frames(2))) == 2
        with pytest.raises(DeviceError, match="stop\\(\\) before changing the trigger mode"):
            cam.set_trigger_mode("free-run")
        with pytest.raises(ConfigError, match="'free-run' or 'triggered', got 'hw'"):
            cam.set_trigger_mode("hw")


class _Node:
    def __init__(self, name: str, value: object) -> None:
        self.value, self.symbolics = value, ()
        self.node = type("N", (), {"name": name})()


class _NodeMap:
    def __init__(self, **nodes: object) -> None:
        self.nodes = [_Node(k, v) for k, v in nodes.items()]
        for n in self.nodes:
            setattr(self, n.node.name, n)


def _fake_open(cam: GenICamCamera, nm: _NodeMap) -> None:
    """Stand a node map in for an opened device (the nodes viky lacks)."""
    cam._ia = type("IA", (), {"remote_device": type("RD", (), {"node_map": nm})()})()
    cam._node_names = {n.node.name for n in nm.nodes}
    cam.device = {"id": "fake"}


def test_set_trigger_mode_writes_the_trigger_nodes_before_start() -> None:
    nm = _NodeMap(TriggerSelector="AcquisitionStart", TriggerMode="Off", TriggerSource="Software")
    cam = GenICamCamera(cam_cfg(options={"trigger_source": "Line2"}), RigConfig())
    _fake_open(cam, nm)
    cam.set_trigger_mode("triggered")
    assert (nm.TriggerSelector.value, nm.TriggerMode.value, nm.TriggerSource.value) == (
        "FrameStart",
        "On",
        "Line2",
    )
    assert cam.triggered and cam.set_nodes["TriggerMode"] == "On" and not cam.missing_nodes
    cam.set_trigger_mode("free-run")
    assert nm.TriggerMode.value == "Off" and cam.set_nodes["TriggerMode"] == "Off"
    assert "TriggerSource" not in cam.set_nodes and not cam.triggered
    # a device with TriggerMode but no TriggerSource cannot be triggered either
    nm2 = _NodeMap(TriggerMode="Off")
    cam2 = GenICamCamera(cam_cfg(), RigConfig())
    _fake_open(cam2, nm2)
    with pytest.raises(DeviceError, match="camera fake has no TriggerSource node"):
        cam2.set_trigger_mode("triggered")
    assert nm2.TriggerMode.value == "Off"
    # before open(): remembered and written by open()'s configuration
    cam3 = GenICamCamera(cam_cfg(), RigConfig())
    cam3.set_trigger_mode("triggered")
    assert cam3.triggered


def test_camera_protocol_declares_what_the_pipeline_calls() -> None:
    from dmicro_hw.drivers.base import SLM, Trigger, missing_members

    for name in ("set_trigger_mode", "attach_trigger", "start", "frames", "info"):
        assert hasattr(Camera, name)
    assert {"settle_time_s", "pattern_id"} <= set(SLM.__annotations__)
    assert hasattr(Trigger, "arm")
    assert missing_members(GenICamCamera(cam_cfg(), RigConfig()), "camera") == []
    assert missing_members(object(), "camera")[:2] == ["__enter__", "__exit__"]


def test_backend_without_the_protocol_is_refused_when_built(monkeypatch) -> None:
    from dmicro_hw.drivers import base

    class NoTrigger:
        def __init__(self, *a: object) -> None: ...
        def open(self) -> None: ...
        def start(self) -> None: ...

    monkeypatch.setitem(base._REGISTERED, "camera.partial", NoTrigger)
    with pytest.raises(ConfigError, match="'partial' .NoTrigger. does not implement the camera "):
        open_device("camera", CameraDeviceConfig(backend="partial"))


def test_wrong_or_invalid_cti_is_device_error(tmp_path) -> None:
    missing = tmp_path / "no" / "such.cti"
    with pytest.raises(DeviceError, match=f"GenTL producer not found: {missing}"):
        open_device("camera", CameraDeviceConfig(backend="genicam", cti=missing)).open()
    text = tmp_path / "fake.cti"
    text.write_text("not a library")
    with pytest.raises(DeviceError, match=f"{text} is not a loadable GenTL producer"):
        check_producer(text)
    libm = "/lib/x86_64-linux-gnu/libm.so.6"
    if sys.platform.startswith("linux") and os.path.exists(libm):
        # a real shared library that is not a producer: refused before harvesters touches it
        with pytest.raises(DeviceError, match="is not a GenTL producer .no GCInitLib"):
            check_producer(libm)


@needs_viky
def test_gentl_path_convention(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GENICAM_GENTL64_PATH", os.pathsep.join([str(tmp_path), str(VIKY.parent)]))
    assert VIKY in gentl_path_producers()
    with open_device("camera", CameraDeviceConfig(backend="genicam", device="1")) as cam:
        assert cam.info()["producers"] == [str(VIKY)]
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    with pytest.raises(DeviceError, match="GENICAM_GENTL64_PATH names no .cti"):
        open_device("camera", CameraDeviceConfig(backend="genicam")).open()


@needs_viky
def test_fetch_timeout_is_device_timeout_error() -> None:
    cam = GenICamCamera(cam_cfg(frame_rate_hz=1.0, fetch_timeout_s=0.2))
    with pytest.raises(
        DeviceTimeoutError, match=r"no frame within 0.2 s \(camera.fetch_timeout_s\)"
    ):
        with cam:
            next(cam.frames(1))
    assert cam._ia is None  # closed by __exit__ after the error


@needs_viky
def test_full_reset_recovers_a_broken_stream() -> None:
    with open_device("camera", cam_cfg(width=100, height=100, frame_rate_hz=200.0)) as cam:
        ids = [f.frame_id for f in cam.frames(3)]
        cam._harvester.reset()  # the producer goes away under the driver (like a disconnect)
        ids += [f.frame_id for f in cam.frames(3)]
        assert cam.recoveries == 1
        assert ids == sorted(ids) and len(set(ids)) == 6
        cam._harvester.reset()
        cam.auto_recover = False
        with pytest.raises(DeviceError, match="stream failed"):
            list(cam.frames(2))


# ----------------------------------------------------------------------- pixel data, no device


def test_mono12_left_and_right_justified_are_normalised() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(6, 7)).astype(np.uint16)
    values[0, 0] = 4095
    right, used = to_right_justified(values, 12, "auto")
    assert used == "right" and np.array_equal(right, values)
    assert not np.shares_memory(right, values)
    left = values << 4  # MSB-aligned container
    out, used = to_right_justified(left, 12, "auto")
    assert used == "left" and np.array_equal(out, values)
    out, used = to_right_justified(left, 12, "left")
    assert np.array_equal(out, values)
    dark_left = (values // 64) << 4  # all values small: auto cannot tell, explicit setting can
    assert to_right_justified(dark_left, 12, "auto")[1] == "right"
    assert np.array_equal(to_right_justified(dark_left, 12, "left")[0], values // 64)
    full16 = rng.integers(0, 65536, size=(3, 3)).astype(np.uint16)
    assert np.array_equal(to_right_justified(full16, 16, "auto")[0], full16)
    mono10 = (values >> 2) << 6
    assert np.array_equal(to_right_justified(mono10, 10, "auto")[0], values >> 2)


def test_as_image_drops_row_padding() -> None:
    raw = np.arange(4 * 6, dtype=np.uint8)
    img = _as_image(raw, 4, 5)  # 1 padding value per row
    assert img.shape == (4, 5) and img[1, 0] == 6
    with pytest.raises(DeviceError, match="does not hold a 9x4 image"):
        _as_image(raw, 4, 9)


def test_frame_ids_and_drops_from_device_counter_gaps() -> None:
    cam = GenICamCamera(CameraDeviceConfig(backend="genicam"))
    d = np.zeros((2, 2), np.uint8)
    ids = [cam._make_frame(d, i, 0, 0.0, 0.0, "Mono8", 8).frame_id for i in (1, 2, 5, 6)]
    assert ids == [1, 2, 5, 6] and cam.dropped == 2
    cam._session_base = None  # a new acquisition session: the device restarts at 0 here
    ids = [cam._make_frame(d, i, 0, 0.0, 0.0, "Mono8", 8).frame_id for i in (0, 1, 3)]
    assert ids == [7, 8, 10] and cam.dropped == 3
