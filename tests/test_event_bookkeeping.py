"""The event server's per-connection bookkeeping leaves nothing behind on a protocol, and
connection ids stay unique when threads draw them at once (issue 16's leaner paths)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from sockserve.event import EventServer
from sockserve.events import ClientIds


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
