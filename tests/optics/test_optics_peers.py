"""``dmicro bench optics --peers VENV``: the peer runner in another interpreter, on the same input.

The test points --peers at this very environment (the project's peers are never installed here),
so the runner's protocol, the floor timing and our own accuracy row are exercised for real while
every peer reports itself as not installed (or runs, where someone has installed it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw.errors import ConfigError
from dmicro_hw.evaluation.optics_bench import PEER_RUNNER, peer_field, peer_python

PEERS = {"odak", "svetlanna", "torchoptics", "hcipy", "prysm", "diffractsim"}


def test_peer_field_is_a_smooth_compact_phase_object():
    u = peer_field(64)
    assert u.shape == (64, 64) and u.dtype == np.complex128
    assert np.abs(u).max() <= 1 + 1e-12 and np.abs(u[0, 0]) < 1e-6  # aperture edge is dark
    spec = np.abs(np.fft.fft2(u)) ** 2
    f = np.abs(np.fft.fftfreq(64))
    high = spec[np.ix_(f > 0.35, f > 0.35)].sum() / spec.sum()
    assert high < 1e-6  # nothing near Nyquist, where conventions legitimately differ


def test_peer_python_needs_a_venv(tmp_path):
    assert peer_python(Path(sys.prefix)).exists()
    with pytest.raises(ConfigError, match="install-optics-peers.sh"):
        peer_python(tmp_path)
    assert PEER_RUNNER.is_file() and "dmicro_hw" not in PEER_RUNNER.read_text().split('"""')[2]


def test_bench_optics_with_peers_cli(tmp_path, cli):
    out = tmp_path / "o.json"
    res = cli("bench", "optics", "--sizes", "32", "--rounds", "1", "--peers", sys.prefix, "-o", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "peers: padded angular spectrum" in res.stdout
    doc = json.loads(out.read_text())
    rows = {r["case"].split()[1] if r["case"].startswith("peer:") else r["case"]: r
            for r in doc["peers"]}  # fmt: skip
    ours = rows["dmicro_hw"] if "dmicro_hw" in rows else rows[next(k for k in rows if "ours" in k)]
    assert ours["rel_error"] < 1e-5 and ours["x_ours"] == 1.0 and ours["x_floor"] > 0
    assert PEERS <= set(rows)
    for name in PEERS:
        r = rows[name]
        assert r["status"].startswith(("not installed", "ok", "failed", "non-finite"))
        if r["status"] == "ok":
            assert r["ms"] > 0 and r["x_floor"] > 0 and r["rel_error"] is not None
    assert doc["meta"]["peers_venv"] == sys.prefix and doc["meta"]["load"]["cpus"] >= 1
    bad = cli("bench", "optics", "--sizes", "32", "--peers", tmp_path, "-o", out)
    assert bad.returncode != 0 and "not a virtual environment" in bad.stdout + bad.stderr
