"""Checkpoints: one ``torch.save`` file holding only tensors and plain Python values, so that it
loads with ``torch.load(weights_only=True)`` (no pickled objects, nothing executed on load).

Layout (format version 1)::

    {
      "format": "dmicro-hw-checkpoint",    # identifies the file
      "format_version": 1,                 # bumped on incompatible changes
      "software_version": "0.1.0",         # dmicro-hw version that wrote it
      "created_utc": "2025-01-01T12:00:00Z",
      "config": {...},        # the full TrainConfig, JSON-able (model_dump(mode="json")):
                              #   optics, sensor, slm, encoder, decoder, data (phase_max_rad), …
      "encoder_kind": "lff",
      "phase_max_rad": 3.14159,            # normalised phase 1.0 ↔ this many radians
      "field_size": 256, "binning": 8, "compression": 64,
      "encoder": {name: tensor},  # encoder state_dict (LFF: filter.amplitude_logit,
                                  #   filter.phase, filter.pupil)
      "decoder": {name: tensor},  # decoder state_dict
      "frame_norm": {"mean": float, "std": float},  # decoder input standardisation
      "metrics": {name: float},   # validation metrics at save time (may be empty)
      "training": {...} | None,   # resume state (last.pt only): stage position, epoch,
                                  #   optimizer, scheduler, RNG states, best score
    }
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import torch

from dmicro_hw import __version__
from dmicro_hw.config import TrainConfig
from dmicro_hw.errors import CheckpointError

FORMAT = "dmicro-hw-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 8 * 1024**3  # refuse absurdly large files before reading them

_REQUIRED = ("config", "encoder", "decoder", "frame_norm", "phase_max_rad")


def checkpoint_dict(
    model: torch.nn.Module,
    cfg: TrainConfig,
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint mapping for ``model`` (a :class:`~dmicro_hw.training.model.DMicroModel`)."""
    enc = model.encoder
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "software_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": cfg.model_dump(mode="json"),
        "encoder_kind": cfg.encoder.kind,
        "phase_max_rad": float(model.phase_max_rad),
        "field_size": int(enc.field_size),
        "binning": int(enc.binning),
        "compression": int(enc.compression),
        "encoder": {k: v.detach().cpu() for k, v in enc.state_dict().items()},
        "decoder": {k: v.detach().cpu() for k, v in model.decoder.state_dict().items()},
        "frame_norm": {"mean": float(model.frame_mean), "std": float(model.frame_std)},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "training": training,
    }


