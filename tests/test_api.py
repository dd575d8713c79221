"""api: sockserve.serve runs a server in a thread of this process, records what it sees, and
stops as the command does, leaving nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import sockserve
from sockserve.api import Server

TIMEOUT = 5

pytestmark = pytest.mark.leakcheck


@pytest.fixture(scope="module", autouse=True)
def event_loop_ready() -> None:
    """Run event mode once before the leak checks: uvloop keeps a pipe for the process from
    its first loop on."""
    sockserve.serve("tcp", concurrency="event").stop()


def exchange(server: Server, data: bytes) -> bytes:
    """Send `data` (a datagram, or a line and the end of input) and return the answer."""
    family = socket.AF_UNIX if server.path else socket.AF_INET
    if server.transport in ("udp", "unix-dgram"):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            if family == socket.AF_UNIX:  # an unnamed unix client gets no answer: bind it
                sock.bind(server.path + ".client")
            try:
                sock.sendto(data, server.address)
                return sock.recv(65536)
            finally:
                if family == socket.AF_UNIX:
                    os.unlink(server.path + ".client")
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(server.address)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("proto", ["tcp", "udp", "unix", "unix-dgram"])
def test_each_transport_serves_and_records_the_connection(proto: str) -> None:
    with sockserve.serve(proto, handler="upper") as server:
        assert exchange(server, b"hello\n") == b"HELLO\n"
        (conn,) = server.wait_for_connections(1, timeout=TIMEOUT)
        server.wait_for_data(b"hello", timeout=TIMEOUT)
        assert conn.data_in == b"hello\n"
        if proto in ("unix", "unix-dgram"):
            assert server.host is None and server.port is None
            assert os.path.exists(server.path)
            path = server.path
        else:
            assert server.address == ("127.0.0.1", server.port) and server.port > 0
            assert server.path is None
    assert not server.running
    (conn,) = server.connections
    assert conn.closed and (conn.bytes_in, conn.bytes_out) == (6, 6)
    assert conn.data_out == b"HELLO\n"
    if proto in ("unix", "unix-dgram"):  # the socket file and its temporary directory: gone
        assert not os.path.exists(os.path.dirname(path))


@pytest.mark.parametrize("concurrency", ["sync", "thread", "fork", "event"])
def test_every_concurrency_mode_starts_and_stops(concurrency: str) -> None:
    with sockserve.serve("tcp", "127.0.0.1:0", concurrency=concurrency) as server:
        assert exchange(server, b"one") == b"one"
        assert exchange(server, b"two") == b"two"
        server.wait_for_connections(2, timeout=TIMEOUT)
    if concurrency == "fork":  # the children's chunks stay in the children: counts only
        assert [c.data_in for c in server.connections] == [b"", b""]
        with pytest.raises(sockserve.UsageError, match="fork mode"):
            server.wait_for_data(b"one")
    else:
        assert [c.data_in for c in server.connections] == [b"one", b"two"]
    assert server.status == 0
    assert server.lines[-1].startswith("stopped after")
    assert "2 connections, 6 B in, 6 B out, 0 errors (stopped)" in server.lines[-1]


class Shout(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        if line.startswith(b"boom"):
            raise ValueError("no boom here")
        self.wfile.write(line.upper())


def test_a_handler_class_and_its_errors() -> None:
    with sockserve.serve("tcp", handler=Shout) as server:
        assert exchange(server, b"hi\n") == b"HI\n"
        assert server.errors == []
        assert exchange(server, b"boom\n") == b""
        (error,) = server.errors
        assert isinstance(error.exception, ValueError)
        assert "no boom here" in error.traceback and "test_api.py" in error.traceback
        assert str(error).startswith("error handling 127.0.0.1:")
        assert server.take_errors() == [error]
        assert server.errors == []
    counts = [(c.bytes_in, c.bytes_out) for c in server.connections]
    assert counts == [(3, 3), (5, 0)]  # a handler of one's own: counted as the command counts


def test_the_commands_errors_are_exceptions_never_system_exit() -> None:
    with pytest.raises(sockserve.UsageError, match="--max-threads must be at least 1"):
        sockserve.serve("tcp", max_threads=0)
    with pytest.raises(sockserve.UsageError, match="--max-children only applies"):
        sockserve.serve("tcp", max_children=2)
    with pytest.raises(sockserve.UsageError, match="unknown protocol 'sctp'"):
        sockserve.serve("sctp")
    with pytest.raises(sockserve.HandlerLoadError, match="nonesuch"):
        sockserve.serve("tcp", handler="nonesuch")
    with pytest.raises(sockserve.HandlerLoadError, match="is not a handler class"):
        sockserve.serve("tcp", handler=dict)
    with pytest.raises(sockserve.HandlerLoadError, match="cannot serve udp"):
        sockserve.serve("udp", handler=Shout)
    with pytest.raises(sockserve.UsageError, match="--workers shapes the command's"):
        sockserve.serve("tcp", workers=2)
    with pytest.raises(TypeError, match="no_such_option"):
        sockserve.serve("tcp", no_such_option=1)
    with sockserve.serve("tcp") as server:
        with pytest.raises(sockserve.EnvironmentProblem, match="already in use"):
            sockserve.serve("tcp", f"127.0.0.1:{server.port}")
    assert issubclass(sockserve.UsageError, sockserve.SockserveError)
    assert "serve" not in sockserve.__all__ and "UsageError" not in sockserve.__all__


def test_waits_block_until_the_event_and_time_out_with_what_was_seen() -> None:
    with sockserve.serve("tcp") as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="0 of 1 connections after 0.1s"):
            server.wait_for_connections(1, timeout=0.1)
        with pytest.raises(TimeoutError, match=r"matched b'x' after 0.1s"):
            server.wait_for_data("x", timeout=0.1)
        assert time.monotonic() - started < 2

        answers: list[bytes] = []
        client = threading.Thread(target=lambda: answers.append(exchange(server, b"ab123cd")))
        client.start()
        conn = server.wait_for_data(re.compile(rb"\d{3}"), timeout=TIMEOUT)
        assert b"123" in conn.data_in
        client.join(TIMEOUT)
        assert server.wait_for_data(b"cd", timeout=TIMEOUT, direction="out") is conn
    assert answers == [b"ab123cd"]


def test_capture_off_keeps_counts_only() -> None:
    with sockserve.serve("tcp", capture=False) as server:
        assert exchange(server, b"abc") == b"abc"
        server.wait_for_connections(1, timeout=TIMEOUT)
        with pytest.raises(sockserve.UsageError, match="server capture=False"):
            server.wait_for_data(b"abc")
    (conn,) = server.connections
    assert conn.data_in == b"" and conn.bytes_in == 3


class Gated(sockserve.StreamRequestHandler):
    gate = threading.Event()

    def handle(self) -> None:
        self.rfile.readline()
        self.gate.wait(TIMEOUT)
        self.wfile.write(b"done\n")


def test_stop_drains_what_is_in_flight_and_refuses_new_clients() -> None:
    Gated.gate.clear()
    server = sockserve.serve("tcp", handler=Gated)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"go\n")
        server.wait_for_data(b"go\n", timeout=TIMEOUT)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the listener closes at once; the handler in flight goes on
            try:
                socket.create_connection(server.address, timeout=TIMEOUT).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: queued, then closed
                break
            assert time.monotonic() < deadline, "still accepting after stop()"
            stopper.join(0.01)
        assert stopper.is_alive()
        Gated.gate.set()
        assert sock.recv(100) == b"done\n"
        stopper.join(TIMEOUT)
    assert not stopper.is_alive() and not server.running


def test_stop_aborts_after_the_grace_period() -> None:
    with socket.socket() as sock:
        sock.settimeout(TIMEOUT)
        server = sockserve.serve("tcp", grace=0.2)
        sock.connect(server.address)
        server.wait_for_connections(1, timeout=TIMEOUT)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        assert sock.recv(10) == b""  # aborted
    assert "grace period of 0.2s over: aborting requests" in "\n".join(server.lines)


def test_async_forms_do_not_need_the_loop_to_wait() -> None:
    async def main() -> list[bytes]:
        got = []
        async with sockserve.serve_async("tcp", handler="upper") as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"abc\n")
            got.append(await asyncio.wait_for(reader.readline(), TIMEOUT))
            writer.close()
            await writer.wait_closed()
        assert not server.running
        async with sockserve.serve("tcp") as other:
            reader, writer = await asyncio.open_connection(*other.address)
            writer.write(b"xyz\n")
            got.append(await asyncio.wait_for(reader.readline(), TIMEOUT))
            writer.close()
            await writer.wait_closed()
        assert not other.running
        return got

    assert asyncio.run(main()) == [b"ABC\n", b"xyz\n"]


def test_serving_installs_no_signal_handler() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with sockserve.serve("tcp"):
        assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.parametrize(
    "code",
    [
        "import sockserve; sockserve.serve; sockserve.UsageError",
        "import sockserve.pytest_plugin",
    ],
)
def test_the_api_and_the_plugin_load_neither_click_nor_rich(code: str) -> None:
    check = code + "; import sys; print(sorted({'click', 'rich'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_server_repr_and_url() -> None:
    with sockserve.serve("tcp", "[::1]:0") as server:
        assert server.url == f"tcp://[::1]:{server.port}"
        assert repr(server) == f"<sockserve.Server {server.url} running>"
        assert server.ca_file is None
    assert repr(server).endswith("stopped>")


def test_stop_twice_is_harmless() -> None:
    server: Any = sockserve.serve("udp")
    server.stop()
    server.stop()
    assert not server.running


def test_the_readme_example_runs_as_it_says() -> None:
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "api_upper.py")
    out = subprocess.run(
        [sys.executable, example], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.splitlines() == ["b'HELLO\\n'", "6 6 b'hello\\n'"]
    assert out.stderr == ""  # nothing printed: the server records instead


def test_a_fork_of_the_users_own_keeps_its_signals_while_a_server_runs() -> None:
    """Only fork mode's request children take the run's child set-up (SIGTERM aborts their
    connection, SIGINT ignored): a process the user forks meanwhile keeps its own."""
    with sockserve.serve("tcp"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            os._exit(0 if default else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_unix_socket_fits_even_under_a_long_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    base = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    long_tmp = os.path.join(base, "x" * 100)
    os.mkdir(long_tmp)
    monkeypatch.setattr(tempfile, "tempdir", long_tmp)
    try:
        with sockserve.serve("unix", handler="upper") as server:
            assert server.path.startswith("/tmp/sockserve-")
            assert exchange(server, b"short\n") == b"SHORT\n"
        assert not os.path.exists(os.path.dirname(server.path))
    finally:
        os.rmdir(long_tmp)
        os.rmdir(base)


def test_an_async_stop_lets_the_event_loop_run_meanwhile() -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with sockserve.serve_async("tcp", grace=0.3) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            await asyncio.to_thread(server.wait_for_connections, 1, TIMEOUT)
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            ticks = 0
        # The stop waited the grace period for the open connection, and the loop ticked on.
        stopped_with = ticks
        task.cancel()
        writer.close()
        return stopped_with

    assert asyncio.run(main()) >= 5


def test_tls_gives_the_ca_file_a_client_verifies_with() -> None:
    import ssl

    with sockserve.serve("tcp", handler="upper", tls=True) as server:
        assert server.ca_file is not None and os.path.exists(server.ca_file)
        context = ssl.create_default_context(cafile=server.ca_file)
        with (
            socket.create_connection(server.address, timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as client,
        ):
            client.sendall(b"hi")
            assert client.recv(10) == b"HI"
        ca_file = server.ca_file
    assert not os.path.exists(ca_file)  # a throwaway CA goes with its server
    with sockserve.serve("tcp") as plain:
        assert plain.ca_file is None
