"""The server classes: the request loop, its hooks, construction, shutdown and error reports."""

from __future__ import annotations

import errno
import logging
import os
import random
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

import sockserve as ss

if TYPE_CHECKING:
    from conftest import Transport

pytestmark = pytest.mark.leakcheck


def descriptors() -> set[int]:
    """This process's open file descriptors."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        if os.path.exists(f"/proc/self/fd/{name}"):  # not the listing's own, closed by now
            fds.add(int(name))
    return fds


def echo_handler(transport: Transport) -> type[Any]:
    class Echo(transport.Handler):
        def handle(self) -> None:
            self.reply(self.read())

    return Echo


# -- attributes and construction --------------------------------------------------------------


def test_attributes(transport: Transport) -> None:
    address, handler = transport.address(), echo_handler(transport)
    with transport.server_class()(address, handler) as server:
        assert server.RequestHandlerClass is handler
        assert server.socket.family == server.address_family == transport.family
        assert server.socket.type == server.socket_type
        assert server.fileno() == server.socket.fileno()
        assert server.server_address == server.socket.getsockname()
        if transport.unix:
            assert server.server_address == address
        else:
            host, port = server.server_address
            assert host == "127.0.0.1" and port != 0, "port 0 becomes the real port"


@pytest.mark.parametrize("concurrency", ["sync", "threading", "forking"])
def test_every_server_class_serves(transport: Transport, concurrency: str) -> None:
    with transport.make(echo_handler(transport), concurrency) as server:
        with transport.client(server) as client:
            client.sendall(b"ping")
            server.handle_request()
            assert transport.receive(client) == b"ping"


def test_fileno_works_with_selectors(transport: Transport) -> None:
    with transport.make(echo_handler(transport)) as server, selectors.DefaultSelector() as sel:
        sel.register(server, selectors.EVENT_READ)
        assert sel.select(0) == []
        with transport.client(server) as client:
            client.sendall(b"ready")
            (key, _), *_ = sel.select(5)
            assert key.fileobj is server
            server.handle_request()
            assert transport.receive(client) == b"ready"


def test_reuse_options_off_by_default(transport: Transport) -> None:
    with transport.make(echo_handler(transport)) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        if not transport.unix:
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


def test_reuse_options(transport: Transport) -> None:
    attrs = {"allow_reuse_address": True, "allow_reuse_port": True}
    with transport.make(echo_handler(transport), **attrs) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        if not transport.unix:  # Unix sockets have no SO_REUSEPORT: it is not even tried
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        if not transport.unix and transport.stream:
            port = server.server_address[1]
            cls = transport.server_class(**attrs)
            with cls(("127.0.0.1", port), echo_handler(transport)) as twin:
                assert twin.server_address == server.server_address


def test_listen_backlog_is_request_queue_size(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlogs: list[int] = []
    listen = socket.socket.listen

    def recording_listen(sock: socket.socket, *args: int) -> None:
        backlogs.extend(args)
        listen(sock, *args)

    monkeypatch.setattr(socket.socket, "listen", recording_listen)
    with transport.make(echo_handler(transport), request_queue_size=17):
        pass
    assert backlogs == ([17] if transport.stream else []), "datagram servers do not listen"


def test_bind_and_activate_false(transport: Transport) -> None:
    """The constructor then leaves the socket alone; binding by hand works."""
    address, cls = transport.address(), transport.server_class()
    with cls(address, echo_handler(transport), bind_and_activate=False) as server:
        assert server.socket.getsockname() in ("", ("0.0.0.0", 0)), "bound already"
        assert server.server_address == address
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert server.server_address == server.socket.getsockname() != address or transport.unix
        with transport.client(server) as client:
            client.sendall(b"by hand")
            server.handle_request()
            assert transport.receive(client) == b"by hand"


def test_address_in_use_closes_the_socket(transport: Transport) -> None:
    with transport.make(echo_handler(transport)) as first:
        before = descriptors()
        with pytest.raises(OSError) as caught:
            transport.server_class()(first.server_address, echo_handler(transport))
        assert caught.value.errno == errno.EADDRINUSE
        assert descriptors() == before, "the failed server's socket leaked"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_activate_failure_closes_the_socket(transport: Transport, error: type) -> None:
    created: list[socket.socket] = []

    class Failing(transport.server_class()):
        def server_activate(self) -> None:
            created.append(self.socket)
            raise error("no")

    before = descriptors()
    with pytest.raises(error):
        Failing(transport.address(), echo_handler(transport))
    assert created[0].fileno() == -1
    assert descriptors() == before


def test_context_manager_closes(transport: Transport) -> None:
    server = transport.make(echo_handler(transport))
    with server as entered:
        assert entered is server
    assert server.socket.fileno() == -1
    server = transport.make(echo_handler(transport))
    with pytest.raises(ZeroDivisionError), server:
        1 / 0  # noqa: B018
    assert server.socket.fileno() == -1


# -- one request: handle_request and its steps -------------------------------------------------


def test_handle_request_steps_in_order(transport: Transport) -> None:
    calls: list[tuple[str, Any]] = []

    class Server(transport.server_class()):
        def get_request(self) -> Any:
            got = super().get_request()
            calls.append(("get_request", got))
            return got

        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append(("verify_request", (request, client_address)))
            return super().verify_request(request, client_address)

        def process_request(self, request: Any, client_address: Any) -> None:
            calls.append(("process_request", (request, client_address)))
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            calls.append(("finish_request", (request, client_address)))
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            calls.append(("shutdown_request", (request, None)))
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            calls.append(("close_request", (request, None)))
            super().close_request(request)

    class Handler(transport.Handler):
        def handle(self) -> None:
            calls.append(("handle", (self.request, self.client_address)))
            self.reply(self.read())

    with Server(transport.address(), Handler) as server, transport.client(server) as client:
        client.sendall(b"steps")
        server.handle_request()
        assert transport.receive(client) == b"steps"
    assert [name for name, _ in calls] == [
        "get_request",
        "verify_request",
        "process_request",
        "finish_request",
        "handle",
        "shutdown_request",
        "close_request",
    ]
    request, client_address = calls[0][1]
    assert all(args[0] is request for _, args in calls)
    assert all(args[1] == client_address for _, args in calls[1:5])


def test_get_request(transport: Transport) -> None:
    with transport.make(echo_handler(transport)) as server, transport.client(server) as client:
        client.sendall(b"raw")
        request, client_address = server.get_request()
        assert client_address == client.getsockname()
        if transport.stream:
            with request:
                assert isinstance(request, socket.socket) and request.recv(10) == b"raw"
        else:
            assert request == (b"raw", server.socket)


@pytest.mark.parametrize("transport", ["tcp", "unix"], indirect=True)
@pytest.mark.parametrize("listener_timeout", [None, 5.0])
def test_get_request_gives_what_socket_accept_gives(
    transport: Transport, listener_timeout: float | None
) -> None:
    """The same socket as `socket.accept` (enum family and type, blocking as it decides)."""
    with transport.make(echo_handler(transport)) as server:
        server.socket.settimeout(listener_timeout)
        with transport.client(server):
            request, _ = server.get_request()
        with request, transport.client(server):
            reference, _ = socket.socket.accept(server.socket)
            with reference:
                for attr in ("family", "type", "proto"):
                    got, want = getattr(request, attr), getattr(reference, attr)
                    assert (got, type(got)) == (want, type(want)), attr
                assert type(request) is socket.socket
                assert request.gettimeout() == reference.gettimeout()
                assert request.getblocking() == reference.getblocking()


@pytest.mark.parametrize("transport", ["tcp", "unix"], indirect=True)
def test_get_request_uses_the_accept_of_another_kind_of_socket(transport: Transport) -> None:
    """A listener that is not a plain socket.socket (an SSLSocket, say) accepts its way."""

    class Wrapped(socket.socket):
        accepted = 0

        def accept(self) -> tuple[socket.socket, Any]:
            type(self).accepted += 1
            return super().accept()

    with transport.make(echo_handler(transport)) as server:
        plain = server.socket
        server.socket = Wrapped(plain.family, plain.type, plain.proto, fileno=plain.detach())
        with transport.client(server):
            request, _ = server.get_request()
            request.close()
    assert Wrapped.accepted == 1


@pytest.mark.parametrize("where", ["server", "socket", "both"])
def test_handle_request_timeout(transport: Transport, where: str) -> None:
    """No request within the timeout: handle_timeout() is called and handle_request returns."""
    timeouts: list[float] = []
    handled: list[object] = []

    class Server(transport.server_class()):
        timeout = {"server": 0.05, "socket": None, "both": 30}[where]

        def handle_timeout(self) -> None:
            timeouts.append(time.monotonic())

    class Handler(transport.Handler):
        def handle(self) -> None:
            handled.append(self)

    with Server(transport.address(), Handler) as server:
        if where != "server":  # the stdlib's older way: a timeout on the listening socket
            server.socket.settimeout(0.05)
        start = time.monotonic()
        server.handle_request()
    assert len(timeouts) == 1 and not handled
    assert 0.05 <= timeouts[0] - start < 5


def test_verify_request_false_drops_the_request(transport: Transport) -> None:
    handled: list[object] = []
    shut: list[Any] = []

    class Server(transport.server_class()):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return False

        def shutdown_request(self, request: Any) -> None:
            shut.append(request)
            super().shutdown_request(request)

    class Handler(transport.Handler):
        def handle(self) -> None:
            handled.append(self)

    with Server(transport.address(), Handler) as server, transport.client(server) as client:
        if not transport.stream:  # (unread data would turn a Unix stream's EOF into a reset)
            client.sendall(b"let me in")
        server.handle_request()
        if transport.stream:
            assert transport.receive(client) == b"", "the connection is closed"
            assert shut[0].fileno() == -1
        else:
            assert shut[0][0] == b"let me in"
    assert not handled and len(shut) == 1


@pytest.mark.parametrize("concurrency", ["sync", "threading"])
def test_exception_goes_to_handle_error(transport: Transport, concurrency: str) -> None:
    """An Exception is reported with the request and address; the server serves on."""
    errors: list[tuple[Any, Any, BaseException | None]] = []
    shut: list[Any] = []

    class Server(transport.server_class(concurrency)):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append((request, client_address, sys.exc_info()[1]))

        def shutdown_request(self, request: Any) -> None:
            shut.append(request)
            super().shutdown_request(request)

    class Handler(transport.Handler):
        def handle(self) -> None:
            data = self.read()
            if data == b"fail":
                raise ValueError("boom")
            self.reply(data)

    with Server(transport.address(), Handler) as server:
        with transport.client(server) as client:
            client.sendall(b"fail")
            server.handle_request()
            if transport.stream:
                assert transport.receive(client) == b""
            client_name = client.getsockname()
        with transport.client(server) as client:
            client.sendall(b"still there")
            server.handle_request()
            assert transport.receive(client) == b"still there"
    (request, address, error), *more = errors
    assert not more and isinstance(error, ValueError)
    assert address == client_name and shut[0] is request


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_base_exception_propagates_after_shutdown_request(
    transport: Transport, error: type[BaseException]
) -> None:
    """A sync server lets SystemExit/KeyboardInterrupt through, closing the request first."""
    reported: list[object] = []
    shut: list[Any] = []

    class Server(transport.server_class()):
        def handle_error(self, request: Any, client_address: Any) -> None:
            reported.append(request)

        def shutdown_request(self, request: Any) -> None:
            shut.append(request)
            super().shutdown_request(request)

    class Handler(transport.Handler):
        def handle(self) -> None:
            self.read()
            raise error()

    with Server(transport.address(), Handler) as server, transport.client(server) as client:
        client.sendall(b"stop")
        with pytest.raises(error):
            server.handle_request()
        assert len(shut) == 1 and not reported
        if transport.stream:
            assert transport.receive(client) == b""


def test_base_exception_leaves_serve_forever_usable(transport: Transport) -> None:
    """KeyboardInterrupt out of serve_forever; the server then serves and shuts down again."""

    class Handler(transport.Handler):
        def handle(self) -> None:
            data = self.read()
            if data == b"interrupt":
                raise KeyboardInterrupt
            self.reply(data)

    with transport.make(Handler) as server:
        safety_net = threading.Timer(5, server.shutdown)  # if the loop swallowed it
        safety_net.daemon = True
        with transport.client(server) as client:
            client.sendall(b"interrupt")
            safety_net.start()
            with pytest.raises(KeyboardInterrupt):
                server.serve_forever(poll_interval=5)
            safety_net.cancel()
            safety_net.join()
        loop = threading.Thread(target=server.serve_forever, args=(5,), daemon=True)
        loop.start()
        assert transport.request(server, b"again") == b"again"
        server.shutdown()
        loop.join(5)
        assert not loop.is_alive()


RULE = "-" * 40


def test_handle_error_prints_the_traceback_on_stderr(
    transport: Transport, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """As the stdlib's: a rule, the client, the traceback and a rule on stderr; no record."""

    class Handler(transport.Handler):
        def handle(self) -> None:
            self.read()
            raise ValueError("boom")

    caplog.set_level(logging.DEBUG)
    with transport.make(Handler) as server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        client_name = client.getsockname()
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [
        RULE,
        f"Exception occurred during processing of request from {client_name}",
        "Traceback (most recent call last):",
    ]
    assert lines[-2:] == ["ValueError: boom", RULE]
    assert not caplog.records, "printed, not logged"


