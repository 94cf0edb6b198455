"""Seeded device faults for the simulated camera (``bench.faults`` in rig.yaml).

* ``drop_probability``: the frame is lost inside the device — the stream shows a frame id gap.
* ``late_probability`` / ``late_s``: the frame arrives ``late_s`` seconds late.
* ``timeout_at_frame``: fetching this frame id waits the fetch timeout and raises
  :class:`~dmicro_hw.errors.DeviceTimeoutError` (once); the frame is lost, the stream goes on.
* ``disconnect_at_frame``: the camera disconnects when this frame id is due and raises
  :class:`~dmicro_hw.errors.DeviceError` (once per injector, so a reopened camera streams again).
* ``saturate_probability``: the frame is saturated (every pixel at the ADC maximum, a flash).

Per-frame decisions depend only on ``(seed, frame id)``, so a fault pattern is reproducible no
matter how fast frames are read. Garbled serial lines belong to the simulated trigger firmware.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dmicro_hw.config import FaultsConfig
from dmicro_hw.errors import DeviceError, DeviceTimeoutError

log = logging.getLogger(__name__)

_BLOCK = 4096  # frame ids per block of pre-drawn uniforms


class DeviceDisconnected(DeviceError):
    """The simulated camera lost its connection (reopen it: close() then open())."""


@dataclass(frozen=True)
class FrameFaults:
    """What happens to one frame id."""

    drop: bool = False
    late_s: float = 0.0
    saturate: bool = False


class FaultInjector:
    """Decides the faults of each frame id from :class:`FaultsConfig`; one-shot faults fire once.

    The injector outlives camera reopen (the camera keeps its injector), so ``disconnect_at_frame``
    and ``timeout_at_frame`` fire once and a reopened camera streams normally.
    """

    def __init__(self, cfg: FaultsConfig | None = None) -> None:
        self.cfg = cfg or FaultsConfig()
        self._block_index = -1
        self._block: np.ndarray | None = None
        self.timeout_fired = False
        self.disconnect_fired = False
        self.counts = {"dropped": 0, "late": 0, "saturated": 0, "timeouts": 0, "disconnects": 0}

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(
            c.drop_probability
            or c.late_probability
            or c.saturate_probability
            or c.timeout_at_frame is not None
            or c.disconnect_at_frame is not None
        )

    def _uniforms(self, frame_id: int) -> np.ndarray:
        b, i = divmod(int(frame_id), _BLOCK)
        if b != self._block_index:
            rng = np.random.default_rng([int(self.cfg.seed) & 0xFFFFFFFF, 0xFA17, b])
            self._block = rng.random((3, _BLOCK))
            self._block_index = b
        return self._block[:, i]

    def frame(self, frame_id: int) -> FrameFaults:
        """Random faults of ``frame_id`` (drop, late, saturate); counts them."""
        c = self.cfg
        if not (c.drop_probability or c.late_probability or c.saturate_probability):
            return FrameFaults()
        u = self._uniforms(frame_id)
        drop = bool(u[0] < c.drop_probability)
        late = (not drop) and bool(u[1] < c.late_probability)
        sat = (not drop) and bool(u[2] < c.saturate_probability)
        self.counts["dropped"] += drop
        self.counts["late"] += late
        self.counts["saturated"] += sat
        return FrameFaults(drop=drop, late_s=c.late_s if late else 0.0, saturate=sat)

    def is_timeout(self, frame_id: int) -> bool:
        """True (once) when fetching ``frame_id`` must time out."""
        t = self.cfg.timeout_at_frame
        if t is not None and not self.timeout_fired and frame_id >= t:
            self.timeout_fired = True
            self.counts["timeouts"] += 1
            return True
        return False

    def is_disconnect(self, frame_id: int) -> bool:
        """True (once) when the camera must disconnect as ``frame_id`` becomes due."""
        d = self.cfg.disconnect_at_frame
        if d is not None and not self.disconnect_fired and frame_id >= d:
            self.disconnect_fired = True
            self.counts["disconnects"] += 1
            return True
        return False

    @staticmethod
    def timeout_error(frame_id: int, timeout_s: float) -> DeviceTimeoutError:
        return DeviceTimeoutError(
            f"camera (sim): no frame within {timeout_s:g} s (fetch timeout at frame {frame_id})"
        )

    @staticmethod
    def disconnect_error(frame_id: int) -> DeviceDisconnected:
        return DeviceDisconnected(
            f"camera (sim): device disconnected at frame {frame_id}; "
            "close() and open() to reconnect"
        )
