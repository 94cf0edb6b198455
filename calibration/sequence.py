"""The guided calibration sequence, in its documented order.

    1. registration  camera ↔ simulation grid and pupil (flat SLM), knife-edge scan for the DC
                     position on the SLM, SLM placement (edges/discs on the DC, blazed ramps)
    2. lut           SLM phase response by Fourier phase stepping of the DC (per grey level),
                     monotone curve with uncertainty
    3. fit           camera-in-the-loop fit of every mismatch parameter at once (LUT, placement,
                     Zernike terms, tilt, camera shift/rotation/scale, gain/offset) on all probes,
                     displayed lenses (phase diversity) and the trained mask; uncertainties from
                     the Gauss–Newton curvature; noise level from the photon-transfer line
    4. adapt         decoder fine-tuning on the calibrated model (needs a checkpoint)
    5. drift         reference probes for later drift checks (alone: check against a bundle)

Why this order: the LUT probe phase-shifts the *unscattered* light, so it needs to know where the
DC lands on the SLM (registration); the joint fit starts from both, inside the basin of the right
minimum; adaptation needs the fitted model; the drift reference is the final state.

A step can run alone (``steps=("lut",)``): what it needs comes from the previous bundle
(``previous``), otherwise its prerequisite steps are run first (and the report says so).
Devices are used only through the SLM and Camera protocols (:mod:`.capture`), so the sequence
runs unchanged on a real bench. Progress goes to a :class:`Reporter` (the CLI shows rich bars).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dmicro_hw.calibration import bundle as B
from dmicro_hw.calibration import lut as L
from dmicro_hw.calibration import patterns as P
from dmicro_hw.calibration import registration as R
from dmicro_hw.calibration.capture import Capturer, place_target, release_target
from dmicro_hw.calibration.model_fit import (
    FitResult,
    ForwardModel,
    NoiseModel,
    Observation,
    fit,
    get_params,
    noise_model,
    param_specs,
    set_params,
)
from dmicro_hw.config import RigConfig
from dmicro_hw.errors import ConfigError
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

log = logging.getLogger(__name__)

EXTRA_ZERNIKE_TERMS = (9, 10, 12, 13, 14, 15)  # tried by the flat-field re-fit, kept if > 5σ

DRIFT_PROBES = (
    "flat",
    "edge000",
    "edge090",
    "disc_r1.5",
    "ramp000",
    "ramp090",
    "lut_g00080",
    "lut_g00175",
)


@dataclass(frozen=True)
class Step:
    """One calibration step, declared once: the sequence, the resume logic (``resolve_steps``)
    and the CLI (help text, default steps) all read :data:`STEP_TABLE`.

    ``method``: the :class:`CalibrationRun` method that runs it while the known target is
    mounted (``None``: runs after the bundle is written — adapt); ``needs``: steps whose results
    it uses (from this run, else from a previous bundle, else they are run first);
    ``default``: part of the default sequence; ``needs_checkpoint``: only with a trained
    checkpoint; ``alone_needs_bundle``: run alone it compares with a stored bundle (drift).
    """

    name: str
    description: str
    method: str | None
    needs: tuple[str, ...] = ()
    default: bool = True
    needs_checkpoint: bool = False
    alone_needs_bundle: bool = False


STEP_TABLE: tuple[Step, ...] = (
    Step(
        "registration",
        "camera ↔ simulation grid, pupil, knife-edge DC, SLM placement",
        "registration",
    ),
    Step("lut", "SLM phase response by Fourier phase stepping of the DC", "lut", ("registration",)),
    Step(
        "fit",
        "joint camera-in-the-loop fit of every mismatch parameter; LUT levels re-measured "
        "through the fitted model",
        "fit",
        ("registration",),
    ),
    Step(
        "flatfield",
        "per-pixel flat field and dark frame (hot pixels) from the probes' diversity, "
        "extra Zernike terms where the data support them, robust re-fit",
        "flatfield",
        ("fit",),
    ),
    Step(
        "adapt",
        "decoder fine-tuning on the calibrated model",
        None,
        ("fit",),
        default=False,
        needs_checkpoint=True,
    ),
    Step(
        "drift",
        "reference probes for later drift checks (alone: check against a bundle)",
        "drift_reference",
        alone_needs_bundle=True,
    ),
)
STEPS = tuple(s.name for s in STEP_TABLE)
STEP_BY_NAME = {s.name: s for s in STEP_TABLE}


def default_steps(with_checkpoint: bool = False) -> list[str]:
    """The default sequence (plus the checkpoint steps when a trained checkpoint is known)."""
    return [s.name for s in STEP_TABLE if s.default or (with_checkpoint and s.needs_checkpoint)]


def steps_help() -> str:
    """One line per step for the CLI's help."""
    return "; ".join(f"{s.name}: {s.description}" for s in STEP_TABLE)


class Reporter(Protocol):
    """Progress sink of the sequence (the CLI implements it with rich)."""

    def step(self, name: str, total: int, description: str) -> None: ...
    def advance(self, n: int = 1, note: str = "") -> None: ...
    def note(self, text: str) -> None: ...
    def done(self, name: str, summary: str) -> None: ...


class LogReporter:
    """Reporter that only logs (tests, benchmarks)."""

    def step(self, name: str, total: int, description: str) -> None:
        log.info("calibration step %s: %s", name, description)

    def advance(self, n: int = 1, note: str = "") -> None:
        if note:
            log.debug(note)

    def note(self, text: str) -> None:
        log.info(text)

    def done(self, name: str, summary: str) -> None:
        log.info("calibration step %s done: %s", name, summary)


