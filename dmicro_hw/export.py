"""THE one path from a trained Fourier filter to SLM pixels — deployment and training share it.

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

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dmicro_hw import __version__
from dmicro_hw.config import OpticsConfig, RigConfig, SLMModelConfig, TrainConfig
from dmicro_hw.errors import CheckpointError, ConfigError
from dmicro_hw.optics.fourier4f import pupil_mask
from dmicro_hw.optics.slm import (
    PhaseResponse,
    SLMGeometry,
    SLMModel,
    gaussian_blur,
    sample_image,
)
from dmicro_hw.optics.slm_grey import (  # the pure phase ↔ grey steps, re-exported
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
PATTERN_FORMAT = "dmicro-hw-slm-pattern"
PATTERN_FORMAT_VERSION = 1
CALIBRATION_FILE = "calibration.json"
LUT_FILE = "lut.npy"
WAVELENGTH_RTOL = 1e-3
MAX_CALIBRATION_JSON_BYTES = 32 * 1024**2
MAX_PATTERN_BYTES = 512 * 1024**2
PAIR_GUARD_BELOW_GAIN = 0.95  # fringing that leaves < 95 % of a checkerboard: guard the pairs


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_pattern(grey: np.ndarray) -> str:
    """SHA-256 of a pattern's grey levels: dtype string, shape and C-order little-endian bytes.

    Independent of the container (NPY or PNG), so the same pattern read from either file gives
    the same hash; this is the pattern id that frames are tagged with.
    """
    a = np.ascontiguousarray(grey)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Calibration: what the export needs from a calibration bundle
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLMCalibration:
    """SLM part of a calibration bundle, as the export uses it.

    Attributes:
        offset_px: (dy, dx) of the optical axis from the SLM centre pixel, SLM pixels.
        rotation_rad: rotation of the filter grid on the SLM (counter-clockwise, row/col axes).
        scale: measured / nominal Fourier-plane magnification.
        lut_table: measured phase (radians) of every grey level, shape (2**bit_depth,),
            non-decreasing; None keeps the rig's LUT.
        rig_id: rig the bundle was measured on ("" = not recorded).
        wavelength_m: wavelength it was measured at (None = not recorded).
        sha256: hash identifying the bundle (see :func:`load_slm_calibration`).
        path: the bundle folder, when loaded from disk.
    """

    offset_px: tuple[float, float] = (0.0, 0.0)
    rotation_rad: float = 0.0
    scale: float = 1.0
    lut_table: np.ndarray | None = field(default=None, compare=False, repr=False)
    rig_id: str = ""
    wavelength_m: float | None = None
    sha256: str | None = None
    path: Path | None = None

    def placement(self) -> dict[str, Any]:
        return {
            "offset_px": [float(self.offset_px[0]), float(self.offset_px[1])],
            "rotation_rad": float(self.rotation_rad),
            "scale": float(self.scale),
        }


def _num(value: Any, where: str, n: int | None = None) -> Any:
    try:
        if n is None:
            out = float(value)
            ok = math.isfinite(out)
        else:
            out = tuple(float(v) for v in value)
            ok = len(out) == n and all(math.isfinite(v) for v in out)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        want = "a finite number" if n is None else f"a list of {n} finite numbers"
        raise CheckpointError(f"{where}: must be {want}, got {value!r}")
    return out


def read_calibration_json(path: Path | str) -> tuple[Path, bytes, dict[str, Any]]:
    """Read a bundle's ``calibration.json`` safely: (file, its bytes, the parsed object).

    ``path`` is the bundle folder or its ``calibration.json``. Raises CheckpointError naming the
    file when it is missing, too large, not JSON or not a JSON object.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: calibration bundle not found (run `dmicro calibrate`)")
    cal_file = p / CALIBRATION_FILE if p.is_dir() else p
    if p.is_file() and p.name != CALIBRATION_FILE:
        raise CheckpointError(f"{p}: a calibration is a bundle folder holding {CALIBRATION_FILE}")
    if not cal_file.is_file():
        folder = cal_file.parent
        raise CheckpointError(f"{folder}: not a calibration bundle (no {CALIBRATION_FILE})")
    raw = cal_file.read_bytes()
    if len(raw) > MAX_CALIBRATION_JSON_BYTES:
        raise CheckpointError(f"{cal_file}: too large for a calibration file")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except _NonFinite as e:
        raise CheckpointError(
            f"{cal_file}: holds a non-finite number ({e}); the bundle is damaged — recalibrate "
            "(`dmicro calibrate`)"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{cal_file}: not valid JSON ({str(e)[:160]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cal_file}: top level must be a JSON object")
    return cal_file, raw, data


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    """json.loads hook for NaN / Infinity / -Infinity: calibration numbers must be finite."""
    raise _NonFinite(name)


def load_slm_calibration(path: Path | str) -> SLMCalibration:
    """Read the SLM part of a calibration bundle folder.

    The folder holds ``calibration.json`` and optionally ``lut.npy``. Keys read (all others are
    ignored, so the bundle may hold much more)::

        {
          "rig_id": "sim-rig",                 # optional, checked against rig.rig_id
          "wavelength_m": 6.328e-07,           # optional, checked against rig.optics.wavelength_m
          "slm": {                             # SLM placement in the Fourier plane (all optional)
            "offset_px": [dy, dx],             #   SLM pixels, optical axis − SLM centre pixel
            "rotation_rad": 0.0,               #   counter-clockwise
            "scale": 1.0,                      #   measured / nominal Fourier magnification
            "lut": "lut.npy"                   #   optional: file in the bundle, float (2**bits,)
          }                                    #   radians per grey level, non-decreasing
        }

    If there is no ``slm`` section, the fitted bench mismatch is read instead from
    ``"mismatch": {"slm_offset_px", "slm_rotation_rad", "slm_scale", "lut_gamma", "lut_scale"}``
    (:meth:`dmicro_hw.optics.system.Mismatch.to_dict`); ``lut_gamma``/``lut_scale`` then give a
    parametric LUT that the export tabulates with the rig's bit depth. A ``lut.npy`` file in the
    folder is used when ``slm.lut`` is not given. ``sha256`` of the result is the SHA-256 of
    ``calibration.json``'s bytes followed by those of the LUT file (when there is one).

    Raises:
        CheckpointError: missing folder/file, invalid JSON, wrong types, unreadable LUT.
    """
    cal_file, raw, data = read_calibration_json(path)
    folder = cal_file.parent

    slm = data.get("slm")
    mm = data.get("mismatch") if slm is None else None
    lut_table: np.ndarray | None = None
    lut_name: str | None = None
    offset, rotation, scale = (0.0, 0.0), 0.0, 1.0
    gamma_scale: tuple[float, float] | None = None
    if isinstance(slm, dict):
        if "offset_px" in slm:
            offset = _num(slm["offset_px"], f"{cal_file}: slm.offset_px", 2)
        if "rotation_rad" in slm:
            rotation = _num(slm["rotation_rad"], f"{cal_file}: slm.rotation_rad")
        if "scale" in slm:
            scale = _num(slm["scale"], f"{cal_file}: slm.scale")
        if slm.get("lut") is not None:
            lut_name = str(slm["lut"])
    elif slm is not None:
        raise CheckpointError(f"{cal_file}: 'slm' must be a JSON object")
    elif isinstance(mm, dict):
        if "slm_offset_px" in mm:
            offset = _num(mm["slm_offset_px"], f"{cal_file}: mismatch.slm_offset_px", 2)
        if "slm_rotation_rad" in mm:
            rotation = _num(mm["slm_rotation_rad"], f"{cal_file}: mismatch.slm_rotation_rad")
        if "slm_scale" in mm:
            scale = _num(mm["slm_scale"], f"{cal_file}: mismatch.slm_scale")
        if "lut_gamma" in mm or "lut_scale" in mm:
            gamma_scale = (
                _num(mm.get("lut_gamma", 1.0), f"{cal_file}: mismatch.lut_gamma"),
                _num(mm.get("lut_scale", 1.0), f"{cal_file}: mismatch.lut_scale"),
            )
    if scale <= 0:
        raise CheckpointError(f"{cal_file}: slm.scale must be > 0, got {scale}")
    if lut_name is None and (folder / LUT_FILE).is_file():
        lut_name = LUT_FILE
    h = hashlib.sha256(raw)
    if lut_name is not None:
        lut_path = (folder / lut_name).resolve()
        if folder.resolve() not in lut_path.parents:
            raise CheckpointError(f"{cal_file}: slm.lut must name a file inside the bundle")
        lut_table = _read_lut_npy(lut_path)
        h.update(lut_path.read_bytes())
    elif gamma_scale is not None:
        lut_table = _ParametricLUT(*gamma_scale)  # type: ignore[assignment]

    wl = data.get("wavelength_m")
    rig_id = data.get("rig_id") or ""
    return SLMCalibration(
        offset_px=offset,
        rotation_rad=rotation,
        scale=scale,
        lut_table=lut_table,
        rig_id=str(rig_id),
        wavelength_m=None if wl is None else _num(wl, f"{cal_file}: wavelength_m"),
        sha256=h.hexdigest(),
        path=folder,
    )


@dataclass(frozen=True)
class _ParametricLUT:
    """A fitted φ = scale·range·(g/levels)^gamma, tabulated once the bit depth is known."""

    gamma: float
    scale: float


def _read_lut_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CheckpointError(f"{path}: LUT file not found")
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable .npy LUT ({e})") from None
    if table.ndim != 1 or not np.issubdtype(table.dtype, np.number):
        raise CheckpointError(
            f"{path}: LUT must be a 1-D numeric array (phase in radians per grey level), "
            f"got shape {table.shape} dtype {table.dtype}"
        )
    return table.astype(np.float64)


def check_calibration_identity(
    where: object, rig_id: str | None, wavelength_m: float | None, rig: RigConfig
) -> None:
    """Refuse a calibration measured on another rig or at another wavelength (one clear line).

    Shared by the export's view of a bundle and the full bundle loader.
    """
    if rig_id and rig_id != rig.rig_id:
        raise CheckpointError(
            f"{where}: calibration is for rig {rig_id!r} (measured there), this rig is "
            f"{rig.rig_id!r} — calibrate this rig (`dmicro calibrate --config …`)"
        )
    wl = rig.optics.wavelength_m
    if wavelength_m is not None and not math.isclose(wavelength_m, wl, rel_tol=WAVELENGTH_RTOL):
        raise CheckpointError(
            f"{where}: calibration measured at λ = {wavelength_m * 1e9:.1f} nm, the rig's "
            f"optics.wavelength_m is {wl * 1e9:.1f} nm — the SLM phase response depends on the "
            "wavelength: recalibrate"
        )


def check_calibration_for_rig(cal: SLMCalibration, rig: RigConfig) -> None:
    """Refuse a calibration measured on another rig or at another wavelength."""
    check_calibration_identity(cal.path or "<calibration>", cal.rig_id, cal.wavelength_m, rig)


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
# Pattern files: write, verify, load
# --------------------------------------------------------------------------------------------


@dataclass
class ExportedPattern:
    """A pattern read back from disk (hashes verified).

    Attributes:
        grey: grey levels (rows, cols), uint8 or uint16.
        sidecar: the JSON sidecar.
        path: the sidecar file.
    """

    grey: np.ndarray
    sidecar: dict[str, Any]
    path: Path

    @property
    def sha256(self) -> str:
        return str(self.sidecar["sha256"]["pattern"])

    @property
    def pattern_id(self) -> str:
        """Short id to tag frames with (first 16 hex digits of the pattern's SHA-256)."""
        return self.sha256[:16]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def png_bytes(grey: np.ndarray) -> bytes:
    """8-bit (uint8) or 16-bit (uint16, raw grey levels) greyscale PNG, encoded."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, grey: np.ndarray) -> None:
    """8-bit (uint8) or 16-bit (uint16, raw grey levels) greyscale PNG (atomic, no symlinks)."""
    from dmicro_hw.safe_io import write_bytes_safely

    write_bytes_safely(path, png_bytes(grey))


def read_png(path: Path) -> np.ndarray:
    """Greyscale PNG → uint8 or uint16 array, exactly as stored."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "I;16", "I;16B", "I"):
                raise CheckpointError(f"{path}: not a greyscale pattern PNG (mode {im.mode})")
            a = np.asarray(im)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PNG ({e})") from None
    return a.astype(np.uint8 if im.mode == "L" else np.uint16)


def write_pattern(
    out_dir: Path | str, grey: np.ndarray, meta: dict[str, Any], stem: str = "pattern"
) -> Path:
    """Write ``<stem>.npy``, ``<stem>.png`` and the sidecar ``<stem>.json`` into ``out_dir``.

    ``meta`` is merged into the sidecar, which gains ``shape``, ``dtype``, ``files`` and the
    SHA-256 of the pattern (``sha256.pattern``, container-independent) and of both files. The
    sidecar is written last, atomically. Returns its path.
    """
    import io

    from dmicro_hw.safe_io import make_output_dir, write_bytes_safely, write_text_safely

    out = Path(out_dir)
    make_output_dir(out)
    npy, png, js = out / f"{stem}.npy", out / f"{stem}.png", out / f"{stem}.json"
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(grey), allow_pickle=False)
    write_bytes_safely(npy, buf.getvalue())
    write_png(png, grey)
    side: dict[str, Any] = {
        "format": PATTERN_FORMAT,
        "format_version": PATTERN_FORMAT_VERSION,
        "shape": [int(grey.shape[0]), int(grey.shape[1])],
        "dtype": str(grey.dtype),
    }
    side.update({k: v for k, v in meta.items() if k not in side})
    side["files"] = {"npy": npy.name, "png": png.name}
    hashes = dict(meta.get("sha256", {}))
    hashes.update(pattern=sha256_pattern(grey), npy=sha256_file(npy), png=sha256_file(png))
    side["sha256"] = hashes
    write_text_safely(js, json.dumps(side, indent=2, sort_keys=False) + "\n")
    return js


def _sidecar_path(p: Path) -> Path:
    if p.is_dir():
        return p / "pattern.json"
    if p.suffix.lower() == ".json":
        return p
    return p.with_suffix(".json")


def load_pattern(path: Path | str, rig: RigConfig | None = None) -> ExportedPattern:
    """Load an exported pattern (folder, ``.json`` sidecar, ``.npy`` or ``.png``), verify it.

    Checks, each failing with one :class:`CheckpointError` line naming the file:
    the sidecar exists and is a pattern sidecar; the data file's SHA-256 and the pattern's
    SHA-256 match the sidecar; shape and dtype match the sidecar; and, with ``rig``, that the
    pattern was made for this rig's SLM: shape = ``slm.pixels``, bit depth = ``slm.bit_depth``,
    wavelength = ``optics.wavelength_m`` (relative 1e-3). A different ``rig_id`` is only logged.
    """
    p = Path(path)
    side_p = _sidecar_path(p)
    if not p.exists():
        raise CheckpointError(f"{p}: pattern not found")
    if not side_p.is_file():
        raise CheckpointError(
            f"{p}: no sidecar {side_p.name} next to the pattern (export it with `dmicro export`)"
        )
    try:
        side = json.loads(side_p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{side_p}: sidecar is not valid JSON ({e})") from None
    if not isinstance(side, dict) or side.get("format") != PATTERN_FORMAT:
        raise CheckpointError(f"{side_p}: not a dmicro-hw SLM pattern sidecar")
    if side.get("format_version") != PATTERN_FORMAT_VERSION:
        raise CheckpointError(
            f"{side_p}: pattern format version {side.get('format_version')!r}, this dmicro-hw "
            f"reads {PATTERN_FORMAT_VERSION}"
        )
    files = side.get("files") or {}
    hashes = side.get("sha256") or {}
    if not isinstance(files, dict) or not isinstance(hashes, dict):
        raise CheckpointError(f"{side_p}: 'files' and 'sha256' must be mappings")
    shape = side.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)
    ):
        raise CheckpointError(f"{side_p}: 'shape' must be [rows, cols], got {shape!r}")
    if not isinstance(side.get("dtype"), str):
        raise CheckpointError(f"{side_p}: 'dtype' must be a string, got {side.get('dtype')!r}")
    for k, v in files.items():
        if not isinstance(v, str) or Path(v).name != v:
            raise CheckpointError(f"{side_p}: files.{k} must be a file name in the folder")
    kind = "png" if p.suffix.lower() == ".png" else "npy"
    if p.is_file() and p.suffix.lower() in (".npy", ".png"):
        data_p = p
    else:
        data_p = side_p.parent / str(files.get(kind, f"pattern.{kind}"))
        if not data_p.is_file() and kind == "npy" and files.get("png"):
            kind, data_p = "png", side_p.parent / str(files["png"])
    if not data_p.is_file():
        raise CheckpointError(f"{data_p}: pattern data file named in {side_p.name} not found")
    if data_p.stat().st_size > MAX_PATTERN_BYTES:
        raise CheckpointError(f"{data_p}: too large for an SLM pattern")
    file_hash = sha256_file(data_p)
    if hashes.get(kind) != file_hash:
        raise CheckpointError(
            f"{data_p}: SHA-256 does not match its sidecar {side_p.name} (file changed or "
            "corrupt; export it again)"
        )
    if kind == "png":
        grey = read_png(data_p)
    else:
        try:
            grey = np.load(data_p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{data_p}: not a readable .npy pattern ({e})") from None
    if list(grey.shape) != list(side.get("shape", [])) or str(grey.dtype) != side.get("dtype"):
        raise CheckpointError(
            f"{data_p}: holds {grey.dtype} {grey.shape}, sidecar says {side.get('dtype')} "
            f"{tuple(side.get('shape', []))}"
        )
    if sha256_pattern(grey) != hashes.get("pattern"):
        raise CheckpointError(f"{data_p}: pattern SHA-256 does not match its sidecar")
    _check_grey(grey, side.get("bit_depth"), data_p)
    if rig is not None:
        check_pattern_for_rig(side, rig, side_p)
    return ExportedPattern(grey=grey, sidecar=side, path=side_p)


def _check_grey(grey: np.ndarray, bits: Any, where: Path) -> None:
    """A pattern is a 2-D array of unsigned 8/16-bit grey levels within its bit depth."""
    if grey.dtype.kind != "u" or grey.dtype.itemsize > 2 or grey.ndim != 2:
        raise CheckpointError(
            f"{where}: an SLM pattern is a 2-D uint8/uint16 array of grey levels, this file "
            f"holds {grey.dtype} {tuple(grey.shape)}"
        )
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise CheckpointError(f"{where}: sidecar bit_depth must be an integer 1…16, got {bits!r}")
    top = int(grey.max()) if grey.size else 0
    if top >= 1 << bits:
        raise CheckpointError(
            f"{where}: grey level {top} is outside the sidecar's {bits}-bit range "
            f"0…{(1 << bits) - 1}"
        )


def check_pattern_for_rig(side: dict[str, Any], rig: RigConfig, where: Path | str) -> None:
    """Refuse a pattern exported for another SLM (shape, bit depth) or wavelength."""
    slm = rig.slm
    shape = tuple(side.get("shape", ()))
    if shape != tuple(slm.pixels):
        raise CheckpointError(
            f"{where}: pattern is {shape[0]}×{shape[1]} px, the rig's SLM (slm.pixels) is "
            f"{slm.pixels[0]}×{slm.pixels[1]} — export it for this rig"
        )
    if side.get("bit_depth") != slm.bit_depth:
        raise CheckpointError(
            f"{where}: pattern has {side.get('bit_depth')}-bit grey levels, the rig's SLM "
            f"(slm.bit_depth) is {slm.bit_depth}-bit — export it for this rig"
        )
    wl = side.get("wavelength_m")
    if not isinstance(wl, (int, float)) or not math.isclose(
        wl, rig.optics.wavelength_m, rel_tol=WAVELENGTH_RTOL
    ):
        got = f"{wl * 1e9:.1f} nm" if isinstance(wl, (int, float)) else repr(wl)
        raise CheckpointError(
            f"{where}: pattern was exported for λ = {got}, the rig (optics.wavelength_m) uses "
            f"{rig.optics.wavelength_m * 1e9:.1f} nm — the phase is wavelength-specific"
        )
    if side.get("rig_id") and side.get("rig_id") != rig.rig_id:
        log.warning(
            "%s: pattern exported for rig %r, used on rig %r", where, side["rig_id"], rig.rig_id
        )


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


def export_checkpoint(
    checkpoint: Path | str,
    rig: RigConfig,
    calibration: Path | str | SLMCalibration | None = None,
    out_dir: Path | str = "runs/export",
    mode: Mode | None = None,
    sampling: Sampling = "nearest",
) -> ExportResult:
    """``dmicro export``: the learned filter of ``checkpoint`` → pattern files for ``rig``.

    Raises:
        CheckpointError: unreadable checkpoint, no learned filter, a field size other than the
            rig's, or a calibration for another rig/wavelength.
    """
    from dmicro_hw.training.checkpoint import checkpoint_config, learned_filter, load_checkpoint

    ck_path = Path(checkpoint)
    ck = load_checkpoint(ck_path)
    h = learned_filter(ck)
    tcfg = checkpoint_config(ck)
    n = int(h.shape[-1])
    if n != rig.optics.field_size:
        raise CheckpointError(
            f"{ck_path}: filter is {n}×{n} (trained field_size), the rig's optics.field_size is "
            f"{rig.optics.field_size} — set optics.field_size: {n} in the rig config or re-train"
        )
    for key, rel in (("wavelength_m", WAVELENGTH_RTOL), ("pixel_size_m", 1e-3)):
        a, b = getattr(tcfg.optics, key), getattr(rig.optics, key)
        if not math.isclose(a, b, rel_tol=rel):
            log.warning("%s: trained with optics.%s = %g, the rig has %g", ck_path, key, a, b)
    cal = calibration
    if cal is not None and not isinstance(cal, SLMCalibration):
        cal = load_slm_calibration(cal)
    grey, realised, meta = export_filter(h, rig, cal, mode=mode, sampling=sampling)
    meta["checkpoint"] = {"path": str(ck_path), "sha256": sha256_file(ck_path)}
    meta["calibration"] = (
        {"path": str(cal.path) if cal.path else None, "sha256": cal.sha256} if cal else None
    )
    meta["sha256"] = {
        "checkpoint": meta["checkpoint"]["sha256"],
        "calibration": cal.sha256 if cal else None,
    }
    side_p = write_pattern(out_dir, grey, meta)
    side = json.loads(side_p.read_text(encoding="utf-8"))
    return ExportResult(side_p, side, grey, h, realised)
