"""Every connection's `connect` has its `close`, and the summary's totals are exact, however
the run stops (issue 15, items 2 and 11): through the real command, in every mode.

Each client sends N bytes, reads them back (so the server has counted them) and stays
connected; Ctrl-C (SIGINT to the process group, as a terminal sends it) then stops the run,
and the handler, blocked on its socket, is aborted at the end of `--grace` (graceful) or at a
second Ctrl-C (forced, with a long grace period). The events go to a file, which never makes
the server wait as a terminal nobody reads would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import finish, spawn, wait_process

MODES = ("sync", "thread", "fork", "event")
N = 64 * 1024
GRACE = 0.15
#: A stop takes the grace period, then the abort's wait (no longer than the grace period
#: for handlers that end when their socket is shut down); the rest is the machine's slack.
STOP_BOUND = 2 * GRACE + 1.5

#: A user's echo handler (and its event-mode protocol) that first says which process serves.
USER_HANDLER = textwrap.dedent(
    """
    import asyncio
    import os
    import sockserve

    def hello():
        return f"{os.getpid()} {os.getppid()}\\n".encode()

    class Echo(sockserve.BaseRequestHandler):
        def handle(self):
            self.request.sendall(hello())
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class EchoProtocol(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            transport.write(hello())

        def data_received(self, data):
            self.transport.write(data)
    """
)


def events_of(log: Path) -> list[dict[str, Any]]:
    """The JSON events the command wrote."""
    return [json.loads(line) for line in log.read_text().splitlines()]


def check_counts(events: list[dict[str, Any]], clients: int, sent: list[int]) -> None:
    """One close per connect, each with its bytes; the shutdown's totals are their sums."""
    kinds = [e["event"] for e in events]
    assert kinds.count("connect") == clients
    closes = [e for e in events if e["event"] == "close"]
    assert sorted(e["client"] for e in closes) == sorted(
        e["client"] for e in events if e["event"] == "connect"
    )
    assert sorted(e["bytes_in"] for e in closes) == [N] * clients
    assert sorted(e["bytes_out"] for e in closes) == sorted(sent)
    (shutdown,) = [e for e in events if e["event"] == "shutdown"]
    assert shutdown["connections"] == clients
    assert shutdown["requests"] == clients
    assert shutdown["bytes_in"] == sum(e["bytes_in"] for e in closes) == N * clients
    assert shutdown["bytes_out"] == sum(e["bytes_out"] for e in closes)
    assert kinds.index("shutdown") == len(kinds) - 1  # no close after the summary


Started = tuple[subprocess.Popen[bytes], tuple[str, int], Path]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Start the command with --json in a process group of its own (with a grace period that
    a second Ctrl-C will cut, if `forced`); it returns the process, the address it listens on
    and the file its events go to. What a failed test left running is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], forced: bool = False) -> Started:
        grace = "30s" if forced else f"{GRACE}s"
        log = tmp_path / "events.jsonl"
        with log.open("wb") as stderr:
            server = subprocess.Popen(
                [sys.executable, "-m", "sockserve", "tcp", ":0", "--print-address", "--json"]
                + ["--grace", grace, *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        started.append(server)
        assert server.stdout is not None
        host, port = server.stdout.readline().decode().strip().rsplit(":", 1)
        return server, (host, int(port)), log

    yield run
    for server in started:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def echo_client(address: tuple[str, int], greeting: bool = False) -> tuple[socket.socket, bytes]:
    """Connect, send N bytes and read them back (after the greeting line, if there is one);
    return the connected socket and the greeting."""
    s = socket.create_connection(address, timeout=10)
    hello = b""
    while greeting and not hello.endswith(b"\n"):
        hello += s.recv(1)
    s.sendall(b"x" * N)
    got = 0
    while got < N:
        chunk = s.recv(65536)
        assert chunk
        got += len(chunk)
    return s, hello


def stop(server: subprocess.Popen[bytes], forced: bool) -> tuple[int, float]:
    """Ctrl-C (again and again if `forced`, until it stops: signals sent too close together
    count as one); return the exit status and how long the stop took."""
    started = time.monotonic()
    os.killpg(server.pid, signal.SIGINT)
    while forced:  # the grace period is long: only a second Ctrl-C ends the run
        try:
            wait_process(server, 0.1)
            break
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGINT)
    status = wait_process(server, 15)
    return status, time.monotonic() - started


@pytest.mark.parametrize("forced", [False, True], ids=["grace-over", "second-ctrl-c"])
@pytest.mark.parametrize("mode", MODES)
def test_builtin_connections_stopped_by_ctrl_c_are_counted(
    start: Callable[..., Started], mode: str, forced: bool
) -> None:
    server, address, log = start(["-H", "echo", "-c", mode], forced)
    client, _ = echo_client(address)
    with client:
        status, took = stop(server, forced)
    check_counts(events_of(log), 1, [N])
    assert status == (130 if forced else 0)
    assert took < STOP_BOUND


@pytest.mark.parametrize("forced", [False, True], ids=["grace-over", "second-ctrl-c"])
@pytest.mark.parametrize("mode", MODES)
def test_user_handler_connections_stopped_by_ctrl_c_are_counted(
    tmp_path: Path, start: Callable[..., Started], mode: str, forced: bool
) -> None:
    handler = tmp_path / "echo.py"
    handler.write_text(USER_HANDLER)
    name = "EchoProtocol" if mode == "event" else "Echo"
    server, address, log = start(["-H", f"{handler}:{name}", "-c", mode], forced)
    client, hello = echo_client(address, greeting=True)
    with client:
        status, took = stop(server, forced)
    check_counts(events_of(log), 1, [len(hello) + N])
    assert status == (130 if forced else 0)
    assert took < STOP_BOUND


@pytest.mark.parametrize("mode", MODES)
def test_workers_report_every_connection(
    tmp_path: Path, start: Callable[..., Started], mode: str
) -> None:
    handler = tmp_path / "echo.py"
    handler.write_text(USER_HANDLER)
    name = "EchoProtocol" if mode == "event" else "Echo"
    args = ["-H", f"{handler}:{name}", "-c", mode, "--workers", "2"]
    server, address, log = start(args)
    clients: list[socket.socket] = []
    sent: list[int] = []
    workers: set[int] = set()
    give_up = time.monotonic() + 10
    try:
        # Connect until both workers serve one that stays connected (a sync worker serves
        # one at a time; a worker still starting takes none); the others are closed.
        while len(workers) < 2:
            assert time.monotonic() < give_up, "the connections all went to one worker"
            client, hello = echo_client(address, greeting=True)
            sent.append(len(hello) + N)
            pid, ppid = (int(n) for n in hello.split())
            worker = pid if ppid == server.pid else ppid  # fork mode: the worker's child
            if worker in workers:
                client.close()
            workers.add(worker)
            clients.append(client)
        status, took = stop(server, forced=False)
    finally:
        for client in clients:
            client.close()
    check_counts(events_of(log), len(clients), sent)
    assert status == 0
    assert took < STOP_BOUND


def test_workers_of_builtins_report_every_connection(start: Callable[..., Started]) -> None:
    server, address, log = start(["-H", "echo", "-c", "sync", "--workers", "2"])
    # Two sync workers, each busy with one connection: the two are on different workers.
    first, _ = echo_client(address)
    second, _ = echo_client(address)
    with first, second:
        status, took = stop(server, forced=False)
    check_counts(events_of(log), 2, [N, N])
    assert status == 0
    assert took < STOP_BOUND


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("mode", MODES)
def test_sighup_stops_gracefully_and_removes_the_socket_file(
    sock_dir: str, mode: str, workers: str
) -> None:
    path = os.path.join(sock_dir, "hup.sock")
    args = ["-H", "echo", "-c", mode, "--workers", workers, "--grace", f"{GRACE}s"]
    child = spawn(["unix", path, *args])
    child.expect("listening on")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"abc")
        assert s.recv(3) == b"abc"
        os.killpg(child.pid, signal.SIGHUP)  # a closed terminal: to the whole group
        if mode != "sync":  # sync: the loop is inside the handler, no line says it heard
            child.expect("stopping: waiting up to")  # the connection is in the drain
            s.shutdown(socket.SHUT_WR)  # it ends by itself: the drain ends now, not at grace
            assert s.recv(10) == b""
        status, out = finish(child)
    assert status == 0
    assert "1 connection, 3 B in, 3 B out" in out
    assert "(SIGHUP received)" in out
    assert not os.path.exists(path)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2], ids=["usr1", "usr2"])
def test_sigusr_is_ignored_with_a_line(sock_dir: str, signum: signal.Signals, workers: str) -> None:
    path = os.path.join(sock_dir, "usr.sock")
    child = spawn(["unix", path, "-H", "upper", "--workers", workers])
    child.expect("listening on")
    os.kill(child.pid, signum)
    child.expect(f"{signum.name} ignored")
    with socket.socket(socket.AF_UNIX) as s:  # still serving
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"abc")
        assert s.recv(3) == b"ABC"
    os.kill(child.pid, signal.SIGTERM)
    status, out = finish(child)
    assert status == 0
    assert "stopped after" in out
    assert not os.path.exists(path)
