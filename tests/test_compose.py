"""compose: the class for every family × type × concurrency; the parts a configuration gets."""

from __future__ import annotations

import socket
import sys
import threading

import pytest
from servertools import (
    USER_HANDLER,
    config_for,
)

import sockserve as ss
from sockserve.compose import server_class
from sockserve.parts.accept_batch import AcceptBatchPart
from sockserve.parts.acceptors import AcceptingThreadsPart
from sockserve.parts.datagrams import LeanDatagramPart
from sockserve.parts.pinning import PinningPart
from sockserve.parts.requests import RequestsPart
from sockserve.parts.unix_file import UnixFilePart

pytestmark = pytest.mark.leakcheck

FAMILIES = ["inet", "inet6", "unix"]
TYPES = ["stream", "dgram"]
CONCURRENCIES = ["sync", "thread", "fork", "event"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("socktype", TYPES)
@pytest.mark.parametrize("concurrency", CONCURRENCIES)
def test_server_class_composition(family: str, socktype: str, concurrency: str) -> None:
    cls = server_class(family, socktype, concurrency)
    base = {
        ("inet", "stream"): ss.TCPServer,
        ("inet6", "stream"): ss.TCPServer,
        ("inet", "dgram"): ss.UDPServer,
        ("inet6", "dgram"): ss.UDPServer,
        ("unix", "stream"): ss.UnixStreamServer,
        ("unix", "dgram"): ss.UnixDatagramServer,
    }[(family, socktype)]
    assert issubclass(cls, base)
    assert issubclass(cls, RequestsPart)
    assert cls.__mro__.index(RequestsPart) < cls.__mro__.index(base)  # parts before the base
    assert issubclass(cls, UnixFilePart) == (family == "unix")
    assert issubclass(cls, ss.ThreadingMixIn) == (concurrency == "thread")
    assert issubclass(cls, ss.ForkingMixIn) == (concurrency == "fork")
    expected_family = {
        "inet": socket.AF_INET,
        "inet6": socket.AF_INET6,
        "unix": socket.AF_UNIX,
    }[family]
    assert cls.address_family == expected_family
    expected_type = socket.SOCK_STREAM if socktype == "stream" else socket.SOCK_DGRAM
    assert cls.socket_type == expected_type
    assert cls.max_packet_size >= 65536  # the tool never truncates a datagram


@pytest.mark.parametrize(
    ("args", "inline"),
    [
        (["udp", ":0", "-H", "echo", "-c", "thread"], True),
        (["udp", ":0", "-H", "time", "-c", "thread"], True),
        (["udp", ":0", "-H", "stdout", "-c", "thread"], False),  # a stalled reader may block
        (["udp", ":0", "-H", "echo", "-c", "sync"], False),
        (["udp", ":0", "-H", "stdio", "-c", "thread"], False),
        (["tcp", ":0", "-H", "echo", "-c", "thread"], False),
    ],
)
def test_datagram_builtins_that_never_wait_run_inline_in_thread_mode(
    args: list[str], inline: bool, monkeypatch: pytest.MonkeyPatch, captured: list
) -> None:
    from sockserve import builtins as bh
    from sockserve.compose import make_server

    config = config_for(captured, *args)
    threaded: list[object] = []
    original = ss.ThreadingMixIn.process_request

    def spy(self, request, client_address):  # type: ignore[no-untyped-def]
        threaded.append(client_address)
        return original(self, request, client_address)

    monkeypatch.setattr(ss.ThreadingMixIn, "process_request", spy)
    make = bh.datagram_handler if config.socktype == "dgram" else bh.stream_handler
    server = make_server(config, make(config.handler.builtin, bh.HandlerOptions()))
    assert (
        isinstance(server, LeanDatagramPart) and isinstance(server, ss.ThreadingMixIn)
    ) is inline
    if config.transport != "udp" or config.handler.builtin != "echo" or not inline:
        server.server_close()
        return
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for i in range(20):
                client.sendto(b"n%d" % i, server.server_address)
                assert client.recv(100) == b"n%d" % i
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert threaded == []  # every datagram answered on the loop thread, none handed to a thread


@pytest.mark.parametrize(
    ("args", "lean"),
    [
        (["udp", ":0", "-H", "echo", "-c", "sync"], True),
        (["udp", ":0", "-H", "stdout", "-c", "sync"], True),
        (["udp", ":0", "-H", "upper", "-c", "thread"], True),  # inline in thread mode
        (["udp", ":0", "-H", "stdout", "-c", "thread"], False),  # a thread per datagram
        (["tcp", ":0", "-H", "echo", "-c", "sync"], False),
    ],
)
def test_lean_datagram_path_is_chosen_for_builtins_on_the_loop_thread(
    args: list[str], lean: bool, captured: list
) -> None:
    from sockserve import builtins as bh
    from sockserve.compose import make_server

    config = config_for(captured, *args)
    make = bh.datagram_handler if config.socktype == "dgram" else bh.stream_handler
    server = make_server(config, make(config.handler.builtin, bh.HandlerOptions()))
    server.server_close()
    assert isinstance(server, LeanDatagramPart) is lean


@pytest.mark.parametrize(
    ("args", "reuse", "batch", "accepting_threads"),
    [
        (["tcp", ":0", "-H", "echo"], True, 1, True),
        (["tcp", ":0", "-H", "echo", "--max-threads", "4"], True, 1, True),  # the bound
        (["tcp", ":0", "-H", "echo", "--workers", "2"], True, 16, False),  # shared listener
        (["tcp", ":0", "-H", USER_HANDLER], False, 16, False),  # a user's
        (["tcp", ":0", "-H", "echo", "-c", "sync"], True, 1, False),
        (["tcp", ":0", "-H", "echo", "-c", "fork"], True, 16, False),  # a fork per connection
        (["tcp", ":0", "-H", USER_HANDLER, "-c", "fork"], False, 16, False),
        (["udp", ":0", "-H", "stdout", "-c", "thread"], True, 1, False),
        (["udp", ":0", "-H", "echo", "-c", "fork"], True, 1, False),
    ],
)
def test_how_thread_mode_takes_connections(
    args: list[str], reuse: bool, batch: int, accepting_threads: bool, captured: list
) -> None:
    """Builtins: handler threads accept for themselves; otherwise the loop accepts (up to 16
    waiting connections per wake-up) and hands each over; builtins' threads are reused."""
    from sockserve import builtins as bh
    from sockserve.compose import make_server

    config = config_for(captured, *args)
    if config.handler.builtin is None:
        handler = config.handler.cls
    elif config.socktype == "dgram":
        handler = bh.datagram_handler(config.handler.builtin, bh.HandlerOptions())
    else:
        handler = bh.stream_handler(config.handler.builtin, bh.HandlerOptions())
    server = make_server(config, handler)
    try:
        accept_batch = server.accept_batch if isinstance(server, AcceptBatchPart) else 1
        assert (server.reuse_threads, accept_batch) == (reuse, batch)
        assert isinstance(server, AcceptingThreadsPart) is accepting_threads
        assert server.loop_handles_requests is not accepting_threads
        assert server.socket.getblocking() is (batch == 1)
    finally:
        server.server_close()


@pytest.mark.parametrize(
    ("extra", "gil", "pinned"),
    [
        ((), True, True),  # the builtins: pinned by default
        ((), False, False),  # ... but not when threads run in parallel (free-threaded)
        (("--pin",), False, True),  # asked for: pinned all the same
        (("--no-pin",), True, False),
        (("--workers", "2"), True, False),  # workers: one listener, not pinned
    ],
)
def test_which_servers_pin_their_threads(
    captured: list,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    gil: bool,
    pinned: bool,
) -> None:
    from sockserve import builtins as bh
    from sockserve.compose import make_server

    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: gil, raising=False)
    config = config_for(captured, "tcp", "127.0.0.1:0", "-H", "echo", *extra)
    server = make_server(config, bh.stream_handler("echo", bh.HandlerOptions()))
    try:
        assert isinstance(server, PinningPart) is pinned
    finally:
        server.server_close()
