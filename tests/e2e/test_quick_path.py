"""The README's quick path — train (configs/train-quick.yaml) → export → acquire on
configs/sim-rig-quick.yaml — runs end to end: the shipped quick configs fit together. The
training here is shortened (1 epoch per stage, few samples); everything else is as shipped."""

from __future__ import annotations

from pathlib import Path

import yaml

from dmicro_hw.acquisition.store import RECON_OK, RunReader
from dmicro_hw.cli import _run, acquire_main, app  # noqa: F401 - the entry points under test

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_quick_path_train_export_acquire(tmp_path):
    train = yaml.safe_load((CONFIGS / "train-quick.yaml").read_text(encoding="utf-8"))
    train["data"].update(n_train=16, n_val=8, n_test=8)
    train["device"] = "cpu"
    for st in train["stages"]:
        st["epochs"] = 1
    tcfg = tmp_path / "train.yaml"
    tcfg.write_text(yaml.safe_dump(train), encoding="utf-8")
    assert (
        _run(app, ["train", "-c", str(tcfg), "-o", str(tmp_path / "train"), "--examples", "0"]) == 0
    )
    ck = tmp_path / "train" / "best.pt"
    rig_yaml = CONFIGS / "sim-rig-quick.yaml"
    exp = ["export", str(ck), "--config", str(rig_yaml), "--out", str(tmp_path / "export")]
    assert _run(app, exp) == 0
    rig = yaml.safe_load(rig_yaml.read_text(encoding="utf-8"))
    rig["checkpoint"], rig["pattern"] = str(ck), str(tmp_path / "export")
    rig["acquisition"].update(frames=24, out=str(tmp_path / "runs"))
    rcfg = tmp_path / "rig.yaml"
    rcfg.write_text(yaml.safe_dump(rig), encoding="utf-8")
    from dmicro_hw.cli import _acquire_app

    out = tmp_path / "run"
    assert _run(_acquire_app(), ["-c", str(rcfg), "-o", str(out)], prog_name="dmicro-acquire") == 0
    r = RunReader(out)
    assert r.committed == 24 and r.frame_shape == (16, 16)
    assert r.phase_committed == 24 and (r.recon_status() == RECON_OK).all()
    assert r.phase().shape == (24, 64, 64)
