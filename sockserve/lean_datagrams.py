"""LeanDatagramEndpoint: a UDP builtin in event mode, answered from the loop's reader callback.

For a datagram builtin that needs nothing of a transport (no output, no watch, faults or
transcripts, no arrival address): the loop watches the socket (`add_reader`) and one callback
answers the datagrams waiting, up to `BATCH` per wake-up, with recvfrom and sendto; no
transport, no protocol callback per datagram (see benchmarks/RESULTS.md). The answers, the
records and the request count are those of the builtin's protocol
(`builtins.protocols.EventDatagram`, which says what to do through `LeanAnswer`); an empty
datagram is answered with an empty one, as in the other modes.

A reply the socket cannot take now (EAGAIN) is lost, as a datagram may be, and counts 0 bytes
out; asyncio's transport (uvloop's too) would have buffered it. On Linux a UDP send waits only
for the sender's own buffer, rarely full: a receiver without room drops the datagram without a
word either way. Any other failed send (EMSGSIZE, an ICMP error such as ECONNREFUSED for an
earlier reply) also costs that reply only, and a failed receive ends the wake-up's batch.

Unix datagram sockets stay on the transport: a unix datagram may be bigger than any fixed
buffer, and reading it whole takes a peek at its size first (`parts.whole_datagrams`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from .events import Client, ClientIds

__all__ = ["BATCH", "LeanAnswer", "LeanDatagramEndpoint"]

#: At most this many waiting datagrams are answered per wake-up, so that other callbacks
#: (a stop request, a timer) are not starved.
BATCH = 32
#: Any UDP datagram fits (an IPv4 payload is at most 65,507 bytes).
RECEIVE_SIZE = 65536
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class LeanAnswer(NamedTuple):
    """How a builtin answers a datagram without its protocol's callbacks."""

    #: The reply to a datagram (None: no reply); None: echo, the datagram goes back as it came.
    answer: Callable[[bytes], bytes | None] | None
    #: Told (sender, bytes in, bytes out) after each datagram; None: nothing records (-q).
    record: Callable[[Any, int, int], None] | None
    #: The run's connection ids: each sender is recorded as a `Client` with a new one.
    ids: ClientIds | None


class LeanDatagramEndpoint:
    """Serve a bound UDP socket from a reader callback, in the place of a datagram transport.

    Args:
        loop: the running loop.
        sock: the bound UDP socket; the endpoint owns it and closes it once lost.
        protocol: the builtin's protocol: its `connection_lost(None)` is called at the end.
        lean: what the protocol answers and records (`LeanAnswer`).
        admit: called with each sender before it is answered; False drops the datagram
            (the access rules, a stop, the request limit). None: every datagram is answered.
        lost: called once the endpoint is lost, after the protocol's connection_lost.

    `close()` (and `abort()`, the same: nothing is ever buffered) stops reading at once; the
    loss follows in a later callback, as a transport's does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: Any,
        lean: LeanAnswer,
        admit: Callable[[Any], bool] | None,
        lost: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._lean = lean
        self._admit = admit
        self._lost = lost
        self._closing = False
        sock.setblocking(False)  # as a transport makes it: a read past the last datagram fails
        plain = admit is None and lean.answer is None and lean.record is None
        loop.add_reader(self._fd, self._reflect if plain else self._answer)

    @staticmethod
    def fits(sock: socket.socket) -> bool:
        """True for the sockets served here: UDP over IPv4 or IPv6."""
        return sock.family in _FAMILIES and sock.type == socket.SOCK_DGRAM

    def close(self) -> None:
        """Stop reading; the endpoint is lost in a later callback. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.call_soon(self._connection_lost)

    abort = close

    def _connection_lost(self) -> None:
        try:
            self._protocol.connection_lost(None)
        finally:
            self._sock.close()
            self._lost()

    def _reflect(self) -> None:
        """Send each waiting datagram back as it came: echo with nothing to record or admit."""
        sock = self._sock
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(RECEIVE_SIZE)
            except OSError:  # none left (EAGAIN), or an ICMP error: the next wake-up goes on
                return
            try:
                sendto(data, addr)
            except OSError:
                pass  # lost, as a datagram may be

    def _answer(self) -> None:
        """Answer each waiting datagram the admit function lets through; record it if asked."""
        sock = self._sock
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        answer, record, ids = self._lean
        admit = self._admit
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(RECEIVE_SIZE)
            except OSError:  # none left (EAGAIN), or an ICMP error: the next wake-up goes on
                return
            if admit is not None and not admit(addr):
                continue
            sent = 0
            try:
                reply = data if answer is None else answer(data)
                if reply is not None:
                    try:
                        sent = sendto(reply, addr)
                    except OSError:
                        pass  # lost, as a datagram may be: 0 bytes out
            finally:
                if record is not None:
                    record(addr if ids is None else Client(addr, ids.next()), len(data), sent)
