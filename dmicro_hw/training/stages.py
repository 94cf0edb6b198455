"""The paper's three training stages and their losses.

* ``optics`` — the optics alone. The paper uses the L1 distance between the camera intensity and
  phase/2π. We keep the idea but make it meaningful for a *binned, noisy, gain-arbitrary* camera:
  the compressed frame (B, N/k, N/k) is upsampled bilinearly to N×N, then mapped to the
  normalised phase by the per-image least-squares affine fit a·I + b (closed form,
  differentiable), and the stage loss (L1 by default) is taken between that and the target.
  The fit removes what a decoder trivially undoes (exposure, gain, offset, contrast sign), so the
  optics are rewarded only for *linearly encoding* the phase, and since the frame carries Poisson
  and read noise (straight-through gradients), for encoding it *above the noise*: a filter that
  throws light away gains nothing. A constant frame gives the loss of the best constant
  predictor, so there is no degenerate minimum.
* ``decoder`` — the decoder with the optics frozen (frames computed without gradients).
* ``joint`` — both fine-tuned end to end (SSIM + L1 by default).

Encoders without trainable optics (GPC, plain intensity) skip the ``optics`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmicro_hw.config import StageConfig, TrainConfig
from dmicro_hw.training import metrics as M


@dataclass(frozen=True)
class PlannedStage:
    """A stage that will run: its position in ``cfg.stages`` and its config."""

    index: int
    cfg: StageConfig

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def trains_decoder(self) -> bool:
        return self.cfg.name in ("decoder", "joint")


def plan_stages(cfg: TrainConfig, has_optics_params: bool) -> list[PlannedStage]:
    """Stages of ``cfg`` that run: without trainable optics the ``optics`` stage is skipped;
    stages with 0 epochs are skipped."""
    plan = []
    for i, st in enumerate(cfg.stages):
        if st.epochs == 0:
            continue
        if st.name == "optics" and not has_optics_params:
            continue
        plan.append(PlannedStage(i, st))
    return plan


def set_trainable(model, stage: str) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the parameters ``stage`` trains; returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    if stage in ("optics", "joint"):
        params += model.encoder_parameters()
    if stage in ("decoder", "joint"):
        params += list(model.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def upsample_frame(frame: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) → (B, size, size), bilinear (each camera pixel covers k×k field samples)."""
    if frame.shape[-1] == size and frame.shape[-2] == size:
        return frame
    return F.interpolate(
        frame.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
    ).squeeze(1)


def affine_fit(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image least-squares a·x + b ≈ y over the last two dims; returns a·x + b."""
    dims = (-2, -1)
    xm = x.mean(dims, keepdim=True)
    ym = y.mean(dims, keepdim=True)
    xc = x - xm
    var = xc.square().mean(dims, keepdim=True)
    cov = (xc * (y - ym)).mean(dims, keepdim=True)
    a = cov / (var + eps)
    return a * xc + ym


def reconstruction_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss between normalised phases (B, N, N): ``l1`` | ``mse`` | ``ssim_l1``
    (:func:`dmicro_hw.training.metrics.make_loss`)."""
    loss = _LOSSES.get(kind)
    if loss is None:
        loss = _LOSSES[kind] = M.make_loss(kind)
    return loss(pred, target)


_LOSSES: dict[str, torch.nn.Module] = {}


def optics_loss(frame: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Stage-1 loss: upsampled frame, affine-fitted to the target, vs the normalised phase."""
    fitted = affine_fit(upsample_frame(frame, target.shape[-1]), target)
    if kind == "ssim_l1":
        fitted = fitted.clamp(0.0, 1.0)
    return reconstruction_loss(kind, fitted, target)
