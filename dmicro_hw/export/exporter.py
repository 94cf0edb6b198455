"""The exporter: a trained centred filter → SLM grey levels and back to the filter the
bench realises (see :mod:`dmicro_hw.export` for the steps); :class:`SLMExporter` is also the
training transform (export-in-the-loop)."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dmicro_hw import __version__
from dmicro_hw.calibration.bundle import (
    SLMCalibration,
    _ParametricLUT,
    _read_lut_npy,
    check_calibration_for_rig,
)
from dmicro_hw.config import OpticsConfig, RigConfig, SLMModelConfig, TrainConfig
from dmicro_hw.errors import CheckpointError, ConfigError
from dmicro_hw.export.files import _utc_now
from dmicro_hw.optics.fourier4f import pupil_mask
from dmicro_hw.optics.slm import (
    PhaseResponse,
    SLMGeometry,
    SLMModel,
    gaussian_blur,
    sample_image,
)
from dmicro_hw.optics.slm_grey import (
    inverse_lut,
    pattern_array,
    quantise,
    validate_monotone_table,
    wrap_phase,
)

log = logging.getLogger(__name__)

TWO_PI = 2 * math.pi
Mode = Literal["phase", "amplitude_phase"]
Sampling = Literal["nearest", "bilinear"]
MODES: tuple[str, ...] = ("phase", "amplitude_phase")
ENCODING = {"phase": "phase_only", "amplitude_phase": "double_phase_checkerboard"}
PAIR_GUARD_BELOW_GAIN = 0.95  # fringing that leaves < 95 % of a checkerboard: guard the pairs


# --------------------------------------------------------------------------------------------
# The LUT (grey level → radians) the export inverts
# --------------------------------------------------------------------------------------------


def lut_table(slm: SLMModelConfig, calibration: SLMCalibration | None = None) -> np.ndarray:
    """Phase (radians) of every grey level, float64 (2**bit_depth,), validated.

    Precedence: the calibration's measured LUT, then the rig's ``slm.lut`` file, then the
    linear response φ(g) = phase_range_rad · g / 2**bit_depth.

    Raises:
        ConfigError / CheckpointError: wrong length, non-finite or decreasing table.
    """
    levels = 2**slm.bit_depth
    src: Any = calibration.lut_table if calibration is not None else None
    err: type[Exception] = CheckpointError
    where = f"{calibration.path if calibration and calibration.path else 'calibration'} LUT"
    if isinstance(src, _ParametricLUT):
        resp = PhaseResponse(slm.bit_depth, slm.phase_range_rad, src.gamma, src.scale)
        return resp.as_table().double().numpy()
    if src is None and slm.lut is not None:
        err, where = ConfigError, f"slm.lut ({slm.lut})"
        try:
            src = _read_lut_npy(Path(slm.lut))
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
    if src is None:
        return PhaseResponse(slm.bit_depth, slm.phase_range_rad).as_table().double().numpy()
    table = np.asarray(src, dtype=np.float64)
    if table.shape != (levels,):
        raise err(
            f"{where}: {table.shape[0] if table.ndim == 1 else table.shape} entries, the "
            f"{slm.bit_depth}-bit SLM needs {levels}"
        )
    if not np.isfinite(table).all():
        raise err(f"{where}: contains NaN or infinite values")
    return validate_monotone_table(table, where, err)


def resample_lut(table: np.ndarray, bit_depth: int) -> np.ndarray:
    """A LUT tabulated for one bit depth, interpolated to ``2**bit_depth`` levels (same curve
    over the same fraction of the grey range)."""
    t = np.asarray(table, dtype=np.float64)
    levels = 2**bit_depth
    return np.interp(np.arange(levels) / levels, np.arange(len(t)) / len(t), t)


# --------------------------------------------------------------------------------------------
# The steps. Each one is a pure function on tensors; shapes are noted in the docstrings.
# --------------------------------------------------------------------------------------------


def slm_pixel_coords(
    geometry: SLMGeometry, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None
) -> torch.Tensor:
    """Filter-grid coordinates (i, j) of SLM pixel centres, float64 (R, C, 2).

    ``rows``/``cols`` = (start, stop) restrict to a window of the SLM (absolute pixel indices).
    This is the resample (pitch ratio p_f/p_s) and the placement (offset, rotation, scale) in
    one affine map: :meth:`SLMGeometry.slm_to_filter` for every pixel.
    """
    r0, r1 = rows or (0, geometry.slm_pixels[0])
    c0, c1 = cols or (0, geometry.slm_pixels[1])
    rr = torch.arange(r0, r1, dtype=torch.float64)
    cc = torch.arange(c0, c1, dtype=torch.float64)
    rc = torch.stack(torch.meshgrid(rr, cc, indexing="ij"), dim=-1)
    return geometry.slm_to_filter(rc)


def resample_to_slm(
    filter_centred: torch.Tensor, coords: torch.Tensor, sampling: Sampling = "nearest"
) -> torch.Tensor:
    """Sample the centred filter (N, N) at filter coordinates (R, C, 2) → complex64 (R, C).

    ``nearest`` gives every SLM pixel the value of the filter sample whose footprint it lies in,
    so the area average the optics applies gives back that sample (best realised fidelity);
    ``bilinear`` interpolates the complex values (smoother pattern, also differentiable in the
    placement). Outside the filter grid the value is 0.
    """
    if sampling not in ("nearest", "bilinear"):
        raise ValueError(f"sampling must be 'nearest' or 'bilinear', got {sampling!r}")
    h = filter_centred.to(torch.complex64)
    return sample_image(h, coords.to(torch.float32), mode=sampling).to(torch.complex64)


def safe_polar_parts(z: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(|z|, arg z) with finite gradients everywhere (arg 0 := 0)."""
    re, im = z.real, z.imag
    r2 = re * re + im * im
    ok = r2 > eps * eps
    re_s = torch.where(ok, re, torch.ones_like(re))
    im_s = torch.where(ok, im, torch.zeros_like(im))
    amp = torch.where(
        ok, torch.sqrt(torch.where(ok, r2, torch.ones_like(r2))), torch.zeros_like(re)
    )
    phase = torch.where(ok, torch.atan2(im_s, re_s), torch.zeros_like(re))
    return amp, phase


