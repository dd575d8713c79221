"""lifecycle: signal handlers only record and wake; the loop stops gracefully, then by force.

The runs here are in-process (`runner.serve` in the main thread, where signal handlers go);
a helper thread plays the client and sends the signals with os.kill to this process.
"""

from __future__ import annotations

import io
import os
import re
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sockserve.addresses import parse_address
from sockserve.config import ServeConfig
from sockserve.console import PlainReporter
from sockserve.errors import ExitStatus
from sockserve.lifecycle import RUN_SIGNALS, SignalQueue
from sockserve.loading import load_handler
from sockserve.runner import serve

TIMEOUT = 10

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers are installed from the main thread only",
)


@pytest.fixture
def restored() -> Iterator[None]:
    """Check that whatever ran restored the signals' handlers and the wakeup fd.

    SIGHUP starts at its default action, whatever the test process inherited (under nohup
    it is ignored, and a run then keeps ignoring it by design); it is put back afterwards.
    """
    inherited_hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        before = {sig: signal.getsignal(sig) for sig in RUN_SIGNALS}
        before_alarm = signal.getsignal(signal.SIGALRM)
        yield
        assert {sig: signal.getsignal(sig) for sig in before} == before
        assert signal.getsignal(signal.SIGALRM) == before_alarm
        previous = signal.set_wakeup_fd(-1)
        assert previous == -1
    finally:
        signal.signal(signal.SIGHUP, inherited_hup)


def test_signal_handler_only_records_and_wakes(restored: None) -> None:
    woken: list[int] = []
    with SignalQueue((signal.SIGTERM,), on_signal=woken.append) as queue:
        assert signal.getsignal(signal.SIGTERM) == queue.record
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill returns
        assert [sig for sig, _ in queue.received] == [signal.SIGTERM]
        assert woken == [signal.SIGTERM]
        readable, _, _ = select.select([queue.waker.reader], [], [], 0)
        assert readable  # the waiter wakes
        queue.waker.wait(0)
        assert select.select([queue.waker.reader], [], [], 0)[0] == []
        assert [sig for sig, _ in queue.take()] == [signal.SIGTERM]
        assert queue.take() == []  # taken once


class Reporter(PlainReporter):
    """A plain reporter into a buffer that calls `on(kind, text)` for each event."""

    def __init__(self, on: Callable[[str, str], None]) -> None:
        super().__init__(io.StringIO(), verbosity=1)
        self.on = on

    def connected(self, client: Any) -> None:
        super().connected(client)
        self.on("connected", "")

    def info(self, message: str) -> None:
        super().info(message)
        self.on("info", message)

    def warning(self, message: str) -> None:
        super().warning(message)
        self.on("warning", message)

    def listening(self, url: str, details: Any) -> None:
        super().listening(url, details)
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        self.on("listening", f"{host}:{port}")

    @property
    def text(self) -> str:
        assert isinstance(self.stream, io.StringIO)
        return self.stream.getvalue()


def config_for(concurrency: str, grace: float = 5.0, **extra: Any) -> ServeConfig:
    return ServeConfig(
        family="inet",
        socktype="stream",
        address=parse_address("127.0.0.1:0", "inet"),
        handler=load_handler("echo"),
        concurrency=concurrency,  # type: ignore[arg-type]  # a str from the parametrization
        grace=grace,
        **extra,
    )


class Client:
    """The test's other side: connects when the server listens, then follows `script`."""

    def __init__(self, script: Callable[[Client], None]) -> None:
        self.script = script
        self.seen: dict[str, threading.Event] = {
            kind: threading.Event()
            for kind in ("listening", "connected", "stopping", "grace", "ignored")
        }
        self.address: tuple[str, int] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lifecycle-client", daemon=True)

    def on(self, kind: str, text: str) -> None:
        if kind == "listening":
            host, _, port = text.rpartition(":")
            self.address = (host, int(port))
            self.thread.start()
        elif kind == "info" and text.startswith("stopping: waiting"):
            kind = "stopping"
        elif kind == "warning" and text.startswith("grace period"):
            kind = "grace"
        elif kind == "info" and " ignored (" in text:
            kind = "ignored"
        if kind in self.seen:
            self.seen[kind].set()

    def wait(self, kind: str) -> None:
        assert self.seen[kind].wait(TIMEOUT), kind

    def _run(self) -> None:
        try:
            self.script(self)
        except BaseException as exc:  # pragma: no cover - shown by the test
            self.error = exc
            # End the run, so that the failure is shown rather than the test hanging: a
            # first SIGTERM stops it, a second forces it.
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    def connect(self) -> socket.socket:
        assert self.address is not None
        sock = socket.create_connection(self.address, timeout=TIMEOUT)
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"  # being served
        return sock

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def run(concurrency: str, script: Callable[[Client], None], grace: float = 5.0) -> tuple[int, str]:
    client = Client(script)
    reporter = Reporter(client.on)
    status = serve(config_for(concurrency, grace), reporter)
    client.join()
    return status, reporter.text


