"""SLM model: what filter a phase SLM in the Fourier plane of the 4f system really applies.

Two grids meet in the Fourier plane:

* the *filter grid* of the simulation, N×N samples of pitch ``p_f = λ f / (N dx M)`` (metres),
  centred (the optical axis at index N//2);
* the *SLM grid*, R×C pixels of pitch ``p_s``, nominally centred on the axis at pixel (R//2, C//2).

:class:`SLMGeometry` maps between them with the placement of the SLM (offset in SLM pixels,
rotation, scale of the Fourier lens). :class:`PhaseResponse` is the grey level → radians curve
(LUT). :class:`SLMModel` turns displayed grey levels into the complex filter on the filter grid:
LUT → fringing (nearest-neighbour crosstalk blur) → fill factor (dead space reflects unmodulated
light) → area average over each filter sample → pupil. Everything is differentiable, so the same
model serves hardware-aware training and the camera-in-the-loop calibration fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmicro_hw.config import OpticsConfig, SLMModelConfig
from dmicro_hw.optics.fields import unit_phasor


class SLMGeometry(nn.Module):
    """Affine map between filter-sample indices (i, j) and SLM pixel coordinates (r, c).

    q = c_slm + offset + scale · R(θ) · (p_f / p_s) · (u − N//2), with u = (i, j).
    ``offset_px`` (dy, dx) is in SLM pixels, ``rotation_rad`` counter-clockwise in (row, col)
    image coordinates, ``scale`` multiplies the nominal Fourier-plane magnification.
    Parameters are tensors (optionally trainable, for calibration).
    """

    def __init__(
        self,
        field_size: int,
        fourier_pitch_m: float,
        slm_pixels: tuple[int, int],
        slm_pitch_m: float,
        offset_px: tuple[float, float] = (0.0, 0.0),
        rotation_rad: float = 0.0,
        scale: float = 1.0,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.field_size = int(field_size)
        self.slm_pixels = (int(slm_pixels[0]), int(slm_pixels[1]))
        self.ratio = float(fourier_pitch_m / slm_pitch_m)  # SLM pixels per filter sample
        p = dict(requires_grad=trainable)
        self.offset_px = nn.Parameter(torch.tensor(offset_px, dtype=torch.float64), **p)
        self.rotation_rad = nn.Parameter(
            torch.tensor(float(rotation_rad), dtype=torch.float64), **p
        )
        self.scale = nn.Parameter(torch.tensor(float(scale), dtype=torch.float64), **p)

    @classmethod
    def from_configs(
        cls, optics: OpticsConfig, slm: SLMModelConfig, **placement: float
    ) -> SLMGeometry:
        return cls(optics.field_size, optics.fourier_pitch_m, slm.pixels, slm.pitch_m, **placement)

    def _rotation(self) -> torch.Tensor:
        c, s = torch.cos(self.rotation_rad), torch.sin(self.rotation_rad)
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])

    def slm_centre(self) -> torch.Tensor:
        return torch.tensor([self.slm_pixels[0] // 2, self.slm_pixels[1] // 2], dtype=torch.float64)

    def filter_to_slm(self, ij: torch.Tensor) -> torch.Tensor:
        """Filter-grid index coordinates (…, 2) → SLM pixel coordinates (…, 2), float64."""
        u = ij.to(torch.float64) - self.field_size // 2
        m = self.scale * self.ratio * self._rotation()
        return self.slm_centre() + self.offset_px + u @ m.T

    def slm_to_filter(self, rc: torch.Tensor) -> torch.Tensor:
        """SLM pixel coordinates (…, 2) → filter-grid index coordinates (…, 2), float64."""
        m = self.scale * self.ratio * self._rotation()
        q = rc.to(torch.float64) - self.slm_centre() - self.offset_px
        return q @ torch.linalg.inv(m).T + self.field_size // 2


def _grid_for(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates (…, 2) as (row, col) → grid_sample's normalised (x, y), align_corners."""
    y = 2 * coords[..., 0] / max(height - 1, 1) - 1
    x = 2 * coords[..., 1] / max(width - 1, 1) - 1
    return torch.stack([x, y], dim=-1)


def sample_image(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample a real or complex image (H, W) at pixel coordinates (…, 2); zero outside."""
    h, w = image.shape[-2:]
    grid = _grid_for(coords, h, w).to(torch.float32)[None]
    if image.is_complex():
        planes = torch.stack([image.real, image.imag])[None]
    else:
        planes = image[None, None]
    flat = grid.reshape(1, -1, 1, 2) if grid.dim() != 4 else grid
    out = F.grid_sample(planes.float(), flat, mode=mode, padding_mode="zeros", align_corners=True)
    out = out[0].reshape(planes.shape[1], *coords.shape[:-1])
    return torch.complex(out[0], out[1]) if image.is_complex() else out[0]


class PhaseResponse(nn.Module):
    """Grey level → phase (radians) of the SLM at one wavelength.

    Parametric: φ(g) = scale · range · (g / levels)^gamma (linear when gamma = scale = 1), or
    tabulated from a measured LUT (``table``: phase in radians for each grey level, monotone).
    Grey levels may be fractional (the straight-through path of quantisation), so the table is
    interpolated linearly.
    """

    def __init__(
        self,
        bit_depth: int,
        phase_range_rad: float = 2 * math.pi,
        gamma: float = 1.0,
        scale: float = 1.0,
        table: np.ndarray | torch.Tensor | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.bit_depth = int(bit_depth)
        self.levels = 2**self.bit_depth
        self.phase_range_rad = float(phase_range_rad)
        p = dict(requires_grad=trainable)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)), **p)
        self.scale_factor = nn.Parameter(torch.tensor(float(scale)), **p)
        if table is not None:
            table = torch.as_tensor(np.asarray(table), dtype=torch.float32)
            if table.shape != (self.levels,):
                raise ValueError(f"LUT must have {self.levels} entries, got {tuple(table.shape)}")
        self.register_buffer("table", table)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        g = grey.to(torch.float32)
        if self.table is not None:
            x = g.clamp(0, self.levels - 1)
            lo = x.floor().long().clamp(max=self.levels - 2)
            w = x - lo
            return self.table[lo] * (1 - w) + self.table[lo + 1] * w
        frac = (g / self.levels).clamp_min(1e-9)
        return self.scale_factor * self.phase_range_rad * frac**self.gamma

    def as_table(self) -> torch.Tensor:
        """Phase for every integer grey level, float32 (levels,)."""
        with torch.no_grad():
            return self.forward(torch.arange(self.levels, dtype=torch.float32))


def gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of a real (H, W) image (reflect padding); σ in pixels."""
    if sigma_px <= 0:
        return image
    r = max(1, int(math.ceil(3 * sigma_px)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=image.device)
    k = torch.exp(-(x**2) / (2 * sigma_px**2))
    k = k / k.sum()
    img = image[None, None]
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return img[0, 0]


class SLMModel(nn.Module):
    """Displayed grey levels (R, C) → complex filter realised on the filter grid (N, N), centred.

    Also :meth:`reflectance`, the complex field right after the SLM on its own pixel grid.
    """

    def __init__(
        self,
        optics: OpticsConfig,
        slm: SLMModelConfig,
        geometry: SLMGeometry | None = None,
        response: PhaseResponse | None = None,
        supersample: int | None = None,
    ) -> None:
        super().__init__()
        self.optics, self.slm_cfg = optics, slm
        self.geometry = geometry or SLMGeometry.from_configs(optics, slm)
        self.response = response or PhaseResponse(slm.bit_depth, slm.phase_range_rad)
        self.fill_factor = slm.fill_factor
        self.fringing_px = slm.fringing_px
        n = optics.field_size
        # Each filter sample covers ~ratio×ratio SLM pixels: average over m×m sub-samples.
        m = supersample or max(1, int(math.ceil(self.geometry.ratio)))
        sub = (torch.arange(m, dtype=torch.float64) + 0.5) / m - 0.5
        idx = torch.arange(n, dtype=torch.float64)
        ii = idx[:, None, None, None] + sub[None, None, :, None]
        jj = idx[None, :, None, None] + sub[None, None, None, :]
        ij = torch.stack(torch.broadcast_tensors(ii, jj), dim=-1)  # (N, N, m, m, 2)
        self.register_buffer("_sub_ij", ij, persistent=False)

    def reflectance(self, grey: torch.Tensor) -> torch.Tensor:
        """Complex reflectance on the SLM grid (R, C): fill·exp(iφ) + (1 − fill)."""
        phase = gaussian_blur(self.response(grey), self.fringing_px)
        return self.fill_factor * unit_phasor(phase) + (1 - self.fill_factor)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        """Grey levels (R, C) (integer-valued or fractional) → centred filter (N, N) complex64."""
        refl = self.reflectance(grey)
        rc = self.geometry.filter_to_slm(self._sub_ij)
        vals = sample_image(refl, rc)  # (N, N, m, m)
        return vals.mean(dim=(-2, -1)).to(torch.complex64)
