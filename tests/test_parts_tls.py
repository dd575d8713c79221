"""TlsPart and TlsWrapPart: each connection wrapped at accept, its handshake in the request's
own thread, child or the sync loop, with a time limit; a user's handler gets the TLS socket."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from servertools import EventsRecorder

from sockserve import socketserver as ss
from sockserve.compose import make_server
from sockserve.config import build_config
from sockserve.loading import LoadedHandler
from sockserve.parts.tls import TlsPart, TlsWrapPart
from sockserve.tls import TlsSetup, prepare_tls


class Lines(ss.StreamRequestHandler):
    """A user's handler: a line in, the line back with a prefix, through rfile and wfile."""

    def handle(self) -> None:
        self.wfile.write(b"got " + self.rfile.readline())


@pytest.fixture
def setup() -> Iterator[TlsSetup]:
    made = prepare_tls(build_config(proto="tcp", address="127.0.0.1:0", tls=True))
    yield made
    made.close()


def serving(
    setup: TlsSetup, mode: str, events: EventsRecorder, **options: Any
) -> tuple[Any, threading.Thread]:
    handler = LoadedHandler(name="Lines", cls=Lines, kind="stream")
    config = build_config(
        proto="tcp", address="127.0.0.1:0", tls=True, concurrency=mode, handler=handler, **options
    )
    server = make_server(config, Lines, events, setup)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    return server, thread


def client(setup: TlsSetup, address: Any) -> ssl.SSLSocket:
    assert setup.ca_path is not None
    context = ssl.create_default_context(cafile=setup.ca_path)
    raw = socket.create_connection(address, timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def stop(server: Any, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.mark.parametrize("mode", ["thread", "sync", "fork"])
def test_a_users_handler_reads_and_writes_through_tls(setup: TlsSetup, mode: str) -> None:
    events = EventsRecorder()
    server, thread = serving(setup, mode, events)
    try:
        assert isinstance(server, TlsPart) and isinstance(server, TlsWrapPart)
        with client(setup, server.server_address) as sock:
            sock.sendall(b"line one\n")
            assert sock.recv(100) == b"got line one\n"
            assert sock.recv(100) == b""  # the server's close_notify, then its FIN
    finally:
        stop(server, thread)
    if mode != "fork":  # a forked child's events go to the run's monitor, not here
        (_, info), *_ = events.named("tls")
        assert info["version"] == "TLSv1.3" and info["sni"] == "localhost"
        assert events.named("record") == [(events.named("tls")[0][0], 9, 13)]  # plaintext


@pytest.mark.parametrize("mode", ["thread", "sync"])
def test_a_handshake_that_never_comes_is_cut_at_the_time_limit(setup: TlsSetup, mode: str) -> None:
    setup.handshake_timeout = 0.3
    events = EventsRecorder()
    server, thread = serving(setup, mode, events)
    try:
        with socket.create_connection(server.server_address, timeout=10) as silent:
            assert silent.recv(10) == b""  # closed by the server at the limit
        with client(setup, server.server_address) as sock:  # the server goes on
            sock.sendall(b"after\n")
            assert sock.recv(100) == b"got after\n"
    finally:
        stop(server, thread)
    failed = [info for _, info in events.named("tls") if "error" in info]
    assert failed == [{"error": "no handshake within 0.3s"}]
    assert not events.named("handler_error")


def test_the_accept_loop_never_waits_for_a_handshake(setup: TlsSetup) -> None:
    events = EventsRecorder()
    server, thread = serving(setup, "thread", events)
    try:
        silent = [socket.create_connection(server.server_address, timeout=10) for _ in range(3)]
        with client(setup, server.server_address) as sock:
            sock.sendall(b"not stuck\n")
            assert sock.recv(100) == b"got not stuck\n"
        for sock in silent:
            sock.close()
    finally:
        stop(server, thread)
