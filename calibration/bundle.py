"""The calibration bundle: one versioned folder per calibration.

    <bundle>/
      calibration.json   every fitted parameter with its 1-σ uncertainty and unit, the fitted
                         bench mismatch, the SLM placement and LUT the export uses, rig id,
                         wavelength, date, software version, SHA-256 of the captured frames, the
                         known target, per-pattern residuals, the noise model, the step log
      lut.npy            phase (rad) of every grey level, float64 (2^bits,), relative to grey 0
      lut_sigma.npy      its 1-σ band (rad)
      frames.npz         every captured frame, per probe pattern, in capture order
      probes.npz         the displayed probe patterns (grey levels), by pattern id
      target.npy         the known phase target the frames show (N, N) rad
      lut.png, registration.png, residuals.png     plots (matplotlib, Agg)
      checkpoint_adapted.pt                        (optional) decoder adapted to this rig

This module owns the file format and its one reader, :func:`read_calibration_json`: the
export's view (:func:`load_slm_calibration`), the full bundle (:func:`load_bundle`) and the
camera response a session undoes (:func:`camera_response`) all go through it.

JSON keys the export reads (:func:`load_slm_calibration`): ``rig_id``,
``wavelength_m``, ``slm.offset_px`` / ``slm.rotation_rad`` / ``slm.scale`` / ``slm.lut``.
``slm.offset_px`` is where the *optical axis of the illumination* (the DC of the sample spectrum)
lands on the SLM relative to its centre pixel — the physical SLM offset plus the effect of the
illumination tilt — because that is the point a trained filter must be centred on. The physical
offset and the tilt are in ``mismatch`` and ``parameters``.

:func:`load_bundle` refuses a bundle measured on another rig or at another wavelength with one
clear line (:class:`~dmicro_hw.errors.CheckpointError`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw import __version__
from dmicro_hw.config import RigConfig
from dmicro_hw.errors import CheckpointError
from dmicro_hw.optics.system import Mismatch

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
LUT_FILE = "lut.npy"
WAVELENGTH_RTOL = 1e-3
MAX_CALIBRATION_JSON_BYTES = 32 * 1024**2


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


def camera_response(path: Path | str) -> tuple[float, float]:
    """Calibrated camera gain/offset (raw' = gain·raw + offset) of a bundle; (1, 0) when it has
    none. Read from ``camera.gain``/``camera.offset_adu``, else ``mismatch.camera_gain``/
    ``mismatch.camera_offset_adu``; a non-finite or non-positive gain is a CheckpointError."""
    f, _, data = read_calibration_json(path)
    for section, gk, ok in (
        ("camera", "gain", "offset_adu"),
        ("mismatch", "camera_gain", "camera_offset_adu"),
    ):
        s = data.get(section)
        if isinstance(s, dict) and (gk in s or ok in s):
            g, o = s.get(gk, 1.0), s.get(ok, 0.0)
            for key, v, positive in ((gk, g, True), (ok, o, False)):
                good = isinstance(v, (int, float)) and not isinstance(v, bool)
                if not good or not math.isfinite(v) or (positive and v <= 0):
                    want = "a finite number > 0" if positive else "a finite number"
                    raise CheckpointError(f"{f}: {section}.{key} must be {want}, got {v!r}")
            return float(g), float(o)
    return 1.0, 0.0


FORMAT = "dmicro-hw-calibration"
FORMAT_VERSION = 1
LUT_FILE = "lut.npy"
LUT_SIGMA_FILE = "lut_sigma.npy"
FRAMES_FILE = "frames.npz"
PROBES_FILE = "probes.npz"
TARGET_FILE = "target.npy"
FLAT_FILE = "flatfield.npz"  # per-pixel gain, dark (ADU) and hot-pixel mask of the camera
ADAPTED_CHECKPOINT = "checkpoint_adapted.pt"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CalibrationBundle:
    """A calibration as loaded from (or about to be written to) a bundle folder.

    ``data`` is the full calibration.json mapping; ``mismatch`` the fitted bench model;
    ``parameters``: name → {value, sigma, unit}; ``lut``/``lut_sigma`` per grey level (rad).
    """

    data: dict[str, Any]
    mismatch: Mismatch
    parameters: dict[str, dict[str, float]]
    lut: np.ndarray | None
    lut_sigma: np.ndarray | None
    path: Path | None = None
    target: np.ndarray | None = None
    probes: dict[str, np.ndarray] = field(default_factory=dict)
    flat: tuple[np.ndarray, ...] | None = None  # (gain, dark ADU, hot, envelope)

    @property
    def rig_id(self) -> str:
        return str(self.data.get("rig_id", ""))

    @property
    def wavelength_m(self) -> float | None:
        wl = self.data.get("wavelength_m")
        return None if wl is None else float(wl)

    def value(self, name: str) -> float:
        return float(self.parameters[name]["value"])

    def sigma(self, name: str) -> float:
        return float(self.parameters[name].get("sigma", float("nan")))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_bundle(
    out_dir: Path | str,
    data: dict[str, Any],
    lut: np.ndarray | None,
    lut_sigma: np.ndarray | None,
    frames: Any | None = None,
    probes: dict[str, np.ndarray] | None = None,
    target: np.ndarray | None = None,
    flat: tuple[np.ndarray, ...] | None = None,
) -> Path:
    """Write the bundle folder (JSON last, atomically). Returns the folder.

    ``flat``: the flat-field step's (gain, dark ADU, hot-pixel mask, illumination envelope
    (relative intensity on the camera grid)), each (h, w)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = dict(data)
    d.setdefault("format", FORMAT)
    d.setdefault("format_version", FORMAT_VERSION)
    d.setdefault("software_version", __version__)
    d.setdefault("created_utc", utc_now())
    if lut is not None:
        np.save(out / LUT_FILE, np.asarray(lut, dtype=np.float64), allow_pickle=False)
        d.setdefault("slm", {})["lut"] = LUT_FILE
    if lut_sigma is not None:
        np.save(out / LUT_SIGMA_FILE, np.asarray(lut_sigma, dtype=np.float64), allow_pickle=False)
    if frames is not None:
        frames.save_npz(out / FRAMES_FILE)
    if probes:
        np.savez_compressed(out / PROBES_FILE, **{k: np.asarray(v) for k, v in probes.items()})
    if target is not None:
        np.save(out / TARGET_FILE, np.asarray(target, dtype=np.float32), allow_pickle=False)
    if flat is not None:
        g, dk, hot, env = flat
        np.savez_compressed(
            out / FLAT_FILE, gain=g, dark_adu=dk, hot=np.asarray(hot, bool), envelope=env
        )
        d["flatfield_file"] = FLAT_FILE
    from dmicro_hw.safe_io import write_text_safely

    write_text_safely(out / CALIBRATION_FILE, json.dumps(_jsonable(d), indent=2) + "\n")
    return out


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({e})") from None


