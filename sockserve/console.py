"""What the user sees on stderr: the banner, events, errors and the summary.

Three reporters share one interface: `RichReporter` (a terminal: colours through rich),
`PlainReporter` (a pipe or file: the same lines, no escape codes, and rich is never imported),
and `JsonReporter` (`--json`: one JSON object per event). stdout stays free for data. Reporters
are called from several threads; each line is written whole under a lock.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

PROG = "sockserve"


class Stats:
    """Counters of one run; `add_*` methods are thread-safe."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.connections = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors = 0
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Stats(started={self.started!r}, connections={self.connections!r}, "
            f"requests={self.requests!r}, bytes_in={self.bytes_in!r}, "
            f"bytes_out={self.bytes_out!r}, errors={self.errors!r})"
        )

    def add_connection(self) -> None:
        with self.lock:
            self.connections += 1

    def add_request(self, received: int, sent: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes_in += received
            self.bytes_out += sent

    def add_error(self) -> None:
        with self.lock:
            self.errors += 1

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started


def format_client(client: Any) -> str:
    """127.0.0.1:5000, [::1]:5000, a unix path, or 'unix client' for an unnamed one."""
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
    return (
        f"stopped after {stats.uptime:.1f}s: {count} {unit}{'s' if count != 1 else ''}, "
        f"{format_bytes(stats.bytes_in)} in, {format_bytes(stats.bytes_out)} out, "
        f"{stats.errors} error{'s' if stats.errors != 1 else ''}"
    )


class PlainReporter:
    """Events as plain lines on a text stream (stderr by default)."""

    def __init__(self, stream: IO[str] | None = None, verbosity: int = 0, quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.verbosity = verbosity
        self.quiet = quiet
        self.lock = threading.RLock()

    # Formatting hooks; RichReporter overrides `_emit` to add style.
    def _emit(self, text: str, style: str = "") -> None:
        with self.lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone: nothing left to tell

    def listening(self, url: str, details: Mapping[str, Any]) -> None:
        if self.quiet:
            return
        extra = ", ".join(f"{k}={v}" for k, v in details.items() if k != "concurrency")
        self._emit(f"listening on {url} ({details.get('concurrency')}, {extra})", "listening")

    def connected(self, client: Any) -> None:
        if not self.quiet:
            self._emit(f"connect {format_client(client)}", "event")

    def shows_datagram_records(self) -> bool:
        """True if `record` prints anything for a datagram."""
        return not self.quiet and self.verbosity >= 1

    def record(self, client: Any, received: int, sent: int, socktype: str) -> None:
        if self.quiet:
            return
        if socktype == "dgram":
            if self.verbosity >= 1:
                self._emit(
                    f"datagram {format_client(client)}: {received} B in, {sent} B out", "event"
                )
            return
        counts = f" ({received} B in, {sent} B out)" if self.verbosity >= 1 else ""
        self._emit(f"close {format_client(client)}{counts}", "event")

    def data(self, client: Any, direction: str, data: bytes) -> None:
        if self.quiet:
            return
        arrow = "<" if direction == "in" else ">"
        lines = [f"{arrow} {format_client(client)} {len(data)} B", *hexdump(data)]
        self._emit("\n".join(lines), "data")

    def error(self, client: Any, exc: BaseException, *, with_traceback: bool = True) -> None:
        head = f"error handling {format_client(client)}: {type(exc).__name__}: {exc}"
        if with_traceback and exc.__traceback__ is not None:
            import traceback

            tb = "".join(traceback.format_exception(exc)).rstrip()
            self._emit(f"{head}\n{tb}", "error")
        else:
            self._emit(head, "error")

    def warning(self, message: str) -> None:
        self._emit(f"warning: {message}", "warning")

    def info(self, message: str) -> None:
        if not self.quiet:
            self._emit(message, "event")

    def summary(self, stats: Stats, socktype: str, reason: str | None) -> None:
        if self.quiet:
            return
        why = f" ({reason})" if reason else ""
        self._emit(summary_text(stats, socktype) + why, "summary")

    def fatal(self, message: str, hint: str | None) -> None:
        self._emit(f"{PROG}: error: {message}", "error")
        if hint:
            self._emit(f"hint: {hint}", "hint")


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
        """The rich Console, made at the first line printed: rich (tens of ms to import) is
        then loaded only once the server listens, and with --quiet usually never."""
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
    """One JSON object per event and line (`--json`), for scripts."""

    def _event(self, event: str, **fields: Any) -> None:
        import json  # only --json needs it: not imported on the way to listening

        record = {"event": event, "time": round(time.time(), 6), **fields}
        self._emit(json.dumps(record, default=str))

    @staticmethod
    def _client(client: Any) -> Any:
        return format_client(client) if client is not None else None

    def listening(self, url: str, details: Mapping[str, Any]) -> None:
        self._event("listening", url=url, **details)

    def connected(self, client: Any) -> None:
        self._event("connect", client=self._client(client))

    def shows_datagram_records(self) -> bool:
        return True

    def record(self, client: Any, received: int, sent: int, socktype: str) -> None:
        name = "request" if socktype == "dgram" else "close"
        self._event(name, client=self._client(client), bytes_in=received, bytes_out=sent)

    def data(self, client: Any, direction: str, data: bytes) -> None:
        self._event("data", client=self._client(client), direction=direction, hex=data.hex())

    def error(self, client: Any, exc: BaseException, *, with_traceback: bool = True) -> None:
        import traceback

        tb = "".join(traceback.format_exception(exc)) if with_traceback else None
        self._event(
            "error",
            client=self._client(client),
            error=type(exc).__name__,
            message=str(exc),
            traceback=tb,
        )

    def warning(self, message: str) -> None:
        self._event("warning", message=message)

    def info(self, message: str) -> None:
        self._event("info", message=message)

    def summary(self, stats: Stats, socktype: str, reason: str | None) -> None:
        self._event(
            "shutdown",
            reason=reason,
            uptime=round(stats.uptime, 3),
            connections=stats.connections,
            requests=stats.requests,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            errors=stats.errors,
        )

    def fatal(self, message: str, hint: str | None) -> None:
        self._event("fatal", message=message, hint=hint)


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


class ReporterLogHandler(logging.Handler):
    """Route log records (framework, event loop) to the reporter as warnings/info lines."""

    def __init__(self, reporter: PlainReporter) -> None:
        super().__init__()
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                self.reporter.error(None, record.exc_info[1])
            elif record.levelno >= logging.WARNING:
                self.reporter.warning(message)
            else:
                self.reporter.info(message)
        except Exception:  # pragma: no cover - never let logging break serving
            self.handleError(record)


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


def setup_logging(reporter: PlainReporter, verbosity: int) -> None:
    """Send the `sockserve` loggers to the reporter; -vv shows debug records."""
    root = logging.getLogger("sockserve")
    for handler in list(root.handlers):
        if isinstance(handler, ReporterLogHandler):
            root.removeHandler(handler)
    root.addHandler(ReporterLogHandler(reporter))
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    root.propagate = False
