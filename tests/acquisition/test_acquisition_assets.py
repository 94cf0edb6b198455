"""Reconstructor input chain (camera gain/offset, pixel-format scale) and the asset cross-checks
(pattern ↔ checkpoint ↔ calibration ↔ rig) — in process, tiny untrained model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dmicro_hw.acquisition.reconstruct import Reconstructor
from dmicro_hw.acquisition.session import load_assets
from dmicro_hw.config import DecoderConfig, RigConfig, TrainConfig
from dmicro_hw.errors import CheckpointError, FrameShapeError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from dmicro_hw.training.checkpoint import save_checkpoint
    from dmicro_hw.training.model import DMicroModel

    d = tmp_path_factory.mktemp("assets")
    rig = RigConfig.model_validate(
        {
            "optics": {"field_size": 32, "compression": 16, "focal_length_m": 0.0123},
            "sensor": {"photons_per_pixel": 10000, "gain_adu_per_e": 0.1, "offset_adu": 64},
            "slm": {"pixels": [96, 96]},
        }
    )
    torch.manual_seed(0)
    cfg = TrainConfig(
        optics=rig.optics, sensor=rig.sensor, decoder=DecoderConfig(base_channels=4, depth=1)
    )
    model = DMicroModel.from_config(cfg)
    ck = save_checkpoint(d / "model.pt", model, cfg)
    cal = d / "cal"
    cal.mkdir()
    (cal / "calibration.json").write_text(
        json.dumps(
            {
                "rig_id": rig.rig_id,
                "wavelength_m": rig.optics.wavelength_m,
                "slm": {"offset_px": [0.5, -0.5]},
                "mismatch": {"camera_gain": 1.25, "camera_offset_adu": 12.0},
            }
        )
    )
    return d, rig, ck, cal


def _rig(rig: RigConfig, **kw) -> RigConfig:
    return rig.model_copy(update=kw)


def test_camera_gain_offset_and_pixel_scale_are_undone_before_decoding(setup):
    from dmicro_hw.training.checkpoint import build_model_from_checkpoint

    _, rig, ck, _ = setup
    model, _ = build_model_from_checkpoint(ck)
    plain = Reconstructor(model, rig.sensor, device="cpu")
    cam = Reconstructor(model, rig.sensor, device="cpu", camera_gain=1.25, camera_offset_adu=12)
    raw = np.random.default_rng(0).uniform(500, 1500, (3, 8, 8)).astype(np.float32)
    ref = plain(raw)
    assert ref.shape == (3, 32, 32) and 0 <= ref.min() and ref.max() <= model.phase_max_rad
    np.testing.assert_allclose(cam(1.25 * raw + 12), ref, atol=1e-5)
    plain.set_pixel_scale(16.0)  # a 12-bit ADC delivered as Mono16
    np.testing.assert_allclose(plain(raw * 16), ref, atol=1e-5)
    with pytest.raises(FrameShapeError, match=r"decoder expects \(8, 8\)"):
        plain.check_frame_shape((10, 8))


def test_assets_cross_checks(setup, tmp_path):
    from dmicro_hw.commands._export_pattern import export_checkpoint

    d, rig, ck, cal = setup
    export_checkpoint(ck, rig, calibration=cal, out_dir=tmp_path / "pat-cal")
    export_checkpoint(ck, rig, out_dir=tmp_path / "pat")

    a = load_assets(_rig(rig, checkpoint=ck, pattern=tmp_path / "pat-cal", calibration=cal))
    assert (a.camera_gain, a.camera_offset_adu) == (1.25, 12.0)
    assert a.attrs()["calibration_sha256"] == a.calibration.sha256
    assert a.patterns_table()[0]["sha256"] == a.pattern.sha256

    with pytest.raises(CheckpointError, match="names none"):
        load_assets(_rig(rig, checkpoint=ck, pattern=tmp_path / "pat-cal"))
    a = load_assets(_rig(rig, checkpoint=ck, pattern=tmp_path / "pat", calibration=cal))
    assert a.notes and "without" in a.notes[0]
    other = tmp_path / "cal2"
    shutil.copytree(cal, other)
    data = json.loads((other / "calibration.json").read_text())
    data["slm"]["offset_px"] = [1.0, 1.0]
    (other / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="another calibration"):
        load_assets(_rig(rig, checkpoint=ck, pattern=tmp_path / "pat-cal", calibration=other))
    data["rig_id"] = "elsewhere"
    (other / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="elsewhere"):
        load_assets(_rig(rig, checkpoint=ck, calibration=other))

    # an adapted checkpoint (camera response folded in) is not corrected twice
    adapted = tmp_path / "checkpoint_adapted.pt"
    shutil.copy(ck, adapted)
    a = load_assets(_rig(rig, checkpoint=adapted, calibration=cal))
    assert (a.camera_gain, a.camera_offset_adu) == (1.0, 0.0)


def test_shipped_sim_rig_assets_belong_together():
    """configs/sim-rig.yaml names a checkpoint and a pattern exported from it, for this rig."""
    from pathlib import Path

    from dmicro_hw.config import load_rig_config
    from dmicro_hw.training.checkpoint import build_model_from_checkpoint, checkpoint_config

    cfg = Path(__file__).resolve().parents[2] / "configs" / "sim-rig.yaml"
    rig = load_rig_config(cfg)
    assert rig.checkpoint is not None and Path(rig.checkpoint).is_file()
    a = load_assets(rig)
    assert a.pattern is not None and a.pattern.grey.shape == tuple(rig.slm.pixels)
    assert a.pattern.sidecar["sha256"]["checkpoint"] == a.checkpoint_sha256
    assert Path(rig.checkpoint).stat().st_size < 16 * 1024**2  # well under the 20 MB budget
    t = checkpoint_config(rig.checkpoint)
    assert t.optics == rig.optics and t.sensor == rig.sensor
    # the weights still fit the decoder architecture (re-make with scripts/make-sim-assets.sh)
    build_model_from_checkpoint(rig.checkpoint)
    # calibrated chain: the bundle is this rig's, the decoder adapted to it, the pattern exported
    # with it; the trained (unadapted) model beside it is what `dmicro calibrate` adapts
    from dmicro_hw.calibration.adapt import is_adapted
    from dmicro_hw.calibration.bundle import load_bundle

    assert rig.calibration is not None and a.calibration is not None
    load_bundle(rig.calibration, rig)
    assert is_adapted(rig.checkpoint) and (a.camera_gain, a.camera_offset_adu) == (1.0, 0.0)
    assert a.pattern.sidecar["sha256"]["calibration"] == a.calibration.sha256
    trained = cfg.parent / "assets" / "sim-rig.pt"
    assert not is_adapted(trained) and checkpoint_config(trained).optics == rig.optics
