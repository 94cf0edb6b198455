"""Screen SLM against real X servers (Xvfb with two screens; Xvfb with Xinerama): a known pattern is
shown and a screenshot of the target screen is compared with it pixel for pixel.

OpenCV's GUI (Qt) binds to one X display for the life of a process and dies with that X server, so
everything that opens a window runs in a child Python process; checks that fail before any window
is created run in the test process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dmicro_hw.config import SLMDeviceConfig
from dmicro_hw.drivers.base import open_device
from dmicro_hw.drivers.screen_slm import ScreenSLM, x_display_info
from dmicro_hw.drivers.slm_pixels import from_display_rgb, phase_to_grey, to_display, to_grey
from dmicro_hw.errors import ConfigError, DeviceError, FrameShapeError
from dmicro_hw.export import inverse_lut, quantise, wrap_phase

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")


@pytest.fixture(scope="module")
def two_screens(start_xvfb):
    return start_xvfb("-screen", "0", "1920x1080x24", "-screen", "1", "1280x1024x24")


@pytest.fixture(scope="module")
def xinerama(start_xvfb):
    return start_xvfb("+xinerama", "-screen", "0", "1920x1080x24", "-screen", "1", "1280x1024x24")


def run_child(code: str, env_display: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    if env_display:
        env["DISPLAY"] = env_display
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHILD_PRELUDE = """
import json, math, sys, time
import numpy as np
from dmicro_hw.config import SLMDeviceConfig
from dmicro_hw.drivers.base import open_device
from dmicro_hw.drivers.x11 import grab as grab_x
from dmicro_hw.errors import DeviceError
out = {}
def grab(disp):  # PIL ImageGrab of the whole screen, retried on a failed X connection
    return np.asarray(grab_x(None, disp).convert("RGB"))
"""


def test_pattern_on_screen_1_pixel_for_pixel(two_screens: str, tmp_path) -> None:
    disp = two_screens
    shot_path = tmp_path / "shot.npy"
    res = run_child(
        CHILD_PRELUDE
        + f"""
