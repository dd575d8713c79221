"""LeanDatagramPart: datagram builtins answered on the loop thread, in batches."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from servertools import (
    config_for,
)

import sockserve as ss
from sockserve.parts.datagrams import LeanDatagramPart

pytestmark = pytest.mark.leakcheck


def _burst_server(captured: list, *extra: str):
    """A sync UDP echo server (lean path) with its observer; not yet serving."""
    from clitools import RecordsObserver

    from sockserve import builtins as bh
    from sockserve.compose import make_server

    config = config_for(captured, "udp", "127.0.0.1:0", "-H", "echo", "-c", "sync", *extra)
    observer = RecordsObserver()
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    return make_server(config, handler), observer


def _send_burst(server: Any, client: socket.socket, count: int) -> None:
    """Queue `count` datagrams on the server before its loop runs, so one wake-up sees all."""
    for i in range(count):
        client.sendto(b"d%03d" % i, server.server_address)


def test_a_burst_of_datagrams_is_answered_in_batches_every_one_once(captured: list) -> None:
    server, observer = _burst_server(captured)
    assert server.datagram_batch > 1
    count = server.datagram_batch * 3 + 5  # several batches and a partial one
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        _send_burst(server, client, count)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            got = sorted(client.recv(100) for _ in range(count))
        finally:
            server.shutdown()
            thread.join()
            server.server_close()
    assert got == [b"d%03d" % i for i in range(count)]
    assert server.requests_started == count
    assert len(observer.records) == count


@pytest.mark.parametrize("limit", [1, 3])
def test_request_limit_is_exact_when_more_datagrams_wait(captured: list, limit: int) -> None:
    extra = ("--once",) if limit == 1 else ("--max-requests", str(limit))
    server, observer = _burst_server(captured, *extra)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        _send_burst(server, client, 10)
        thread = threading.Thread(target=server.serve_forever, args=(30,))
        thread.start()
        thread.join(5)  # the limit stops the loop by itself, well before poll_interval
        stopped = not thread.is_alive()
        if not stopped:
            server.shutdown()
            thread.join()
        server.server_close()
        answers = [client.recv(100) for _ in range(limit)]
        client.settimeout(0.05)
        with pytest.raises(TimeoutError):
            client.recv(100)  # the other datagrams were left unanswered
    assert stopped
    assert server.stop_reason == "request limit reached"
    assert answers == [b"d%03d" % i for i in range(limit)]
    assert server.requests_started == limit
    assert len(observer.records) == limit


class Upper(ss.BaseRequestHandler):
    """A handler class with the builtins' `serve_datagram`, which the lean path calls."""

    @classmethod
    def serve_datagram(cls, data: bytes, sock: socket.socket, client: object) -> None:
        sock.sendto(data.upper(), client)


def test_waiting_datagrams_are_answered_in_one_wake_up_without_a_handler() -> None:
    cls = type("Server", (LeanDatagramPart, ss.UDPServer), {})
    with cls(("127.0.0.1", 0), Upper) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for data in (b"a", b"b", b"c"):
                client.sendto(data, server.server_address)
            server.handle_ready()  # the loop's step once the socket is readable
            assert sorted(client.recv(10) for _ in range(3)) == [b"A", b"B", b"C"]
    assert server.requests_started == 3
