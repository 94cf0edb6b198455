"""Decoder adaptation: make a trained checkpoint work on the calibrated rig.

Three corrections, in the order they act on a frame:

1. **Aberration pre-compensation on the SLM.** The SLM sits in the pupil plane, so the fitted
   pupil aberrations W(u) = Σ c_j Z_j(u) are cancelled by displaying H'(u) = H(u)·e^{−iW(u + t)}
   (t: fitted illumination tilt — the sample spectrum sits at u + t on the pupil). The adapted
   checkpoint stores H' as its learned filter, so ``dmicro export --checkpoint <adapted>
   --calibration <bundle>`` (the one export path, with the bundle's placement and LUT) displays
   exactly the pattern the decoder is fine-tuned on.
2. **Camera gain/offset.** A frame of the rig is G·f + O of what the nominal camera would give;
   the decoder's fixed input standardisation (``frame_norm``) absorbs this exactly
   (mean' = G·mean + (O + (G−1)·offset_adu)/(gain·photons), std' = G·std).
3. **Fine-tuning.** What cannot be undone optically (camera shift/rotation/scale, pupil shift by
   the tilt, the SLM's finite resolution, residual LUT/placement error) is learned: the decoder is
   fine-tuned (L1 on normalised phase, Adam) on frames that the *calibrated* model
   (:class:`PhysicalSystem` with the fitted mismatch, sensor noise on) makes of samples drawn
   from the checkpoint's training distribution (its data config: cells, a phantom mixture or a
   folder) through the exported pattern. Optionally captured frames of the known target are added.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmicro_hw.calibration.bundle import CalibrationBundle
from dmicro_hw.config import RigConfig, SLMModelConfig
from dmicro_hw.errors import CheckpointError
from dmicro_hw.optics.fields import unit_phasor
from dmicro_hw.optics.slm import sample_image
from dmicro_hw.optics.system import Mismatch, PhysicalSystem
from dmicro_hw.training.optim import make_adam

log = logging.getLogger(__name__)


def slm_model_config(rig: RigConfig) -> SLMModelConfig:
    return SLMModelConfig(**{k: getattr(rig.slm, k) for k in SLMModelConfig.model_fields})


def aberration_phase(system: PhysicalSystem) -> torch.Tensor:
    """Pupil aberration W at the positions the sample spectrum occupies, (N, N) float32 rad.

    Filter sample (i, j) of a trained filter acts on the spectrum component that the tilt moves
    to (i + t_y, j + t_x) of the pupil; W is interpolated there (bilinear).
    """
    n = system.optics.field_size
    with torch.no_grad():
        w = torch.einsum("j,jhw->hw", system.zernike, system.zernike_basis).to(torch.float32)
        idx = torch.arange(n, dtype=torch.float64)
        ij = torch.stack(torch.meshgrid(idx, idx, indexing="ij"), -1) + system.tilt_cycles
        return sample_image(w, ij)


def compensated_filter(h: torch.Tensor, system: PhysicalSystem) -> torch.Tensor:
    """H·e^{−iW(u+t)}: the filter to display so that the aberrated pupil applies H."""
    w = aberration_phase(system)
    return (h * unit_phasor(-w)).to(torch.complex64)


def fold_camera_into_norm(
    frame_mean: float, frame_std: float, gain: float, offset_adu: float, rig: RigConfig
) -> tuple[float, float]:
    """Decoder input standardisation that also undoes the camera gain/offset (see docstring)."""
    s = rig.sensor
    unit = s.gain_adu_per_e * s.photons_per_pixel
    mean = gain * frame_mean + (offset_adu + (gain - 1.0) * s.offset_adu) / unit
    return float(mean), float(gain * frame_std)


class CalibratedBench:
    """Frames of the calibrated model for a fixed displayed pattern (filter computed once).

    ``flat``: the bundle's per-pixel (gain, dark ADU, hot, illumination envelope) maps —
    applied to the frames so the decoder is tuned on what this bench delivers (PRNU, dark
    signal; the sample-plane envelope as a relative intensity, exact to first order).
    """

    def __init__(
        self,
        rig: RigConfig,
        mismatch: Mismatch,
        grey: np.ndarray,
        flat: tuple[np.ndarray, ...] | None = None,
    ) -> None:
        from dmicro_hw.optics.measurement import BenchMeasurement

        self.system = PhysicalSystem(rig.optics, rig.sensor, slm_model_config(rig), mismatch)
        self.optics = BenchMeasurement(self.system, torch.as_tensor(grey, dtype=torch.float32))
        self.flat = None
        if flat is not None:
            self.flat = tuple(torch.as_tensor(np.asarray(flat[i])).float() for i in (0, 1, 3))

    @torch.no_grad()
    def frames(self, phase: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw ADU frames (B, n, n) for phases (B, N, N), with sensor noise."""
        adu = self.system.frame_from_intensity(self.optics.intensity(phase), generator, True)
        if self.flat is not None:  # model frame m → G·(o + (m − o)·envelope) + D
            gain, dark, env = self.flat
            o = self.system.sensor.cfg.offset_adu
            adu = ((o + (adu - o) * env) * gain + dark).clamp(0, self.system.sensor.adc_max)
        return adu


