"""Virtual optical bench: a sample stream + the 4f optics with a HIDDEN mismatch + the sensor.

The bench is the digital twin behind :class:`~dmicro_hw.simulators.sim_slm.SimSLM` and
:class:`~dmicro_hw.simulators.sim_camera.SimCamera`. The SLM tells it what is displayed (with the
time of the change, so frames captured while the liquid crystal settles see a blend); the camera
asks it for the raw frame of a given frame id at a given capture time.

    sample φ(frame id)  →  PhysicalSystem (illumination tilt, 4f with the realised SLM filter,
    pupil aberrations, camera registration, binning)  →  mean photo-electrons  →  noise/ADC → ADU

*Hidden mismatch.* The bench draws a realistic mismatch (SLM LUT, placement, aberrations, camera
registration and gain) from ``bench.mismatch.seed`` with :meth:`Mismatch.draw`. Calibration code
must find it through frames only, so it lives in private attributes and the one way to read it is
:func:`reveal_mismatch_for_scoring`, meant for tests and benchmarks that score a calibration.

*Sample stream.* ``bench.sample: cells``: a periodic strip of ``strip_tiles`` synthetic-cell tiles
(generated once from ``bench.seed``) scrolls through the N×N field at ``bench.flow_px_per_frame``
(sub-pixel, linear interpolation; positions are quantised to 1/1024 px so that the sequence is
exactly periodic). ``bench.sample: beads``: the same strip made of bead tiles (``bench.beads``:
non-overlapping spheres kept clear of each tile's faded edges; :meth:`VirtualBench.true_beads`
gives the true beads of any frame). ``bench.sample: target``: a static phase target.
:meth:`VirtualBench.set_sample` puts any known (N, N) phase in place (calibration).
:meth:`VirtualBench.true_phase` returns the exact phase the bench imaged for any frame id —
recomputed on demand, nothing per frame is stored.

*Speed.* Everything runs under ``torch.no_grad``; the realised filter is cached per displayed
pattern (ifftshift folded in once), the tilt ramp and the camera-registration grid are computed
once, and the noise-free binned electrons of each (sample position, pattern) are kept in a bounded
bank filled in batches, so a camera streaming a periodic sample only adds noise per frame (numpy,
(N/k)² values). :meth:`VirtualBench.prefill` fills the bank for one full period up front.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dmicro_hw.config import (
    BenchConfig,
    OpticsConfig,
    RealismConfig,
    RigConfig,
    SensorConfig,
    SLMModelConfig,
    bench_bead_margin_px,
    strip_fade_px,
)
from dmicro_hw.errors import FrameShapeError
from dmicro_hw.optics.fields import unit_phasor
from dmicro_hw.optics.sensor import NumpySensor
from dmicro_hw.optics.slm import gaussian_blur
from dmicro_hw.optics.system import ZERNIKE_TERMS, Mismatch, PhysicalSystem

log = logging.getLogger(__name__)

POSITION_QUANTUM = 1024  # sample positions are multiples of 1/1024 px
BLEND_STEPS = 4  # settle transition: previous pattern, then 1/4, 2/4, 3/4 blends, then new


def pattern_key(grey: np.ndarray) -> str:
    """Content id of a displayed grey-level array: sha256 prefix (16 hex) of dtype, shape, bytes."""
    a = np.ascontiguousarray(grey)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Shown:
    """One entry of the SLM display timeline."""

    t: float  # bench clock time of the change, s
    key: str  # content hash of ``grey``
    label: str  # the id the caller gave (pattern_id) or the key
    grey: np.ndarray  # (R, C) grey levels as displayed
    settle_s: float


def _strip_from_tiles(tiles: np.ndarray) -> np.ndarray:
    """(T, N, N) phase tiles → (N, T·N) periodic strip, tiles side by side.

    Cells cut by a tile's left/right border would leave a straight phase cliff at the seam, so
    each tile fades to the (zero) background over its outer N/16 columns (raised cosine).
    """
    n = tiles.shape[-1]
    m = strip_fade_px(n)
    w = np.ones(n, dtype=np.float32)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    w[:m], w[n - m :] = ramp, ramp[::-1]
    strip = np.concatenate(list(tiles * w), axis=1)
    return np.ascontiguousarray(strip, dtype=np.float32)


HIGH_ZERNIKE_TERMS = (9, 10, 12, 13, 14, 15)  # beyond the calibration's fitted terms


@dataclass
class Realism:
    """Effects of the twin that the calibration model does not contain (``bench.realism``).

    Drawn from ``realism.seed`` (default ``bench.mismatch.seed``) with magnitudes × the level's
    multiplier ``m`` (moderate 1, harsh 2.5); an effect that is off keeps its neutral value.

    * illumination: intensity envelope exp(−2|x − c|²/w²) (Gaussian beam, w = 1.6–1.9·N/√m)
      times a cos⁴-like vignette (0–3 %·m at the corners), on the sample field's amplitude;
    * stray light: a uniform background (0.5–1.5 %·m of the clear-field intensity) and a DC
      ghost (0.3–0.8 %·m of the image, shifted by up to N/4 and blurred);
    * SLM pixel response: the phase of pixel (r, c) is φ(g)·(1 + ε_rc), ε smooth (σ 1.5 %·m,
      correlation 20 px) plus white (σ 1 %·m);
    * LUT drift: φ(g)·(1 + a·(1 − e^{−t/τ})) with a 1.5–3 %·m, τ = 30 min (the liquid crystal
      warming up), t the bench's warm-up time (``realism.elapsed_s`` + bench clock since creation);
    * flicker: phase ripple φ·(1 ± δ/√2) averaged within an exposure, δ 2–3 %·m;
    * high Zernike terms: Noll 9, 10, 12–15 at ±0.05·m rad RMS each;
    * fixed pattern: camera PRNU (σ 0.5 %·m), DSNU (σ 0.5·m ADU) and 0.2 %·m hot pixels
      (dark signal 200–2000·m e⁻ per reference exposure);
    * focal length: the Fourier-plane scale off by ±(0.3–1) %·m (a wrong lens focal length);
    * partial coherence: an extended source, the centre point plus 6 points on a ring of
      0.12–0.18·m filter samples (incoherent sum of their images).
    """

    effects: dict[str, float]
    illumination: np.ndarray | None = None  # (N, N) field amplitude envelope
    background: float = 0.0  # stray light, fraction of the clear-field intensity
    ghost: float = 0.0
    ghost_shift: tuple[int, int] = (0, 0)
    slm_eps: np.ndarray | None = None  # (R, C) relative phase-response error per SLM pixel
    drift_amplitude: float = 0.0
    drift_tau_s: float = 1800.0
    flicker: float = 0.0
    extra_zernike: dict[int, float] = field(default_factory=dict)
    prnu: np.ndarray | None = None  # (h, w) per-pixel gain
    dsnu_adu: np.ndarray | None = None  # (h, w) per-pixel offset, ADU
    hot_e: np.ndarray | None = None  # (h, w) dark electrons at the reference exposure
    focal_scale: float = 1.0
    sources: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 1.0),)  # (dy, dx, weight)

    @classmethod
    def draw(
        cls, cfg: RealismConfig, seed: int, n: int, slm_shape: tuple[int, int], binning: int
    ) -> Realism:
        eff = cfg.active()
        rng = np.random.default_rng([int(seed if cfg.seed is None else cfg.seed), 0x2EA1])
        out = cls(effects=eff)

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        def sgn() -> float:
            return float(rng.choice([-1.0, 1.0]))

        # every draw happens whatever is on, so one effect's values do not depend on the others
        w, cy, cx, vig = u(1.6, 1.9), u(-0.08, 0.08), u(-0.08, 0.08), u(0.0, 0.03)
        bg, gh = u(0.005, 0.015), u(0.003, 0.008)
        gshift = (int(rng.integers(-n // 4, n // 4 + 1)), int(rng.integers(-n // 4, n // 4 + 1)))
        rows, cols = slm_shape
        smooth = torch.from_numpy(rng.standard_normal((rows, cols)).astype(np.float32))
        smooth = gaussian_blur(smooth, 20.0).numpy()
        smooth /= max(float(smooth.std()), 1e-9)
        white = rng.standard_normal((rows, cols)).astype(np.float32)
        drift = u(0.015, 0.03)
        flick = u(0.02, 0.03)
        zern = {j: u(-0.05, 0.05) for j in HIGH_ZERNIKE_TERMS}
        h = n // binning
        prnu = rng.standard_normal((h, h)).astype(np.float32)
        dsnu = rng.standard_normal((h, h)).astype(np.float32)
        hot_sel = rng.random((h, h))
        hot_val = rng.uniform(200, 2000, (h, h)).astype(np.float32)
        focal = sgn() * u(0.003, 0.01)
        ring = u(0.12, 0.18)

        if "illumination" in eff:
            m = eff["illumination"]
            c = (np.arange(n) - n // 2) / n
            yy, xx = np.meshgrid(c, c, indexing="ij")
            env = np.exp(-2 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (w / math.sqrt(m)) ** 2)
            env *= 1 - vig * m * np.clip((yy**2 + xx**2) / 0.5, 0, 1) ** 2
            out.illumination = np.sqrt(env).astype(np.float32)
        if "stray_light" in eff:
            m = eff["stray_light"]
            out.background, out.ghost, out.ghost_shift = bg * m, gh * m, gshift
        if "slm_pixel_response" in eff:
            m = eff["slm_pixel_response"]
            out.slm_eps = (0.015 * m * smooth + 0.01 * m * white).astype(np.float32)
        if "lut_drift" in eff:
            out.drift_amplitude = drift * eff["lut_drift"]
        if "flicker" in eff:
            out.flicker = flick * eff["flicker"]
        if "high_zernike" in eff:
            out.extra_zernike = {j: v * eff["high_zernike"] for j, v in zern.items()}
        if "fixed_pattern" in eff:
            m = eff["fixed_pattern"]
            out.prnu = (1 + 0.005 * m * prnu).astype(np.float32)
            out.dsnu_adu = (0.5 * m * dsnu).astype(np.float32)
            out.hot_e = np.where(hot_sel < 0.002 * m, hot_val * m, 0).astype(np.float32)
        if "focal_length" in eff:
            out.focal_scale = 1 + focal * eff["focal_length"]
        if "partial_coherence" in eff:
            r = ring * eff["partial_coherence"]
            pts = [(0.0, 0.0, 0.4)]
            pts += [
                (r * math.sin(a), r * math.cos(a), 0.1)
                for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)
            ]
            out.sources = tuple(pts)
        return out

    def drift(self, t_s: float) -> float:
        """Relative LUT change after ``t_s`` seconds of warm-up."""
        if self.drift_amplitude == 0:
            return 0.0
        return self.drift_amplitude * (1 - math.exp(-max(t_s, 0.0) / self.drift_tau_s))

    @property
    def slm_effects(self) -> bool:
        return self.slm_eps is not None or self.drift_amplitude != 0 or self.flicker != 0

    def summary(self) -> dict[str, Any]:
        """Plain numbers of the drawn effects (scoring and reports only)."""
        return {
            "effects": sorted(self.effects),
            "illumination_min_rel": None
            if self.illumination is None
            else float(self.illumination.min() ** 2 / self.illumination.max() ** 2),
            "background": self.background,
            "ghost": self.ghost,
            "slm_eps_rms": None if self.slm_eps is None else float(self.slm_eps.std()),
            "drift_amplitude": self.drift_amplitude,
            "flicker": self.flicker,
            "extra_zernike_rad": {str(k): v for k, v in self.extra_zernike.items()},
            "prnu_rms": None if self.prnu is None else float(self.prnu.std()),
            "hot_pixels": 0 if self.hot_e is None else int(np.count_nonzero(self.hot_e)),
            "focal_scale": self.focal_scale,
            "source_ring_samples": float(math.hypot(*self.sources[-1][:2])),
        }


class VirtualBench:
    """Digital twin of the optical bench (see the module docstring).

    Args:
        optics, sensor, slm, bench: the rig's config sections (``slm`` may be the device section).
        clock: monotonic time source in seconds shared with the simulated devices (tests inject a
            manual clock to make the settle model deterministic).
        strip_tiles: number of N×N tiles in the periodic cell strip.
        bank_bytes: memory budget of the noise-free frame bank.
    """

    def __init__(
        self,
        optics: OpticsConfig,
        sensor: SensorConfig,
        slm: SLMModelConfig,
        bench: BenchConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        strip_tiles: int = 8,
        bank_bytes: int = 256 << 20,
        prefetch_frames: int = 32,
    ) -> None:
        self.optics, self.sensor_cfg, self.bench_cfg = optics, sensor, bench or BenchConfig()
        self.slm_shape = (int(slm.pixels[0]), int(slm.pixels[1]))
        self.slm_bit_depth = int(slm.bit_depth)
        self.clock = clock
        self.field_size = optics.field_size
        self.binning = optics.binning
        self.frame_shape = (self.field_size // self.binning, self.field_size // self.binning)
        self.noise = bool(sensor.noise)
        # batches beyond ~2^18 samples fall out of cache and get slower per frame
        auto = max(1, (1 << 18) // (self.field_size * self.field_size))
        self.prefetch_frames = max(1, min(int(prefetch_frames), auto))
        self._lock = threading.RLock()

        mm_cfg = self.bench_cfg.mismatch
        self._hidden_mismatch = (
            Mismatch.draw(mm_cfg.seed, mm_cfg.scale) if mm_cfg.enabled else Mismatch()
        )
        slm_model = SLMModelConfig(
            **{k: getattr(slm, k) for k in SLMModelConfig.model_fields if hasattr(slm, k)}
        )
        self._t0 = self.clock()
        self._realism = Realism.draw(
            self.bench_cfg.realism,
            mm_cfg.seed,
            self.field_size,
            self.slm_shape,
            self.binning,
        )
        rz = self._realism
        twin_mm = Mismatch.from_dict(self._hidden_mismatch.to_dict())
        twin_mm.slm_scale *= rz.focal_scale  # a wrong focal length scales the Fourier plane
        twin_mm.zernike_rad = {**twin_mm.zernike_rad, **rz.extra_zernike}
        terms = ZERNIKE_TERMS + tuple(j for j in rz.extra_zernike if j not in ZERNIKE_TERMS)
        with torch.no_grad():
            self._system = PhysicalSystem(
                optics, sensor, slm_model, twin_mm, zernike_terms=terms
            ).eval()
            self._precompute()

        self._rng = np.random.default_rng([int(self.bench_cfg.seed), 0x5EB])
        # sample stream
        self._strip: np.ndarray | None = None
        self._static: np.ndarray | None = None
        self._sample_version = 0
        self._bead_tiles_truth: list[list[Any]] = []  # bench.sample beads: true beads per tile
        self.strip_tiles = int(strip_tiles)
        self._flow_q = int(round(self.bench_cfg.flow_px_per_frame * POSITION_QUANTUM))
        self._init_sample()
        # display timeline (SimSLM → bench); the SLM starts blank (grey 0)
        blank = np.zeros(self.slm_shape, dtype=np.uint16 if self.slm_bit_depth > 8 else np.uint8)
        self._timeline: list[_Shown] = [_Shown(-math.inf, pattern_key(blank), "blank", blank, 0.0)]
        # caches
        self._filters: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._max_filters = 8
        self._bank: OrderedDict[tuple[int, str, int], np.ndarray] = OrderedDict()
        frame_bytes = 4 * self.frame_shape[0] * self.frame_shape[1]
        self._bank_max = max(64, int(bank_bytes) // frame_bytes)
        self.stats = {"rendered": 0, "bank_hits": 0, "filters_built": 0}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_rig(cls, rig: RigConfig, **kwargs: Any) -> VirtualBench:
        """Bench for a rig config (optics, sensor, slm and bench sections)."""
        return cls(rig.optics, rig.sensor, rig.slm, rig.bench, **kwargs)

    def _precompute(self) -> None:
        s = self._system
        n = self.field_size
        # the illumination tilt acts in the Fourier plane (PhysicalSystem.realised_filter), as
        # do the points of an extended source (each one a further shift of the spectrum)
        ill = self._realism.illumination
        self._illum = None if ill is None else torch.from_numpy(ill)
        mm = self._hidden_mismatch
        identity = (
            mm.camera_shift_px == (0.0, 0.0)
            and mm.camera_rotation_rad == 0.0
            and mm.camera_scale == 1.0
        )
        if identity:
            self._grid = None
        else:
            c, si = torch.cos(s.camera_rotation_rad), torch.sin(s.camera_rotation_rad)
            rot = torch.stack([torch.stack([c, -si]), torch.stack([si, c])]) * s.camera_scale
            src = s._yx @ rot.T - s.camera_shift_px + n // 2
            self._grid = torch.stack(
                [2 * src[..., 1] / (n - 1) - 1, 2 * src[..., 0] / (n - 1) - 1], -1
            ).to(torch.float32)[None]
        self._sensor_np = NumpySensor(
            self.sensor_cfg,
            camera_gain=float(s.camera_gain),
            camera_offset_adu=float(s.camera_offset_adu),
            extra_read_noise_e=float(s.extra_read_noise_e),
        )
        self._adc_max = self._sensor_np.adc_max

    def _init_sample(self) -> None:
        cfg = self.bench_cfg
        n = self.field_size
        from dmicro_hw.data import phantoms  # the shared phantom generator

        if cfg.sample == "target":
            self._strip = None
            self._static = np.asarray(
                phantoms.phase_target(n, "resolution", cfg.phase_max_rad), dtype=np.float32
            )
        else:
            self._bead_tiles_truth = []
            if cfg.sample == "beads":
                tiles, self._bead_tiles_truth = self._bead_tiles()
            else:
                tiles = phantoms.generate_cells(self.strip_tiles, n, cfg.phase_max_rad, cfg.seed)
            self._strip = _strip_from_tiles(np.asarray(tiles, dtype=np.float32))
            self._static = None
        self._sample_version += 1

    def _bead_tiles(self) -> tuple[np.ndarray, list[list[Any]]]:
        """(T, N, N) tiles of beads (``bench.beads``) and the true beads of each tile."""
        from dmicro_hw.data.beads import generate_beads

        b, n = self.bench_cfg.beads, self.field_size
        r_lo, r_hi = b.radius_range_m
        return generate_beads(
            self.strip_tiles,
            n,
            pixel_size_m=self.optics.pixel_size_m,
            wavelength_m=self.optics.wavelength_m,
            index=b.index,
            medium_index=b.medium_index,
            radius_m=(r_lo, r_hi),
            count=b.count,
            phase_max_rad=self.bench_cfg.phase_max_rad,
            seed=self.bench_cfg.seed,
            margin_px=bench_bead_margin_px(n),
            gap_px=r_hi / self.optics.pixel_size_m,
        )

    # ------------------------------------------------------------------ sample
    def set_sample(self, phase: np.ndarray | torch.Tensor) -> None:
        """Put a known static phase (N, N) radians in the field (calibration target)."""
        a = np.asarray(phase.detach().cpu() if isinstance(phase, torch.Tensor) else phase)
        if a.shape != (self.field_size, self.field_size):
            raise FrameShapeError(
                f"set_sample: phase must be ({self.field_size}, {self.field_size}), got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise FrameShapeError("set_sample: phase contains NaN or inf")
        with self._lock:
            self._static = np.ascontiguousarray(a, dtype=np.float32)
            self._sample_version += 1
            self._bank.clear()

    def reset_sample(self) -> None:
        """Back to the configured sample (cell stream or target)."""
        with self._lock:
            self._init_sample()
            self._bank.clear()

    # the rig seam's SamplePlane (dmicro_hw.rig): what calibration calls on any rig
    def mount(self, phase: np.ndarray) -> None:
        """:class:`~dmicro_hw.rig.SamplePlane`: :meth:`set_sample`."""
        self.set_sample(np.asarray(phase, dtype=np.float32))

    def restore(self) -> None:
        """:class:`~dmicro_hw.rig.SamplePlane`: :meth:`reset_sample`."""
        self.reset_sample()

    @property
    def period_frames(self) -> int:
        """Frames after which the sample stream repeats exactly (1 for a static sample)."""
        if self._static is not None or self._flow_q == 0:
            return 1
        lq = self._strip.shape[1] * POSITION_QUANTUM
        return lq // math.gcd(self._flow_q, lq)

    def _position_q(self, frame_id: int) -> int:
        """Quantised left edge of the window on the strip for ``frame_id`` (cells flow to +x)."""
        if self._static is not None:
            return 0
        lq = self._strip.shape[1] * POSITION_QUANTUM
        return (-int(frame_id) * self._flow_q) % lq

    def _phase_at(self, pos_q: int) -> np.ndarray:
        if self._static is not None:
            return self._static
        strip = self._strip
        n, length = self.field_size, strip.shape[1]
        i, f = divmod(pos_q, POSITION_QUANTUM)
        cols = (i + np.arange(n)) % length
        if f == 0:
            return strip[:, cols]
        w = f / POSITION_QUANTUM
        return ((1 - w) * strip[:, cols] + w * strip[:, (cols + 1) % length]).astype(np.float32)

    def true_phase(self, frame_id: int) -> np.ndarray:
        """The exact sample phase (N, N) float32 radians the bench imaged for ``frame_id``."""
        with self._lock:
            return np.array(self._phase_at(self._position_q(frame_id)), dtype=np.float32)

    def true_beads(self, frame_id: int) -> list[Any]:
        """The beads wholly inside the field for ``frame_id`` (``bench.sample: beads``), as
        :class:`~dmicro_hw.data.beads.Bead` with centres in frame pixels; [] for other samples
        (and after :meth:`set_sample`). Exact for whole-pixel flow steps; with sub-pixel steps
        the imaged phase is the strip's linear interpolation at that position."""
        import dataclasses

        with self._lock:
            if self._static is not None or not self._bead_tiles_truth:
                return []
            n, length = self.field_size, self._strip.shape[1]
            pos = self._position_q(frame_id) / POSITION_QUANTUM
            px = self.optics.pixel_size_m
            out = []
            for t, beads in enumerate(self._bead_tiles_truth):
                for b in beads:
                    cx = (b.cx + t * n - pos) % length
                    r = b.radius_m / px
                    if cx - r >= -0.5 and cx + r <= n - 0.5:
                        out.append(dataclasses.replace(b, cx=float(cx)))
            return sorted(out, key=lambda b: (b.cx, b.cy))

    # ------------------------------------------------------------------ display (SimSLM side)
    def display(
        self, grey: np.ndarray, label: str = "", settle_time_s: float = 0.0, t: float | None = None
    ) -> str:
        """Record that the SLM now shows ``grey`` (R, C); returns its content key."""
        grey = np.asarray(grey)
        if grey.shape != self.slm_shape:
            raise FrameShapeError(f"SLM pattern must be {self.slm_shape}, got {grey.shape}")
        key = pattern_key(grey)
        with self._lock:
            now = self.clock() if t is None else float(t)
            entry = _Shown(now, key, label or key, grey.copy(), float(settle_time_s))
            self._timeline.append(entry)
            if len(self._timeline) > 16:
                del self._timeline[:-16]
        return key

    def displayed_label(self, t: float | None = None) -> str:
        """Id of the pattern most recently commanded at bench time ``t`` (default now)."""
        t = self.clock() if t is None else t
        with self._lock:
            return self._commanded(t)[1].label

    def _commanded(self, t: float) -> tuple[_Shown, _Shown]:
        """(previous, current) timeline entries at time t."""
        tl = self._timeline
        idx = len(tl) - 1
        while idx > 0 and tl[idx].t > t:
            idx -= 1
        return tl[max(idx - 1, 0)], tl[idx]

    def _state_at(self, t: float) -> tuple[str, Callable[[], np.ndarray], str]:
        """(filter key, grey provider, label) of what the SLM physically shows at time t.

        Settle model: during ``settle_time_s`` after a change the liquid crystal moves from the
        previous grey levels to the new ones; the bench images the previous pattern for the first
        quarter of the settle time, then blends (1/4, 2/4, 3/4 of the way), then the new pattern.
        """
        prev, cur = self._commanded(t)
        dt = t - cur.t
        if cur.settle_s <= 0 or dt >= cur.settle_s or prev is cur:
            return cur.key, lambda: cur.grey, cur.label
        step = int(BLEND_STEPS * max(dt, 0.0) / cur.settle_s)
        if step <= 0:
            return prev.key, lambda: prev.grey, cur.label
        s = step / BLEND_STEPS

        def blend() -> np.ndarray:
            return (1 - s) * prev.grey.astype(np.float32) + s * cur.grey.astype(np.float32)

        return f"{prev.key}>{cur.key}@{step}", blend, cur.label

    # ------------------------------------------------------------------ optics
    def _drift_now(self) -> float:
        """Relative LUT drift at the bench's current warm-up time (quantised to 1e-5)."""
        rz = self._realism
        if rz.drift_amplitude == 0:
            return 0.0
        t = self.bench_cfg.realism.elapsed_s + self.clock() - self._t0
        return round(rz.drift(t), 5)

    def _realised(self, g: np.ndarray, drift: float) -> list[tuple[float, torch.Tensor]]:
        """(weight, centred realised filter) per SLM state within an exposure (flicker) and
        per point of the source (partial coherence); the weights sum to 1."""
        s, rz = self._system, self._realism
        grey = torch.as_tensor(np.asarray(g, np.float32))
        if not rz.slm_effects and len(rz.sources) == 1:
            return [(1.0, s.realised_filter(grey))]
        slm = s.slm
        base = slm.response(grey) * (1 + drift)
        if rz.slm_eps is not None:
            base = base * (1 + torch.from_numpy(rz.slm_eps))
        states = [0.0] if rz.flicker == 0 else [rz.flicker, -rz.flicker]
        refls = []
        for d in states:
            phase = gaussian_blur(base * (1 + d / math.sqrt(2)), slm.fringing_px)
            refls.append(slm.fill_factor * unit_phasor(phase) + (1 - slm.fill_factor))
        out = []
        for dy, dx, ws in rz.sources:
            shift = torch.tensor([dy, dx], dtype=torch.float64)
            pupil = s.pupil_function(shift)
            for refl in refls:
                out.append((ws / len(refls), s.sample_slm(refl, shift) * pupil))
        return out

    def _filter(
        self, key: str, grey: Callable[[], np.ndarray] | np.ndarray
    ) -> list[tuple[float, torch.Tensor]]:
        """Realised filters (weight, ifftshifted complex64 (N, N)) of a displayed pattern,
        cached (keyed also by the LUT drift state)."""
        drift = self._drift_now()
        key = f"{key}@{drift}" if drift else key
        h = self._filters.get(key)
        if h is not None:
            self._filters.move_to_end(key)
            return h
        g = grey() if callable(grey) else grey
        with torch.no_grad():
            h = [
                (w, torch.fft.ifftshift(c, dim=(-2, -1)).contiguous())
                for w, c in self._realised(g, drift)
            ]
        self._filters[key] = h
        self.stats["filters_built"] += 1
        while len(self._filters) > self._max_filters:
            self._filters.popitem(last=False)
        return h

    def _electrons_batch(
        self, phases: np.ndarray, hs: list[tuple[float, torch.Tensor]]
    ) -> np.ndarray:
        """Noise-free mean electrons per binned pixel (B, n, n) at the reference exposure.

        Incoherent sum over the source points (partial coherence) and the SLM states within
        the exposure (flicker); then stray light, camera registration, binning."""
        with torch.no_grad():
            field = unit_phasor(torch.from_numpy(np.ascontiguousarray(phases, dtype=np.float32)))
            if self._illum is not None:
                field = field * self._illum
            spec0 = torch.fft.fft2(field)
            inten = None
            for wf, h in hs:
                img = torch.fft.ifft2(spec0 * h)
                part = img.real.square_().add_(img.imag.square()).mul_(wf)
                inten = part if inten is None else inten.add_(part)
            rz = self._realism
            if rz.ghost > 0:
                ghost = torch.roll(inten, rz.ghost_shift, dims=(-2, -1))
                ghost = torch.stack([gaussian_blur(g, 2.0) for g in ghost])
                inten = inten + rz.ghost * ghost
            if rz.background > 0:
                inten = inten + rz.background
            if self._grid is not None:
                grid = self._grid.expand(inten.shape[0], -1, -1, -1)
                inten = F.grid_sample(
                    inten[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True
                )[:, 0]
            e = F.avg_pool2d(inten[:, None], self.binning)[:, 0] if self.binning > 1 else inten
            e = e.mul_(self.sensor_cfg.photons_per_pixel)
        self.stats["rendered"] += int(phases.shape[0])
        return e.numpy()

    def _bank_get(self, fkey: str, grey: Callable[[], np.ndarray], frame_id: int) -> np.ndarray:
        pos = self._position_q(frame_id)
        bkey = (self._sample_version, fkey, pos)
        e = self._bank.get(bkey)
        if e is not None:
            self.stats["bank_hits"] += 1
            self._bank.move_to_end(bkey)
            return e
        h = self._filter(fkey, grey)
        # render this frame and the next few positions that are missing, in one batch
        positions = [pos]
        if self._static is None:
            for j in range(1, min(self.prefetch_frames, self.period_frames)):
                p = self._position_q(frame_id + j)
                if (self._sample_version, fkey, p) not in self._bank and p not in positions:
                    positions.append(p)
        self._bank_store(fkey, positions, h)
        return self._bank[bkey]

    def _bank_store(self, fkey: str, positions: Sequence[int], h: torch.Tensor) -> None:
        phases = np.stack([self._phase_at(p) for p in positions])
        es = self._electrons_batch(phases, h)
        for p, e in zip(positions, es):
            self._bank[(self._sample_version, fkey, p)] = e
        while len(self._bank) > self._bank_max:
            self._bank.popitem(last=False)

    def prefill(self, t: float | None = None, batch: int = 32, max_frames: int = 65536) -> int:
        """Fill the noise-free bank for one full period of the sample stream with the pattern
        shown at time ``t`` (default now, settled); returns the number of frames rendered."""
        with self._lock:
            _, cur = self._commanded(self.clock() if t is None else t)
            h = self._filter(cur.key, cur.grey)
            n = min(self.period_frames, max_frames, self._bank_max)
            todo = [
                p
                for p in dict.fromkeys(self._position_q(i) for i in range(n))
                if (self._sample_version, cur.key, p) not in self._bank
            ]
            batch = max(1, min(batch, self.prefetch_frames))
            for i in range(0, len(todo), batch):
                self._bank_store(cur.key, todo[i : i + batch], h)
            return len(todo)

    # ------------------------------------------------------------------ sensor
    def _adu(self, e_ref: np.ndarray, exposure_s: float | None, noise: bool) -> np.ndarray:
        """Mean electrons → raw ADU float32: the numpy twin of the sensor chain of Sensor +
        PhysicalSystem (:class:`~dmicro_hw.optics.sensor.NumpySensor`), with the camera's
        fixed pattern (``bench.realism``: PRNU and hot pixels on the electrons, DSNU in ADU)."""
        rz = self._realism
        if rz.prnu is not None:
            e_ref = e_ref * rz.prnu + rz.hot_e
        adu = self._sensor_np.adu(e_ref, self._rng, noise, exposure_s)
        if rz.dsnu_adu is not None:
            adu = np.clip(adu + rz.dsnu_adu, 0.0, self._adc_max)
        return adu

    @property
    def adc_max(self) -> float:
        """Largest raw ADU value (2^bit_depth − 1 of the sensor)."""
        return self._adc_max

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        frame_id: int,
        grey_pattern: np.ndarray | None = None,
        *,
        t: float | None = None,
        noise: bool | None = None,
        exposure_s: float | None = None,
    ) -> np.ndarray:
        """Raw ADU frame (N/k, N/k) float32 of ``frame_id``.

        With ``grey_pattern`` (R, C) the bench images that pattern (fully settled); without it,
        what the SLM physically shows at bench time ``t`` (default now; settle model applies).
        ``noise`` defaults to ``sensor.noise``; ``exposure_s`` to ``sensor.exposure_s``.
        """
        noise = self.noise if noise is None else bool(noise)
        with self._lock:
            if grey_pattern is not None:
                g = np.asarray(grey_pattern)
                if g.shape != self.slm_shape:
                    raise FrameShapeError(f"SLM pattern must be {self.slm_shape}, got {g.shape}")
                fkey, provider = pattern_key(g), (lambda: g)
            else:
                fkey, provider, _ = self._state_at(self.clock() if t is None else t)
            e = self._bank_get(fkey, provider, int(frame_id))
            return self._adu(e, exposure_s, noise)

    def capture(
        self,
        frame_id: int,
        t: float,
        *,
        noise: bool | None = None,
        exposure_s: float | None = None,
    ) -> tuple[np.ndarray, str]:
        """(raw ADU frame, commanded pattern id) for a frame captured at bench time ``t``."""
        noise = self.noise if noise is None else bool(noise)
        with self._lock:
            fkey, provider, label = self._state_at(t)
            e = self._bank_get(fkey, provider, int(frame_id))
            return self._adu(e, exposure_s, noise), label

    def render_phase(
        self, phase: np.ndarray, grey_pattern: np.ndarray, noise: bool = False
    ) -> np.ndarray:
        """Raw ADU frames (B, N/k, N/k) for arbitrary phases (B, N, N) and a pattern (uncached)."""
        phase = np.asarray(phase, dtype=np.float32)
        if phase.ndim == 2:
            phase = phase[None]
        with self._lock:
            h = self._filter(pattern_key(np.asarray(grey_pattern)), np.asarray(grey_pattern))
            e = self._electrons_batch(phase, h)
            return np.stack([self._adu(x, None, noise) for x in e])

    def clear_caches(self) -> None:
        """Drop cached filters and the frame bank (memory)."""
        with self._lock:
            self._filters.clear()
            self._bank.clear()

    def __repr__(self) -> str:  # never shows the mismatch
        return (
            f"VirtualBench(N={self.field_size}, k={self.binning}, sample={self.bench_cfg.sample}, "
            f"slm={self.slm_shape})"
        )


