"""Checkpoint files: round trip through torch.load(weights_only=True), and every way a file can be
wrong (missing, empty, corrupt, truncated, not a dmicro file, unsafe pickle, other version)."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from dmicro_hw.config import TrainConfig
from dmicro_hw.errors import CheckpointError
from dmicro_hw.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    build_model_from_checkpoint,
    checkpoint_config,
    learned_filter,
    load_checkpoint,
    save_checkpoint,
)
from dmicro_hw.training.model import DMicroModel


def tiny_cfg(kind: str = "lff", noise: bool = False) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "optics": {"field_size": 32, "compression": 16},
            "sensor": {"noise": noise},
            "encoder": {"kind": kind},
            "decoder": {"kind": "unet", "base_channels": 4, "depth": 1},
            "data": {
                "kind": "synthetic",
                "n_train": 8,
                "n_val": 4,
                "n_test": 4,
                "phase_max_rad": 2.0,
            },
        }
    )


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = DMicroModel.from_config(cfg)
    with torch.no_grad():  # make the filter non-trivial so the round trip means something
        model.encoder.filter.phase.normal_(0.0, 0.5)
        model.encoder.filter.amplitude_logit.normal_(0.0, 1.0)
    model.frame_mean.fill_(0.9)
    model.frame_std.fill_(0.2)
    path = save_checkpoint(tmp_path / "model.pt", model, cfg, {"ssim": 0.5, "psnr": 20.0})
    return path, model, cfg


def test_roundtrip_weights_only(saved):
    path, model, cfg = saved
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["config"]["optics"]["field_size"] == 32
    assert raw["config"]["data"]["phase_max_rad"] == 2.0
    assert raw["metrics"] == {"ssim": 0.5, "psnr": 20.0}

    ck = load_checkpoint(path)
    assert checkpoint_config(ck) == cfg
    model2, cfg2 = build_model_from_checkpoint(path)
    assert cfg2 == cfg and not model2.training
    assert float(model2.frame_mean) == pytest.approx(0.9)
    assert float(model2.frame_std) == pytest.approx(0.2)
    assert model2.phase_max_rad == 2.0
    phase = torch.rand(2, 32, 32) * 2.0
    model.eval()
    with torch.no_grad():
        f1, p1 = model(phase)
        f2, p2 = model2(phase)
    assert torch.equal(f1, f2) and torch.equal(p1, p2)
    assert p1.shape == (2, 32, 32) and f1.shape == (2, 8, 8)


def test_learned_filter(saved):
    path, model, _ = saved
    h = learned_filter(path)
    assert h.dtype == torch.complex64 and h.shape == (32, 32)
    assert torch.allclose(h, model.encoder.filter().detach())
    # centred: the pupil is a centred disk, so the corners are dark and the centre bright
    assert h[0, 0].abs() == 0 and h[16, 16].abs() > 0


def test_learned_filter_refuses_baselines(tmp_path):
    cfg = tiny_cfg("gpc")
    path = save_checkpoint(tmp_path / "gpc.pt", DMicroModel.from_config(cfg), cfg)
    with pytest.raises(CheckpointError, match="no learned Fourier filter"):
        learned_filter(path)
    model, _ = build_model_from_checkpoint(path)  # but the model itself loads
    assert model.encoder.compression == 16


def test_missing_and_empty(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_corrupt_and_truncated(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint at all" * 50)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
        load_checkpoint(bad)
    assert "\n" not in str(e.value)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
        load_checkpoint(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


class _Evil:
    def __reduce__(self):
        return (print, ("executed!",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_wrong_type_and_unsafe_pickle(tmp_path):
    lst = tmp_path / "list.pt"
    torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="not a dmicro-hw checkpoint"):
        load_checkpoint(lst)
    other = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, other)  # e.g. a bare state_dict of another project
    with pytest.raises(CheckpointError, match="not a dmicro-hw checkpoint"):
        load_checkpoint(other)
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain_pickle)
    assert not zipfile.is_zipfile(plain_pickle)


def test_wrong_version_and_incomplete(saved, tmp_path):
    path, _, _ = saved
    ck = torch.load(path, weights_only=True)
    ck["format_version"] = FORMAT_VERSION + 1
    future = tmp_path / "future.pt"
    torch.save(ck, future)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(future)
    ck["format_version"] = FORMAT_VERSION
    del ck["decoder"]
    partial = tmp_path / "partial.pt"
    torch.save(ck, partial)
    with pytest.raises(CheckpointError, match="missing decoder"):
        load_checkpoint(partial)


def test_weights_not_matching_config(saved, tmp_path):
    path, _, _ = saved
    ck = torch.load(path, weights_only=True)
    ck["config"]["decoder"]["base_channels"] = 8  # config says a wider decoder than stored
    bad = tmp_path / "mismatch.pt"
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="decoder weights do not match"):
        build_model_from_checkpoint(bad)
    ck["config"]["optics"]["compression"] = 3  # invalid config value
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="stored config is not valid"):
        build_model_from_checkpoint(bad)


def test_hardware_aware_checkpoint_roundtrip(tmp_path):
    """encoder.hardware_aware: the SLM/export transform is rebuilt from the config on load."""
    data = tiny_cfg().model_dump(mode="json")
    data["encoder"]["hardware_aware"] = True
    data["slm"] = {"pixels": [96, 96], "pitch_m": 100e-6}  # covers the 32×32 filter window
    cfg = TrainConfig.model_validate(data)
    torch.manual_seed(0)
    model = DMicroModel.from_config(cfg)
    assert model.encoder.filter_transform is not None
    path = save_checkpoint(tmp_path / "hw.pt", model, cfg)
    model2, cfg2 = build_model_from_checkpoint(path)
    assert cfg2.encoder.hardware_aware and model2.encoder.filter_transform is not None
    phase = torch.rand(1, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(phase)[1], model2(phase)[1])
    assert learned_filter(path).shape == (32, 32)
