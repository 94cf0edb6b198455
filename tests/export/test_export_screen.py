"""Round trip on a real X server: an exported pattern shown by the screen SLM on the second screen
of an Xvfb is read back from a screenshot identical to the pattern file (8-bit grey and 10-bit
RGB-packed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dmicro_hw.config import RigConfig
from dmicro_hw.export import export_filter, write_pattern
from dmicro_hw.optics.fourier4f import pupil_mask

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")


@pytest.fixture(scope="module")
def xvfb_two_screens():
    """Xvfb with screens :N.0 (1024×768) and :N.1 (640×480, the SLM); Xvfb picks N."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-nolisten", "tcp",
         "-screen", "0", "1024x768x24", "-screen", "1", "640x480x24"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    with os.fdopen(r) as f:
        num = f.readline().strip()
    if not num:
        proc.kill()
        pytest.skip("Xvfb did not start")
    yield f":{num}"
    proc.terminate()
    proc.wait(5)


def rig_yaml(bits: int, display: str) -> dict:
    return {
        "rig_id": "screen-rig",
        "optics": {"field_size": 32, "compression": 16, "focal_length_m": 0.02},
        "slm": {
            "backend": "screen",
            "pixels": [120, 150],
            "pitch_m": 8e-6,
            "bit_depth": bits,
            "mode": "amplitude_phase",
            "display": display,
            "monitor": 1,
            "settle_time_s": 0.05,
            # a loaded CI machine may need more than the default 2 s for the first window
            "options": {"placement_timeout_s": 15.0},
        },
    }


CHILD = """
import json, sys
import numpy as np
from PIL import ImageGrab
from dmicro_hw.config import RigConfig
from dmicro_hw.drivers.base import open_device
from dmicro_hw.export import load_pattern

out = {}
for name, (rig_data, folder) in json.loads(sys.argv[1]).items():
    rig = RigConfig.model_validate(rig_data)
    pat = load_pattern(folder, rig)  # hashes and rig checked
    with open_device("slm", rig.slm, rig) as slm:
        slm.show(pat.grey, pattern_id=pat.pattern_id)
        x, y, w, h = slm.rect
        shot = np.asarray(ImageGrab.grab(xdisplay=rig.slm.display + ".1").convert("RGB"))
        np.save(folder + "/shot.npy", shot[y : y + h, x : x + w])
        out[name] = {"rect": list(slm.rect), "pattern_id": slm.pattern_id}
print(json.dumps(out))
"""


def test_exported_pattern_on_the_screen_slm_reads_back_identical(xvfb_two_screens, tmp_path):
    g = torch.Generator().manual_seed(3)
    h = torch.polar(torch.rand(32, 32, generator=g), 3 * torch.randn(32, 32, generator=g))
    h = h * pupil_mask(32)
    jobs = {}
    for bits in (8, 10):
        data = rig_yaml(bits, xvfb_two_screens)
        grey, _, meta = export_filter(h, RigConfig.model_validate(data))
        folder = tmp_path / f"p{bits}"
        write_pattern(folder, grey, meta)
        jobs[f"b{bits}"] = (data, str(folder))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["QT_QPA_PLATFORM"] = "xcb"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), json.dumps(jobs)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for bits in (8, 10):
        folder = tmp_path / f"p{bits}"
        shot = np.load(folder / "shot.npy").astype(np.int64)
        want = np.load(folder / "pattern.npy")
        assert res[f"b{bits}"]["rect"][2:] == [150, 120]
        side = json.loads((folder / "pattern.json").read_text())
        assert res[f"b{bits}"]["pattern_id"] == side["sha256"]["pattern"][:16]
        if bits == 8:  # grey: R = G = B = level
            assert (shot == shot[..., :1]).all()
            got = shot[..., 0]
        else:  # > 8 bits: red = high byte, green = low byte (the screen SLM's rgb packing)
            got = shot[..., 0] * 256 + shot[..., 1]
        assert got.shape == want.shape
        assert np.array_equal(got, want.astype(np.int64)), f"{bits}-bit pattern differs on screen"
        assert len(np.unique(want)) > 2 ** (bits - 2)  # a real pattern, not a flat one
