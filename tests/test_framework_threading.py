"""ThreadingMixIn: a thread per request, daemon_threads, block_on_close, sockserve's max_threads."""

from __future__ import annotations

import _thread
import gc
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

import sockserve as ss

if TYPE_CHECKING:
    from conftest import Transport

pytestmark = pytest.mark.leakcheck


def meeting(base: type[Any], barrier: threading.Barrier, seen: list[Any]) -> type[Any]:
    """A handler that waits at `barrier` for another request, then replies b"met" (b"alone"
    when the wait fails); it notes its thread in `seen`."""

    class Meet(base):
        def handle(self) -> None:
            seen.append(threading.current_thread())
            self.read()
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                self.reply(b"alone")
            else:
                self.reply(b"met")

    return Meet


def test_requests_overlap(transport: Transport, run_server: Callable[..., Any]) -> None:
    """Two handlers that each wait for the other both finish: they ran at the same time."""
    barrier = threading.Barrier(2, timeout=5)
    server = transport.make(meeting(transport.Handler, barrier, []), "threading")
    run_server(server)
    start = time.monotonic()
    with transport.client(server) as first, transport.client(server) as second:
        first.sendall(b"1")
        second.sendall(b"2")
        replies = transport.receive(first), transport.receive(second)
    elapsed = time.monotonic() - start
    assert replies == (b"met", b"met")
    assert elapsed < 2.5, f"two overlapping requests took {elapsed:.3f}s"


def test_handler_runs_in_a_new_thread(transport: Transport) -> None:
    seen: list[threading.Thread] = []

    class Where(transport.Handler):
        def handle(self) -> None:
            seen.append(threading.current_thread())
            self.read()
            self.reply(b"ok")

    with transport.make(Where, "threading") as server:
        for _ in range(2):
            with transport.client(server) as client:
                client.sendall(b"?")
                server.handle_request()
                assert transport.receive(client) == b"ok"
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert threading.current_thread() not in seen
    assert not any(thread.is_alive() for thread in seen), "server_close joins the threads"


@pytest.mark.parametrize("daemon", [False, True])
def test_daemon_threads(transport: Transport, daemon: bool) -> None:
    flags: list[bool] = []

    class Daemonic(transport.Handler):
        def handle(self) -> None:
            flags.append(threading.current_thread().daemon)
            self.read()
            self.reply(b"ok")

    with transport.make(Daemonic, "threading", daemon_threads=daemon) as server:
        with transport.client(server) as client:
            client.sendall(b"?")
            server.handle_request()
            assert transport.receive(client) == b"ok"
    assert flags == [daemon]


