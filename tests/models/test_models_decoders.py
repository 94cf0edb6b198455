"""Decoders: shapes for every binning, gradients, overfitting one batch, invariances, sizes."""

from __future__ import annotations

import pytest
import torch

from dmicro_hw.config import DecoderConfig
from dmicro_hw.data.phantoms import generate_cells
from dmicro_hw.errors import ConfigError, FrameShapeError
from dmicro_hw.models import SwinIRDecoder, UNetDecoder, build_decoder, count_parameters
from dmicro_hw.models.swinir import WindowAttention, shifted_window_mask

UNET = DecoderConfig(kind="unet", base_channels=16, depth=2)
SWIN = DecoderConfig(
    kind="swinir", embed_dim=24, num_heads=3, num_groups=1, blocks_per_group=2, window_size=4
)  # small: "auto" picks the direct (SwinIR-light) up-sampler
SWIN_PS = SWIN.model_copy(update={"upsampler": "pixelshuffle"})  # SwinIR-classical up-sampler


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("cfg", [UNET, SWIN, SWIN_PS], ids=["unet", "swinir", "swinir-ps"])
@pytest.mark.parametrize("k", [2, 4, 8, 16])
def test_shapes_every_binning(cfg: DecoderConfig, k: int) -> None:
    model = build_decoder(cfg, k)
    assert model.binning == k
    if cfg.kind == "swinir":
        assert model.upsampler == ("pixelshuffle" if cfg is SWIN_PS else "pixelshuffledirect")
    for n in (32 // k, 3):  # N = 32, and a side that is no multiple of the window / 2**depth
        y = model(torch.rand(2, n, n))
        assert y.shape == (2, n * k, n * k) and y.dtype == torch.float32
    y = model(torch.rand(1, 3, 5) * 4000)  # non-square, ADU-scale input
    assert y.shape == (1, 3 * k, 5 * k) and torch.isfinite(y).all()


@pytest.mark.parametrize("cfg", [UNET, SWIN, SWIN_PS], ids=["unet", "swinir", "swinir-ps"])
def test_gradients_reach_every_parameter(cfg: DecoderConfig) -> None:
    model = build_decoder(cfg, 4)
    target = torch.rand(2, 32, 32)
    x = torch.rand(2, 8, 8, requires_grad=True)
    # one step first: zero-initialised residual branches pass no gradient before it
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(model(x), target).backward()
    opt.step()
    opt.zero_grad()
    x.grad = None
    torch.nn.functional.mse_loss(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", [UNET, SWIN], ids=["unet", "swinir"])
def test_overfits_one_batch(cfg: DecoderConfig) -> None:
    k = 4
    target = torch.from_numpy(generate_cells(2, 32, 1.0, seed=0))
    frames = torch.nn.functional.avg_pool2d((1 + target).unsqueeze(1), k).squeeze(1)
    frames = (frames - frames.mean()) / frames.std()  # DMicroModel's fixed standardisation
    model = build_decoder(cfg, k)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(frames), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    best_constant = target.var(unbiased=False).item()  # MSE of the best flat guess
    assert losses[-1] < 0.2 * best_constant and losses[-1] < 0.2 * losses[0], losses[::8]


@pytest.mark.parametrize("cfg", [UNET, SWIN], ids=["unet", "swinir"])
def test_input_norm_fixed_keeps_contrast_per_frame_drops_it(cfg: DecoderConfig) -> None:
    """``per_frame`` (checkpoints before input_norm) is blind to gain and offset — and so to the
    contrast that carries the phase amplitude; ``fixed`` (default) sees it."""
    x = torch.rand(2, 8, 8)
    old = build_decoder(cfg.model_copy(update={"input_norm": "per_frame"}), 2).eval()
    new = build_decoder(cfg, 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(old(x), old(37.0 * x + 120.0), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(new(x), new(2 * x))


def test_bad_inputs_and_configs() -> None:
    model = build_decoder(UNET, 4)
    with pytest.raises(FrameShapeError, match="batch, height, width"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="divisible"):
        build_decoder(DecoderConfig(kind="swinir", embed_dim=20, num_heads=6), 4)
    with pytest.raises(ValueError, match="power of two"):
        UNetDecoder(3)


def test_window_attention_matches_reference() -> None:
    """SDPA-based window attention = the explicit SwinIR formula (bias + shift mask)."""
    dim, heads, w = 12, 3, 4
    att = WindowAttention(dim, w, heads)
    with torch.no_grad():
        att.bias_table.normal_()
    mask = shifted_window_mask(8, 8, w, w // 2)  # 4 windows
    x = torch.randn(2 * 4, w * w, dim)

    def reference(m: torch.Tensor | None) -> torch.Tensor:
        bn, n, c = x.shape
        q, k, v = att.qkv(x).reshape(bn, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        a = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
        a = a + att.bias_table[att.bias_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        if m is not None:
            a = (a.view(bn // 4, 4, heads, n, n) + m[None, :, None]).view(bn, heads, n, n)
        return att.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(bn, n, c))

    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(att(x, m), reference(m), atol=1e-5, rtol=1e-5)
    # the mask separates exactly the regions the cyclic shift puts into one window
    assert (mask == 0).all(dim=(1, 2))[0] and not (mask == 0).all(dim=(1, 2))[-1]


def test_parameter_counts() -> None:
    default = build_decoder(DecoderConfig(), 8)
    swin = build_decoder(DecoderConfig(kind="swinir"), 8)
    paper = SwinIRDecoder.paper(8)
    counts = {
        n: count_parameters(m) for n, m in [("unet", default), ("swin", swin), ("paper", paper)]
    }
    assert 1e6 < counts["unet"] < 1e7
    assert 1e5 < counts["swin"] < 2e6
    assert 1.1e7 < counts["paper"] < 1.3e7  # SwinIR-classical scale (~11.9 M)
    y = paper(torch.rand(1, 4, 4))  # the paper-size model runs (tiny input)
    assert y.shape == (1, 32, 32)
