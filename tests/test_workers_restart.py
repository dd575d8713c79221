"""--workers: a worker that dies while serving is started again; one that cannot start, or
workers that keep dying, stop the whole server with exit 1.

Through the real command where a worker can be killed (`jsonrun.JsonRun`, worker pids read
from /proc); the boot failure in-process, as test_workers does.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from jsonrun import JsonRun, children_of

from sockserve.addresses import parse_address
from sockserve.config import ServeConfig
from sockserve.console import PlainReporter
from sockserve.errors import ExitStatus
from sockserve.loading import load_handler
from sockserve.monitor import RunMonitor
from sockserve.workers import serve_workers

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"),
        reason="worker pids from /proc, pidfds",
    ),
]

TIMEOUT = 10

PID_HANDLER = textwrap.dedent(
    """
    import os
    import signal
    import socketserver

    class Pid(socketserver.BaseRequestHandler):
        def handle(self):
            if self.request.recv(10) == b"die":
                os.kill(os.getpid(), signal.SIGKILL)
            self.request.sendall(b"%d" % os.getpid())
    """
)


def ask(address: tuple[str, int], what: bytes = b"pid") -> bytes:
    """Send `what`, half-close, read the answer ("" if the worker died)."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(what)
        sock.shutdown(socket.SHUT_WR)
        try:
            return sock.recv(100)
        except ConnectionResetError:
            return b""


def wait_children(pid: int, check: object, timeout: float = TIMEOUT) -> list[int]:
    """Poll /proc until the children of `pid` satisfy `check` (a worker's fork is not an
    event this process can wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        children = children_of(pid)
        if check(children):  # type: ignore[operator]
            return children
        assert time.monotonic() < deadline, children
        time.sleep(0.02)


def start(tmp_path: Path, *extra: str) -> tuple[JsonRun, tuple[str, int]]:
    handler = tmp_path / "pid.py"
    handler.write_text(PID_HANDLER)
    run = JsonRun(
        ["tcp", "127.0.0.1:0", "--workers", "2", "-c", "sync", "-H", str(handler), *extra]
    )
    host, port = run.listening_url().removeprefix("tcp://").rsplit(":", 1)
    return run, (host, int(port))


def test_a_killed_worker_is_started_again_and_serves(tmp_path: Path) -> None:
    run, address = start(tmp_path)
    with run:
        supervisor = run.proc.pid
        first = wait_children(supervisor, lambda c: len(c) == 2)
        answered: set[int] = set()
        for _ in range(300):  # both serve (one killed before it serves is a boot failure)
            answered.add(int(ask(address)))
            if answered == set(first):
                break
        assert answered == set(first)
        victim, survivor = first
        os.kill(victim, signal.SIGKILL)
        warning = run.wait_for(lambda e: e["event"] == "warning")
        assert warning["message"] == f"worker {victim} died (killed by SIGKILL): starting another"
        now = wait_children(supervisor, lambda c: len(c) == 2 and victim not in c)
        (new,) = set(now) - {survivor}
        answers = set()
        for _ in range(300):  # the two workers race for each connection: the new one wins some
            answers.add(int(ask(address)))
            if new in answers:
                break
        assert new in answers, answers
        pidfds = [os.pidfd_open(pid) for pid in now]
        try:
            assert run.stop() == 0
            for fd in pidfds:  # every worker has exited: no child left behind
                assert select.select([fd], [], [], TIMEOUT)[0]
        finally:
            for fd in pidfds:
                os.close(fd)
        assert children_of(supervisor) == []
        shutdown = run.events[-1]
    assert shutdown["event"] == "shutdown" and shutdown["reason"] == "SIGTERM received"


def test_workers_that_keep_dying_stop_the_server(tmp_path: Path) -> None:
    run, address = start(tmp_path)
    with run:
        began = time.monotonic()
        while run.proc.poll() is None and time.monotonic() - began < 15:
            with contextlib.suppress(OSError):  # refused once the server is gone
                assert ask(address, b"die") == b""
        assert run.stop() == ExitStatus.ERROR
        took = time.monotonic() - began
        messages = [e["message"] for e in run.events if e["event"] == "warning"]
    assert took < 10  # five deaths, two slots, one start a second per slot: about 2 s
    assert len(messages) == 5
    assert all("died (killed by SIGKILL)" in m for m in messages)
    assert messages[-1].endswith("5 workers died within 10s: stopping")
    assert run.events[-1]["reason"] == "workers kept dying"


def test_a_worker_that_fails_to_start_stops_the_server() -> None:
    """gunicorn's rule: starting it again would only fail again."""
    out = io.StringIO()
    config = ServeConfig(
        family="inet",
        socktype="stream",
        address=parse_address("127.0.0.1:0", "inet"),
        handler=load_handler("echo"),
        workers=2,
    )
    monitor = RunMonitor(PlainReporter(out), config)

    def fails() -> None:  # pragma: no cover - in a worker, before it serves
        raise OSError("no way")

    monitor.become_worker = fails  # type: ignore[method-assign]

    def serve_one(signals: tuple[int, ...]) -> int:  # pragma: no cover - never reached
        raise AssertionError("a worker that failed to start never serves")
        return 0

    with socket.socket() as sock:
        server = SimpleNamespace(socket=sock, _unix_file=None)
        status = serve_workers(config, server, monitor, serve_one)
    assert status == ExitStatus.ERROR
    assert monitor.stop_reason == "a worker failed"
    assert "failed to start (exit status 1): stopping" in out.getvalue()
    assert out.getvalue().count("warning:") == 1  # the second is stopped, not a failure
