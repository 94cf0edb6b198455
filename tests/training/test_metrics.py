"""Metrics against scikit-image, and the training losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dmicro_hw.data.phantoms import generate_cells, phase_target
from dmicro_hw.training import metrics as M


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cells = generate_cells(3, 48, 1.0, seed=2).astype(np.float64)
    target = phase_target(64, "resolution", 1.0).astype(np.float64)
    blurred = 0.25 * (np.roll(target, 1, 0) + np.roll(target, -1, 0) + np.roll(target, 1, 1))
    return [
        (rng.random((32, 32)), rng.random((32, 32))),  # unrelated noise
        (rng.random((40, 56)), rng.random((40, 56))),  # non-square
        (cells[0], np.clip(cells[0] + 0.05 * rng.standard_normal((48, 48)), 0, 1)),  # noisy
        (cells[1], cells[2]),  # different cells
        (target, np.clip(blurred + 0.25 * target, 0, 1)),  # blurred target
        (cells[0], cells[0]),  # identical → 1
    ]


def test_ssim_matches_scikit_image() -> None:
    for a, b in _pairs():
        ours = float(M.ssim(torch.from_numpy(b), torch.from_numpy(a)).item())
        assert ours == pytest.approx(_sk_ssim(a, b), abs=1e-7)


def test_batched_ssim_and_float32_and_reduction() -> None:
    pairs = [p for p in _pairs() if p[0].shape == (48, 48)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    per = M.ssim(b.float(), a.float())
    assert per.shape == (len(pairs),) and per.dtype == torch.float64
    expected = [_sk_ssim(x, y) for x, y in pairs]
    np.testing.assert_allclose(per.numpy(), expected, atol=1e-6)  # float32 inputs
    assert float(M.ssim(b, a, reduction="mean")) == pytest.approx(np.mean(expected), abs=1e-7)


def test_psnr_and_rmse() -> None:
    for a, b in _pairs()[:-1]:
        ours = float(M.psnr(torch.from_numpy(b), torch.from_numpy(a)).item())
        assert ours == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)
    x = torch.zeros(2, 16, 16)
    assert torch.isinf(M.psnr(x, x)).all()
    y = torch.full((2, 16, 16), 0.1)
    assert M.psnr(y, x).tolist() == pytest.approx([20.0, 20.0])
    # clamping of the prediction (decoder outputs are not clamped)
    assert float(M.psnr(torch.full((16, 16), 2.0), torch.ones(16, 16))) == math.inf
    assert float(M.psnr(torch.full((16, 16), 2.0), torch.ones(16, 16), clamp=False)) == 0.0
    # RMSE in radians
    assert M.phase_rmse(y * math.pi, x).tolist() == pytest.approx([0.1 * math.pi] * 2)
    assert M.rmse_rad(y, x, 2 * math.pi, reduction="mean").item() == pytest.approx(0.2 * math.pi)
    m = M.phase_metrics(y, x, math.pi)
    assert set(m) == {"psnr", "ssim", "rmse_rad"} and m["psnr"] == pytest.approx(20.0)


def test_normalise_roundtrip() -> None:
    phi = torch.tensor([[-0.1, 0.0, 1.0, 2.0, 7.0]])
    y = M.normalise_phase(phi, 2.0)
    assert y.tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0]]
    assert M.normalise_phase(phi, 2.0, clamp=False).tolist()[0][-1] == 3.5
    assert M.denormalise_phase(torch.tensor([-1.0, 0.25, 3.0]), 4.0).tolist() == [0.0, 1.0, 4.0]


def test_losses_are_differentiable_and_consistent() -> None:
    torch.manual_seed(0)
    t = torch.from_numpy(generate_cells(2, 32, 1.0, seed=1))
    p = (t + 0.1 * torch.randn_like(t)).requires_grad_(True)
    loss = M.ssim_l1_loss(p, t)
    loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    s = float(M.ssim(p, t, reduction="mean", clamp=False))
    l1 = float((p.detach() - t).abs().mean())
    assert float(loss.detach()) == pytest.approx(0.84 * (1 - s) + 0.16 * l1, abs=1e-5)
    assert float(M.ssim_l1_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    for name in ("l1", "mse", "ssim_l1"):
        assert float(M.make_loss(name)(t, t)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        M.make_loss("l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="11"):
        M.ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))


def test_float32_metrics_match_float64_to_scoring_precision() -> None:
    """Scoring whole runs computes in float32 (the cost there); values stay within 1e-4."""
    for a, b in _pairs()[:-1]:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        s32 = M.ssim(tb, ta, dtype=torch.float32)
        assert s32.dtype == torch.float32
        assert float(s32) == pytest.approx(_sk_ssim(a, b), abs=1e-4)
        assert float(M.psnr(tb, ta, dtype=torch.float32)) == pytest.approx(
            peak_signal_noise_ratio(a, np.clip(b, 0, 1), data_range=1.0), abs=1e-3
        )
        assert float(M.rmse_rad(tb, ta, 2.0, dtype=torch.float32)) == pytest.approx(
            float(M.rmse_rad(tb, ta, 2.0)), rel=1e-5
        )