def test_handle_error_reaches_stderr_without_logging_set_up() -> None:
    code = """
        import socket
        import sockserve as socketserver

        class Broken(socketserver.BaseRequestHandler):
            def handle(self):
                raise ValueError("boom")

        with socketserver.TCPServer(("127.0.0.1", 0), Broken) as server:
            with socket.create_connection(server.server_address, timeout=5) as client:
                server.handle_request()
                print(client.getsockname())
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    client_name = result.stdout.strip()
    assert f"Exception occurred during processing of request from {client_name}" in result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert result.stderr.rstrip().endswith(f"ValueError: boom\n{RULE}")


#: A UDP server whose handler fails, in a program whose root logger sends its records to that
#: very server (logging.handlers.DatagramHandler): a handle_error that logged would make each
#: failure send the next request.
LOGS_TO_ITSELF = """
import logging.handlers
import socket
import {module} as socketserver

calls = 0

class Failing(socketserver.BaseRequestHandler):
    def handle(self):
        global calls
        calls += 1
        raise ValueError("boom")

with socketserver.UDPServer(("127.0.0.1", 0), Failing) as server:
    logging.getLogger().addHandler(logging.handlers.DatagramHandler(*server.server_address))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.sendto(b"?", server.server_address)
        print(client.getsockname())
    # The first handles the datagram; a record it sent would be queued already (loopback
    # delivers within the send): the others need not wait long to see it.
    server.timeout = 0.02
    for _ in range(3):
        server.handle_request()
