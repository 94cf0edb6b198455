"""The device contract: behaviours every camera, SLM and trigger backend must have.

The shape of python-microscope's ``testsuite/test_devices.py``: one list of checks per device
kind, each a function taking ``make`` — a factory that builds a fresh, *unopened* device — and
raising :class:`ContractError` (an AssertionError) naming what the backend got wrong.
``tests/drivers/test_device_contract.py`` runs every check against every backend available
(sim, replay, viky.cti, a screen SLM on Xvfb, the serial trigger on a pty) and against a real
rig when ``DMICRO_HW_RIG`` is set; a lab can run them against its own backend::

    from dmicro_hw.drivers.contract import CAMERA_CHECKS
    for check in CAMERA_CHECKS.values():
        check(lambda: MyCamera.from_config(section, rig))

Cameras are checked free-running (a triggered camera needs pulses); triggers are armed at 1 kHz
for a few pulses. Every check leaves its device closed (safe).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from dmicro_hw.drivers.base import Frame, missing_members
from dmicro_hw.drivers.pixel_formats import PIXEL_FORMATS
from dmicro_hw.errors import ConfigError, DeviceError, FrameShapeError

Make = Callable[[], Any]
Check = Callable[[Make], None]


class ContractError(AssertionError):
    """A backend breaks the device contract."""


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise ContractError(what)


def _raises(exc: type[BaseException], fn: Callable[[], Any], what: str) -> None:
    try:
        fn()
    except exc:
        return
    except Exception as e:  # noqa: BLE001 - reported as the contract breach it is
        raise ContractError(f"{what}: raised {type(e).__name__}: {e}, not {exc.__name__}") from e
    raise ContractError(f"{what}: did not raise {exc.__name__}")


# --------------------------------------------------------------------------------- cameras
def camera_conforms(make: Make) -> None:
    """Implements every member of the Camera protocol."""
    cam = make()
    try:
        _expect(missing_members(cam, "camera") == [], f"missing {missing_members(cam, 'camera')}")
    finally:
        cam.close()


def camera_close_is_idempotent(make: Make) -> None:
    """close() without open, twice, and after ``with`` never raises."""
    cam = make()
    cam.close()
    cam.close()
    with make() as cam:
        _expect(cam is not None, "__enter__ returned None")
    cam.close()
    cam.close()


def camera_frames(make: Make) -> None:
    """frames(n) yields n Frame records: 2-D uint8/uint16 data within the pixel format's bits,
    increasing frame ids, host time, a known pixel format."""
    with make() as cam:
        frames = list(cam.frames(max_frames=3))
        cam.stop()
    _expect(len(frames) == 3, f"frames(3) gave {len(frames)} frames")
    ids = [f.frame_id for f in frames]
    _expect(all(isinstance(f, Frame) for f in frames), "frames() must yield Frame records")
    _expect(ids == sorted(ids) and len(set(ids)) == 3, f"frame ids not increasing: {ids}")
    for f in frames:
        fmt = PIXEL_FORMATS.get(f.pixel_format)
        _expect(fmt is not None, f"unknown pixel format {f.pixel_format!r}")
        _expect(f.data.ndim == 2, f"frame data must be (H, W), got {f.data.shape}")
        _expect(f.data.dtype == fmt.dtype, f"{f.pixel_format} data as {f.data.dtype}")
        _expect(int(f.data.max()) < 2**fmt.bits, f"values above {fmt.bits} bits")
        _expect(f.host_time > 0, "host_time not set")


def camera_stop_and_restart(make: Make) -> None:
    """stop() is idempotent, and streaming starts again after it."""
    with make() as cam:
        first = list(cam.frames(max_frames=2))
        cam.stop()
        cam.stop()
        again = list(cam.frames(max_frames=2))
        cam.stop()
    _expect(len(first) == 2 and len(again) == 2, "no frames after stop(); frames()")


def camera_trigger_mode(make: Make) -> None:
    """set_trigger_mode: an unknown mode is a ConfigError, a change while streaming a
    DeviceError, free-run is accepted before start()."""
    with make() as cam:
        _raises(ConfigError, lambda: cam.set_trigger_mode("sometimes"), "unknown trigger mode")
        cam.set_trigger_mode("free-run")
        cam.start()
        _raises(DeviceError, lambda: cam.set_trigger_mode("free-run"), "mode change streaming")
        cam.stop()
        cam.set_trigger_mode("free-run")


def camera_info(make: Make) -> None:
    """info() is a JSON-serialisable dict naming the backend (run metadata)."""
    with make() as cam:
        info = cam.info()
    _expect(isinstance(info, dict) and isinstance(info.get("backend"), str), f"info: {info}")
    json.dumps(info, default=str)


CAMERA_CHECKS: dict[str, Check] = {
    "conforms": camera_conforms,
    "close_is_idempotent": camera_close_is_idempotent,
    "frames": camera_frames,
    "stop_and_restart": camera_stop_and_restart,
    "trigger_mode": camera_trigger_mode,
    "info": camera_info,
}


# --------------------------------------------------------------------------------- SLMs
def _grey_dtype(slm: Any) -> type:
    return np.uint8 if slm.bit_depth <= 8 else np.uint16


def slm_conforms(make: Make) -> None:
    """Implements every member of the SLM protocol, with sane shape/pitch/bits/settle."""
    slm = make()
    try:
        _expect(missing_members(slm, "slm") == [], f"missing {missing_members(slm, 'slm')}")
        _expect(len(slm.shape) == 2 and all(int(v) > 0 for v in slm.shape), f"{slm.shape}")
        _expect(1 <= int(slm.bit_depth) <= 16, f"bit_depth {slm.bit_depth}")
        _expect(float(slm.pitch_m) > 0, f"pitch_m {slm.pitch_m}")
        _expect(float(slm.settle_time_s) >= 0, f"settle_time_s {slm.settle_time_s}")
    finally:
        slm.close()


def slm_show_and_pattern_id(make: Make) -> None:
    """After open the SLM is blank; show(radians | grey levels, id) records the id; blank()
    records "blank"."""
    with make() as slm:
        _expect(slm.pattern_id == "blank", f"pattern_id after open: {slm.pattern_id!r}")
        rows, cols = slm.shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        slm.show(np.mod(2 * math.pi * (xx + yy) / 16.0, 2 * math.pi), "ramp")
        _expect(slm.pattern_id == "ramp", f"pattern_id after show: {slm.pattern_id!r}")
        slm.show(np.full(slm.shape, 1, _grey_dtype(slm)), "grey")
        _expect(slm.pattern_id == "grey", f"pattern_id after grey show: {slm.pattern_id!r}")
        slm.blank()
        _expect(slm.pattern_id == "blank", f"pattern_id after blank: {slm.pattern_id!r}")


def slm_refuses_bad_patterns(make: Make) -> None:
    """A pattern of the wrong shape or with NaN phase is a FrameShapeError (nothing shown)."""
    with make() as slm:
        _raises(FrameShapeError, lambda: slm.show(np.zeros((3, 5))), "wrong shape")
        bad = np.zeros(slm.shape)
        bad[0, 0] = np.nan
        _raises(FrameShapeError, lambda: slm.show(bad), "NaN phase")
        _expect(slm.pattern_id == "blank", "a refused pattern changed pattern_id")


def slm_close(make: Make) -> None:
    """close() blanks, is idempotent; show() after close() is a DeviceError."""
    slm = make()
    slm.close()
    slm = make()
    slm.open()
    slm.show(np.zeros(slm.shape), "z")
    slm.close()
    _expect(slm.pattern_id == "blank", f"pattern_id after close: {slm.pattern_id!r}")
    slm.close()
    _raises(DeviceError, lambda: slm.show(np.zeros(slm.shape)), "show() after close()")


def slm_info(make: Make) -> None:
    """info() is a JSON-serialisable dict naming the backend and the pattern shown."""
    with make() as slm:
        info = slm.info()
        _expect(isinstance(info.get("backend"), str), f"info: {info}")
        _expect(info.get("pattern_id") == slm.pattern_id, f"info pattern_id: {info}")
    json.dumps(info, default=str)


SLM_CHECKS: dict[str, Check] = {
    "conforms": slm_conforms,
    "show_and_pattern_id": slm_show_and_pattern_id,
    "refuses_bad_patterns": slm_refuses_bad_patterns,
    "close": slm_close,
    "info": slm_info,
}


# --------------------------------------------------------------------------------- triggers
def trigger_conforms(make: Make) -> None:
    """Implements every member of the Trigger protocol."""
    trig = make()
    try:
        _expect(
            missing_members(trig, "trigger") == [], f"missing {missing_members(trig, 'trigger')}"
        )
    finally:
        trig.close()


def trigger_arm_fire_disarm(make: Make) -> None:
    """arm → status armed; fire; disarm → status not armed; status reports armed/fired/remaining
    as bool/int."""
    with make() as trig:
        trig.arm(1000.0, 3)
        st = trig.status()
        _expect({"armed", "fired", "remaining"} <= set(st), f"status lacks counters: {st}")
        _expect(isinstance(st["armed"], bool) and isinstance(st["fired"], int), f"types: {st}")
        trig.fire()
        trig.disarm()
        st = trig.status()
        _expect(st["armed"] is False, f"still armed after disarm: {st}")
        _raises(DeviceError, lambda: trig.arm(-1.0, 3), "arm with a negative rate")


def trigger_close_is_idempotent(make: Make) -> None:
    """close() without open, twice, and after ``with`` never raises."""
    trig = make()
    trig.close()
    trig.close()
    with make() as trig:
        _expect(trig is not None, "__enter__ returned None")
    trig.close()


TRIGGER_CHECKS: dict[str, Check] = {
    "conforms": trigger_conforms,
    "arm_fire_disarm": trigger_arm_fire_disarm,
    "close_is_idempotent": trigger_close_is_idempotent,
}

CHECKS: dict[str, dict[str, Check]] = {
    "camera": CAMERA_CHECKS,
    "slm": SLM_CHECKS,
    "trigger": TRIGGER_CHECKS,
}


def run_checks(kind: str, make: Make) -> dict[str, str]:
    """Run every check of ``kind`` against ``make``; {check name: "ok" or the breach}."""
    out: dict[str, str] = {}
    for name, check in CHECKS[kind].items():
        try:
            check(make)
            out[name] = "ok"
        except Exception as e:  # noqa: BLE001 - every breach is reported, none hides the rest
            out[name] = f"{type(e).__name__}: {e}"
    return out
