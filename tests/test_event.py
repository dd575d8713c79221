"""The event concurrency mode: EventServer on its own, then the real command with `-c event`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builtin_checks import SOLO
from clitools import RecordsObserver, finish, inet_address, spawn, tcp_exchange, wait_listening
from servertools import LOOPS

from sockserve import builtins as bh
from sockserve.event import EventServer
from sockserve.events import NullEvents

pytestmark = pytest.mark.leakcheck

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "event_echo.py"


@pytest.fixture(params=list(LOOPS))
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    return LOOPS[request.param]


# -- helpers for EventServer in a thread ----------------------------------------------------------


class Hooks(NullEvents):
    """Records the events the server reports (and `on_stop`); `wait` blocks until enough came."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.cond = threading.Condition()

    def _add(self, *event: Any) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def connected(self, client: Any) -> None:
        self._add("connected", client)

    def record(self, client: Any, received: int, sent: int) -> None:
        self._add("record", client, received, sent)

    def handler_error(self, client: Any, exc: BaseException) -> None:
        self._add("error", client, exc)

    def stopping(self, reason: str) -> None:
        self._add("stopping", reason)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.cond:
            return [e for e in self.events if e[0] == kind]

    def wait(self, kind: str, count: int = 1) -> list[tuple[Any, ...]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.of(kind)) >= count, timeout=10), self.events
            return self.of(kind)


class Serving:
    """An EventServer in a thread: serve_forever, then close_connections(how), as the runner
    does; with `hold`, close_connections waits for `finish()` (to look at the stopped server)."""

    def __init__(self, server: EventServer, hold: bool = False) -> None:
        self.server = server
        self.returned = threading.Event()
        self.error: BaseException | None = None
        self._how: float | None = None
        self._go = threading.Event()
        if not hold:
            self._go.set()
        self.thread = threading.Thread(target=self._run, name="event-server")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.serve_forever(5.0)
            self.returned.set()
            self._go.wait(10)
            self.server.close_connections(self._how)
        except BaseException as exc:  # pragma: no cover - shown by finish()
            self.error = exc
            self.returned.set()

    def stop(self, how: float | None = None) -> None:
        self._how = how
        self.server.request_stop()
        assert self.returned.wait(5), "serve_forever did not return"
        self.finish(how)

    def finish(self, how: float | None = None) -> None:
        self._how = how
        self._go.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "close_connections did not return"
        if self.error is not None:
            raise self.error


