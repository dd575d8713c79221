"""The event server's per-connection bookkeeping leaves nothing behind on a protocol, and
connection ids stay unique when threads draw them at once (issue 16's leaner paths)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from sockserve import builtins as bh
from sockserve.event import EventServer
from sockserve.events import ClientIds, NullEvents


class Echo(asyncio.Protocol):
    """Echoes, and tells how often the server passed each connection event on."""

    def __init__(self, made: list[Echo], lost: threading.Event) -> None:
        self.made_calls = 0
        self.lost_calls = 0
        self.transport: Any = None
        self.lost = lost
        made.append(self)

    def connection_made(self, transport: Any) -> None:
        self.made_calls += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_calls += 1
        self.lost.set()


def test_a_served_connection_leaves_no_hook_on_its_protocol() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    address = sock.getsockname()
    made: list[Echo] = []
    lost = threading.Event()
    server = EventServer(
        sock, lambda: Echo(made, lost), count_bytes=False, loop_factory=asyncio.new_event_loop
    )
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
        assert lost.wait(5), "the protocol never heard the connection end"
    finally:
        server.request_stop()
        thread.join(5)
        server.close_connections(0)
    (protocol,) = made
    assert (protocol.made_calls, protocol.lost_calls) == (1, 1)
    hooks = {"connection_made", "connection_lost"} & set(vars(protocol))
    assert not hooks, f"left on the protocol: {hooks}"
    assert server.active_connections == 0


def test_ids_drawn_by_threads_at_once_are_unique() -> None:
    ids = ClientIds()
    ids.restart(3, 2)
    drawn: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def draw(mine: list[int]) -> None:
        start.wait()
        for _ in range(2000):
            mine.append(ids.next())

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(n for mine in drawn for n in mine)
    assert every == list(range(3, 3 + 2 * 8000, 2))


class Told(NullEvents):
    """Numbers connections as a run's monitor does, and records `connected`."""

    def __init__(self) -> None:
        self.client_ids = ClientIds()
        self.clients: list[Any] = []

    def connected(self, client: Any) -> None:
        self.clients.append(client)


@pytest.mark.parametrize("banner", [b"", b"hi\n"], ids=["told", "hooked (banner)"])
def test_a_builtin_tells_the_server_of_its_connection_unless_something_comes_first(
    banner: bytes,
) -> None:
    """With nothing between the accept and the protocol, a builtin registers its connection
    itself (`EventServer.opened`/`closed`); with a banner it is hooked as any protocol. Either
    way the connection is counted, numbered, drained, and nothing is left behind."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    address = sock.getsockname()
    events = Told()
    builtin = bh.protocol_factory("echo", "stream", bh.HandlerOptions())
    made: list[Any] = []

    def factory() -> Any:
        made.append(builtin())
        return made[-1]

    server = EventServer(
        sock,
        factory,
        events=events,
        count_bytes=False,
        banner=banner,
        loop_factory=asyncio.new_event_loop,
    )
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    client = socket.create_connection(address, timeout=5)
    try:
        client.sendall(b"ping")
        want = banner + b"ping"
        got = b""
        while len(got) < len(want):
            got += client.recv(64)
        assert got == want
        assert server.active_connections == 1
        (protocol,) = made
        assert (protocol.event_server is server) == (not banner)
        (connected,) = events.clients
        assert (connected.id, connected.address) == (1, client.getsockname())
        assert protocol.client is connected
        server.request_stop()
        thread.join(5)
        assert not server.drain(0.05), "the drain ended with the connection still open"
    finally:
        client.close()
    assert server.drain(5), "the drain did not see the connection end"
    server.close_connections(0)
    assert server.active_connections == 0
    hooks = {"connection_made", "connection_lost"} & set(vars(protocol))
    assert not hooks, f"left on the protocol: {hooks}"
    assert server.requests_started == 1
