"""The asyncio protocols (event mode): every builtin on every transport, from the loop."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from typing import Any

import pytest
from builtin_checks import (
    CHECKS,
    STANDALONE,
    TIMEOUT,
    TRANSPORTS,
    Ctx,
    RecordingObserver,
    connect,
    dgram_exchange,
    make_ctx,
    no_leaked_threads,  # noqa: F401 - an autouse fixture
    recv_all,
    recv_exactly,
    serve_event,
    stream_exchange,
)
from clitools import RecordsObserver

from sockserve import builtins as bh
from sockserve.builtins import protocols


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", STANDALONE)
def test_builtin_event(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir) as (ctx, options):
        asyncio.run(serve_event(name, transport, options, sock_dir, lambda a: CHECKS[name](ctx, a)))


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_event_protocols_are_asyncio_protocols(transport: str) -> None:
    for name in STANDALONE:
        proto = bh.protocol_factory(name, "stream", bh.HandlerOptions())()
        assert isinstance(proto, asyncio.Protocol)
        dproto = bh.protocol_factory(name, "dgram", bh.HandlerOptions())()
        assert isinstance(dproto, asyncio.DatagramProtocol)


@pytest.mark.parametrize("watched", [False, True])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_event_echo_with_and_without_a_watcher(
    transport: str, watched: bool, sock_dir: str
) -> None:
    """Unwatched, echo takes its lean protocol (write back, count); watched (-vv), the one
    that shows each chunk. Both echo and count alike."""
    observer = RecordingObserver(wants_data=watched)
    options = bh.HandlerOptions(observer=observer)
    proto = bh.protocol_factory("echo", "stream", options)()
    assert isinstance(proto, protocols.EventEcho) is not watched

    def check(address: Any) -> None:
        ctx = Ctx(transport, sock_dir, observer)
        assert stream_exchange(ctx, address, b"abc" * 1000) == b"abc" * 1000

    asyncio.run(serve_event("echo", transport, options, sock_dir, check))
    observer.wait_records(1)
    assert observer.records[0][1:] == (3000, 3000)
    seen = {d: b"".join(c for dd, c in observer.chunks if dd == d) for d in ("in", "out")}
    assert seen == (
        {"in": b"abc" * 1000, "out": b"abc" * 1000} if watched else {"in": b"", "out": b""}
    )


@pytest.mark.parametrize("watched", [False, True])
@pytest.mark.parametrize("name", ["echo", "upper", "reply"])
@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_event_datagram_builtins_with_and_without_a_watcher(
    transport: str, name: str, watched: bool, sock_dir: str
) -> None:
    """Watched (-vv), each datagram and its answer are shown; both record alike."""
    observer = RecordingObserver(wants_data=watched)
    options = bh.HandlerOptions(reply=b"ok", observer=observer)
    proto = bh.protocol_factory(name, "dgram", options)()
    assert isinstance(proto, protocols.EventDatagram) is not watched
    answer = bh.respond_datagram(name, b"abc", reply=b"ok")
    ctx = Ctx(transport, sock_dir, observer)

    def check(address: Any) -> None:
        assert dgram_exchange(ctx, address, b"abc") == answer
        observer.wait_records(1)

    asyncio.run(serve_event(name, transport, options, sock_dir, check))
    assert observer.records[0][1:] == (3, len(answer))
    assert observer.chunks == ([("in", b"abc"), ("out", answer)] if watched else [])


def test_event_bulk_echo_and_reply_file(sock_dir: str) -> None:
    payload = os.urandom(1 << 20) * 4
    path = os.path.join(sock_dir, "reply")
    with open(path, "wb") as f:
        f.write(payload)
    for name, options, expected in [
        ("echo", bh.HandlerOptions(), payload),
        ("reply", bh.HandlerOptions(reply_file=path), payload),
    ]:

        def check(address: Any, name: str = name, expected: bytes = expected) -> None:
            ctx = Ctx("tcp", sock_dir, RecordingObserver())
            request = payload if name == "echo" else b"GET"
            assert stream_exchange(ctx, address, request) == expected

        asyncio.run(serve_event(name, "tcp", options, sock_dir, check))


def test_event_stdio_regular_file_stdin(sock_dir: str) -> None:
    """stdin from a file (no selector can watch it) is read from the loop in chunks."""
    path = os.path.join(sock_dir, "in")
    with open(path, "wb") as f:
        f.write(b"file contents " * 10000)
    observer = RecordingObserver()
    out = io.BytesIO()
    with open(path, "rb") as stdin:
        options = bh.HandlerOptions(output=out, input=stdin, observer=observer)
        ctx = Ctx("unix", sock_dir, observer)

        def check(address: Any) -> None:
            with connect("unix", address) as sock:
                sock.sendall(b"hi")
                assert recv_all(sock) == b"file contents " * 10000
            observer.wait_records(1)

        asyncio.run(serve_event("stdio", "unix", options, sock_dir, check))
    assert out.getvalue() == b"hi"
    assert ctx.observer.records[0][1:] == (2, 140000)


def test_event_chargen_stops_when_the_client_leaves(sock_dir: str) -> None:
    observer = RecordingObserver()
    ctx = Ctx("tcp", sock_dir, observer)

    def check(address: Any) -> None:
        for _ in range(2):
            with connect("tcp", address) as sock:
                assert recv_exactly(sock, 50000) == bh.chargen_pattern(0, 50000)
        observer.wait_records(2)

    options = bh.HandlerOptions(observer=observer)
    asyncio.run(serve_event("chargen", "tcp", options, sock_dir, check))
    assert ctx.observer.records[0][2] >= 50000


@pytest.mark.parametrize("name", ["echo", "upper"])
@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_observer_that_wants_no_counts_gets_no_records(
    transport: str, name: str, sock_dir: str
) -> None:
    """-q shows no record and no summary: the builtins then never call `record`."""
    observer = RecordingObserver(wants_counts=False)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    expected = b"ABC" if name == "upper" else b"abc"

    def check(address: Any) -> None:  # event mode: checked once the loop is closed
        assert dgram_exchange(ctx, address, b"abc") == expected

    asyncio.run(serve_event(name, transport, options, sock_dir, check))
    assert observer.records == []


# -- datagrams: the same answer function ------------------------------------------------------


@pytest.mark.parametrize("name", ["echo", "upper", "chargen", "reply", "daytime"])
def test_event_datagram_protocol_answers_like_respond_datagram(name: str) -> None:
    import asyncio

    observer = RecordsObserver()
    factory = bh.protocol_factory(name, "dgram", bh.HandlerOptions(reply=b"ok", observer=observer))

    async def exchange() -> list[bytes]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(factory, local_addr=("127.0.0.1", 0))
        try:
            address = transport.get_extra_info("sockname")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.setblocking(False)
                replies = []
                for data in (b"abc", bytes(range(200))):
                    await loop.sock_sendto(client, data, address)
                    replies.append(await asyncio.wait_for(loop.sock_recv(client, 65536), TIMEOUT))
                return replies
        finally:
            transport.close()

    replies = asyncio.run(exchange())
    for data, reply in zip((b"abc", bytes(range(200))), replies, strict=True):
        if name == "daytime":
            assert reply.endswith(b"-UTC\r\n")
        else:
            assert reply == bh.respond_datagram(name, data, reply=b"ok")
    assert [(r[1], r[2]) for r in observer.wait(2)] == [
        (3, len(replies[0])),
        (200, len(replies[1])),
    ]
