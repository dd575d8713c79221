"""Event mode's datagram transport that replies from each datagram's arrival address.

asyncio's own datagram transport reads with recvfrom, which loses the address a datagram
arrived on; a socket on 0.0.0.0 or [::] that asked for it (`sockserve.arrival`) gets this
transport instead. Loaded only in event mode.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

from .arrival import ANCILLARY_SPACE, reply_ancillary
from .config import MAX_DATAGRAM

__all__ = ["ArrivalDatagramTransport"]


class ArrivalDatagramTransport(asyncio.DatagramTransport):
    """A datagram transport whose replies leave from the address each datagram arrived on,
    for a socket on 0.0.0.0 or [::] that tells it (`sockserve.arrival`); asyncio's own
    transport reads with recvfrom, which does not.

    Reads one datagram per wake-up with recvmsg; `sendto(data, addr)` sends with the arrival
    address of `addr`'s latest datagram (remembered for the last `remembered` senders, so a
    protocol may answer later), buffering while the socket's buffer is full, as asyncio's does.
    """

    max_size = MAX_DATAGRAM
    remembered = 4096
    high_water = 64 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any) -> None:
        super().__init__(
            {
                "socket": sock,
                "sockname": sock.getsockname(),
                "peername": None,
                "sends_empty_datagrams": True,  # asyncio's own transport drops them
            }
        )
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._sources: dict[Any, list[tuple[int, int, bytes]]] = {}
        self._buffer: collections.deque[tuple[bytes, Any, list[tuple[int, int, bytes]]]] = (
            collections.deque()
        )
        self._buffer_size = 0
        self._closing = False
        self._lost = False
        self._paused = False
        sock.setblocking(False)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)

    def _start_reading(self) -> None:
        if not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data, ancdata, _, addr = self._sock.recvmsg(self.max_size, ANCILLARY_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        sources = self._sources
        sources.pop(addr, None)
        sources[addr] = reply_ancillary(ancdata)
        if len(sources) > self.remembered:
            del sources[next(iter(sources))]
        self._protocol.datagram_received(data, addr)

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send one datagram to `addr`, from the address its latest datagram arrived on."""
        if self._closing or self._lost:
            return
        ancillary = self._sources.get(addr, [])
        if not self._buffer:
            try:
                self._send(data, addr, ancillary)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._buffer.append((bytes(data), addr, ancillary))
        self._buffer_size += len(data)
        if not self._paused and self._buffer_size > self.high_water:
            self._paused = True
            self._protocol.pause_writing()

    def _send(self, data: Any, addr: Any, ancillary: list[tuple[int, int, bytes]]) -> None:
        if ancillary:
            self._sock.sendmsg([data], ancillary, 0, addr)
        else:
            self._sock.sendto(data, addr)

    def _write_ready(self) -> None:
        while self._buffer:
            data, addr, ancillary = self._buffer[0]
            try:
                self._send(data, addr, ancillary)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._buffer.popleft()
            self._buffer_size -= len(data)
        self._loop.remove_writer(self._fd)
        if self._paused:
            self._paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._connection_lost(None)

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; close once what is buffered is sent."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        """Close now, dropping what is buffered."""
        self._closing = True
        self._buffer.clear()
        self._buffer_size = 0
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._connection_lost, None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
