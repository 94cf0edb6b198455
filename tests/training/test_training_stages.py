"""Stage plumbing: which stages run, what each one trains, and the optics-stage loss."""

from __future__ import annotations

import pytest
import torch

from dmicro_hw.config import TrainConfig
from dmicro_hw.training.model import DMicroModel, make_encoder
from dmicro_hw.training.stages import (
    affine_fit,
    optics_loss,
    plan_stages,
    reconstruction_loss,
    set_trainable,
    upsample_frame,
)


def cfg_for(kind: str, **extra) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "optics": {"field_size": 32, "compression": 16},
            "encoder": {"kind": kind},
            "decoder": {"kind": "unet", "base_channels": 4, "depth": 1},
            **extra,
        }
    )


@pytest.mark.parametrize(
    "kind, names",
    [
        ("lff", ["optics", "decoder", "joint"]),
        ("d2nn", ["optics", "decoder", "joint"]),
        ("gpc", ["decoder", "joint"]),
        ("plain", ["decoder", "joint"]),
    ],
)
def test_plan_skips_optics_without_parameters(kind, names):
    cfg = cfg_for(kind)
    model = DMicroModel.from_config(cfg)
    assert model.has_optics_params == (kind in ("lff", "d2nn"))
    assert [s.name for s in plan_stages(cfg, model.has_optics_params)] == names


def test_plan_skips_zero_epoch_stages():
    cfg = cfg_for("lff", stages=[{"name": "optics", "epochs": 0}, {"name": "joint", "epochs": 2}])
    plan = plan_stages(cfg, True)
    assert [(s.index, s.name) for s in plan] == [(1, "joint")]


def test_set_trainable_selects_parts():
    model = DMicroModel.from_config(cfg_for("lff"))
    n_enc = {id(p) for p in model.encoder.parameters()}
    n_dec = {id(p) for p in model.decoder.parameters()}
    for stage, expect in (("optics", n_enc), ("decoder", n_dec), ("joint", n_enc | n_dec)):
        params = set_trainable(model, stage)
        assert {id(p) for p in params} == expect
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable == expect


def test_affine_fit_recovers_linear_encoding():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 16, 16, generator=g)
    x = -2.5 * y + 7.0  # inverted contrast, gain and offset
    assert torch.allclose(affine_fit(x, y), y, atol=1e-5)
    flat = torch.full_like(y, 3.0)  # no contrast → best constant predictor, no blow-up
    assert torch.allclose(affine_fit(flat, y), y.mean((-2, -1), keepdim=True).expand_as(y))


def test_optics_loss_is_gain_offset_invariant_and_rewards_contrast():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 32, 32, generator=g)
    frame = torch.nn.functional.avg_pool2d(target.unsqueeze(1), 4).squeeze(1)
    l1 = optics_loss(frame, target)
    l2 = optics_loss(0.3 * frame + 12.0, target)
    assert torch.allclose(l1, l2, atol=1e-5)
    noisy = frame + 0.5 * torch.randn(frame.shape, generator=g)
    assert optics_loss(noisy, target) > l1
    assert upsample_frame(frame, 32).shape == (2, 32, 32)
    for kind in ("l1", "mse", "ssim_l1"):
        assert torch.isfinite(reconstruction_loss(kind, target.clamp(0, 1), target))


def test_optics_stage_gradient_reaches_filter():
    cfg = cfg_for("lff", sensor={"noise": True})
    model = DMicroModel.from_config(cfg)
    set_trainable(model, "optics")
    phase = torch.rand(2, 32, 32) * 2.0
    gen = torch.Generator().manual_seed(0)
    loss = optics_loss(model.encode(phase, gen), model.normalised_target(phase))
    loss.backward()
    grad = model.encoder.filter.phase.grad
    assert grad is not None and grad.abs().sum() > 0  # through noise (straight-through) too


def test_make_encoder_hardware_aware_hook():
    from dmicro_hw.errors import ConfigError

    with pytest.raises(ConfigError, match="hardware_aware"):
        make_encoder(cfg_for("gpc", encoder={"kind": "gpc", "hardware_aware": True}))
