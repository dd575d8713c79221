"""The watched connection on asyncio: a protocol's transport and its received data through a
`sockserve.watch.Watch` (event mode only: this module imports asyncio).

`watched(protocol, watch)` stands between a transport and an asyncio protocol (a Protocol,
a BufferedProtocol or a DatagramProtocol): each chunk received goes through the watch's "in"
chain before the protocol gets it, and the protocol gets a watched transport whose write,
writelines (streams) and sendto (datagrams) go through the "out" chain to the real transport.

Errors of the protocol's callbacks (SystemExit and KeyboardInterrupt too: see
`errors.HANDLER_ERRORS`) go to `on_error(client, exc)` when one is given (a
stream connection is then aborted, as asyncio does; a datagram socket goes on), otherwise
to asyncio, as if the protocol ran unwrapped. A datagram socket has one watch: its `client`
is the sender of the latest datagram (a new `events.Client` for each datagram when the
events number requests), or the address a reply is sent to; with `records`,
each datagram is recorded with `events.record` and the bytes sent since the previous one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .errors import HANDLER_ERRORS
from .events import Client, Events, address_of
from .watch import Watch

__all__ = [
    "WatchedBufferedProtocol",
    "WatchedDatagramProtocol",
    "WatchedDatagramTransport",
    "WatchedProtocol",
    "WatchedTransport",
    "watched",
    "watching_factory",
]

#: Told of an exception raised by a protocol's callback, with the client it served (None:
#: none, for a datagram socket's own callbacks).
OnError = Callable[[Any, BaseException], None]


def _through(watch: Watch, data: Any, sink: Callable[[memoryview], int]) -> int:
    """Pass `data` through the watch's "out" chain to `sink`.

    The view is not released here, unlike `Watch.outgoing`: a transport may keep what it
    was handed to send it later.
    """
    return watch.outbound.pass_on(memoryview(data).cast("B"), sink)


class _TransportBase:
    """What a watched transport passes straight to the real one."""

    def __init__(self, transport: Any, owner: Any) -> None:
        super().__init__()
        self._transport = transport
        self._owner = owner  # the watched protocol: holds the watch and the protocol

    def abort(self) -> None:
        self._transport.abort()

    def close(self) -> None:
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self._owner.protocol = protocol

    def get_protocol(self) -> Any:
        return self._owner.protocol

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class WatchedTransport(_TransportBase, asyncio.Transport):
    """The transport a watched stream protocol sees: what it writes goes through the watch."""

    def write(self, data: Any) -> None:
        write = self._transport.write

        def sink(chunk: memoryview) -> int:
            write(chunk)
            return len(chunk)

        _through(self._owner.watch, data, sink)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


class WatchedDatagramTransport(_TransportBase, asyncio.DatagramTransport):
    """The transport a watched datagram protocol sees: what it sends goes through the watch,
    reported as sent to `addr` (or to the sender of the latest datagram)."""

    def sendto(self, data: Any, addr: Any = None) -> None:
        watch: Watch = self._owner.watch
        if addr is not None and address_of(watch.client) != addr:
            watch.client = addr  # not to the sender of the datagram being answered
        sendto = self._transport.sendto

        def sink(chunk: memoryview) -> int:
            sendto(chunk, addr)
            return len(chunk)

        _through(watch, data, sink)


class _Watched:
    """What the watched stream protocols share: the watch, the protocol, its callbacks.

    `takes_client`: the event server sets `client` (the connection's `events.Client`)
    before connection_made; the watch reports it, and so does the protocol if it takes it.
    """

    transport: Any = None
    takes_client = True

    def __init__(self, protocol: Any, watch: Watch, on_error: OnError | None = None) -> None:
        self.protocol = protocol
        self.watch = watch
        self.on_error = on_error

    @property
    def client(self) -> Any:
        """The peer (asyncio's "peername", or the `Client` given), once connected."""
        return self.watch.client

    @client.setter
    def client(self, client: Any) -> None:
        self.watch.client = client
        if getattr(self.protocol, "takes_client", False):
            self.protocol.client = client

    @property
    def received(self) -> int:
        """Bytes the protocol received."""
        return self.watch.received

    @property
    def sent(self) -> int:
        """Bytes the protocol wrote."""
        return self.watch.sent

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.watch.client is None:
            self.watch.client = transport.get_extra_info("peername")
        self._call(self.protocol.connection_made, WatchedTransport(transport, self))

    def eof_received(self) -> bool | None:
        if self.on_error is None:
            return self.protocol.eof_received()
        try:
            return self.protocol.eof_received()
        except HANDLER_ERRORS as exc:
            self._failed(exc)
            return None

    def pause_writing(self) -> None:
        self._call(self.protocol.pause_writing)

    def resume_writing(self) -> None:
        self._call(self.protocol.resume_writing)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            if self.on_error is None:
                self.protocol.connection_lost(exc)
                return
            try:
                self.protocol.connection_lost(exc)
            except HANDLER_ERRORS as error:
                self.on_error(self.client, error)
        finally:
            self.watch.close()

    def _call(self, method: Callable[..., Any], *args: Any) -> None:
        if self.on_error is None:
            method(*args)
            return
        try:
            method(*args)
        except HANDLER_ERRORS as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Report to `on_error` and end the connection at once, as asyncio does with a
        failing callback."""
        assert self.on_error is not None
        self.on_error(self.client, exc)
        self.transport.abort()


class WatchedProtocol(_Watched, asyncio.Protocol):
    """For an asyncio.Protocol."""

    def data_received(self, data: bytes) -> None:
        self.watch.incoming(data)
        self._call(self.protocol.data_received, data)


class WatchedBufferedProtocol(_Watched, asyncio.BufferedProtocol):
    """For an asyncio.BufferedProtocol (uvloop tells them apart by not being a Protocol)."""

    _buffer: Any = None

    def get_buffer(self, sizehint: int) -> Any:
        self._buffer = buffer = self.protocol.get_buffer(sizehint)
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        with memoryview(self._buffer) as view, view.cast("B") as octets:
            self.watch.incoming(octets[:nbytes])
        self._call(self.protocol.buffer_updated, nbytes)


class WatchedDatagramProtocol(asyncio.DatagramProtocol):
    """For an asyncio.DatagramProtocol: one watch for the socket, `client` set per datagram.

    With `records`, each datagram is recorded with the bytes sent since the previous one;
    what is sent after the last one is recorded when the socket closes, for no client.
    """

    transport: Any = None
    #: The `Client` of the datagram being received, when a watch around this one made it.
    sender: Any = None

    def __init__(
        self,
        protocol: Any,
        watch: Watch,
        on_error: OnError | None = None,
        records: bool = False,
    ) -> None:
        self.protocol = protocol
        self.watch = watch
        self.on_error = on_error
        self.records = records and watch.events is not None
        self._recorded_sent = 0
        #: Each datagram gets its own `Client` when the events number requests.
        self.ids = getattr(watch.events, "client_ids", None)
        self.takes_client = getattr(protocol, "takes_client", False)

    @property
    def client(self) -> Any:
        """The sender of the latest datagram (or where the latest reply went)."""
        return self.watch.client

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._call(None, self.protocol.connection_made, WatchedDatagramTransport(transport, self))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        watch = self.watch
        client = self.sender  # made by a watch around this one
        if client is None:
            ids = self.ids
            client = addr if ids is None else Client(addr, ids.next())
        watch.client = client
        if not watch.incoming(data) and data:
            return  # a fault dropped it (`sockserve.faults`)
        protocol = self.protocol
        if self.takes_client:
            protocol.sender = client  # the builtins record it as the watch reports it
        try:
            self._call(client, protocol.datagram_received, data, addr)
        finally:
            if self.takes_client:
                protocol.sender = None
            if self.records:
                self._record(client, len(data))

    def error_received(self, exc: Exception) -> None:
        self._call(None, self.protocol.error_received, exc)

    def pause_writing(self) -> None:
        self._call(None, self.protocol.pause_writing)

    def resume_writing(self) -> None:
        self._call(None, self.protocol.resume_writing)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._call(None, self.protocol.connection_lost, exc)
        finally:
            self.watch.close()
        if self.records and self.watch.sent > self._recorded_sent:
            self._record(None, 0)  # replies sent after the last datagram was recorded

    def _record(self, client: Any, received: int) -> None:
        sent = self.watch.sent - self._recorded_sent
        self._recorded_sent = self.watch.sent
        events = self.watch.events
        assert events is not None  # `records` needs them
        events.record(client, received, sent)

    def _call(self, client: Any, method: Callable[..., Any], *args: Any) -> None:
        if self.on_error is None:
            method(*args)
            return
        try:
            method(*args)
        except HANDLER_ERRORS as exc:
            self.on_error(client, exc)


def watched(
    protocol: Any, watch: Watch, on_error: OnError | None = None, records: bool = False
) -> Any:
    """`protocol` behind a watched protocol of its kind (stream, buffered or datagram);
    `records` is for datagrams only (a stream's owner records it when it ends)."""
    if isinstance(protocol, asyncio.DatagramProtocol):
        return WatchedDatagramProtocol(protocol, watch, on_error, records)
    if isinstance(protocol, asyncio.BufferedProtocol):
        return WatchedBufferedProtocol(protocol, watch, on_error)
    return WatchedProtocol(protocol, watch, on_error)


def watching_factory(
    factory: Callable[[], asyncio.BaseProtocol], events: Events
) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory whose protocols are watched and report every chunk to `events`
    (-vv; nothing recorded: the protocols record their own counts)."""

    def make() -> asyncio.BaseProtocol:
        watch = Watch(events, None, reports=True)
        protocol: asyncio.BaseProtocol = watched(factory(), watch)
        return protocol

    return make
