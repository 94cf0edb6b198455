"""Line protocol of the dmicro trigger/sync box (shared by the driver and the simulated firmware).

Every message is one ASCII line, NMEA-style: ``<body>*<CS>\\n`` where ``CS`` is the XOR of all bytes
of ``body`` as two upper-case hex digits. A line whose checksum does not match is *garbled* and is
never acted upon.

Requests (host → box); ``seq`` is a decimal sequence number 0–65535 chosen by the host::

    <seq> ID                    identify: OK name=... fw=... proto=1
    <seq> ARM <rate_hz> <count> arm a pulse train (count 0 = until DISARM); not yet pulsing
    <seq> FIRE                  start the armed train (ERR NOTARMED if not armed)
    <seq> STATUS                OK armed=0|1 running=0|1 fired=N remaining=N rate=R count=C
    <seq> DISARM                stop pulsing, disarm (always OK; safe state)

Replies (box → host) echo the request's ``seq``::

    <seq> OK [key=value ...]
    <seq> ERR <CODE> [free text]     CODE: BADCS BADCMD BADARG NOTARMED BUSY TOOLONG

Retries are idempotent: a request repeated with the *same* ``seq`` (because its reply was lost or
garbled) is answered from the box's reply cache and not executed twice, so a retried ``FIRE`` never
fires a second train. A request the box received garbled is answered ``<seq> ERR BADCS`` when its
``seq`` is readable, else ``? ERR BADCS``; the host then sends it again.

Example (checksums are real)::

    >>> encode("7 ARM 100 50")
    b'7 ARM 100 50*7D\\n'
    >>> decode(b'7 OK armed=1*40\\n')
    '7 OK armed=1'
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_VERSION = 1
MAX_LINE = 128  # bytes, including "*CS\n"
SEQ_MOD = 65536
ERROR_CODES = ("BADCS", "BADCMD", "BADARG", "NOTARMED", "BUSY", "TOOLONG")
VERBS = ("ID", "ARM", "FIRE", "STATUS", "DISARM")


class ProtocolError(ValueError):
    """A line that does not follow the protocol (no ``*CS``, not ASCII, too long, bad fields)."""


class ChecksumError(ProtocolError):
    """The line's checksum does not match its body (the line was garbled in transit)."""


def checksum(body: str | bytes) -> str:
    """XOR of all bytes of ``body``, as two upper-case hex digits (NMEA style)."""
    data = body.encode("ascii") if isinstance(body, str) else body
    cs = 0
    for b in data:
        cs ^= b
    return f"{cs:02X}"


def encode(body: str) -> bytes:
    """``body`` → ``b"<body>*<CS>\\n"``. ``body`` must be printable ASCII without ``*``."""
    if "*" in body or "\n" in body or "\r" in body:
        raise ProtocolError(f"message body may not contain '*' or line breaks: {body!r}")
    if not body.isascii() or not body.isprintable():
        raise ProtocolError(f"message body must be printable ASCII: {body!r}")
    line = f"{body}*{checksum(body)}\n".encode("ascii")
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message longer than {MAX_LINE} bytes: {body[:40]!r}…")
    return line


def decode(line: bytes) -> str:
    """Check and strip one received line; returns its body.

    Raises :class:`ChecksumError` when the checksum does not match and :class:`ProtocolError` when
    the line is not of the form ``<body>*<CS>``.
    """
    raw = line.rstrip(b"\r\n")
    if len(raw) + 1 > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    body, star, cs = raw.rpartition(b"*")
    if not star:
        raise ProtocolError(f"no '*<checksum>' in line {raw[:40]!r}")
    try:
        text = body.decode("ascii")
        cs_text = cs.decode("ascii")
    except UnicodeDecodeError:
        raise ChecksumError(f"non-ASCII bytes in line {raw[:40]!r}") from None
    if len(cs_text) != 2 or cs_text.upper() != checksum(body):
        raise ChecksumError(f"checksum mismatch in line {raw[:40]!r} (expected {checksum(body)})")
    return text


@dataclass
class Request:
    """A parsed request: sequence number, verb and arguments."""

    seq: int
    verb: str
    args: list[str] = field(default_factory=list)

    def body(self) -> str:
        return " ".join([str(self.seq), self.verb, *self.args])


@dataclass
class Reply:
    """A parsed reply: ``ok`` with ``fields`` (key=value pairs) or an error ``code`` + ``text``."""

    seq: int | None
    ok: bool
    fields: dict[str, str] = field(default_factory=dict)
    code: str = ""
    text: str = ""

    def body(self) -> str:
        seq = "?" if self.seq is None else str(self.seq)
        if self.ok:
            return " ".join([seq, "OK", *(f"{k}={v}" for k, v in self.fields.items())])
        return " ".join(p for p in (seq, "ERR", self.code, self.text) if p)


def parse_seq(token: str) -> int | None:
    """``"17"`` → 17; ``"?"`` → None; anything else → ProtocolError."""
    if token == "?":
        return None
    if not token.isdigit() or int(token) >= SEQ_MOD:
        raise ProtocolError(f"bad sequence number {token!r}")
    return int(token)


def parse_request(body: str) -> Request:
    """``"7 ARM 100 50"`` → Request(7, "ARM", ["100", "50"]); ProtocolError if malformed."""
    parts = body.split()
    if len(parts) < 2:
        raise ProtocolError(f"request needs '<seq> <VERB>': {body!r}")
    seq = parse_seq(parts[0])
    if seq is None:
        raise ProtocolError("a request must carry a numeric sequence number")
    return Request(seq, parts[1].upper(), parts[2:])


def parse_reply(body: str) -> Reply:
    """``"7 OK armed=1"`` → Reply(7, ok=True, fields={"armed": "1"}); ProtocolError if malformed."""
    parts = body.split(" ")
    if len(parts) < 2 or parts[1] not in ("OK", "ERR"):
        raise ProtocolError(f"reply must be '<seq> OK|ERR ...': {body!r}")
    seq = parse_seq(parts[0])
    if parts[1] == "OK":
        fields: dict[str, str] = {}
        for kv in parts[2:]:
            k, eq, v = kv.partition("=")
            if not eq or not k:
                raise ProtocolError(f"bad key=value field {kv!r} in reply")
            fields[k] = v
        return Reply(seq, True, fields)
    code = parts[2] if len(parts) > 2 else ""
    return Reply(seq, False, code=code, text=" ".join(parts[3:]))


def status_fields(fields: dict[str, str]) -> dict[str, object]:
    """Typed STATUS fields: armed/running → bool, fired/remaining/count → int, rate → float."""
    out: dict[str, object] = {}
    for k, v in fields.items():
        if k in ("armed", "running"):
            out[k] = v == "1"
        elif k in ("fired", "remaining", "count"):
            out[k] = int(v)
        elif k == "rate":
            out["rate_hz"] = float(v)
        else:
            out[k] = v
    return out