def kill(sig: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)


@pytest.mark.parametrize("concurrency", ["thread", "fork", "event"])
def test_first_signal_stops_gracefully_within_grace(restored: None, concurrency: str) -> None:
    def script(client: Client) -> None:
        with client.connect() as sock:
            kill()
            client.wait("stopping")
            sock.sendall(b"more")  # the request in flight goes on to its end
            assert sock.recv(10) == b"more"
            # A forked child holds a copy of this socket too (it is of this process): only
            # shutdown ends the request there.
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(10) == b""

    status, text = run(concurrency, script)
    assert status == ExitStatus.OK
    assert "stopping: waiting up to 5s for 1 request (Ctrl-C again to force)" in text
    assert re.search(r"^stopped after .* \(SIGTERM received\)$", text, re.M)
    assert "warning" not in text


@pytest.mark.parametrize("concurrency", ["thread", "fork", "event"])
def test_second_signal_forces_the_stop(restored: None, concurrency: str) -> None:
    def script(client: Client) -> None:
        with client.connect() as sock:
            kill(signal.SIGINT)
            client.wait("stopping")
            kill(signal.SIGINT)
            assert sock.recv(10) == b""  # aborted

    status, text = run(concurrency, script, grace=60)
    assert status == ExitStatus.INTERRUPTED
    assert re.search(r"^stopped after .* \(forced by a second signal\)$", text, re.M)


@pytest.mark.parametrize("concurrency", ["thread", "fork", "event"])
def test_grace_period_ends_in_an_abort(restored: None, concurrency: str) -> None:
    def script(client: Client) -> None:
        with client.connect() as sock:
            kill()
            client.wait("grace")
            assert sock.recv(10) == b""  # aborted

    status, text = run(concurrency, script, grace=0.2)
    assert status == ExitStatus.OK
    assert "warning: grace period of 0.2s over: aborting requests" in text
    assert re.search(r"^stopped after .* \(SIGTERM received\)$", text, re.M)
    assert "1 connection, 4 B in, 4 B out" in text  # the aborted handler reported


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2], ids=["usr1", "usr2"])
def test_sigusr_is_ignored_with_a_line(restored: None, signum: signal.Signals) -> None:
    def script(client: Client) -> None:
        kill(signum)
        client.wait("ignored")
        with client.connect():  # still serving
            pass
        kill(signal.SIGHUP)

    status, text = run("thread", script)
    assert status == ExitStatus.OK
    assert f"{signum.name} ignored (SIGINT, SIGTERM or SIGHUP stops sockserve)" in text
    assert re.search(r"^stopped after .* \(SIGHUP received\)$", text, re.M)


def test_sighup_ignored_at_start_stays_ignored(restored: None) -> None:
    """Under nohup the run outlives the terminal: SIGHUP is not one of its stop signals."""

    def script(client: Client) -> None:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        kill(signal.SIGHUP)
        with client.connect():  # still serving
            pass
        kill()

    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        status, text = run("thread", script)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, saved)
    assert status == ExitStatus.OK
    assert re.search(r"^stopped after .* \(SIGTERM received\)$", text, re.M)


def test_sync_handler_blocked_past_grace_is_interrupted(restored: None) -> None:
    """Sync mode: the handler blocks the main thread in recv; the grace timer interrupts it."""

    def script(client: Client) -> None:
        with client.connect() as sock:
            kill()
            client.wait("grace")
            assert sock.recv(10) == b""

    status, text = run("sync", script, grace=0.2)
    assert status == ExitStatus.OK
    assert "warning: grace period of 0.2s over: aborting requests" in text


def test_sync_handler_blocked_is_interrupted_by_a_second_signal(restored: None) -> None:
    forced = threading.Event()

    def script(client: Client) -> None:
        with client.connect() as sock:
            # Nothing tells when the first signal was seen (the loop is inside the handler),
            # and two signals sent at once may arrive as one: signal until the abort.
            sock.settimeout(0.05)
            for _ in range(int(TIMEOUT / 0.05)):
                kill()
                try:
                    if sock.recv(10) == b"":
                        forced.set()
                        return
                except TimeoutError:
                    continue

    status, text = run("sync", script, grace=60)
    assert forced.is_set()
    assert status == ExitStatus.INTERRUPTED
    assert re.search(r"^stopped after .* \(forced by a second signal\)$", text, re.M)


def test_a_signal_after_a_stop_of_its_own_forces_it(restored: None) -> None:
    """--once stopped the loop; a request is still in flight: one signal now forces."""
    config = config_for("thread", grace=60, once=True)

    def script(client: Client) -> None:
        with client.connect() as sock:
            client.wait("stopping")
            kill()
            assert sock.recv(10) == b""

    client = Client(script)
    reporter = Reporter(client.on)
    status = serve(config, reporter)
    client.join()
    assert status == ExitStatus.INTERRUPTED