disp = {disp!r}
rows, cols = 1024, 1280
yy, xx = np.mgrid[0:rows, 0:cols]
phase = (2 * math.pi * (xx / 97.0 + yy / 61.0)) + np.where((xx // 8 + yy // 8) % 2, 1.0, 0.0)
cfg = SLMDeviceConfig(backend="screen", pixels=(rows, cols), bit_depth=8, display=disp,
                      monitor=1, settle_time_s=0.02)
slm = open_device("slm", cfg)
with slm:
    out["rect"] = slm.rect
    out["blank_ok"] = bool((grab(disp + ".1") == 0).all())
    slm.show(phase, pattern_id="p1")
    shot = grab(disp + ".1")
    np.save({str(shot_path)!r}, shot[..., 0])
    out["rgb_equal"] = bool((shot == shot[..., :1]).all())
    out["pattern_id"] = slm.pattern_id
    out["screen0_untouched"] = bool((grab(disp + ".0") == 0).all())
    # display latency: show() with no settle time returns once a screenshot shows the pattern
    slm.settle_time_s = 0.0
    lat, conf = [], []
    for k in range(8):
        pat = np.full((rows, cols), (k * 37 + 11) % 256, np.uint8)
        t0 = time.perf_counter()
        slm.show(pat)
        lat.append(time.perf_counter() - t0)
        conf.append(slm.last_confirm_s)
        out.setdefault("after_show_ok", []).append(bool((grab(disp + ".1")[..., 0] == pat).all()))
    out["latency_ms"] = sorted(round(1e3 * t, 1) for t in lat)
out["closed_blank"] = bool((grab(disp + ".1") == 0).all())
print(json.dumps(out))
""",
    )
    assert res["rect"] == [0, 0, 1280, 1024]
    assert res["blank_ok"] and res["closed_blank"]
    assert res["rgb_equal"] and res["screen0_untouched"]
    assert res["pattern_id"] == "p1"
    assert all(res["after_show_ok"])
    # the expected grey levels, computed independently: linear 8-bit, 2π ↦ 256 ≡ 0
    yy, xx = np.mgrid[0:1024, 0:1280]
    phase = (2 * math.pi * (xx / 97.0 + yy / 61.0)) + np.where((xx // 8 + yy // 8) % 2, 1.0, 0.0)
    expected = (np.rint(np.mod(phase, 2 * math.pi) / (2 * math.pi) * 256) % 256).astype(np.uint8)
    shot = np.load(shot_path, allow_pickle=False)
    assert shot.shape == expected.shape
    assert np.count_nonzero(shot != expected) == 0
    print(f"\nscreen SLM display latency (Xvfb, ms, sorted): {res['latency_ms']}")


def test_high_bit_depth_packing_and_placement(two_screens: str) -> None:
    disp = two_screens
    res = run_child(
        CHILD_PRELUDE
        + f"""
disp = {disp!r}
rng = np.random.default_rng(7)
grey = rng.integers(0, 1024, size=(300, 400)).astype(np.uint16)
cfg = SLMDeviceConfig(backend="screen", pixels=(300, 400), bit_depth=10, display=disp + ".1",
                      settle_time_s=0.0, options={{"position": [100, 50], "verify": "screenshot"}})
with open_device("slm", cfg) as slm:
    slm.show(grey)
    shot = grab(disp + ".1")
    win = shot[50:350, 100:500]
    out["rgb_ok"] = bool((((win[..., 0].astype(np.uint16) << 8) | win[..., 1]) == grey).all())
    out["blue_zero"] = bool((win[..., 2] == 0).all())
    out["outside_black"] = bool((shot[:50] == 0).all() and (shot[:, :100] == 0).all())
    out["decoded_ok"] = bool((slm.shown_grey() == grey).all())
cfg = SLMDeviceConfig(backend="screen", pixels=(300, 400), bit_depth=10, display=disp + ".1",
                      settle_time_s=0.0, options={{"high_bit_mode": "top8", "window_name": "t8"}})
with open_device("slm", cfg) as slm:
    slm.show(grey)
    win = grab(disp + ".1")[:300, :400]
    out["top8_ok"] = bool((win[..., 0] == (grey >> 2)).all() and (win[..., 1] == win[..., 0]).all())
# a full-screen request without a window manager lands somewhere else: must be refused
cfg = SLMDeviceConfig(backend="screen", pixels=(1024, 1280), display=disp, monitor=1,
                      options={{"fullscreen": True, "placement_timeout_s": 0.5}})
try:
    open_device("slm", cfg).open()
    out["fullscreen_error"] = None
except DeviceError as e:
    out["fullscreen_error"] = str(e)
print(json.dumps(out))
""",
    )
    assert res["rgb_ok"] and res["blue_zero"] and res["outside_black"] and res["decoded_ok"]
    assert res["top8_ok"]
    err = res["fullscreen_error"]
    assert err is not None and "not pixel-exact" in err and "1280x1024" in err


def test_monitor_selection_with_xinerama(xinerama: str) -> None:
    # Xvfb stacks its Xinerama heads at (0, 0) (it cannot place screens side by side), so this
    # checks that the *monitor's* size is used and that the window lands on it; a non-zero monitor
    # origin (a real side-by-side desktop) takes the same code path with other numbers.
    info = x_display_info(xinerama)
    assert info is not None and info["monitors"] == [(0, 0, 1920, 1080), (0, 0, 1280, 1024)]
    res = run_child(
        CHILD_PRELUDE
        + """
import os
disp = os.environ["DISPLAY"]
grey = (np.arange(1024 * 1280) % 251).astype(np.uint8).reshape(1024, 1280)
cfg = SLMDeviceConfig(backend="screen", pixels=(1024, 1280), monitor=1, settle_time_s=0.02)
with open_device("slm", cfg) as slm:
    slm.show(grey)
    shot = grab(disp)
    out["rect"] = slm.rect
    out["shown"] = bool((shot[:1024, :1280, 0] == grey).all())
    out["rest_black"] = bool((shot[:, 1280:] == 0).all() and (shot[1024:] == 0).all())
print(json.dumps(out))
""",
        env_display=xinerama,
    )
    assert res["rect"] == [0, 0, 1280, 1024]
    assert res["shown"] and res["rest_black"]


def test_monitor_size_is_checked_with_xinerama(
    xinerama: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", xinerama)
    with pytest.raises(DeviceError, match=r"does not fit .* \(1280x1024\)"):
        open_device("slm", SLMDeviceConfig(backend="screen", pixels=(1080, 1920), monitor=1)).open()
    with pytest.raises(DeviceError, match=r"slm.monitor 2: .* 2 monitor\(s\) \(0: 1920x1080\+0\+0"):
        open_device("slm", SLMDeviceConfig(backend="screen", pixels=(100, 100), monitor=2)).open()


def test_refusals_before_any_window(two_screens: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # these fail before OpenCV's GUI starts, so they are safe in the test process
    def cfg(**kw):
        return SLMDeviceConfig(backend="screen", **kw)

    with pytest.raises(DeviceError, match="does not fit"):
        open_device(
            "slm", cfg(pixels=(600, 800), display=two_screens, options={"position": [1000, 0]})
        ).open()
    with pytest.raises(
        DeviceError, match=r"slm.monitor 5: .* 2 screen\(s\) \(0: 1920x1080, 1: 1280x1024"
    ):
        open_device("slm", cfg(pixels=(600, 800), display=two_screens, monitor=5)).open()
    with pytest.raises(DeviceError, match="cannot open the X display"):
        open_device("slm", cfg(pixels=(600, 800), display=":987")).open()
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DeviceError, match="no X display"):
        open_device("slm", cfg(pixels=(600, 800))).open()
    with pytest.raises(ConfigError, match="slm.options"):
        open_device("slm", cfg(options={"positon": [0, 0]}))
    with pytest.raises(ConfigError, match="high_bit_mode"):
        ScreenSLM((4, 4), high_bit_mode="blue")


# ------------------------------------------------------------------------ pixel mapping (no X)


def test_phase_to_grey_linear_and_lut() -> None:
    phi = np.array([0.0, math.pi, 2 * math.pi - 1e-9, -math.pi / 2, 4 * math.pi + 0.1])
    g = phase_to_grey(phi, 8)
    assert g.dtype == np.uint8
    assert list(g) == [0, 128, 0, 192, round(0.1 / (2 * math.pi) * 256)]
    # a measured LUT (nonlinear, > 2π full scale): the export's steps (wrap, invert the LUT
    # between levels, round), so a driver shows what the export computed for training
    levels = np.arange(256)
    lut = 2.4 * math.pi * (levels / 256) ** 1.3
    dense = np.linspace(-7, 13, 20001)
    g = phase_to_grey(dense, 8, lut=lut)
    wrapped = np.mod(dense, 2 * math.pi)
    err = np.abs(np.angle(np.exp(1j * (lut[g] - wrapped))))
    assert err.max() <= np.diff(lut).max() / 2 + 1e-9  # within half a level of the target
    t = torch.from_numpy(lut)
    ref = quantise(inverse_lut(wrap_phase(torch.from_numpy(dense)), t), 8, ste=False)
    assert (g == ref.numpy()).all()
    # the LUT is taken relative to grey 0 (a global phase), as in the export
    assert (phase_to_grey(dense, 8, lut=lut + 0.3) == g).all()
    g16 = phase_to_grey(np.array([math.pi]), 12)
    assert g16.dtype == np.uint16 and g16[0] == 2048


def test_to_grey_validation_and_display_roundtrip() -> None:
    with pytest.raises(FrameShapeError, match=r"shape \(3, 3\).*\(4, 4\)"):
        to_grey(np.zeros((3, 3)), (4, 4), 8)
    with pytest.raises(FrameShapeError, match="does not fit"):
        to_grey(np.full((4, 4), 1024, np.uint16), (4, 4), 10)
    with pytest.raises(FrameShapeError, match="NaN"):
        to_grey(np.full((4, 4), np.nan), (4, 4), 8)
    with pytest.raises(FrameShapeError, match="dtype int64"):
        to_grey(np.zeros((4, 4), np.int64), (4, 4), 8)
    grey = np.random.default_rng(0).integers(0, 4096, size=(5, 6)).astype(np.uint16)
    bgr = to_display(grey, 12, "rgb")
    assert (from_display_rgb(bgr[..., ::-1], 12, "rgb") == grey).all()
