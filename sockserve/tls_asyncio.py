"""TLS in event mode: each connection's handshake as a task of its own, with a time limit
(asyncio's `loop.start_tls`, uvloop's when it is the loop).

The connection was accepted and told (`connected`) first; the handshake's outcome is told
with `Events.tls`; only a connection whose handshake completed reaches its protocol.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .tls import failure_info, handshake_info

__all__ = ["start_handshake"]


def start_handshake(conn: Any, transport: Any) -> None:
    """Run `conn`'s handshake (`conn`: an accepted `event._Served`) in a task of its own.

    Its first step runs now, as an eager task's would (Python 3.12+ has them): start_tls
    takes the transport's reading over at once, before the loop reads the client's hello
    for a protocol that must not see it (uvloop reads right after connection_made).
    """
    coro = _handshake(conn, transport)
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    conn.handshake = asyncio.ensure_future(_resume(coro, waiting))


async def _resume(coro: Any, waiting: Any) -> None:
    """Drive `coro` on from the future it waits for, as a task would."""
    while True:
        try:
            await asyncio.wait((waiting,))  # `coro` reads the outcome when resumed
        except asyncio.CancelledError:
            waiting.cancel()  # this task was cancelled: so is the wait inside
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


class _Gate(asyncio.Protocol):
    """The TLS layer's protocol until the connection's own takes over (`_handshake`): what
    the client sends right after its handshake waits here, as does an early EOF, and an
    early loss ends the connection unseen by the protocol."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pending: list[bytes] = []
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.pending.append(bytes(data))

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def hand_over(self, transport: Any) -> None:
        """Give the protocol (told of the connection already) what waited here."""
        protocol = self.conn.protocol
        transport.set_protocol(protocol)
        for data in self.pending:
            if transport.is_closing():
                return
            _deliver(protocol, data)
        self.pending.clear()
        if self.eof and not transport.is_closing() and not protocol.eof_received():
            transport.close()


def _deliver(protocol: Any, data: bytes) -> None:
    """Hand `data` to a Protocol or a BufferedProtocol."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buf = memoryview(protocol.get_buffer(len(view))).cast("B")
        n = min(len(buf), len(view))
        if not n:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


async def _handshake(conn: Any, transport: Any) -> None:
    server = conn.server
    setup = server.tls
    events = server.events
    loop = asyncio.get_running_loop()
    gate = _Gate(conn)
    try:
        secured = await loop.start_tls(
            transport,
            gate,
            setup.context,
            server_side=True,
            ssl_handshake_timeout=setup.handshake_timeout,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        events.tls(conn.client, failure_info(exc, setup.handshake_timeout))
        if not server.count_bytes:  # a builtin records its own connections: it never ran
            events.record(conn.client, 0, 0)
        if not transport.is_closing():
            transport.abort()
        conn.connection_lost(exc)  # if the loop has not told already
        return
    if secured is None or secured.is_closing():  # gone as the handshake ended
        conn.connection_lost(None)
        return
    events.tls(conn.client, handshake_info(secured.get_extra_info("ssl_object")))
    conn.begin(secured)
    gate.hand_over(secured)
