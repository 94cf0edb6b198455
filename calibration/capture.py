"""Capturing probe observations through the device Protocols (SLM.show + Camera.frames).

The same code drives the simulated rig (SimSLM/SimCamera on a VirtualBench) and a real bench:

    for each probe pattern:  camera.stop() → slm.show(grey, pattern_id) → wait settle time
                             → camera.frames(n) → drop frames tagged with another pattern id
                             → mean and variance per pixel in ADU, saturation mask

Frames are converted from the camera's pixel format to ADC units (``Mono16`` holding a 12-bit ADC
is divided by 16). Every raw frame is kept (``frames.npz`` of the bundle) and hashed (SHA-256 over
pattern ids, shapes and bytes in capture order), so a bundle names exactly the frames it was
fitted from.

*Known target.* A calibration images a known phase target. On the simulated rig
:func:`place_target` mounts it through the rig seam (:class:`dmicro_hw.rig.SamplePlane`, which
the virtual bench implements: the simulated equivalent of the operator mounting the target); on a
real bench the operator mounts the physical target whose phase map the configuration names, and
``place_target`` returns False.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmicro_hw.calibration.model_fit import Observation
from dmicro_hw.drivers.pixel_formats import format_bits
from dmicro_hw.errors import DeviceError
from dmicro_hw.rig import twins_of

log = logging.getLogger(__name__)


def place_target(devices: tuple[Any, ...], phase: np.ndarray) -> bool:
    """Mount the known target ``phase`` (N, N) rad in the sample plane of the rig
    (:class:`~dmicro_hw.rig.SamplePlane` of a digital twin behind ``devices``).

    Returns True when done, False on a real bench (the operator mounts the physical target).
    """
    plane = twins_of(*devices).sample_plane
    if plane is None:
        return False
    plane.mount(np.asarray(phase, dtype=np.float32))
    return True


def release_target(devices: tuple[Any, ...]) -> None:
    """Give the sample plane its configured sample back (cells stream) after calibrating."""
    plane = twins_of(*devices).sample_plane
    if plane is not None:
        plane.restore()


@dataclass
class CaptureLog:
    """Raw frames of every captured probe, in capture order (for frames.npz and the hash)."""

    pattern_ids: list[str] = field(default_factory=list)
    stacks: list[np.ndarray] = field(default_factory=list)

    def add(self, pattern_id: str, stack: np.ndarray) -> None:
        self.pattern_ids.append(pattern_id)
        self.stacks.append(stack)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for pid, s in zip(self.pattern_ids, self.stacks):
            a = np.ascontiguousarray(s)
            h.update(f"{pid}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def save_npz(self, path) -> None:
        arrays = {f"p{i:03d}": s for i, s in enumerate(self.stacks)}
        np.savez_compressed(path, pattern_ids=np.array(self.pattern_ids), **arrays)

    def __len__(self) -> int:
        return len(self.stacks)


class Capturer:
    """Displays probe patterns and averages camera frames (see the module docstring).

    Args:
        slm, camera: devices implementing the SLM and Camera protocols (opened).
        adc_bits: bits of the sensor ADC (``sensor.bit_depth``), to undo the pixel-format scale.
        frames_per_pattern: frames averaged per probe.
        settle_s: wait after ``show`` (default: the SLM's ``settle_time_s`` × 1.5 + 5 ms).
        on_capture: called after each probe with (pattern_id, n_done) (progress display).
    """

    def __init__(
        self,
        slm: Any,
        camera: Any,
        adc_bits: int,
        frames_per_pattern: int = 16,
        settle_s: float | None = None,
        on_capture: Callable[[str, int], None] | None = None,
    ) -> None:
        self.slm, self.camera = slm, camera
        self.adc_bits = int(adc_bits)
        self.adc_max = float(2**self.adc_bits - 1)
        self.n = int(frames_per_pattern)
        base = float(slm.settle_time_s)
        self.settle_s = base * 1.5 + 0.005 if settle_s is None else float(settle_s)
        self.on_capture = on_capture
        self.log = CaptureLog()
        self.shape = tuple(int(x) for x in slm.shape)

    def _to_adu(self, data: np.ndarray, pixel_format: str) -> np.ndarray:
        bits = format_bits(pixel_format, self.adc_bits)
        return data.astype(np.float64) / 2.0 ** (bits - self.adc_bits)

    def grab(self, pattern_id: str, n: int) -> np.ndarray:
        """``n`` frames (n, h, w) in ADU of what is displayed now (stream restarted first)."""
        cam = self.camera
        out: list[np.ndarray] = []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 4 * n + 8:
                raise DeviceError(
                    f"calibration: camera delivered no frames of pattern {pattern_id!r}"
                )
            for fr in cam.frames(max_frames=n - len(out)):
                if fr.pattern_id and fr.pattern_id != pattern_id:
                    continue  # captured before the pattern was on (device-tagged frames)
                out.append(self._to_adu(np.asarray(fr.data), fr.pixel_format))
        return np.stack(out)

    def capture(
        self,
        pattern_id: str,
        kind: str,
        grey: np.ndarray,
        target: str = "target",
        meta: dict | None = None,
        n_frames: int | None = None,
    ) -> Observation:
        """Show ``grey`` and return the averaged :class:`Observation` (ADU)."""
        if tuple(grey.shape) != self.shape:
            raise DeviceError(f"probe {pattern_id}: shape {grey.shape} ≠ SLM {self.shape}")
        n = int(n_frames or self.n)
        stop = getattr(self.camera, "stop", None)
        if stop is not None:
            stop()
        dtype = np.uint8 if int(getattr(self.slm, "bit_depth", 8)) <= 8 else np.uint16
        self.slm.show(np.ascontiguousarray(grey, dtype=dtype), pattern_id)
        if self.settle_s > 0:
            time.sleep(self.settle_s)
        stack = self.grab(pattern_id, n)
        self.log.add(pattern_id, stack.astype(np.float32))
        mean = stack.mean(axis=0)
        var = stack.var(axis=0, ddof=1) if n > 1 else np.ones_like(mean)
        valid = (stack.max(axis=0) < self.adc_max - 0.5) & (stack.min(axis=0) > 0.5)
        obs = Observation(
            pattern_id=pattern_id,
            kind=kind,
            grey=np.asarray(grey),
            target=target,
            mean=mean,
            var=var,
            n_frames=n,
            meta=dict(meta or {}),
            valid=valid.astype(np.float64),
        )
        if self.on_capture:
            self.on_capture(pattern_id, len(self.log))
        return obs