def reveal_mismatch_for_scoring(bench: VirtualBench) -> Mismatch:
    """The bench's hidden mismatch — FOR TESTS AND BENCHMARKS THAT SCORE A CALIBRATION ONLY.

    Calibration code must never call this: it has to recover the mismatch from frames.
    """
    m = Mismatch.from_dict(bench._hidden_mismatch.to_dict())
    rz = bench._realism  # the effective values of what the model family can describe
    m.slm_scale *= rz.focal_scale
    m.lut_scale *= 1 + bench._drift_now()
    m.zernike_rad = {**m.zernike_rad, **rz.extra_zernike}
    return m


def reveal_realism_for_scoring(bench: VirtualBench) -> dict[str, Any]:
    """The drawn unmodelled effects of the bench (``bench.realism``) as plain numbers — FOR
    SCORING AND REPORTS ONLY (calibration code must never read them)."""
    out = bench._realism.summary()
    out["level"] = bench.bench_cfg.realism.level
    out["lut_drift_now"] = bench._drift_now()
    return out


def bench_of(device: Any) -> VirtualBench:
    """The VirtualBench behind a simulated device (SimSLM/SimCamera): for scoring and tests."""
    bench = getattr(device, "_bench", None)
    if not isinstance(bench, VirtualBench):
        raise TypeError(f"{type(device).__name__} is not a simulated device with a bench")
    return bench