def checkerboard(shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """±1 checkerboard (−1)^(r+c) over absolute SLM pixel indices, float32 (R, C)."""
    r = torch.arange(origin[0], origin[0] + shape[0])
    c = torch.arange(origin[1], origin[1] + shape[1])
    parity = (r[:, None] + c[None, :]) % 2
    return (1 - 2 * parity).to(torch.float32)


def encode_phase_only(
    field_slm: torch.Tensor,
    mode: Mode = "phase",
    origin: tuple[int, int] = (0, 0),
    pair_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Complex target on SLM pixels (R, C) → phase (radians), float32 (R, C).

    ``phase``: φ = arg H (the amplitude is dropped; where H = 0, φ = 0).
    ``amplitude_phase``: double-phase checkerboard φ = arg H + s·arccos(min(|H|, 1)),
    s = (−1)^(r+c) with (r, c) absolute SLM pixel indices (``origin`` = index of element [0, 0]).
    The average of a ± pair is |H|·e^{i arg H}; amplitudes above 1 cannot be displayed and are
    clipped.

    ``pair_range`` = (lo, hi) keeps both phases of every pair inside [lo, hi] without wrapping
    (arg H is taken in [0, 2π) and the half-difference is limited to its distance from lo and
    hi). For SLMs with fringing: crosstalk averages the *displayed* phases of neighbours, and a
    pair split across the 0/2π wrap (e.g. 0.1 and 6.1 rad) averages to the opposite phase. The
    price is less amplitude modulation where arg H is near 0 or 2π.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    amp, phase = safe_polar_parts(field_slm)
    if mode == "phase":
        return phase
    # arccos has an infinite slope at 1: clamp just below it so the gradient stays finite.
    d = torch.arccos(amp.clamp(0.0, 1.0 - 1e-6))
    if pair_range is not None:
        lo, hi = pair_range
        phase = wrap_phase(phase)
        room = torch.minimum(phase - lo, hi - phase).clamp_min(0.0)
        d = torch.minimum(d, room)
    return phase + checkerboard(tuple(field_slm.shape[-2:]), origin).to(phase.device) * d


def checkerboard_gain(fringing_px: float) -> float:
    """Fraction of a ±1 pixel checkerboard that survives the SLM model's fringing blur."""
    if fringing_px <= 0:
        return 1.0
    return float(gaussian_blur(checkerboard((17, 17)), fringing_px)[8, 8])


# --------------------------------------------------------------------------------------------
# The whole path as a module: filter → grey levels, grey levels → realised filter
# --------------------------------------------------------------------------------------------


def seam_phase_offset(
    filter_centred: torch.Tensor, lut_range_rad: float = TWO_PI, bins: int = 90
) -> float:
    """Global phase ψ (radians) that puts the 0/2π wrap of arg(H·e^{iψ}) where H has the least
    phase content.

    A global phase changes no image, but it decides where the SLM's phase wraps: neighbouring
    pixels on either side of a wrap (e.g. 0.05 and 6.23 rad) are averaged by pixel crosstalk
    (fringing) into the opposite phase, and phases in the LUT's gap [range, 2π) cannot be shown.
    ψ maps the emptiest window of the amplitude-weighted phase histogram (width: the LUT gap, at
    least one bin; histogram blurred over 1/8 turn so the window is far from any content) onto
    the middle of [range, 2π]. A filter whose phase clusters around 0 — a mild learned
    filter — otherwise straddles the wrap everywhere.
    """
    with torch.no_grad():
        amp, phase = safe_polar_parts(filter_centred.detach().to(torch.complex64).cpu())
        w = amp.flatten().double()
        if float(w.sum()) <= 0:
            return 0.0
        idx = (wrap_phase(phase).flatten() / TWO_PI * bins).long().clamp(0, bins - 1)
        hist = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, w)
        top = min(float(lut_range_rad), TWO_PI)
        width = max(1, int(math.ceil((TWO_PI - top) / TWO_PI * bins)))
        # circular blur (σ = 1/8 turn): among empty stretches, prefer the one farthest from
        # any content
        k = torch.arange(bins, dtype=torch.float64)
        dist = torch.remainder(k[:, None] - k[None, :], bins)
        dist = torch.minimum(dist, bins - dist)
        density = torch.exp(-0.5 * (dist / (bins / 8)) ** 2) @ hist
        ext = torch.cat([density, density[:width]])
        sums = torch.stack([ext[i : i + width].sum() for i in range(bins)])
        start = int(torch.argmin(sums))  # the emptiest window starts at bin `start`
        # the window [start, start + width) bins goes to [top, top + width·2π/bins) ≈ the gap
        centre_gap = (start + width / 2) * TWO_PI / bins
    return float(math.remainder((top + TWO_PI) / 2 - centre_gap, TWO_PI))


def filter_window(geometry: SLMGeometry, margin_px: int = 2) -> tuple[tuple[int, int], ...]:
    """Rows and columns (start, stop) of the SLM window the filter grid covers (+ margin)."""
    n = geometry.field_size
    corners = torch.tensor(
        [[-0.5, -0.5], [-0.5, n - 0.5], [n - 0.5, -0.5], [n - 0.5, n - 0.5]], dtype=torch.float64
    )
    with torch.no_grad():
        rc = geometry.filter_to_slm(corners)
    lo = torch.floor(rc.min(0).values).long() - margin_px
    hi = torch.ceil(rc.max(0).values).long() + margin_px + 1
    rows = (max(0, int(lo[0])), min(geometry.slm_pixels[0], int(hi[0])))
    cols = (max(0, int(lo[1])), min(geometry.slm_pixels[1], int(hi[1])))
    if rows[0] >= rows[1] or cols[0] >= cols[1]:
        raise ConfigError(
            "slm: the filter grid falls entirely outside the SLM (check calibration offset)"
        )
    return rows, cols


def _cropped_geometry(geometry: SLMGeometry, rows, cols) -> SLMGeometry:
    """The same placement seen on a window of the SLM (its own pixel (0, 0) = rows[0], cols[0])."""
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    full_c = geometry.slm_centre()
    win_c = torch.tensor([shape[0] // 2, shape[1] // 2], dtype=torch.float64)
    origin = torch.tensor([rows[0], cols[0]], dtype=torch.float64)
    with torch.no_grad():
        offset = full_c + geometry.offset_px - origin - win_c
    g = SLMGeometry(
        geometry.field_size,
        1.0,
        shape,
        1.0,
        offset_px=(float(offset[0]), float(offset[1])),
        rotation_rad=float(geometry.rotation_rad),
        scale=float(geometry.scale),
    )
    g.ratio = geometry.ratio
    return g


class SLMExporter(nn.Module):
    """Filter ↔ SLM for one rig: :meth:`pattern` (export) and :meth:`realise` (SLM model).

    ``forward(H)`` = realise(pattern(H)): the filter the bench applies when the export of H is
    displayed; differentiable in H (straight-through quantisation). With ``window=True`` only
    the SLM window that the filter grid covers is computed (training speed); the export to a
    file uses the whole SLM.

    Args:
        optics: 4f optics (field size, wavelength, focal length, magnification, pupil).
        slm: SLM (pixels, pitch, bit depth, mode, LUT, fill factor, fringing).
        calibration: measured placement and LUT, or None for the nominal rig.
        mode: overrides ``slm.mode``.
        sampling: ``nearest`` (default) or ``bilinear`` resampling of the filter.
        window: compute on the filter's SLM window only.
        supersample: SLMModel sub-samples per filter sample and axis (default ceil(p_f/p_s)).
        phase_offset: global phase added to H before export (changes no image): ``"auto"``
            (:func:`seam_phase_offset`, keeps the phase wrap where H has least content) or
            radians.
    """

    def __init__(
        self,
        optics: OpticsConfig,
        slm: SLMModelConfig,
        calibration: SLMCalibration | None = None,
        mode: Mode | None = None,
        sampling: Sampling = "nearest",
        window: bool = False,
        supersample: int | None = None,
        phase_offset: float | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        self.optics, self.slm_cfg, self.calibration = optics, slm, calibration
        self.phase_offset = phase_offset
        self.last_phase_offset = 0.0
        self.mode: Mode = mode or slm.mode
        if self.mode not in MODES:
            raise ConfigError(f"slm.mode: must be one of {MODES}, got {self.mode!r}")
        self.sampling: Sampling = sampling
        self.bit_depth = slm.bit_depth
        placement = calibration.placement() if calibration else {}
        full = SLMGeometry.from_configs(
            optics,
            slm,
            offset_px=tuple(placement.get("offset_px", (0.0, 0.0))),
            rotation_rad=placement.get("rotation_rad", 0.0),
            scale=placement.get("scale", 1.0),
        )
        if window:
            self.rows, self.cols = filter_window(full)
            geometry = _cropped_geometry(full, self.rows, self.cols)
        else:
            self.rows, self.cols = (0, slm.pixels[0]), (0, slm.pixels[1])
            geometry = full
        self.full_geometry = full
        self.geometry = geometry
        table = lut_table(slm, calibration)
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float64), False)
        # With fringing that visibly blurs the checkerboard, keep each ± pair un-wrapped inside
        # the LUT range (half a grey step from either end), see encode_phase_only.
        self.checkerboard_gain = checkerboard_gain(slm.fringing_px)
        self.pair_range: tuple[float, float] | None = None
        if self.mode == "amplitude_phase" and self.checkerboard_gain < PAIR_GUARD_BELOW_GAIN:
            half_step = 0.5 * float(table[-1] - table[0]) / (len(table) - 1)
            self.pair_range = (half_step, float(table[-1] - table[0]) - half_step)
        response = PhaseResponse(slm.bit_depth, slm.phase_range_rad, table=table)
        self.model = SLMModel(optics, slm, geometry, response, supersample=supersample)
        self.register_buffer(
            "pupil", pupil_mask(optics.field_size, optics.pupil_radius), persistent=False
        )
        self.register_buffer("coords", slm_pixel_coords(geometry).to(torch.float32), False)
        with torch.no_grad():  # SLMModel's sub-sample positions on the SLM, computed once
            rc_sub = geometry.filter_to_slm(self.model._sub_ij).to(torch.float32)
        self.register_buffer("_rc_sub", rc_sub, persistent=False)
        self.register_buffer(
            "checker", checkerboard(self.shape, (self.rows[0], self.cols[0])), False
        )
        self._make_persistent_free()

    def _make_persistent_free(self) -> None:
        # Nothing of the exporter belongs in a checkpoint: everything is rebuilt from the config.
        for mod in self.modules():
            for name in list(mod._buffers):
                mod._non_persistent_buffers_set.add(name)
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    p.requires_grad_(False)
                    del mod._parameters[name]
                    mod.register_buffer(name, p.detach(), persistent=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the computed SLM area (whole SLM, or the filter window)."""
        return (self.rows[1] - self.rows[0], self.cols[1] - self.cols[0])

    @property
    def ratio(self) -> float:
        """SLM pixels per filter sample (p_f / p_s)."""
        return self.full_geometry.ratio

    def pattern(
        self, filter_centred: torch.Tensor, ste: bool = True, rounding: bool = True
    ) -> torch.Tensor:
        """Centred filter (N, N) complex → grey levels (R, C) float32 (integer-valued).

        ``rounding=False`` skips the quantisation (fractional grey levels: the limit of an
        infinitely deep SLM, for benchmarks).
        """
        n = self.optics.field_size
        if tuple(filter_centred.shape[-2:]) != (n, n):
            raise ConfigError(
                f"optics.field_size: filter is {tuple(filter_centred.shape)}, the optics "
                f"describe a {n}×{n} field"
            )
        psi = self.phase_offset
        if psi == "auto":
            psi = seam_phase_offset(filter_centred, float(self.table[-1] - self.table[0]))
        self.last_phase_offset = float(psi)
        if psi:
            rot = torch.polar(torch.ones((), dtype=torch.float32), torch.tensor(float(psi)))
            filter_centred = filter_centred * rot.to(filter_centred.device)
        field_slm = resample_to_slm(filter_centred, self.coords, self.sampling)
        phase = encode_phase_only(
            field_slm, self.mode, (self.rows[0], self.cols[0]), self.pair_range
        )
        grey = inverse_lut(wrap_phase(phase), self.table)
        if not rounding:
            return grey
        return quantise(grey, self.bit_depth, ste=ste)

    def realise(self, grey: torch.Tensor) -> torch.Tensor:
        """Grey levels on the computed area (R, C) → realised centred filter × pupil (N, N).

        Exactly :meth:`SLMModel.forward` (LUT, fringing, fill factor, area average over each
        filter sample) with the fixed placement's sample positions computed once.
        """
        vals = sample_image(self.model.reflectance(grey), self._rc_sub)  # (N, N, m, m)
        return vals.mean(dim=(-2, -1)).to(torch.complex64) * self.pupil

    def forward(self, filter_centred: torch.Tensor) -> torch.Tensor:
        return self.realise(self.pattern(filter_centred))

    def export_array(self, filter_centred: torch.Tensor) -> np.ndarray:
        """The displayable pattern for the whole SLM: uint8/uint16 (rows, cols)."""
        if self.shape != tuple(self.slm_cfg.pixels):
            raise RuntimeError("export_array needs an exporter built with window=False")
        with torch.no_grad():
            return pattern_array(self.pattern(filter_centred, ste=False), self.bit_depth)


def export_in_the_loop(filter_centred: torch.Tensor, exporter: SLMExporter) -> torch.Tensor:
    """Realised filter of the exported pattern of ``filter_centred`` (differentiable)."""
    return exporter(filter_centred)


def training_filter_transform(cfg: TrainConfig) -> SLMExporter:
    """Export-in-the-loop ``filter_transform`` for ``encoder.hardware_aware: true``.

    Uses ``cfg.slm`` (the SLM the filter will be displayed on) with the nominal placement, the
    filter window of the SLM only. Nothing of it is stored in checkpoints.
    """
    if cfg.slm is None:
        raise ConfigError(
            "encoder.hardware_aware: needs an `slm:` section describing the SLM the filter "
            "will be displayed on (pixels, pitch_m, bit_depth, mode, …)"
        )
    return SLMExporter(cfg.optics, cfg.slm, window=True)


def filter_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """|⟨a, b⟩| / (‖a‖ ‖b‖) of two complex filters (optionally inside ``mask``), in [0, 1]."""
    if mask is not None:
        a, b = a[mask > 0], b[mask > 0]
    num = torch.abs(torch.sum(a * torch.conj(b)))
    den = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return float(num / den.clamp_min(1e-30))


# --------------------------------------------------------------------------------------------
# Checkpoint → pattern files
# --------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` produced."""

    sidecar_path: Path
    sidecar: dict[str, Any]
    grey: np.ndarray
    filter: torch.Tensor
    realised: torch.Tensor


def export_filter(
    filter_centred: torch.Tensor,
    rig: RigConfig,
    calibration: SLMCalibration | None = None,
    mode: Mode | None = None,
    sampling: Sampling = "nearest",
) -> tuple[np.ndarray, torch.Tensor, dict[str, Any]]:
    """Centred filter → (grey levels for the whole SLM, realised filter, sidecar metadata).

    The realised filter is the SLM model's response to the exported grey levels with the same
    placement (× pupil); its correlation with the target (``quality.filter_correlation``: the
    phase-only filter arg H in ``phase`` mode, H itself in ``amplitude_phase`` mode) and with
    the trained H (``quality.correlation_to_trained``) go into the metadata.
    """
    if calibration is not None:
        check_calibration_for_rig(calibration, rig)
    ex = SLMExporter(rig.optics, rig.slm, calibration, mode=mode, sampling=sampling)
    h = filter_centred.detach().to(torch.complex64).cpu()
    grey = ex.export_array(h)
    with torch.no_grad():
        realised = ex.realise(torch.from_numpy(grey.astype(np.float32)))
    pupil = ex.pupil
    if ex.mode == "phase":
        _, ph = safe_polar_parts(h)
        target = torch.polar(torch.ones_like(ph), ph) * pupil
    else:
        target = h * pupil
    inside = pupil > 0
    with torch.no_grad():
        ij = torch.nonzero(inside).to(torch.float64)
        rc = ex.full_geometry.filter_to_slm(ij)
    on = (rc[:, 0] >= -0.5) & (rc[:, 0] <= rig.slm.pixels[0] - 0.5)
    on &= (rc[:, 1] >= -0.5) & (rc[:, 1] <= rig.slm.pixels[1] - 0.5)
    coverage = float(on.double().mean())
    if coverage < 1.0:
        log.warning("only %.1f %% of the filter pupil falls on the SLM", 100 * coverage)
    amp = h.abs()
    if ex.mode == "amplitude_phase" and float(amp.max()) > 1.0 + 1e-6:
        log.warning("filter amplitude up to %.3f > 1 is clipped to 1", float(amp.max()))
    if ex.mode == "amplitude_phase" and ex.pair_range is not None:
        log.warning(
            "slm.fringing_px = %g keeps only %.0f %% of the double-phase checkerboard: the "
            "amplitude encoding is weak on this SLM (pairs kept un-wrapped; consider mode: phase)",
            rig.slm.fringing_px,
            100 * ex.checkerboard_gain,
        )
    table = ex.table.numpy()
    lut_source = (
        "calibration"
        if calibration is not None and calibration.lut_table is not None
        else ("rig" if rig.slm.lut is not None else "linear")
    )
    meta: dict[str, Any] = {
        "software_version": __version__,
        "created_utc": _utc_now(),
        "rig_id": rig.rig_id,
        "bit_depth": rig.slm.bit_depth,
        "mode": ex.mode,
        "encoding": ENCODING[ex.mode],
        "checkerboard_gain": (
            round(ex.checkerboard_gain, 6) if ex.mode == "amplitude_phase" else None
        ),
        "sampling": sampling,
        "phase_offset_rad": round(ex.last_phase_offset, 9),
        "wavelength_m": rig.optics.wavelength_m,
        "slm_pitch_m": rig.slm.pitch_m,
        "fourier_pitch_m": rig.optics.fourier_pitch_m,
        "slm_pixels_per_filter_sample": ex.ratio,
        "field_size": rig.optics.field_size,
        "optics": {
            "focal_length_m": rig.optics.focal_length_m,
            "magnification": rig.optics.magnification,
            "pixel_size_m": rig.optics.pixel_size_m,
            "pupil_radius": rig.optics.pupil_radius,
        },
        "phase_range_rad": rig.slm.phase_range_rad,
        "lut": {
            "source": lut_source,
            "sha256": hashlib.sha256(np.ascontiguousarray(table, "<f8").tobytes()).hexdigest(),
        },
        "placement": (calibration or SLMCalibration()).placement(),
        "filter_window": dict(zip(("rows", "cols"), map(list, filter_window(ex.full_geometry)))),
        "quality": {
            "filter_correlation": round(filter_correlation(realised, target, pupil), 6),
            "correlation_to_trained": round(filter_correlation(realised, h * pupil, pupil), 6),
            "coverage": round(coverage, 6),
        },
    }
    return grey, realised, meta
