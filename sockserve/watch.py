"""The watched connection: every chunk a handler receives or sends, seen on its way.

A `Watch` belongs to one connection (or one datagram's request) and holds one chain of
stages per direction, as toxiproxy's links do: "in" runs from the socket to the handler,
"out" from the handler to the socket. The first stage, `Tally`, counts the bytes that went
through and, while the events want them (-vv), reports each chunk with `Events.data`.
Faults (delay, throttle, chunking, close after N bytes) will be stages of the same kind
after it, for any handler, without the handler knowing. Whoever made a watch closes it
when its connection (or datagram request) ends: `Watch.close` closes each stage once.

`WatchedSocket` is a connected stream socket whose recv, recv_into, send, sendall and
sendfile go through its watch (and so do `makefile` and a StreamRequestHandler's rfile and
wfile, which call them). `WatchedDatagramSocket` stands in for a datagram server's socket
in one request and watches sendto; the datagram received is passed in by whoever made the
request (`sockserve.parts.watching`, `sockserve.parts.datagrams`). Calls that bypass the
socket object (os.splice or os.sendfile on its descriptor, sendmsg, recvmsg) are not seen.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from .events import Direction, Events

__all__ = [
    "Dresser",
    "Sink",
    "Stage",
    "Tally",
    "Watch",
    "WatchedDatagramSocket",
    "WatchedSocket",
    "is_watched",
]

#: Where the last stage of a chain hands a chunk: the socket's own send (out), or the
#: handler (in). Returns how many bytes of the chunk it took.
Sink = Callable[[memoryview], int]
#: Adds stages to each new Watch (a fault, a transcript): whoever makes watches is given a
#: sequence of them by the configuration (`compose.watch_dressers`). A dresser that keeps
#: something for the whole run has a `close()`, which the server calls when it closes.
Dresser = Callable[["Watch"], None]
#: The blocks `WatchedSocket.sendfile` reads and sends.
SENDFILE_BLOCK = 65536


class Stage:
    """One step of a direction's chain: each chunk comes in, and is handed on to `next`.

    `pass_on(chunk, sink)` returns how many bytes of `chunk` went through (a partial `send`
    takes fewer); the last stage hands the chunk to `sink`. A subclass extends pass_on; it
    may hand an outgoing chunk on in parts, later, or not at all, but must hand an incoming
    chunk on whole (the handler already holds it; no socket keeps input back yet), except a
    datagram, which it may drop: handing nothing on (0) means it is not served.
    """

    def __init__(self, next_stage: Stage | None = None) -> None:
        self.next = next_stage

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        """Hand `chunk` to the next stage, or to `sink` from the last one."""
        if self.next is None:
            return sink(chunk)
        return self.next.pass_on(chunk, sink)

    def close(self) -> None:
        """The connection (or datagram request) ended: release what the stage holds."""


class Tally(Stage):
    """The first stage: count what went through, and report it while the events want data.

    An empty chunk (a handler's empty send) is reported when `shows_empty`.
    """

    def __init__(self, watch: Watch, direction: Direction, shows_empty: bool = True) -> None:
        super().__init__()
        self.watch = watch
        self.direction: Direction = direction
        self.shows_empty = shows_empty
        self.count = 0

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        """Pass the chunk on, then count and report the part of it that went through."""
        n = super().pass_on(chunk, sink)
        self.count += n
        watch = self.watch
        if watch.events is not None and watch.reports and (n or (self.shows_empty and not chunk)):
            watch.events.data(watch.client, self.direction, bytes(chunk[:n]))
        return n


def _taken(chunk: memoryview) -> int:
    """The sink of the "in" chain: the handler has the whole chunk already."""
    return len(chunk)


class Watch:
    """What passes through one connection: a chain of stages per direction, `Tally` first.

    `reports`: each chunk goes to `events.data` (-vv); otherwise the chunks are only
    counted. `shows_empty_out`: an empty chunk sent is reported (streams; a datagram
    server's empty replies never were). Each of `dressers` is called with the new watch,
    to `append` its stages.
    """

    def __init__(
        self,
        events: Events | None,
        client: Any,
        reports: bool = False,
        shows_empty_out: bool = True,
        dressers: Sequence[Dresser] = (),
    ) -> None:
        self.events = events
        self.client = client
        self.reports = reports
        self.inbound = Tally(self, "in")
        self.outbound = Tally(self, "out", shows_empty_out)
        self.closed = False
        for dress in dressers:
            dress(self)

    def append(self, direction: Direction, stage: Stage) -> None:
        """Add `stage` at the end of `direction`'s chain, after the stages already there."""
        last: Stage = self.inbound if direction == "in" else self.outbound
        while last.next is not None:
            last = last.next
        last.next = stage

    def close(self) -> None:
        """The connection (or datagram request) ended: close every stage, once."""
        if self.closed:
            return
        self.closed = True
        for first in (self.inbound, self.outbound):
            stage: Stage | None = first
            while stage is not None:
                stage.close()
                stage = stage.next

    @property
    def dressed(self) -> bool:
        """True if a stage follows `Tally` in either direction."""
        return self.inbound.next is not None or self.outbound.next is not None

    @property
    def received(self) -> int:
        """Bytes the handler received."""
        return self.inbound.count

    @property
    def sent(self) -> int:
        """Bytes the handler sent."""
        return self.outbound.count

    def incoming(self, data: Any) -> int:
        """Pass a chunk received from the peer through the "in" chain; return its size."""
        with memoryview(data) as view, view.cast("B") as octets:
            return self.inbound.pass_on(octets, _taken)

    def outgoing(self, data: Any, sink: Sink) -> int:
        """Pass a chunk the handler sends through the "out" chain, to `sink` at its end;
        return how many bytes of it were sent."""
        with memoryview(data) as view, view.cast("B") as octets:
            return self.outbound.pass_on(octets, sink)


class WatchedSocket(socket.socket):
    """A connected stream socket whose traffic goes through `watch`.

    Make one with `adopt`; `dup` keeps the watch. A peek (MSG_PEEK) is not a chunk.
    """

    watch: Watch

    @classmethod
    def adopt(cls, sock: socket.socket, watch: Watch) -> WatchedSocket:
        """Move `sock`'s descriptor and timeout into a new watched socket (`sock` is
        detached)."""
        timeout = sock.gettimeout()
        watched = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        if watched.gettimeout() != timeout:
            watched.settimeout(timeout)
        watched.watch = watch
        return watched

    def dup(self) -> WatchedSocket:
        """A duplicate of the socket, watched by the same watch."""
        sock = super().dup()
        sock.watch = self.watch
        return sock

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if data and not flags & socket.MSG_PEEK:
            self.watch.incoming(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if n and not flags & socket.MSG_PEEK:
            with memoryview(buffer) as view, view.cast("B") as octets:
                self.watch.incoming(octets[:n])
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        send = super().send
        return self.watch.outgoing(data, lambda chunk: send(chunk, flags))

    def sendall(self, data: Any, flags: int = 0) -> None:
        sendall = super().sendall

        def sink(chunk: memoryview) -> int:
            sendall(chunk, flags)
            return len(chunk)

        self.watch.outgoing(data, sink)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send the file through the watch: read in blocks and sent with sendall, never with
        os.sendfile, which the watch would not see. As socket.sendfile does, the file
        position ends at `offset` plus the bytes sent."""
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if count is not None and count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
        if offset:
            file.seek(offset)
        total = 0
        try:
            while count is None or total < count:
                size = SENDFILE_BLOCK if count is None else min(SENDFILE_BLOCK, count - total)
                block = file.read(size)
                if not block:
                    break
                self.sendall(block)
                total += len(block)
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
        return total


class WatchedDatagramSocket:
    """Stands in for a datagram server's socket in one request: sendto goes through
    `watch`; everything else is the server socket's own."""

    __slots__ = ("_sock", "watch")

    def __init__(self, sock: socket.socket, watch: Watch) -> None:
        self._sock = sock
        self.watch = watch

    def sendto(self, data: Any, *args: Any) -> int:
        sendto = self._sock.sendto
        return self.watch.outgoing(data, lambda chunk: sendto(chunk, *args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def is_watched(sock: Any) -> bool:
    """True if `sock` (a request's socket) goes through a watch, or is a TLS connection
    (`encrypted`: its bytes on the wire are not the handler's): fast paths that bypass the
    socket object must not run then."""
    return isinstance(sock, (WatchedSocket, WatchedDatagramSocket)) or getattr(
        sock, "encrypted", False
    )
