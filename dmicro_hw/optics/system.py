"""Differentiable forward model of the physical bench, parametrised by its mismatch.

    sample φ (B, N, N) ─ illumination tilt ─ 4f: FFT → SLM filter (LUT, placement, fringing,
    fill factor) × pupil × exp(i Σ c_j Z_j) → IFFT ─ |E|² ─ camera registration (shift,
    rotation, scale) ─ sensor (binning, noise, ADC) ─ camera gain/offset → raw ADU (B, N/k, N/k)

The same module is the *hidden truth* of the virtual bench (simulators.bench, parameters drawn
from a seed and never shown to calibration) and the *model being fitted* by the camera-in-the-loop
calibration (parameters trainable). :class:`Mismatch` holds plain numbers for both uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dmicro_hw.config import OpticsConfig, SensorConfig, SLMModelConfig
from dmicro_hw.optics.aberrations import zernike_noll
from dmicro_hw.optics.fields import intensity, polar
from dmicro_hw.optics.fourier4f import apply_4f, phase_to_field, pupil_mask
from dmicro_hw.optics.sensor import Sensor
from dmicro_hw.optics.slm import PhaseResponse, SLMGeometry, SLMModel, sample_image

ZERNIKE_TERMS = (4, 5, 6, 7, 8, 11)  # defocus, astigmatism ×2, coma ×2, spherical


@dataclass
class Mismatch:
    """Physical mismatch between the real optics and the nominal simulation (SI/radians).

    lut_gamma, lut_scale: SLM phase response φ = scale·range·(g/levels)^gamma.
    slm_offset_px (dy, dx), slm_rotation_rad, slm_scale: SLM placement in the Fourier plane.
    zernike_rad: {Noll j: RMS radians} pupil aberrations (4 = defocus).
    tilt_cycles (y, x): illumination tilt in cycles across the field (= spectrum shift in
        filter samples).
    camera_shift_px (dy, dx) in full-resolution samples, camera_rotation_rad, camera_scale:
        camera grid ↔ simulated image grid.
    camera_gain, camera_offset_adu: raw' = gain·raw + offset. extra_read_noise_e: added noise.
    """

    lut_gamma: float = 1.0
    lut_scale: float = 1.0
    slm_offset_px: tuple[float, float] = (0.0, 0.0)
    slm_rotation_rad: float = 0.0
    slm_scale: float = 1.0
    zernike_rad: dict[int, float] = field(default_factory=dict)
    tilt_cycles: tuple[float, float] = (0.0, 0.0)
    camera_shift_px: tuple[float, float] = (0.0, 0.0)
    camera_rotation_rad: float = 0.0
    camera_scale: float = 1.0
    camera_gain: float = 1.0
    camera_offset_adu: float = 0.0
    extra_read_noise_e: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zernike_rad"] = {str(k): v for k, v in self.zernike_rad.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Mismatch:
        d = dict(d)
        d["zernike_rad"] = {int(k): float(v) for k, v in d.get("zernike_rad", {}).items()}
        for k in ("slm_offset_px", "tilt_cycles", "camera_shift_px"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        return cls(**d)

    @classmethod
    def draw(cls, seed: int, scale: float = 1.0) -> Mismatch:
        """A random but realistic bench mismatch (what a freshly aligned bench looks like)."""
        g = torch.Generator().manual_seed(int(seed))

        def u(lo: float, hi: float) -> float:
            return float(lo + (hi - lo) * torch.rand((), generator=g))

        def sym(a: float) -> float:
            return u(-a, a) * scale

        return cls(
            lut_gamma=1.0 + sym(0.25),
            lut_scale=1.0 + sym(0.08),
            slm_offset_px=(sym(6.0), sym(6.0)),
            slm_rotation_rad=math.radians(sym(1.0)),
            slm_scale=1.0 + sym(0.02),
            zernike_rad={4: sym(0.6) or 0.3, 5: sym(0.15), 6: sym(0.15), 7: sym(0.1), 8: sym(0.1)},
            tilt_cycles=(sym(0.4), sym(0.4)),
            camera_shift_px=(sym(1.5), sym(1.5)),
            camera_rotation_rad=math.radians(sym(0.3)),
            camera_scale=1.0 + sym(0.01),
            camera_gain=1.0 + sym(0.1),
            camera_offset_adu=u(0.0, 4.0) * scale,
            extra_read_noise_e=u(0.0, 1.0) * scale,
        )


def _p(value, trainable: bool) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(value, dtype=torch.float64), requires_grad=trainable)


class PhysicalSystem(nn.Module):
    """The bench as a differentiable function of (sample phase, displayed SLM grey levels).

    ``trainable`` makes every mismatch parameter an optimisable tensor (calibration); the
    parameters are float64 for stable small-angle fits and cast where they are used.
    """

    def __init__(
        self,
        optics: OpticsConfig,
        sensor: SensorConfig,
        slm: SLMModelConfig,
        mismatch: Mismatch | None = None,
        trainable: bool = False,
        zernike_terms: tuple[int, ...] = ZERNIKE_TERMS,
    ) -> None:
        super().__init__()
        mm = mismatch or Mismatch()
        self.optics, self.sensor_cfg, self.slm_cfg = optics, sensor, slm
        n = optics.field_size
        geometry = SLMGeometry.from_configs(
            optics,
            slm,
            offset_px=mm.slm_offset_px,
            rotation_rad=mm.slm_rotation_rad,
            scale=mm.slm_scale,
            trainable=trainable,
        )
        response = PhaseResponse(
            slm.bit_depth, slm.phase_range_rad, mm.lut_gamma, mm.lut_scale, trainable=trainable
        )
        self.slm = SLMModel(optics, slm, geometry, response)
        self.sensor = Sensor(sensor, optics.binning)
        # every term the mismatch names is modelled (a calibration may fit more than the default)
        extra = tuple(sorted(j for j in mm.zernike_rad if j not in tuple(zernike_terms)))
        self.zernike_terms = tuple(zernike_terms) + extra
        self.zernike = _p([mm.zernike_rad.get(j, 0.0) for j in self.zernike_terms], trainable)
        self.register_buffer(
            "zernike_basis",
            torch.stack([zernike_noll(j, n) for j in self.zernike_terms]).to(torch.float64),
            persistent=False,
        )
        self.register_buffer("pupil", pupil_mask(n, optics.pupil_radius), persistent=False)
        self.tilt_cycles = _p(mm.tilt_cycles, trainable)
        self.camera_shift_px = _p(mm.camera_shift_px, trainable)
        self.camera_rotation_rad = _p(mm.camera_rotation_rad, trainable)
        self.camera_scale = _p(mm.camera_scale, trainable)
        self.camera_gain = _p(mm.camera_gain, trainable)
        self.camera_offset_adu = _p(mm.camera_offset_adu, trainable)
        self.extra_read_noise_e = mm.extra_read_noise_e
        c = torch.arange(n, dtype=torch.float64) - n // 2
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("_yx", torch.stack([yy, xx], -1), persistent=False)

    # -- parts --------------------------------------------------------------------------------
    # The illumination tilt t (cycles across the field) moves the sample's spectrum by t filter
    # samples across the Fourier plane, i.e. across the objective's pupil and the SLM. It is
    # modelled there: filter sample u (the spectrum's own coordinate) sees the pupil, the
    # aberrations and the SLM at u + t. A phase ramp on the periodic N×N field instead would put
    # a phase step at the field's wrap-around for a fractional t and leak the unscattered light
    # over the whole spectrum — an artefact of the periodic simulation that no bench has (on the
    # trained sim-rig model it cost 18–25 dB at 0.2–0.35 cycles before any adaptation).
    def _shift(self, shift: torch.Tensor | None) -> torch.Tensor | None:
        t = self.tilt_cycles if shift is None else self.tilt_cycles + shift
        return None if not bool(torch.count_nonzero(t.detach())) else t

    def pupil_function(self, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Pupil × aberration phase at the pupil coordinates the spectrum occupies (u + tilt
        + ``shift``, filter samples), centred complex64 (N, N)."""
        w = torch.einsum("j,jhw->hw", self.zernike, self.zernike_basis)
        t = self._shift(shift)
        if t is None:
            return polar(self.pupil, w.to(torch.float32))
        n = self.optics.field_size
        q = self._yx + t  # pupil coordinates relative to its centre
        pupil = (torch.hypot(q[..., 0], q[..., 1]) <= self.optics.pupil_radius * n / 2).float()
        w = sample_image(w.to(torch.float32), q + n // 2)
        return polar(pupil, w.to(torch.float32))

    def sample_slm(self, reflectance: torch.Tensor, shift: torch.Tensor | None = None):
        """The filter (N, N) complex64 an SLM reflectance (R, C) realises at the spectrum's
        coordinates (u + tilt + ``shift`` on the SLM placement; m×m sub-samples averaged)."""
        slm = self.slm
        t = self._shift(shift)
        ij = slm._sub_ij if t is None else slm._sub_ij + t
        vals = sample_image(reflectance, slm.geometry.filter_to_slm(ij))
        return vals.mean(dim=(-2, -1)).to(torch.complex64)

    def realised_filter(self, grey: torch.Tensor) -> torch.Tensor:
        """Complex filter the bench applies for displayed grey levels (R, C): centred (N, N),
        on the spectrum's coordinates (see the tilt note above)."""
        return self.sample_slm(self.slm.reflectance(grey)) * self.pupil_function()

    def illuminate(self, phase: torch.Tensor) -> torch.Tensor:
        """Sample field (B, N, N) complex64; the illumination tilt acts in the Fourier plane
        (:meth:`realised_filter`), so the field itself is the sample's transmission."""
        return phase_to_field(phase)

    def register_camera(self, intensity: torch.Tensor) -> torch.Tensor:
        """Resample the image-plane intensity (B, N, N) onto the camera grid (shift/rot/scale)."""
        n = self.optics.field_size
        c, s = torch.cos(self.camera_rotation_rad), torch.sin(self.camera_rotation_rad)
        rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])]) * self.camera_scale
        # camera pixel q sees the image at p = R·(q − centre) + centre − shift
        src = self._yx @ rot.T - self.camera_shift_px + n // 2
        grid = torch.stack([2 * src[..., 1] / (n - 1) - 1, 2 * src[..., 0] / (n - 1) - 1], -1).to(
            torch.float32
        )
        grid = grid[None].expand(intensity.shape[0], -1, -1, -1)
        out = F.grid_sample(
            intensity[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        return out[:, 0]

    # -- whole chain --------------------------------------------------------------------------
    def intensity(self, phase: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        """Image-plane intensity on the camera grid, full resolution (B, N, N), float32."""
        field = apply_4f(self.illuminate(phase), self.realised_filter(grey))
        return self.register_camera(intensity(field))

    def forward(
        self,
        phase: torch.Tensor,
        grey: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: bool | None = None,
    ) -> torch.Tensor:
        """Raw camera frame in ADU (B, N/k, N/k) for sample ``phase`` and SLM ``grey`` levels."""
        return self.frame_from_intensity(self.intensity(phase, grey), generator, noise)

    def frame_from_intensity(
        self,
        intensity: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: bool | None = None,
    ) -> torch.Tensor:
        prev = self.sensor.noise
        if noise is not None:
            self.sensor.noise = noise
        try:
            adu = self.sensor(intensity, generator=generator)
        finally:
            self.sensor.noise = prev
        if self.sensor.noise and self.extra_read_noise_e > 0 and noise is not False:
            extra = torch.randn(adu.shape, generator=generator, dtype=adu.dtype)
            adu = adu + extra * self.extra_read_noise_e * self.sensor.cfg.gain_adu_per_e
        adu = adu * self.camera_gain.float() + self.camera_offset_adu.float()
        return adu.clamp(0, self.sensor.adc_max)

    def mismatch(self) -> Mismatch:
        """Current parameter values as a plain :class:`Mismatch`."""
        g = self.slm.geometry
        with torch.no_grad():  # plain floats of the (trainable) parameters
            return Mismatch(
                lut_gamma=float(self.slm.response.gamma),
                lut_scale=float(self.slm.response.scale_factor),
                slm_offset_px=tuple(float(x) for x in g.offset_px),
                slm_rotation_rad=float(g.rotation_rad),
                slm_scale=float(g.scale),
                zernike_rad={j: float(c) for j, c in zip(self.zernike_terms, self.zernike)},
                tilt_cycles=tuple(float(x) for x in self.tilt_cycles),
                camera_shift_px=tuple(float(x) for x in self.camera_shift_px),
                camera_rotation_rad=float(self.camera_rotation_rad),
                camera_scale=float(self.camera_scale),
                camera_gain=float(self.camera_gain),
                camera_offset_adu=float(self.camera_offset_adu),
                extra_read_noise_e=float(self.extra_read_noise_e),
            )