def save_checkpoint(
    path: Path | str,
    model: torch.nn.Module,
    cfg: TrainConfig,
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file + rename). Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    from dmicro_hw.safe_io import atomic_file

    with atomic_file(p) as f:
        torch.save(checkpoint_dict(model, cfg, metrics, training), f)
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _load_reason(e: BaseException) -> str:
    """Short reason from torch.load's (long, multi-line) error messages."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip().splitlines()
        return f"unpickling failed ({rest[0].strip() if rest else 'unknown'})"
    return _first_line(e)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read and validate a checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        CheckpointError: missing/empty/corrupt/truncated file, a file that is not a dmicro-hw
            checkpoint, a format version this software cannot read, or an invalid config.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a file (expected a .pt checkpoint from `dmicro train`)")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{p}: {size} bytes is too large for a dmicro-hw checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/zip errors
        text = str(e)
        if "Unsupported global" in text or "GLOBAL " in text:
            raise CheckpointError(
                f"{p}: refused — the file contains Python objects other than tensors and plain "
                "values (not a dmicro-hw checkpoint; loading is restricted to weights_only)"
            ) from None
        raise CheckpointError(
            f"{p}: not a readable checkpoint (corrupt or truncated file?): {_load_reason(e)}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = f"a {type(obj).__name__}" if not isinstance(obj, dict) else "a mapping without"
        raise CheckpointError(
            f"{p}: not a dmicro-hw checkpoint ({what} format={FORMAT!r}); "
            "expected a file written by `dmicro train`"
        )
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {version!r} (written by dmicro-hw "
            f"{obj.get('software_version', '?')}); this dmicro-hw {__version__} reads version "
            f"{FORMAT_VERSION} — re-train or use a matching dmicro-hw version"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"{p}: incomplete checkpoint, missing {', '.join(missing)}")
    _check_numbers(p, obj)
    obj["_path"] = str(p)
    return obj


def _check_numbers(p: Path, obj: dict[str, Any]) -> None:
    """Refuse normalisation values that would make every decoded frame NaN or garbage."""
    norm = obj.get("frame_norm")
    if not isinstance(norm, dict):
        raise CheckpointError(f"{p}: frame_norm must be a mapping with mean and std")
    for key, positive in (("mean", False), ("std", True)):
        try:
            v = float(norm.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise CheckpointError(f"{p}: frame_norm.{key} is not a number") from None
        if not math.isfinite(v) or (positive and v <= 0):
            want = "finite and > 0" if positive else "finite"
            raise CheckpointError(f"{p}: frame_norm.{key} must be {want}, got {v}")
    try:
        pm = float(obj.get("phase_max_rad"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CheckpointError(f"{p}: phase_max_rad is not a number") from None
    if not (math.isfinite(pm) and pm > 0):
        raise CheckpointError(f"{p}: phase_max_rad must be finite and > 0, got {pm}")


def _as_checkpoint(checkpoint: Path | str | dict[str, Any]) -> dict[str, Any]:
    return checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)


def checkpoint_config(checkpoint: Path | str | dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was trained with."""
    ck = _as_checkpoint(checkpoint)
    cfg = ck.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("decoder"), dict):
        if "input_norm" not in cfg["decoder"]:  # saved before the key: decoders standardised
            cfg = {**cfg, "decoder": {**cfg["decoder"], "input_norm": "per_frame"}}
        if isinstance(cfg.get("encoder"), dict) and "init" not in cfg["encoder"]:
            cfg = {**cfg, "encoder": {**cfg["encoder"], "init": "flat"}}
    try:
        return TrainConfig.model_validate(cfg)
    except Exception as e:
        raise CheckpointError(
            f"{ck.get('_path', '<checkpoint>')}: stored config is not valid for this "
            f"dmicro-hw version: {_first_line(e)}"
        ) from None


def build_model_from_checkpoint(
    checkpoint: Path | str | dict[str, Any], device: str | torch.device = "cpu"
):
    """Rebuild the trained :class:`DMicroModel` (eval mode) and its :class:`TrainConfig`.

    Returns:
        (model, train_cfg)
    """
    from dmicro_hw.training.model import DMicroModel

    ck = _as_checkpoint(checkpoint)
    where = ck.get("_path", "<checkpoint>")
    cfg = checkpoint_config(ck)
    model = DMicroModel.from_config(cfg)
    for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
        try:
            module.load_state_dict(ck[part], strict=True)
        except (RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{where}: {part} weights do not match its config: {_first_line(e)}"
            ) from None
    norm = ck["frame_norm"]
    model.frame_mean.fill_(float(norm["mean"]))
    model.frame_std.fill_(float(norm["std"]))
    model.phase_max_rad = float(ck["phase_max_rad"])
    model.to(device).eval()
    return model, cfg


def learned_filter(checkpoint: Path | str | dict[str, Any]) -> torch.Tensor:
    """The learned Fourier filter of an LFF checkpoint: centred (DC at N//2), complex64 (N, N).

    This is the ideal filter ``encoder.filter()`` (sigmoid amplitude × pupil × exp(iθ)), i.e.
    what the export maps onto the SLM — not the SLM-realised one.
    """
    from dmicro_hw.training.model import make_encoder

    ck = _as_checkpoint(checkpoint)
    where = ck.get("_path", "<checkpoint>")
    kind = ck.get("encoder_kind") or ck["config"].get("encoder", {}).get("kind")
    if kind != "lff":
        raise CheckpointError(
            f"{where}: encoder kind {kind!r} has no learned Fourier filter (only 'lff' does)"
        )
    cfg = checkpoint_config(ck)
    encoder = make_encoder(cfg)
    try:
        encoder.load_state_dict(ck["encoder"], strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{where}: encoder weights do not match its config: {_first_line(e)}"
        ) from None
    with torch.no_grad():
        return encoder.filter().detach().to(torch.complex64).cpu()
