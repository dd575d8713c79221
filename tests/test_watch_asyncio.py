"""The watched connection on asyncio (`sockserve.watch_asyncio`), on asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from servertools import LOOPS, EventsRecorder

from sockserve.watch import Watch
from sockserve.watch_asyncio import (
    WatchedBufferedProtocol,
    WatchedDatagramProtocol,
    WatchedDatagramTransport,
    WatchedProtocol,
    WatchedTransport,
    watched,
    watching_factory,
)

pytestmark = pytest.mark.leakcheck

TIMEOUT = 10


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """run(coro) on a new loop of the kind (asyncio's or uvloop's); the loop is closed after."""

    def run_on_loop(coro: Coroutine[Any, Any, Any]) -> Any:
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))
        finally:
            loop.close()

    return run_on_loop


class DataRecorder(EventsRecorder):
    """An events interface that wants every chunk (-vv)."""

    wants_data = True


class Reverse(asyncio.Protocol):
    """Answers each chunk reversed, then "!"; records what asyncio calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        self.transport.writelines([data[::-1], memoryview(b"!")])

    def eof_received(self) -> bool | None:
        self.calls.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(None)


class Upper(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(8)  # smaller than what is sent: several buffer_updated
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytearray(self.buf[:nbytes]).upper())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


async def exchange(port: int, payload: bytes) -> bytes:
    """Connect, send, half-close, read until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    try:
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def serve_one(protocol: Any, watch: Watch, payload: bytes, **kwargs: Any) -> bytes:
    """Serve one connection with `protocol` behind `watch`; return what the client got."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: watched(protocol, watch, **kwargs), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        got = await exchange(port, payload)
        await protocol.lost
        return got
    finally:
        server.close()
        await server.wait_closed()


def test_a_stream_protocol_is_watched_both_ways(run: Any) -> None:
    events = DataRecorder()
    watch = Watch(events, None, reports=True)

    async def main() -> tuple[Reverse, bytes]:
        protocol = Reverse()
        return protocol, await serve_one(protocol, watch, b"hello")

    protocol, got = run(main())
    assert isinstance(watched(object.__new__(Reverse), watch), WatchedProtocol)
    assert got == b"olleh!"
    assert protocol.calls == ["made", "eof", "lost"]
    assert isinstance(protocol.transport, WatchedTransport)
    client = watch.client
    assert client[0] == "127.0.0.1"
    assert events.named("data") == [
        (client, "in", b"hello"),
        (client, "out", b"olleh"),
        (client, "out", b"!"),
    ]
    assert (watch.received, watch.sent) == (5, 6)


def test_a_watch_that_only_counts_reports_nothing(run: Any) -> None:
    events = DataRecorder()
    watch = Watch(events, None, reports=False)

    async def main() -> bytes:
        return await serve_one(Reverse(), watch, b"abc")

    assert run(main()) == b"cba!"
    assert events.calls == []
    assert (watch.received, watch.sent) == (3, 4)


def test_a_buffered_protocol_is_watched_chunk_by_chunk(run: Any) -> None:
    events = DataRecorder()
    watch = Watch(events, None, reports=True)
    payload = bytes(range(97, 123)) * 3  # 78 bytes through an 8-byte buffer

    async def main() -> bytes:
        protocol = Upper()
        wrapper = watched(protocol, watch)
        assert isinstance(wrapper, WatchedBufferedProtocol)
        assert isinstance(wrapper, asyncio.BufferedProtocol)
        assert not isinstance(wrapper, asyncio.Protocol)  # uvloop tells them apart so
        return await serve_one(protocol, watch, payload)

    assert run(main()) == payload.upper()
    seen = {d: b"".join(c for _, dd, c in events.named("data") if dd == d) for d in ("in", "out")}
    assert seen == {"in": payload, "out": payload.upper()}
    assert all(len(c) <= 8 for _, _, c in events.named("data"))
    assert (watch.received, watch.sent) == (78, 78)


