"""Helpers for the server parts' tests: the config the command builds, servers serving."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sockserve.parts.acceptors import AcceptingThreadsPart


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `predicate` (a state that no event tells, such as a kernel or /proc figure) until
    it holds: True, or False once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


#: The event loops event-mode tests run on: asyncio's, and uvloop's when it is installed.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
except ImportError:  # pragma: no cover - the `fast` extra is optional
    pass
else:
    LOOPS["uvloop"] = uvloop.new_event_loop
    uvloop.new_event_loop().close()  # libuv's process-wide signal pipe, opened once, stays open

ROOT = Path(__file__).resolve().parent.parent
#: A user's handler file, named absolutely (whatever directory pytest runs from).
USER_HANDLER = str(ROOT / "examples" / "handler_stream.py")


def config_for(captured: list, *args: str):
    """The ServeConfig the command builds for ARGS (with the `captured` fixture in place)."""
    from click.testing import CliRunner

    from sockserve import cli

    result = CliRunner().invoke(cli.main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return captured[-1]


def make_accepting_server(captured: list, *extra: str) -> Any:
    """A thread-mode TCP echo server whose handler threads accept (not serving yet)."""
    from clitools import RecordsObserver

    from sockserve import builtins as bh
    from sockserve.compose import make_server

    config = config_for(captured, "tcp", "127.0.0.1:0", "-H", "echo", *extra)
    handler = bh.stream_handler("echo", bh.HandlerOptions(observer=RecordsObserver()))
    server = make_server(config, handler)
    assert isinstance(server, AcceptingThreadsPart)
    return server


def accepting_server(captured: list, *extra: str) -> tuple[Any, threading.Thread]:
    """A thread-mode TCP echo server whose handler threads accept (serving, in a thread)."""
    server = make_accepting_server(captured, *extra)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    return server, thread


def stop_serving(server: Any, thread: threading.Thread) -> float:
    """shutdown(), join the loop's thread, server_close(); return how long it took."""
    start = time.monotonic()
    server.shutdown()
    thread.join(5)
    stopped = not thread.is_alive()
    server.server_close()
    assert stopped, "serve_forever did not return after shutdown()"
    return time.monotonic() - start


def echo_hi(server: Any) -> None:
    """One connection to a serving echo server: "hi" comes back."""
    with socket.create_connection(server.server_address, timeout=5) as sock:  # type: ignore[attr-defined]
        sock.sendall(b"hi")
        assert sock.recv(10) == b"hi"


def accept_threads() -> set[threading.Thread]:
    """This process's threads running `_accept_and_serve` (of whichever server)."""
    return {t for t in threading.enumerate() if t.name.endswith("(_accept_and_serve)")}


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU affinity needs Linux and two CPUs allowed",
)


class EventsRecorder:
    """The events interface (sockserve.events.Events), keeping every call it gets."""

    wants_data = False
    wants_counts = True

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.changed = threading.Condition()
        self.polls = 0

    def _add(self, *call: Any) -> None:
        with self.changed:
            self.calls.append(call)
            self.changed.notify_all()

    def connected(self, client: Any) -> None:
        self._add("connected", client)

    def record(self, client: Any, received: int, sent: int) -> None:
        self._add("record", client, received, sent)

    def data(self, client: Any, direction: str, data: bytes) -> None:
        self._add("data", client, direction, data)

    def handler_error(self, client: Any, exc: BaseException) -> None:
        self._add("handler_error", client, exc)

    def warning(self, message: str) -> None:
        self._add("warning", message)

    def info(self, message: str) -> None:
        self._add("info", message)

    def refused(self, client: Any, reason: str) -> None:
        self._add("refused", client, reason)

    def sent(self, client: Any, size: int) -> None:
        self._add("sent", client, size)

    def exec_exit(self, client: Any, status: int, seconds: float) -> None:
        self._add("exec_exit", client, status, seconds)

    def exec_stderr(self, client: Any, line: bytes) -> None:
        self._add("exec_stderr", client, line)

    def upstream(
        self, client: Any, upstream: str, error: str | None, tls: dict[str, Any] | None = None
    ) -> None:
        self._add("upstream", client, upstream, error, *([] if tls is None else [tls]))

    def poll(self) -> None:
        """What the run's monitor does on each loop iteration (forked children's news)."""
        self.polls += 1

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of method `name`, in order."""
        with self.changed:
            return [call[1:] for call in self.calls if call[0] == name]

    def tls(self, client: Any, info: dict[str, Any]) -> None:
        self._add("tls", client, info)

    def fault(self, client: Any, kind: str, detail: str) -> None:
        self._add("fault", client, kind, detail)