@dataclass
class CalibrationOptions:
    """Knobs of the sequence (defaults suit the simulated rig and a typical bench).

    Lengths in filter samples are converted to SLM pixels with the nominal pitch ratio.
    """

    frames_per_pattern: int = 16
    target_kind: str = "resolution"
    target_phase_max_rad: float = 2.0
    target_path: Path | None = None
    knife_span_samples: float = 6.0
    knife_step_samples: float = 0.6
    ramp_period_samples: float = 5.0
    lens_phase_rad: float = 6.0
    lut_levels: int = 16
    fit_max_iter: int = 15
    adapt_steps: int = 400  # 150 left seeds 3, 4 of the sim rig 0.7–1.4 dB short
    adapt_batch: int = 8
    adapt_lr: float = 5e-4
    seed: int = 0


@dataclass
class CalibrationResult:
    """What a run produced: the bundle folder (if written), its data and step summaries."""

    out_dir: Path | None
    data: dict[str, Any]
    summaries: dict[str, str] = field(default_factory=dict)
    system: PhysicalSystem | None = None
    drift: Any = None


def resolve_steps(
    requested: Sequence[str], have_previous: bool, have_checkpoint: bool
) -> tuple[list[str], list[str]]:
    """Requested steps in the documented order plus prerequisites; returns (steps, notes)."""
    req = []
    for s in requested:
        s = s.strip().lower()
        if not s:
            continue
        if s not in STEPS:
            raise ConfigError(f"--steps: unknown step {s!r}; allowed: {', '.join(STEPS)}")
        req.append(s)
    if not req:
        raise ConfigError(f"--steps: no step given; allowed: {', '.join(STEPS)}")
    steps = set(req)
    notes = []
    if not have_previous:  # prerequisites come from this run: add them (transitively)
        todo = list(steps)
        while todo:
            for need in STEP_BY_NAME[todo.pop()].needs:
                if need not in steps:
                    steps.add(need)
                    todo.append(need)
                    notes.append(f"no previous bundle: running {need} first")
    for s in sorted(steps, key=STEPS.index):
        if STEP_BY_NAME[s].needs_checkpoint and not have_checkpoint:
            raise ConfigError(
                f"--steps {s}: needs a trained checkpoint (rig.checkpoint or --checkpoint)"
            )
    if len(steps) == 1 and STEP_BY_NAME[next(iter(steps))].alone_needs_bundle:
        if not have_previous:
            raise ConfigError(
                f"--steps {next(iter(steps))}: needs a calibration bundle to compare with "
                "(rig.calibration or --bundle)"
            )
    return [s for s in STEPS if s in steps], notes


def known_target(rig: RigConfig, options: CalibrationOptions) -> np.ndarray:
    """The known phase target (N, N) rad: a file (real bench) or a built-in target."""
    n = rig.optics.field_size
    if options.target_path is not None:
        try:
            t = np.load(options.target_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"target: cannot read {options.target_path} ({e})") from None
        if t.shape != (n, n) or not np.all(np.isfinite(t)):
            raise ConfigError(
                f"target: {options.target_path} must be a finite ({n}, {n}) phase map (rad)"
            )
        return t.astype(np.float32)
    from dmicro_hw.data.phantoms import phase_target

    return phase_target(n, options.target_kind, options.target_phase_max_rad).astype(np.float32)


def _slm_model_cfg(rig: RigConfig):
    from dmicro_hw.config import SLMModelConfig

    return SLMModelConfig(**{k: getattr(rig.slm, k) for k in SLMModelConfig.model_fields})


def new_system(rig: RigConfig, mismatch: Mismatch | None = None) -> PhysicalSystem:
    return PhysicalSystem(rig.optics, rig.sensor, _slm_model_cfg(rig), mismatch or Mismatch())


def extra_read_noise(nm: NoiseModel, rig: RigConfig, cam_gain: float) -> float:
    """Read noise (e⁻) in excess of the configured one, from the photon-transfer floor."""
    g = rig.sensor.gain_adu_per_e
    q = 1.0 / 12
    pre = (nm.floor - q) / max(cam_gain, 1e-6) ** 2 - q
    return float(math.sqrt(max(pre / g**2 - rig.sensor.read_noise_e**2, 0.0)))


def _dc_sigma(system: PhysicalSystem, res: FitResult) -> tuple[float, float]:
    """1-σ of the DC position on the SLM from the fit covariance (offset and tilt)."""
    names = ["slm_offset_y", "slm_offset_x", "tilt_y", "tilt_x"]
    if not all(n in res.names for n in names):
        return (
            res.sigma.get("slm_offset_y", float("nan")),
            res.sigma.get("slm_offset_x", float("nan")),
        )
    idx = [res.names.index(n) for n in names]
    sd = np.array([res.sigma[n] for n in names])
    cov = res.correlation[np.ix_(idx, idx)] * np.outer(sd, sd)
    g = system.slm.geometry
    with torch.no_grad():
        m = (g.scale * g.ratio * g._rotation()).numpy()
    jac = np.hstack([np.eye(2), m])
    c = jac @ cov @ jac.T
    return float(math.sqrt(max(c[0, 0], 0))), float(math.sqrt(max(c[1, 1], 0)))


