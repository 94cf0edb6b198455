"""The trainable system: optical encoder + electronic decoder.

    phase φ (B, N, N) rad ─ encoder (4f filter / baseline optics + sensor) ─ frame (B, N/k, N/k)
      ─ input standardisation (fixed dataset statistics) ─ decoder ─ φ̂ / φ_max (B, N, N) in [0, 1]

The target of the decoder is the phase normalised by the dataset's ``phase_max_rad`` (the paper
normalises by 2π; normalising by the dataset's own maximum keeps the full [0, 1] range in use).

The frame fed to the decoder is standardised with a *fixed* mean and standard deviation measured
once on training frames (:meth:`DMicroModel.calibrate_input`), not per frame: per-frame
standardisation would throw away the contrast amplitude, which is what carries the phase
amplitude (e.g. I ≈ 1 + 2φ for phase contrast). The statistics are part of the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from dmicro_hw.config import TrainConfig
from dmicro_hw.errors import ConfigError
from dmicro_hw.optics.baselines import build_encoder
from dmicro_hw.optics.fourier4f import Encoder
from dmicro_hw.training import metrics as M


def make_encoder(cfg: TrainConfig) -> Encoder:
    """The optical encoder a :class:`TrainConfig` describes (optics, sensor, encoder sections).

    Hook for hardware-aware training: when ``cfg.encoder.hardware_aware`` is set, the LFF
    encoder's ideal filter is passed through a ``filter_transform`` (the SLM model / export path)
    so that training optimises what the SLM really displays. The transform is built by
    :func:`hardware_filter_transform`.
    """
    kwargs = {}
    if cfg.encoder.hardware_aware:
        if cfg.encoder.kind != "lff":
            raise ConfigError(
                f"encoder.hardware_aware: only the 'lff' encoder is displayed on the SLM "
                f"(got encoder.kind={cfg.encoder.kind!r})"
            )
        kwargs["filter_transform"] = hardware_filter_transform(cfg)
    return build_encoder(cfg.encoder, cfg.optics, cfg.sensor, **kwargs)


def hardware_filter_transform(cfg: TrainConfig):
    """Filter transform (ideal centred filter → filter the SLM realises) for hardware-aware
    training. Provided by :mod:`dmicro_hw.export` (export-in-the-loop)."""
    try:
        from dmicro_hw.export import training_filter_transform  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(
            "encoder.hardware_aware: export-in-the-loop is not available in this installation "
            "(dmicro_hw.export.training_filter_transform missing)"
        ) from None
    return training_filter_transform(cfg)


def make_decoder(cfg: TrainConfig) -> nn.Module:
    """The decoder network: (B, N/k, N/k) standardised frame → (B, N, N) in [0, 1]."""
    from dmicro_hw.models import build_decoder

    return build_decoder(cfg.decoder, cfg.optics.binning)


class DMicroModel(nn.Module):
    """Encoder + decoder. ``forward(phase_rad) -> (frame, predicted normalised phase)``.

    Attributes:
        encoder: optical encoder (``field_size``, ``binning``, ``compression``).
        decoder: network mapping a standardised frame to normalised phase.
        phase_max_rad: phase that maps to 1.0 in the normalised target/prediction.
        frame_mean, frame_std: buffers, the fixed input standardisation of the decoder.
    """

    def __init__(self, encoder: Encoder, decoder: nn.Module, phase_max_rad: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.phase_max_rad = float(phase_max_rad)
        self._optics_names = [n for n, p in encoder.named_parameters() if p.requires_grad]
        self.register_buffer("frame_mean", torch.tensor(0.0))
        self.register_buffer("frame_std", torch.tensor(1.0))

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> DMicroModel:
        return cls(make_encoder(cfg), make_decoder(cfg), cfg.data.phase_max_rad)

    # -- parts ------------------------------------------------------------------------------
    @property
    def has_optics_params(self) -> bool:
        """Whether the encoder has trainable optics (LFF filter, D2NN layers)."""
        return bool(self._optics_names)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The encoder's learnable parameters (those trainable when the model was built; the
        stages toggle ``requires_grad`` afterwards)."""
        named = dict(self.encoder.named_parameters())
        return [named[n] for n in self._optics_names]

    def normalised_target(self, phase_rad: torch.Tensor) -> torch.Tensor:
        """Phase (rad) → training target in [0, 1]."""
        return M.normalise_phase(phase_rad, self.phase_max_rad)

    def to_radians(self, normalised: torch.Tensor) -> torch.Tensor:
        """Normalised phase (decoder output) → radians, clamped to [0, phase_max_rad]."""
        return M.denormalise_phase(normalised, self.phase_max_rad)

    # -- forward ----------------------------------------------------------------------------
    def encode(self, phase_rad: torch.Tensor, generator: torch.Generator | None = None):
        """Phase (B, N, N) rad → frame (B, N/k, N/k) in intensity units (clear field ≈ 1)."""
        return self.encoder(phase_rad, generator=generator)

    def decode(self, frame: torch.Tensor) -> torch.Tensor:
        """Frame (B, N/k, N/k) in intensity units → normalised phase (B, N, N) in [0, 1]."""
        x = (frame - self.frame_mean) / self.frame_std
        return self.decoder(x)

    def decode_adu(self, adu: torch.Tensor) -> torch.Tensor:
        """Raw camera ADU (B, N/k, N/k) → normalised phase (B, N, N) (sensor.normalise first)."""
        return self.decode(self.encoder.sensor.normalise(adu.to(torch.float32)))

    def forward(
        self, phase_rad: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        frame = self.encode(phase_rad, generator)
        return frame, self.decode(frame)

    @torch.no_grad()
    def calibrate_input(self, frames: torch.Tensor) -> None:
        """Set the decoder's fixed input standardisation from training frames (B, h, w)."""
        mean = frames.mean()
        std = frames.std().clamp_min(1e-6)
        self.frame_mean.copy_(mean)
        self.frame_std.copy_(std)
