"""What each builtin does, without sockets: bytes in, bytes (or None: nothing) out.

The adapters (`stream`, `datagram`, `protocols`) call these and only move the bytes. echo and
upper answer chunk by chunk (`transform_chunk`); discard, stdout and stdio answer nothing;
chargen sends its pattern (`chargen_block`, `chargen_datagram`); daytime and time greet
(`greeting`); a datagram gets `respond_datagram`, or the same function chosen once per class
(`datagram_answer`). The one-answer streams (reply, daytime, time) follow `OneAnswer`.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from typing import Any

#: Builtin name -> one-line description (for --help, completions and the man page).
BUILTINS: dict[str, str] = {
    "echo": "send back every byte received",
    "upper": "send back what is received with ASCII letters upper-cased",
    "discard": "read and drop everything, answer nothing (RFC 863)",
    "stdout": "write what is received to stdout, answer nothing",
    "stdio": "like nc -l: received bytes to stdout, stdin to the client",
    "chargen": "send the rotating character pattern of RFC 864",
    "daytime": "send the date and time as one text line (RFC 867)",
    "time": "send seconds since 1900 as 32 bits, big-endian (RFC 868)",
    "reply": "answer each request with --reply TEXT or --reply-file PATH",
    "broadcast": "relay what each client sends to all the others (streams, one process)",
    "chat": "relay each client's lines, prefixed with its name; announce joins and leaves",
    "exec": "run --exec PROG or --sh-exec LINE per connection (or datagram), on its stdin/stdout",
    "script": "hold the conversation of --script FILE: a banner, expect/send steps, rules",
    "forward": "relay each connection (or client's datagrams) to --forward UPSTREAM and back",
}

#: How long a closing stream connection keeps reading what the client still sends.
LINGER_SECONDS = 2.0

CHARGEN_MAX_DATAGRAM = 512
RFC868_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def check_name(name: str) -> None:
    """Raise ValueError unless `name` is a builtin."""
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin handler {name!r}; choose one of: {', '.join(BUILTINS)}")


# -- chargen (RFC 864) ---------------------------------------------------------------------------

_CHARGEN_CHARS = bytes(range(32, 127))  # the 95 printable ASCII characters
_CHARGEN_LINE = 72


def _chargen_period() -> bytes:
    ring = _CHARGEN_CHARS * 2
    lines = []
    for i in range(len(_CHARGEN_CHARS)):
        start = (i + 1) % len(_CHARGEN_CHARS)  # line 0 starts with "!", as in RFC 864
        lines.append(ring[start : start + _CHARGEN_LINE] + b"\r\n")
    return b"".join(lines)


#: One full cycle of the chargen pattern: 95 lines of 72 characters and CRLF (7030 bytes).
CHARGEN_PERIOD = _chargen_period()


def chargen_pattern(start: int, size: int) -> bytes:
    """Return `size` bytes of the endless chargen stream, from byte offset `start`."""
    period = len(CHARGEN_PERIOD)
    start %= period
    reps = (start + size) // period + 1
    return (CHARGEN_PERIOD * reps)[start : start + size]


def chargen_block(size: int) -> bytes:
    """A block of the stream pattern of about `size` bytes: whole periods, at least one.

    A block ends where the pattern starts again, so a stream is the same block sent again
    and again: `chargen_pattern(0, n * len(block))`.
    """
    return CHARGEN_PERIOD * max(1, size // len(CHARGEN_PERIOD))


def chargen_datagram(request: bytes) -> bytes:
    """The reply to a chargen datagram: `min(len(request), 512)` bytes of the pattern."""
    return CHARGEN_PERIOD[: min(len(request), CHARGEN_MAX_DATAGRAM)]


# -- daytime (RFC 867) and time (RFC 868) ------------------------------------------------------

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def daytime_line(now: float | None = None) -> bytes:
    """The RFC 867 answer for `now` (default: the current time), in UTC, ending in CRLF.

    It reads like ``Monday, February 22, 1982 17:37:43-UTC``.
    """
    t = time.gmtime(time.time() if now is None else now)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d}, {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}-UTC\r\n"
    ).encode("ascii")


def time_bytes(now: float | None = None) -> bytes:
    """The RFC 868 answer: seconds since 1900-01-01 00:00 UTC, 32-bit big-endian (wraps)."""
    seconds = int(time.time() if now is None else now) + RFC868_EPOCH_OFFSET
    return (seconds & 0xFFFFFFFF).to_bytes(4, "big")


def greeting(name: str, now: float | None = None) -> bytes:
    """What daytime or time send when a stream client connects."""
    if name == "daytime":
        return daytime_line(now)
    if name == "time":
        return time_bytes(now)
    raise ValueError(f"{name!r} sends no greeting")


# -- echo, upper, discard, stdout, stdio -------------------------------------------------------


def upper(data: Any) -> bytes:
    """`data` with ASCII letters upper-cased; other bytes, valid UTF-8 or not, pass unchanged."""
    return bytes(data).upper()


def transform_chunk(name: str, data: bytes) -> bytes | None:
    """What a chunk-by-chunk stream builtin sends back for `data`; None means nothing."""
    if name == "echo":
        return bytes(data)
    if name == "upper":
        return upper(data)
    if name in ("discard", "stdout", "stdio"):
        return None
    raise ValueError(f"{name!r} does not answer chunk by chunk")


def chunk_transform(name: str) -> Callable[[Any], bytes] | None:
    """`transform_chunk(name, chunk)` for echo and upper as a function, chosen once.

    None means the chunk goes back as it came (echo). Raises ValueError for other names.
    """
    if name == "echo":
        return None
    if name == "upper":
        return upper
    raise ValueError(f"{name!r} does not send chunks back")


# -- datagrams -----------------------------------------------------------------------------------


def respond_datagram(
    name: str, data: bytes, *, reply: bytes = b"", now: float | None = None
) -> bytes | None:
    """The datagram a builtin sends back for the datagram `data`; None means no reply."""
    check_name(name)
    if name == "chargen":
        return chargen_datagram(data)
    if name in ("daytime", "time"):
        return greeting(name, now)
    if name == "reply":
        return reply
    return transform_chunk(name, data)


def _echo_datagram(data: Any) -> bytes:
    return data if type(data) is bytes else bytes(data)


def datagram_answer(name: str, reply: bytes = b"") -> Callable[[Any], bytes | None]:
    """`respond_datagram(name, data, reply=reply)` as a function of `data`, chosen once.

    The adapters call it for every datagram: the usual builtins get a function without the
    name tests. It accepts any bytes-like `data`.
    """
    check_name(name)
    if name == "echo":
        return _echo_datagram
    if name == "upper":
        return upper
    if name == "chargen":
        return chargen_datagram
    if name == "reply":
        return lambda data: reply
    return functools.partial(respond_datagram, name, reply=reply)  # the clock, or no answer


# -- the one-answer streams: reply, daytime, time ----------------------------------------------


class Phase(enum.Enum):
    """Where a one-answer stream connection is (see `OneAnswer`)."""

    WAITING = "waiting"
    SENDING = "sending"
    LINGERING = "lingering"
    CLOSED = "closed"


class OneAnswer:
    """A stream connection that gets one answer, then closes: reply, daytime, time.

    WAITING (reply only: until the client's first bytes or its EOF) -> SENDING (the adapter
    sends the answer) -> LINGERING (our write side is shut; what the client still sends is
    dropped until its EOF or LINGER_SECONDS pass, so an HTTP client is not cut off by a
    reset) -> CLOSED. A client that sent its EOF before the answer was out skips LINGERING.
    """

    def __init__(self, waits_for_request: bool) -> None:
        self.phase = Phase.WAITING if waits_for_request else Phase.SENDING
        self.client_eof = False

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """The client sent `data`; empty bytes is its EOF."""
        if not data:
            self.client_eof = True
        if self.phase is Phase.WAITING:
            self.phase = Phase.SENDING
        elif self.phase is Phase.LINGERING and self.client_eof:
            self.phase = Phase.CLOSED

    def answer_sent(self) -> None:
        """The whole answer is out: linger, or close when the client has sent its EOF."""
        self.phase = Phase.CLOSED if self.client_eof else Phase.LINGERING

    def linger_over(self) -> None:
        """LINGER_SECONDS passed (or the connection failed): close."""
        self.phase = Phase.CLOSED
