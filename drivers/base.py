"""Device protocols (SLM, Camera, Trigger), the Frame record, and the backend registry.

Every backend is a context manager; ``close()`` is idempotent and leaves the device safe (SLM
blank, camera stopped, trigger disarmed), also after an exception or Ctrl-C.

Backends are looked up by name (``rig.yaml``: ``camera.backend: genicam``). Built-in backends are
registered lazily by module path so that importing this module pulls no heavy dependency; third
parties add theirs through the ``dmicro_hw.drivers`` entry-point group, where the entry-point name
is ``<kind>.<backend>`` (e.g. ``camera.mycam = mylab.cam:MyCamera``) and the object is a factory
``factory(config_section, rig_config) -> device``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from dmicro_hw.drivers.trigger_base import TriggerBase
from dmicro_hw.errors import ConfigError

DeviceKind = Literal["slm", "camera", "trigger"]


@dataclass
class Frame:
    """One camera frame with the metadata carried through the whole pipeline.

    ``data`` is (H, W) uint8/uint16 (raw sensor values, PFNC ``pixel_format``); ``frame_id`` is the
    device's frame counter (gaps mean dropped frames); ``device_timestamp`` is in device ticks,
    ``timestamp_frequency_hz`` converts it to seconds (0 when the device has no clock — then
    ``device_timestamp`` is 0 too; check before dividing); ``host_time`` is ``time.time()`` at
    receipt.
    """

    data: np.ndarray
    frame_id: int
    device_timestamp: int = 0
    timestamp_frequency_hz: float = 1e9
    host_time: float = field(default_factory=time.time)
    exposure_s: float = float("nan")
    pixel_format: str = "Mono8"
    pattern_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


TriggerMode = Literal["free-run", "triggered"]
TRIGGER_MODES: tuple[str, ...] = ("free-run", "triggered")


@runtime_checkable
class SLM(Protocol):
    """A phase SLM. ``show`` takes uint8/uint16 grey levels or float radians (wrapped, LUT).

    ``settle_time_s``: seconds the pipeline waits after ``show`` before trusting frames (liquid-
    crystal response); ``pattern_id``: the id of what is displayed now (``"blank"`` after
    ``blank()``), recorded with every frame.
    """

    shape: tuple[int, int]
    pitch_m: float
    bit_depth: int
    settle_time_s: float
    pattern_id: str

    def show(self, pattern: np.ndarray, pattern_id: str = "") -> None: ...
    def blank(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> SLM: ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Camera(Protocol):
    """A streaming camera. ``frames()`` yields :class:`Frame` until ``stop()`` or ``max_frames``.

    ``set_trigger_mode(mode)`` (``"free-run"`` or ``"triggered"``, after ``open()`` and before
    ``start()``) must really switch the device or raise :class:`~dmicro_hw.errors.DeviceError`
    saying why it cannot; ``attach_trigger(trigger)`` connects the trigger device whose pulses
    expose frames (a no-op where the pulses travel on a cable).
    """

    def open(self) -> Any: ...
    def set_trigger_mode(self, mode: str) -> None: ...
    def attach_trigger(self, trigger: Any) -> None: ...
    def start(self) -> None: ...
    def frames(self, max_frames: int | None = None) -> Iterator[Frame]: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def info(self) -> dict[str, Any]: ...
    def __enter__(self) -> Camera: ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Trigger(Protocol):
    """A trigger/sync box: arm, fire N pulses at a rate, read counters, disarm."""

    def arm(self, rate_hz: float, count: int) -> None: ...
    def fire(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def disarm(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Trigger: ...
    def __exit__(self, *exc: object) -> None: ...


Factory = Callable[..., Any]

# Built-in backends: "kind.name" -> "module:attribute" (imported on first use).
_BUILTIN: dict[str, str] = {
    "slm.sim": "dmicro_hw.simulators.sim_slm:SimSLM.from_config",
    "slm.screen": "dmicro_hw.drivers.screen_slm:ScreenSLM.from_config",
    "slm.slmpy": "dmicro_hw.drivers.slmpy_slm:SlmpySLM.from_config",
    "camera.sim": "dmicro_hw.simulators.sim_camera:SimCamera.from_config",
    "camera.genicam": "dmicro_hw.drivers.genicam_camera:GenICamCamera.from_config",
    "camera.replay": "dmicro_hw.simulators.replay_camera:ReplayCamera.from_config",
    "trigger.none": "dmicro_hw.drivers.base:NullTrigger.from_config",
    "trigger.serial": "dmicro_hw.drivers.serial_trigger:SerialTrigger.from_config",
    "trigger.sim": "dmicro_hw.simulators.sim_trigger:SimSerialTrigger.from_config",
}
_REGISTERED: dict[str, Factory] = {}


def register(kind: DeviceKind, name: str, factory: Factory) -> None:
    """Register a backend factory in code (tests, notebooks)."""
    _REGISTERED[f"{kind}.{name}"] = factory


def _entry_point_backends() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="dmicro_hw.drivers")}


def available_backends(kind: DeviceKind) -> list[str]:
    """Names of all backends of ``kind``: built-in, registered and from entry points."""
    keys = set(_BUILTIN) | set(_REGISTERED) | set(_entry_point_backends())
    return sorted(k.split(".", 1)[1] for k in keys if k.startswith(kind + "."))


def _resolve(spec: str) -> Factory:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_factory(kind: DeviceKind, name: str) -> Factory:
    """Return the factory of backend ``name``; ConfigError listing the allowed names if unknown."""
    key = f"{kind}.{name}"
    if key in _REGISTERED:
        return _REGISTERED[key]
    eps = _entry_point_backends()
    if key in eps:
        return eps[key].load()
    if key in _BUILTIN:
        return _resolve(_BUILTIN[key])
    allowed = ", ".join(available_backends(kind))
    raise ConfigError(f"{kind}.backend: unknown backend {name!r}; available: {allowed}")


_PROTOCOLS: dict[str, Any] = {"slm": SLM, "camera": Camera, "trigger": Trigger}


def missing_members(device: Any, kind: DeviceKind) -> list[str]:
    """Names the :data:`kind` Protocol declares that ``device`` lacks (empty: it conforms)."""
    proto = _PROTOCOLS[kind]
    names = set(getattr(proto, "__annotations__", {}))
    names |= {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}
    names |= {"__enter__", "__exit__"}
    return sorted(n for n in names if not hasattr(device, n))


def open_device(kind: DeviceKind, section: Any, rig: Any = None, **wiring: Any) -> Any:
    """Build the device of ``kind`` described by the rig config ``section`` (not yet opened).

    ``wiring``: keyword arguments passed on to the factory (the rig seam hands the shared virtual
    bench to the simulated devices as ``bench=``; :func:`dmicro_hw.rig.open_rig`).

    ConfigError naming the backend and what it lacks when the object does not implement the
    Protocol of ``kind`` (the pipeline calls every declared member without guessing).
    """
    device = get_factory(kind, section.backend)(section, rig, **wiring)
    missing = missing_members(device, kind)
    if missing:
        raise ConfigError(
            f"{kind}.backend: {section.backend!r} ({type(device).__name__}) does not implement "
            f"the {kind} protocol: missing {', '.join(missing)}"
        )
    return device


class NullTrigger(TriggerBase):
    """Free-run: no trigger hardware. Arming is checked and recorded; nothing pulses, counters
    stay zero."""

    backend = "none"

    def __init__(self) -> None:
        super().__init__()
        self._armed = False

    @classmethod
    def from_config(cls, section: Any = None, rig: Any = None) -> NullTrigger:
        return cls()

    def _hw_open(self) -> None:
        pass

    def _hw_arm(self, rate_hz: float, count: int) -> None:
        self._armed = True

    def _hw_fire(self) -> None:
        pass

    def _hw_status(self) -> dict[str, Any]:
        return {"armed": self._armed, "fired": 0, "remaining": 0}

    def _hw_disarm(self) -> None:
        self._armed = False

    def _hw_close(self) -> None:
        self._armed = False