def check_bundle_for_rig(bundle: CalibrationBundle, rig: RigConfig) -> None:
    """Refuse a bundle measured on another rig or at another wavelength (one clear line)."""
    where = bundle.path or "<calibration>"
    check_calibration_identity(where, bundle.rig_id, bundle.wavelength_m, rig)
    levels = 2**rig.slm.bit_depth
    if bundle.lut is not None and bundle.lut.shape != (levels,):
        raise CheckpointError(
            f"{where}: LUT has {bundle.lut.shape[0]} grey levels, the rig's "
            f"{rig.slm.bit_depth}-bit SLM has {levels}"
        )


def _finite_or_none(v: Any) -> bool:
    if v is None:
        return True
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_finite(cal: Path, mismatch: Mismatch) -> None:
    """Every mismatch parameter must be a finite number (a NaN model decodes nothing)."""
    import dataclasses

    for f in dataclasses.fields(mismatch):
        v = getattr(mismatch, f.name)
        vals = list(v.values()) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else [v]
        for x in vals:
            if isinstance(x, bool):
                continue
            if not isinstance(x, (int, float)) or not math.isfinite(x):
                raise CheckpointError(
                    f"{cal}: mismatch.{f.name} must be a finite number, got {x!r} — the bundle "
                    "is damaged; recalibrate (`dmicro calibrate`)"
                )