class CalibrationRun:
    """State and steps of one calibration (see the module docstring)."""

    def __init__(
        self,
        rig: RigConfig,
        slm: Any,
        camera: Any,
        options: CalibrationOptions | None = None,
        reporter: Reporter | None = None,
        previous: B.CalibrationBundle | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        self.rig = rig
        self.slm, self.camera = slm, camera
        self.opt = options or CalibrationOptions()
        self.rep: Reporter = reporter or LogReporter()
        self.previous = previous
        self.checkpoint = checkpoint
        self.capturer = Capturer(
            slm,
            camera,
            rig.sensor.bit_depth,
            self.opt.frames_per_pattern,
            on_capture=lambda pid, n: self.rep.advance(1, f"captured {pid}"),
        )
        self.shape = tuple(int(x) for x in slm.shape)
        self.bits = int(rig.slm.bit_depth)
        self.target = known_target(rig, self.opt)
        self.targets = {"target": self.target}
        self.system = new_system(rig, previous.mismatch if previous else None)
        illum = {k: v["value"] for k, v in (previous.parameters if previous else {}).items()}
        illum = {k: v for k, v in illum.items() if k.startswith("illum_")}
        if illum:  # the bundle's illumination envelope (flat-field step) is part of its model
            from dmicro_hw.calibration.model_fit import enable_illumination

            enable_illumination(self.system)
            set_params(self.system, illum)
        self.ratio = float(self.system.slm.geometry.ratio)
        self.obs: dict[str, Observation] = {}
        self.noise: NoiseModel | None = None
        self.results: dict[str, dict[str, Any]] = {}
        self.lut_fit: L.LUTFit | None = None
        self.zones: L.ZoneResponse | None = None  # pupil zones vs the DC curve (refine_lut)
        self.joint: FitResult | None = None
        self.summaries: dict[str, str] = {}
        self.dc: tuple[float, float] | None = None
        self.joint_obs: list[Observation] = []
        self.flat: tuple[np.ndarray, ...] | None = None  # gain, dark, hot, envelope
        if previous is not None:
            self.dc = R.offset_to_dc(self.system)
            self.zones = L.ZoneResponse.from_dict((previous.data.get("lut") or {}).get("zones"))
            if self.zones is not None:  # the model holds the DC probes' scale (see mismatch())
                s = get_params(self.system, ["lut_scale"])["lut_scale"]
                set_params(self.system, {"lut_scale": s / self.zones.mean})

    # ---------------------------------------------------------------- helpers
    def capture(self, probes: Sequence[R.Probe]) -> list[Observation]:
        out = []
        for p in probes:
            o = self.capturer.capture(p.pattern_id, p.kind, p.grey, "target", p.meta)
            self.obs[p.pattern_id] = o
            out.append(o)
        return out

    def update_noise(self) -> NoiseModel:
        """Re-fit the photon-transfer line on all frames so far; re-weight observations."""
        obs = list(self.obs.values())
        self.noise = noise_model(
            [o.mean for o in obs],
            [o.var for o in obs],
            [o.valid for o in obs],
            adc_max=float(2**self.rig.sensor.bit_depth - 1),
        )
        for o in obs:
            o.var = self.noise.variance(o.mean)
        return self.noise

    def _fit_progress(self, label: str):
        def cb(it: int, cost: float) -> None:
            self.rep.advance(1, f"{label}: LM iteration {it + 1}, χ² {cost:.4g}")

        return cb

    # ---------------------------------------------------------------- 1. registration
    def registration(self) -> None:
        o = self.opt
        span = o.knife_span_samples * self.ratio
        step = o.knife_step_samples * self.ratio
        knife = R.knife_edge_probes(self.shape, span, step, 2 ** (self.bits - 1))
        self.rep.step("registration", 1 + len(knife) + 10 + 30, "camera, pupil and SLM placement")
        flat = self.capture(R.camera_probes(self.shape))
        self.update_noise()
        r1 = R.fit_camera_and_pupil(
            self.system, self.targets, flat, progress=lambda s: self.rep.advance(1, s)
        )
        self.results["camera_pupil"] = r1.to_dict()
        kobs = self.capture(knife)
        dc = R.locate_dc(kobs)
        self.results["knife_edge"] = dc
        rk = R.refine_dc(self.system, self.targets, kobs, dc, 2.5 * self.ratio)
        self.results["knife_edge_fit"] = rk.to_dict()
        dcr = R.offset_to_dc(self.system)
        self.rep.note(
            f"knife-edge: DC at ({dc['dy']:+.2f}, {dc['dx']:+.2f}) SLM px, model-refined "
            f"({dcr[0]:+.3f}, {dcr[1]:+.3f})"
        )
        probes = R.placement_probes(self.shape, dcr, self.ratio)
        probes += R.ramp_probes(self.shape, o.ramp_period_samples * self.ratio, self.bits)
        pobs = self.capture(probes)
        self.update_noise()
        r2 = fit(
            self.system,
            self.targets,
            flat + pobs,
            R.SLM_GEOMETRY_PARAMS + R.LUT_PARAMS + ["cam_gain", "cam_offset"],
            max_iter=25,
            bounds=R.BOUNDS,
            callback=self._fit_progress("placement"),
        )
        self.results["placement"] = r2.to_dict()
        self.dc = R.offset_to_dc(self.system)
        v = r2.values
        self.summaries["registration"] = (
            f"DC on SLM ({self.dc[0]:+.2f}, {self.dc[1]:+.2f}) px, rotation "
            f"{math.degrees(v['slm_rotation']):+.3f}°, scale {v['slm_scale']:.4f}, "
            f"χ²/dof {r2.chi2_dof:.2f}"
        )
        self.rep.done("registration", self.summaries["registration"])

    # ---------------------------------------------------------------- 2. LUT
    def lut(self) -> None:
        assert self.dc is not None
        probes = L.lut_probes(self.shape, self.dc, 1.5 * self.ratio, self.bits, self.opt.lut_levels)
        self.rep.step(
            "lut",
            2 * len(probes) + L.zone_probe_count(),
            f"phase response at {len(probes)} grey levels",
        )
        obs = self.capture(probes)
        self.update_noise()
        resp = self.system.slm.response
        with torch.no_grad():
            start = [float(resp(torch.tensor(float(o.meta["grey"])))) for o in obs]
        levels = []
        for o, s0 in zip(obs, start):
            levels += L.measure_level_phases(self.system, self.targets, [o], start=[s0])
            self.rep.advance(1, f"grey {o.meta['grey']}: {levels[-1].phase_rad:.3f} rad")
        self.lut_fit = L.fit_lut(levels, self.bits, self.rig.slm.phase_range_rad)
        lf = self.lut_fit
        set_params(self.system, {"lut_gamma": lf.gamma, "lut_scale": lf.scale})
        self.results["lut"] = lf.to_dict()
        # the pupil's zones, read after the joint fit (refine_lut) through the refined model
        greys = L.zone_greys(lf.table, self.rig.slm.phase_range_rad)
        pupil = self.rig.optics.field_size / 2 * self.rig.optics.pupil_radius
        zprobes = L.zone_probes(self.shape, self.dc, L.zone_radii_px(pupil, self.ratio), greys)
        self.rep.note(f"pupil zones: {len(zprobes)} probes at grey {', '.join(map(str, greys))}")
        self.capture(zprobes)
        self.summaries["lut"] = (
            f"{lf.method}: γ {lf.gamma:.4f}, scale {lf.scale:.4f}, "
            f"σ_rms {np.sqrt(np.mean(lf.table_sigma**2)):.4f} rad, χ²/dof {lf.chi2_dof:.2f}"
        )
        self.rep.done("lut", self.summaries["lut"])

    # ---------------------------------------------------------------- 3. joint fit
    def mask_probe(self) -> R.Probe | None:
        if self.checkpoint is None:
            return None
        from dmicro_hw.export import SLMExporter
        from dmicro_hw.training.checkpoint import learned_filter, load_checkpoint

        ck = load_checkpoint(self.checkpoint)
        if ck.get("encoder_kind") != "lff":
            return None
        h = learned_filter(ck)
        exp = SLMExporter(self.rig.optics, _slm_model_cfg(self.rig), self.slm_calibration())
        return R.Probe("mask", "mask", exp.export_array(h), {"checkpoint": str(self.checkpoint)})

    def fit(self) -> None:
        assert self.dc is not None
        o = self.opt
        radius = self.rig.optics.field_size / 2 * self.ratio
        probes = [
            R.Probe(
                f"lens{sgn:+d}",
                "lens",
                P.lens(self.shape, sgn * o.lens_phase_rad, radius, self.bits, self.dc),
                {"phase_at_pupil_rad": sgn * o.lens_phase_rad, "centre": list(self.dc)},
            )
            for sgn in (+1, -1)
        ]
        mask = self.mask_probe()
        if mask is not None:
            probes.append(mask)
        missing = [p for p in probes if p.pattern_id not in self.obs]
        need = ["flat", "edge000", "edge090", "edge180", "edge270", "disc_r1.5", "disc_r4"]
        need += ["ramp000", "ramp090", "ramp180", "ramp270"]
        if any(k not in self.obs for k in need):  # fit alone: registration probes again
            dc = self.dc
            extra = R.camera_probes(self.shape) + R.placement_probes(self.shape, dc, self.ratio)
            extra += R.ramp_probes(self.shape, o.ramp_period_samples * self.ratio, self.bits)
            missing += [p for p in extra if p.pattern_id not in self.obs]
        self.rep.step("fit", len(missing) + o.fit_max_iter, "joint camera-in-the-loop fit")
        self.capture(missing)
        self.update_noise()
        lut_obs = sorted(
            (x for x in self.obs.values() if x.kind == "lut"), key=lambda x: x.pattern_id
        )
        use = [self.obs[k] for k in need if k in self.obs] + lut_obs[1::3]
        use += [self.obs[p.pattern_id] for p in probes]
        names = R.joint_params(self.system)
        self.joint_obs = use
        self.joint = fit(
            self.system,
            self.targets,
            use,
            names,
            max_iter=o.fit_max_iter,
            bounds=R.BOUNDS,
            callback=self._fit_progress("joint fit"),
        )
        self.dc = R.offset_to_dc(self.system)
        self.results["joint"] = self.joint.to_dict()
        self.refine_lut()
        self.summaries["fit"] = self._fit_summary(len(names), len(use))
        self.rep.done("fit", self.summaries["fit"])

    def _fit_summary(self, n_par: int, n_obs: int) -> str:
        j = self.joint
        worst = max(j.per_observation.items(), key=lambda kv: kv[1]["rms_noise_units"])
        return (
            f"{n_par} parameters on {n_obs} patterns, χ²/dof {j.chi2_dof:.2f}, "
            f"defocus {j.values['z4']:+.4f} ± {j.sigma['z4']:.4f} rad, worst pattern "
            f"{worst[0]} ({worst[1]['rms_noise_units']:.2f}σ RMS)"
        )

    def refine_lut(self) -> None:
        """Re-measure the LUT levels through the jointly fitted model.

        The LUT step reads each level's phase with the registration's model; its remaining
        aberration/tilt error biases the levels near φ ≈ π by up to 0.6 rad (seed 9 of the sim
        rig: the table was 0.23–0.25 rad RMS off while the joint fit, with the right power law,
        had χ²/dof 1.0). With every other parameter at its joint value the levels are unbiased;
        their spread about the fitted curve sets the table's uncertainty.
        """
        lut_obs = sorted(
            (x for x in self.obs.values() if x.kind == "lut"), key=lambda x: x.meta["grey"]
        )
        if not lut_obs:
            return
        resp = self.system.slm.response
        with torch.no_grad():
            start = [float(resp(torch.tensor(float(o.meta["grey"])))) for o in lut_obs]
        levels = L.measure_level_phases(self.system, self.targets, lut_obs, start=start)
        first = self.lut_fit
        self.lut_fit = L.fit_lut(levels, self.bits, self.rig.slm.phase_range_rad)
        self.results["lut"] = self.lut_fit.to_dict()
        if first is not None:
            self.results["lut"]["first_pass_vs_refined_rms_rad"] = L.lut_error_rms(
                first.table, self.lut_fit.table
            )
            self.results["lut"]["first_pass_method"] = first.method
        zone_obs = sorted(
            (x for x in self.obs.values() if x.kind == "lut_zone"), key=lambda x: x.pattern_id
        )
        if zone_obs:
            table = self.lut_fit.table - self.lut_fit.table[0]
            start = [float(table[int(o.meta["grey"])]) for o in zone_obs]
            zl = L.measure_level_phases(self.system, self.targets, zone_obs, start=start)
            self.zones = L.zone_response(zone_obs, zl, self.lut_fit.table)
            if self.zones is not None:
                self.results["lut"]["zones"] = self.zones.to_dict()

    # ---------------------------------------------------------------- 4. flat field
    def _rebuild(self, zernike: dict[int, float], illum: np.ndarray | None) -> None:
        """A new model system with these Zernike terms and illumination envelope."""
        from dmicro_hw.calibration.model_fit import enable_illumination
        from dmicro_hw.optics.system import PhysicalSystem

        mm = self.system.mismatch()
        mm.zernike_rad = dict(zernike)
        self.system = PhysicalSystem(self.rig.optics, self.rig.sensor, _slm_model_cfg(self.rig), mm)
        enable_illumination(self.system)
        if illum is not None:
            with torch.no_grad():
                self.system.illum_logamp.copy_(torch.as_tensor(illum))

    def _robust_fit(self, use: list[Observation], extra_dof: int, label: str) -> FitResult:
        return fit(
            self.system,
            self.targets,
            use,
            R.joint_params(self.system),
            max_iter=self.opt.fit_max_iter,
            bounds=R.BOUNDS,
            callback=self._fit_progress(label),
            loss="soft_l1",
            extra_dof=extra_dof,
        )

    def flatfield(self) -> None:
        """Illumination envelope and extra Zernike terms where the data support them, then the
        camera's flat field and dark frame from the probes, and a robust re-fit (soft-L1)."""
        from dmicro_hw.calibration.model_fit import flat_field, illumination_amplitude

        o = self.opt
        use = self.joint_obs or [x for x in self.obs.values() if x.kind != "lut"]
        self.rep.step("flatfield", 2 * o.fit_max_iter, "flat field, dark frame, robust re-fit")
        # 1. the sample-plane envelope and more Zernike terms (kept where |c| > 3σ)
        z0 = self.system.mismatch().zernike_rad
        extra = tuple(j for j in EXTRA_ZERNIKE_TERMS if j not in z0)
        self._rebuild({**z0, **{j: 0.0 for j in extra}}, None)
        res = self._robust_fit(use, 0, "envelope + Zernike")
        weak = [j for j in extra if abs(res.values[f"z{j}"]) < 3 * res.sigma[f"z{j}"]]
        if weak:
            zk = {k: v for k, v in self.system.mismatch().zernike_rad.items() if k not in weak}
            self._rebuild(zk, self.system.illum_logamp.detach().numpy().copy())
        # 2. the camera's own per-pixel gain and dark signal (what no optics explains)
        sim = ForwardModel(self.system, self.targets, use).frames().numpy()
        g, d, hot = flat_field(use, sim)
        for x in self.obs.values():
            x.mean = (x.mean - d) / g
            x.var = x.var / g**2
            keep = (~hot).astype(np.float64)
            x.valid = keep if x.valid is None else x.valid * keep
        # 3. robust re-fit of everything on the corrected frames
        res = self._robust_fit(use, 2 * int(g.size), "robust re-fit")
        amp = illumination_amplitude(self.system)
        k = self.rig.optics.binning
        env = torch.nn.functional.avg_pool2d((amp**2)[None, None], k)[0, 0].numpy()
        self.flat = (g, d, hot, env)
        self.joint = res
        self.dc = R.offset_to_dc(self.system)
        self.results["joint"] = res.to_dict()
        self.refine_lut()
        kept = [j for j in extra if j not in weak]
        self.results["flatfield"] = {
            "gain_rms": float(np.std(g)),
            "gain_min": float(g.min()),
            "gain_max": float(g.max()),
            "dark_rms_adu": float(np.std(d)),
            "hot_pixels": int(hot.sum()),
            "envelope_min_rel": float(env.min() / env.max()),
            "extra_zernike_kept": kept,
            "extra_zernike_dropped": list(weak),
        }
        ff = self.results["flatfield"]
        self.summaries["flatfield"] = (
            f"illumination envelope min {100 * ff['envelope_min_rel']:.0f} % of max; flat "
            f"field ±{100 * ff['gain_rms']:.2f} % RMS, dark {ff['dark_rms_adu']:.2f} ADU RMS, "
            f"{ff['hot_pixels']} hot pixels masked; extra Zernike terms kept: "
            f"{', '.join(f'Z{j}' for j in kept) or 'none'}; "
            + self._fit_summary(len(res.names), len(use))
        )
        self.rep.done("flatfield", self.summaries["flatfield"])

    # ---------------------------------------------------------------- 5. drift reference
    def drift_reference(self) -> None:
        self.rep.step("drift", 1, "drift reference")
        refs = [k for k in DRIFT_PROBES if k in self.obs]
        self.summaries["drift"] = f"reference probes recorded: {', '.join(refs) or 'none'}"
        self.rep.done("drift", self.summaries["drift"])

    # ---------------------------------------------------------------- products
    def lut_table(self) -> tuple[np.ndarray, np.ndarray, str]:
        """Final LUT: the per-level curve (re-measured through the fitted model after the fit).

        Its 1-σ per grey level is the curve's own σ combined (in quadrature) with its
        difference from the joint fit's power law — two estimates of the same response from
        different frames; where they disagree, neither is known better than that. With the
        pupil zones measured, the curve is scaled to their mean response, and the zones' scatter
        joins the σ (:attr:`ZoneResponse.uncertainty <dmicro_hw.calibration.lut.ZoneResponse>`).
        """
        rng = self.rig.slm.phase_range_rad
        j = self.joint
        gm = get_params(self.system, ["lut_gamma", "lut_scale"])
        if self.lut_fit is not None:
            table, sig = self.lut_fit.table, self.lut_fit.table_sigma
            if j is not None and "lut_gamma" in j.names:
                joint = L.parametric_table(gm["lut_gamma"], gm["lut_scale"], self.bits, rng)
                diff = (joint - joint[0]) - (table - table[0])
                sig = np.hypot(sig, diff)
            if self.zones is not None:  # the DC curve → the pupil's mean response
                rel, z = table - table[0], self.zones
                table = table[0] + rel * z.mean
                sig = np.hypot(sig * z.mean, rel * z.uncertainty)
            return table, sig, self.lut_fit.method
        table = L.parametric_table(gm["lut_gamma"], gm["lut_scale"], self.bits, rng)
        if j is not None and "lut_gamma" in j.names:
            i, k = j.names.index("lut_gamma"), j.names.index("lut_scale")
            sd = np.array([j.sigma["lut_gamma"], j.sigma["lut_scale"]])
            cov = j.correlation[np.ix_([i, k], [i, k])] * np.outer(sd, sd)
        elif self.lut_fit is not None:
            cov = self.lut_fit.cov
        else:
            cov = np.zeros((2, 2))
        sig = L.parametric_sigma(gm["lut_gamma"], gm["lut_scale"], cov, self.bits, rng)
        return table, sig, "parametric"

    def slm_calibration(self):
        """The export's view of the current state (placement at the DC, current LUT)."""
        from dmicro_hw.export import SLMCalibration

        g = get_params(self.system, ["slm_rotation", "slm_scale"])
        table, _, _ = self.lut_table()
        return SLMCalibration(
            offset_px=self.dc or (0.0, 0.0),
            rotation_rad=g["slm_rotation"],
            scale=g["slm_scale"],
            lut_table=table,
            rig_id=self.rig.rig_id,
            wavelength_m=self.rig.optics.wavelength_m,
        )

    def parameters(self) -> dict[str, dict[str, float]]:
        """Every parameter with σ (latest fit that estimated it) and unit."""
        specs = param_specs(self.system)
        sig: dict[str, float] = {}
        for key in ("camera_pupil", "placement", "joint"):
            if key in self.results:
                sig.update(self.results[key]["sigma"])
        out = {
            n: {"value": get_params(self.system, [n])[n], "sigma": sig.get(n), "unit": s.unit}
            for n, s in specs.items()
        }
        if self.dc is not None:
            sy, sx = _dc_sigma(self.system, self.joint) if self.joint else (None, None)
            out["dc_on_slm_y"] = {"value": self.dc[0], "sigma": sy, "unit": "SLM px"}
            out["dc_on_slm_x"] = {"value": self.dc[1], "sigma": sx, "unit": "SLM px"}
        if self.noise is not None:
            gain = get_params(self.system, ["cam_gain"])["cam_gain"]
            out["extra_read_noise_e"] = {
                "value": extra_read_noise(self.noise, self.rig, gain),
                "sigma": None,
                "unit": "e-",
            }
        return out

    def diagnostics(self) -> dict[str, Any]:
        """What the fit does not explain and what the probes do not determine.

        * ``chi2_dof`` above ~1.2: model error (the bench does something the model does not);
          ``disagreeing_probes``: probes whose χ²/pixel is above twice the median;
        * ``undetermined``: parameters whose 3σ exceeds the calibration targets
          (:data:`~dmicro_hw.calibration.scoring.TARGETS`: DC on the SLM 0.25 px, rotation
          0.1°, defocus 5 % or 0.005 rad, LUT 0.05 rad RMS), ``degenerate_pairs``: pairs
          with |correlation| > 0.98 (only their combination is measured).
        """
        from dmicro_hw.calibration.model_fit import degeneracies, disagreeing_probes
        from dmicro_hw.calibration.scoring import TARGETS as T
        from dmicro_hw.calibration.scoring import defocus_tolerance_rad

        j = self.joint
        out: dict[str, Any] = {}
        und: list[str] = []
        if j is not None:
            chi = {k: v["rms_noise_units"] ** 2 for k, v in j.per_observation.items()}
            out["chi2_dof"] = j.chi2_dof
            out["model_error"] = bool(j.chi2_dof > 1.2)
            out["disagreeing_probes"] = disagreeing_probes(j)
            out["worst_probes"] = dict(sorted(chi.items(), key=lambda kv: -kv[1])[:3])
            out["degenerate_pairs"] = [list(p) for p in degeneracies(j)]
            # a split the probes barely see: its 1-σ (curvature at the optimum) says little
            # about a valley |ρ| > 0.99 long — the parts are not determined, only their sum
            for a, b, rho in degeneracies(j, 0.99):
                und.append(f"{a} vs {b} (ρ {rho:+.3f})")
            p = self.parameters()
            sy, sx = p.get("dc_on_slm_y", {}).get("sigma"), p.get("dc_on_slm_x", {}).get("sigma")
            if sy is not None and sx is not None and 3 * math.hypot(sy, sx) > T["dc_err_px"]:
                und.append("slm offset")
            if 3 * j.sigma.get("slm_rotation", 0.0) > math.radians(T["rotation_err_deg"]):
                und.append("slm rotation")
            if 3 * j.sigma.get("z4", 0.0) > defocus_tolerance_rad(j.values.get("z4", 0.0)):
                und.append("defocus")
        table, sig, _ = self.lut_table()
        out["lut_sigma_rms_rad"] = float(np.sqrt(np.mean(sig**2)))
        if 3 * out["lut_sigma_rms_rad"] > T["lut_rms_err_rad"]:
            und.append("LUT")
        if self.lut_fit is not None:
            out["lut_levels_chi2_dof"] = self.lut_fit.chi2_dof
        if self.zones is not None:  # what no single table corrects: report, never hide
            out["slm_zone_spread_rel"] = self.zones.spread
            out["lut_dc_vs_pupil_rel"] = 1.0 / self.zones.mean - 1.0
        out["undetermined"] = und
        return out

    def mismatch(self) -> Mismatch:
        """The fitted mismatch; its LUT scale is the pupil zones' mean response when measured
        (the model's DC-probe value × the zones' mean, as the exported table)."""
        m = self.system.mismatch()
        if self.zones is not None:
            m.lut_scale *= self.zones.mean
        if self.noise is not None:
            m.extra_read_noise_e = extra_read_noise(self.noise, self.rig, m.camera_gain)
        return m

    def bundle_data(self, steps: Sequence[str]) -> dict[str, Any]:
        table, _, method = self.lut_table()
        params = self.parameters()
        cal = self.slm_calibration()
        dcs = (
            params.get("dc_on_slm_y", {}).get("sigma"),
            params.get("dc_on_slm_x", {}).get("sigma"),
        )
        return {
            "rig_id": self.rig.rig_id,
            "wavelength_m": self.rig.optics.wavelength_m,
            "frames_sha256": self.capturer.log.sha256(),
            "n_patterns": len(self.capturer.log),
            "frames_per_pattern": self.opt.frames_per_pattern,
            "steps": list(steps),
            "optics": self.rig.optics.model_dump(mode="json"),
            "sensor": self.rig.sensor.model_dump(mode="json"),
            "slm_device": {
                "pixels": list(self.rig.slm.pixels),
                "pitch_m": self.rig.slm.pitch_m,
                "bit_depth": self.rig.slm.bit_depth,
            },
            "slm": {
                **cal.placement(),
                "offset_px_sigma": list(dcs),
                "rotation_rad_sigma": params["slm_rotation"]["sigma"],
                "scale_sigma": params["slm_scale"]["sigma"],
                "offset_reference": "DC of the illumination on the SLM (physical offset + tilt)",
                "lut_method": method,
            },
            "mismatch": self.mismatch().to_dict(),
            "parameters": params,
            "lut": None
            if self.lut_fit is None
            else {
                **self.lut_fit.to_dict(),
                "zones": None if self.zones is None else self.zones.to_dict(),
            },
            "noise": None if self.noise is None else self.noise.to_dict(),
            "fits": self.results,
            "summaries": self.summaries,
            "target": {
                "kind": self.opt.target_kind if self.opt.target_path is None else "file",
                "path": None if self.opt.target_path is None else str(self.opt.target_path),
                "phase_max_rad": self.opt.target_phase_max_rad,
            },
            "drift_reference": [k for k in DRIFT_PROBES if k in self.obs],
            "diagnostics": self.diagnostics(),
            "lut_table_rms_rad": float(np.sqrt(np.mean((table - table[0]) ** 2))),
        }

    # ---------------------------------------------------------------- plots
    def plots(self, out: Path) -> list[Path]:
        paths = []
        table, sig, method = self.lut_table()
        points = self.lut_fit.points if self.lut_fit is not None else []
        paths.append(B.plot_lut(out / "lut.png", table, sig, points, method))
        keys = [
            k
            for k in ("flat", "edge000", "disc_r1.5", "ramp000", "lens+1", "mask")
            if k in self.obs
        ]
        keys += [k for k in sorted(self.obs) if self.obs[k].kind == "lut"][5:6]
        if not keys:
            return paths
        obs = [self.obs[k] for k in keys]
        nominal = new_system(self.rig)
        before = ForwardModel(nominal, self.targets, obs).frames().numpy()
        after = ForwardModel(self.system, self.targets, obs).frames().numpy()
        cap = {k: o.mean for k, o in zip(keys, obs)}
        sim0 = dict(zip(keys, before))
        sim1 = dict(zip(keys, after))
        geo = self.system.slm.geometry
        n = self.rig.optics.field_size
        th = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
        circle = torch.stack([n // 2 + n / 2 * torch.sin(th), n // 2 + n / 2 * torch.cos(th)], -1)
        with torch.no_grad():
            foot = geo.filter_to_slm(circle).numpy()
        slm_img = self.obs["edge000"].grey if "edge000" in self.obs else None
        c = np.array([self.shape[0] // 2, self.shape[1] // 2])
        dc = None if self.dc is None else (self.dc[0] + c[0], self.dc[1] + c[1])
        reg_keys = keys[:4]
        paths.append(
            B.plot_registration(
                out / "registration.png",
                {k: cap[k] for k in reg_keys},
                {k: sim0[k] for k in reg_keys},
                {k: sim1[k] for k in reg_keys},
                slm_img,
                foot,
                dc,
            )
        )
        sigma = {k: o.sigma_mean for k, o in zip(keys, obs)}
        paths.append(
            B.plot_residuals(
                out / "residuals.png",
                {k: cap[k] - sim0[k] for k in keys},
                {k: cap[k] - sim1[k] for k in keys},
                sigma,
            )
        )
        return paths


def run_calibration(
    rig: RigConfig,
    slm: Any,
    camera: Any,
    steps: Sequence[str] | None = None,
    out_dir: Path | str | None = None,
    options: CalibrationOptions | None = None,
    reporter: Reporter | None = None,
    previous: B.CalibrationBundle | None = None,
    checkpoint: Path | None = None,
) -> CalibrationResult:
    """Run the calibration ``steps`` through the devices and write the bundle to ``out_dir``.

    ``slm`` and ``camera`` are opened devices (SLM/Camera protocols). On a simulated rig the
    known target is placed into the virtual bench and the bench's sample restored afterwards.
    Returns the bundle data (and the drift report for a drift-only run).
    """
    opts = options or CalibrationOptions()
    if steps is None:
        steps = default_steps(checkpoint is not None)
    order, notes = resolve_steps(steps, previous is not None, checkpoint is not None)
    run = CalibrationRun(rig, slm, camera, opts, reporter, previous, checkpoint)
    for n in notes:
        run.rep.note(n)
    t0 = time.monotonic()
    if len(order) == 1 and STEP_BY_NAME[order[0]].alone_needs_bundle:
        from dmicro_hw.calibration.drift import check_drift

        assert previous is not None
        placed = place_target((slm, camera), run.target)
        try:
            rep = check_drift(run, previous)
        finally:
            if placed:
                release_target((slm, camera))
        return CalibrationResult(None, {}, {"drift": rep.summary()}, run.system, rep)
    placed = place_target((slm, camera), run.target)
    if not placed:
        run.rep.note("real bench: the known phase target must be mounted in the sample plane")
    try:
        for s in order:
            method = STEP_BY_NAME[s].method
            if method is not None:  # adapt runs after the bundle exists (below)
                getattr(run, method)()
    finally:
        slm.blank()
        if placed:
            release_target((slm, camera))
    data = run.bundle_data(order)
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    out = None
    if out_dir is not None:
        out = Path(out_dir)
        table, sig, _ = run.lut_table()
        probes = {k: o.grey for k, o in run.obs.items()}
        B.write_bundle(out, data, table, sig, run.capturer.log, probes, run.target, run.flat)
        data["plots"] = [p.name for p in run.plots(out)]
        if "adapt" in order:
            from dmicro_hw.calibration.adapt import adapt_checkpoint

            assert checkpoint is not None
            run.rep.step("adapt", opts.adapt_steps, "decoder fine-tuning on the calibrated model")
            info = adapt_checkpoint(
                checkpoint,
                rig,
                B.load_bundle(out, rig),
                out / B.ADAPTED_CHECKPOINT,
                steps=opts.adapt_steps,
                batch=opts.adapt_batch,
                lr=opts.adapt_lr,
                seed=opts.seed,
                progress=lambda i, loss: run.rep.advance(1, f"loss {loss:.4f}"),
            )
            data["adapt"] = info
            run.summaries["adapt"] = info.get("summary", "")
            run.rep.done("adapt", run.summaries["adapt"])
        data["summaries"] = run.summaries
        B.write_bundle(out, data, table, sig)
    return CalibrationResult(out, data, run.summaries, run.system)
