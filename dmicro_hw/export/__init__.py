"""THE one path from a trained Fourier filter to SLM pixels — deployment and training share it.

Package layout: :mod:`.exporter` (the steps, :class:`SLMExporter`, the training transform,
:func:`export_filter`), :mod:`.files` (pattern files and hashes); the calibration file format is
:mod:`dmicro_hw.calibration.bundle`'s; checkpoint → pattern files is the ``dmicro export``
command (:mod:`dmicro_hw.commands.export`).

    centred filter H (N, N) complex64, filter grid of pitch p_f = λ f / (N dx M)
      1. resample + place   every SLM pixel (r, c) → filter coordinates (i, j) through
                            :class:`~dmicro_hw.optics.slm.SLMGeometry` (pitch ratio p_f/p_s,
                            calibrated offset / rotation / scale); H is sampled there
                            (``nearest`` by default, ``bilinear`` optional; both differentiable)
      2. encode             phase-only SLM: ``phase`` mode keeps arg H (amplitude dropped);
                            ``amplitude_phase`` mode encodes |H| by the double-phase checkerboard
                            φ = arg H ± arccos |H| (sign (−1)^(r+c) in absolute SLM pixels)
      3. wrap               φ mod 2π ∈ [0, 2π), after a global phase ψ (no effect on any image)
                            that puts the wrap where H has the least phase content — pixel
                            crosstalk across a wrap (0.05 | 6.23 rad) averages to the opposite
                            phase, so a filter clustered around 0 must not straddle it
      4. inverse LUT        radians → fractional grey level by inverting the monotone phase table
                            (measured LUT from the calibration, else the rig's ``slm.lut``, else
                            linear over ``slm.phase_range_rad``)
      5. quantise           round to the bit depth; straight-through estimator for the gradient
    → grey levels (R, C), uint8 (≤ 8 bit) or uint16 (9–16 bit), values 0 … 2^bits − 1

and back (realisation): grey → :class:`~dmicro_hw.optics.slm.SLMModel` (LUT, fringing, fill
factor, area average over each filter sample) × pupil → the filter the bench really applies.
:class:`SLMExporter` ``(H) -> realised H`` chains both and is differentiable in H: hardware-aware
training (``encoder.hardware_aware: true``) optimises exactly what ``dmicro export`` displays.

Why the double-phase checkerboard for amplitude. SLMModel (like the optics it models) applies to
each filter sample the *area average* of the SLM reflectance over the sample's footprint
(p_f/p_s ≈ 3.7 SLM pixels on the default rig): a checkerboard of θ + d and θ − d averages to
cos(d)·e^{iθ} = |H|·e^{iθ}, and the light it removes goes to the highest spatial frequency the SLM
makes (far outside the image field). A blazed carrier needs several pixels per period inside the
footprint and averages worse; measured numbers are in the README's Export section.

Phase conventions: the LUT is used relative to its first entry (a global phase offset of the SLM
does not change any image), phases beyond a LUT range shorter than 2π go to the cyclically nearest
end of the table. Pattern files: ``pattern.npy`` (the grey levels), ``pattern.png`` (8-bit, or
16-bit holding the raw grey levels for deeper SLMs, not rescaled) and ``pattern.json`` (sidecar:
shape, bit depth, mode, wavelength, pitch, SHA-256 of checkpoint / calibration / pattern, software
version, rig id). :func:`load_pattern` verifies the hashes and refuses a pattern made for another
rig.
"""

from dmicro_hw.calibration.bundle import (  # the calibration file format lives with the bundle
    CALIBRATION_FILE,
    LUT_FILE,
    MAX_CALIBRATION_JSON_BYTES,
    WAVELENGTH_RTOL,
    SLMCalibration,
    check_calibration_for_rig,
    check_calibration_identity,
    load_slm_calibration,
    read_calibration_json,
)
from dmicro_hw.export.exporter import (
    ENCODING,
    MODES,
    PAIR_GUARD_BELOW_GAIN,
    TWO_PI,
    ExportResult,
    Mode,
    Sampling,
    SLMExporter,
    checkerboard,
    checkerboard_gain,
    encode_phase_only,
    export_filter,
    export_in_the_loop,
    filter_correlation,
    filter_window,
    lut_table,
    resample_lut,
    resample_to_slm,
    safe_polar_parts,
    seam_phase_offset,
    slm_pixel_coords,
    training_filter_transform,
)
from dmicro_hw.export.files import (
    MAX_PATTERN_BYTES,
    PATTERN_FORMAT,
    PATTERN_FORMAT_VERSION,
    ExportedPattern,
    check_pattern_for_rig,
    load_pattern,
    png_bytes,
    read_png,
    sha256_file,
    sha256_pattern,
    write_pattern,
    write_png,
)
from dmicro_hw.optics.slm_grey import (
    inverse_lut,
    pattern_array,
    quantise,
    validate_monotone_table,
    wrap_phase,
)

__all__ = [
    "CALIBRATION_FILE", "ENCODING", "LUT_FILE", "MAX_CALIBRATION_JSON_BYTES", "MAX_PATTERN_BYTES",
    "MODES", "PAIR_GUARD_BELOW_GAIN", "PATTERN_FORMAT", "PATTERN_FORMAT_VERSION", "TWO_PI",
    "WAVELENGTH_RTOL", "ExportResult", "ExportedPattern", "Mode", "SLMCalibration", "SLMExporter",
    "Sampling", "check_calibration_for_rig", "check_calibration_identity", "check_pattern_for_rig",
    "checkerboard", "checkerboard_gain", "encode_phase_only", "export_filter",
    "export_in_the_loop", "filter_correlation", "filter_window", "inverse_lut",
    "load_pattern", "load_slm_calibration", "lut_table", "pattern_array", "png_bytes",
    "quantise", "read_calibration_json", "read_png", "resample_lut", "resample_to_slm",
    "safe_polar_parts", "seam_phase_offset", "sha256_file", "sha256_pattern", "slm_pixel_coords",
    "training_filter_transform", "validate_monotone_table", "wrap_phase", "write_pattern",
    "write_png",
]  # fmt: skip
