"""The CI slice of the soak test (``scripts/soak.sh`` runs it for 10 min): ~20 s of simulated-rig
runs with random device faults in one process — zero delivered frames lost, every store verified,
memory and threads flat after the warm-up runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_slice(tmp_path):
    out = tmp_path / "soak.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "soak.py"),
            "--seconds",
            "10",
            "--run-seconds",
            "2",
            "--no-recon",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(ROOT),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads(out.read_text())
    assert s["ok"] and s["runs"] >= 4 and s["delivered_lost"] == 0
    assert s["frames_written"] == s["frames_received"] > 1000
    assert s["camera_dropped"] > 0  # faults were injected and counted