print(calls)
"""


@pytest.mark.parametrize("module", ["socketserver", "sockserve"])
def test_handle_error_does_not_feed_a_logging_handler_that_sends_to_the_server(
    module: str,
) -> None:
    """The failing handler runs once and the traceback is on stderr, as with the stdlib
    (the control); logging it instead looped, one failure per record sent."""
    result = subprocess.run(
        [sys.executable, "-c", LOGS_TO_ITSELF.format(module=module)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    client_name, calls = result.stdout.splitlines()
    assert calls == "1", "the handler ran more than once"
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        RULE,
        f"Exception occurred during processing of request from {client_name}",
        "Traceback (most recent call last):",
    ]
    assert lines[-2:] == ["ValueError: boom", RULE]


# -- serve_forever, service_actions, shutdown ----------------------------------------------------


def test_service_actions_runs_every_iteration(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    iterations = threading.Semaphore(0)

    class Server(transport.server_class()):
        def service_actions(self) -> None:
            iterations.release()

    run_server(Server(transport.address(), echo_handler(transport)), poll_interval=0.01)
    for _ in range(3):  # idle iterations, one per poll_interval
        assert iterations.acquire(timeout=5)


def test_service_actions_runs_after_a_request(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    handled, after = threading.Event(), threading.Event()

    class Server(transport.server_class()):
        def service_actions(self) -> None:
            if handled.is_set():
                after.set()

    class Handler(transport.Handler):
        def handle(self) -> None:
            self.reply(self.read())
            handled.set()

    server = Server(transport.address(), Handler)
    run_server(server, poll_interval=5)
    assert transport.request(server, b"x") == b"x"
    assert after.wait(2), "no loop iteration after the request"


def test_serve_forever_ignores_timeout(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    iterations = threading.Semaphore(0)
    timeouts: list[float] = []

    class Server(transport.server_class()):
        timeout = 0.001

        def service_actions(self) -> None:
            iterations.release()

        def handle_timeout(self) -> None:
            timeouts.append(time.monotonic())

    run_server(Server(transport.address(), echo_handler(transport)), poll_interval=0.01)
    for _ in range(5):
        assert iterations.acquire(timeout=5)
    assert timeouts == []


@pytest.mark.parametrize("when", ["idle", "starting"])
def test_shutdown_returns_well_before_poll_interval(
    transport: Transport, run_server: Callable[..., Any], when: str
) -> None:
    server = transport.make(echo_handler(transport))
    loop = run_server(server, poll_interval=5)
    if when == "idle":  # a round trip proves the loop is up and waiting in select()
        assert transport.request(server, b"up") == b"up"
    start = time.monotonic()
    server.shutdown()
    elapsed = time.monotonic() - start
    loop.join(5)
    assert not loop.is_alive()
    assert elapsed < 0.5, f"shutdown took {elapsed:.3f}s with poll_interval=5"


def test_shutdown_from_a_handler_in_a_sync_server(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    returned = threading.Event()

    class Stopper(transport.Handler):
        def handle(self) -> None:
            self.read()
            self.server.shutdown()  # the stdlib would wait for itself here, forever
            returned.set()
            self.reply(b"bye")

    server = transport.make(Stopper)
    loop = run_server(server, poll_interval=5)
    assert transport.request(server, b"stop") == b"bye"
    assert returned.is_set()
    loop.join(2)
    assert not loop.is_alive(), "serve_forever kept running"


def test_shutdown_from_other_threads_never_deadlocks(transport: Transport) -> None:
    """Shutdown at random moments (before, during and after requests) from two threads."""
    pick = random.Random(2).random
    for round_ in range(25):
        with transport.make(echo_handler(transport)) as server:
            loop = threading.Thread(target=server.serve_forever, args=(5,), daemon=True)
            loop.start()
            if round_ % 3 == 0:
                assert transport.request(server, b"%d" % round_) == b"%d" % round_
            elif round_ % 3 == 1:
                time.sleep(pick() / 500)  # not synchronisation: varies where shutdown lands
            stoppers = [threading.Thread(target=server.shutdown, daemon=True) for _ in range(2)]
            for stopper in stoppers:
                stopper.start()
            for thread in (*stoppers, loop):
                thread.join(2)
                assert not thread.is_alive(), f"deadlock in round {round_}"


def test_serve_forever_runs_again_after_shutdown(transport: Transport) -> None:
    with transport.make(echo_handler(transport)) as server:
        for n in range(3):
            loop = threading.Thread(target=server.serve_forever, args=(5,), daemon=True)
            loop.start()
            assert transport.request(server, b"%d" % n) == b"%d" % n
            server.shutdown()
            loop.join(5)
            assert not loop.is_alive()


# -- per-transport details -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"], indirect=True)
def test_stream_request_is_shut_down_for_writing(transport: Transport) -> None:
    """The client sees EOF even while another copy of the connection stays open."""
    copies: list[socket.socket] = []

    class Keeper(transport.Handler):
        def handle(self) -> None:
            copies.append(self.request.dup())  # as a forked child would hold one
            self.reply(self.read())

    with transport.make(Keeper) as server, transport.client(server) as client:
        client.sendall(b"eof please")
        server.handle_request()
        try:
            assert transport.receive(client) == b"eof please"
        finally:
            copies[0].close()


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"], indirect=True)
def test_datagram_server_keeps_its_socket(transport: Transport) -> None:
    with transport.make(echo_handler(transport)) as server:
        fileno = server.fileno()
        for n in range(3):
            with transport.client(server) as client:
                client.sendall(b"%d" % n)
                server.handle_request()
                assert transport.receive(client) == b"%d" % n
        assert server.socket.fileno() == fileno, "close_request closed the server's socket"


# -- dualstack_ipv6 (sockserve's) ----------------------------------------------------------------


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")


@needs_ipv6
@pytest.mark.parametrize("kind", ["tcp", "udp"])
@pytest.mark.parametrize("dualstack", [True, False])
def test_dualstack_ipv6(kind: str, dualstack: bool) -> None:
    """On "::" with dualstack_ipv6, an IPv4 client gets in, whatever the host's default."""
    base = ss.TCPServer if kind == "tcp" else ss.UDPServer
    socktype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM

    class Server(base):
        address_family = socket.AF_INET6
        dualstack_ipv6 = dualstack

        def server_bind(self) -> None:
            # Start from IPv6-only, as on hosts with net.ipv6.bindv6only=1.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    class Echo(ss.BaseRequestHandler):
        def handle(self) -> None:
            if isinstance(self.request, tuple):
                self.request[1].sendto(self.client_address[0].encode(), self.client_address)
            else:
                self.request.sendall(self.client_address[0].encode())

    with Server(("::", 0), Echo) as server:
        port = server.server_address[1]
        v6only = server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        assert v6only == (0 if dualstack else 1)
        for family, host in [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")]:
            with socket.socket(family, socktype) as client:
                client.settimeout(5)
                if family == socket.AF_INET and not dualstack:
                    if kind == "tcp":
                        with pytest.raises(ConnectionRefusedError):
                            client.connect((host, port))
                    continue  # (a datagram would just go nowhere)
                client.connect((host, port))
                client.send(b"?")
                server.handle_request()
                assert client.recv(100).decode() in (host, f"::ffff:{host}")
