"""Store integrity corpus (issue 12): a real run recorded by the CLI, then damaged on disk the way
disks and people damage files. Every reader must refuse or mark the damaged frames — never decode
fill values or altered bytes as ok — and ``dmicro verify`` must name them.

Cases: flipped bytes in a raw chunk, a deleted raw chunk, a truncated chunk, a deleted frame_id
chunk, a removed frame_id array, committed = -5, damaged raw/zarr.json, a decoder that outputs NaN.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw.acquisition.integrity import chunk_path
from dmicro_hw.acquisition.store import RECON_DAMAGED, RECON_ERROR, RECON_OK, RunReader
from dmicro_hw.errors import DataError
from tests.acquisition.test_acquisition_cli import acquire_cmd, assets, env, rig_for  # noqa: F401 - fixture

CHUNK = 8  # chunk_frames of the test rig


def dmicro(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (exit code and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-c", "from dmicro_hw.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def recorded(assets, tmp_path_factory):  # noqa: F811 - pytest fixture injection
    """One 48-frame run of the test rig, recorded by the real CLI (decoded live)."""
    d = tmp_path_factory.mktemp("recorded")
    rig = rig_for(assets, d)
    out = d / "run"
    p = subprocess.run(
        acquire_cmd("--config", str(rig), "--frames", "48", "--out", str(out)),
        capture_output=True,
        text=True,
        env=env(),
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return out


@pytest.fixture
def run(recorded, tmp_path):
    """A private copy of the recorded run to damage."""
    dst = tmp_path / "run"
    shutil.copytree(recorded, dst)
    return dst


def chunk_file(run: Path, name: str, index: int) -> Path:
    r = RunReader(run)
    return chunk_path(r.path, r.array(name), index)


def test_intact_run_verifies_and_carries_checksums(run, cli):
    p = cli("verify", str(run))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "48 frames intact" in p.stdout and "crc32c" in p.stdout
    meta = json.loads((run / "run.zarr" / "raw" / "0" / "zarr.json").read_text())
    assert meta["codecs"][-1]["name"] == "crc32c"
    rec = RunReader(run).records()
    assert (rec["saturated_px"] >= 0).all()


def test_flipped_bytes_are_named_by_verify_and_never_decoded_as_ok(run, cli):
    f = chunk_file(run, "raw", 1)
    b = bytearray(f.read_bytes())
    for i in range(10, min(len(b) - 4, 110)):
        b[i] ^= 0xFF
    f.write_bytes(bytes(b))
    p = dmicro("verify", str(run))
    assert p.returncode == 5
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "8 damaged frames: 8-15" in err and "checksum mismatch" in err
    with pytest.raises(DataError, match="frames 8-15 damaged"):
        RunReader(run).raw_frames()
    # reconstruct decodes the intact frames and marks the damaged ones, then says so; a phase
    # decoded live (before the damage) is kept: frames 16-23 were ok, 8-15 were skipped live
    import zarr

    zarr.open_array(str(run / "run.zarr" / "recon_status"), mode="r+")[8:16] = 2
    f2 = chunk_file(run, "raw", 2)
    f2.write_bytes(f2.read_bytes()[:-1] + b"x")
    p = cli("reconstruct", str(run), "--force", "--no-score")
    assert p.returncode == 5, p.stdout + p.stderr
    msg = " ".join(p.stderr.split())
    assert "16 frames with damaged raw data (8-23" in msg and "marked recon_status 4" in msg
    assert "8 keep the phase decoded before the damage" in msg
    r = RunReader(run)
    st = r.recon_status()
    assert (st[8:16] == RECON_DAMAGED).all() and (st[16:24] == RECON_OK).all()
    assert (np.delete(st, np.s_[8:16]) == RECON_OK).all()
    ph = np.asarray(r.phase_array[:48])
    assert np.isnan(ph[8:16]).all() and np.isfinite(np.delete(ph, np.s_[8:16], 0)).all()


def test_deleted_chunk_is_missing_not_zero_frames(run, cli):
    chunk_file(run, "raw", 2).unlink()
    rep = json.loads(cli("verify", str(run), "--json").stdout)
    assert not rep["ok"] and rep["damaged_frame_indices"] == "16-23"
    assert rep["damage"]["16"] == "raw chunk 2: missing"
    assert rep["damaged_frame_ids"] == list(RunReader(run).records()["frame_id"][16:24])


def test_truncated_chunk_in_reconstruct_is_one_line(run, cli):
    f = chunk_file(run, "raw", 0)
    f.write_bytes(f.read_bytes()[:7])
    p = cli("reconstruct", str(run), "--no-score", "--force")
    assert p.returncode == 5 and "Traceback" not in p.stderr
    assert "0-7" in p.stderr


def test_replay_camera_skips_damaged_frames(run, tmp_path):
    from dmicro_hw.config import CameraDeviceConfig
    from dmicro_hw.simulators.replay_camera import ReplayCamera

    chunk_file(run, "raw", 1).write_bytes(b"garbage")
    cam = ReplayCamera.from_config(
        CameraDeviceConfig(backend="replay", replay_path=run, options={"paced": False})
    )
    with cam:
        ids = [f.frame_id for f in cam.frames()]
        info = cam.info()
    want = RunReader(run).records_checked()[0]["frame_id"]
    assert ids == [int(x) for i, x in enumerate(want) if not 8 <= i < 16]
    assert info["lost_damaged"] == 8


def test_view_leaves_damaged_frames_out(run, tmp_path):
    from dmicro_hw.acquisition.view import make_views

    chunk_file(run, "raw", 0).unlink()
    res = make_views(run, tmp_path / "view", n_frames=4, video=None)
    assert res["damaged"] == 8 and (tmp_path / "view" / "raw.png").is_file()
    assert (tmp_path / "view" / "phase.png").is_file()
    # the video (when imageio-ffmpeg is installed) shows the 40 intact frames only
    if res["files"]["mp4"]:
        assert Path(res["files"]["mp4"]).stat().st_size > 0


def test_frame_id_chunk_missing_or_array_missing(run, cli):
    chunk_file(run, "frame_id", 0).unlink()
    p = cli("verify", str(run))
    assert p.returncode == 5 and "48 damaged frames: 0-47" in p.stderr
    assert "frame_id chunk 0: missing" in p.stderr
    shutil.rmtree(run / "run.zarr" / "frame_id")
    p = cli("verify", str(run))
    assert p.returncode == 5 and "array 'frame_id' is missing" in p.stderr


@pytest.mark.parametrize("value", [-5, 10**6])
def test_bad_commit_counter(run, value, cli):
    import zarr

    zarr.open_array(str(run / "run.zarr" / "committed"), mode="r+")[0] = value
    p = dmicro("verify", str(run)) if value < 0 else cli("verify", str(run))
    assert p.returncode == 5 and "Traceback" not in p.stderr
    if value < 0:
        assert "counter 'committed' is -5 (must be ≥ 0)" in p.stderr
        p = cli("reconstruct", str(run), "--no-score")
        assert p.returncode == 5 and "counter 'committed' is -5" in p.stderr
    else:
        assert "only 48 frames are stored" in p.stderr


def test_damaged_array_metadata_is_one_line(run, cli):
    (run / "run.zarr" / "raw" / "zarr.json").write_text("{not json")
    for cmd in (("verify",), ("reconstruct", "--no-score"), ("view", "--no-mp4")):
        p = cli(*cmd[:1], str(run), *cmd[1:])
        assert p.returncode == 5, (cmd, p.stderr)
        assert "Traceback" not in p.stderr and "damaged run store" in p.stderr


def test_nan_decoder_output_is_recon_status_error(run, tmp_path, assets, cli):  # noqa: F811
    import torch

    ck = torch.load(assets / "model.pt", weights_only=True)
    for v in ck["decoder"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    bad = tmp_path / "nan-decoder.pt"
    torch.save(ck, bad)
    p = cli("reconstruct", str(run), "--checkpoint", str(bad), "--force", "--no-score")
    assert p.returncode == 0, p.stderr
    r = RunReader(run)
    assert (r.recon_status() == RECON_ERROR).all()
    out = json.loads((run / "reconstruct.json").read_text())
    assert out["decode_errors"] == 48 and out["decoded"] == 0
    # and verify does not call the NaN phase "damaged": it is honestly marked error
    assert cli("verify", str(run)).returncode == 0


def test_checkpoint_with_invalid_normalisation_is_refused(assets, tmp_path, cli):  # noqa: F811
    import torch

    from dmicro_hw.errors import CheckpointError
    from dmicro_hw.training.checkpoint import load_checkpoint

    ck = torch.load(assets / "model.pt", weights_only=True)
    for norm, words in (
        ({"mean": 0.0, "std": 0.0}, "frame_norm.std must be finite and > 0, got 0.0"),
        ({"mean": float("inf"), "std": 1.0}, "frame_norm.mean must be finite, got inf"),
    ):
        torch.save({**ck, "frame_norm": norm}, tmp_path / "x.pt")
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(tmp_path / "x.pt")
    ck["frame_norm"] = {"mean": float("nan"), "std": 1.0}
    bad = tmp_path / "bad-norm.pt"
    torch.save(ck, bad)
    rig = rig_for(assets, tmp_path)
    text = rig.read_text().replace(str(assets / "model.pt"), str(bad))
    text = text.replace(f"pattern: {assets / 'pattern'}", "pattern: null")
    rig.write_text(text)
    out = tmp_path / "never"
    p = cli("acquire", "--config", rig, "--frames", "8", "--out", out)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "frame_norm.mean must be finite, got nan" in p.stderr and not out.exists()
