"""Pieces shared by the decoders: input checks, per-frame standardisation, padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmicro_hw.errors import FrameShapeError


def check_binning(binning: int) -> int:
    """k must be a power of two (1, 2, 4, 8, 16, …): the decoders up-sample in ×2 stages."""
    k = int(binning)
    if k < 1 or k & (k - 1):
        raise ValueError(f"binning must be a power of two (2, 4, 8, 16), got {binning}")
    return k


def as_batch(frames: torch.Tensor) -> torch.Tensor:
    """Check a (B, H, W) batch of compressed frames and return it as float (B, 1, H, W)."""
    if frames.dim() != 3:
        raise FrameShapeError(
            f"decoder input must be (batch, height, width), got shape {tuple(frames.shape)}"
        )
    if frames.is_complex():
        raise FrameShapeError("decoder input must be real intensities, got a complex tensor")
    if not frames.is_floating_point():
        frames = frames.float()
    return frames.unsqueeze(1)


def standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-frame zero mean / unit std over (H, W): frames differing by camera gain and offset
    map to the same input."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad (B, C, H, W) at bottom/right to multiples of ``multiple`` (reflect where possible)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