def load_bundle(path: Path | str, rig: RigConfig | None = None) -> CalibrationBundle:
    """Read a bundle folder (or its calibration.json); with ``rig``, check it belongs to it."""
    cal, _, data = read_calibration_json(path)
    folder = cal.parent
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{cal}: not a dmicro-hw calibration bundle (format={FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cal}: bundle format version {data.get('format_version')!r}, this dmicro-hw reads "
            f"{FORMAT_VERSION}"
        )
    try:
        mismatch = Mismatch.from_dict(data.get("mismatch", {}))
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{cal}: invalid 'mismatch' section ({e})") from None
    _check_finite(cal, mismatch)
    wl = data.get("wavelength_m")
    if not _finite_or_none(wl) or (wl is not None and wl <= 0):
        raise CheckpointError(f"{cal}: wavelength_m must be a number > 0, got {wl!r}")
    if not isinstance(data.get("rig_id", ""), str):
        raise CheckpointError(f"{cal}: rig_id must be a string, got {data.get('rig_id')!r}")
    params = data.get("parameters", {})
    if not isinstance(params, dict) or not all(
        isinstance(v, dict) and _finite_or_none(v.get("value")) for v in params.values()
    ):
        raise CheckpointError(
            f"{cal}: 'parameters' must map names to {{'value': finite number, …}} — the bundle "
            "is damaged; recalibrate (`dmicro calibrate`)"
        )
    lut = _load_npy(folder / LUT_FILE, "LUT") if (folder / LUT_FILE).is_file() else None
    if lut is not None and (lut.dtype.kind not in "fiu" or not np.isfinite(lut).all()):
        raise CheckpointError(f"{folder / LUT_FILE}: LUT must hold finite numbers; recalibrate")
    lut_sigma = (
        _load_npy(folder / LUT_SIGMA_FILE, "LUT σ") if (folder / LUT_SIGMA_FILE).is_file() else None
    )
    target = _load_npy(folder / TARGET_FILE, "target") if (folder / TARGET_FILE).is_file() else None
    probes: dict[str, np.ndarray] = {}
    if (folder / PROBES_FILE).is_file():
        try:
            with np.load(folder / PROBES_FILE, allow_pickle=False) as z:
                probes = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder / PROBES_FILE}: unreadable ({e})") from None
    flat = None
    if (folder / FLAT_FILE).is_file():
        try:
            with np.load(folder / FLAT_FILE, allow_pickle=False) as z:
                flat = (z["gain"], z["dark_adu"], z["hot"], z["envelope"])
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{folder / FLAT_FILE}: unreadable ({e}); recalibrate") from None
        if not (np.isfinite(flat[0]).all() and np.isfinite(flat[1]).all()):
            raise CheckpointError(f"{folder / FLAT_FILE}: non-finite flat field; recalibrate")
    b = CalibrationBundle(
        data=data,
        mismatch=mismatch,
        parameters=dict(params),
        lut=lut,
        lut_sigma=lut_sigma,
        path=folder,
        target=target,
        probes=probes,
        flat=flat,
    )
    if rig is not None:
        check_bundle_for_rig(b, rig)
    return b


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _plt():
    from dmicro_hw.figures import plt

    return plt()


