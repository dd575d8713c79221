"""What the user sees on stderr: the banner, events, errors and the summary.

Three reporters implement `events.Events` (what happens while serving) plus the run-level
`listening`, `summary` and `fatal`: `RichReporter` (a terminal: colours through rich),
`PlainReporter` (a pipe or file: the same lines, no escape codes, and rich is never imported),
and `JsonReporter` (`--json`: one JSON object per event). stdout stays free for data. Reporters
are called from several threads; each line is written whole under a lock.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from functools import cache
from typing import IO, TYPE_CHECKING, Any

from .events import Client, Direction, RemoteError, Stats

if TYPE_CHECKING:
    from traceback import TracebackException

__all__ = [
    "JsonReporter",
    "PlainReporter",
    "RichReporter",
    "Stats",
    "format_bytes",
    "format_client",
    "hexdump",
    "format_user_traceback",
    "make_reporter",
    "open_closed_streams",
    "silence",
    "summary_text",
]

PROG = "sockserve"


def format_client(client: Any) -> str:
    """127.0.0.1:5000, [::1]:5000, a unix path, or 'unix client' for an unnamed one.

    A unix `Client` is followed by its connection id (`unix client #3`), which tells apart
    what its address does not; an inet address does by its port.
    """
    if type(client) is Client:
        text = format_client(client.address)
        if client.id is None or isinstance(client.address, tuple):
            return text
        return f"{text} #{client.id}"
    if isinstance(client, tuple) and len(client) >= 2:
        host, port = client[0], client[1]
        if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
            host = host[7:]  # an IPv4 client of a dual-stack server: show it as IPv4
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(client, bytes):
        client = client.decode(errors="replace")
        if client.startswith("\0"):
            return "@" + client[1:]
    if not client:
        return "unix client"
    return str(client)


def format_bytes(n: int) -> str:
    """1 B, 12.3 KiB, 4.0 MiB ..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def hexdump(data: bytes, width: int = 16) -> list[str]:
    """Offset, hex bytes and printable ASCII, `width` bytes a line."""
    lines = []
    for offset in range(0, len(data), width):
        chunk = data[offset : offset + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {offset:08x}  {hexes:<{width * 3 - 1}}  |{text}|")
    return lines


def summary_text(stats: Stats, socktype: str) -> str:
    """The one-line summary printed at the end of a run."""
    unit = "datagram" if socktype == "dgram" else "connection"
    count = stats.requests if socktype == "dgram" else stats.connections
    text = (
        f"stopped after {stats.uptime:.1f}s: {count} {unit}{'s' if count != 1 else ''}, "
        f"{format_bytes(stats.bytes_in)} in, {format_bytes(stats.bytes_out)} out, "
        f"{stats.errors} error{'s' if stats.errors != 1 else ''}"
        + (f", {stats.refused} refused" if stats.refused else "")
    )
    failed = getattr(stats, "tls_failures", 0)
    if failed:
        text += f", {failed} TLS handshake{'s' if failed != 1 else ''} failed"
    return text


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(status: int) -> str:
    """exit 0, exit 3, or killed by SIGKILL: a program's end, from Popen's returncode."""
    return f"exit {status}" if status >= 0 else f"killed by {_signal_name(-status)}"


#: Where sockserve's own code lives: its frames lead into a user's handler.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@cache
def _stdlib_dirs() -> tuple[str, ...]:
    """Where the standard library lives (its site-packages excepted); asked on the first
    traceback a run prints."""
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple({os.path.abspath(paths[key]) + os.sep for key in ("stdlib", "platstdlib")})


def _is_user_frame(filename: str) -> bool:
    """True for a frame of the user's code: neither sockserve's, the stdlib's nor importlib's."""
    if filename.startswith("<frozen importlib"):
        return False
    path = os.path.abspath(filename)
    if path.startswith(_PACKAGE_DIR):
        return False
    in_stdlib = path.startswith(_stdlib_dirs())
    return not in_stdlib or "site-packages" in path or "dist-packages" in path


def _trim(te: TracebackException, keep_all: bool, seen: set[int]) -> None:
    """Drop the frames before the first user frame, and importlib's frames, as Python does."""
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = list(te.stack)
    first = next((i for i, f in enumerate(frames) if _is_user_frame(f.filename)), None)
    if first is not None or not keep_all:
        kept = [] if first is None else frames[first:]
        kept = [f for f in kept if not f.filename.startswith("<frozen importlib")]
        from traceback import StackSummary

        te.stack = StackSummary.from_list(kept)
    for chained in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if chained is not None:
            _trim(chained, keep_all, seen)


def format_user_traceback(exc: BaseException, keep_all: bool = True) -> str:
    """The traceback of `exc` from the user's first frame on.

    The frames of sockserve, the stdlib and importlib that lead into a user's handler (or
    into the import of the user's module) tell the user nothing: they go. A traceback with no
    user frame (an error in a builtin) stays whole, or, with `keep_all` False, is left out
    (a syntax error in the handler's file: the error itself shows where).
    """
    from traceback import TracebackException  # loaded by the first traceback a run prints

    te = TracebackException.from_exception(exc)
    _trim(te, keep_all, set())
    return "".join(te.format())


def _traceback_text(exc: BaseException) -> str | None:
    """The traceback of `exc` as text: formatted here, or as a forked child sent it."""
    if exc.__traceback__ is not None:
        return format_user_traceback(exc)
    if isinstance(exc, RemoteError):
        return exc.tb
    return None


class PlainReporter:
    """Events as plain lines on a text stream (stderr by default).

    Implements `events.Events`. `socktype` ("stream" or "dgram") tells how `record` reads;
    the run's monitor sets it before the first event.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        verbosity: int = 0,
        quiet: bool = False,
        socktype: str = "stream",
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.verbosity = verbosity
        self.quiet = quiet
        self.socktype = socktype
        self.lock = threading.RLock()
        #: `data` prints something (-vv, not --quiet).
        self.wants_data = not quiet and verbosity >= 2
        #: `record` prints something (--quiet shows neither records nor the summary).
        self.wants_counts = not quiet

    # Formatting hooks; RichReporter overrides `_emit` to add style.
    def _emit(self, text: str, style: str = "") -> None:
        with self.lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone: nothing left to tell

    # -- the run ---------------------------------------------------------------------------------
    def listening(self, url: str, details: Mapping[str, Any]) -> None:
        """The server listens at `url`; `details` name the mode, the handler and the rest."""
        if self.quiet:
            return
        extra = ", ".join(f"{k}={v}" for k, v in details.items() if k != "concurrency")
        self._emit(f"listening on {url} ({details.get('concurrency')}, {extra})", "listening")

    def summary(self, stats: Stats, socktype: str, reason: str | None) -> None:
        """The run is over: its counters, and why it stopped."""
        if self.quiet:
            return
        why = f" ({reason})" if reason else ""
        self._emit(summary_text(stats, socktype) + why, "summary")

    def fatal(self, message: str, hint: str | None) -> None:
        """The run could not start (or go on): the error and how to fix it."""
        self._emit(f"{PROG}: error: {message}", "error")
        if hint:
            self._emit(f"hint: {hint}", "hint")

    # -- events ------------------------------------------------------------------------------------
    def shows_datagram_records(self) -> bool:
        """True if `record` prints anything for a datagram."""
        return not self.quiet and self.verbosity >= 1

    def shows_connections(self) -> bool:
        """True if `connected` prints anything."""
        return not self.quiet

    def connected(self, client: Any) -> None:
        """Print `connect CLIENT`."""
        if not self.quiet:
            self._emit(f"connect {format_client(client)}", "event")

    def record(self, client: Any, received: int, sent: int) -> None:
        """Print `close CLIENT` (counts at -v), or a datagram's line at -v."""
        if self.quiet:
            return
        if self.socktype == "dgram":
            if self.verbosity >= 1:
                self._emit(
                    f"datagram {format_client(client)}: {received} B in, {sent} B out", "event"
                )
            return
        counts = f" ({received} B in, {sent} B out)" if self.verbosity >= 1 else ""
        self._emit(f"close {format_client(client)}{counts}", "event")

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """Print the chunk as a hex dump under an arrow (< in, > out)."""
        if self.quiet:
            return
        arrow = "<" if direction == "in" else ">"
        lines = [f"{arrow} {format_client(client)} {len(data)} B", *hexdump(data)]
        self._emit("\n".join(lines), "data")

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """Print `error handling CLIENT: Type: message` and the traceback (even with -q)."""
        head = f"error handling {format_client(client)}: {type(exc).__name__}: {exc}"
        tb = _traceback_text(exc)
        self._emit(f"{head}\n{tb.rstrip()}" if tb else head, "error")

    def warning(self, message: str) -> None:
        """Print `warning: MESSAGE` (even with -q)."""
        self._emit(f"warning: {message}", "warning")

    def info(self, message: str) -> None:
        """Print the line."""
        if not self.quiet:
            self._emit(message, "event")

    def refused(self, client: Any, reason: str) -> None:
        """Print `refused CLIENT: REASON`."""
        if not self.quiet:
            self._emit(f"refused {format_client(client)}: {reason}", "warning")

    def tls(self, client: Any, info: Mapping[str, Any]) -> None:
        """Print a failed handshake's reason; a completed one's details at -v."""
        if self.quiet:
            return
        if "error" in info:
            self._emit(
                f"tls handshake failed with {format_client(client)}: {info['error']}", "event"
            )
            return
        if self.verbosity >= 1:
            shown = [str(info.get("version")), str(info.get("cipher"))]
            for key in ("alpn", "sni", "client_subject"):
                if info.get(key):
                    shown.append(f"{key.replace('_', ' ')} {info[key]}")
            self._emit(f"tls {format_client(client)}: {', '.join(shown)}", "event")

    def fault(self, client: Any, kind: str, detail: str, side: str | None = None) -> None:
        """Print `fault CLIENT: KIND DETAIL`, and `(to SIDE)` on a relay."""
        if not self.quiet:
            text = f"fault {format_client(client)}: {kind} {detail}".rstrip()
            if side is not None:
                text += f" (to {side})"
            self._emit(text, "event")

    def sent(self, client: Any, size: int) -> None:
        """Print `stdin to CLIENT: N B out` at -v, as a datagram's line."""
        if not self.quiet and self.verbosity >= 1:
            self._emit(f"stdin to {format_client(client)}: {size} B out", "event")

    def exec_exit(self, client: Any, status: int, seconds: float) -> None:
        """Print `exec CLIENT: exit STATUS after SECONDS` (or the signal that killed it) at -v."""
        if self.quiet or self.verbosity < 1:
            return
        self._emit(
            f"exec {format_client(client)}: {exit_text(status)} after {seconds:.3f}s", "event"
        )

    def exec_stderr(self, client: Any, line: bytes) -> None:
        """Print `stderr CLIENT: LINE` (even with -q: it is the program's own error output)."""
        text = line.decode(errors="replace")
        self._emit(f"stderr {format_client(client)}: {text}", "")

    def upstream(
        self, client: Any, upstream: str, error: str | None, tls: Mapping[str, Any] | None = None
    ) -> None:
        """Print `upstream CLIENT -> URL` at -v (over TLS: `, TLSv1.3 CIPHER`); a failure is
        the warning's line, not this."""
        if error is None and not self.quiet and self.verbosity >= 1:
            shown = ""
            if tls is not None:
                shown = ", " + ", ".join(str(tls.get(key)) for key in ("version", "cipher"))
                if tls.get("alpn"):
                    shown += f", alpn {tls['alpn']}"
            self._emit(f"upstream {format_client(client)} -> {upstream}{shown}", "event")


class RichReporter(PlainReporter):
    """The same lines, coloured by rich on a terminal (rich is imported only here)."""

    STYLES = {
        "listening": "bold green",
        "event": "dim",
        "data": "cyan",
        "error": "bold red",
        "warning": "yellow",
        "summary": "bold",
        "hint": "yellow",
    }

    def __init__(self, verbosity: int = 0, quiet: bool = False, force_color: bool | None = None):
        super().__init__(sys.stderr, verbosity, quiet)
        self.force_color = force_color
        self._console: Any = None

    @property
    def console(self) -> Any:
        """The rich Console, made at the first line printed.

        rich is then imported only once the server listens, and with --quiet usually never.
        """
        with self.lock:
            if self._console is None:
                from rich.console import Console

                self._console = Console(
                    stderr=True,
                    highlight=False,
                    markup=False,
                    emoji=False,
                    force_terminal=self.force_color,
                    no_color=True if self.force_color is False else None,  # None: NO_COLOR
                    soft_wrap=True,
                )
            return self._console

    def _emit(self, text: str, style: str = "") -> None:
        with self.lock:
            try:
                self.console.print(text, style=self.STYLES.get(style, ""))
            except (OSError, ValueError):
                pass


class JsonReporter(PlainReporter):
    """One JSON object per event and line (`--json`), for scripts (json is imported only here).

    Every object carries `event` and `time`; what is about one connection (or datagram
    request), its `client` and `conn`, the connection's id (the same from `connect` to
    `close`).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        verbosity: int = 0,
        quiet: bool = False,
        socktype: str = "stream",
    ) -> None:
        import json  # only --json writes JSON: the other reporters never load it

        super().__init__(stream, verbosity, quiet, socktype)
        self._encode = json.JSONEncoder(default=str).encode
        self.wants_data = verbosity >= 2  # `data` events at -vv
        self.wants_counts = True  # `close` and `request` events carry the counts

    def _event(self, event: str, **fields: Any) -> None:
        """Write one event; a `client` field (as `_client` gives it) is written as the
        client's text and, for a `Client` with an id, `conn` right after it."""
        record = {"event": event, "time": round(time.time(), 6)}
        if "client" in fields:
            client = fields.pop("client")
            if type(client) is Client:
                record["client"] = format_client(client.address)
                if client.id is not None:
                    record["conn"] = client.id
            else:
                record["client"] = format_client(client) if client is not None else None
        record.update(fields)
        self._emit(self._encode(record))

    @staticmethod
    def _client(client: Any) -> Any:
        """The `client` field of an event about one connection: `_event` writes its text
        and its `conn` (pass every Events method's `client` through here)."""
        return client

    def listening(self, url: str, details: Mapping[str, Any]) -> None:
        """Write a `listening` event with the url and the details."""
        self._event("listening", url=url, **details)

    def summary(self, stats: Stats, socktype: str, reason: str | None) -> None:
        """Write the `shutdown` event with the counters."""
        self._event(
            "shutdown",
            reason=reason,
            uptime=round(stats.uptime, 3),
            connections=stats.connections,
            requests=stats.requests,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            errors=stats.errors,
            refused=stats.refused,
            **({"tls_failures": stats.tls_failures} if stats.tls_failures else {}),
        )

    def fatal(self, message: str, hint: str | None) -> None:
        """Write a `fatal` event."""
        self._event("fatal", message=message, hint=hint)

    def shows_datagram_records(self) -> bool:
        """Every datagram is a `request` event."""
        return True

    def shows_connections(self) -> bool:
        """Every connection is a `connect` event."""
        return True

    def connected(self, client: Any) -> None:
        """Write a `connect` event."""
        self._event("connect", client=self._client(client))

    def record(self, client: Any, received: int, sent: int) -> None:
        """Write a `close` event (a `request` event for a datagram) with the counts."""
        name = "request" if self.socktype == "dgram" else "close"
        self._event(name, client=self._client(client), bytes_in=received, bytes_out=sent)

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """Write a `data` event with the chunk's size and the chunk in hex."""
        self._event(
            "data",
            client=self._client(client),
            direction=direction,
            bytes=len(data),
            hex=data.hex(),
        )

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """Write an `error` event with the exception's type, message and traceback."""
        self._event(
            "error",
            client=self._client(client),
            error=type(exc).__name__,
            message=str(exc),
            traceback=_traceback_text(exc),
        )

    def warning(self, message: str) -> None:
        """Write a `warning` event."""
        self._event("warning", message=message)

    def info(self, message: str) -> None:
        """Write an `info` event."""
        self._event("info", message=message)

    def refused(self, client: Any, reason: str) -> None:
        """Write a `refused` event."""
        self._event("refused", client=self._client(client), reason=reason)

    def tls(self, client: Any, info: Mapping[str, Any]) -> None:
        """Write a `tls` event: the handshake's details, or its `error`."""
        self._event("tls", client=self._client(client), **info)

    def fault(self, client: Any, kind: str, detail: str, side: str | None = None) -> None:
        """Write a `fault` event: its kind and detail (and `side`, on a relay)."""
        fields: dict[str, Any] = {"kind": kind, "detail": detail}
        if side is not None:
            fields["side"] = side
        self._event("fault", client=self._client(client), **fields)

    def sent(self, client: Any, size: int) -> None:
        """Write a `sent` event with the count."""
        self._event("sent", client=self._client(client), bytes_out=size)

    def exec_exit(self, client: Any, status: int, seconds: float) -> None:
        """Write an `exec` event: the program's exit status (or signal) and run time."""
        signal_name = _signal_name(-status) if status < 0 else None
        self._event(
            "exec",
            client=self._client(client),
            status=status,
            signal=signal_name,
            seconds=round(seconds, 6),
        )

    def exec_stderr(self, client: Any, line: bytes) -> None:
        """Write an `exec-stderr` event with the line (as text; bytes that are not UTF-8
        replaced)."""
        self._event("exec-stderr", client=self._client(client), line=line.decode(errors="replace"))

    def upstream(
        self, client: Any, upstream: str, error: str | None, tls: Mapping[str, Any] | None = None
    ) -> None:
        """Write an `upstream` event: the upstream's URL, and the error (null: connected);
        over --forward-tls, `tls`: its version and cipher."""
        extra = {} if tls is None else {"tls": dict(tls)}
        self._event(
            "upstream", client=self._client(client), upstream=upstream, error=error, **extra
        )


def make_reporter(
    output: str = "rich", verbosity: int = 0, quiet: bool = False, color: bool | None = None
) -> PlainReporter:
    """Pick the reporter: JSON when asked, rich on a terminal (or forced colour), else plain."""
    if output == "json":
        return JsonReporter(sys.stderr, verbosity, quiet=False)
    if color or (color is None and _isatty(sys.stderr)):
        return RichReporter(verbosity, quiet, force_color=color)
    return PlainReporter(sys.stderr, verbosity, quiet)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: The standard streams by descriptor.
STD_STREAMS = ((0, "stdin"), (1, "stdout"), (2, "stderr"))


def open_closed_streams() -> frozenset[str]:
    """Open /dev/null on each standard descriptor the shell left closed (`>&-`, `2>&-`).

    Else the first socket or file the run opens takes that number, and what is written to
    stdout or stderr goes into it. The stream (`sys.stdout`...) is made again on it. Return the
    names of the streams that were closed.
    """
    closed = set()
    for fd, name in STD_STREAMS:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        devnull = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
        closed.add(name)
    return frozenset(closed)


def silence(*streams: IO[str]) -> None:
    """Point the streams' descriptors at /dev/null, so that a reader gone away cannot fail
    Python's flush at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in streams:
            os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
