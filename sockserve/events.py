"""Events: what a server tells about its work, one interface for every part that reports.

Servers, server parts, builtin handlers and the event loop call these methods; the run's
monitor (`monitor.RunMonitor`) implements them (counting, forwarding from forked children)
and passes them on, unchanged, to the plain, rich or JSON reporter, which implements them
too. Later capabilities extend the set (a TLS handshake, a fault applied), as `upstream`
did with new methods here, and every implementation with them.

`client` is what the run's monitor made of the peer address as accepted: a `Client` (the
address and the connection's id) where the events object numbers connections (it has
`client_ids`, as the run's monitor does), else the address itself (a tuple, a unix path or
b"" for an unnamed unix peer); None for an error with no connection. Handlers always see
the plain address: only reporting code gets the `Client`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

__all__ = [
    "Client",
    "ClientIds",
    "Direction",
    "Events",
    "NullEvents",
    "RemoteError",
    "Stats",
    "address_of",
    "remote_error",
]

Direction = Literal["in", "out"]


class Client:
    """One connection (or datagram request) as its events tell it: the peer `address` and
    the run's `id` for it (None until the server lets the request through).

    Made where the request is born (accepted, or received); every event about the request
    carries the same object, so `connect`, `data`, `error` and `close` share the id.
    """

    __slots__ = ("address", "id")

    def __init__(self, address: Any, id: int | None = None) -> None:
        self.address = address
        self.id = id

    def __repr__(self) -> str:
        return f"Client({self.address!r}, {self.id!r})"


def address_of(client: Any) -> Any:
    """The peer address of `client`: a `Client`'s, or `client` itself."""
    return client.address if type(client) is Client else client


class ClientIds:
    """The run's connection ids: 1, 2, 3... in the order requests are let through.

    With --workers N, worker k (1..N) numbers k, k+N, k+2N...: ids stay integers and unique
    across the workers (`restart`). Thread-safe: threads that accept draw ids too.
    """

    #: A new id. Without cells it is the count's own `__next__`: atomic (with or without a
    #: GIL) and no Python frame per connection; with cells, `_next_written`.
    next: Callable[[], int]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.restart(1, 1)

    def restart(self, first: int, step: int, cells: Any = None, slot: int = 0) -> None:
        """Number `first`, `first + step`...; write each id to `cells[slot]` if given (so
        that a worker started again in the slot goes on after the last one)."""
        with self._lock:
            self._numbers = itertools.count(first, step)
            self._cells = cells  # --workers: where the slot's last id is kept (shared memory)
            self._slot = slot
            self.next = self._numbers.__next__ if cells is None else self._next_written

    def _next_written(self) -> int:
        """`next` when each id is also written to the slot's cell: draw and write in turn."""
        with self._lock:
            n = next(self._numbers)
            self._cells[self._slot] = n
            return n

    def new(self, address: Any) -> Client:
        """A `Client` for `address`, with a new id."""
        return Client(address, self.next())


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

    def refused(self, client: Any, reason: str) -> None:
        """The access rules refused a peer: its connection closed, its datagram dropped."""

    def tls(self, client: Any, info: dict[str, Any]) -> None:
        """A stream connection's TLS handshake ended (after its `connected`).

        `info`: version, cipher, alpn, sni and, when the client sent one, client_subject; or,
        for a handshake that failed, only `error`, the reason in a few words.
        """

    def fault(self, client: Any, kind: str, detail: str, side: str | None = None) -> None:
        """A fault was applied to `client`'s connection or datagram (`sockserve.faults`):
        `kind` names it (delay, throttle, chunk, close, reset, stall, fail-reset,
        fail-close, delay-accept, drop, duplicate, reorder), `detail` says how; on a relay,
        `side` is the connection it hit: "client" or "upstream" (--faults-to)."""

    def sent(self, client: Any, size: int) -> None:
        """`size` bytes were sent to `client` outside any request: the stdin that -H stdio
        forwards to a datagram client. They count in the run's bytes out."""

    def exec_exit(self, client: Any, status: int, seconds: float) -> None:
        """The program run for `client` (--exec) ended: `status` is its exit status, or minus
        the signal that killed it; it ran `seconds`."""

    def exec_stderr(self, client: Any, line: bytes) -> None:
        """The program run for `client` wrote `line` to its stderr (--exec-stderr pass)."""

    def upstream(
        self, client: Any, upstream: str, error: str | None, tls: dict[str, Any] | None = None
    ) -> None:
        """-H forward connected `client` to `upstream` (a URL: tcp://HOST:PORT, unix:///PATH),
        or could not (`error`: the reason); a datagram client, when its association opens.
        `tls`: over --forward-tls, the upstream's TLS version and cipher."""


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

    def refused(self, client: Any, reason: str) -> None:
        """Ignore it."""

    def tls(self, client: Any, info: dict[str, Any]) -> None:
        """Ignore it."""

    def fault(self, client: Any, kind: str, detail: str, side: str | None = None) -> None:
        """Ignore it."""

    def sent(self, client: Any, size: int) -> None:
        """Ignore it."""

    def exec_exit(self, client: Any, status: int, seconds: float) -> None:
        """Ignore it."""

    def exec_stderr(self, client: Any, line: bytes) -> None:
        """Ignore it."""

    def upstream(
        self, client: Any, upstream: str, error: str | None, tls: dict[str, Any] | None = None
    ) -> None:
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
        self.refused = 0
        self.tls_failures = 0
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Stats(started={self.started!r}, connections={self.connections!r}, "
            f"requests={self.requests!r}, bytes_in={self.bytes_in!r}, "
            f"bytes_out={self.bytes_out!r}, errors={self.errors!r}, refused={self.refused!r})"
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

    def add_sent(self, size: int) -> None:
        """Count bytes sent outside any request."""
        with self.lock:
            self.bytes_out += size

    def add_error(self) -> None:
        """Count a handler error."""
        with self.lock:
            self.errors += 1

    def add_refused(self) -> None:
        """Count a peer refused by the access rules."""
        with self.lock:
            self.refused += 1

    def add(self, counts: dict[str, int]) -> None:
        """Add the counters of another process (a --workers worker), as `counts()` gave them."""
        with self.lock:
            self.connections += int(counts["connections"])
            self.requests += int(counts["requests"])
            self.bytes_in += int(counts["bytes_in"])
            self.bytes_out += int(counts["bytes_out"])
            self.errors += int(counts["errors"])
            self.refused += int(counts.get("refused", 0))
            self.tls_failures += int(counts.get("tls_failures", 0))

    def counts(self) -> dict[str, int]:
        """The counters as a dict, to send to another process."""
        return {
            "connections": self.connections,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "errors": self.errors,
            "refused": self.refused,
            "tls_failures": self.tls_failures,
        }

    def add_tls_failure(self) -> None:
        """Count a TLS handshake that failed."""
        with self.lock:
            self.tls_failures += 1

    @property
    def uptime(self) -> float:
        """Seconds since the run began."""
        return time.monotonic() - self.started
