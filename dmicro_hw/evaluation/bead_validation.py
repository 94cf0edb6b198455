"""``dmicro validate beads``: bead fits on a stored run or a folder of phase maps, measured
against the index and radius the sample was given.

* RUN (an acquisition folder or its ``run.zarr``): up to ``frames`` decoded frames
  (``recon_status`` ok, evenly spaced) are fitted. Wavelength, pixel size, medium index and the
  given bead index/radius come from the rig recorded in the store (``optics``, ``bench.beads``
  when ``bench.sample`` is ``beads``); flags override them. On the simulated rig the virtual bench
  is re-created from the recorded rig, so every frame's true beads are known: beads found vs
  expected, lost and spurious beads, the radius error per bead against its true radius, and the
  same fit on the bench's true phase of the same frames (the fit's own accuracy, a reference).
* FOLDER (or one file) of phase maps in radians (.npy, .tif, … — the formats of
  :mod:`dmicro_hw.data.folder`): wavelength, pixel size and medium index come from flags or a
  rig config.

Every user error is a :class:`~dmicro_hw.errors.DmicroError` with one line naming what is missing.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dmicro_hw.errors import ConfigError, DataError
from dmicro_hw.evaluation.beads import BeadFit, fit_beads, summarize_fits
from dmicro_hw.safe_io import atomic_file, write_text_safely

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 32
EDGE_CLEAR_PX = 2.0  # a true bead is expected to be found when its rim is this far inside, px


@dataclass(frozen=True)
class BeadOverrides:
    """Values given on the command line; each wins over the rig's (None: take the rig's)."""

    wavelength_m: float | None = None
    pixel_size_m: float | None = None
    medium_index: float | None = None
    index: float | None = None  # given bead index
    radius_m: float | None = None  # given nominal bead radius


@dataclass
class BeadParams:
    """Optics and sample parameters of a validation, with where each came from."""

    wavelength_m: float
    pixel_size_m: float
    medium_index: float
    index: float | None = None  # given bead index (None: not known, only measured)
    radius_m: float | None = None  # given nominal radius
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def polarity(self) -> int:
        """Sign of the expected Δn (+1 when the bead index is not given)."""
        if self.index is None:
            return 1
        return 1 if self.index > self.medium_index else -1


@dataclass
class BeadReport:
    """What ``dmicro validate beads`` measured (JSON-ready via :meth:`to_dict`)."""

    source: str
    kind: str  # "run" | "folder"
    params: BeadParams
    images: list[str]  # frame ids ("frame 12") or file names fitted
    fits: list[BeadFit]
    summary: dict[str, Any]
    truth: dict[str, Any] | None = None  # simulated rig: found/expected/lost, per-bead errors
    reference: dict[str, Any] | None = None  # simulated rig: the same fit on the true phase
    example: dict[str, Any] | None = None  # one fitted bead for the figure (image, fit)

    def to_dict(self) -> dict[str, Any]:
        p = self.params
        return {
            "source": self.source,
            "kind": self.kind,
            "parameters": {
                "wavelength_m": p.wavelength_m,
                "pixel_size_m": p.pixel_size_m,
                "medium_index": p.medium_index,
                "given_index": p.index,
                "given_radius_m": p.radius_m,
                "from": p.origin,
            },
            "images": len(self.images),
            "summary": self.summary,
            "truth": self.truth,
            "reference_true_phase": self.reference,
            "beads": [f.as_dict() for f in self.fits],
        }


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def resolve_params(
    rig: Any | None, *, rig_source: str, given: BeadOverrides = BeadOverrides()
) -> BeadParams:
    """Flags first, then the rig (``optics``; ``bench.beads`` when ``bench.sample`` is beads)."""
    g = given
    origin: dict[str, str] = {}
    beads = rig.bench.beads if rig is not None and rig.bench.sample == "beads" else None

    def pick(name: str, flag: float | None, from_rig: float | None, key: str) -> float | None:
        if flag is not None:
            if not math.isfinite(flag) or flag <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be finite and > 0, got {flag}")
            origin[name] = "flag"
            return float(flag)
        if from_rig is not None:
            origin[name] = f"{rig_source}: {key}"
            return float(from_rig)
        return None

    optics = rig.optics if rig is not None else None
    wl = pick("wavelength_m", g.wavelength_m, optics and optics.wavelength_m, "optics.wavelength_m")
    px = pick("pixel_size_m", g.pixel_size_m, optics and optics.pixel_size_m, "optics.pixel_size_m")
    nm = pick("medium_index", g.medium_index, beads and beads.medium_index, "bench.beads")
    idx = pick("index", g.index, beads and beads.index, "bench.beads")
    rad = pick("radius_m", g.radius_m, beads and beads.radius_m, "bench.beads")
    missing = [
        f"--{n.replace('_', '-')}"
        for n, v in (("wavelength_m", wl), ("pixel_size_m", px), ("medium_index", nm))
        if v is None
    ]
    if missing:
        hint = (
            "--config rig.yaml with bench.sample: beads"
            if "--medium-index" in missing
            else "--config rig.yaml"
        )
        raise ConfigError(
            f"{rig_source}: {', '.join(missing)} unknown — pass {' '.join(missing)} or {hint}"
        )
    if idx is not None and idx == nm:
        raise ConfigError(f"bead index {idx} equals the medium index: Δn = 0, nothing to measure")
    return BeadParams(wl, px, nm, idx, rad, origin)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Fitting many images
# --------------------------------------------------------------------------------------------


def _fit_all(images: list[np.ndarray], names: list[str], p: BeadParams) -> list[list[BeadFit]]:
    return [
        fit_beads(
            img,
            wavelength_m=p.wavelength_m,
            pixel_size_m=p.pixel_size_m,
            medium_index=p.medium_index,
            polarity=p.polarity,
            source=name,
        )
        for img, name in zip(images, names)
    ]


def _fit_report(
    source: str, kind: str, p: BeadParams, images: list[np.ndarray], names: list[str]
) -> tuple[BeadReport, list[list[BeadFit]]]:
    """Fit every image; DataError when no bead fits. Returns the report and the fits per image."""
    per_image = _fit_all(images, names, p)
    fits = [f for fs in per_image for f in fs]
    if not any(f.ok for f in fits):
        what = "decoded frames" if kind == "run" else "phase maps"
        raise DataError(
            f"{source}: no beads found in {len(images)} {what} "
            f"({len(fits)} candidates, none fitted the sphere model)"
        )
    report = BeadReport(
        source,
        kind,
        p,
        names,
        fits,
        summarize_fits(fits, given_index=p.index, given_radius_m=p.radius_m),
        example=_pick_example(images, per_image, p.index),
    )
    return report, per_image


def _pick_example(
    images: list[np.ndarray], per_image: list[list[BeadFit]], given_index: float | None
) -> dict[str, Any] | None:
    """The ok fit with the median index (error): a representative bead for the figure."""
    cand = [(i, f) for i, fits in enumerate(per_image) for f in fits if f.ok]
    if not cand:
        return None
    key = [abs(f.index - given_index) if given_index is not None else f.index for _, f in cand]
    i, f = cand[int(np.argsort(key)[len(key) // 2])]
    return {"image": images[i], "fit": f}


def _match(
    fits: list[BeadFit], truth: list[Any], pixel_size_m: float
) -> list[tuple[Any, BeadFit | None]]:
    """Pair each true bead with the nearest ok fit within half its radius (or 2 px)."""
    pairs = []
    free = [f for f in fits if f.ok]
    for b in truth:
        tol = max(2.0, 0.5 * b.radius_m / pixel_size_m)
        best = min(free, key=lambda f: math.hypot(f.cy_px - b.cy, f.cx_px - b.cx), default=None)
        if best is not None and math.hypot(best.cy_px - b.cy, best.cx_px - b.cx) <= tol:
            free.remove(best)
            pairs.append((b, best))
        else:
            pairs.append((b, None))
    return pairs


def _truth_stats(
    per_image: list[list[BeadFit]],
    truths: list[list[Any]],
    p: BeadParams,
    field_size: int,
) -> dict[str, Any]:
    """Found / expected / lost / spurious beads and per-bead errors against the true beads.

    ``truths`` holds every bead wholly inside each image; the *expected* ones are those whose rim
    is at least ``EDGE_CLEAR_PX`` inside the field. A fit matched to a bead nearer the edge is
    neither lost nor spurious (its errors count); an ok fit matched to no true bead is spurious.
    """
    r_clear = EDGE_CLEAR_PX - 0.5

    def expected(b: Any) -> bool:
        r = b.radius_m / p.pixel_size_m
        lo, hi = r_clear, field_size - 1 - r_clear
        return min(b.cy - r, b.cx - r) >= lo and max(b.cy + r, b.cx + r) <= hi

    n_exp = found = spurious = 0
    idx_err, rad_err = [], []
    for fits, truth in zip(per_image, truths):
        pairs = _match(fits, truth, p.pixel_size_m)
        matched = [(b, f) for b, f in pairs if f is not None]
        n_exp += sum(expected(b) for b, _ in pairs)
        found += sum(expected(b) for b, _ in matched)
        spurious += sum(f.ok for f in fits) - len(matched)
        for b, f in matched:
            idx_err.append(f.index - b.index)
            rad_err.append((f.radius_m - b.radius_m) / b.radius_m)
    ie, re_ = np.abs(np.array(idx_err)), np.abs(np.array(rad_err))
    return {
        "expected": n_exp,
        "found": found,
        "lost": n_exp - found,
        "spurious": spurious,
        "matched": len(idx_err),
        "index_error_median": float(np.median(ie)) if ie.size else None,
        "index_error_p90": float(np.percentile(ie, 90)) if ie.size else None,
        "radius_error_median_rel": float(np.median(re_)) if re_.size else None,
        "radius_error_max_rel": float(re_.max()) if re_.size else None,
    }


# --------------------------------------------------------------------------------------------
# Run and folder
# --------------------------------------------------------------------------------------------


def is_run(path: Path) -> bool:
    """A run folder (``RUN/run.zarr``) or a run store itself (``…/zarr.json``)."""
    return (path / "run.zarr").is_dir() or (path / "zarr.json").is_file()


def _pick_frames(n: int, k: int) -> np.ndarray:
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int)) if n else np.array([])
    )


def validate_run(
    run: Path | str,
    *,
    frames: int = DEFAULT_FRAMES,
    rig_config: Path | str | None = None,
    given: BeadOverrides = BeadOverrides(),
) -> BeadReport:
    """Fit the beads of up to ``frames`` decoded frames of a run (see the module docstring)."""
    from dmicro_hw.acquisition.store import RECON_OK, RunReader
    from dmicro_hw.config import RigConfig, load_rig_config, validate

    reader = RunReader(run)
    rig_d = reader.attrs.get("rig")
    if rig_config is not None:
        rig, source = load_rig_config(rig_config), str(rig_config)
    elif rig_d:
        rig, source = validate(RigConfig, rig_d, f"{reader.path} (recorded rig)"), "recorded rig"
    else:
        rig, source = None, f"{reader.path} (no recorded rig)"
    p = resolve_params(rig, rig_source=source, given=given)
    if not reader.has_phase:
        raise DataError(f"{reader.path}: no phase in this run (decode it: dmicro reconstruct RUN)")
    ok = np.flatnonzero(reader.recon_status() == RECON_OK)
    if ok.size == 0:
        raise DataError(
            f"{reader.path}: no decoded frame (recon_status ok) of {reader.committed} "
            f"(decode it: dmicro reconstruct RUN)"
        )
    sel = ok[_pick_frames(ok.size, frames)]
    fids = reader.records()["frame_id"]
    phase_arr = reader.phase_array
    images = [np.asarray(phase_arr[int(i)], dtype=np.float64) for i in sel]
    if not all(np.isfinite(im).all() for im in images):
        raise DataError(f"{reader.path}: decoded phase contains NaN or Inf")
    names = [f"frame {int(fids[i])}" for i in sel]
    folder = reader.path.parent if reader.path.name == "run.zarr" else reader.path
    report, per_image = _fit_report(str(folder), "run", p, images, names)
    if rig is not None and rig.camera.backend == "sim" and rig.bench.sample == "beads":
        _add_sim_truth(report, rig, [int(fids[i]) for i in sel], per_image)
    return report


def _add_sim_truth(
    report: BeadReport, rig: Any, frame_ids: list[int], per_image: list[list[BeadFit]]
) -> None:
    """Truth of the simulated bench: expected beads per frame, and the fit on the true phase."""
    from dmicro_hw.simulators.bench import VirtualBench

    bench = VirtualBench.from_rig(rig)
    n = bench.field_size
    p = report.params
    truths = [bench.true_beads(fid) for fid in frame_ids]
    report.truth = _truth_stats(per_image, truths, p, n)
    true_images = [bench.true_phase(fid).astype(np.float64) for fid in frame_ids]
    ref = _fit_all(true_images, [f"true phase, frame {fid}" for fid in frame_ids], p)
    ref_fits = [f for fs in ref for f in fs]
    report.reference = {
        **summarize_fits(ref_fits, given_index=p.index, given_radius_m=p.radius_m),
        **{f"truth_{k}": v for k, v in _truth_stats(ref, truths, p, n).items()},
    }


def validate_folder(
    folder: Path | str,
    *,
    frames: int = DEFAULT_FRAMES,
    rig_config: Path | str | None = None,
    given: BeadOverrides = BeadOverrides(),
) -> BeadReport:
    """Fit the beads of up to ``frames`` phase maps (radians) of a folder or file."""
    from dmicro_hw.config import load_rig_config
    from dmicro_hw.data.folder import list_files, load_folder

    path = Path(folder)
    list_files(path)  # an empty folder is reported before missing parameters
    rig = load_rig_config(rig_config) if rig_config is not None else None
    source = str(rig_config) if rig_config is not None else f"{path} (no --config)"
    p = resolve_params(rig, rig_source=source, given=given)
    maps = load_folder(path, content="phase", min_size=8)
    maps = [maps[int(i)] for i in _pick_frames(len(maps), frames)]
    images = [m.phase.astype(np.float64) for m in maps]
    return _fit_report(str(path), "folder", p, images, [m.source for m in maps])[0]


def validate_beads(path: Path | str, **kwargs: Any) -> BeadReport:
    """A run or a folder, whichever ``path`` is (keyword arguments of :func:`validate_run`);
    missing path → DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: not found (give a run folder or a folder of phase maps)")
    return validate_run(p, **kwargs) if p.is_dir() and is_run(p) else validate_folder(p, **kwargs)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def write_report(report: BeadReport, out: Path | str) -> dict[str, Path | None]:
    """``beads.json`` and ``beads.png`` (when a bead fitted) into ``out``; returns the paths."""
    out = Path(out)
    if out.is_symlink():
        raise DataError(f"{out}: output folder is a symbolic link; give a real folder")
    out.mkdir(parents=True, exist_ok=True)
    js = out / "beads.json"
    text = json.dumps(report.to_dict(), indent=2, allow_nan=True) + "\n"
    write_text_safely(js, text)  # atomic, never through a symlink
    png = None
    if report.example is not None:
        png = out / "beads.png"
        with atomic_file(png) as f:
            save_bead_figure(report, f)
    return {"json": js, "figure": png}


