"""The datagram adapter: every builtin on UDP and unix datagram servers, one reply each."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from builtin_checks import (
    CHECKS,
    FORKING,
    STANDALONE,
    THREADING,
    TIMEOUT,
    Ctx,
    RecordingObserver,
    assert_no_datagram,
    dgram_client,
    dgram_exchange,
    make_ctx,
    no_leaked_threads,  # noqa: F401 - an autouse fixture
    running,
    watched,
)
from clitools import RecordsObserver

from sockserve import builtins as bh, socketserver as ss

DATAGRAMS = ["udp", "unix-dgram"]


@contextlib.contextmanager
def serve(server: ss.BaseServer) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


# -- every builtin, thread, fork and sync mode ------------------------------------------------


@pytest.mark.parametrize("transport", DATAGRAMS)
@pytest.mark.parametrize("name", STANDALONE)
def test_builtin_threading(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir) as (ctx, options):
        handler = bh.datagram_handler(name, options)
        with running(transport, handler, sock_dir) as server:
            CHECKS[name](ctx, server.server_address)


@pytest.mark.parametrize("transport", DATAGRAMS)
@pytest.mark.parametrize("name", STANDALONE)
def test_builtin_forking(name: str, transport: str, sock_dir: str) -> None:
    if name == "stdio":
        pytest.skip("stdin is not forwarded to datagram clients in fork mode (documented)")
    with make_ctx(name, transport, sock_dir, forked=True) as (ctx, options):
        handler = bh.datagram_handler(name, options)
        with running(transport, handler, sock_dir, classes=FORKING) as server:
            CHECKS[name](ctx, server.server_address)


@pytest.mark.parametrize("name", ["echo", "upper", "reply", "chargen", "time"])
def test_builtin_sync(name: str, sock_dir: str) -> None:
    with make_ctx(name, "udp", sock_dir) as (ctx, options):
        handler = bh.datagram_handler(name, options)
        with running("udp", handler, sock_dir, classes={"udp": ss.UDPServer}) as server:
            CHECKS[name](ctx, server.server_address)


# -- datagram sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_empty_and_largest_datagrams(transport: str, sock_dir: str) -> None:
    observer = RecordingObserver()
    largest = 65507 if transport == "udp" else 65536
    big = bytes(range(256)) * (largest // 256) + b"\xff" * (largest % 256)
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    ctx = Ctx(transport, sock_dir, observer)
    with running(transport, handler, sock_dir) as server, dgram_client(ctx) as sock:
        if transport == "unix-dgram":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.sendto(b"", server.server_address)
        assert sock.recv(65536) == b""
        sock.sendto(big, server.server_address)
        assert sock.recv(70000) == big
    # each thread records after it replied: the two records may arrive in either order
    assert sorted(r[1:] for r in observer.wait_records(2)) == [(0, 0), (largest, largest)]


def test_empty_datagram_writes_nothing(sock_dir: str) -> None:
    observer = RecordingObserver()
    out = io.BytesIO()  # no file descriptor: the writer uses write() and flush()
    handler = bh.datagram_handler("stdout", bh.HandlerOptions(output=out, observer=observer))
    ctx = Ctx("udp", sock_dir, observer)
    with running("udp", handler, sock_dir) as server, dgram_client(ctx) as sock:
        sock.sendto(b"", server.server_address)
        sock.sendto(b"abc", server.server_address)
        assert_no_datagram(sock, observer, 2)
    assert out.getvalue() == b"abc"
    assert sorted(r[1:] for r in observer.records) == [(0, 0), (3, 0)]  # threads: any order


def test_unbound_unix_datagram_client_gets_no_reply_and_no_error(sock_dir: str) -> None:
    observer = RecordingObserver()
    errors: list[Any] = []
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info())}
    with running("unix-dgram", handler, sock_dir, **attrs) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"anyone?", server.server_address)
            observer.wait_records(1)
    assert not errors
    assert observer.records[0][1:] == (7, 0)


# -- observers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_observer_sees_chunks_when_it_wants_data(transport: str, sock_dir: str) -> None:
    """On a server that watches its requests (-vv), the watch reports every chunk."""
    observer = RecordingObserver(wants_data=True)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    handler = bh.datagram_handler("upper", options)
    attrs = {"monitor": observer, "watch_data": True, "record_counts": False}
    with running(transport, handler, sock_dir, classes=watched(THREADING), **attrs) as server:
        assert dgram_exchange(ctx, server.server_address, b"abc") == b"ABC"
    observer.wait_records(1)
    assert observer.chunks == [("in", b"abc"), ("out", b"ABC")]


@pytest.mark.parametrize("name", ["echo", "upper"])
@pytest.mark.parametrize("transport", DATAGRAMS)
def test_observer_that_wants_no_counts_gets_no_records(
    transport: str, name: str, sock_dir: str
) -> None:
    """-q shows no record and no summary: the builtins then never call `record`."""
    observer = RecordingObserver(wants_counts=False)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    expected = b"ABC" if name == "upper" else b"abc"
    handler = bh.datagram_handler(name, options)
    with running(transport, handler, sock_dir) as server:
        assert dgram_exchange(ctx, server.server_address, b"abc") == expected
    assert observer.records == []


# -- reply, stdout ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_reply_file(transport: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "reply.http")
    body = b"HTTP/1.0 200 OK\r\n\r\n" + os.urandom(1000) * 10
    with open(path, "wb") as f:
        f.write(body)
    observer = RecordingObserver()
    options = bh.HandlerOptions(reply_file=path, observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    handler = bh.datagram_handler("reply", options)
    with running(transport, handler, sock_dir) as server:
        assert dgram_exchange(ctx, server.server_address, b"GET") == body


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_stdout_raises_output_closed(transport: str, sock_dir: str) -> None:
    r, w = os.pipe()
    os.close(r)  # nobody reads: writes fail with EPIPE
    errors: list[Any] = []
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info()[1])}
    output = os.fdopen(w, "wb")
    options = bh.HandlerOptions(output=output)
    ctx = Ctx(transport, sock_dir, RecordingObserver())
    try:
        handler = bh.datagram_handler("stdout", options)
        with running(transport, handler, sock_dir, **attrs) as server:
            with dgram_client(ctx) as sock:
                sock.sendto(b"data", server.server_address)
                deadline = time.monotonic() + TIMEOUT
                while not errors and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        with contextlib.suppress(OSError):
            output.close()
    assert len(errors) == 1 and isinstance(errors[0], bh.OutputClosed)


# -- the answer chosen once per class, the reply that never blocks ------------------------------


@pytest.mark.parametrize("name", ["echo", "upper", "chargen", "reply", "time"])
def test_datagram_handler_replies_and_counts(name: str) -> None:
    observer = RecordsObserver()
    handler = bh.datagram_handler(name, bh.HandlerOptions(reply=b"ok", observer=observer))
    server = ss.UDPServer(("127.0.0.1", 0), handler)
    with serve(server) as address:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            replies = []
            for data in (b"abc", bytes(range(200))):
                client.sendto(data, address)
                replies.append(client.recv(65536))
            records = observer.wait(2)
    for data, reply in zip((b"abc", bytes(range(200))), replies, strict=True):
        if name == "time":
            assert len(reply) == 4
        else:
            assert reply == bh.respond_datagram(name, data, reply=b"ok")
    assert [(r[1], r[2]) for r in records] == [(3, len(replies[0])), (200, len(replies[1]))]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets")
def test_unix_datagram_reply_still_never_blocks(tmp_path: Any) -> None:
    """A client whose queue is full loses replies instead of stalling the server."""
    observer = RecordsObserver()
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    server = ss.UnixDatagramServer(str(tmp_path / "s"), handler)
    with serve(server) as address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(str(tmp_path / "c"))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            client.settimeout(TIMEOUT)
            for _ in range(300):  # never read: the client's queue fills up
                client.sendto(b"x" * 512, address)
            records = observer.wait(300)
    assert len(records) == 300
    assert any(sent == 0 for _, _, sent in records)  # some replies were dropped


def test_reply_through_a_socket_like_object() -> None:
    """`serve_datagram` takes any object with a socket's `sendto` (the family of the reply
    comes from the client's address, not from the socket)."""

    class Wrapped:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.family = sock.family

        def sendto(self, data: bytes, flags: int, address: Any) -> int:
            return self.sock.sendto(data, flags, address)

    observer = RecordsObserver()
    handler = bh.datagram_handler("upper", bh.HandlerOptions(observer=observer))
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        client.settimeout(TIMEOUT)
        handler.serve_datagram(b"abc", Wrapped(server), client.getsockname())  # type: ignore[attr-defined] # a builtin's classmethod
        assert client.recv(100) == b"ABC"
    assert observer.wait(1)[0][1:] == (3, 3)
