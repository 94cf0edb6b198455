"""Differentiable optics (torch only): propagation, 4f encoder, SLM and sensor models,
aberrations and baseline encoders. Batch-first complex64 fields, SI units, radians."""

from dmicro_hw.optics.baselines import (
    D2NNEncoder,
    GPCEncoder,
    PlainIntensityEncoder,
    build_encoder,
    phase_contrast_filter,
)
from dmicro_hw.optics.fourier4f import (
    Encoder,
    FourierFilter,
    LFFEncoder,
    apply_4f,
    phase_to_field,
    pupil_mask,
)
from dmicro_hw.optics.propagation import angular_spectrum, fresnel
from dmicro_hw.optics.sensor import Sensor, bin_frames

__all__ = [
    "D2NNEncoder",
    "Encoder",
    "FourierFilter",
    "GPCEncoder",
    "LFFEncoder",
    "PlainIntensityEncoder",
    "Sensor",
    "angular_spectrum",
    "apply_4f",
    "bin_frames",
    "build_encoder",
    "fresnel",
    "phase_contrast_filter",
    "phase_to_field",
    "pupil_mask",
]
