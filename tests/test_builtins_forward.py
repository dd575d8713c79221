"""forward (sockserve/builtins/forward.py, forward_asyncio.py): the relay with real sockets.

The proxy runs in this process on the framework's servers (or the event loop); the upstream
is a socket the test accepts on itself, so each side's half-close and reset is the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from servertools import EventsRecorder, wait_until

import sockserve as ss
from sockserve import builtins as bh
from sockserve.addresses import Address
from sockserve.builtins import forward, forward_datagram
from sockserve.event import EventServer, default_loop_factory

pytestmark = pytest.mark.leakcheck
TIMEOUT = 5.0
_warm = default_loop_factory()()  # the loop's one-time set-up keeps a pipe: not a leak
_warm.run_until_complete(asyncio.sleep(0))
_warm.close()
MODES = ["thread-splice", "thread-copy", "fork", "sync", "event"]
_LINGER_RESET = struct.pack("ii", 1, 0)


def address_of(sock: socket.socket) -> Address:
    if sock.family == socket.AF_UNIX:
        return Address("unix", path=sock.getsockname())
    host, port = sock.getsockname()[:2]
    return Address("inet6" if sock.family == socket.AF_INET6 else "inet", host=host, port=port)


@contextlib.contextmanager
def stream_proxy(
    mode: str, upstream: Address, events: Any, sock_dir: str, listen: str = "tcp"
) -> Iterator[Any]:
    """A forward proxy serving in a thread; yields the address clients connect to."""
    options = bh.HandlerOptions(observer=events, upstream=upstream)
    if mode == "event":
        family = socket.AF_UNIX if listen == "unix" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind(os.path.join(sock_dir, "p") if listen == "unix" else ("127.0.0.1", 0))
        sock.listen()
        address = sock.getsockname()
        server: Any = EventServer(
            sock, bh.protocol_factory("forward", "stream", options), count_bytes=False
        )
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield address
        finally:
            server.request_stop()
            thread.join(TIMEOUT)
            server.close_connections(1.0)
        return
    kind = {"thread": "Threading", "fork": "Forking", "sync": ""}[mode.split("-")[0]]
    base = "UnixStreamServer" if listen == "unix" else "TCPServer"
    cls = getattr(ss, kind + base)
    handler = bh.stream_handler("forward", options)
    where = os.path.join(sock_dir, "p") if listen == "unix" else ("127.0.0.1", 0)
    with cls(where, handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            yield server.server_address
        finally:
            server.shutdown()
            thread.join(TIMEOUT)


@pytest.fixture
def upstream_listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.settimeout(TIMEOUT)
        yield sock


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "thread-copy":
        monkeypatch.setattr(forward, "CAN_SPLICE", False)
    return request.param


@contextlib.contextmanager
def connected_pair(
    mode: str, listener: socket.socket, sock_dir: str, events: Any = None
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, upstream's end) of one proxied connection."""
    with stream_proxy(mode, address_of(listener), events, sock_dir) as address:
        client = socket.create_connection(address, timeout=TIMEOUT)
        try:
            far, _ = listener.accept()
            far.settimeout(TIMEOUT)
            with client, far:
                yield client, far
        finally:
            client.close()


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_client_half_close_reaches_the_upstream_which_still_answers(
    mode: str, upstream_listener: socket.socket, sock_dir: str
) -> None:
    with connected_pair(mode, upstream_listener, sock_dir) as (client, far):
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        client.shutdown(socket.SHUT_WR)  # the request, then EOF
        assert read_to_eof(far) == b"GET / HTTP/1.0\r\n\r\n"  # EOF passed on, not a close
        far.sendall(b"HTTP/1.0 200 OK\r\n\r\nbody" * 1000)
        far.close()
        assert read_to_eof(client) == b"HTTP/1.0 200 OK\r\n\r\nbody" * 1000


def test_upstream_half_close_reaches_the_client_which_still_sends(
    mode: str, upstream_listener: socket.socket, sock_dir: str
) -> None:
    with connected_pair(mode, upstream_listener, sock_dir) as (client, far):
        far.sendall(b"220 hello\r\n")
        far.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b"220 hello\r\n"
        client.sendall(b"still here" * 5000)  # the other way stays open
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(far) == b"still here" * 5000


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


