"""Simulated trigger-box firmware behind a real pseudo-terminal, and the ``trigger.sim`` backend.

:class:`TriggerFirmware` opens a pty pair (:func:`os.openpty`, slave in raw mode) and runs the
box's firmware in a thread on the master side: it parses the line protocol of
:mod:`dmicro_hw.drivers.trigger_protocol`, keeps the counters (armed, running, fired, remaining)
and emits pulses at the armed rate. The host side is the ordinary pyserial driver
(:class:`~dmicro_hw.drivers.serial_trigger.SerialTrigger`) opened on :attr:`TriggerFirmware.port`
(``/dev/pts/N``), so the whole serial path — bytes, termios, timeouts, checksums, retries — is real.

Pulse timing: the firmware thread emits every pulse whose scheduled time ``t0 + k / rate`` has
passed (catching up in batches when the thread was late), so the *counts* are exact at any rate
while individual callbacks may be a few ms late. Subscribe with :meth:`TriggerFirmware.on_pulse`
(e.g. a simulated camera that exposes one frame per pulse).

Faults: ``garble_probability`` corrupts one byte of a reply (the checksum then fails) so the host's
retry path is exercised; :meth:`TriggerFirmware.stop` halts the firmware but keeps the pty open,
so the host sees timeouts (a hung box); :meth:`TriggerFirmware.close` removes the port.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from dmicro_hw.drivers import trigger_protocol as tp
from dmicro_hw.drivers.serial_trigger import SerialTrigger

log = logging.getLogger(__name__)

PulseCallback = Callable[[int, float], None]
FIRMWARE_NAME = "dmicro-trigger-sim"
FIRMWARE_VERSION = "1.0"


class TriggerFirmware:
    """The trigger box's firmware, serving the line protocol on a pseudo-terminal.

    ``garble_probability``: chance that a reply line is corrupted in transit (one byte changed).
    ``max_rate_hz``: highest rate ARM accepts (ERR BADARG above it). ``seed`` makes garbling
    reproducible.
    """

    def __init__(
        self,
        garble_probability: float = 0.0,
        seed: int = 0,
        max_rate_hz: float = 100_000.0,
        name: str = FIRMWARE_NAME,
    ) -> None:
        if not 0.0 <= garble_probability <= 1.0:
            raise ValueError("garble_probability must be in [0, 1]")
        self.garble_probability = float(garble_probability)
        self.max_rate_hz = float(max_rate_hz)
        self.name = name
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._callbacks: list[PulseCallback] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self.port: str = ""
        # firmware state (guarded by _lock)
        self._armed = False
        self._running = False
        self._rate_hz = 0.0
        self._count = 0
        self._fired = 0
        self._t0 = 0.0
        self._last_seq: int | None = None
        self._last_request = ""
        self._last_reply = b""
        self.stats = {"requests": 0, "garbled_in": 0, "garbled_out": 0, "replayed": 0}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> TriggerFirmware:
        """Open the pty (if needed) and start the firmware thread. Returns self."""
        if self._master is None:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # no echo, no line editing: bytes pass through unchanged
            os.set_blocking(self._master, False)
            self.port = os.ttyname(self._slave)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"trigger-fw {self.port}", daemon=True
            )
            self._thread.start()
            log.debug("trigger firmware serving on %s", self.port)
        return self

    def stop(self) -> None:
        """Halt the firmware (a hung box): the pty stays open but nothing answers or pulses."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None

    def close(self) -> None:
        """Stop the firmware and close the pty (the port disappears). Idempotent."""
        self.stop()
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> TriggerFirmware:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- hooks and state
    def on_pulse(self, callback: PulseCallback) -> Callable[[], None]:
        """Call ``callback(pulse_index, t)`` for every pulse (thread-safe); returns an unsubscribe.

        ``pulse_index`` counts from 0 within the current train; ``t`` is the pulse's scheduled
        time on the :func:`time.monotonic` clock. Callbacks run on the firmware thread: keep them
        short. An exception in a callback is logged and does not stop the firmware.
        """
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def state(self) -> dict[str, Any]:
        """Snapshot of the counters: armed, running, fired, remaining, rate_hz, count."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> dict[str, Any]:
        remaining = max(self._count - self._fired, 0) if self._count else 0
        if self._count == 0 and (self._armed or self._running):
            remaining = -1  # continuous train
        return {
            "armed": self._armed,
            "running": self._running,
            "fired": self._fired,
            "remaining": remaining,
            "rate_hz": self._rate_hz,
            "count": self._count,
        }

    # ---------------------------------------------------------------- firmware loop
    def _run(self) -> None:
        rx = bytearray()
        while not self._stop.is_set():
            wait = 0.05
            with self._lock:
                if self._running:
                    nxt = self._t0 + self._fired / self._rate_hz
                    wait = min(wait, max(0.0, nxt - time.monotonic()))
            try:
                readable, _, _ = select.select([self._master], [], [], wait)
            except (OSError, ValueError, TypeError):
                break  # pty closed under us
            if readable:
                try:
                    data = os.read(self._master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError:  # EIO: no process has the slave open; keep waiting
                    data = b""
                    time.sleep(0.01)
                rx += data
                while b"\n" in rx:
                    line, _, rest = rx.partition(b"\n")
                    rx = bytearray(rest)
                    self._handle_line(bytes(line) + b"\n")
                if len(rx) > 4 * tp.MAX_LINE:  # no newline in sight: noise, drop it
                    self._send(tp.Reply(None, False, code="TOOLONG"))
                    rx.clear()
            self._emit_due_pulses()

    def _emit_due_pulses(self) -> None:
        fired: list[tuple[int, float]] = []
        with self._lock:
            if not self._running:
                return
            now = time.monotonic()
            while True:
                t = self._t0 + self._fired / self._rate_hz
                if t > now or (self._count and self._fired >= self._count):
                    break
                fired.append((self._fired, t))
                self._fired += 1
            if self._count and self._fired >= self._count:
                self._running = False
                self._armed = False
            callbacks = list(self._callbacks)
        for index, t in fired:
            for cb in callbacks:
                try:
                    cb(index, t)
                except Exception:  # a subscriber's bug must not kill the firmware
                    log.exception("trigger on_pulse callback failed")

    def _handle_line(self, line: bytes) -> None:
        self.stats["requests"] += 1
        try:
            body = tp.decode(line)
        except tp.ProtocolError as e:
            self.stats["garbled_in"] += 1
            seq = self._readable_seq(line)
            code = "TOOLONG" if "longer" in str(e) else "BADCS"
            self._send(tp.Reply(seq, False, code=code))
            return
        try:
            req = tp.parse_request(body)
        except tp.ProtocolError as e:
            self._send(tp.Reply(self._readable_seq(line), False, code="BADCMD", text=str(e)[:60]))
            return
        if req.seq == self._last_seq and body == self._last_request and self._last_reply:
            self.stats["replayed"] += 1  # retry of a request already executed: do not run twice
            self._write(self._last_reply)
            return
        reply = self._execute(req)
        self._last_seq, self._last_request = req.seq, body
        self._last_reply = tp.encode(reply.body())
        self._write(self._last_reply)

    @staticmethod
    def _readable_seq(line: bytes) -> int | None:
        head = line.split(b" ", 1)[0]
        try:
            return tp.parse_seq(head.decode("ascii"))
        except (UnicodeDecodeError, tp.ProtocolError):
            return None

    def _execute(self, req: tp.Request) -> tp.Reply:
        seq, verb, args = req.seq, req.verb, req.args
        with self._lock:
            if verb == "ID":
                return tp.Reply(
                    seq,
                    True,
                    {"name": self.name, "fw": FIRMWARE_VERSION, "proto": str(tp.PROTOCOL_VERSION)},
                )
            if verb == "ARM":
                if self._running:
                    return tp.Reply(seq, False, code="BUSY", text="train running; DISARM first")
                try:
                    rate, count = float(args[0]), int(args[1])
                    if len(args) != 2 or not 0 < rate <= self.max_rate_hz or count < 0:
                        raise ValueError
                except (ValueError, IndexError):
                    return tp.Reply(
                        seq,
                        False,
                        code="BADARG",
                        text=f"ARM <rate_hz 0..{self.max_rate_hz:g}> <count>=0>",
                    )
                self._armed, self._rate_hz, self._count, self._fired = True, rate, count, 0
                return tp.Reply(seq, True, {"armed": "1", "rate": repr(rate), "count": str(count)})
            if verb == "FIRE":
                if not self._armed:
                    return tp.Reply(seq, False, code="NOTARMED", text="ARM first")
                if self._running:
                    return tp.Reply(seq, False, code="BUSY", text="already running")
                self._running, self._fired, self._t0 = True, 0, time.monotonic()
                return tp.Reply(seq, True, {"running": "1"})
            if verb == "STATUS":
                s = self._state_locked()
                return tp.Reply(
                    seq,
                    True,
                    {
                        "armed": str(int(s["armed"])),
                        "running": str(int(s["running"])),
                        "fired": str(s["fired"]),
                        "remaining": str(s["remaining"]),
                        "rate": repr(s["rate_hz"]),
                        "count": str(s["count"]),
                    },
                )
            if verb == "DISARM":
                self._armed = self._running = False
                return tp.Reply(seq, True, {"armed": "0", "fired": str(self._fired)})
        return tp.Reply(seq, False, code="BADCMD", text=f"unknown verb {verb[:16]}")

    def _send(self, reply: tp.Reply) -> None:
        self._write(tp.encode(reply.body()))

    def _write(self, line: bytes) -> None:
        if self.garble_probability and self._rng.random() < self.garble_probability:
            self.stats["garbled_out"] += 1
            b = bytearray(line)
            i = self._rng.randrange(0, max(1, len(b) - 4))  # a byte of the body, not "*CS\n"
            b[i] = self._rng.choice([c for c in range(33, 127) if c not in (line[i], 42)])
            line = bytes(b)
        try:
            os.write(self._master, line)  # type: ignore[arg-type]
        except (OSError, TypeError):
            log.debug("trigger firmware: reply lost (pty closed)")


class SimSerialTrigger(SerialTrigger):
    """``trigger.backend: sim`` — the real serial driver talking to :class:`TriggerFirmware`.

    The firmware starts on a fresh pty when this object is built; :meth:`close` disarms through
    the serial line (as for real hardware) and then shuts the firmware down.
    """

    def __init__(self, firmware: TriggerFirmware, **kwargs: Any) -> None:
        self.firmware = firmware.start()
        super().__init__(firmware.port, **kwargs)

    @classmethod
    def from_config(cls, section: Any = None, rig: Any = None) -> SimSerialTrigger:
        """Start the firmware on a pty (garbling: ``rig.bench.faults``); return its driver."""
        faults = getattr(getattr(rig, "bench", None), "faults", None)
        firmware = TriggerFirmware(
            garble_probability=getattr(faults, "garble_probability", 0.0),
            seed=getattr(faults, "seed", 0),
        )
        kwargs = SerialTrigger.kwargs_from_section(section)
        kwargs.pop("port", None)
        return cls(firmware, **kwargs)

    def on_pulse(self, callback: PulseCallback) -> Callable[[], None]:
        """Subscribe to the firmware's pulses (see :meth:`TriggerFirmware.on_pulse`)."""
        return self.firmware.on_pulse(callback)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.firmware.close()
