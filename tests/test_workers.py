"""workers: the --workers supervisor forks workers, forwards stop signals, adds their counts.

Each test forks real workers whose `serve_one` stands for the serve loop: it waits for its
stop signal (SIGTERM), records a request in the worker's monitor and returns.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from sockserve.addresses import parse_address
from sockserve.config import ServeConfig
from sockserve.console import PlainReporter
from sockserve.errors import ExitStatus
from sockserve.loading import load_handler
from sockserve.monitor import RunMonitor
from sockserve.workers import serve_workers

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="fork"),
    pytest.mark.skipif(
        threading.current_thread() is not threading.main_thread(),
        reason="signal handlers are installed from the main thread only",
    ),
]


@pytest.fixture
def run() -> Iterator[Any]:
    """run(make_serve_one, announce) -> (status, monitor, output); handlers checked after.

    `make_serve_one(monitor)` returns the worker's serve_one.
    """
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    sock = socket.socket()
    out = io.StringIO()

    def start(make_serve_one: Any, announce: Any = None) -> tuple[int, RunMonitor, str]:
        config = ServeConfig(
            family="inet",
            socktype="stream",
            address=parse_address("127.0.0.1:0", "inet"),
            handler=load_handler("echo"),
            workers=2,
        )
        monitor = RunMonitor(PlainReporter(out, verbosity=1), config)
        server = SimpleNamespace(socket=sock, _unix_file=("path", 0, 0))
        serve_one = make_serve_one(monitor)
        status = serve_workers(config, server, monitor, serve_one, announce=announce)
        return status, monitor, out.getvalue()

    yield start
    sock.close()
    assert {sig: signal.getsignal(sig) for sig in before} == before  # restored
    assert signal.set_wakeup_fd(-1) == -1


class Ready:
    """Workers tell they wait for their signal (one byte each); `wait()` in the supervisor."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def tell(self) -> None:  # pragma: no cover - in a worker
        os.write(self.w, b"x")

    def wait(self, workers: int = 2) -> None:
        got = b""
        while len(got) < workers:
            got += os.read(self.r, workers)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def ready() -> Iterator[Ready]:
    pipe = Ready()
    yield pipe
    pipe.close()


def stopped_after(ready: Ready, count: int, status: int = ExitStatus.OK) -> Any:
    """A serve_one that returns after `count` of its stop signals, with one request counted."""

    def make(monitor: RunMonitor) -> Any:
        def serve_one(signals: tuple[int, ...]) -> int:  # pragma: no cover - in a worker
            ok = signals == (signal.SIGTERM,) and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            ready.tell()
            for _ in range(count):
                signal.sigwait(signals)
                ready.tell()
            if ok:  # SIGTERM stops a worker; SIGINT (Ctrl-C) is the supervisor's
                monitor.record(("127.0.0.1", os.getpid()), 3, 4)
            return status

        return serve_one

    return make


def kill_self(ready: Ready, times: int = 1) -> threading.Thread:
    """Send SIGTERM to this process (the supervisor) `times` times, each once every worker
    waits for it (a second signal sent too soon could merge with the first in a worker)."""

    def send() -> None:
        for _ in range(times):
            ready.wait()
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send, name="kill-self", daemon=True)
    thread.start()
    return thread


def test_a_signal_stops_every_worker_and_their_counts_add_up(run: Any, ready: Ready) -> None:
    status, monitor, out = run(stopped_after(ready, 1), lambda: kill_self(ready))
    assert status == ExitStatus.OK
    assert monitor.stop_reason == "SIGTERM received"
    assert (monitor.stats.requests, monitor.stats.bytes_in, monitor.stats.bytes_out) == (2, 6, 8)
    assert "warning" not in out


def test_a_second_signal_is_forwarded_and_forces_the_exit(run: Any, ready: Ready) -> None:
    serve_one = stopped_after(ready, 2, ExitStatus.INTERRUPTED)
    status, monitor, _ = run(serve_one, lambda: kill_self(ready, 2))
    assert status == ExitStatus.INTERRUPTED
    assert monitor.stop_reason == "SIGTERM received"
    assert monitor.stats.requests == 2  # each worker saw both signals


def test_a_worker_that_exits_unasked_stops_the_others(run: Any, tmp_path: Any) -> None:
    flag = str(tmp_path / "first")

    def make(monitor: RunMonitor) -> Any:
        def serve_one(signals: tuple[int, ...]) -> int:  # pragma: no cover - in a worker
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                signal.sigwait(signals)  # the other one waits to be stopped
                return ExitStatus.OK
            return ExitStatus.ERROR  # exactly one worker fails at once

        return serve_one

    status, monitor, out = run(make)
    assert status == ExitStatus.ERROR
    assert monitor.stop_reason == "a worker exited"
    assert "exited with status 1: stopping" in out


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"),
    reason="PR_SET_PDEATHSIG and pidfds are Linux's",
)
def test_workers_stop_when_their_supervisor_is_killed() -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: the kernel does it, so
    no worker goes on serving as an orphan."""
    server = subprocess.Popen(
        [sys.executable, "-m", "sockserve", "tcp", "127.0.0.1:0", "--workers", "2"]
        + ["-q", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    children: list[int] = []
    try:
        assert server.stdout is not None
        assert server.stdout.readline()  # the address: the workers were forked before it
        deadline = time.monotonic() + 10
        while len(children) < 2 and time.monotonic() < deadline:
            tasks = f"/proc/{server.pid}/task"
            children = [
                int(pid)
                for task in os.listdir(tasks)
                for pid in open(f"{tasks}/{task}/children").read().split()
            ]
        assert len(children) == 2
        pidfds = [os.pidfd_open(pid) for pid in children]
        try:
            server.kill()
            server.wait(10)
            for fd in pidfds:
                readable, _, _ = select.select([fd], [], [], 10)
                assert readable, "a worker outlived its supervisor"
        finally:
            for fd in pidfds:
                os.close(fd)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        for pid in children:  # a failed test leaves no orphan either
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()