class Bulk(asyncio.Protocol):
    """Writes `payload` at connect, more than the socket takes at once, then closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        transport.write(self.payload)
        transport.write(memoryview(self.payload)[:10])
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


def test_what_the_transport_keeps_to_send_later_arrives_whole(run: Any) -> None:
    """The chunks handed to the real transport stay valid while it buffers them."""
    payload = os.urandom(1 << 22)
    watch = Watch(DataRecorder(), None)

    async def main() -> bytes:
        return await serve_one(Bulk(payload), watch, b"")

    assert run(main()) == payload + payload[:10]
    assert watch.sent == len(payload) + 10


class Failing(Reverse):
    def data_received(self, data: bytes) -> None:
        raise ValueError("boom")


def test_with_on_error_a_failing_callback_is_reported_and_the_connection_aborted(
    run: Any,
) -> None:
    errors: list[tuple[Any, Exception]] = []
    watch = Watch(None, None)

    async def main() -> bytes:
        return await serve_one(
            Failing(), watch, b"x", on_error=lambda client, exc: errors.append((client, exc))
        )

    assert run(main()) == b""
    [(client, exc)] = errors
    assert client == watch.client and client[0] == "127.0.0.1"
    assert isinstance(exc, ValueError) and str(exc) == "boom"


def test_without_on_error_a_failing_callback_reaches_the_loop_as_unwrapped(run: Any) -> None:
    """As asyncio reports a protocol's error itself: the protocol in the context is the
    watched one, and tells its client."""
    contexts: list[dict[str, Any]] = []
    watch = Watch(None, None)

    async def main() -> bytes:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: contexts.append(c))
        return await serve_one(Failing(), watch, b"x")

    assert run(main()) == b""
    [context] = contexts
    assert isinstance(context["exception"], ValueError)
    assert context["protocol"].client == watch.client


def test_the_watched_transport_passes_the_rest_through(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with b:
            inner = Reverse()
            wrapper = watched(inner, Watch(None, None))
            transport, _ = await loop.connect_accepted_socket(lambda: wrapper, a)
            seen = inner.transport
            assert isinstance(seen, WatchedTransport) and seen is not transport
            assert seen.get_extra_info("socket").fileno() == a.fileno()
            assert seen.get_protocol() is inner
            assert seen.can_write_eof() and seen.is_reading()
            seen.pause_reading()
            assert not seen.is_reading()
            seen.resume_reading()
            seen.set_write_buffer_limits(high=4096)
            assert seen.get_write_buffer_limits()[1] == 4096
            assert seen.get_write_buffer_size() == 0
            other = Reverse()
            seen.set_protocol(other)
            assert seen.get_protocol() is other and wrapper.protocol is other
            assert not seen.is_closing()
            seen.close()
            assert seen.is_closing()
            await other.lost
            assert other.calls == ["lost"]  # the new protocol gets the callbacks

    run(main())


class Deferred(asyncio.DatagramProtocol):
    """Answers b"later" on the next loop iteration, anything else at once, twice over."""

    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"boom":
            raise ValueError("boom")
        if data == b"later":
            asyncio.get_running_loop().call_soon(self.transport.sendto, b"late", addr)
        else:
            self.transport.sendto(data * 2, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


def test_a_datagram_protocol_is_watched_and_each_datagram_recorded(run: Any) -> None:
    events = DataRecorder()
    errors: list[tuple[Any, Exception]] = []
    watch = Watch(events, None, reports=True)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        protocol = Deferred()
        wrapper = watched(protocol, watch, lambda c, e: errors.append((c, e)), records=True)
        assert isinstance(wrapper, WatchedDatagramProtocol)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: wrapper, local_addr=("127.0.0.1", 0)
        )
        assert isinstance(protocol.transport, WatchedDatagramTransport)
        address = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            client.bind(("127.0.0.1", 0))
            client.connect(address)  # uvloop has no sock_sendto
            for data, reply in [(b"later", b"late"), (b"boom", None), (b"ab", b"abab")]:
                await loop.sock_sendall(client, data)
                if reply is not None:
                    assert await loop.sock_recv(client, 100) == reply
                else:
                    while not errors:
                        await asyncio.sleep(0.01)
            protocol.transport.sendto(b"bye", client.getsockname())  # after the last one
            assert await loop.sock_recv(client, 100) == b"bye"
            here = client.getsockname()
        transport.close()
        await protocol.lost
        return here

    here = run(main())
    # what is sent is recorded with the next datagram: "late" with "boom"; "bye" at the close
    assert events.named("record") == [(here, 5, 0), (here, 4, 4), (here, 2, 4), (None, 0, 3)]
    assert events.named("data") == [
        (here, "in", b"later"),
        (here, "out", b"late"),
        (here, "in", b"boom"),
        (here, "in", b"ab"),
        (here, "out", b"abab"),
        (here, "out", b"bye"),
    ]
    [(where, exc)] = errors
    assert where == here and isinstance(exc, ValueError)


def test_watching_factory_makes_reporting_protocols_that_record_nothing(run: Any) -> None:
    events = DataRecorder()

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        made: list[Any] = []

        def factory() -> Any:
            made.append(Reverse())
            return made[-1]

        server = await loop.create_server(watching_factory(factory, events), "127.0.0.1", 0)
        try:
            got = await exchange(server.sockets[0].getsockname()[1], b"xy")
            await made[0].lost
            return got
        finally:
            server.close()
            await server.wait_closed()

    assert run(main()) == b"yx!"
    assert [d[1:] for d in events.named("data")] == [("in", b"xy"), ("out", b"yx"), ("out", b"!")]
    assert events.named("record") == []