@pytest.fixture
def serve(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> Iterator[Callable[..., Serving]]:
    """start(sock, factory, **kwargs) runs an EventServer; whatever still runs is aborted."""
    running: list[Serving] = []

    def start(sock: socket.socket, factory: Any, **kwargs: Any) -> Serving:
        kwargs.setdefault("loop_factory", loop_factory)
        limit = kwargs.pop("request_limit", None)
        hold = kwargs.pop("hold", False)
        server = EventServer(sock, factory, **kwargs)
        server.request_limit = limit
        serving = Serving(server, hold)
        running.append(serving)
        return serving

    yield start
    for serving in running:
        if serving.thread.is_alive():
            serving.stop(0)
        assert serving.server.socket.fileno() == -1, "the listening socket was left open"


def listening_socket(name: str, directory: str) -> socket.socket:
    """A bound socket for tcp, udp, unix or unix-dgram (listening, for streams)."""
    family = socket.AF_UNIX if name.startswith("unix") else socket.AF_INET
    kind = socket.SOCK_DGRAM if name in ("udp", "unix-dgram") else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    sock.bind(
        os.path.join(directory, f"{name}.sock") if family == socket.AF_UNIX else ("127.0.0.1", 0)
    )
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    return sock


def client_for(server_sock: socket.socket, directory: str) -> socket.socket:
    """A connected client (bound, for unix datagrams, so that it can be answered)."""
    client = socket.socket(server_sock.family, server_sock.type)
    client.settimeout(5)
    if server_sock.family == socket.AF_UNIX and server_sock.type == socket.SOCK_DGRAM:
        client.bind(os.path.join(directory, f"c{id(client) % 100000}.sock"))
    client.connect(server_sock.getsockname())
    return client


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


# -- every builtin on every transport --------------------------------------------------------------

DAYTIME = re.compile(rb"^[A-Z][a-z]+day, [A-Z][a-z]+ \d+, \d{4} \d\d:\d\d:\d\d-UTC\r\n$")


def check_time(data: bytes) -> None:
    assert len(data) == 4
    assert abs(struct.unpack("!I", data)[0] - (time.time() + 2208988800)) < 60


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix", "unix-dgram"])
@pytest.mark.parametrize("name", SOLO)
def test_every_builtin_on_every_transport(
    name: str, transport: str, sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket(transport, sock_dir)
    dgram = sock.type == socket.SOCK_DGRAM
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    output, stdin = os.fdopen(out_w, "wb", buffering=0), os.fdopen(in_r, "rb", buffering=0)
    observer = RecordsObserver()
    options = bh.HandlerOptions(reply=b"pong\n", output=output, input=stdin, observer=observer)
    factory = bh.protocol_factory(name, "dgram" if dgram else "stream", options)
    hooks = Hooks()
    serving = serve(sock, factory, events=hooks, count_bytes=False)
    try:
        with client_for(sock, sock_dir) as client:
            exchange_with_builtin(name, dgram, client, out_r, in_w)
        records = observer.wait()  # once the connection is closed, or the datagram answered
        serving.stop()
    finally:
        for fd in (out_r, in_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        output.close()
        stdin.close()
    if dgram:
        assert not hooks.of("connected")
    else:
        assert len(hooks.of("connected")) == 1
        assert not hooks.of("record")  # the builtin reported its own counts: the server adds none
    assert len(records) == 1
    assert not hooks.of("error")


def exchange_with_builtin(
    name: str, dgram: bool, client: socket.socket, out_r: int, in_w: int
) -> None:
    """Talk to the builtin `name` as a client would, and check its answers."""
    hello = b"hello\n"
    if name == "stdio":
        client.sendall(hello)
        assert os.read(out_r, 100) == hello
        os.write(in_w, b"from stdin\n")
        assert client.recv(100) == b"from stdin\n"
        if not dgram:
            os.close(in_w)  # stdin EOF: the server shuts its write side
            assert read_all(client) == b""
        return
    if name in ("daytime", "time", "chargen") and not dgram:
        if name == "chargen":
            data = read_exactly(client, 300)
            assert data == bh.chargen_pattern(0, 300)
            return
        data = read_all(client)
    else:
        client.sendall(hello)
        if name in ("discard", "stdout"):
            if name == "stdout":
                assert os.read(out_r, 100) == hello
            if not dgram:
                client.shutdown(socket.SHUT_WR)
                assert read_all(client) == b""
            return
        if dgram:
            data = client.recv(65536)
        else:
            client.shutdown(socket.SHUT_WR)
            data = read_all(client)
    if name == "daytime":
        assert DAYTIME.match(data), data
    elif name == "time":
        check_time(data)
    elif name == "chargen":
        assert data == bh.chargen_datagram(hello)
    else:
        assert data == {"echo": hello, "upper": b"HELLO\n", "reply": b"pong\n"}[name]


# -- many connections, one thread ----------------------------------------------------------------


def test_200_concurrent_clients_are_all_served(
    sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket("tcp", sock_dir)
    factory = bh.protocol_factory("echo", "stream", bh.HandlerOptions())
    hooks = Hooks()
    serving = serve(sock, factory, events=hooks, count_bytes=False)
    # In two batches of 100, each accepted before the next: the accept queue (asyncio listens
    # with a backlog of 100) never overflows, so no connect waits out a 1 s SYN resend.
    clients: list[socket.socket] = []
    try:
        for batch in (1, 2):
            clients += [
                socket.create_connection(sock.getsockname(), timeout=10) for _ in range(100)
            ]
            hooks.wait("connected", 100 * batch)
        assert serving.server.active_connections == 200  # all open at once
        for i, client in enumerate(clients):
            client.sendall(b"%d\n" % i)
        for i, client in enumerate(clients):
            assert read_exactly(client, len(b"%d\n" % i)) == b"%d\n" % i
    finally:
        for client in clients:
            client.close()
    serving.stop()
    assert serving.server.active_connections == 0


class Rendezvous(asyncio.Protocol):
    """Answers nobody until `expected` connections have each sent a line: the replies of two
    slow handlers can only come if both run at the same time."""

    expected = 2
    waiting: list[Any] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiting = type(self).waiting
        waiting.append((self.transport, data))
        if len(waiting) == self.expected:
            for transport, line in waiting:
                transport.write(b"met " + line)
            waiting.clear()


def test_slow_handlers_overlap(sock_dir: str, serve: Callable[..., Serving]) -> None:
    sock = listening_socket("tcp", sock_dir)
    Rendezvous.waiting = []
    serving = serve(sock, Rendezvous)
    with socket.create_connection(sock.getsockname(), timeout=5) as a:
        with socket.create_connection(sock.getsockname(), timeout=5) as b:
            a.sendall(b"a\n")
            b.sendall(b"b\n")
            assert read_exactly(a, 6) == b"met a\n"
            assert read_exactly(b, 6) == b"met b\n"
    serving.stop()


# -- stopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_request_stop_returns_at_once_and_closes_the_listener(
    transport: str, sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket(transport, sock_dir)
    address = sock.getsockname()
    factory = bh.protocol_factory("echo", "stream", bh.HandlerOptions())
    serving = serve(sock, factory, count_bytes=False, hold=True)
    with socket.socket(sock.family) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(b"x")
        assert client.recv(10) == b"x"  # the loop runs
        started = time.monotonic()
        serving.server.request_stop()
        assert serving.returned.wait(5)
        assert time.monotonic() - started < 2.5  # poll_interval is 5 s: the stop woke the loop
        assert serving.server.active_connections == 1
        assert sock.fileno() == -1
        with socket.socket(sock.family) as late, pytest.raises(OSError):
            late.connect(address)  # nobody accepts any more
        client.sendall(b"y")  # an open connection is still served while draining
        serving._go.set()
        assert client.recv(10) == b"y"
    serving.finish()
    assert serving.server.active_connections == 0


def test_request_stop_from_a_protocol_callback(
    sock_dir: str, serve: Callable[..., Serving]
) -> None:
    holder: list[EventServer] = []

    class StopOnData(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            holder[0].request_stop()

    sock = listening_socket("tcp", sock_dir)
    serving = serve(sock, StopOnData)
    holder.append(serving.server)
    with socket.create_connection(sock.getsockname(), timeout=5) as client:
        client.sendall(b"stop")
        assert serving.returned.wait(5)
    serving.finish()


def test_close_connections_zero_aborts(sock_dir: str, serve: Callable[..., Serving]) -> None:
    sock = listening_socket("tcp", sock_dir)
    hooks = Hooks()
    serving = serve(
        sock,
        bh.protocol_factory("discard", "stream", bh.HandlerOptions()),
        events=hooks,
        count_bytes=False,
    )
    with socket.create_connection(sock.getsockname(), timeout=5) as client:
        hooks.wait("connected")
        serving.stop(0)
        assert client.recv(10) == b""
    assert serving.server.active_connections == 0


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_request_limit(transport: str, sock_dir: str, serve: Callable[..., Serving]) -> None:
    sock = listening_socket(transport, sock_dir)
    dgram = transport == "udp"
    observer = RecordsObserver()
    options = bh.HandlerOptions(observer=observer)
    factory = bh.protocol_factory("echo", "dgram" if dgram else "stream", options)
    hooks = Hooks()
    serving = serve(
        sock, factory, events=hooks, on_stop=hooks.stopping, count_bytes=False, request_limit=2
    )
    for i in range(2):
        with client_for(sock, sock_dir) as client:
            client.sendall(b"%d" % i)
            assert client.recv(10) == b"%d" % i
    assert serving.returned.wait(5)  # stopped by itself
    assert hooks.of("stopping") == [("stopping", "request limit reached")]
    assert serving.server.stop_reason == "request limit reached"
    serving.finish()
    assert len(observer.records) == 2


def test_connections_past_the_limit_are_not_served(
    sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket("tcp", sock_dir)
    clients = [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(3)]
    try:
        for client in clients:  # all three wait in the backlog when the server starts
            client.sendall(b"x")
        hooks = Hooks()
        factory = bh.protocol_factory("echo", "stream", bh.HandlerOptions())
        serving = serve(
            sock, factory, events=hooks, on_stop=hooks.stopping, count_bytes=False, request_limit=1
        )
        answers = []
        for client in clients:
            try:
                answers.append(client.recv(10))
            except ConnectionResetError:
                answers.append(b"")
        assert sorted(answers) == [b"", b"", b"x"]
    finally:
        for client in clients:
            client.close()
    assert serving.returned.wait(5)
    serving.finish()
    assert len(hooks.of("connected")) == 1


# -- user protocols: counting, errors, idle --------------------------------------------------------


class Fragile(asyncio.Protocol):
    """Echo that raises on b'boom'."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise ValueError("boom")
        self.transport.writelines([data, b"!"])


def test_user_protocol_is_counted_and_its_error_reported(
    sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket("tcp", sock_dir)
    hooks = Hooks()
    serving = serve(sock, Fragile, events=hooks)
    with socket.create_connection(sock.getsockname(), timeout=5) as client:
        client.sendall(b"boom")
        assert read_all(client) == b""  # the failing connection is aborted
    ((_, client_addr, exc),) = hooks.wait("error")
    assert isinstance(exc, ValueError) and exc.__traceback__ is not None
    assert client_addr[0] == "127.0.0.1"
    with socket.create_connection(sock.getsockname(), timeout=5) as client:  # still serving
        client.sendall(b"abc")
        assert read_exactly(client, 4) == b"abc!"
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b""
    serving.stop()
    assert [e[2:] for e in hooks.of("record")] == [(4, 0), (3, 4)]


class Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(16)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(memoryview(self.buf)[:nbytes].tobytes().upper())


def test_user_buffered_protocol_is_counted(sock_dir: str, serve: Callable[..., Serving]) -> None:
    sock = listening_socket("unix", sock_dir)
    hooks = Hooks()
    serving = serve(sock, Buffered, events=hooks)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(sock.getsockname())
        client.sendall(b"abc")
        assert client.recv(10) == b"ABC"
    hooks.wait("record")
    serving.stop()
    assert hooks.of("record")[0][2:] == (3, 3)


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"boom":
            raise ValueError("boom")
        self.transport.sendto(data * 2, addr)


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_user_datagram_protocol_counts_and_survives_errors(
    transport: str, sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket(transport, sock_dir)
    hooks = Hooks()
    serving = serve(sock, DatagramEcho, events=hooks)
    with client_for(sock, sock_dir) as client:
        client.send(b"boom")
        hooks.wait("error")
        client.send(b"ab")
        assert client.recv(10) == b"abab"
        hooks.wait("record", 2)
    serving.stop()
    assert [e[2:] for e in hooks.of("record")] == [(4, 0), (2, 4)]
    assert not hooks.of("connected")
    ((_, where, exc),) = hooks.of("error")
    assert isinstance(exc, ValueError) and where


class Exiting(asyncio.Protocol):
    """sys.exit() on b"exit", KeyboardInterrupt on b"int", else echo."""

    def __init__(self) -> None:
        if Exiting.refuse:
            Exiting.refuse = False
            raise KeyboardInterrupt

    refuse = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data == b"exit":
            raise SystemExit(3)
        if data == b"int":
            raise KeyboardInterrupt
        self.transport.write(data)


class ExitingDatagrams(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"exit":
            raise SystemExit(3)
        self.transport.sendto(data, addr)


def test_system_exit_and_keyboard_interrupt_of_a_protocol_are_errors(
    sock_dir: str, serve: Callable[..., Serving]
) -> None:
    """As an Exception: reported, the connection aborted, the loop goes on (asyncio's own
    loop would let them stop it)."""
    sock = listening_socket("tcp", sock_dir)
    hooks = Hooks()
    serving = serve(sock, Exiting, events=hooks)
    for payload in (b"exit", b"int"):
        with socket.create_connection(sock.getsockname(), timeout=5) as client:
            client.sendall(payload)
            assert read_all(client) == b""
    Exiting.refuse = True  # the next protocol's __init__ raises KeyboardInterrupt
    with socket.create_connection(sock.getsockname(), timeout=5) as client:
        hooks.wait("error", 3)
    with socket.create_connection(sock.getsockname(), timeout=5) as client:  # still serving
        client.sendall(b"fine")
        assert read_exactly(client, 4) == b"fine"
    serving.stop()
    errors = [type(e[2]) for e in hooks.of("error")]
    assert errors == [SystemExit, KeyboardInterrupt, KeyboardInterrupt]  # each reported once
    assert not serving.thread.is_alive()


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_system_exit_of_a_datagram_protocol_is_an_error(
    transport: str, sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket(transport, sock_dir)
    hooks = Hooks()
    serving = serve(sock, ExitingDatagrams, events=hooks)
    with client_for(sock, sock_dir) as client:
        client.send(b"exit")
        hooks.wait("error")
        client.send(b"ab")
        assert client.recv(10) == b"ab"
    serving.stop()
    ((_, _, exc),) = hooks.of("error")
    assert isinstance(exc, SystemExit)


def test_idle_connections_are_closed_and_reported(
    sock_dir: str, serve: Callable[..., Serving]
) -> None:
    sock = listening_socket("tcp", sock_dir)
    hooks = Hooks()
    factory = bh.protocol_factory("echo", "stream", bh.HandlerOptions())
    serving = serve(sock, factory, events=hooks, count_bytes=False, idle_timeout=0.1)
    with socket.create_connection(sock.getsockname(), timeout=5) as client:
        client.sendall(b"x")
        assert client.recv(10) == b"x"
        assert read_all(client) == b""  # then nothing: closed after 0.1 s
    ((_, _, exc),) = hooks.wait("error")
    assert isinstance(exc, TimeoutError)
    serving.stop()


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_request_stop_from_a_signal_handler_ends_serving_then_the_drain(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    sock_dir: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """As the lifecycle's handlers do: a signal only calls request_stop. The first ends
    serve_forever; one during `drain` ends the drain with a connection still open."""
    sock = listening_socket("tcp", sock_dir)
    hooks = Hooks()
    server = EventServer(
        sock,
        bh.protocol_factory("echo", "stream", bh.HandlerOptions()),
        events=hooks,
        count_bytes=False,
        loop_factory=loop_factory,
    )
    client = socket.create_connection(sock.getsockname(), timeout=5)
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)
        server.request_stop()

    def on_connected(c: Any) -> None:
        Hooks.connected(hooks, c)
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # the loop is running: a signal in 50 ms

    hooks.connected = on_connected  # type: ignore[method-assign]  # this test's hook
    old = signal.signal(signal.SIGALRM, on_signal)
    try:
        server.serve_forever(5.0)
        assert signals == [signal.SIGALRM]
        assert server.active_connections == 1  # the client does not go away by itself
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert server.drain(None) is False  # cut short by the second signal
        assert signals == [signal.SIGALRM, signal.SIGALRM]
        assert server.active_connections == 1
        server.close_connections(0)
        assert client.recv(10) == b""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        client.close()
    assert sock.fileno() == -1
    assert server.active_connections == 0
    assert not hooks.of("error")
    out, err = capfd.readouterr()
    assert "never retrieved" not in err and "Traceback" not in err


def test_drain_is_true_once_the_connections_ended(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], sock_dir: str
) -> None:
    sock = listening_socket("tcp", sock_dir)
    hooks = Hooks()
    server = EventServer(
        sock,
        bh.protocol_factory("echo", "stream", bh.HandlerOptions()),
        events=hooks,
        count_bytes=False,
        loop_factory=loop_factory,
    )
    result: dict[str, bool] = {}

    def run() -> None:
        server.serve_forever(5.0)
        result["drained"] = server.drain(10)
        server.close_connections(0)

    thread = threading.Thread(target=run, name="event-server")
    thread.start()
    with socket.create_connection(sock.getsockname(), timeout=5) as client:
        hooks.wait("connected")
        server.request_stop()
        client.sendall(b"x")
        assert client.recv(10) == b"x"  # served to its end
    thread.join(10)
    assert result == {"drained": True}
    assert server.active_connections == 0


# -- the real command ---------------------------------------------------------------------------


def test_example_echo_counts_bytes_and_stops_on_ctrl_c() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "examples/event_echo.py", "-v"], cwd=str(ROOT))
    url = wait_listening(child)
    child.expect(r"\(event, handler=")
    addr = inet_address(url)
    assert tcp_exchange(addr, b"hello") == b"hello"
    child.expect(r"close 127\.0\.0\.1:\d+ \(5 B in, 5 B out\)")
    child.sendintr()
    child.expect(r"1 connection, 5 B in, 5 B out, 0 errors \(SIGINT received\)")
    status, out = finish(child)
    assert status == 0
    assert "Traceback" not in out


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix", "unix-dgram"])
def test_builtin_through_the_command(transport: str, sock_dir: str) -> None:
    unix = transport.startswith("unix")
    path = os.path.join(sock_dir, "s.sock")
    child = spawn([transport, path if unix else ":0", "-c", "event", "-H", "upper"])
    url = wait_listening(child)
    family = socket.AF_UNIX if unix else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport in ("udp", "unix-dgram") else socket.SOCK_STREAM
    with socket.socket(family, kind) as client:
        client.settimeout(5)
        if kind == socket.SOCK_DGRAM and unix:
            client.bind(os.path.join(sock_dir, "c.sock"))
        client.connect(path if unix else inet_address(url))
        client.sendall(b"abc")
        assert client.recv(10) == b"ABC"
    unit = "datagram" if kind == socket.SOCK_DGRAM else "connection"
    if kind == socket.SOCK_STREAM:
        child.expect("close ")
    child.sendintr()
    child.expect(rf"1 {unit}, 3 B in, 3 B out, 0 errors")
    status, out = finish(child)
    assert status == 0, out
    assert not os.path.exists(path)


def test_once_serves_one_connection() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "echo", "--once"])
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"one") == b"one"
    status, out = finish(child)
    assert status == 0
    assert "1 connection, 3 B in, 3 B out" in out and "request limit reached" in out


def test_max_requests_counts_datagrams() -> None:
    child = spawn(["udp", ":0", "-c", "event", "-H", "echo", "--max-requests", "3"])
    addr = inet_address(wait_listening(child))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        for i in range(3):
            client.sendto(b"%d" % i, addr)
            assert client.recv(10) == b"%d" % i
    status, out = finish(child)
    assert status == 0
    assert "3 datagrams, 3 B in, 3 B out" in out and "request limit reached" in out


def open_client(child: Any) -> socket.socket:
    client = socket.create_connection(inet_address(wait_listening(child)), timeout=5)
    client.sendall(b"ping")
    assert client.recv(10) == b"ping"
    return client


def test_ctrl_c_drains_open_connections() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "echo"])
    with open_client(child) as client:
        child.sendintr()
        child.expect(r"stopping: waiting up to 5s for 1 request")
        client.sendall(b"more")  # still served while draining
        assert client.recv(10) == b"more"
    child.expect(r"1 connection, 8 B in, 8 B out, 0 errors \(SIGINT received\)")
    status, out = finish(child)
    assert status == 0
    assert "Traceback" not in out


def test_second_ctrl_c_forces_exit_130() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "echo"])
    with open_client(child) as client:
        child.sendintr()
        child.expect("stopping: waiting")
        child.sendintr()
        status, out = finish(child)
        assert client.recv(10) == b""
    assert status == 130
    assert "forced by a second signal" in out
    assert "Traceback" not in out and "never retrieved" not in out


def test_grace_expiry_aborts_a_hung_connection() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "echo", "--grace", "0.2"])
    with open_client(child) as client:
        child.sendintr()
        child.expect(r"grace period of 0.2s over: aborting requests")
        assert client.recv(10) == b""
    status, out = finish(child)
    assert status == 0
    assert "1 connection, 4 B in, 4 B out" in out
    assert "Traceback" not in out


def test_timeout_closes_idle_connections() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "echo", "--timeout", "0.2"])
    with open_client(child) as client:
        assert client.recv(10) == b""
    child.expect(r"closed idle connection 127\.0\.0\.1:\d+")
    child.sendintr()
    status, out = finish(child)
    assert status == 0
    assert "1 connection, 4 B in, 4 B out, 0 errors" in out


def test_user_protocols_report_errors_and_go_on(tmp_path: Path) -> None:
    handler = tmp_path / "fragile.py"
    handler.write_text(
        textwrap.dedent(
            """
            import asyncio

            class Fragile(asyncio.Protocol):
                def connection_made(self, transport):
                    self.transport = transport

                def data_received(self, data):
                    if data == b"boom":
                        raise ValueError("boom in data_received")
                    self.transport.write(data)
            """
        )
    )
    child = spawn(["tcp", ":0", "-c", "event", "-H", str(handler)])
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"boom") == b""
    child.expect(r"error handling 127\.0\.0\.1:\d+: ValueError: boom in data_received")
    child.expect("Traceback")
    assert tcp_exchange(addr, b"fine") == b"fine"
    child.sendintr()
    child.expect(r"2 connections, 8 B in, 4 B out, 1 error")
    status, _ = finish(child)
    assert status == 0


def test_user_datagram_protocol_through_the_command(tmp_path: Path) -> None:
    handler = tmp_path / "dgram.py"
    handler.write_text(
        textwrap.dedent(
            """
            import asyncio

            class Twice(asyncio.DatagramProtocol):
                def connection_made(self, transport):
                    self.transport = transport

                def datagram_received(self, data, addr):
                    if data == b"boom":
                        raise ValueError("boom in datagram_received")
                    self.transport.sendto(data * 2, addr)
            """
        )
    )
    child = spawn(["udp", ":0", "-c", "event", "-H", str(handler), "-v"])
    addr = inet_address(wait_listening(child))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"boom", addr)
        child.expect("ValueError: boom in datagram_received")
        client.sendto(b"abc", addr)
        assert client.recv(10) == b"abcabc"
    child.expect(r"datagram 127\.0\.0\.1:\d+: 3 B in, 6 B out")
    child.sendintr()
    child.expect(r"2 datagrams, 7 B in, 6 B out, 1 error")
    status, _ = finish(child)
    assert status == 0


USER_PROTOCOLS = """\
import asyncio


class Reverse(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.writelines([data[::-1], b"!"])


class Upper(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(64)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]).upper())


class Twice(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data * 2, addr)
"""


@pytest.mark.parametrize(
    ("transport", "name", "payload", "replies"),
    [
        ("tcp", "Reverse", b"hello\x00\xff", [b"\xff\x00olleh", b"!"]),  # write per line
        ("unix", "Reverse", b"abc", [b"cba", b"!"]),
        ("tcp", "Upper", b"shout\x01", [b"SHOUT\x01"]),  # get_buffer and buffer_updated
        ("unix", "Upper", b"quiet", [b"QUIET"]),
        ("udp", "Twice", b"dgram\x02", [b"dgram\x02dgram\x02"]),  # the datagram, and sendto
    ],
)
def test_a_user_protocol_shows_both_directions_with_vv(
    tmp_path: Path, sock_dir: str, transport: str, name: str, payload: bytes, replies: list[bytes]
) -> None:
    """The real command, --json -vv: a user's protocol gets the hex dump every handler gets,
    and its byte counts."""
    module = tmp_path / "protocols.py"
    module.write_text(USER_PROTOCOLS)
    path = os.path.join(sock_dir, "vv.sock")
    where = path if transport == "unix" else "127.0.0.1:0"
    child = spawn([transport, where, "-c", "event", "-H", f"{module}:{name}", "--json", "-vv"])
    seen = io.BytesIO()
    child.logfile_read = seen
    child.expect(rb'"url": "([\w-]+://[^"]+)"')
    url = child.match.group(1).decode()
    address = path if transport == "unix" else inet_address(url)
    reply = b"".join(replies)
    if transport == "tcp":
        assert tcp_exchange(address, payload) == reply
    else:
        family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        with socket.socket(family, kind) as client:
            client.settimeout(10)
            client.connect(address)
            client.sendall(payload)
            if transport == "unix":
                client.shutdown(socket.SHUT_WR)
                assert read_all(client) == reply
            else:
                assert client.recv(100) == reply
    child.expect(rb'"event": "(close|request)"')
    child.sendintr()
    status, _ = finish(child)
    out = seen.getvalue().decode()
    assert status == 0, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    data = [(e["direction"], e["hex"]) for e in events if e["event"] == "data"]
    assert data == [("in", payload.hex())] + [("out", r.hex()) for r in replies]
    [end] = [e for e in events if e["event"] in ("close", "request")]
    assert end["event"] == ("request" if transport == "udp" else "close")
    assert (end["bytes_in"], end["bytes_out"]) == (len(payload), len(reply))
    assert len({e["client"] for e in events if "client" in e}) == 1  # one client throughout


@pytest.mark.parametrize("mode", ["thread", "event"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_builtin_shows_the_same_with_vv_in_event_mode(transport: str, mode: str) -> None:
    """The real command, --json -vv: upper's chunks and counts, in event mode as with threads."""
    child = spawn([transport, "127.0.0.1:0", "-H", "upper", "-c", mode, "--json", "-vv"])
    seen = io.BytesIO()
    child.logfile_read = seen
    child.expect(rb'"url": "([\w-]+://[^"]+)"')
    address = inet_address(child.match.group(1).decode())
    if transport == "tcp":
        assert tcp_exchange(address, b"abc") == b"ABC"
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"abc", address)
            assert client.recv(100) == b"ABC"
    child.expect(rb'"event": "(close|request)"')
    child.sendintr()
    status, _ = finish(child)
    out = seen.getvalue().decode()
    assert status == 0, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    data = [(e["direction"], e["hex"]) for e in events if e["event"] == "data"]
    assert data == [("in", b"abc".hex()), ("out", b"ABC".hex())]
    [end] = [e for e in events if e["event"] in ("close", "request")]
    assert (end["bytes_in"], end["bytes_out"]) == (3, 3)
    assert len({e["client"] for e in events if "client" in e}) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "event", "-H", "HANDLER"], "is a request handler class; --concurrency event"),
        (["-H", str(EXAMPLE)], "is an asyncio protocol: it runs only with --concurrency event"),
    ],
)
def test_handler_of_the_wrong_kind_is_refused(
    args: list[str], message: str, tmp_path: Path
) -> None:
    handler = tmp_path / "rh.py"
    handler.write_text("import sockserve\n\nclass H(sockserve.BaseRequestHandler):\n    pass\n")
    args = [str(handler) if a == "HANDLER" else a for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "sockserve", "tcp", ":0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr


def test_stdout_closing_stops_the_server() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockserve",
            "tcp",
            ":0",
            "-c",
            "event",
            "-H",
            "stdout",
            "--print-address",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)  # 127.0.0.1:PORT
        addr = (host, int(port))
        with socket.create_connection(addr, timeout=5) as client:
            client.sendall(b"first\n")
            assert proc.stdout.read(6) == b"first\n"
            proc.stdout.close()  # like `| head -n 1`
            client.sendall(b"second\n")
            assert proc.wait(10) == 0
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test fails
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "(stdout closed)" in err
    assert "Traceback" not in err