def export_pattern(rig: RigConfig, bundle_path: Path, h: torch.Tensor) -> np.ndarray:
    """Grey levels of filter ``h`` through the one export path with the bundle's calibration."""
    from dmicro_hw.export import SLMExporter, check_calibration_for_rig, load_slm_calibration

    cal = load_slm_calibration(bundle_path)
    check_calibration_for_rig(cal, rig)
    return SLMExporter(rig.optics, slm_model_config(rig), cal).export_array(h)


ADAPT_METRIC = "adapt_l1_final"  # recorded by adapt_checkpoint; marks an adapted checkpoint


def was_adapted(ck: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint was written by :func:`adapt_checkpoint`."""
    return ADAPT_METRIC in (ck.get("metrics") or {})


def is_adapted(checkpoint: Path | str) -> bool:
    """Whether ``checkpoint`` was written by :func:`adapt_checkpoint` (filter pre-compensated,
    camera gain/offset folded into the decoder's input standardisation)."""
    from dmicro_hw.calibration.bundle import ADAPTED_CHECKPOINT
    from dmicro_hw.training.checkpoint import load_checkpoint

    if Path(checkpoint).name == ADAPTED_CHECKPOINT:
        return True
    return was_adapted(load_checkpoint(checkpoint))


def adapt_checkpoint(
    checkpoint: Path | str,
    rig: RigConfig,
    bundle: CalibrationBundle,
    out_path: Path | str,
    steps: int = 400,
    batch: int = 8,
    lr: float = 5e-4,
    seed: int = 0,
    n_cells: int = 256,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Write an adapted checkpoint (compensated filter, folded camera norm, fine-tuned decoder).

    Returns a summary dict (loss before/after, steps, the pattern's SHA-256 and paths).
    """
    from dmicro_hw.data.datasets import draw_samples
    from dmicro_hw.export import sha256_pattern
    from dmicro_hw.training.checkpoint import (
        build_model_from_checkpoint,
        learned_filter,
        load_checkpoint,
        save_checkpoint,
    )

    if bundle.path is None:
        raise CheckpointError("adapt: the calibration bundle must be written to disk first")
    ck = load_checkpoint(checkpoint)
    if was_adapted(ck):
        # its filter is already pre-compensated for one rig: adapting again would compensate twice
        raise CheckpointError(
            f"{checkpoint}: already adapted to a calibration; adapt the trained checkpoint "
            "(from `dmicro train`) instead"
        )
    if ck.get("encoder_kind") != "lff":
        raise CheckpointError(f"{checkpoint}: only an LFF checkpoint has a filter to display")
    model, cfg = build_model_from_checkpoint(ck)
    if cfg.optics.field_size != rig.optics.field_size or cfg.optics.binning != rig.optics.binning:
        raise CheckpointError(
            f"{checkpoint}: trained for N={cfg.optics.field_size}, ×{cfg.optics.compression}; "
            f"the rig is N={rig.optics.field_size}, ×{rig.optics.compression}"
        )
    mm = bundle.mismatch
    bench = CalibratedBench(rig, mm, np.zeros(tuple(rig.slm.pixels), np.uint8))
    h = compensated_filter(learned_filter(ck), bench.system)
    grey = export_pattern(rig, bundle.path, h)
    bench = CalibratedBench(rig, mm, grey, bundle.flat)

    # 1. store the compensated filter's phase (amplitude unchanged) in the encoder
    with torch.no_grad():
        model.encoder.filter.phase.copy_(torch.angle(h).float())
    # 2. fold the camera gain/offset into the decoder's input standardisation
    mean, std = fold_camera_into_norm(
        float(model.frame_mean), float(model.frame_std), mm.camera_gain, mm.camera_offset_adu, rig
    )
    model.frame_mean.fill_(mean)
    model.frame_std.fill_(std)

    # 3. fine-tune the decoder on the calibrated model's frames
    gen = torch.Generator().manual_seed(int(seed))
    n = rig.optics.field_size
    # the distribution the decoder was trained on (cells, a mixture, a folder), never its samples
    data = cfg.data
    if data.kind != "folder":
        data = data.model_copy(update={"seed": data.seed + seed + 7919})
    samples = draw_samples(data, n, n_cells, stream=5)
    decoder = model.decoder
    decoder.train()
    for p in decoder.parameters():
        p.requires_grad_(True)
    opt = make_adam(decoder.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    losses = []
    for step in range(int(steps)):
        idx = torch.randint(0, n_cells, (batch,), generator=gen)
        phi = samples[idx]
        k = int(torch.randint(0, 4, (), generator=gen))
        phi = torch.rot90(phi, k, dims=(-2, -1)).contiguous()
        adu = bench.frames(phi, gen)
        pred = model.decode_adu(adu)
        loss = torch.nn.functional.l1_loss(pred, model.normalised_target(phi))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(step, losses[-1])
    decoder.eval()
    out = save_checkpoint(
        out_path,
        model,
        cfg,
        metrics={ADAPT_METRIC: float(np.mean(losses[-10:])) if losses else math.nan},
    )
    first = float(np.mean(losses[:10])) if losses else math.nan
    last = float(np.mean(losses[-10:])) if losses else math.nan
    return {
        "checkpoint": str(out),
        "source_checkpoint": str(checkpoint),
        "steps": int(steps),
        "l1_first": first,
        "l1_last": last,
        "pattern_sha256": sha256_pattern(grey),
        "summary": (
            f"decoder fine-tuned {steps} steps: L1 {first:.4f} → {last:.4f}; {Path(out).name}"
        ),
    }
