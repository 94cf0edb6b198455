"""Configuration models for ``train.yaml`` and ``rig.yaml``.

Files are read with :func:`yaml.safe_load` and validated by pydantic. Unknown keys are errors.
An invalid file raises :class:`~dmicro_hw.errors.ConfigError` with one readable message naming the
file, the key and what is allowed; the CLI prints it without a traceback.

Units are SI with explicit suffixes (``wavelength_m``, ``pitch_m``, ``exposure_s``); phases are in
radians. Relative paths inside a config file are resolved against the file's own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dmicro_hw.errors import ConfigError

COMPRESSIONS = (4, 16, 64, 256)


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are rejected, values are re-validated on set,
    and no float may be NaN or ±inf (``.inf`` photons or phase would give garbage frames, an
    infinite duration a run that never ends)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------------------------


class OpticsConfig(StrictModel):
    """The simulated 4f system (paper defaults: 256×256 field, 316.4 nm pixels, λ = 632.8 nm)."""

    field_size: int = Field(256, ge=16, le=4096, description="N: field is N×N samples")
    pixel_size_m: float = Field(316.4e-9, gt=0, lt=1e-3, description="sample pitch, object plane")
    wavelength_m: float = Field(632.8e-9, gt=100e-9, lt=2e-6)
    magnification: float = Field(
        40.0, gt=0, le=1000, description="objective magnification onto the 4f relay's input"
    )
    focal_length_m: float = Field(0.15, gt=0, lt=10, description="4f relay lens focal length")
    pupil_radius: float = Field(
        1.0, gt=0, le=1.5, description="circular pupil radius as a fraction of N/2"
    )
    compression: Literal[4, 16, 64, 256] = Field(64, description="pixel-count ratio k² (k×k bins)")

    @property
    def binning(self) -> int:
        """k: side of the k×k sensor bin (compression = k²)."""
        return int(round(self.compression**0.5))

    @property
    def fourier_pitch_m(self) -> float:
        """Sample pitch of the filter in the physical Fourier plane: λ f / (N · dx · M)."""
        image_pitch = self.pixel_size_m * self.magnification
        return self.wavelength_m * self.focal_length_m / (self.field_size * image_pitch)

    @model_validator(mode="after")
    def _divisible(self) -> OpticsConfig:
        if self.field_size % self.binning:
            raise ValueError(
                f"field_size {self.field_size} must be divisible by the bin size "
                f"{self.binning} (compression {self.compression})"
            )
        return self


class SensorConfig(StrictModel):
    """Camera sensor model: photon budget, noise, gain/offset, ADC."""

    noise: bool = Field(True, description="Poisson shot noise + Gaussian read noise on/off")
    photons_per_pixel: float = Field(
        1000.0,
        gt=0,
        le=1e9,
        description="mean photo-electrons per *binned* pixel for unit intensity",
    )
    exposure_s: float = Field(1e-3, gt=0, le=10)
    read_noise_e: float = Field(2.0, ge=0, le=1e4)
    gain_adu_per_e: float = Field(0.05, gt=0, le=1e4)
    offset_adu: float = Field(10.0, ge=0, le=65535)
    bit_depth: int = Field(12, ge=8, le=16)
    full_well_e: float = Field(80000.0, gt=0, le=1e9)


class SLMModelConfig(StrictModel):
    """Physical SLM description used by the SLM model, the export and the drivers."""

    pixels: tuple[int, int] = Field((1080, 1920), description="(rows, cols)")
    pitch_m: float = Field(8e-6, gt=0, lt=1e-3)
    bit_depth: int = Field(8, ge=1, le=16)
    mode: Literal["phase", "amplitude_phase"] = Field(
        "phase",
        description="export of the complex filter to this phase SLM: 'phase' displays arg H "
        "(amplitude dropped); 'amplitude_phase' also encodes |H| (double-phase checkerboard)",
    )
    fill_factor: float = Field(0.95, gt=0, le=1)
    fringing_px: float = Field(0.0, ge=0, le=5, description="crosstalk blur sigma in SLM pixels")
    phase_range_rad: float = Field(6.283185307179586, gt=0, le=20, description="LUT full scale")
    lut: Path | None = Field(None, description="measured LUT (.npy grey→rad); None = linear")
    settle_time_s: float = Field(0.05, ge=0, le=5)

    @field_validator("pixels")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1 or max(v) > 16384:
            raise ValueError("pixels must be two integers between 1 and 16384")
        return v


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _check_family(family: str, options: dict[str, Any]) -> None:
    from dmicro_hw.data.families import check_knobs

    check_knobs(family, options)


class SyntheticDataConfig(StrictModel):
    """One phantom family; every sample spans exactly [0, phase_max_rad]."""

    kind: Literal["synthetic"] = "synthetic"
    family: str = Field("cells", description="phantom family (dmicro_hw.data.families)")
    options: dict[str, Any] = Field(default_factory=dict, description="the family's knobs")
    n_train: int = Field(512, ge=1)
    n_val: int = Field(64, ge=1)
    n_test: int = Field(64, ge=1)
    phase_max_rad: float = Field(3.141592653589793, gt=0, le=6.283185307179586)
    seed: int = 0

    @model_validator(mode="after")
    def _family(self) -> SyntheticDataConfig:
        _check_family(self.family, self.options)
        return self


class MixtureComponent(StrictModel):
    """One ingredient of a mixture: a phantom family (with knobs) or a user folder."""

    family: str | None = Field(None, description="phantom family name")
    folder: Path | None = Field(None, description="folder of phase maps (as data.kind: folder)")
    weight: float = Field(1.0, gt=0, le=1e6, description="relative frequency")
    options: dict[str, Any] = Field(default_factory=dict, description="the family's knobs")
    content: Literal["phase", "complex", "auto"] = "auto"
    key: str | None = None
    rescale: Literal["relative", "none"] = Field(
        "relative",
        description="folder maps: 'relative' (min-max, then the mixture's peak/background "
        "draws) or 'none' (radians, used as they are; must lie in [0, phase_max_rad])",
    )

    @model_validator(mode="after")
    def _one_source(self) -> MixtureComponent:
        if (self.family is None) == (self.folder is None):
            raise ValueError("give exactly one of 'family' or 'folder'")
        if self.family is not None:
            _check_family(self.family, self.options)
        elif self.options:
            raise ValueError("'options' are knobs of a family, not of a folder")
        return self


def _default_components() -> list[MixtureComponent]:
    from dmicro_hw.data.families import FAMILY_NAMES

    return [MixtureComponent(family=f, weight=2.0 if f == "cells" else 1.0) for f in FAMILY_NAMES]


class MixtureDataConfig(StrictModel):
    """A weighted mixture of phantom families and user folders (see dmicro_hw.data.mixture).

    Each sample: a component drawn by weight (sometimes two overlaid), a random rotation/flip, a
    peak phase drawn from ``peak_fraction`` × phase_max_rad, sometimes inverted (objects below a
    background) or on a smooth background; the minimum of every field is the phase reference 0.
    """

    kind: Literal["mixture"] = "mixture"
    components: list[MixtureComponent] = Field(default_factory=_default_components, min_length=1)
    n_train: int = Field(2048, ge=1)
    n_val: int = Field(64, ge=1)
    n_test: int = Field(64, ge=1)
    phase_max_rad: float = Field(3.141592653589793, gt=0, le=6.283185307179586)
    seed: int = 0
    peak_fraction: tuple[float, float] = Field(
        (0.1, 1.0), description="peak phase of a sample as a fraction of phase_max_rad"
    )
    overlay_probability: float = Field(0.2, ge=0, le=1, description="two components summed")
    invert_probability: float = Field(0.1, ge=0, le=1, description="objects below background")
    background_probability: float = Field(0.3, ge=0, le=1, description="smooth background")
    background_fraction: float = Field(
        0.3, ge=0, le=1, description="largest background swing, fraction of the sample's peak"
    )

    @field_validator("peak_fraction")
    @classmethod
    def _fraction(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1] <= 1):
            raise ValueError("peak_fraction must be [lo, hi] with 0 < lo ≤ hi ≤ 1")
        return v


class FolderDataConfig(StrictModel):
    kind: Literal["folder"] = "folder"
    path: Path
    content: Literal["phase", "complex", "auto"] = "auto"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    phase_max_rad: float = Field(6.283185307179586, gt=0, le=1000)
    seed: int = 0
    rescale: Literal["sample", "dataset", "none"] = Field(
        "sample",
        description="map phase to [0, phase_max_rad]: min-max per sample, min-max over the "
        "whole folder, or none (values must already lie in [0, phase_max_rad])",
    )
    key: str | None = Field(
        None, description="array name inside .mat/.h5/.npz files; default: first 2-D/3-D array"
    )


DataConfigAny = SyntheticDataConfig | FolderDataConfig | MixtureDataConfig


class DecoderConfig(StrictModel):
    kind: Literal["unet", "swinir"] = "unet"
    input_norm: Literal["fixed", "per_frame"] = Field(
        "fixed",
        description="'fixed': frames keep their contrast (only the model's fixed training "
        "statistics are applied), so the phase amplitude is measured; 'per_frame': every frame "
        "is standardised on its own (checkpoints before this key: the amplitude is lost and "
        "the decoder guesses it from the shape)",
    )
    base_channels: int = Field(32, ge=4, le=512)
    depth: int = Field(3, ge=1, le=6)
    head_shuffle: int = Field(
        1,
        ge=1,
        le=64,
        description="unet output head: 1 = conv to 1 channel at full resolution (checkpoints "
        "before this key); r > 1 (power of two ≤ the binning) = sub-pixel head, conv to r² "
        "channels at N/r then PixelShuffle(r), so no convolution runs at full size",
    )
    # SwinIR-style options (paper: embed 180, 6 groups × 6 blocks, window 8)
    embed_dim: int = Field(60, ge=8, le=512)
    num_groups: int = Field(2, ge=1, le=12)
    blocks_per_group: int = Field(2, ge=1, le=12)
    window_size: int = Field(8, ge=2, le=32)
    num_heads: int = Field(6, ge=1, le=32)
    upsampler: Literal["auto", "pixelshuffle", "pixelshuffledirect"] = Field(
        "auto",
        description="swinir up-sampler: pixelshuffle (SwinIR classical: conv + log2(k) × "
        "[conv, PixelShuffle(2)], 64 ch), pixelshuffledirect (SwinIR lightweight: one conv "
        "+ PixelShuffle(k)); auto = direct when embed_dim < 96",
    )


class StageConfig(StrictModel):
    """One training stage of the paper's recipe."""

    name: Literal["optics", "decoder", "joint"]
    epochs: int = Field(1, ge=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(8, ge=1)
    loss: Literal["l1", "ssim_l1", "mse"] = "l1"


class EncoderConfig(StrictModel):
    kind: Literal["lff", "gpc", "plain", "d2nn"] = "lff"
    d2nn_layers: int = Field(3, ge=1, le=10)
    d2nn_distance_m: float = Field(5e-6, gt=0, le=1)
    init: Literal["gpc", "flat"] = Field(
        "gpc",
        description="LFF start: 'gpc' (phase contrast, π/2 on the DC, as the GPC baseline) or "
        "'flat' (clear aperture, bright field)",
    )
    hardware_aware: bool = Field(
        False, description="train through the SLM model and the export (export-in-the-loop)"
    )


class TrainConfig(StrictModel):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: Path = Path("runs/train")
    optics: OpticsConfig = OpticsConfig()
    sensor: SensorConfig = SensorConfig()
    slm: SLMModelConfig | None = None
    encoder: EncoderConfig = EncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    data: DataConfigAny = Field(default_factory=SyntheticDataConfig, discriminator="kind")
    stages: list[StageConfig] = Field(
        default_factory=lambda: [
            StageConfig(name="optics", epochs=2, lr=1e-2),
            StageConfig(name="decoder", epochs=4, lr=1e-3),
            StageConfig(name="joint", epochs=2, lr=2e-4, loss="ssim_l1"),
        ]
    )


# --------------------------------------------------------------------------------------------
# Rig (devices, simulators, acquisition). Backend-specific options are validated by the backend.
# --------------------------------------------------------------------------------------------


class SLMDeviceConfig(SLMModelConfig):
    backend: str = Field("sim", description="registry name: sim | screen | slmpy | <plugin>")
    monitor: int = Field(1, ge=0, description="screen backend: monitor/screen index")
    display: str | None = Field(None, description="X display for the screen backend, e.g. ':0'")
    options: dict[str, Any] = Field(default_factory=dict)


class CameraDeviceConfig(StrictModel):
    backend: str = Field("sim", description="registry name: sim | genicam | replay | <plugin>")
    cti: Path | None = Field(None, description="GenTL producer; default: GENICAM_GENTL64_PATH")
    device: str | None = Field(None, description="serial number, model or id to pick")
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    offset_x: int = Field(0, ge=0)
    offset_y: int = Field(0, ge=0)
    binning: int = Field(1, ge=1, le=16)
    pixel_format: str = "Mono8"
    exposure_s: float | None = Field(None, gt=0, le=10)
    frame_rate_hz: float | None = Field(None, gt=0, le=100000)
    fetch_timeout_s: float = Field(2.0, gt=0, le=60)
    replay_path: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class TriggerDeviceConfig(StrictModel):
    backend: str = Field("none", description="registry name: none | sim | serial | <plugin>")
    port: str | None = Field(None, description="serial port, e.g. /dev/ttyUSB0")
    baudrate: int = Field(115200, ge=300, le=4_000_000)
    timeout_s: float = Field(1.0, gt=0, le=60)
    rate_hz: float = Field(100.0, gt=0, le=100000)
    options: dict[str, Any] = Field(default_factory=dict)


class FaultsConfig(StrictModel):
    """Simulated device faults (reliability tests)."""

    drop_probability: float = Field(0.0, ge=0, le=1)
    late_probability: float = Field(0.0, ge=0, le=1)
    late_s: float = Field(0.05, ge=0, le=60)
    timeout_at_frame: int | None = Field(None, ge=0)
    disconnect_at_frame: int | None = Field(None, ge=0)
    saturate_probability: float = Field(0.0, ge=0, le=1)
    garble_probability: float = Field(0.0, ge=0, le=1, description="serial line corruption")
    seed: int = 0


class MismatchConfig(StrictModel):
    """How the virtual bench draws its hidden optics mismatch (values stay hidden)."""

    enabled: bool = True
    seed: int = 1234
    scale: float = Field(1.0, ge=0, le=5, description="multiplies every mismatch magnitude")


REALISM_EFFECTS = (
    "illumination",
    "stray_light",
    "slm_pixel_response",
    "lut_drift",
    "flicker",
    "high_zernike",
    "fixed_pattern",
    "focal_length",
    "partial_coherence",
)


class RealismConfig(StrictModel):
    """Effects of the virtual bench that the calibration model does NOT contain (seeded, hidden).

    ``level`` sets every effect's magnitude (``none``: all off; ``moderate``; ``harsh``); each
    effect key forces that effect on (at the level's magnitude, ``moderate`` when the level is
    ``none``) or off; ``null`` follows the level. ``seed`` (default ``bench.mismatch.seed``)
    draws the effects; ``elapsed_s`` is how long the bench has been warming up (LUT drift).
    """

    level: Literal["none", "moderate", "harsh"] = "none"
    seed: int | None = None
    elapsed_s: float = Field(0.0, ge=0, le=1e7)
    illumination: bool | None = Field(None, description="Gaussian/vignetted illumination")
    stray_light: bool | None = Field(None, description="stray-light background and a DC ghost")
    slm_pixel_response: bool | None = Field(None, description="per-pixel SLM phase response")
    lut_drift: bool | None = Field(None, description="LUT drift with warm-up time")
    flicker: bool | None = Field(None, description="SLM phase ripple within an exposure")
    high_zernike: bool | None = Field(None, description="Zernike terms beyond the fitted ones")
    fixed_pattern: bool | None = Field(None, description="camera PRNU/DSNU and hot pixels")
    focal_length: bool | None = Field(None, description="slightly wrong Fourier-plane scale")
    partial_coherence: bool | None = Field(None, description="extended (partially coherent) source")

    def active(self) -> dict[str, float]:
        """Effect name → magnitude multiplier (moderate 1, harsh 2.5) of the effects that are on."""
        mag = {"none": 1.0, "moderate": 1.0, "harsh": 2.5}[self.level]
        out = {}
        for name in REALISM_EFFECTS:
            on = getattr(self, name)
            if on or (on is None and self.level != "none"):
                out[name] = mag
        return out


def strip_fade_px(field_size: int) -> int:
    """Columns over which each N×N tile of the virtual bench's sample strip fades to the
    background at its left and right edges (N/16, at least 1)."""
    return max(1, int(field_size) // 16)


def bench_bead_margin_px(field_size: int) -> int:
    """Clear distance (px) from every bead rim to the border of its bench tile: the tile fade
    plus 3 px, so no bead is faded and every bead is whole in the strip."""
    return strip_fade_px(field_size) + 3


class BeadSampleConfig(StrictModel):
    """Bead sample of the virtual bench (``bench.sample: beads``): homogeneous dielectric
    spheres with the exact projected phase (:mod:`dmicro_hw.data.beads`), ``count`` per N×N
    tile of the strip, non-overlapping, seeded by ``bench.seed``. The wavelength and pixel size
    are the rig's optics; the peak phase 4π·R_max·|Δn|/λ must not exceed ``bench.phase_max_rad``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    index: float = Field(1.59, gt=0, lt=5, description="bead refractive index (polystyrene 1.59)")
    medium_index: float = Field(1.555, gt=0, lt=5, description="refractive index of the medium")
    radius_m: float = Field(2.0e-6, gt=0, lt=1e-3, description="nominal bead radius, metres")
    radius_spread: float = Field(
        0.1, ge=0, lt=1, description="radii drawn uniformly in radius_m·(1 ± radius_spread)"
    )
    count: int = Field(3, ge=1, le=64, description="beads per N×N tile of the sample strip")

    @property
    def delta_n(self) -> float:
        """Index contrast index − medium_index."""
        return self.index - self.medium_index

    @property
    def radius_range_m(self) -> tuple[float, float]:
        """(smallest, largest) radius drawn, metres."""
        return (self.radius_m * (1 - self.radius_spread), self.radius_m * (1 + self.radius_spread))

    @model_validator(mode="after")
    def _contrast(self) -> BeadSampleConfig:
        if self.index == self.medium_index:
            raise ValueError(
                f"index {self.index} equals medium_index: Δn = 0, the beads would be invisible"
            )
        return self


class BenchConfig(StrictModel):
    """Virtual optical bench (simulators)."""

    sample: Literal["cells", "target", "beads"] = "cells"
    flow_px_per_frame: float = Field(2.0, ge=0, le=1e4)
    seed: int = 0
    phase_max_rad: float = Field(3.141592653589793, gt=0, le=1000)
    mismatch: MismatchConfig = MismatchConfig()
    realism: RealismConfig = RealismConfig()
    faults: FaultsConfig = FaultsConfig()
    beads: BeadSampleConfig = BeadSampleConfig()
    frame_rate_hz: float = Field(100.0, gt=0, le=100000)
    latency_s: float = Field(0.0, ge=0, le=1)


class AcquisitionConfig(StrictModel):
    frames: int | None = Field(200, ge=1)
    duration_s: float | None = Field(None, gt=0, le=366 * 86400)
    mode: Literal["free-run", "triggered"] = "free-run"
    out: Path = Path("runs/acquire")
    ring_frames: int = Field(256, ge=4, le=1_000_000)
    chunk_frames: int = Field(16, ge=1, le=4096)
    recon: bool = True
    recon_batch: int = Field(8, ge=1, le=1024)
    decoder_runtime: Literal["auto", "eager", "compiled", "onnx", "onnx-int8"] = Field(
        "auto",
        description="CPU decoder runtime of the reconstruction worker: 'auto' = the fastest one "
        "whose output stays within 2e-3 of eager float32 on a sample batch (else eager, with "
        "the reason in run.json); a name forces that runtime (still checked, eager on failure)",
    )
    recon_device: Literal["auto", "cpu", "cuda"] = "auto"
    preview: bool = False
    consistency: bool = Field(
        True, description="re-simulate every decoded frame and store its χ²/dof (consistency)"
    )
    consistency_threshold: float = Field(
        100.0,
        gt=0,
        le=1e6,
        description="χ²/dof above which a decoded frame is flagged unreliable (scales with the "
        "photon budget; set it from a run of known samples, see run.json's consistency block)",
    )
    refine: int = Field(
        0, ge=0, le=1000, description="refinement iterations per decoded batch (0: off)"
    )
    refine_prior_weight: float = Field(
        1.0, ge=0, le=1e6, description="pull of the refinement towards the decoder's output"
    )


class RigConfig(StrictModel):
    rig_id: str = Field("sim-rig", min_length=1, max_length=128)
    optics: OpticsConfig = OpticsConfig()
    sensor: SensorConfig = SensorConfig()
    slm: SLMDeviceConfig = SLMDeviceConfig()
    camera: CameraDeviceConfig = CameraDeviceConfig()
    trigger: TriggerDeviceConfig = TriggerDeviceConfig()
    checkpoint: Path | None = Field(None, description="trained model (.pt) from `dmicro train`")
    pattern: Path | None = Field(None, description="exported SLM pattern (.npy/.png + .json)")
    calibration: Path | None = Field(None, description="calibration bundle folder")
    bench: BenchConfig = BenchConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()

    @model_validator(mode="after")
    def _bead_sample(self) -> RigConfig:
        """With ``bench.sample: beads``: the beads' peak phase within ``bench.phase_max_rad``
        and the largest bead (plus the tile margin) inside the field."""
        if self.bench.sample != "beads":
            return self
        from dmicro_hw.data.beads import peak_phase_rad

        b, o = self.bench.beads, self.optics
        r_hi = b.radius_range_m[1]
        peak = peak_phase_rad(r_hi, abs(b.delta_n), o.wavelength_m)
        if peak > self.bench.phase_max_rad:
            raise ValueError(
                f"bench.beads: peak phase 4π·R·|Δn|/λ = {peak:.3f} rad (R = radius_m "
                f"{b.radius_m:.4g} × (1 + radius_spread {b.radius_spread:g}), Δn = index "
                f"{b.index:g} − medium_index {b.medium_index:g}, λ = optics.wavelength_m "
                f"{o.wavelength_m:.4g}) exceeds bench.phase_max_rad {self.bench.phase_max_rad:.3f}"
            )
        margin = bench_bead_margin_px(o.field_size)
        if 2 * (r_hi / o.pixel_size_m + margin) >= o.field_size:
            raise ValueError(
                f"bench.beads: a bead of radius {r_hi:.4g} m ({r_hi / o.pixel_size_m:.1f} px at "
                f"optics.pixel_size_m {o.pixel_size_m:.4g}) plus the {margin}-px tile margin "
                f"does not fit in the {o.field_size}-px field (optics.field_size)"
            )
        return self


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)

_PATH_KEYS = {
    "path",
    "folder",
    "lut",
    "cti",
    "replay_path",
    "checkpoint",
    "pattern",
    "calibration",
    "out",
}


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "value_error":  # our validators' messages name their keys themselves
            msg = msg.removeprefix("Value error, ")
            if not e["loc"]:
                lines.append(msg)
                continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the README for allowed keys)"
        elif e["type"] in ("literal_error", "enum") and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"{loc}: {msg}{got_s}")
    return f"{source}: invalid config — " + "; ".join(lines)


def resolve_paths(obj: Any, base: Path) -> Any:
    """Resolve relative path-valued keys against the config file's folder."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _PATH_KEYS and isinstance(v, str) and v and not Path(v).is_absolute():
                v = str((base / v).resolve()) if (base / v).exists() else v
            out[k] = resolve_paths(v, base)
        return out
    if isinstance(obj, list):
        return [resolve_paths(v, base) for v in obj]
    return obj


#: a config is small: more nodes than this after alias expansion is a "billion laughs" bomb
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_BYTES = 4 << 20


def _check_size(p: Path, data: Any) -> None:
    """Count the nodes of the alias-expanded tree, stopping at the budget (cost ≤ the budget)."""
    left = MAX_CONFIG_NODES
    stack = [(data, 0)]
    while stack:
        obj, depth = stack.pop()
        left -= 1
        if left < 0 or depth > 100:
            raise ConfigError(
                f"{p}: config too large or too deep after expanding YAML aliases "
                f"(more than {MAX_CONFIG_NODES} values or 100 levels) — refused"
            )
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
            left -= len(obj)
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping safely; raises ConfigError naming the file on any problem."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a config file (give the .yaml file)")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file ({e})") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply") from None
    if data is None:
        data = {}
    _check_size(p, data)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], source: str = "<config>") -> M:
    """Validate a mapping into ``model``; raises ConfigError with a one-line readable message."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None


def load_config(model: type[M], path: Path | str, overrides: dict[str, Any] | None = None) -> M:
    """Load ``path`` as ``model`` (paths resolved against the file's folder)."""
    p = Path(path)
    data = resolve_paths(read_yaml(p), p.resolve().parent)
    if overrides:
        data = _deep_merge(data, overrides)
    return validate(model, data, str(p))


def load_train_config(path: Path | str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def load_rig_config(path: Path | str, overrides: dict[str, Any] | None = None) -> RigConfig:
    return load_config(RigConfig, path, overrides)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