def test_two_workers_serve_and_stop_gracefully() -> None:
    child = spawn(["tcp", ":0", "-c", "event", "-H", "echo", "--workers", "2"])
    addr = inet_address(wait_listening(child))
    for i in range(4):
        assert tcp_exchange(addr, b"w%d" % i) == b"w%d" % i
    child.sendintr()
    child.expect(r"4 connections, 8 B in, 8 B out, 0 errors")
    status, out = finish(child)
    assert status == 0
    assert "Traceback" not in out


def test_event_loop_warnings_reach_the_reporter(tmp_path: Path) -> None:
    """A loop message without an exception is logged by the event module: the command shows it
    on its output like every sockserve log record (logging was not loaded at set-up)."""
    handler = tmp_path / "warns.py"
    handler.write_text(
        textwrap.dedent(
            """
            import asyncio

            class Warns(asyncio.Protocol):
                def connection_made(self, transport):
                    asyncio.get_running_loop().call_exception_handler({"message": "odd event"})
                    transport.close()
            """
        )
    )
    child = spawn(["tcp", ":0", "-c", "event", "-H", f"{handler}:Warns", "--once"])
    addr = inet_address(wait_listening(child))
    with socket.create_connection(addr, timeout=10) as sock:
        assert sock.recv(10) == b""
    status, out = finish(child)
    assert status == 0
    assert "warning: odd event" in out  # the reporter's line, not logging's last resort