def plot_lut(
    path: Path, table: np.ndarray, sigma: np.ndarray | None, points: list[dict], method: str
) -> Path:
    """LUT with its fit: measured levels (error bars), fitted curve and its 1-σ band."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 6), sharex=True, height_ratios=[3, 1])
    g = np.arange(len(table))
    ax.plot(g, table, "C0-", label=f"fitted LUT ({method})")
    ax.plot(g, 2 * np.pi * g / len(table), "k:", lw=1, label="nominal (linear)")
    if sigma is not None:
        ax.fill_between(
            g, table - 3 * sigma, table + 3 * sigma, color="C0", alpha=0.25, label="±3σ"
        )
    if points:
        pg = np.array([p["grey"] for p in points])
        pp = np.array([p["phase_rad"] for p in points])
        ps = np.array([p["sigma_rad"] for p in points])
        ax.errorbar(pg, pp, yerr=ps, fmt="o", color="C3", ms=3, label="measured levels")
        ax2.errorbar(pg, pp - table[pg], yerr=ps, fmt="o", color="C3", ms=3)
    ax2.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("phase (rad)")
    ax2.set_ylabel("meas. − fit")
    ax2.set_xlabel("grey level")
    ax.legend(fontsize=8)
    ax.set_title("SLM phase response")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_registration(
    path: Path,
    captured: dict[str, np.ndarray],
    simulated_nominal: dict[str, np.ndarray],
    simulated_fit: dict[str, np.ndarray],
    slm_grey: np.ndarray | None = None,
    footprint: np.ndarray | None = None,
    dc: tuple[float, float] | None = None,
) -> Path:
    """Registration overlay: per probe, captured vs nominal model vs fitted model (magenta /
    green overlays, white where they agree — readable with red/green colour blindness), the
    captured frame with its colour bar, plus the SLM with the fitted filter footprint and DC
    position."""
    from dmicro_hw.figures import RAW_CMAP, colorbar, overlay

    plt = _plt()
    keys = list(captured)
    cols = 3 + (1 if slm_grey is not None else 0)
    fig, axes = plt.subplots(len(keys), cols, figsize=(3 * cols, 3 * len(keys)), squeeze=False)

    def norm(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)

    for i, k in enumerate(keys):
        cap = norm(captured[k])
        for j, (name, sim) in enumerate(
            (("nominal model", simulated_nominal[k]), ("fitted model", simulated_fit[k]))
        ):
            axes[i, j].imshow(overlay(cap, norm(sim)), interpolation="nearest")
            axes[i, j].set_title(
                f"{k}\ncaptured (magenta) · {name} (green)\nwhite = agree", fontsize=7
            )
        im = axes[i, 2].imshow(cap, cmap=RAW_CMAP, vmin=0, vmax=1, interpolation="nearest")
        axes[i, 2].set_title(f"{k}: captured", fontsize=8)
        colorbar(fig, im, axes[i, 2], "intensity (1–99 % range → 0–1)")
        if slm_grey is not None:
            ax = axes[i, 3]
            if i == 0:
                sim_im = ax.imshow(slm_grey, cmap=RAW_CMAP, interpolation="nearest")
                colorbar(fig, sim_im, ax, "SLM grey level")
                if footprint is not None:
                    ax.plot(
                        footprint[:, 1],
                        footprint[:, 0],
                        "-",
                        color="#0072B2",
                        lw=1.2,
                        label="pupil (fit)",
                    )
                if dc is not None:
                    ax.plot([dc[1]], [dc[0]], "+", color="#E69F00", ms=12, mew=2, label="DC (fit)")
                ax.set_xlabel("SLM x (pixels)", fontsize=7)
                ax.set_ylabel("SLM y (pixels)", fontsize=7)
                ax.legend(fontsize=7)
                ax.set_title("SLM: fitted footprint", fontsize=8)
            else:
                ax.axis("off")
        for ax in axes[i, :3]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_residuals(
    path: Path, before: dict[str, np.ndarray], after: dict[str, np.ndarray], sigma: dict
) -> Path:
    """Residual maps (captured − model, in noise σ) before (nominal) and after calibration."""
    from dmicro_hw.figures import DIVERGING_CMAP, colorbar

    plt = _plt()
    keys = list(before)
    fig, axes = plt.subplots(2, len(keys), figsize=(2.4 * len(keys), 5), squeeze=False)
    for j, k in enumerate(keys):
        for i, (label, d) in enumerate((("before", before[k]), ("after", after[k]))):
            z = d / np.maximum(sigma[k], 1e-9)
            lim = max(3.0, float(np.percentile(np.abs(z), 99))) if i == 0 else 3.0
            im = axes[i, j].imshow(
                z, cmap=DIVERGING_CMAP, vmin=-lim, vmax=lim, interpolation="nearest"
            )
            rms = float(np.sqrt(np.mean(z**2)))
            axes[i, j].set_title(f"{k} {label}\nRMS {rms:.1f}σ", fontsize=7)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            colorbar(fig, im, axes[i, j], "residual (σ)", pad=0.02)
    fig.suptitle("residual maps (captured − model) / σ: nominal model vs fitted model")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
