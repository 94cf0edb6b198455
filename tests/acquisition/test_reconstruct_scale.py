"""Offline reconstruction at scale: batches across Zarr chunks with read-ahead/write-behind,
resumable; and the same over Dask distributed with a LocalCluster of two worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw.acquisition.offline import reconstruct_store, reconstructor_for_run
from dmicro_hw.acquisition.store import RECON_OK, RunReader
from tests.acquisition.test_acquisition_cli import assets, env, rig_for  # noqa: F401 - the shared fixture

N = 96  # 12 chunks of 8 frames


def _acquire(assets: Path, tmp: Path) -> Path:  # noqa: F811
    from dmicro_hw.cli import _run, app

    rig = rig_for(assets, tmp)
    out = tmp / "run"
    args = ["acquire", "--config", str(rig), "-n", str(N), "--no-recon", "--out", str(out)]
    assert _run(app, args) == 0
    return out / "run.zarr"


def _interrupt(store: Path, at: int, skipped: int) -> None:
    """As a crash would leave it: phase committed up to ``at`` only, and one frame before it
    skipped (decoder behind) — those must be decoded again, nothing else."""
    r = RunReader(store, mode="r+")
    r.group["phase_committed"][0] = at
    st = r.group["recon_status"]
    st[skipped] = 2


def test_offline_batches_across_chunks_and_resumes(assets, tmp_path):  # noqa: F811
    store = _acquire(assets, tmp_path)
    recon = reconstructor_for_run(RunReader(store), batch=32)
    sizes: list[int] = []
    decode = recon.decode

    def spy(raw):
        sizes.append(len(raw))
        return decode(raw)

    recon.decode = spy
    res = reconstruct_store(store, recon, batch=32)
    # 12 chunks of 8 frames reach the decoder as 3 batches of 32
    assert sizes == [32, 32, 32]
    assert res["decoded"] == N and res["chunks"] == 12 and res["already_ok"] == 0
    assert res["fps"] > 0 and 0 < res["fps_vs_decoder"] <= 1.0
    r = RunReader(store)
    assert r.phase_committed == N and (r.recon_status() == RECON_OK).all()
    full, chi2 = r.phase(), r.consistency()
    assert np.isfinite(full).all() and np.isfinite(chi2).all()
    assert res["consistency"]["checked"] == N
    # the same frames one chunk at a time give the same phase and χ²/dof
    res8 = reconstruct_store(store, batch=8, force=True)
    assert res8["decoded"] == N
    np.testing.assert_allclose(RunReader(store).phase(), full, atol=1e-5)
    np.testing.assert_allclose(RunReader(store).consistency(), chi2, rtol=1e-4)

    _interrupt(store, at=40, skipped=21)
    sizes.clear()
    res = reconstruct_store(store, recon, batch=32)
    assert res["decoded"] == (N - 40) + 1 and res["already_ok"] == 40 - 1
    assert sum(sizes) == res["decoded"]
    r = RunReader(store)
    assert r.phase_committed == N and (r.recon_status() == RECON_OK).all()
    np.testing.assert_allclose(r.phase(), full, atol=1e-5)
    np.testing.assert_allclose(r.consistency(), chi2, rtol=1e-4)


def test_dask_distributed_two_local_worker_processes_resume(assets, tmp_path):  # noqa: F811
    pytest.importorskip("distributed")
    store = _acquire(assets, tmp_path)
    reconstruct_store(store, batch=16)
    ref, ref_chi2 = RunReader(store).phase(), RunReader(store).consistency()
    _interrupt(store, at=48, skipped=5)
    cmd = [
        str(Path(sys.executable).with_name("dmicro")),
        "reconstruct",
        str(store.parent),
        "--scheduler",
        "local:2",
        "--batch",
        "8",
        "--no-score",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads((store.parent / "reconstruct.json").read_text())
    assert rep["workers"] == 2 and rep["scheduler"] == "local:2"
    assert rep["worker_processes_used"] == 2  # both processes decoded chunks
    assert rep["decoded"] == (N - 48) + 1 and rep["already_ok"] == 48 - 1
    r = RunReader(store)
    assert r.phase_committed == N and (r.recon_status() == RECON_OK).all()
    np.testing.assert_allclose(r.phase(), ref, atol=1e-5)
    np.testing.assert_allclose(r.consistency(), ref_chi2, rtol=1e-4)


def test_scheduler_option_errors_are_one_line(tmp_path):
    from dmicro_hw.acquisition.distributed import parse_scheduler
    from dmicro_hw.errors import ConfigError

    assert parse_scheduler("local") == ("local", None)
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "bogus"):
        with pytest.raises(ConfigError, match="--scheduler"):
            parse_scheduler(bad)
