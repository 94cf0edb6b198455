"""Free-space propagation of scalar fields: band-limited angular spectrum and Fresnel.

Fields are complex64 tensors of shape (B, H, W) (or (H, W)) sampled at ``pitch_m``. Transfer
functions take their phase k·z in float64 (the phase is large; float32 loses ~1e-3 rad) and are
built directly in complex64 from cos/sin of that phase (no complex128 temporaries), then kept in
a least-recently-used cache bounded in bytes (:func:`set_kernel_cache_limit`, default 256 MiB;
``DMICRO_KERNEL_CACHE_MB``). Zero padding (``pad=True``) doubles the grid so that the circular
convolution of the FFT does not wrap light around the edges; the padded grid and its spectrum
live in per-thread work buffers that are reused from call to call (torch's CPU allocator does not
cache: fresh 4·H·W buffers page-fault on every call), and the gradient runs through the same
buffers (the propagator is linear: its adjoint is the same convolution with conj(H)).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import torch


def frequency_grid(n_y: int, n_x: int, pitch_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/m) in FFT order, float64, each of shape (n_y, n_x)."""
    fy = np.fft.fftfreq(n_y, d=pitch_m)
    fx = np.fft.fftfreq(n_x, d=pitch_m)
    return np.meshgrid(fy, fx, indexing="ij")


class KernelCache:
    """Least-recently-used cache of transfer functions (torch tensors) bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for t in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor cached under ``key``, built (and cached, evicting the oldest) when absent."""
        with self._lock:
            t = self._items.get(key)
            if t is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return t
        t = build()
        with self._lock:
            self.misses += 1
            self._items[key] = t
            self._items.move_to_end(key)
            self._evict()
        return t

    def _evict(self) -> None:
        size = self.nbytes
        while len(self._items) > 1 and size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            size -= old.numel() * old.element_size()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


KERNELS = KernelCache(int(float(os.environ.get("DMICRO_KERNEL_CACHE_MB", "256")) * 2**20))


def set_kernel_cache_limit(max_bytes: int) -> None:
    """Bound the transfer-function cache to ``max_bytes`` (evicts at once when over)."""
    with KERNELS._lock:
        KERNELS.max_bytes = int(max_bytes)
        KERNELS._evict()


def _unit_phasor_c64(phase: np.ndarray) -> np.ndarray:
    """exp(i·phase) as complex64 from a float64 phase, without a complex128 temporary."""
    out = np.empty(phase.shape, np.complex64)
    out.real = np.cos(phase)
    out.imag = np.sin(phase)
    return out


def _asm_transfer_np(
    n_y: int, n_x: int, pitch_m: float, wavelength_m: float, distance_m: float, band_limit: bool
) -> np.ndarray:
    fy, fx = frequency_grid(n_y, n_x, pitch_m)
    arg = 1.0 / wavelength_m**2 - fx**2 - fy**2
    keep = arg > 0
    if band_limit:
        # Matsushima & Shimobaba (2009): beyond f_lim the sampled chirp aliases.
        for n, f in ((n_x, fx), (n_y, fy)):
            df = 1.0 / (n * pitch_m)
            f_lim = 1.0 / (wavelength_m * math.sqrt((2 * df * abs(distance_m)) ** 2 + 1))
            keep &= np.abs(f) <= f_lim
    phase = (2 * math.pi * distance_m) * np.sqrt(np.where(keep, arg, 0.0))
    h = _unit_phasor_c64(phase)
    h[~keep] = 0
    return h


