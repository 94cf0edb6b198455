"""Image-quality metrics on phase maps and the training losses.

Conventions (as in ∂μ): PSNR and SSIM are computed on phase *normalised* to [0, 1]
(φ / phase_max_rad, clamped) with data_range = 1; the phase RMSE is in radians.

SSIM uses pytorch-msssim with an 11-tap Gaussian window, σ = 1.5, K = (0.01, 0.03), no padding
(the map is averaged over the valid region): identical to scikit-image's
``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)``. Metric functions compute in float64 on detached tensors (not for
back-propagation) unless given ``dtype=torch.float32`` (what scoring whole runs uses: ≈2× faster
SSIM, values within ~1e-5 of float64); the losses run in the input dtype and are differentiable.

Shapes: images are (B, H, W) (or (H, W), treated as B = 1). The metric functions return one
value per image, shape (B,) (``reduction="none"``, the default), or their mean
(``reduction="mean"``). ``pred`` is clamped to [0, 1] first unless ``clamp=False``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _ms_ssim
from torch import nn

Reduction = Literal["mean", "none"]
SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5


def normalise_phase(phi: torch.Tensor, phase_max_rad: float, clamp: bool = True) -> torch.Tensor:
    """Phase in radians → normalised phase φ / phase_max_rad (clamped to [0, 1] by default)."""
    y = phi / float(phase_max_rad)
    return y.clamp(0.0, 1.0) if clamp else y


def denormalise_phase(y: torch.Tensor, phase_max_rad: float, clamp: bool = True) -> torch.Tensor:
    """Normalised phase (e.g. decoder output) → radians, clamped to [0, phase_max_rad]."""
    y = y.clamp(0.0, 1.0) if clamp else y
    return y * float(phase_max_rad)


def _batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"expected (B, H, W) or (H, W) images, got shape {tuple(x.shape)}")
    return x


def _reduce(v: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "none":
        return v
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _gauss_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.arange(SSIM_WIN_SIZE, dtype=torch.float64) - SSIM_WIN_SIZE // 2
    g = torch.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return (g / g.sum()).to(dtype=dtype, device=device).view(1, 1, 1, -1)  # (C=1, 1, 1, 11)


def _pred(
    pred: torch.Tensor, clamp: bool, data_range: float, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    p = _batch(pred).detach().to(dtype)
    return p.clamp(0.0, data_range) if clamp else p


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    reduction: Reduction = "none",
    clamp: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: 10·log10(range² / MSE). Identical images
    give +inf."""
    p, t = _pred(pred, clamp, data_range, dtype), _batch(target).detach().to(dtype)
    mse = (p - t).pow(2).flatten(1).mean(1)
    return _reduce(10.0 * torch.log10(data_range**2 / mse), reduction)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    reduction: Reduction = "none",
    clamp: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Structural similarity (Gaussian window 11, σ 1.5), per image, in ``dtype``.

    Images must be at least 11×11 pixels.
    """
    p = _pred(pred, clamp, data_range, dtype).unsqueeze(1)
    t = _batch(target).detach().to(dtype).unsqueeze(1)
    if min(p.shape[-2:]) < SSIM_WIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN_SIZE}×{SSIM_WIN_SIZE} pixels")
    win = _gauss_window(p.dtype, p.device)
    v = _ms_ssim(p, t, data_range=data_range, size_average=False, win=win)
    return _reduce(v.reshape(-1), reduction)


def phase_rmse(
    pred_rad: torch.Tensor,
    target_rad: torch.Tensor,
    reduction: Reduction = "none",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Root-mean-square phase error, per image, of two phase maps in radians (no wrapping:
    phases in [0, phase_max_rad]; no clamping)."""
    p, t = _batch(pred_rad).detach().to(dtype), _batch(target_rad).detach().to(dtype)
    return _reduce((p - t).pow(2).flatten(1).mean(1).sqrt(), reduction)


def rmse_rad(
    pred_norm: torch.Tensor,
    target_norm: torch.Tensor,
    phase_max_rad: float,
    reduction: Reduction = "none",
    clamp: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Phase RMSE in radians, per image, from *normalised* phases (B, H, W)."""
    p = _pred(pred_norm, clamp, 1.0, dtype) * float(phase_max_rad)
    t = _batch(target_norm).detach().to(dtype) * float(phase_max_rad)
    return phase_rmse(p, t, reduction, dtype)


def phase_metrics(
    pred_norm: torch.Tensor, target_norm: torch.Tensor, phase_max_rad: float
) -> dict[str, float]:
    """Mean ``psnr`` (dB), ``ssim`` and ``rmse_rad`` of a batch of normalised phase maps.

    ``pred_norm`` (e.g. the decoder output) is clamped to [0, 1] first; both are (B, H, W).
    """
    return {
        "psnr": float(psnr(pred_norm, target_norm, reduction="mean")),
        "ssim": float(ssim(pred_norm, target_norm, reduction="mean")),
        "rmse_rad": float(rmse_rad(pred_norm, target_norm, phase_max_rad, reduction="mean")),
    }


class SSIML1Loss(nn.Module):
    """α·(1 − SSIM) + (1 − α)·L1 on normalised phase (B, H, W); differentiable.

    α = 0.84 follows Zhao et al., "Loss Functions for Image Restoration with Neural Networks"
    (2017). SSIM uses the same window as :func:`ssim` with data_range 1.
    """

    def __init__(self, alpha: float = 0.84) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = _batch(pred).unsqueeze(1), _batch(target).unsqueeze(1)
        win = _gauss_window(p.dtype, p.device)
        s = _ms_ssim(p, t, data_range=1.0, size_average=True, win=win)
        return self.alpha * (1.0 - s) + (1.0 - self.alpha) * F.l1_loss(p, t)


def ssim_l1_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.84) -> torch.Tensor:
    """Functional form of :class:`SSIML1Loss` (scalar, differentiable)."""
    return SSIML1Loss(alpha)(pred, target)


def make_loss(name: Literal["l1", "mse", "ssim_l1"]) -> nn.Module:
    """The training loss named in ``StageConfig.loss``."""
    if name == "l1":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    if name == "ssim_l1":
        return SSIML1Loss()
    raise ValueError(f"unknown loss {name!r}; allowed: l1, mse, ssim_l1")


__all__ = [
    "SSIML1Loss",
    "denormalise_phase",
    "make_loss",
    "normalise_phase",
    "phase_metrics",
    "phase_rmse",
    "psnr",
    "rmse_rad",
    "ssim",
    "ssim_l1_loss",
]