#: A forked child of this process holds copies of the test's own sockets (it forks while
#: they are open), so the test's reset of one never reaches it: fork mode's resets are
#: tested through the command (test_forward.py).
IN_PROCESS_RESETS = ["thread-splice", "thread-copy", "sync", "event"]


@pytest.mark.parametrize("mode", IN_PROCESS_RESETS, indirect=True)
def test_client_reset_becomes_an_upstream_reset(
    mode: str, upstream_listener: socket.socket, sock_dir: str
) -> None:
    with connected_pair(mode, upstream_listener, sock_dir) as (client, far):
        client.sendall(b"x")
        assert far.recv(10) == b"x"
        reset(client)
        with pytest.raises(ConnectionResetError):
            far.recv(10)


@pytest.mark.parametrize("mode", IN_PROCESS_RESETS, indirect=True)
def test_upstream_reset_becomes_a_client_reset(
    mode: str, upstream_listener: socket.socket, sock_dir: str
) -> None:
    with connected_pair(mode, upstream_listener, sock_dir) as (client, far):
        far.sendall(b"y")
        assert client.recv(10) == b"y"
        reset(far)
        with pytest.raises(ConnectionResetError):
            client.recv(10)


@pytest.mark.parametrize("mode", ["thread-splice", "sync", "event"], indirect=True)
def test_refused_upstream_resets_the_client_and_the_server_goes_on(
    mode: str, sock_dir: str
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        gone = address_of(free)  # bound, never listening: connecting is refused
        events = EventsRecorder()
        with stream_proxy(mode, gone, events, sock_dir) as address:
            for _ in range(2):
                with pytest.raises(ConnectionResetError):  # on loopback, connect may see it
                    with socket.create_connection(address, timeout=TIMEOUT) as client:
                        client.recv(10)
    assert wait_until(lambda: len(events.named("warning")) == 2)
    (_, url, error), _ = events.named("upstream")
    assert url == f"tcp://{gone}" and error == "Connection refused"
    assert "reset the client's connection" in events.named("warning")[0][0]


@pytest.mark.parametrize("mode", ["thread-splice", "event"], indirect=True)
def test_unix_listener_to_tcp_upstream_counts_and_tells_the_upstream(
    mode: str, upstream_listener: socket.socket, sock_dir: str
) -> None:
    events = EventsRecorder()
    up = address_of(upstream_listener)
    with stream_proxy(mode, up, events, sock_dir, listen="unix") as address:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(address)
            far, _ = upstream_listener.accept()
            with far:
                client.sendall(b"ping")
                client.shutdown(socket.SHUT_WR)
                assert read_to_eof(far) == b"ping"
                far.sendall(b"pong!")
            assert read_to_eof(client) == b"pong!"
        assert wait_until(lambda: events.named("record"))
    assert events.named("upstream")[0][1:] == (f"tcp://{up}", None)
    assert events.named("record")[0][1:] == (4, 5)


def test_tcp_listener_to_unix_upstream(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "up")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        listener.settimeout(TIMEOUT)
        with connected_pair("thread-splice", listener, sock_dir) as (client, far):
            client.sendall(b"over unix")
            client.shutdown(socket.SHUT_WR)
            assert read_to_eof(far) == b"over unix"


def test_idle_timeout_ends_a_quiet_relay_but_not_a_busy_one(
    upstream_listener: socket.socket,
) -> None:
    client, server_side = socket.socketpair()
    with client, server_side:
        server_side.settimeout(0.3)
        up = socket.create_connection(upstream_listener.getsockname(), timeout=TIMEOUT)
        far, _ = upstream_listener.accept()
        with far:
            up.settimeout(0.3)
            relay = forward.StreamRelay(server_side, up, splice=False, idle=0.3)
            runner = threading.Thread(target=relay.run)
            runner.start()
            for _ in range(6):  # 0.6 s of traffic one way only: the relay stays
                far.sendall(b".")
                time.sleep(0.1)
            assert not relay.timed_out
            runner.join(TIMEOUT)  # then nothing: it ends
            assert relay.timed_out and not runner.is_alive()
            assert relay.moved == [0, 6]


# -- datagrams -----------------------------------------------------------------------------


@contextlib.contextmanager
def udp_upper() -> Iterator[socket.socket]:
    """An upstream answering each datagram upper-cased, in a thread, until closed."""
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.bind(("127.0.0.1", 0))
    up.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = up.recvfrom(65536)
            except TimeoutError:
                continue
            up.sendto(data.upper(), peer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield up
    finally:
        stop.set()
        thread.join(TIMEOUT)
        up.close()


@contextlib.contextmanager
def datagram_proxy(mode: str, upstream: Address, events: Any, idle: float | None) -> Iterator[Any]:
    options = bh.HandlerOptions(observer=events, upstream=upstream, idle_timeout=idle)
    if mode == "event":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        protocol = bh.protocol_factory("forward", "dgram", options)
        server: Any = EventServer(sock, protocol, count_bytes=False)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield sock.getsockname(), protocol
        finally:
            server.request_stop()
            thread.join(TIMEOUT)
            server.close_connections(1.0)
        return
    handler = bh.datagram_handler("forward", options)
    cls = ss.ThreadingUDPServer if mode == "thread" else ss.UDPServer
    with cls(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            yield server.server_address, handler
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
    reply_thread = handler.relay.thread  # type: ignore[attr-defined]
    if reply_thread is not None:
        reply_thread.join(TIMEOUT)  # it ends with the server's socket
        assert not reply_thread.is_alive()


@pytest.mark.parametrize("dmode", ["sync", "thread", "event"])
def test_each_udp_client_gets_its_own_replies(dmode: str) -> None:
    events = EventsRecorder()
    with udp_upper() as up, datagram_proxy(dmode, address_of(up), events, None) as (addr, _):
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for n, client in enumerate(clients):
                client.settimeout(TIMEOUT)
                client.sendto(b"client %d" % n, addr)
            for n, client in enumerate(clients):
                assert client.recvfrom(100) == (b"CLIENT %d" % n, addr)
                client.sendto(b"again", addr)  # the same association
                assert client.recv(100) == b"AGAIN"
        finally:
            for client in clients:
                client.close()
        assert wait_until(lambda: len(events.named("record")) == 12)
    assert len(events.named("upstream")) == 3  # one association per client


def test_idle_associations_expire() -> None:
    events = EventsRecorder()
    with udp_upper() as up, datagram_proxy("sync", address_of(up), events, 0.2) as (addr, h):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"a", addr)
            assert client.recv(10) == b"A"
            assert len(h.relay.associations) == 1
            assert wait_until(lambda: len(h.relay.associations) == 0)
            client.sendto(b"b", addr)  # a new association
            assert client.recv(10) == b"B"
    assert len(events.named("upstream")) == 2


def test_unix_datagram_listener_to_udp_upstream(sock_dir: str) -> None:
    with udp_upper() as up:
        options = bh.HandlerOptions(upstream=address_of(up))
        handler = bh.datagram_handler("forward", options)
        path = os.path.join(sock_dir, "p")
        with ss.UnixDatagramServer(path, handler) as server:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,))
            thread.start()
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                    client.bind(os.path.join(sock_dir, "c"))
                    client.settimeout(TIMEOUT)
                    client.sendto(b"via unix", path)
                    assert client.recv(100) == b"VIA UNIX"
            finally:
                server.shutdown()
                thread.join(TIMEOUT)


def test_associations_are_bounded_least_recently_used_first() -> None:
    assocs = forward_datagram.Associations(idle=10, limit=2)
    made = [forward_datagram.Association(n, None, None, last=0.0) for n in range(3)]  # type: ignore[arg-type]
    assert assocs.add(made[0]) is None
    assert assocs.add(made[1]) is None
    assert assocs.get(0, 1.0) is made[0]  # 0 used last: 1 is pushed out next
    assert assocs.add(made[2]) is made[1] and made[1].closed
    assert assocs.expired(5.0) == []
    assert assocs.expired(11.5) == [made[0], made[2]]
    assert len(assocs) == 0


def test_forward_needs_an_upstream() -> None:
    for make in (bh.stream_handler, bh.datagram_handler):
        with pytest.raises(ValueError, match="upstream"):
            make("forward", bh.HandlerOptions())
    with pytest.raises(ValueError, match="upstream"):
        bh.protocol_factory("forward", "stream", bh.HandlerOptions())
    assert isinstance(
        bh.protocol_factory(
            "forward", "dgram", bh.HandlerOptions(upstream=Address("unix", path="x"))
        )(),
        asyncio.DatagramProtocol,
    )
