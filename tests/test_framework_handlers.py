"""Request handlers: setup → handle → finish, and the stream and datagram file objects."""

from __future__ import annotations

import io
import select
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest

import sockserve as ss

if TYPE_CHECKING:
    from conftest import Transport

pytestmark = pytest.mark.leakcheck

stream_only = pytest.mark.parametrize("transport", ["tcp", "unix"], indirect=True)
datagram_only = pytest.mark.parametrize("transport", ["udp", "unix-dgram"], indirect=True)


def serve_one(transport: Transport, handler: type[Any], data: bytes, **attrs: Any) -> bytes:
    """Send `data` (then EOF), handle that one request in a sync server, return the reply."""
    with transport.make(handler, **attrs) as server, transport.client(server) as client:
        client.sendall(data)
        if transport.stream:
            client.shutdown(socket.SHUT_WR)
        server.handle_request()
        return transport.receive(client)


def readable(sock: socket.socket) -> bool:
    """True if `sock` has something to read (or EOF) right now."""
    return bool(select.select([sock], [], [], 0)[0])


class ErrorsKept:
    """A server mixin that keeps what handle_error saw instead of logging it."""

    errors: list[BaseException | None]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[1])


def recording_server(transport: Transport) -> tuple[type[Any], list[BaseException | None]]:
    errors: list[BaseException | None] = []
    cls = type("Recording", (ErrorsKept, transport.server_class()), {"errors": errors})
    return cls, errors


# -- BaseRequestHandler -----------------------------------------------------------------------


def test_setup_handle_finish_and_attributes(transport: Transport) -> None:
    seen: list[tuple[str, Any]] = []

    class Handler(ss.BaseRequestHandler):
        def setup(self) -> None:
            seen.append(("setup", (self.request, self.client_address, self.server)))

        def handle(self) -> None:
            seen.append(("handle", None))
            if isinstance(self.request, tuple):
                data, sock = self.request
                sock.sendto(data, self.client_address)
            else:
                self.request.sendall(self.request.recv(100))

        def finish(self) -> None:
            seen.append(("finish", None))

    with transport.make(Handler) as server, transport.client(server) as client:
        client.sendall(b"attrs")
        server.handle_request()
        assert transport.receive(client) == b"attrs"
        request, client_address, handler_server = seen[0][1]
        assert handler_server is server
        assert client_address == client.getsockname()
        if transport.stream:
            assert isinstance(request, socket.socket)
        else:
            assert request == (b"attrs", server.socket)
    assert [step for step, _ in seen] == ["setup", "handle", "finish"]


@pytest.mark.parametrize("failing", ["setup", "handle"])
def test_finish_runs_unless_setup_failed(transport: Transport, failing: str) -> None:
    steps: list[str] = []

    class Handler(ss.BaseRequestHandler):
        def setup(self) -> None:
            steps.append("setup")
            if failing == "setup":
                raise ValueError("setup")

        def handle(self) -> None:
            steps.append("handle")
            raise ValueError("handle")

        def finish(self) -> None:
            steps.append("finish")

    server_class, errors = recording_server(transport)
    with server_class(transport.address(), Handler) as server:
        with transport.client(server) as client:
            client.sendall(b"?")
            server.handle_request()
    expected = ["setup"] if failing == "setup" else ["setup", "handle", "finish"]
    assert steps == expected
    assert [str(error) for error in errors] == [failing], "the error reaches handle_error"


def test_defaults_do_nothing(transport: Transport) -> None:
    """BaseRequestHandler alone handles a request by doing nothing."""
    with transport.make(ss.BaseRequestHandler) as server, transport.client(server) as client:
        if not transport.stream:
            client.sendall(b"ignored")
        server.handle_request()
        if transport.stream:
            assert transport.receive(client) == b""


# -- StreamRequestHandler ---------------------------------------------------------------------


@stream_only
def test_stream_files(transport: Transport) -> None:
    seen: dict[str, Any] = {}

    class Lines(ss.StreamRequestHandler):
        def handle(self) -> None:
            seen["connection"] = self.connection is self.request
            seen["rfile"], seen["wfile"] = self.rfile, self.wfile
            for line in self.rfile:
                written = self.wfile.write(memoryview(line.upper()))
                seen.setdefault("written", []).append(written)

    reply = serve_one(transport, Lines, b"one\ntwo\n")
    assert reply == b"ONE\nTWO\n"
    assert seen["connection"] is True
    assert seen["written"] == [4, 4]
    assert isinstance(seen["rfile"], io.BufferedReader), "rbufsize -1: a buffered rfile"
    assert isinstance(seen["wfile"], io.BufferedIOBase) and seen["wfile"].writable()
    assert seen["rfile"].closed and seen["wfile"].closed, "finish closes both"


