"""Trigger/sync box over a serial port (pyserial), speaking the checksummed line protocol of
:mod:`dmicro_hw.drivers.trigger_protocol`.

Robustness:

* every reply is checked (XOR checksum, echoed sequence number); a garbled reply, or a request the
  box received garbled (``ERR BADCS``), is retried with the *same* sequence number, which the box
  answers from its reply cache — retrying never executes a command twice;
* after ``retries`` failed retries the call raises :class:`~dmicro_hw.errors.DeviceError`
  (garbled replies) or :class:`~dmicro_hw.errors.DeviceTimeoutError` (no reply), naming the port;
* on a timeout or an I/O error the port is closed and reopened before the next try (a USB-serial
  adapter that re-enumerated, a box that was power-cycled); a port that cannot be reopened raises
  :class:`~dmicro_hw.errors.DeviceError` at once;
* :meth:`SerialTrigger.close` disarms the box (best effort) and closes the port; it is idempotent
  and runs from ``__exit__``, also after an exception or Ctrl-C.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dmicro_hw.drivers import trigger_protocol as tp
from dmicro_hw.drivers.trigger_base import TriggerBase
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError

log = logging.getLogger(__name__)


_POLL_S = 0.02  # read timeout of the port: the reply deadline is checked at least this often


class _NoReply(Exception):
    pass


class SerialTrigger(TriggerBase):
    """Trigger box on ``port`` (e.g. ``/dev/ttyUSB0``, ``COM3``, or a pyserial URL).

    ``timeout_s`` is the time allowed for each reply; ``retries`` the number of extra tries after
    a garbled or missing reply; ``reconnect`` reopens the port after a timeout or I/O error.
    The port is opened by :meth:`open` / ``with``, or on first use (the generic part is
    :class:`~dmicro_hw.drivers.trigger_base.TriggerBase`'s).
    """

    backend = "serial"

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        timeout_s: float = 1.0,
        retries: int = 3,
        reconnect: bool = True,
        handshake: bool = True,
    ) -> None:
        super().__init__()
        self.port = str(port)
        self.baudrate = int(baudrate)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.reconnect = bool(reconnect)
        self.handshake = bool(handshake)
        self.identity: dict[str, str] = {}
        self.stats = {"requests": 0, "retries": 0, "garbled": 0, "timeouts": 0, "reconnects": 0}
        self._ser: Any = None
        self._seq = 0
        self._rx = bytearray()
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- construction
    @staticmethod
    def kwargs_from_section(section: Any) -> dict[str, Any]:
        """Constructor arguments from a ``trigger:`` config section (options: retries,
        reconnect, handshake)."""
        opts = dict(getattr(section, "options", None) or {})
        allowed = {"retries", "reconnect", "handshake"}
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise ConfigError(
                f"trigger.options: unknown key(s) {unknown}; allowed: {sorted(allowed)}"
            )
        kw: dict[str, Any] = {
            "port": getattr(section, "port", None),
            "baudrate": getattr(section, "baudrate", 115200),
            "timeout_s": getattr(section, "timeout_s", 1.0),
        }
        kw.update(opts)
        return kw

    @classmethod
    def from_config(cls, section: Any, rig: Any = None) -> SerialTrigger:
        """``trigger.backend: serial``; needs ``trigger.port``."""
        kw = cls.kwargs_from_section(section)
        if not kw.get("port"):
            raise ConfigError(
                "trigger.port: required for trigger.backend 'serial' (e.g. /dev/ttyUSB0 or COM3)"
            )
        return cls(**kw)

    # ---------------------------------------------------------------- port handling
    def _label(self) -> str:
        return f"trigger on {self.port}"

    def _hw_open(self) -> None:
        """Open the port and (by default) check that a trigger box answers ``ID``."""
        with self._lock:
            if self._ser is None:
                self._open_port()
                if self.handshake:
                    fields = self._request("ID")
                    self.identity = dict(fields)
                    log.info("trigger box on %s: %s", self.port, self.identity)

    def _open_port(self) -> None:
        import serial  # pyserial

        try:
            ser = serial.serial_for_url(
                self.port,
                baudrate=self.baudrate,
                timeout=min(_POLL_S, self.timeout_s),
                write_timeout=self.timeout_s,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceError(f"trigger.port {self.port}: cannot open serial port ({e})") from None
        try:
            ser.reset_input_buffer()
        except (serial.SerialException, OSError):
            pass
        self._ser = ser
        self._rx.clear()

    def _close_port(self) -> None:
        """Close the port; the next call opens it again (unless close() was called)."""
        self._opened = False
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # closing a dead port must never raise
                log.debug("closing %s failed", self.port, exc_info=True)

    def _reconnect(self) -> None:
        self.stats["reconnects"] += 1
        log.warning("trigger on %s: reconnecting", self.port)
        self._close_port()
        time.sleep(0.05)
        self._open_port()

    # ---------------------------------------------------------------- request/reply
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % tp.SEQ_MOD
        return self._seq

    def _read_reply(self, seq: int, deadline: float) -> tp.Reply:
        """Read lines until the reply for ``seq`` (stale replies are skipped)."""
        while True:
            while b"\n" not in self._rx:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _NoReply
                chunk = self._ser.read(max(1, self._ser.in_waiting))  # waits ≤ _POLL_S
                self._rx += chunk
                if len(self._rx) > 4 * tp.MAX_LINE and b"\n" not in self._rx:
                    self._rx.clear()  # line noise without line ends
            line, _, rest = self._rx.partition(b"\n")
            self._rx = bytearray(rest)
            body = tp.decode(bytes(line) + b"\n")  # ChecksumError / ProtocolError propagate
            reply = tp.parse_reply(body)
            if reply.seq is None or reply.seq == seq:
                return reply
            log.debug("trigger on %s: skipping stale reply %r", self.port, body)

    def _request(self, verb: str, *args: str, retries: int | None = None) -> dict[str, str]:
        """Send one request; return the OK reply's fields (retry rules: see the module doc)."""
        import serial

        retries = self.retries if retries is None else retries
        with self._lock:
            if self._ser is None:
                raise DeviceError(f"trigger on {self.port}: port is not open")
            self.stats["requests"] += 1
            seq = self._next_seq()
            line = tp.encode(tp.Request(seq, verb, [str(a) for a in args]).body())
            garbled = timeouts = 0
            tries = 1 + max(0, retries)
            last = ""
            for attempt in range(tries):
                if attempt:
                    self.stats["retries"] += 1
                try:
                    if self._ser is None:
                        self._open_port()
                    self._ser.write(line)
                    self._ser.flush()
                    reply = self._read_reply(seq, time.monotonic() + self.timeout_s)
                except _NoReply:
                    timeouts += 1
                    self.stats["timeouts"] += 1
                    last = "no reply"
                    if self.reconnect and attempt + 1 < tries:
                        self._reconnect()
                    continue
                except tp.ProtocolError as e:  # includes ChecksumError
                    garbled += 1
                    self.stats["garbled"] += 1
                    last = str(e)
                    log.info("trigger on %s: %s reply garbled (%s); retrying", self.port, verb, e)
                    continue
                except (serial.SerialException, OSError) as e:
                    last = f"I/O error: {e}"
                    log.warning("trigger on %s: %s", self.port, last)
                    self._close_port()
                    if not self.reconnect:
                        break
                    self._reconnect()  # raises DeviceError when the port is gone
                    continue
                if reply.ok:
                    return reply.fields
                if reply.code == "BADCS":  # the box got our request garbled
                    garbled += 1
                    self.stats["garbled"] += 1
                    last = "box reported a garbled request (BADCS)"
                    continue
                raise DeviceError(
                    f"trigger on {self.port}: {verb} refused: {reply.code} {reply.text}".rstrip()
                )
            if timeouts and not garbled:
                raise DeviceTimeoutError(
                    f"trigger on {self.port}: no reply to {verb} within {self.timeout_s:g} s "
                    f"({tries} tries); is the box powered and the baud rate {self.baudrate}?"
                )
            raise DeviceError(
                f"trigger on {self.port}: {verb} failed after {tries} tries "
                f"({garbled} garbled, {timeouts} timed out; last: {last}); "
                "check cable and baud rate"
            )

    # ---------------------------------------------------------------- Trigger protocol
    def _hw_arm(self, rate_hz: float, count: int) -> None:
        self._request("ARM", repr(rate_hz), str(count))

    def _hw_fire(self) -> None:
        self._request("FIRE")

    def _hw_status(self) -> dict[str, Any]:
        """Counters: ``armed``, ``running`` (bool), ``fired``, ``remaining`` (−1 = continuous),
        ``count`` (int), ``rate_hz`` (float)."""
        return tp.status_fields(self._request("STATUS"))

    def _hw_disarm(self) -> None:
        self._request("DISARM")

    def _hw_close(self) -> None:
        """Disarm (best effort, one quick try) and close the port."""
        with self._lock:
            if self._ser is not None:
                try:
                    self._request("DISARM", retries=1)
                except DeviceError as e:
                    log.warning("trigger on %s: could not disarm on close: %s", self.port, e)
                self._close_port()

    def _hw_info(self) -> dict[str, Any]:
        return {"port": self.port, "identity": dict(self.identity), "stats": dict(self.stats)}

    def __repr__(self) -> str:
        state = "open" if self._ser is not None else "closed"
        return f"{type(self).__name__}({self.port!r}, {state})"