def _fresnel_transfer_np(
    n_y: int, n_x: int, pitch_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    fy, fx = frequency_grid(n_y, n_x, pitch_m)
    k = 2 * math.pi / wavelength_m
    phase = k * distance_m - math.pi * wavelength_m * distance_m * (fx**2 + fy**2)
    return _unit_phasor_c64(phase)


def asm_transfer(
    shape: tuple[int, int],
    pitch_m: float,
    wavelength_m: float,
    distance_m: float,
    band_limit: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Band-limited angular-spectrum transfer function H(fx, fy), FFT order, complex64 (H, W).

    Cached (see :data:`KERNELS`); treat the returned tensor as read-only.
    """
    args = (
        int(shape[0]),
        int(shape[1]),
        float(pitch_m),
        float(wavelength_m),
        float(distance_m),
        bool(band_limit),
    )
    dev = torch.device(device)
    return KERNELS.get(
        ("asm", *args, str(dev)), lambda: torch.from_numpy(_asm_transfer_np(*args)).to(dev)
    )


def fresnel_transfer(
    shape: tuple[int, int],
    pitch_m: float,
    wavelength_m: float,
    distance_m: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Paraxial (Fresnel) transfer function exp(ikz − iπλz(fx²+fy²)), FFT order, complex64.

    Cached (see :data:`KERNELS`); treat the returned tensor as read-only.
    """
    args = (int(shape[0]), int(shape[1]), float(pitch_m), float(wavelength_m), float(distance_m))
    dev = torch.device(device)
    return KERNELS.get(
        ("fresnel", *args, str(dev)), lambda: torch.from_numpy(_fresnel_transfer_np(*args)).to(dev)
    )


_WORK = threading.local()
_MAX_WORK_BUFFERS = 4  # per thread: (padded input, spectrum) pairs for the latest shapes


def _work_buffers(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """Per-thread (padded grid, spectrum) buffers of ``shape``; the padded grid's border is zero
    and stays zero (callers write only its centre)."""
    cache: OrderedDict = getattr(_WORK, "buffers", None)
    if cache is None:
        cache = _WORK.buffers = OrderedDict()
    key = (shape, dtype, str(device))
    bufs = cache.get(key)
    if bufs is None:
        bufs = (
            torch.zeros(shape, dtype=dtype, device=device),
            torch.empty(shape, dtype=dtype, device=device),
        )
        cache[key] = bufs
        while len(cache) > _MAX_WORK_BUFFERS:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return bufs


def _padded_shape(h: int, w: int) -> tuple[int, int, int, int, int, int]:
    py, px = h // 2, w // 2
    return 2 * h, 2 * w, py, py + h, px, px + w


def _padded_convolve(field: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """crop(IFFT(H · FFT(pad₀(field)))) through reused work buffers; a fresh (…, H, W) result."""
    n_y, n_x = field.shape[-2:]
    ph, pw, y0, y1, x0, x1 = _padded_shape(n_y, n_x)
    grid, spec = _work_buffers((*field.shape[:-2], ph, pw), field.dtype, field.device)
    grid[..., y0:y1, x0:x1].copy_(field)
    torch.fft.fft2(grid, out=spec)
    spec.mul_(h)
    torch.fft.ifft2(spec, out=spec)
    return spec[..., y0:y1, x0:x1].clone(memory_format=torch.contiguous_format)


class _PaddedPropagate(torch.autograd.Function):
    """Zero-padded linear convolution with a fixed transfer function; backward is the adjoint
    (the same convolution with conj(H)), so both directions use the work buffers."""

    @staticmethod
    def forward(ctx, field: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(h)
        return _padded_convolve(field, h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (h,) = ctx.saved_tensors
        return _padded_convolve(grad.contiguous(), h.conj()), None


def _propagate(field: torch.Tensor, transfer_fn, pad: bool) -> torch.Tensor:
    if not field.is_complex():
        raise TypeError("field must be a complex tensor")
    n_y, n_x = field.shape[-2:]
    if pad:
        ph, pw, *_ = _padded_shape(n_y, n_x)
        h = transfer_fn((ph, pw), field.device)
        return _PaddedPropagate.apply(field.contiguous(), h.to(field.dtype))
    h = transfer_fn((n_y, n_x), field.device).to(field.dtype)
    spec = torch.fft.fft2(field)
    if field.requires_grad and torch.is_grad_enabled():
        return torch.fft.ifft2(spec * h)
    return torch.fft.ifft2(spec.mul_(h), out=spec)


def angular_spectrum(
    field: torch.Tensor,
    distance_m: float,
    wavelength_m: float,
    pitch_m: float,
    pad: bool = True,
    band_limit: bool = True,
) -> torch.Tensor:
    """Propagate ``field`` (…, H, W) complex over ``distance_m`` with the band-limited ASM.

    Exact for the scalar Helmholtz equation (evanescent waves dropped); ``pad`` zero-pads ×2 to
    avoid wrap-around. Differentiable with respect to ``field``.
    """
    return _propagate(
        field,
        lambda s, d: asm_transfer(s, pitch_m, wavelength_m, distance_m, band_limit, d),
        pad,
    )


def fresnel(
    field: torch.Tensor,
    distance_m: float,
    wavelength_m: float,
    pitch_m: float,
    pad: bool = True,
) -> torch.Tensor:
    """Propagate ``field`` (…, H, W) complex with the Fresnel (paraxial) transfer function."""
    return _propagate(
        field, lambda s, d: fresnel_transfer(s, pitch_m, wavelength_m, distance_m, d), pad
    )