@stream_only
def test_unbuffered_rfile(transport: Transport) -> None:
    kinds: list[type] = []

    class Raw(ss.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            kinds.append(type(self.rfile))
            self.wfile.write(self.rfile.read(5))

    assert serve_one(transport, Raw, b"12345") == b"12345"
    assert issubclass(kinds[0], io.RawIOBase)


@stream_only
def test_unbuffered_wfile_sends_each_write_at_once(transport: Transport) -> None:
    """wbufsize=0: the client reads the first write while the handler is still running."""
    got_first = threading.Event()
    result: list[bool] = []

    class Chatty(ss.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"first\n")
            result.append(got_first.wait(5))
            self.wfile.write(b"second\n")

    with transport.make(Chatty, "threading") as server, transport.client(server) as client:
        server.handle_request()
        reader = client.makefile("rb")
        try:
            assert reader.readline() == b"first\n"
            got_first.set()
            assert reader.read() == b"second\n"
        finally:
            reader.close()
    assert result == [True]


@stream_only
def test_buffered_wfile_sends_on_finish(transport: Transport) -> None:
    """wbufsize>0: nothing reaches the client before finish() flushes."""
    written, checked = threading.Event(), threading.Event()

    class Buffered(ss.StreamRequestHandler):
        wbufsize = 65536

        def handle(self) -> None:
            self.wfile.write(b"held back")
            written.set()
            checked.wait(5)

    with transport.make(Buffered, "threading") as server, transport.client(server) as client:
        server.handle_request()
        assert written.wait(5)
        assert not readable(client), "sent before finish()"
        checked.set()
        assert transport.receive(client) == b"held back"


@stream_only
def test_finish_ignores_a_vanished_peer(transport: Transport) -> None:
    """Flushing to a client that reset the connection is not an error."""
    gone = threading.Event()
    finished: list[bool] = []

    class Late(ss.StreamRequestHandler):
        wbufsize = 65536

        def handle(self) -> None:
            gone.wait(5)
            self.wfile.write(b"too late")

        def finish(self) -> None:
            super().finish()
            finished.append(self.wfile.closed)

    server_class, errors = recording_server(transport)
    server_class = type("Threaded", (ss.ThreadingMixIn, server_class), {})
    with server_class(transport.address(), Late) as server:
        client = transport.client(server)
        server.handle_request()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()  # a reset, on TCP
        gone.set()
    assert finished == [True]
    assert errors == []


@stream_only
def test_timeout_applies_to_the_connection(transport: Transport) -> None:
    timeouts: list[float | None] = []
    timed_out = threading.Event()

    class Impatient(ss.StreamRequestHandler):
        timeout = 0.05

        def handle(self) -> None:
            timeouts.append(self.connection.gettimeout())
            try:
                self.rfile.read(1)  # the client sends nothing
            finally:
                timed_out.set()

    server_class, errors = recording_server(transport)
    server_class = type("Threaded", (ss.ThreadingMixIn, server_class), {})
    with server_class(transport.address(), Impatient) as server:
        with transport.client(server):
            server.handle_request()
            assert timed_out.wait(5), "rfile.read() did not time out"
    assert timeouts == [0.05]
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)


def test_no_timeout_by_default() -> None:
    assert ss.StreamRequestHandler.timeout is None


@pytest.mark.parametrize("transport", ["tcp"], indirect=True)
@pytest.mark.parametrize("disable", [True, False])
def test_disable_nagle_algorithm(transport: Transport, disable: bool) -> None:
    nodelay: list[int] = []

    class Quick(ss.StreamRequestHandler):
        disable_nagle_algorithm = disable

        def handle(self) -> None:
            nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    serve_one(transport, Quick, b"")
    assert bool(nodelay[0]) is disable


# -- DatagramRequestHandler -------------------------------------------------------------------


@datagram_only
def test_datagram_files(transport: Transport) -> None:
    seen: dict[str, Any] = {}

    class Upper(ss.DatagramRequestHandler):
        def handle(self) -> None:
            seen["packet"], seen["socket"] = self.packet, self.socket
            self.wfile.write(self.rfile.read().upper())
            self.wfile.write(b"!")

    with transport.make(Upper) as server, transport.client(server) as client:
        client.sendall(b"shout")
        server.handle_request()
        assert transport.receive(client) == b"SHOUT!"
        assert seen == {"packet": b"shout", "socket": server.socket}


@datagram_only
def test_datagram_reply_is_sent_on_finish(transport: Transport) -> None:
    written, checked = threading.Event(), threading.Event()

    class Later(ss.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"reply")
            written.set()
            checked.wait(5)

    with transport.make(Later, "threading") as server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        assert written.wait(5)
        assert not readable(client), "sent before finish()"
        checked.set()
        assert transport.receive(client) == b"reply"


@datagram_only
@pytest.mark.parametrize("size", [None, 100])
def test_max_packet_size_truncates(transport: Transport, size: int | None) -> None:
    lengths: list[int] = []

    class Measure(transport.Handler):
        def handle(self) -> None:
            lengths.append(len(self.read()))

    attrs = {} if size is None else {"max_packet_size": size}
    limit = size or 8192
    with transport.make(Measure, **attrs) as server, transport.client(server) as client:
        client.sendall(b"x" * (limit + 1000))
        server.handle_request()
    assert lengths == [limit]
