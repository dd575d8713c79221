"""Events: what a server tells about its work, one interface for every part that reports.

Servers, server parts, builtin handlers and the event loop call these methods; the run's
monitor implements them (counting, forwarding from forked children) and hands them to the
plain, rich and JSON reporters. Later capabilities extend the set (a TLS handshake, a fault
applied, an upstream connected) with new methods here, and every implementation with them.

`client` is the peer address as accepted (a tuple, a unix path or b"" for an unnamed unix
peer, None for an error with no connection).
"""

from __future__ import annotations

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
        """A stream connection ended, or a datagram was answered, with its byte counts."""

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """A chunk passed (only while `wants_data`)."""

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """A handler raised while serving `client`."""

    def warning(self, message: str) -> None:
        """Something the user should know about went wrong; the server goes on."""

    def info(self, message: str) -> None:
        """A line of status."""