class Gate:
    """A handler parks on `release` after setting `entered`; `done` is set when it is let go.

    Then it replies b"done" if it can: after server_close, a datagram server's socket is
    closed (the stdlib closes it before joining the threads too).
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.threads: list[threading.Thread] = []

    def handler(self, base: type[Any]) -> type[Any]:
        gate = self

        class Parked(base):
            def handle(self) -> None:
                gate.threads.append(threading.current_thread())
                self.read()
                gate.entered.set()
                gate.release.wait(10)
                gate.done.set()
                try:
                    self.reply(b"done")
                except OSError:
                    assert self.server.socket.fileno() == -1

        return Parked


@pytest.mark.parametrize(
    ("block_on_close", "daemon", "waits"),
    [(True, False, True), (False, False, False), (True, True, False)],
    ids=["block", "no-block", "daemon"],
)
def test_server_close_waits_for_non_daemon_threads(
    transport: Transport, block_on_close: bool, daemon: bool, waits: bool
) -> None:
    """server_close joins request threads, unless block_on_close is off or they are daemons."""
    gate = Gate()
    server = transport.make(
        gate.handler(transport.Handler),
        "threading",
        block_on_close=block_on_close,
        daemon_threads=daemon,
    )
    with server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        assert gate.entered.wait(5)
        opener = threading.Timer(0.1, gate.release.set)  # lets a waiting close return
        if waits:
            opener.start()
        start = time.monotonic()
        server.server_close()
        closed_in = time.monotonic() - start
        assert gate.done.is_set() is waits, f"server_close returned after {closed_in:.3f}s"
        if waits:
            opener.join()
        else:
            gate.release.set()
        if transport.stream:
            assert transport.receive(client) == b"done"
    gate.threads[0].join(5)


def test_a_signal_pending_as_server_close_waits_is_handled_promptly(transport: Transport) -> None:
    """A signal that arrives just before server_close starts to wait does not interrupt that
    wait; `_thread.interrupt_main` makes that case (the flag set, no EINTR). The wait wakes
    every `_SIGNAL_CHECK` seconds, so the handler still runs at once, not when the thread
    ends (sockserve's addition: a second Ctrl-C during a graceful stop relies on it).

    The handler lets the request go rather than raise: an exception raised in Thread.join
    can leave the Thread marked stopped while it still runs (CPython before 3.13).
    """
    gate = Gate()
    ran: list[float] = []

    def let_go(signum: int, frame: Any) -> None:
        ran.append(time.monotonic())
        gate.release.set()

    server = transport.make(gate.handler(transport.Handler), "threading")
    old = signal.signal(signal.SIGUSR1, let_go)
    try:
        with server, transport.client(server) as client:
            client.sendall(b"?")
            server.handle_request()
            assert gate.entered.wait(5)
            timer = threading.Timer(0.2, _thread.interrupt_main, args=(signal.SIGUSR1,))
            timer.start()
            start = time.monotonic()
            server.server_close()  # returns once the handler has let the request go
            timer.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
        gate.release.set()
    gate.threads[0].join(5)
    assert ran and ran[0] - start < 2, f"the handler ran {ran[0] - start:.2f}s after the wait"


def test_server_close_joins_a_thread_started_while_it_waits(transport: Transport) -> None:
    """A request thread that starts another registered thread while server_close waits for
    it (as sockserve's accepting threads do): that one is joined too, never seen unstarted."""
    snapped = threading.Event()  # server_close has listed the threads it joins first
    resnapped = threading.Event()  # ... and listed them again (the late one among them)
    late_done = threading.Event()
    late: list[threading.Thread] = []

    def late_work() -> None:
        # Ends only once server_close looks again: a one-pass join returns before that.
        if resnapped.wait(5):
            late_done.set()

    class Starter(transport.Handler):
        def handle(self) -> None:
            assert snapped.wait(5)
            thread = threading.Thread(target=late_work)
            late.append(thread)
            self.server._request_threads().start(thread)

    server = transport.make(Starter, "threading")
    state = server._request_threads()
    first_snapshot = state.snapshot
    calls = 0

    def snapshot() -> list[threading.Thread]:
        nonlocal calls
        threads = first_snapshot()
        calls += 1
        (snapped if calls == 1 else resnapped).set()
        return threads

    state.snapshot = snapshot
    with server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        server.server_close()
        assert late and late_done.is_set() and not late[0].is_alive()  # joined, not left running


def test_snapshot_waits_for_a_start_in_progress() -> None:
    """`snapshot` called while a registered thread is still starting returns once the start
    has returned, with that thread (the start wakes it, though it notifies only waiters)."""
    from sockserve.socketserver.mixins import _RequestThreads

    state = _RequestThreads()
    in_start = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    class SlowStart(threading.Thread):
        def start(self) -> None:
            in_start.set()  # registered by now: _register runs before start()
            assert release.wait(5)
            super().start()

    thread = SlowStart(target=finished.set)
    starter = threading.Thread(target=state.start, args=(thread,), daemon=True)
    snapshots: list[list[threading.Thread]] = []
    # daemon: if the snapshot were never woken, the failure must not hang the test run
    snapper = threading.Thread(target=lambda: snapshots.append(state.snapshot()), daemon=True)
    starter.start()
    try:
        assert in_start.wait(5)
        snapper.start()
        deadline = time.monotonic() + 5
        while not state.snapshots and time.monotonic() < deadline:  # no event to wait on
            time.sleep(0.001)
        assert state.snapshots == 1 and not snapshots  # waiting for the start
        release.set()
        snapper.join(5)
        assert snapshots == [[thread]] and thread.ident is not None
    finally:
        release.set()
        for t in (starter, snapper, thread):
            if t.ident is not None:
                t.join(5)
    assert finished.is_set() and not snapper.is_alive()


def test_finished_threads_are_not_kept(transport: Transport) -> None:
    refs: list[weakref.ref[threading.Thread]] = []
    done = threading.Semaphore(0)

    class Short(transport.Handler):
        def handle(self) -> None:
            refs.append(weakref.ref(threading.current_thread()))
            self.reply(self.read())

        def finish(self) -> None:
            done.release()

    with transport.make(Short, "threading") as server:
        for n in range(5):
            with transport.client(server) as client:
                client.sendall(b"%d" % n)
                server.handle_request()
                assert transport.receive(client) == b"%d" % n
        for _ in range(5):
            assert done.acquire(timeout=5)
        for ref in refs:
            thread = ref()
            if thread is not None:
                thread.join(5)
            del thread
        assert server.live_threads == 0
        gc.collect()
        assert [ref() for ref in refs] == [None] * 5, "the server keeps finished threads"


def test_live_threads_counts_running_handlers(transport: Transport) -> None:
    gate = Gate()
    with transport.make(gate.handler(transport.Handler), "threading", daemon_threads=True) as s:
        assert s.live_threads == 0
        with transport.client(s) as client:
            client.sendall(b"?")
            s.handle_request()
            assert gate.entered.wait(5)
            assert s.live_threads == 1, "a daemon thread is a live thread too"
            gate.release.set()
            assert transport.receive(client) == b"done"
        gate.threads[0].join(5)
        assert s.live_threads == 0


# -- the stdlib's private `_threads`, which real code and CPython's tests read -----------------


def test_threads_reaped_as_cpythons_test_checks() -> None:
    """CPython's test_threads_reaped (bpo-37193, threads kept forever): after ten requests
    `len(server._threads)` is below ten; here it is 0 once those threads have ended."""

    class MyServer(ss.ThreadingMixIn, ss.TCPServer):
        pass

    before = set(threading.enumerate())
    server = MyServer(("127.0.0.1", 0), ss.StreamRequestHandler)
    for _ in range(10):
        with socket.create_connection(server.server_address, timeout=5):
            server.handle_request()
    assert len(server._threads) < 10
    for thread in set(threading.enumerate()) - before:  # the request threads
        thread.join(5)
    assert len(server._threads) == 0
    server.server_close()


def test_threads_is_made_per_instance_at_the_first_request(transport: Transport) -> None:
    """As the stdlib: the class holds a placeholder; the first request gives each server
    its own list."""
    with (
        transport.make(transport.Handler, "threading") as first,
        transport.make(transport.Handler, "threading") as second,
    ):
        assert "_threads" not in vars(first) and first._threads is ss.ThreadingMixIn._threads
        for server in (first, second):
            with transport.client(server) as client:
                client.sendall(b"?")
                server.handle_request()
        assert isinstance(first._threads, list) and "_threads" in vars(first)
        assert first._threads is not second._threads


def test_threads_holds_the_running_non_daemon_threads_and_joins_them(
    transport: Transport,
) -> None:
    gate = Gate()
    with transport.make(gate.handler(transport.Handler), "threading") as server:
        with transport.client(server) as client:
            client.sendall(b"?")
            server.handle_request()
            assert gate.entered.wait(5)
            assert list(server._threads) == gate.threads
            releaser = threading.Timer(0.2, gate.release.set)
            releaser.start()
            server._threads.join()  # waits for the handler, let go 0.2 s later
            assert gate.done.is_set() and not gate.threads[0].is_alive()
            assert len(server._threads) == 0
            releaser.join()


def test_threads_leaves_daemon_threads_out(transport: Transport) -> None:
    gate = Gate()
    with transport.make(gate.handler(transport.Handler), "threading", daemon_threads=True) as s:
        with transport.client(s) as client:
            client.sendall(b"?")
            s.handle_request()
            assert gate.entered.wait(5)
            assert len(s._threads) == 0 and s.live_threads == 1
            gate.release.set()
        gate.threads[0].join(5)


def test_threads_without_block_on_close_records_nothing(transport: Transport) -> None:
    """block_on_close off: `_threads` stays the class's placeholder, whose join waits for
    nothing (the stdlib's _NoThreads)."""
    gate = Gate()
    server = transport.make(gate.handler(transport.Handler), "threading", block_on_close=False)
    try:
        with server, transport.client(server) as client:
            client.sendall(b"?")
            server.handle_request()
            assert gate.entered.wait(5)
            assert "_threads" not in vars(server)
            assert server._threads is ss.ThreadingMixIn._threads
            server._threads.append(gate.threads[0])
            server._threads.join()  # returns at once, the handler still parked
            assert gate.threads[0].is_alive()
    finally:
        gate.release.set()
        gate.threads[0].join(5)


def test_threads_reap_forgets_the_ended_ones() -> None:
    from sockserve.socketserver.mixins import _Threads

    release = threading.Event()
    ended = threading.Thread(target=lambda: None)
    running = threading.Thread(target=release.wait, args=(5,))
    daemon = threading.Thread(target=release.wait, args=(5,), daemon=True)
    for thread in (ended, running, daemon):
        thread.start()
    ended.join()
    threads = _Threads()
    for thread in (ended, running, daemon):
        threads.append(thread)
    assert list(threads) == [ended, running]  # a daemon is not recorded
    threads.reap()
    assert list(threads) == [running]
    release.set()
    threads.join()
    assert not running.is_alive() and list(threads) == []
    daemon.join(5)


def test_start_tracked_thread_is_in_threads(transport: Transport) -> None:
    release = threading.Event()
    with transport.make(transport.Handler, "threading") as server:
        thread = server.start_tracked_thread(lambda: release.wait(5) or None)
        assert list(server._threads) == [thread]
        release.set()
    assert not thread.is_alive() and len(server._threads) == 0


def test_handler_error_in_thread(transport: Transport) -> None:
    errors: list[tuple[Any, Any, BaseException | None]] = []
    closed: list[Any] = []

    class Broken(transport.Handler):
        def handle(self) -> None:
            raise ValueError("boom")

    class Server(transport.server_class("threading")):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append((request, client_address, sys.exc_info()[1]))

        def shutdown_request(self, request: Any) -> None:
            closed.append(request)
            super().shutdown_request(request)

    with Server(transport.address(), Broken) as server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        server.server_close()  # joins the thread
    assert len(errors) == 1 and isinstance(errors[0][2], ValueError)
    assert closed == [errors[0][0]], "the request is shut down after the error"


def test_process_request_thread_is_the_hook(transport: Transport) -> None:
    """Subclasses that override process_request_thread (a stdlib name) still get called."""
    calls: list[str] = []

    class Server(transport.server_class("threading")):
        def process_request_thread(self, request: Any, client_address: Any) -> None:
            calls.append(threading.current_thread().name)
            super().process_request_thread(request, client_address)

    class Echo(transport.Handler):
        def handle(self) -> None:
            self.reply(self.read())

    with Server(transport.address(), Echo) as server, transport.client(server) as client:
        client.sendall(b"hook")
        server.handle_request()
        assert transport.receive(client) == b"hook"
    assert len(calls) == 1 and calls[0] != threading.current_thread().name


# -- max_threads: sockserve's bound on request threads ---------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_max_threads_bounds_concurrency(
    transport: Transport, run_server: Callable[..., Any], limit: int
) -> None:
    """5N clients at once: never more than N handlers run together, and all are served."""
    clients = 5 * limit
    lock = threading.Condition()
    running = peak = 0
    release = threading.Event()
    dispatched = threading.Semaphore(0)

    class Counted(transport.Handler):
        def handle(self) -> None:
            nonlocal running, peak
            data = self.read()
            with lock:
                running += 1
                peak = max(peak, running)
                lock.notify_all()
            release.wait(10)
            with lock:
                running -= 1
            self.reply(data)

    class Server(transport.server_class("threading", max_threads=limit)):
        request_queue_size = clients  # the clients wait in the backlog, not in connect()

        def process_request(self, request: Any, client_address: Any) -> None:
            dispatched.release()  # entered: the bound is enforced in here
            super().process_request(request, client_address)

    server = Server(transport.address(), Counted)
    run_server(server)
    socks = [transport.client(server) for _ in range(clients)]
    try:
        for n, sock in enumerate(socks):
            sock.sendall(b"%d" % n)
        # N handlers run, and the next request is in process_request, waiting for a slot.
        with lock:
            assert lock.wait_for(lambda: running == limit, timeout=5)
        for _ in range(limit + 1):
            assert dispatched.acquire(timeout=5)
        assert server.live_threads == limit
        release.set()
        replies = [transport.receive(sock) for sock in socks]
    finally:
        release.set()
        for sock in socks:
            sock.close()
    assert replies == [b"%d" % n for n in range(clients)]
    assert peak == limit


def test_shutdown_interrupts_the_wait_for_a_thread(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    """With every slot busy and a request waiting, shutdown() still returns at once."""
    gate = Gate()
    dispatched = threading.Semaphore(0)

    class Server(transport.server_class("threading", max_threads=1)):
        def process_request(self, request: Any, client_address: Any) -> None:
            dispatched.release()
            super().process_request(request, client_address)

    server = Server(transport.address(), gate.handler(transport.Handler))
    loop = run_server(server, poll_interval=5)
    with transport.client(server) as first, transport.client(server) as second:
        first.sendall(b"1")
        second.sendall(b"2")
        assert gate.entered.wait(5)
        assert dispatched.acquire(timeout=5) and dispatched.acquire(timeout=5)
        start = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - start
        loop.join(5)
        gate.release.set()
        assert transport.receive(first) == b"done"
    assert elapsed < 0.5, f"shutdown took {elapsed:.3f}s"
    assert len(gate.threads) == 1, "the waiting request was refused, not handled"


def _run_python(code: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bounded_threads_let_the_process_exit() -> None:
    """Without server_close, a max_threads server leaves no idle thread to block exit."""
    result = _run_python(
        """
        import socket, threading
        import sockserve as ss

        class Echo(ss.BaseRequestHandler):
            def handle(self):
                self.request.sendall(self.request.recv(10))

        class Server(ss.ThreadingTCPServer):
            max_threads = 2

        server = Server(("127.0.0.1", 0), Echo)
        for _ in range(3):
            with socket.create_connection(server.server_address, timeout=5) as c:
                c.sendall(b"x")
                server.handle_request()
                assert c.recv(10) == b"x"
        print("leaving", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "leaving\n"


def test_shutdown_from_a_signal_handler_during_dispatch() -> None:
    """A signal handler that asks the loop to stop, even mid-dispatch, cannot deadlock."""
    result = _run_python(
        """
        import os, signal, socket, threading
        import sockserve as ss

        class Echo(ss.BaseRequestHandler):
            def handle(self):
                self.request.sendall(b"x")

        class Server(ss.ThreadingTCPServer):
            max_threads = 2

        server = Server(("127.0.0.1", 0), Echo)
        signal.signal(signal.SIGUSR1, lambda *_: server.request_shutdown())
        start = threading.Thread.start

        def start_with_signal(thread):
            os.kill(os.getpid(), signal.SIGUSR1)  # lands while process_request dispatches
            start(thread)

        threading.Thread.start = start_with_signal
        client = socket.create_connection(server.server_address, timeout=5)
        server.serve_forever(poll_interval=5)
        threading.Thread.start = start
        server.server_close()
        assert client.recv(1) == b"x"
        print("stopped", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stopped\n"


# -- sockserve's reuse_threads -------------------------------------------------------------------


def wait_idle(server: Any, count: int) -> None:
    """Wait (bounded) until `count` reused threads wait for a request: the handler has
    answered before its thread gets there, and no event marks that moment."""
    deadline = time.monotonic() + 5
    while server._request_threads().idle < count:
        assert time.monotonic() < deadline, "no thread became idle"
        time.sleep(0.001)


def ask(transport: Transport, server: Any, data: bytes) -> None:
    """One request through `handle_request`, answered with `data` itself."""
    with transport.client(server) as client:
        client.sendall(data)
        server.handle_request()
        assert transport.receive(client) == data


class Recorder:
    """A handler that notes its thread and answers; `finished` counts finished requests."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.finished = threading.Semaphore(0)

    def handler(self, base: type[Any]) -> type[Any]:
        rec = self

        class Noted(base):
            def handle(self) -> None:
                rec.threads.append(threading.current_thread())
                self.reply(self.read())

            def finish(self) -> None:
                super().finish()
                rec.finished.release()

        return Noted


def test_reused_thread_takes_the_next_request(transport: Transport) -> None:
    rec = Recorder()
    server = transport.make(
        rec.handler(transport.Handler), "threading", reuse_threads=True, thread_idle_timeout=30
    )
    with server:
        for n in range(4):
            ask(transport, server, b"%d" % n)
            assert rec.finished.acquire(timeout=5)
            wait_idle(server, 1)
        assert len(rec.threads) == 4 and len(set(rec.threads)) == 1
        worker = rec.threads[0]
        assert worker.is_alive() and server.live_threads == 1  # idle, waiting for a request
        start = time.monotonic()
    took = time.monotonic() - start  # server_close: the idle thread ends at once
    assert took < 1.0, f"server_close took {took:.3f}s with an idle thread"
    assert not worker.is_alive()


def test_reused_threads_still_overlap(transport: Transport, run_server: Callable[..., Any]) -> None:
    """An idle thread takes a request only when it is free: two at once get two threads."""
    barrier = threading.Barrier(2, timeout=5)
    seen: list[threading.Thread] = []
    server = transport.make(
        meeting(transport.Handler, barrier, seen),
        "threading",
        reuse_threads=True,
        thread_idle_timeout=30,
    )
    run_server(server)
    for _ in range(2):  # the second round runs on the two threads of the first
        barrier.reset()
        with transport.client(server) as first, transport.client(server) as second:
            first.sendall(b"1")
            second.sendall(b"2")
            assert (transport.receive(first), transport.receive(second)) == (b"met", b"met")
        wait_idle(server, 2)
    assert len(seen) == 4 and len(set(seen[:2])) == 2 and set(seen[2:]) == set(seen[:2])


def test_idle_reused_thread_ends_after_the_idle_timeout(transport: Transport) -> None:
    rec = Recorder()
    server = transport.make(
        rec.handler(transport.Handler), "threading", reuse_threads=True, thread_idle_timeout=0.05
    )
    with server:
        ask(transport, server, b"x")
        rec.threads[0].join(5)  # no request comes: the thread ends by itself
        assert not rec.threads[0].is_alive()
        assert server.live_threads == 0


@pytest.mark.parametrize("attrs", [{}, {"max_threads": 4}], ids=["default", "max_threads"])
def test_threads_are_not_reused_unless_asked_or_when_bounded(
    transport: Transport, attrs: dict[str, Any]
) -> None:
    """A thread ends after its request (a reused one would wait idle for the whole 30 s
    thread_idle_timeout, failing the `is_alive` check), and the next request gets another."""
    rec = Recorder()
    reuse = {"reuse_threads": True} if attrs else {}
    server = transport.make(
        rec.handler(transport.Handler), "threading", thread_idle_timeout=30, **reuse, **attrs
    )
    with server:
        for n in range(2):
            ask(transport, server, b"%d" % n)
            assert rec.finished.acquire(timeout=5)
            rec.threads[-1].join(5)
            assert not rec.threads[-1].is_alive(), "the thread stayed (idle) after its request"
    assert rec.threads[0] is not rec.threads[1]
