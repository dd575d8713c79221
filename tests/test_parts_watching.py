"""WatchPart: a user's handler counted by the kernel (TCP) or a watch (unix, datagrams)."""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from typing import Any

import pytest
from servertools import (
    USER_HANDLER,
    EventsRecorder,
    config_for,
    stop_serving,
)

import sockserve as ss
from sockserve.parts.watching import WatchPart
from sockserve.watch import WatchedSocket

pytestmark = pytest.mark.leakcheck


# -- a user handler's TCP byte counts, from the kernel ---------------------------------------------


needs_kernel_counts = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="TCP_INFO byte counts are Linux's"
)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        try:
            server, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    server.settimeout(5)
    return server, client


@needs_kernel_counts
@pytest.mark.parametrize("client_closes", [False, True])
def test_kernel_counts_what_the_handler_read_and_wrote(client_closes: bool) -> None:
    from sockserve.parts.watching import kernel_counts_work, tcp_byte_counts

    server, client = _tcp_pair()
    with server, client:
        assert kernel_counts_work(server)
        client.sendall(b"0123456789")
        if client_closes:
            client.shutdown(socket.SHUT_WR)  # its FIN takes a sequence number, not a byte
        assert server.recv(4) == b"0123"  # six bytes left unread
        server.sendall(b"abc")
        assert client.recv(10) == b"abc"
        assert tcp_byte_counts(server) == (4, 3)
        assert server.recv(100) == b"456789"
        if client_closes:
            assert server.recv(100) == b""
        assert tcp_byte_counts(server) == (10, 3)


@needs_kernel_counts
def test_kernel_counts_include_what_is_still_queued_to_send() -> None:
    from sockserve.parts.watching import tcp_byte_counts

    server, client = _tcp_pair()
    with server, client:
        server.setblocking(False)
        sent = 0
        try:
            while True:  # until the client's window and our send buffer are full
                sent += server.send(b"x" * 65536)
        except BlockingIOError:
            pass
        assert tcp_byte_counts(server) == (0, sent)


@needs_kernel_counts
def test_kernel_counts_after_the_client_reset() -> None:
    from sockserve.parts.watching import tcp_byte_counts

    server, client = _tcp_pair()
    with server, client:
        client.sendall(b"hello")
        assert server.recv(5, socket.MSG_WAITALL) == b"hello"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        with pytest.raises(ConnectionResetError):
            server.recv(10)
        assert tcp_byte_counts(server) == (5, 0)


