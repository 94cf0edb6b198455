"""Fast default decoder: a small U-Net at the compressed resolution + pixel-shuffle up-sampler.

    frame (B, N/k, N/k) → [per-frame standardise: old checkpoints only] → U-Net at N/k (depth
    levels of pre-activation residual blocks with GroupNorm, stride-2 down, pixel-shuffle up,
    skip connections)
    → features F (base_channels, N/k, N/k)
    output = tail(F) + direct(F), (B, N, N) normalised phase, where
      tail:   log2(k) × [conv → PixelShuffle(2) → conv], channels tapering to ≥ 8, → conv to 1
      direct: conv to k² channels → PixelShuffle(k)

Almost all the compute runs at the compressed resolution, where the information is; the
full-resolution stages are thin. The direct sub-pixel path (k² outputs per compressed pixel)
lets the low-resolution features place detail straight into the full-resolution grid, which
trains several times faster than through the thin tail alone.

The output is the *normalised* phase φ / phase_max_rad (≈ [0, 1], not clamped, so the gradient
never dies); see :func:`dmicro_hw.training.metrics.denormalise_phase` to get radians back.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmicro_hw.models.common import as_batch, check_binning, pad_to_multiple, standardise


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class ResBlock(nn.Module):
    """Pre-activation residual block: [GroupNorm → act → conv3×3] × 2, plus the input
    (1×1-projected if the channel count changes).

    GroupNorm keeps every block's input at unit scale, so the stack of convolutions cannot blow
    up under Adam at learning rates up to a few 1e-3 (without it this decoder diverged in tests
    at 1e-3); the last conv starts at zero, so each block starts as the identity.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(math.gcd(c_in, 8), c_in),
            _act(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(math.gcd(c_out, 8), c_out),
            _act(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class ShuffleUp(nn.Module):
    """×2 up-sampling: conv3×3 to 4·c_out channels → PixelShuffle(2) → act."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class UNetDecoder(nn.Module):
    """Compressed frame (B, N/k, N/k) → normalised phase (B, N, N).

    Args:
        binning: k (power of two: 2, 4, 8, 16 for ×4 … ×256 compression).
        base_channels: channels at the compressed resolution (doubled per U-Net level, ≤ 8×).
        depth: number of U-Net down-sampling levels. Frames whose side is not a multiple of
            2**depth are padded internally and cropped back.
        normalize_input: standardise each frame (zero mean, unit std). Off for new models
            (``decoder.input_norm: fixed``): it removes the frame's contrast, which carries the
            phase amplitude; kept for checkpoints trained with it.
    """

    def __init__(
        self,
        binning: int,
        base_channels: int = 32,
        depth: int = 3,
        normalize_input: bool = True,
        head_shuffle: int = 1,
    ) -> None:
        super().__init__()
        self.binning = check_binning(binning)
        self.head_shuffle = check_binning(head_shuffle)
        if self.head_shuffle > self.binning:
            raise ValueError(
                f"head_shuffle ({head_shuffle}) must not exceed the binning ({self.binning})"
            )
        self.depth = int(depth)
        self.normalize_input = normalize_input
        c = int(base_channels)
        chs = [min(c * 2**i, 8 * c) for i in range(self.depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), _act())
        self.enc = nn.ModuleList(ResBlock(chs[i], chs[i]) for i in range(self.depth))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chs[i], chs[i + 1], 3, stride=2, padding=1), _act())
            for i in range(self.depth)
        )
        self.mid = ResBlock(chs[-1], chs[-1])
        self.up = nn.ModuleList(ShuffleUp(chs[i + 1], chs[i]) for i in reversed(range(self.depth)))
        self.dec = nn.ModuleList(ResBlock(2 * chs[i], chs[i]) for i in reversed(range(self.depth)))
        # super-resolution tail: log2(k) ×2 stages, channels tapering to ≥ 8
        stages: list[nn.Module] = []
        c_prev = c
        for s in range(int(math.log2(self.binning // self.head_shuffle))):
            c_out = max(c // 2 ** (s + 1), 8)
            stages += [ShuffleUp(c_prev, c_out), nn.Conv2d(c_out, c_out, 3, padding=1), _act()]
            c_prev = c_out
        self.tail = nn.Sequential(*stages)
        r = self.head_shuffle
        self.head = (
            nn.Conv2d(c_prev, 1, 3, padding=1)
            if r == 1  # full-resolution head (checkpoints before head_shuffle)
            else nn.Sequential(nn.Conv2d(c_prev, r * r, 3, padding=1), nn.PixelShuffle(r))
        )
        self.direct = nn.Sequential(
            nn.Conv2d(c, self.binning**2, 3, padding=1), nn.PixelShuffle(self.binning)
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N/k, N/k) float frames (any units) → (B, N, N) normalised phase."""
        x = as_batch(frames)
        if self.normalize_input:
            x = standardise(x)
        x, h, w = pad_to_multiple(x, 2**self.depth)
        f = self.stem(x)
        skips = []
        for enc, down in zip(self.enc, self.down):
            f = enc(f)
            skips.append(f)
            f = down(f)
        f = self.mid(f)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            f = dec(torch.cat([up(f), skip], dim=1))
        f = f[..., :h, :w]
        return (self.head(self.tail(f)) + self.direct(f)).squeeze(1)
