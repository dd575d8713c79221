"""Shared fixtures.

Framework fixtures (for tests/test_framework_*.py):

- `leakcheck`: a module that sets ``pytestmark = pytest.mark.leakcheck`` gets, around each of
  its tests, a check that no file descriptor, thread or child process was left behind.
- `sock_dir`: a short directory under /tmp for Unix socket paths (AF_UNIX allows ~108 bytes,
  which pytest's tmp_path can exceed).
- `transport`: each of the four family × type combinations (tcp, udp, unix, unix-dgram) with
  its server classes and a client for it; `Handler` is a request handler base that reads and
  replies the same way on stream and datagram requests.
- `run_server`: runs `serve_forever` in a thread and stops and closes the server afterwards.

Markers: `slow` tests (the example project's run, from a wheel) run only with --run-slow.

Command fixtures:

- `captured`: replaces `runner.serve`, so that invoking the click command records the
  ServeConfig it built (a list, one config per invocation) instead of serving.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import sockserve as ss
from tests.clitools import end_tracked

#: A user's project, with tests of its own: run by test_example_project.py, not collected here.
collect_ignore = ["example_project"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run the tests marked slow (CI runs them)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "leakcheck: fail a test that leaves file descriptors, threads or children"
    )
    config.addinivalue_line(
        "markers", "slow: a test of a minute or so, skipped unless --run-slow is given"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (CI runs it as a step of its own)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


# -- leak check ------------------------------------------------------------------------------


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass  # the descriptor listdir used for the directory itself, closed by now
    return fds


def child_pids() -> list[int]:
    """Pids of this process's children, running or zombie.

    Linux lists each thread's children in /proc (a child whose thread ended passes to
    another): reading those is a few reads, where a scan of /proc opens every process's stat.
    """
    try:
        found: set[int] = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(pid) for pid in f.read().split())
        return sorted(found)
    except OSError:  # no such file (a kernel without it), or a thread that just ended
        pass
    me, children = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the process went away meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == me:  # (comm) may contain spaces
            children.append(int(name))
    return children


@pytest.fixture(autouse=True)
def leakcheck(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests marked `leakcheck`: no new fds, threads or children once the test is over."""
    if request.node.get_closest_marker("leakcheck") is None:
        yield
        return
    fds_before, threads_before = open_fds(), set(threading.enumerate())
    children_before = set(child_pids())  # a test of a module without the check may leave one
    yield
    deadline = time.monotonic() + 2.0  # threads that are just finishing get a moment
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(max(0.0, deadline - time.monotonic()))
    threads = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    fds = {fd: path for fd, path in open_fds().items() if fds_before.get(fd) != path}
    children = [pid for pid in child_pids() if pid not in children_before]
    for pid in children:  # ours by definition; end them so one failure does not cascade
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not threads, f"threads left running: {threads}"
    assert not fds, f"file descriptors left open: {fds}"
    assert not children, f"child processes left behind: {children}"


@pytest.fixture(autouse=True)
def no_server_left() -> Iterator[None]:
    """End (by its pid) any sockserve a test started with `clitools.track` and left running,
    as a failed assertion midway does (after `leakcheck` is set up: ended before it checks)."""
    yield
    end_tracked()


