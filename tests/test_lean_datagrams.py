"""LeanDatagramEndpoint: UDP builtins in event mode answered from the loop's reader callback,
on both loops; and the datagram servers that keep the transport."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clitools import RecordsObserver
from servertools import LOOPS

from sockserve import builtins as bh
from sockserve.event import EventServer
from sockserve.events import Client, ClientIds
from sockserve.lean_datagrams import BATCH, LeanDatagramEndpoint

pytestmark = pytest.mark.leakcheck


class Running:
    """An EventServer serving in a thread until `stop()`, which closes it as the runner does."""

    def __init__(self, server: EventServer) -> None:
        self.server = server
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="lean-server")
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.returned.set()

    def stop(self) -> None:
        self.server.request_stop()
        assert self.returned.wait(5), "serve_forever did not return"
        self.thread.join(5)
        assert self.server.drain(5)  # the endpoint lost: nothing buffered to wait for
        self.server.close_connections(0)
        assert self.server.socket.fileno() == -1


@pytest.fixture
def lean_made(monkeypatch: pytest.MonkeyPatch) -> list[LeanDatagramEndpoint]:
    """The lean endpoints the event servers make."""
    made: list[LeanDatagramEndpoint] = []

    class Seen(LeanDatagramEndpoint):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr("sockserve.event.LeanDatagramEndpoint", Seen)
    return made


@pytest.fixture(params=list(LOOPS))
def serve(
    request: pytest.FixtureRequest, lean_made: list[LeanDatagramEndpoint]
) -> Iterator[Callable[..., Running]]:
    """serve(sock, factory) runs an EventServer for a builtin's factory on `sock`."""
    running: list[Running] = []

    def start(sock: socket.socket, factory: Any, **kwargs: Any) -> Running:
        server = EventServer(sock, factory, count_bytes=False, loop_factory=LOOPS[request.param])
        for name, value in kwargs.items():
            setattr(server, name, value)
        run = Running(server)
        running.append(run)
        return run

    yield start
    for run in running:
        if run.thread.is_alive():
            run.stop()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def udp_client(server: socket.socket) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    client.connect(server.getsockname())
    return client


def test_echo_answers_a_burst_past_the_batch_and_empty_datagrams_too(
    serve: Callable[..., Running], lean_made: list[LeanDatagramEndpoint]
) -> None:
    sock = udp_socket()
    run = serve(sock, bh.protocol_factory("echo", "dgram", bh.HandlerOptions()))
    sent = [b"" if i % 7 == 0 else b"%d" % i for i in range(3 * BATCH + 5)]
    with udp_client(sock) as client:
        client.send(b"first")
        assert client.recv(100) == b"first"
        for data in sent:  # all waiting at once: several wake-ups' worth
            client.send(data)
        assert [client.recv(100) for _ in sent] == sent
    run.stop()
    assert len(lean_made) == 1


def test_each_datagram_is_recorded_as_a_client_with_its_own_id(
    serve: Callable[..., Running], lean_made: list[LeanDatagramEndpoint]
) -> None:
    sock = udp_socket()
    observer = RecordsObserver()
    observer.client_ids = ClientIds()  # type: ignore[attr-defined]  # the monitor's, in a run
    run = serve(sock, bh.protocol_factory("upper", "dgram", bh.HandlerOptions(observer=observer)))
    with udp_client(sock) as client:
        client.send(b"hi")
        assert client.recv(100) == b"HI"
        client.send(b"")
        assert client.recv(100) == b""
        peer = client.getsockname()
    records = observer.wait(2)
    assert all(type(client) is Client for client, _, _ in records)
    assert [(c.address, c.id, n_in, n_out) for c, n_in, n_out in records] == [
        (peer, 1, 2, 2),
        (peer, 2, 0, 0),
    ]
    run.stop()
    assert len(lean_made) == 1


def test_a_reply_udp_cannot_carry_is_lost_and_counts_nothing_out(
    serve: Callable[..., Running],
) -> None:
    sock = udp_socket()
    observer = RecordsObserver()
    options = bh.HandlerOptions(reply=b"x" * 70_000, observer=observer)  # past 65,507 bytes
    run = serve(sock, bh.protocol_factory("reply", "dgram", options))
    with udp_client(sock) as client:
        client.send(b"?")
        ((_, received, sent),) = observer.wait(1)
        assert (received, sent) == (1, 0)
        client.setblocking(False)
        with pytest.raises(BlockingIOError):  # sendto failed (EMSGSIZE): nothing was queued
            client.recv(100_000)
    run.stop()


def test_the_request_limit_stops_the_server_after_the_last_answer(
    serve: Callable[..., Running],
) -> None:
    sock = udp_socket()
    observer = RecordsObserver()
    factory = bh.protocol_factory("echo", "dgram", bh.HandlerOptions(observer=observer))
    run = serve(sock, factory, request_limit=2)
    with udp_client(sock) as client:
        for data in (b"a", b"b"):
            client.send(data)
            assert client.recv(10) == data
        assert run.returned.wait(5)  # stopped by itself
    assert run.server.stop_reason == "request limit reached"
    assert [r[1:] for r in observer.records] == [(1, 1), (1, 1)]
    run.stop()


def test_a_stop_is_heard_while_datagrams_keep_coming(serve: Callable[..., Running]) -> None:
    sock = udp_socket()
    run = serve(sock, bh.protocol_factory("echo", "dgram", bh.HandlerOptions()))
    flooding = threading.Event()
    done = threading.Event()

    def flood() -> None:
        with udp_client(sock) as client:
            client.setblocking(False)
            while not done.is_set():
                try:
                    client.send(b"x" * 64)
                    client.recv(100)
                except OSError:
                    pass  # nothing back yet, or the server is gone
                flooding.set()

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        assert flooding.wait(5)
        run.stop()  # a reader callback answers at most BATCH datagrams: the stop gets its turn
    finally:
        done.set()
        sender.join(5)


@pytest.mark.parametrize("case", ["-vv", "stdout", "unix-dgram"])
def test_the_transport_serves_what_the_reader_cannot(
    case: str, serve: Callable[..., Running], lean_made: list[LeanDatagramEndpoint], sock_dir: str
) -> None:
    """-vv watches each datagram, stdout writes it out, a unix datagram may not fit a fixed
    buffer: these keep the datagram transport."""
    observer = RecordsObserver()
    observer.wants_data = case == "-vv"
    name = "stdout" if case == "stdout" else "echo"
    out_r, out_w = os.pipe()
    with os.fdopen(out_w, "wb", buffering=0) as output, os.fdopen(out_r, "rb") as out:
        options = bh.HandlerOptions(observer=observer, output=output, lines=True)
        if case == "unix-dgram":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(os.path.join(sock_dir, "s"))
            client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            client.settimeout(10)
            client.bind(os.path.join(sock_dir, "c"))
            client.connect(sock.getsockname())
        else:
            sock = udp_socket()
            client = udp_client(sock)
        run = serve(sock, bh.protocol_factory(name, "dgram", options))
        with client:
            client.send(b"hi")
            if name == "stdout":
                assert out.readline() == b"hi\n"
            else:
                assert client.recv(100) == b"hi"
            observer.wait(1)
        run.stop()
    assert lean_made == []
