"""LeanDatagramPart: datagram builtins answered on the loop thread, in batches."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from typing import Any

import pytest
from servertools import EventsRecorder, config_for

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


# -- -vv: each datagram through a watch, in order -------------------------------------------------


class DataEvents(EventsRecorder):
    """An events interface that wants every chunk (-vv)."""

    wants_data = True


def _lean_echo_server(events: EventsRecorder, watch_data: bool) -> Any:
    """A plain framework UDP server with the lean part, answering with the echo builtin."""
    from sockserve import builtins as bh

    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=events))
    attrs = {"monitor": events, "watch_data": watch_data}
    return type("Server", (LeanDatagramPart, ss.UDPServer), attrs)(("127.0.0.1", 0), handler)


def test_watched_datagrams_show_in_out_and_record_each_in_turn() -> None:
    events = DataEvents()
    with _lean_echo_server(events, watch_data=True) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            _send_burst(server, client, 4)
            server.handle_ready()  # one wake-up answers the four
            assert [client.recv(100) for _ in range(4)] == [b"d%03d" % i for i in range(4)]
            here = client.getsockname()
    expected: list[tuple[Any, ...]] = []
    for i in range(4):
        data = b"d%03d" % i
        expected += [("data", here, "in", data), ("data", here, "out", data)]
        expected.append(("record", here, 4, 4))  # the builtin's own record, once
    assert events.calls == expected


def test_unwatched_datagrams_reach_the_handler_with_the_servers_own_socket() -> None:
    """Without -vv nothing is wrapped: the handler gets the server's socket itself."""
    socks: list[Any] = []

    class Keep(Upper):
        @classmethod
        def serve_datagram(cls, data: bytes, sock: socket.socket, client: object) -> None:
            socks.append(sock)
            super().serve_datagram(data, sock, client)

    events = DataEvents()
    cls = type("Server", (LeanDatagramPart, ss.UDPServer), {"monitor": events})
    with cls(("127.0.0.1", 0), Keep) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"a", server.server_address)
            server.handle_ready()
            assert client.recv(10) == b"A"
        assert socks == [server.socket]
    assert events.calls == []


@pytest.mark.parametrize("mode", ["sync", "thread"])
@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_vv_json_shows_back_to_back_datagrams_one_after_another(
    sock_dir: str, transport: str, mode: str
) -> None:
    """The real command, --json -vv: each datagram's in, out and request, then the next's."""
    from clitools import finish, spawn

    count = 8
    if transport == "udp":
        where, family = "127.0.0.1:0", socket.AF_INET
    else:
        where, family = os.path.join(sock_dir, "vv.sock"), socket.AF_UNIX
    child = spawn([transport, where, "-H", "echo", "-c", mode, "--json", "-vv"])
    try:
        seen = io.BytesIO()
        child.logfile_read = seen
        child.expect(rb'"url": "[\w-]+://([^"]+)"')
        url = child.match.group(1).decode()
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            if transport == "udp":
                client.bind(("127.0.0.1", 0))
                host, _, port = url.rpartition(":")
                address: Any = (host, int(port))
            else:
                client.bind(os.path.join(sock_dir, "client.sock"))
                address = url
            payloads = [b"dgram-%d" % i for i in range(count)]
            for payload in payloads:  # back to back, before any answer is read
                client.sendto(payload, address)
            assert [client.recv(100) for _ in payloads] == payloads
        for _ in payloads:
            child.expect(rb'"event": "request"')
        child.sendintr()
        status, _ = finish(child)
    finally:
        child.close(force=True)
    out = seen.getvalue().decode()
    assert status == 0, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    shown = [
        (e["event"], e["direction"], e["hex"])
        if e["event"] == "data"
        else (e["event"], e["bytes_in"], e["bytes_out"])
        for e in events
        if e["event"] in ("data", "request")
    ]
    expected: list[tuple[str, Any, Any]] = []
    for payload in payloads:
        expected += [("data", "in", payload.hex()), ("data", "out", payload.hex())]
        expected.append(("request", len(payload), len(payload)))
    assert shown == expected
