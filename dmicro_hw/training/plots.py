"""PNG figures of a training run (matplotlib, Agg backend): the learned mask and example
reconstructions, and the figure of ``dmicro bench paper``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmicro_hw.figures import CYCLIC_CMAP, ERROR_CMAP, PHASE_CMAP, RAW_CMAP, colorbar
from dmicro_hw.figures import plt as _plt


def encoder_panels(encoder) -> list[tuple[str, np.ndarray, str]]:
    """Images describing an encoder's optics: (title, 2-D array, colormap)."""
    from dmicro_hw.optics.baselines import D2NNEncoder
    from dmicro_hw.optics.fourier4f import LFFEncoder

    with torch.no_grad():
        if isinstance(encoder, LFFEncoder):
            h = encoder.filter().cpu()
            h_name = "learned filter"
        elif isinstance(encoder, D2NNEncoder):
            return [
                (
                    f"D2NN layer {i + 1} phase (rad)",
                    torch.remainder(p, 2 * math.pi).cpu().numpy(),
                    CYCLIC_CMAP,
                )
                for i, p in enumerate(encoder.phases)
            ]
        elif hasattr(encoder, "h"):
            h = encoder.h.cpu()
            h_name = f"{type(encoder).__name__.replace('Encoder', '')} filter"
        else:
            return []
    amp = h.abs().numpy()
    phase = np.angle(h.numpy())
    phase = np.where(amp > 1e-6, phase, np.nan)
    return [
        (f"{h_name}: amplitude", amp, PHASE_CMAP),
        (f"{h_name}: phase (rad)", phase, CYCLIC_CMAP),
    ]


def save_mask_png(encoder, path: Path | str) -> Path | None:
    """Amplitude + phase of the (centred) Fourier filter, or the D2NN layers. None if the
    encoder has no mask to show."""
    panels = encoder_panels(encoder)
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (title, img, cmap) in zip(axes[0], panels):
        kw = {"vmin": -math.pi, "vmax": math.pi} if "phase" in title and "D2NN" not in title else {}
        im = ax.imshow(img, cmap=cmap, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("spatial frequency x (filter samples)", fontsize=7)
        ax.set_ylabel("spatial frequency y (filter samples)", fontsize=7)
        ax.tick_params(labelsize=6)
        colorbar(fig, im, ax, "phase (rad)" if "(rad)" in title else "amplitude transmission")
    fig.suptitle("Fourier plane (centred, DC in the middle)", fontsize=10)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def save_reconstructions_png(
    phase_rad: torch.Tensor,
    frames: torch.Tensor,
    pred_rad: torch.Tensor,
    path: Path | str,
    title: str = "",
) -> Path:
    """Rows: examples; columns: true phase, camera frame, reconstruction, |error| (rad)."""
    plt = _plt()
    n = len(phase_rad)
    vmax = float(phase_rad.max())
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
    for i in range(n):
        gt, fr, pr = phase_rad[i].cpu().numpy(), frames[i].cpu().numpy(), pred_rad[i].cpu().numpy()
        err = np.abs(pr - gt)
        rmse = float(np.sqrt(np.mean((pr - gt) ** 2)))
        cols = [
            ("true phase", gt, PHASE_CMAP, 0, vmax, "phase (rad)"),
            (f"camera frame {fr.shape[0]}×{fr.shape[1]}", fr, RAW_CMAP, None, None, "intensity"),
            (f"reconstruction, RMSE {rmse:.3f} rad", pr, PHASE_CMAP, 0, vmax, "phase (rad)"),
            ("|error|", err, ERROR_CMAP, 0, max(vmax / 4, 1e-6), "|error| (rad)"),
        ]
        for ax, (t, img, cmap, lo, hi, unit) in zip(axes[i], cols):
            im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 or "RMSE" in t:
                ax.set_title(t, fontsize=9)
            colorbar(fig, im, ax, unit)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def save_bench_figure(
    ground_truth: np.ndarray,
    recons: dict[tuple[str, int], np.ndarray],
    methods: Sequence[str],
    ratios: Sequence[int],
    scores: dict[tuple[str, int], float],
    path: Path | str,
) -> Path:
    """Rows: methods; columns: ground truth then one column per compression ratio."""
    plt = _plt()
    rows, cols = len(methods), len(ratios) + 1
    vmax = float(ground_truth.max())
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols + 0.8, 2.6 * rows), squeeze=False, layout="constrained"
    )
    for r, method in enumerate(methods):
        ax = axes[r][0]
        im = ax.imshow(ground_truth, cmap=PHASE_CMAP, vmin=0, vmax=vmax)
        ax.set_ylabel(method.upper(), fontsize=11)
        if r == 0:
            ax.set_title("ground truth", fontsize=10)
        for c, ratio in enumerate(ratios, start=1):
            ax = axes[r][c]
            img = recons.get((method, ratio))
            if img is not None:
                ax.imshow(img, cmap=PHASE_CMAP, vmin=0, vmax=vmax)
                ax.set_xlabel(f"SSIM {scores.get((method, ratio), float('nan')):.3f}", fontsize=9)
            if r == 0:
                ax.set_title(f"×{ratio}", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    colorbar(fig, im, axes.ravel().tolist(), "phase (rad)", fraction=0.025, shrink=0.8)
    fig.suptitle("Reconstructed phase (held-out cell, sensor noise on)", fontsize=11)
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
