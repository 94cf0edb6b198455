"""Decoders: compressed camera frame (B, N/k, N/k) → normalised phase (B, N, N).

The output is φ / phase_max_rad, the phase normalised to [0, 1] exactly as the training targets
(not clamped inside the model; clamp and multiply by ``phase_max_rad`` for radians, see
:func:`dmicro_hw.training.metrics.denormalise_phase`). Inputs are frames standardised with the
model's fixed training statistics (``decoder.input_norm: fixed``, which keeps the contrast that
carries the phase amplitude) or, for older checkpoints, standardised per frame inside the model.
"""

from __future__ import annotations

from torch import nn

from dmicro_hw.config import DecoderConfig
from dmicro_hw.errors import ConfigError
from dmicro_hw.models.common import count_parameters
from dmicro_hw.models.swinir import SwinIRDecoder
from dmicro_hw.models.unet import UNetDecoder

__all__ = ["SwinIRDecoder", "UNetDecoder", "build_decoder", "count_parameters"]


def build_decoder(cfg: DecoderConfig, binning: int) -> nn.Module:
    """The decoder described by ``cfg`` for k×k binning (k = 2, 4, 8, 16)."""
    if cfg.kind == "unet":
        r = cfg.head_shuffle
        if r & (r - 1) or r > binning:
            raise ConfigError(
                f"decoder.head_shuffle must be a power of two ≤ the binning ({binning}), got {r}"
            )
        return UNetDecoder(
            binning,
            base_channels=cfg.base_channels,
            depth=cfg.depth,
            normalize_input=cfg.input_norm == "per_frame",
            head_shuffle=r,
        )
    if cfg.kind == "swinir":
        if cfg.embed_dim % cfg.num_heads:
            raise ConfigError(
                f"decoder.embed_dim ({cfg.embed_dim}) must be divisible by decoder.num_heads "
                f"({cfg.num_heads})"
            )
        return SwinIRDecoder(
            binning,
            embed_dim=cfg.embed_dim,
            num_groups=cfg.num_groups,
            blocks_per_group=cfg.blocks_per_group,
            window_size=cfg.window_size,
            num_heads=cfg.num_heads,
            upsampler=cfg.upsampler,
            normalize_input=cfg.input_norm == "per_frame",
        )
    raise ConfigError(f"decoder.kind must be one of ['unet', 'swinir'], got {cfg.kind!r}")
