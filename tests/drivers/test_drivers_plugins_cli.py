"""A lab backend built from drivers/template.py and registered through a real entry point
(``dmicro_hw.drivers`` group, an installed-distribution ``.dist-info`` on the path); and the
``dmicro devices list/check`` commands run as a user runs them (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmicro_hw.config import CameraDeviceConfig, SLMDeviceConfig
from dmicro_hw.drivers.base import SLM, Camera, available_backends, open_device
from dmicro_hw.drivers.genicam_camera import bundled_producers
from dmicro_hw.drivers.template import TemplateCamera, TemplateSLM
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError

PLUGIN = '''
"""A lab's camera and SLM, written from dmicro_hw.drivers.template."""
import numpy as np
from dmicro_hw.drivers.template import TemplateCamera, TemplateSLM

class LabCamera(TemplateCamera):
    OPTIONS = {"skip"}
    def _hw_open(self):
        self.events = ["open"]
        self._n = 0
        return {"model": "LabCam 1", "serial": "42"}
    def _hw_start(self):
        self.events.append("start")
    def _hw_read(self, timeout_s):
        self._n += 1
        if self._n == 3:
            self._n += int(self.options.get("skip", 0))  # the device lost frames
        if self._n > 8:
            return None  # no frame in time
        return np.full((4, 5), self._n, np.uint16), self._n, 1000 * self._n
    def _hw_stop(self):
        self.events.append("stop")
    def _hw_close(self):
        self.events.append("close")

class LabSLM(TemplateSLM):
    def _hw_open(self):
        self.written = []
        return self.shape
    def _hw_write(self, grey):
        self.written.append(grey.copy())
    def _hw_close(self):
        self.written.append("closed")
'''


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "labcam_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "labcam-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: labcam\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[dmicro_hw.drivers]\n"
        "camera.labcam = labcam_plugin:LabCamera.from_config\n"
        "slm.labslm = labcam_plugin:LabSLM.from_config\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "labcam_plugin", raising=False)
    return tmp_path


def test_entry_point_backends_work_through_the_registry(plugin_path: Path) -> None:
    assert "labcam" in available_backends("camera")
    assert "labslm" in available_backends("slm")
    cam = open_device("camera", CameraDeviceConfig(backend="labcam", options={"skip": 2}))
    assert isinstance(cam, Camera)
    with cam:
        frames = list(cam.frames(4))
        assert [f.frame_id for f in frames] == [1, 2, 5, 6]
        assert cam.dropped == 2 and cam.info()["model"] == "LabCam 1"
        assert frames[2].data.shape == (4, 5) and frames[2].device_timestamp == 5000
        with pytest.raises(DeviceTimeoutError, match="no frame within"):
            list(cam.frames())
    cam.close()
    assert cam.events == ["open", "start", "stop", "close"]
    with pytest.raises(ConfigError, match="camera.options: unknown key"):
        open_device("camera", CameraDeviceConfig(backend="labcam", options={"skp": 1}))

    slm = open_device("slm", SLMDeviceConfig(backend="labslm", pixels=(3, 4), settle_time_s=0))
    assert isinstance(slm, SLM)
    with slm:
        slm.show(np.full((3, 4), np.pi), pattern_id="half")
        assert slm.pattern_id == "half"
    written = slm.written
    assert written[-1] == "closed"
    assert [int(w[0, 0]) for w in written[:-1]] == [0, 128, 0]  # blank, π, blank on close


def test_template_hooks_say_what_to_implement() -> None:
    with pytest.raises(NotImplementedError, match="open your camera SDK"):
        TemplateCamera(CameraDeviceConfig()).open()
    with pytest.raises(NotImplementedError, match="open your SLM"):
        TemplateSLM(SLMDeviceConfig(pixels=(2, 2))).open()


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run(
        [str(Path(sys.executable).with_name("dmicro")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_devices_list_shows_backends_producers_ports(plugin_path: Path) -> None:
    proc = run_cli(
        "devices", "list", "--display", ":987",
        env_extra={"PYTHONPATH": str(plugin_path), "GENICAM_GENTL64_PATH": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "labcam" in out and "labslm" in out  # entry-point backends
    for name in ("genicam", "screen", "slmpy", "serial", "sim"):
        assert name in out
    if bundled_producers():
        assert "viky.cti" in out and "VikyTL_DEV_red" in out and "genicam wheel" in out
    assert ":987" in out and "cannot open" in out
    assert "Serial ports" in out


@pytest.mark.skipif(not bundled_producers(), reason="genicam wheel without viky.cti")
def test_devices_check_reports_and_fails_with_exit_code(tmp_path: Path) -> None:
    viky = str(bundled_producers()[0])
    rig = {
        "rig_id": "check-test",
        "slm": {"backend": "labslm_missing", "pixels": [8, 8]},
        "camera": {"backend": "genicam", "cti": viky, "device": "VikyTL_DEV_blue",
                   "width": 200, "height": 100, "frame_rate_hz": 200},
        "trigger": {"backend": "sim", "timeout_s": 0.5},
    }  # fmt: skip
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(rig))
    proc = run_cli("devices", "check", "--config", str(path), "--frames", "4")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = proc.stdout
    assert "unknown backend 'labslm_missing'" in out
    assert "4 frames 200x100 Mono8" in out and "VikyTL_DEV_blue" in out
    assert "dmicro-trigger-sim" in out
    assert out.count("OK") == 2 and out.count("FAIL") == 1
    assert "1 of the configured devices failed" in proc.stderr

    proc = run_cli("devices", "check", "--config", str(path), "--only", "camera")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rig["camera"]["device"] = "nope"
    path.write_text(yaml.safe_dump(rig))
    proc = run_cli("devices", "check", "--config", str(path), "--only", "camera")
    assert proc.returncode == 3 and "camera.device 'nope' not found" in proc.stdout


def test_rig_example_without_its_hardware_fails_each_device_by_name() -> None:
    """configs/rig-example.yaml on a machine without that bench: one FAIL row per device,
    each naming the config key and what is missing, exit 3 (no traceback)."""
    example = Path(__file__).resolve().parents[2] / "configs" / "rig-example.yaml"
    proc = run_cli("devices", "check", "--config", str(example))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "camera.cti: GenTL producer not found: /opt/vendor/lib/producer.cti" in out
    assert "trigger.port /dev/ttyUSB0: cannot open serial port" in out
    assert "Traceback" not in proc.stderr


def test_unknown_backend_message_lists_allowed() -> None:
    with pytest.raises(
        ConfigError, match="camera.backend: unknown backend 'x'; available: .*genicam"
    ):
        open_device("camera", CameraDeviceConfig(backend="x"))
    with pytest.raises(DeviceError):
        open_device("trigger", yaml_free_trigger()).open()


def yaml_free_trigger():
    from dmicro_hw.config import TriggerDeviceConfig

    return TriggerDeviceConfig(backend="serial", port="/dev/nonexistent-trigger", timeout_s=0.1)


def test_module_doc_mentions_registration() -> None:
    import dmicro_hw.drivers.template as t

    doc = textwrap.dedent(t.__doc__ or "")
    assert '[project.entry-points."dmicro_hw.drivers"]' in doc
    assert '"camera.mylab" = "mylab_dmicro.camera:MyCamera.from_config"' in doc
