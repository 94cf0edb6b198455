"""Generic trigger-box behaviour, once: argument checks, open on first use, safe idempotent close.

A backend subclasses :class:`TriggerBase` and fills the ``_hw_*`` hooks; everything the pipeline
calls (:class:`~dmicro_hw.drivers.base.Trigger`) is here:

* ``open()`` → ``_hw_open()`` once (a backend that loses its link sets ``_opened = False`` and
  the next call opens it again); every call opens on first use, DeviceError after ``close()``;
* ``arm(rate_hz, count)`` refuses rate ≤ 0 or count < 0 (DeviceError) before ``_hw_arm``;
  ``fire()``, ``status()`` (``armed``/``running`` bool, ``fired``/``remaining`` int, …),
  ``disarm()`` → their hooks;
* ``close()`` → ``_hw_close()`` (disarm, best effort, then release) once — idempotent;
* ``info()`` = ``{"backend": backend, **_hw_info()}``; ``with trigger:`` opens and closes.
"""

from __future__ import annotations

from typing import Any

from dmicro_hw.errors import DeviceError


class TriggerBase:
    """Generic part of every trigger backend (see the module docstring)."""

    #: registry name, reported by :meth:`info`
    backend: str = "trigger"

    def __init__(self) -> None:
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------------ VENDOR hooks
    def _hw_open(self) -> None:
        """VENDOR: connect to the box (and check it answers)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_open: connect to the box here")

    def _hw_arm(self, rate_hz: float, count: int) -> None:
        """VENDOR: arm a train of ``count`` pulses at ``rate_hz`` (count 0 = until disarm)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_arm: arm the box here")

    def _hw_fire(self) -> None:
        """VENDOR: start the armed train."""
        raise NotImplementedError(f"{type(self).__name__}._hw_fire: start pulsing here")

    def _hw_status(self) -> dict[str, Any]:
        """VENDOR: counters (``armed``, ``running``, ``fired``, ``remaining``, …)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_status: read the counters here")

    def _hw_disarm(self) -> None:
        """VENDOR: stop pulsing and disarm (the safe state)."""
        raise NotImplementedError(f"{type(self).__name__}._hw_disarm: disarm the box here")

    def _hw_close(self) -> None:
        """VENDOR: disarm (best effort, never raise) and release the link."""
        raise NotImplementedError(f"{type(self).__name__}._hw_close: release the box here")

    def _hw_info(self) -> dict[str, Any]:
        return {}

    def _label(self) -> str:
        return f"trigger ({self.backend})"

    # ------------------------------------------------------------------ generic part
    def open(self) -> Any:
        """Connect (idempotent; also after close())."""
        self._closed = False
        if not self._opened:
            self._hw_open()
            self._opened = True
        return self

    def _ensure_open(self) -> None:
        if not self._opened:
            if self._closed:
                raise DeviceError(f"{self._label()}: used after close()")
            self.open()

    def arm(self, rate_hz: float, count: int) -> None:
        """Arm a train of ``count`` pulses at ``rate_hz`` (count 0 = until :meth:`disarm`)."""
        rate_hz, count = float(rate_hz), int(count)
        if not rate_hz > 0 or count < 0:
            raise DeviceError(
                f"{self._label()}: arm needs rate_hz > 0 and count >= 0 (got {rate_hz}, {count})"
            )
        self._ensure_open()
        self._hw_arm(rate_hz, count)

    def fire(self) -> None:
        """Start the armed train."""
        self._ensure_open()
        self._hw_fire()

    def status(self) -> dict[str, Any]:
        """Counters: ``armed``, ``fired``, ``remaining`` (and what the box adds)."""
        self._ensure_open()
        return self._hw_status()

    def disarm(self) -> None:
        """Stop pulsing and disarm (the safe state)."""
        self._ensure_open()
        self._hw_disarm()

    def close(self) -> None:
        """Disarm (best effort) and release. Idempotent."""
        try:
            if self._opened:
                self._hw_close()
        finally:
            self._opened = False
            self._closed = True

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, **self._hw_info()}

    def __enter__(self) -> Any:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
