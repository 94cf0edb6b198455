"""Training loop: outputs, exact resume after an interruption, and the real `dmicro train` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dmicro_hw.config import TrainConfig
from dmicro_hw.errors import CheckpointError
from dmicro_hw.training.checkpoint import build_model_from_checkpoint, load_checkpoint
from dmicro_hw.training.trainer import Trainer

TINY = {
    "seed": 3,
    "device": "cpu",
    "optics": {"field_size": 32, "compression": 16},
    "sensor": {"noise": True},
    "encoder": {"kind": "lff"},
    "decoder": {"kind": "unet", "base_channels": 4, "depth": 1},
    "data": {"kind": "synthetic", "n_train": 16, "n_val": 4, "n_test": 4},
    "stages": [
        {"name": "optics", "epochs": 2, "lr": 0.02, "batch_size": 8},
        {"name": "decoder", "epochs": 2, "lr": 0.002, "batch_size": 8},
        {"name": "joint", "epochs": 1, "lr": 0.0005, "batch_size": 8, "loss": "ssim_l1"},
    ],
}


def _records(path: Path) -> list[dict]:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("time_s", "train_s", "steps_per_s")} for r in recs
    ]


def test_fit_outputs_and_exact_resume(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig.model_validate(TINY)
    full = Trainer(cfg, out_dir=tmp_path / "a")
    res = full.fit()
    assert res.finished and len(res.history) == 5
    recs = _records(tmp_path / "a" / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in recs] == [
        ("optics", 1),
        ("optics", 2),
        ("decoder", 1),
        ("decoder", 2),
        ("joint", 1),
    ]
    for key in ("train_loss", "val_loss", "val_psnr", "val_ssim", "val_rmse_rad"):
        assert all(isinstance(r[key], float) for r in recs)
    best = load_checkpoint(tmp_path / "a" / "best.pt")
    assert best["training"] is None and best["metrics"]["ssim"] == res.best["ssim"]
    assert load_checkpoint(tmp_path / "a" / "last.pt")["training"]["stage_pos"] == 3

    # interrupted after 3 epochs (mid-stage 2), then resumed by a fresh trainer
    part = Trainer(cfg, out_dir=tmp_path / "b")
    assert not part.fit(stop_after_epochs=3).finished
    resumed = Trainer(cfg, out_dir=tmp_path / "b")
    resumed.resume()
    assert resumed.fit().finished
    for name in ("encoder", "decoder"):
        a = getattr(full.model, name).state_dict()
        b = getattr(resumed.model, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _records(tmp_path / "b" / "metrics.jsonl") == recs

    model, cfg2 = build_model_from_checkpoint(tmp_path / "b" / "last.pt")
    assert cfg2 == cfg and model.encoder.compression == 16


def test_resume_refuses_other_config(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(TrainConfig.model_validate(TINY), out_dir=tmp_path).resume()
    cfg = TrainConfig.model_validate({**TINY, "stages": [TINY["stages"][0]]})
    Trainer(cfg, out_dir=tmp_path).fit()
    other = TrainConfig.model_validate({**TINY, "seed": 4, "stages": [TINY["stages"][0]]})
    with pytest.raises(CheckpointError, match="different config"):
        Trainer(other, out_dir=tmp_path).resume()


def _dmicro(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from dmicro_hw.cli import main; main()", *args, "--threads", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_train(tmp_path):
    cfg = dict(TINY)
    cfg["stages"] = [
        {"name": "optics", "epochs": 1, "lr": 0.02, "batch_size": 8},
        {"name": "decoder", "epochs": 1, "lr": 0.002, "batch_size": 8},
    ]
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    r = _dmicro("train", "--config", str(path), "--out", str(out), "--examples", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in (
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "summary.json",
        "mask.png",
        "reconstructions.png",
        "config.json",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) == {"psnr", "ssim", "rmse_rad"}
    assert "SSIM" in r.stdout
    speed = summary["speed"]  # steps/s per stage, fused (or foreach) Adam
    assert set(speed) == {"optics", "decoder"}
    for d in speed.values():
        assert d["steps"] >= 1 and d["steps_per_s"] > 0
        assert d["optimizer"] in ("Adam (fused)", "Adam (foreach)")
    assert "steps/s" in r.stdout

    # a second run into the same folder must not silently overwrite it
    r = _dmicro("train", "--config", str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr
    # --resume of a finished run re-evaluates and exits cleanly
    r = _dmicro(
        "train",
        "--config",
        str(path),
        "--out",
        str(out),
        "--resume",
        "--examples",
        "0",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr

    # config errors: one line naming the key, exit code 2, no traceback
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "optics": {"field_size": 32, "compression": 15}}))
    r = _dmicro("train", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert "optics.compression" in r.stderr and "Traceback" not in r.stderr
