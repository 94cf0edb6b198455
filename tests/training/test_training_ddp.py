"""`dmicro train --nproc 2`: two data-parallel processes (gloo) give the weights of one process
training on the same batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from dmicro_hw.config import TrainConfig
from dmicro_hw.training.trainer import Trainer
from tests.training.test_training_trainer import TINY


def test_two_process_ddp_matches_one_process(tmp_path):
    cfg = {
        **TINY,
        "sensor": {"noise": False},
        "stages": [
            {"name": "decoder", "epochs": 1, "lr": 0.002, "batch_size": 8},
            {"name": "joint", "epochs": 1, "lr": 0.0005, "batch_size": 8, "loss": "ssim_l1"},
        ],
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torch.set_num_threads(1)
    one = Trainer(TrainConfig.model_validate(cfg), out_dir=tmp_path / "one")
    assert one.fit().finished

    out = tmp_path / "ddp"
    cmd = [str(Path(sys.executable).with_name("dmicro")), "train", "--config", str(path),
           "--out", str(out), "--nproc", "2", "--threads", "1", "--examples", "0"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and "2 data-parallel processes" in r.stdout
    ck = torch.load(out / "last.pt", weights_only=True)
    compared = 0
    for part in ("encoder", "decoder"):
        ref = getattr(one.model, part).state_dict()
        for k, v in ck[part].items():
            if v.is_floating_point():
                torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-5, msg=f"{part}.{k}")
                compared += 1
    assert compared > 10
    # only rank 0 wrote the metrics log: one record per epoch, not two
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
