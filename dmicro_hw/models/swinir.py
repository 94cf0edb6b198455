"""SwinIR-style transformer decoder (Liang et al., ICCV-W 2021), written from scratch in torch.

Structure as in SwinIR's classical super-resolution model, which ∂μ uses as its decoder:

    frame (B, N/k, N/k) ──standardise──► conv3×3 (shallow features, embed_dim)
      ──► num_groups × RSTB [blocks_per_group × Swin layer (LayerNorm → windowed multi-head
          self-attention with relative position bias, shifted by window/2 on every other layer
          → LayerNorm → MLP), then conv3×3, plus the group's input]
      ──► LayerNorm → conv3×3, plus the shallow features
      ──► up-sampler ──► (B, N, N) normalised phase (≈ [0, 1], not clamped)

    up-sampler "pixelshuffle" (SwinIR classical SR): conv3×3 (→ 64) → LeakyReLU
        → log2(k) × [conv3×3 (→ 4·64) → PixelShuffle(2)] → conv3×3 (→ 1)
    up-sampler "pixelshuffledirect" (SwinIR lightweight SR): conv3×3 (→ k²) → PixelShuffle(k)

Paper fidelity (∂μ / SwinIR classical): embed_dim 180, 6 groups × 6 layers, window 8, 6 heads,
MLP ratio 2, pixelshuffle — :meth:`SwinIRDecoder.paper`. The config defaults are smaller
(embed 60, 2 × 2, direct up-sampler as in SwinIR-light) for CPU: the classical up-sampler's
64-channel convolutions at N/2 cost more than the whole transformer at k = 8.
Frames whose side is not a multiple of the window are padded and cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmicro_hw.models.common import as_batch, check_binning, pad_to_multiple, standardise


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nW, w·w, C) non-overlapping windows (row-major)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """(B·nW, w·w, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // w) * (wd // w))
    x = windows.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


def shifted_window_mask(h: int, wd: int, w: int, shift: int) -> torch.Tensor:
    """Additive attention mask (nW, w², w²): 0 within a region, −100 across the regions that
    the cyclic shift brings together in one window."""
    img = torch.zeros(1, h, wd, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, w).squeeze(-1)  # (nW, w²)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside w×w windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        r = torch.arange(window)
        coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)  # (2, w²)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B·nW, w², C); mask: (nW, w², w²) additive or None."""
        bn, n, c = x.shape
        qkv = self.qkv(x).view(bn, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B·nW, heads, w², d)
        bias = self.bias_table[self.bias_index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:
            nw = mask.shape[0]
            shape = (bn // nw, nw, self.heads, n, -1)
            attn_mask = bias.unsqueeze(0) + mask.unsqueeze(1)  # (nW, heads, w², w²)
            out = F.scaled_dot_product_attention(
                q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=attn_mask
            )
        return self.proj(out.reshape(bn, self.heads, n, -1).transpose(1, 2).reshape(bn, n, c))


class SwinLayer(nn.Module):
    """Pre-norm Swin transformer layer: (shifted) window attention + MLP, both residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, hw: tuple[int, int], mask: torch.Tensor | None):
        """x: (B, H·W, C) tokens; mask: the shifted-window mask for (H, W)."""
        h, w = hw
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers (shift 0, w/2, 0, …) → conv3×3, + input."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            t = layer(t, (h, w), mask)
        return x + self.conv(t.transpose(1, 2).reshape(b, c, h, w))


class SwinIRDecoder(nn.Module):
    """Compressed frame (B, N/k, N/k) → normalised phase (B, N, N), SwinIR-style.

    Args:
        binning: k (power of two).
        embed_dim: transformer width (divisible by ``num_heads``).
        num_groups: number of RSTB groups; blocks_per_group: Swin layers per group.
        window_size: attention window (tokens per side); num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim (SwinIR SR: 2).
        upsampler: ``pixelshuffle`` | ``pixelshuffledirect`` | ``auto`` (direct when
            embed_dim < 96, as SwinIR-light).
        upsampler_channels: width of the ``pixelshuffle`` up-sampler (SwinIR: 64).
        normalize_input: per-frame standardisation (off for new models, see UNetDecoder).
    """

    def __init__(
        self,
        binning: int,
        embed_dim: int = 60,
        num_groups: int = 2,
        blocks_per_group: int = 2,
        window_size: int = 8,
        num_heads: int = 6,
        mlp_ratio: float = 2.0,
        upsampler: str = "pixelshuffle",
        upsampler_channels: int = 64,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.binning = check_binning(binning)
        self.window_size = int(window_size)
        self.normalize_input = normalize_input
        e, f = int(embed_dim), int(upsampler_channels)
        self.conv_first = nn.Conv2d(1, e, 3, padding=1)
        self.groups = nn.ModuleList(
            RSTB(e, blocks_per_group, num_heads, self.window_size, mlp_ratio)
            for _ in range(num_groups)
        )
        self.norm = nn.LayerNorm(e)
        self.conv_after_body = nn.Conv2d(e, e, 3, padding=1)
        if upsampler == "auto":
            upsampler = "pixelshuffledirect" if e < 96 else "pixelshuffle"
        self.upsampler = upsampler
        if upsampler == "pixelshuffle":
            up: list[nn.Module] = [nn.Conv2d(e, f, 3, padding=1), nn.LeakyReLU()]
            for _ in range(int(math.log2(self.binning))):
                up += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2)]
            up.append(nn.Conv2d(f, 1, 3, padding=1))
        elif upsampler == "pixelshuffledirect":
            up = [nn.Conv2d(e, self.binning**2, 3, padding=1), nn.PixelShuffle(self.binning)]
        else:
            raise ValueError(f"unknown upsampler {upsampler!r}")
        self.upsample = nn.Sequential(*up)
        self._masks: dict[tuple[int, int, str], torch.Tensor] = {}
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def paper(cls, binning: int) -> SwinIRDecoder:
        """The size used by ∂μ / SwinIR: embed 180, 6 groups × 6 layers, window 8, 6 heads."""
        return cls(
            binning,
            embed_dim=180,
            num_groups=6,
            blocks_per_group=6,
            window_size=8,
            num_heads=6,
            upsampler="pixelshuffle",
        )

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._masks:
            ws = self.window_size
            self._masks[key] = shifted_window_mask(h, w, ws, ws // 2).to(device)
        return self._masks[key]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N/k, N/k) float frames (any units) → (B, N, N) normalised phase."""
        x = as_batch(frames)
        if self.normalize_input:
            x = standardise(x)
        x, h, w = pad_to_multiple(x, self.window_size)
        hp, wp = x.shape[-2:]
        mask = self._mask(hp, wp, x.device).to(x.dtype)
        shallow = self.conv_first(x)
        deep = shallow
        for g in self.groups:
            deep = g(deep, mask)
        b, c = deep.shape[:2]
        deep = self.norm(deep.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hp, wp)
        feat = self.conv_after_body(deep) + shallow
        y = self.upsample(feat)
        k = self.binning
        return y[:, 0, : h * k, : w * k]