def _shout_once(
    captured: list,
    args: list[str],
    socket_type: type,
    closes: bool = False,
    counts: bool = True,
    chunks: list[tuple[str, bytes]] | None = None,
) -> list[tuple]:
    """Serve a user's handler (it shouts the first line back twice, then closes its socket
    itself if `closes`) for one client sending b"hey\\n"; check the handler got a
    `socket_type` socket; return the monitor's records (it wants byte counts if `counts`).
    With `chunks`, the monitor wants every chunk (-vv) and appends them there."""
    from clitools import RecordsObserver

    from sockserve.compose import make_server

    class Monitor(RecordsObserver):
        wants_counts = counts
        wants_data = chunks is not None

        def connected(self, client: object) -> None:
            pass

        def data(self, client: object, direction: str, data: bytes) -> None:
            assert chunks is not None
            chunks.append((direction, data))

    seen: list[type] = []

    class Shout(ss.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(type(self.connection))
            self.wfile.write(self.rfile.readline().upper() * 2)
            if closes:
                self.connection.close()

    config = config_for(captured, *args, "-H", USER_HANDLER)
    monitor = Monitor()
    server = make_server(config, Shout, monitor)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        family = socket.AF_UNIX if config.family == "unix" else socket.AF_INET
        with socket.socket(family) as sock:
            sock.settimeout(5)
            sock.connect(server.server_address)
            sock.sendall(b"hey\n")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(100):
                reply += chunk
        assert reply == b"HEY\n" * 2
        if counts:
            assert monitor.wait(1)
    finally:
        stop_serving(server, thread)
    assert seen == [socket_type]
    return [r[1:] for r in monitor.records]


@needs_kernel_counts
@pytest.mark.parametrize("concurrency", ["thread", "sync"])
@pytest.mark.parametrize("closes", [False, True], ids=["server-closes", "handler-closes"])
def test_user_handler_records_come_from_the_kernel(
    captured: list, concurrency: str, closes: bool
) -> None:
    """On TCP a user's handler gets a socket without counting wrappers around recv and send;
    its record is still exact, also when the handler closes the socket itself."""
    from sockserve.parts.watching import KernelCountedSocket

    args = ["tcp", "127.0.0.1:0", "-c", concurrency]
    assert _shout_once(captured, args, KernelCountedSocket, closes) == [(4, 8)]
    assert KernelCountedSocket.recv_into is socket.socket.recv_into  # the C method itself
    assert KernelCountedSocket.sendall is socket.socket.sendall


def test_unix_user_handler_is_counted_by_the_watch(captured: list, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "own.sock")
    assert _shout_once(captured, ["unix", path], WatchedSocket) == [(4, 8)]
    assert _shout_once(captured, ["unix", path], WatchedSocket, closes=True) == [(4, 8)]


@pytest.mark.parametrize("proto", ["tcp", "unix"])
@pytest.mark.parametrize("concurrency", ["thread", "sync"])
def test_user_handler_gets_its_socket_bare_when_no_counts_are_shown(
    captured: list, sock_dir: str, proto: str, concurrency: str
) -> None:
    """With no report showing byte counts (--quiet), nothing is wrapped around a user's
    socket and nothing is counted."""
    where = "127.0.0.1:0" if proto == "tcp" else os.path.join(sock_dir, "bare.sock")
    args = [proto, where, "-c", concurrency]
    assert _shout_once(captured, args, socket.socket, counts=False) == []
    assert _shout_once(captured, args, socket.socket, closes=True, counts=False) == []


def test_a_user_datagram_handler_is_counted() -> None:
    """The datagram received, and what the handler sent back through the server's socket."""
    events = EventsRecorder()

    class Shout(ss.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper() * 2)

    cls = type("Server", (WatchPart, ss.UDPServer), {"monitor": events})
    with cls(("127.0.0.1", 0), Shout) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            client.sendto(b"hey", server.server_address)
            server.handle_request()
            assert client.recv(100) == b"HEYHEY"
            here = client.getsockname()
    assert events.named("record") == [(here, 3, 6)]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_user_stream_handler_is_counted_on_a_plain_server(transport: str, sock_dir: str) -> None:
    events = EventsRecorder()

    class Shout(ss.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper() * 2)

    if transport == "tcp":
        base: type = ss.TCPServer
        address: Any = ("127.0.0.1", 0)
    else:
        base, address = ss.UnixStreamServer, os.path.join(sock_dir, "count.sock")
    cls = type("Server", (WatchPart, base), {"monitor": events})
    with cls(address, Shout) as server:
        with socket.socket(server.address_family) as client:
            client.settimeout(5)
            client.connect(server.server_address)
            client.sendall(b"hey\n")
            server.handle_request()
            assert client.recv(100) == b"HEY\n" * 2
    [(_, received, sent)] = events.named("record")
    assert (received, sent) == (4, 8)


@pytest.mark.parametrize("proto", ["tcp", "unix"])
@pytest.mark.parametrize("concurrency", ["thread", "sync"])
def test_with_vv_a_user_handler_is_watched_and_shows_each_chunk(
    captured: list, sock_dir: str, proto: str, concurrency: str
) -> None:
    """-vv: a user's handler gets a watched socket (also on TCP, instead of the kernel's
    counts); its rfile and wfile chunks are reported, and its record is exact."""
    where = "127.0.0.1:0" if proto == "tcp" else os.path.join(sock_dir, "vv.sock")
    args = [proto, where, "-c", concurrency]
    chunks: list[tuple[str, bytes]] = []
    assert _shout_once(captured, args, WatchedSocket, chunks=chunks) == [(4, 8)]
    assert chunks == [("in", b"hey\n"), ("out", b"HEY\nHEY\n")]


class DataEvents(EventsRecorder):
    wants_data = True


@pytest.mark.parametrize(
    "args",
    [
        ["tcp", "127.0.0.1:0", "-H", "echo", "-c", "thread"],  # threads that accept
        ["tcp", "127.0.0.1:0", "-H", "echo", "-c", "sync"],
        ["udp", "127.0.0.1:0", "-H", "echo", "-c", "sync"],  # the lean path, through a watch
        ["udp", "127.0.0.1:0", "-H", "echo", "-c", "thread"],  # the lean path too
    ],
)
def test_with_vv_a_builtin_is_watched_and_records_once(captured: list, args: list[str]) -> None:
    from sockserve import builtins as bh
    from sockserve.compose import make_server
    from sockserve.parts.datagrams import LeanDatagramPart

    config = config_for(captured, *args)
    events = DataEvents()
    options = bh.HandlerOptions(observer=events)
    stream = config.socktype == "stream"
    make = bh.stream_handler if stream else bh.datagram_handler
    server = make_server(config, make("echo", options), events)
    assert isinstance(server, WatchPart)
    assert isinstance(server, LeanDatagramPart) == (not stream)  # -vv keeps the lean path
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.settimeout(5)
            if stream:
                sock.connect(server.server_address)
                sock.sendall(b"hi")
            else:
                sock.bind(("127.0.0.1", 0))
                sock.sendto(b"hi", server.server_address)
            assert sock.recv(10) == b"hi"
            here = sock.getsockname()
        with events.changed:
            assert events.changed.wait_for(lambda: events.named("record"), 5)
    finally:
        stop_serving(server, thread)
    assert events.named("data") == [(here, "in", b"hi"), (here, "out", b"hi")]
    assert events.named("record") == [(here, 2, 2)]  # the builtin's own, not the part's too


def test_with_vv_the_lean_path_watches_each_datagram_on_the_loop_thread() -> None:
    """Thread mode with both parts, as compose builds it for -vv: a burst of datagrams is
    answered on the loop thread, each one's in, out and record before the next's."""
    from sockserve import builtins as bh
    from sockserve.parts.datagrams import LeanDatagramPart

    events = DataEvents()
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=events))
    bases = (LeanDatagramPart, WatchPart, ss.ThreadingMixIn, ss.UDPServer)
    attrs = {"monitor": events, "watch_data": True, "record_counts": False}
    before = threading.active_count()
    with type("Server", bases, attrs)(("127.0.0.1", 0), handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            payloads = [b"one", b"two", b"three"]
            for payload in payloads:
                client.sendto(payload, server.server_address)
            server.handle_ready()
            assert threading.active_count() == before  # no thread per datagram
            assert [client.recv(100) for _ in payloads] == payloads
            here = client.getsockname()
    expected: list[tuple[Any, ...]] = []
    for payload in payloads:
        expected += [("data", here, "in", payload), ("data", here, "out", payload)]
        expected.append(("record", here, len(payload), len(payload)))
    assert events.calls == expected