def save_bead_figure(report: BeadReport, path: Path | str | BinaryIO) -> None:
    """One fitted bead: data, model, residual (rad, colourbars, µm axes) and the profiles
    through its centre (data vs model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmicro_hw.evaluation.beads import bead_window_model

    ex = report.example
    assert ex is not None
    img, f = ex["image"], ex["fit"]
    p = report.params
    model = bead_window_model(
        f, img.shape, wavelength_m=p.wavelength_m, pixel_size_m=p.pixel_size_m
    )
    r_px = f.radius_m / p.pixel_size_m
    half = int(math.ceil(1.8 * r_px + 3))
    cy, cx = int(round(f.cy_px)), int(round(f.cx_px))
    y0, y1 = max(0, cy - half), min(img.shape[0], cy + half + 1)
    x0, x1 = max(0, cx - half), min(img.shape[1], cx + half + 1)
    um = p.pixel_size_m * 1e6
    ext = [(x0 - 0.5 - f.cx_px) * um, (x1 - 0.5 - f.cx_px) * um]
    ext += [(y1 - 0.5 - f.cy_px) * um, (y0 - 0.5 - f.cy_px) * um]
    d, m = img[y0:y1, x0:x1], model[y0:y1, x0:x1]
    vmin, vmax = float(min(d.min(), m.min())), float(max(d.max(), m.max()))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, arr, title in ((axes[0], d, "data"), (axes[1], m, "fitted sphere model")):
        im = ax.imshow(arr, extent=ext, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(f"{title} (rad)")
        fig.colorbar(im, ax=ax, label="phase (rad)")
    res = d - m
    lim = float(np.abs(res).max()) or 1.0
    im = axes[2].imshow(res, extent=ext, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[2].set_title(f"residual (rad), RMS {f.residual_rms_rad:.3g}")
    fig.colorbar(im, ax=axes[2], label="data − model (rad)")
    for ax in axes[:3]:
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
    # profiles through the fitted centre: the data row/column and the model on a fine grid
    xs = np.arange(x0, x1)
    fine = np.linspace(x0 - 0.5, x1 - 0.5, 400)
    from dmicro_hw.data.beads import sphere_phase

    prof = f.offset_rad + sphere_phase(
        cy, fine, f.cy_px, f.cx_px, f.radius_m, f.delta_n, p.wavelength_m, p.pixel_size_m
    )
    ax = axes[3]
    ax.plot((xs - f.cx_px) * um, img[cy, x0:x1], "o", ms=4, label=f"data, row {cy}")
    ax.plot((xs - f.cx_px) * um, model[cy, x0:x1], "s", ms=3, mfc="none", label="model pixels")
    ax.plot((fine - f.cx_px) * um, prof, "-", lw=1, label="model, continuous x")
    ax.set_xlabel("x − centre (µm)")
    ax.set_ylabel("phase (rad)")
    given = "" if p.index is None else f" (given {p.index:.4f})"
    ax.set_title(
        f"n = {f.index:.4f} ± {f.index_sigma:.4f}{given}\n"
        f"R = {f.radius_m * 1e6:.3f} ± {f.radius_sigma_m * 1e6:.3f} µm"
    )
    ax.legend(fontsize=8)
    fig.suptitle(f"{report.source}: {f.source}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
