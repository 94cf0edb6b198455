"""Shared fixtures: ``small_rig`` (the shared small simulated rig); small run stores written by
the real RunWriter; ``cli`` runs the real
``dmicro`` command-line entry in-process (no interpreter and torch start-up per call; exit code,
stdout and stderr as the user sees them). Tests that must see the process itself (signals, exit
status, one line on the real stderr) still start a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw.acquisition.store import RECON_OK, RECON_SKIPPED
from dmicro_hw.acquisition.writer import RunWriter
from dmicro_hw.config import RigConfig

PHASE_PIXEL_M = 0.3164e-6  # object-plane pixel of the phase; raw is ×4 (k = 4)


#: the shared small simulated rig: a 32-sample field at ×16 (8×8 camera frames), a 96×96 SLM at
#: ≈2.4 SLM pixels per filter sample, an unpaced camera — milliseconds per frame
SMALL_RIG = {
    "optics": {"field_size": 32, "compression": 16, "focal_length_m": 0.01024},
    "slm": {"pixels": [96, 96], "settle_time_s": 0.0},
    "camera": {"options": {"paced": False}},
}


@pytest.fixture
def small_rig():
    """``small_rig(**sections)``: the shared small sim rig (:data:`SMALL_RIG`) with config
    sections replaced or updated (``slm={"pixels": [64, 64]}`` updates the slm section)."""

    def make(**sections: dict) -> RigConfig:
        data = {k: dict(v) for k, v in SMALL_RIG.items()}
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        return RigConfig.model_validate(data)

    return make


@pytest.fixture(scope="session")
def start_xvfb():
    """``start_xvfb(*args)`` → display ``":N"`` of a fresh Xvfb started with ``args`` (screens,
    ``+xinerama``; Xvfb picks the number: -displayfd); skips when Xvfb is absent or does not
    start. Every server started is stopped at the end of the session."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        if shutil.which("Xvfb") is None:
            pytest.skip("Xvfb is not installed")
        r, w = os.pipe()
        proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-nolisten", "tcp", *args],
            pass_fds=(w,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(w)
        procs.append(proc)
        with os.fdopen(r) as f:
            num = f.readline().strip()
        if not num:
            pytest.skip("Xvfb did not start")
        return f":{num}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(5)


def frame_records(ids) -> dict[str, np.ndarray]:
    """Per-frame records of frames ``ids`` (device time = id ticks, exposure 1 ms)."""
    ids = np.asarray(ids, np.int64)
    return {
        "frame_id": ids,
        "device_time": ids * 10,
        "host_time": ids + 0.5,
        "exposure_s": np.full(len(ids), 1e-3),
        "pattern_index": np.zeros(len(ids), np.int32),
    }


@pytest.fixture(scope="module")
def make_run():
    """``make_run(path, raw, phase=None, skipped=0)``: a finalized 12-bit run of ``raw``
    (t, 8, 8) uint16 frames; ``phase`` (k, 32, 32) radians decoded ok, then ``skipped`` frames
    skipped; 1 ms per frame; phase_max_rad 3."""

    def make(path: Path, raw: np.ndarray, phase: np.ndarray | None = None, skipped: int = 0):
        w = RunWriter(
            path,
            frame_shape=raw.shape[1:],
            dtype=np.uint16,
            chunk_frames=4,
            phase_size=32,
            raw_pixel_m=4 * PHASE_PIXEL_M,
            phase_pixel_m=PHASE_PIXEL_M,
            frame_interval_s=1e-3,
            attrs={"bits_per_pixel": 12, "recon": {"phase_max_rad": 3.0}},
        )
        w.append(raw.astype(np.uint16), frame_records(np.arange(len(raw))))
        if phase is not None:
            w.append_phase(phase.astype(np.float32), np.full(len(phase), RECON_OK, np.uint8))
        if skipped:
            w.append_phase(None, np.full(skipped, RECON_SKIPPED, np.uint8))
        w.finalize()
        return path

    return make


class CliResult:
    def __init__(self, rc: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = rc, stdout, stderr


@pytest.fixture
def cli(capsys):
    import torch

    from dmicro_hw.cli import _run, app

    n = torch.get_num_threads()

    def call(*args: str) -> CliResult:
        capsys.readouterr()
        rc = _run(app, [str(a) for a in args])
        out = capsys.readouterr()
        return CliResult(rc, out.out, out.err)

    yield call
    torch.set_num_threads(n)  # commands may set torch's process-wide thread count
