"""WholeDatagramPart: unix datagrams of any size read whole (`sockserve.parts.whole_datagrams`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sockserve import socketserver as ss
from sockserve.parts import whole_datagrams
from sockserve.parts.whole_datagrams import WholeDatagramPart

BIG = 150_000


class Server(WholeDatagramPart, ss.UnixDatagramServer):
    max_packet_size = 65536


@pytest.fixture
def served(sock_dir: str) -> Iterator[tuple[Server, socket.socket, str]]:
    path = os.path.join(sock_dir, "s")
    server = Server(path, ss.BaseRequestHandler)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.bind(os.path.join(sock_dir, "c"))
    try:
        yield server, client, path
    finally:
        client.close()
        server.server_close()


@pytest.mark.parametrize("peek", [True, False])
def test_datagrams_of_every_size_are_read_whole(
    served: tuple[Server, socket.socket, str], peek: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the size peek (Linux) and without it (SO_RCVBUF, as on macOS)."""
    monkeypatch.setattr(
        whole_datagrams, "PEEK_TELLS_SIZE", peek and whole_datagrams.PEEK_TELLS_SIZE
    )
    server, client, path = served
    payloads = [b"", b"x", os.urandom(BIG), os.urandom(65536)]
    got: list[Any] = []
    for payload in payloads:  # one at a time: queued datagrams count in the sender's buffer
        client.sendto(payload, path)
        got.append(server.get_request())
    assert [data for (data, _), _ in got] == payloads
    assert all(sock is server.socket for (_, sock), _ in got)
    assert {client_address for _, client_address in got} == {client.getsockname()}


def test_recvfrom_whole_takes_recvfrom_flags(served: tuple[Server, socket.socket, str]) -> None:
    server, client, path = served
    with pytest.raises(BlockingIOError):
        server.recvfrom_whole(socket.MSG_DONTWAIT)
    client.sendto(b"y" * BIG, path)
    data, _ = server.recvfrom_whole(socket.MSG_DONTWAIT)
    assert data == b"y" * BIG
