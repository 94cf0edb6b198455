"""The device contract (dmicro_hw/drivers/contract.py) against every backend available here:
cameras sim, replay (a real run store), GenICam through viky.cti; SLMs sim, screen (a real
window on Xvfb, checked in a child process: OpenCV's GUI binds one X display per process) and
slmPy (when installed); triggers none, serial (the driver against the firmware twin on a real
pty) and sim — and against the devices of a real rig when ``DMICRO_HW_RIG=path/to/rig.yaml``.

One parametrised test per (kind, backend, check): a failure names the backend and the behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dmicro_hw.config import (
    CameraDeviceConfig,
    RigConfig,
    SLMDeviceConfig,
    TriggerDeviceConfig,
    load_rig_config,
)
from dmicro_hw.drivers.base import open_device
from dmicro_hw.drivers.contract import CHECKS

RIG = os.environ.get("DMICRO_HW_RIG")


def _viky() -> Path | None:
    try:
        from dmicro_hw.drivers.gentl import bundled_producers
    except ImportError:
        return None
    return next((p for p in bundled_producers() if p.name == "viky.cti"), None)


def _slmpy_missing() -> str | None:
    from dmicro_hw.drivers.slmpy_slm import import_slmpy
    from dmicro_hw.errors import DeviceError

    try:
        import_slmpy()
    except DeviceError as e:
        return str(e).splitlines()[0]
    return None


@pytest.fixture(scope="module")
def replay_store(tmp_path_factory, make_run) -> Path:
    raw = (np.arange(6 * 8 * 8).reshape(6, 8, 8) * 37 % 4096).astype(np.uint16)
    return make_run(tmp_path_factory.mktemp("contract") / "run.zarr", raw)


@pytest.fixture(scope="module")
def firmware() -> Iterator[Any]:
    from dmicro_hw.simulators.sim_trigger import TriggerFirmware

    with TriggerFirmware() as fw:
        yield fw


def factory(kind: str, backend: str, request: pytest.FixtureRequest) -> Callable[[], Any]:
    """A factory of fresh, unopened devices of ``kind``/``backend`` (skips what is absent)."""
    if backend == "rig":
        if not RIG:
            pytest.skip("needs a real rig: set DMICRO_HW_RIG=path/to/rig.yaml")
        rig = load_rig_config(RIG)
        return lambda: open_device(kind, getattr(rig, kind), rig)
    if kind == "camera":
        if backend == "sim":
            rig = request.getfixturevalue("small_rig")()
            return lambda: open_device("camera", rig.camera, rig)
        if backend == "replay":
            store = request.getfixturevalue("replay_store")
            section = CameraDeviceConfig(
                backend="replay", replay_path=store, options={"paced": False, "loop": True}
            )
            return lambda: open_device("camera", section, RigConfig(camera=section))
        if backend == "genicam":
            viky = _viky()
            if viky is None:
                pytest.skip("genicam wheel without viky.cti")
            section = CameraDeviceConfig(
                backend="genicam", cti=viky, device="0", width=100, height=100, frame_rate_hz=200.0
            )
            return lambda: open_device("camera", section, RigConfig())
    if kind == "slm":
        if backend == "sim":
            rig = request.getfixturevalue("small_rig")()
            return lambda: open_device("slm", rig.slm, rig)
        if backend == "slmpy":
            why = _slmpy_missing()
            if why:
                pytest.skip(f"slmPy unavailable: {why}")
            section = SLMDeviceConfig(backend="slmpy", pixels=(64, 96), settle_time_s=0.0)
            return lambda: open_device("slm", section)
    if kind == "trigger":
        if backend == "none":
            return lambda: open_device("trigger", TriggerDeviceConfig(backend="none"))
        if backend == "serial":
            fw = request.getfixturevalue("firmware")
            section = TriggerDeviceConfig(backend="serial", port=fw.port, timeout_s=1.0)
            return lambda: open_device("trigger", section)
        if backend == "sim":
            rig = RigConfig.model_validate({"trigger": {"backend": "sim"}})
            return lambda: open_device("trigger", rig.trigger, rig)
    raise AssertionError(f"no factory for {kind}.{backend}")


IN_PROCESS = {
    "camera": ("sim", "replay", "genicam", "rig"),
    "slm": ("sim", "slmpy", "rig"),
    "trigger": ("none", "serial", "sim", "rig"),
}
CASES = [
    pytest.param(kind, backend, check, id=f"{kind}-{backend}-{check}")
    for kind, backends in IN_PROCESS.items()
    for backend in backends
    for check in CHECKS[kind]
]


@pytest.mark.parametrize(("kind", "backend", "check"), CASES)
def test_contract(kind: str, backend: str, check: str, request: pytest.FixtureRequest) -> None:
    CHECKS[kind][check](factory(kind, backend, request))


# ------------------------------------------------------------------ screen SLM on Xvfb (child)
SCREEN_CHILD = """
import json, sys
from dmicro_hw.config import SLMDeviceConfig
from dmicro_hw.drivers.base import open_device
from dmicro_hw.drivers.contract import run_checks

section = SLMDeviceConfig(backend="screen", pixels=(240, 320), settle_time_s=0.0,
                          display=sys.argv[1], monitor=0)
print(json.dumps(run_checks("slm", lambda: open_device("slm", section))))
"""


@pytest.fixture(scope="module")
def screen_results(start_xvfb) -> dict[str, str]:
    display = start_xvfb("-screen", "0", "640x480x24")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCREEN_CHILD), display],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", list(CHECKS["slm"]), ids=lambda c: f"slm-screen-{c}")
def test_contract_screen_slm(check: str, screen_results: dict[str, str]) -> None:
    assert screen_results[check] == "ok", screen_results[check]