# -- transports ------------------------------------------------------------------------------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace runner.serve: record the config instead of serving."""
    from sockserve import runner
    from sockserve.errors import ExitStatus

    seen: list[Any] = []

    def fake_serve(config: Any, reporter: Any) -> ExitStatus:
        seen.append(config)
        return ExitStatus.OK

    monkeypatch.setattr(runner, "serve", fake_serve)
    return seen


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A fresh short directory under /tmp, for Unix socket paths."""
    path = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Handler(ss.BaseRequestHandler):
    """A handler base with `read()` and `reply()` for both stream and datagram requests."""

    def read(self) -> bytes:
        """The datagram, or what one recv() returns on a connection."""
        if isinstance(self.request, tuple):
            return self.request[0]
        return self.request.recv(65536)

    def reply(self, data: bytes) -> None:
        """Send `data` back to the client."""
        if isinstance(self.request, tuple):
            self.request[1].sendto(data, self.client_address)
        else:
            self.request.sendall(data)


CONCURRENCY = ("sync", "threading", "forking")


@dataclass(frozen=True)
class Transport:
    """One family × type combination: its server classes, addresses and a client."""

    name: str
    family: int
    stream: bool
    classes: dict[str, type[ss.BaseServer]]
    directory: str

    Handler = Handler

    @property
    def unix(self) -> bool:
        return self.family == socket.AF_UNIX

    def address(self) -> Any:
        """A fresh address to bind: port 0 on 127.0.0.1, or a new path in the short dir."""
        if self.unix:
            return os.path.join(self.directory, f"s-{uuid.uuid4().hex[:8]}")
        return ("127.0.0.1", 0)

    def server_class(self, concurrency: str = "sync", **attrs: Any) -> type[Any]:
        """The server class for `concurrency`, subclassed with `attrs` when given."""
        cls = self.classes[concurrency]
        return type(cls.__name__, (cls,), attrs) if attrs else cls

    def make(
        self, handler: type[ss.BaseRequestHandler], concurrency: str = "sync", **attrs: Any
    ) -> Any:
        """A bound, activated server (use it in a `with` block, or hand it to run_server)."""
        return self.server_class(concurrency, **attrs)(self.address(), handler)

    def client(self, server: Any) -> socket.socket:
        """A client socket (with a timeout) connected to `server`."""
        sock = socket.socket(self.family, socket.SOCK_STREAM if self.stream else socket.SOCK_DGRAM)
        sock.settimeout(5)
        if not self.stream:  # a bound client, so that the server can reply
            sock.bind(self.address())
        sock.connect(server.server_address)
        return sock

    def receive(self, sock: socket.socket) -> bytes:
        """A datagram, or everything until the server closes the connection."""
        if not self.stream:
            return sock.recv(65536)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def request(self, server: Any, data: bytes) -> bytes:
        """Send `data` in a fresh client and return the whole reply."""
        with self.client(server) as sock:
            sock.sendall(data)
            return self.receive(sock)


def _classes(prefix: str) -> dict[str, type[ss.BaseServer]]:
    return {
        "sync": getattr(ss, f"{prefix}Server"),
        "threading": getattr(ss, f"Threading{prefix}Server"),
        "forking": getattr(ss, f"Forking{prefix}Server"),
    }


TRANSPORTS: dict[str, tuple[int, bool, str]] = {
    "tcp": (socket.AF_INET, True, "TCP"),
    "udp": (socket.AF_INET, False, "UDP"),
    "unix": (socket.AF_UNIX, True, "UnixStream"),
    "unix-dgram": (socket.AF_UNIX, False, "UnixDatagram"),
}


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest, sock_dir: str) -> Transport:
    """Each of tcp, udp, unix and unix-dgram in turn."""
    family, stream, prefix = TRANSPORTS[request.param]
    return Transport(request.param, family, stream, _classes(prefix), sock_dir)


@pytest.fixture
def run_server() -> Iterator[Callable[..., Any]]:
    """Start `serve_forever(poll_interval)` in a thread; shut down and close at teardown."""
    running: list[tuple[Any, threading.Thread]] = []

    def start(server: Any, poll_interval: float = 0.01) -> threading.Thread:
        thread = threading.Thread(
            target=server.serve_forever, args=(poll_interval,), name="serve_forever", daemon=True
        )
        thread.start()
        running.append((server, thread))
        return thread

    yield start
    for server, thread in reversed(running):
        if thread.is_alive():  # a deadlocked loop fails the test instead of hanging the run
            stopper = threading.Thread(target=server.shutdown, daemon=True)
            stopper.start()
            stopper.join(5)
            thread.join(5)
        assert not thread.is_alive(), "serve_forever did not stop"
        server.server_close()
        assert server.socket.fileno() == -1, "server_close left the socket open"
