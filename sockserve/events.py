"""Events: what a server tells about its work, one interface for every part that reports.

Servers, server parts, builtin handlers and the event loop call these methods; the run's
monitor (`monitor.RunMonitor`) implements them (counting, forwarding from forked children)
and passes them on, unchanged, to the plain, rich or JSON reporter, which implements them
too. Later capabilities extend the set (a TLS handshake, a fault applied), as `upstream`
did with new methods here, and every implementation with them.

`client` is the peer address as accepted (a tuple, a unix path or b"" for an unnamed unix
peer, None for an error with no connection).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal, Protocol

Direction = Literal["in", "out"]


class Events(Protocol):
    """The events of one run; every method may be called from any thread."""

    #: `data` is wanted: every chunk, both directions (-vv).
    wants_data: bool
    #: `record` is wanted (some report shows byte counts); if False it may be skipped.
    wants_counts: bool

    def connected(self, client: Any) -> None:
        """A stream connection was accepted (before its handler runs)."""

    def record(self, client: Any, received: int, sent: int) -> None:
        """A stream connection ended, or a datagram was answered, with its byte counts.

        A stream connection's `record` follows its `connected`; a datagram has no `connected`.
        """

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """A chunk passed (only while `wants_data`)."""

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """A handler raised while serving `client`.

        `exc` may be a `RemoteError` (raised in a forked child, known by its text), or a
        TimeoutError for an idle connection the server closed.
        """

    def warning(self, message: str) -> None:
        """Something the user should know about went wrong; the server goes on."""

    def info(self, message: str) -> None:
        """A line of status."""

    def upstream(self, client: Any, upstream: str, error: str | None) -> None:
        """-H forward connected `client` to `upstream` (a URL: tcp://HOST:PORT, unix:///PATH),
        or could not (`error`: the reason); a datagram client, when its association opens."""


class NullEvents:
    """Events that go nowhere: for a server run without a monitor (tests, library use)."""

    wants_data = False
    wants_counts = False

    def connected(self, client: Any) -> None:
        """Ignore it."""

    def record(self, client: Any, received: int, sent: int) -> None:
        """Ignore it."""

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """Ignore it."""

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """Ignore it."""

    def warning(self, message: str) -> None:
        """Ignore it."""

    def info(self, message: str) -> None:
        """Ignore it."""

    def upstream(self, client: Any, upstream: str, error: str | None) -> None:
        """Ignore it."""


class RemoteError(Exception):
    """An exception raised in a forked child, known by its text; `tb` is its traceback text.

    Its class is named as the child's exception type was (see `remote_error`), so a report
    reads the same as for an exception raised in this process.
    """

    def __init__(self, message: str, tb: str | None = None) -> None:
        super().__init__(message)
        self.tb = tb


_REMOTE_TYPES: dict[str, type[RemoteError]] = {}


def remote_error(type_name: str, message: str, tb: str | None) -> RemoteError:
    """Make a RemoteError whose class bears `type_name` (when it is an identifier)."""
    cls = _REMOTE_TYPES.get(type_name)
    if cls is None:
        cls = type(type_name, (RemoteError,), {}) if type_name.isidentifier() else RemoteError
        _REMOTE_TYPES[type_name] = cls
    return cls(message, tb)


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
        """Count a stream connection."""
        with self.lock:
            self.connections += 1

    def add_request(self, received: int, sent: int) -> None:
        """Count a finished connection or an answered datagram, with its bytes."""
        with self.lock:
            self.requests += 1
            self.bytes_in += received
            self.bytes_out += sent

    def add_error(self) -> None:
        """Count a handler error."""
        with self.lock:
            self.errors += 1

    def add(self, counts: dict[str, int]) -> None:
        """Add the counters of another process (a --workers worker), as `counts()` gave them."""
        with self.lock:
            self.connections += int(counts["connections"])
            self.requests += int(counts["requests"])
            self.bytes_in += int(counts["bytes_in"])
            self.bytes_out += int(counts["bytes_out"])
            self.errors += int(counts["errors"])

    def counts(self) -> dict[str, int]:
        """The counters as a dict, to send to another process."""
        return {
            "connections": self.connections,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "errors": self.errors,
        }

    @property
    def uptime(self) -> float:
        """Seconds since the run began."""
        return time.monotonic() - self.started
