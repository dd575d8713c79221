"""The framework's own extension points, each as BaseServer's docstring documents it.

handle_ready and loop_handles_requests (how the loop takes requests), request_shutdown,
shutdown_requested and wakeup_fileno (stopping from anywhere), and
ThreadingMixIn.start_tracked_thread (a thread of the server's own).
"""

from __future__ import annotations

import select
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

import sockserve as ss

if TYPE_CHECKING:
    from conftest import Transport

pytestmark = pytest.mark.leakcheck


def readable(fd: int) -> bool:
    """True if `fd` is readable now, without waiting."""
    return bool(select.select([fd], [], [], 0)[0])


def noting(transport: Transport, handled: list[tuple[bytes, int]]) -> type[Any]:
    """A handler that notes (data, thread ident) and sends the data back."""

    class Noted(transport.Handler):
        def handle(self) -> None:
            data = self.read()
            handled.append((data, threading.get_ident()))
            self.reply(data)

    return Noted


# -- handle_ready ---------------------------------------------------------------------------------


def test_handle_ready_overridden_takes_a_batch(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    """An override that calls the base once per waiting request: three requests waiting
    before the loop starts are handled in one wake-up of serve_forever."""
    handled: list[tuple[bytes, int]] = []
    wakeups: list[int] = []

    class Batch(transport.server_class()):
        def handle_ready(self) -> None:
            wakeups.append(len(handled))
            super().handle_ready()
            while readable(self.fileno()):
                super().handle_ready()

    with Batch(transport.address(), noting(transport, handled)) as server:
        clients = [transport.client(server) for _ in range(3)]
        try:
            for number, client in enumerate(clients):
                client.sendall(b"%d" % number)  # all three wait before the loop runs
            run_server(server)
            replies = [client.recv(10) for client in clients]
            server.shutdown()  # before the socket closes under the loop
        finally:
            for client in clients:
                client.close()
    assert replies == [b"0", b"1", b"2"]
    assert sorted(data for data, _ in handled) == [b"0", b"1", b"2"]
    assert wakeups == [0], "one call of handle_ready for the three requests"


def test_loop_handles_requests_false_leaves_the_socket_to_other_threads(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    """The loop never takes the waiting request, though it runs service_actions on and on;
    another thread takes it with handle_request."""
    handled: list[tuple[bytes, int]] = []
    iterations = threading.Semaphore(0)

    class Elsewhere(transport.server_class()):
        loop_handles_requests = False

        def service_actions(self) -> None:
            iterations.release()

    with Elsewhere(transport.address(), noting(transport, handled)) as server:
        with transport.client(server) as client:
            client.sendall(b"waiting")
            loop = run_server(server)
            for _ in range(5):  # five iterations of the loop with the request waiting
                assert iterations.acquire(timeout=5)
            assert not handled and readable(server.fileno())
            taker = threading.Thread(target=server.handle_request)
            taker.start()
            assert client.recv(10) == b"waiting"
            taker.join(5)
        server.shutdown()
    assert handled == [(b"waiting", taker.ident)]
    assert loop.ident != taker.ident


# -- request_shutdown, shutdown_requested, wakeup_fileno ---------------------------------------


def test_request_shutdown_from_a_signal_handler(transport: Transport) -> None:
    """A signal handler that calls request_shutdown stops a loop waiting in select at once
    (its poll_interval is 30 s); shutdown_requested is True until the loop has ended.

    The signal goes to the main thread, which runs the loop. Python runs a handler between
    bytecodes: a signal that lands just as the loop enters select is handled only when the
    select ends, so the sender signals again until the loop has stopped (a request_shutdown
    that did not wake the select would still leave the loop there for 30 s).
    """
    looped, stopped = threading.Event(), threading.Event()
    seen_in_handler: list[bool] = []
    handled: list[tuple[bytes, int]] = []

    class Server(transport.server_class()):
        def service_actions(self) -> None:
            looped.set()

    server = Server(transport.address(), noting(transport, handled))

    def on_signal(signum: int, frame: Any) -> None:
        server.request_shutdown()
        seen_in_handler.append(server.shutdown_requested)

    def signal_once_serving() -> None:
        with transport.client(server) as client:  # wakes the loop once: it is running
            client.sendall(b"hello")
            assert looped.wait(5)
            for _ in range(200):  # 10 s at most
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                if stopped.wait(0.05):
                    return

    old = signal.signal(signal.SIGUSR1, on_signal)
    sender = threading.Thread(target=signal_once_serving)
    safety_net = threading.Timer(20, server.shutdown)  # if the signals did not stop the loop
    try:
        with server:
            sender.start()
            safety_net.start()
            start = time.monotonic()
            server.serve_forever(poll_interval=30)
            took = time.monotonic() - start
            stopped.set()
            assert not server.shutdown_requested  # reset once the loop has ended
    finally:
        stopped.set()
        safety_net.cancel()
        safety_net.join()
        sender.join(5)
        signal.signal(signal.SIGUSR1, old)
    assert seen_in_handler and all(seen_in_handler)
    assert took < 10, f"the loop stopped {took:.1f}s after it began"
    assert [data for data, _ in handled] == [b"hello"]


def test_request_shutdown_from_a_signal_handler_during_a_request(transport: Transport) -> None:
    """A signal handled while a request is served (in the loop's thread) stops the loop once
    that request is done, without waiting for the poll."""
    handled: list[tuple[bytes, int]] = []

    class Signalling(noting(transport, handled)):
        def handle(self) -> None:
            super().handle()
            signal.raise_signal(signal.SIGUSR1)  # its handler runs here, in this thread

    server = transport.make(Signalling)
    old = signal.signal(signal.SIGUSR1, lambda *_: server.request_shutdown())
    safety_net = threading.Timer(20, server.shutdown)
    try:
        with server, transport.client(server) as client:
            client.sendall(b"hello")
            safety_net.start()
            start = time.monotonic()
            server.serve_forever(poll_interval=30)
            took = time.monotonic() - start
    finally:
        safety_net.cancel()
        safety_net.join()
        signal.signal(signal.SIGUSR1, old)
    assert took < 10 and [data for data, _ in handled] == [b"hello"]


def test_request_shutdown_from_another_thread_does_not_wait(
    transport: Transport, run_server: Callable[..., Any]
) -> None:
    """request_shutdown returns while the loop is still busy in a handler; the loop stops
    once the handler returns."""
    entered, release = threading.Event(), threading.Event()

    class Busy(transport.Handler):
        def handle(self) -> None:
            self.read()
            entered.set()
            assert release.wait(5)

    with transport.make(Busy) as server, transport.client(server) as client:
        loop = run_server(server, 30)
        client.sendall(b"?")
        assert entered.wait(5)
        assert not server.shutdown_requested
        server.request_shutdown()  # the loop is inside the handler: this must not wait
        assert server.shutdown_requested and loop.is_alive() and not release.is_set()
        release.set()
        loop.join(5)
        assert not loop.is_alive() and not server.shutdown_requested


def test_wakeup_fileno_turns_readable_on_a_shutdown_request(transport: Transport) -> None:
    """None without a loop; while the loop runs, readable only once a shutdown is asked for
    (here from a handler, in the loop's own thread, where request_shutdown returns at once)."""
    seen: list[tuple[bool, bool]] = []

    class Stopper(transport.Handler):
        def handle(self) -> None:
            self.read()
            fd = self.server.wakeup_fileno()
            before = readable(fd)
            self.server.request_shutdown()
            seen.append((before, readable(fd)))

    with transport.make(Stopper) as server, transport.client(server) as client:
        assert server.wakeup_fileno() is None
        client.sendall(b"stop")
        server.serve_forever(poll_interval=30)
        assert server.wakeup_fileno() is None
    assert seen == [(False, True)]


# -- ThreadingMixIn.start_tracked_thread --------------------------------------------------------


def closing_server(transport: Transport, socket_closed: threading.Event, **attrs: Any) -> Any:
    """A threading server that sets `socket_closed` once server_close has closed the socket,
    just before ThreadingMixIn.server_close joins the threads."""

    class Base(transport.classes["sync"]):
        def server_close(self) -> None:
            super().server_close()
            socket_closed.set()

    cls = type("Tracked", (ss.ThreadingMixIn, Base), attrs)
    return cls(transport.address(), transport.Handler)


def test_start_tracked_thread_is_counted_and_joined_by_server_close(
    transport: Transport,
) -> None:
    socket_closed, ended = threading.Event(), threading.Event()

    def own_work() -> None:
        assert socket_closed.wait(5)
        time.sleep(0.2)  # still at work well after server_close began to wait
        ended.set()

    server = closing_server(transport, socket_closed)
    thread = server.start_tracked_thread(own_work)
    assert thread.is_alive() and not thread.daemon
    assert thread.name == "Tracked (own_work)"
    assert server.live_threads == 1
    server.server_close()
    assert ended.is_set() and not thread.is_alive(), "server_close returned before the thread"
    assert server.live_threads == 0


def test_start_tracked_thread_daemon_is_not_waited_for(transport: Transport) -> None:
    """With daemon_threads, the thread is a daemon: counted, but server_close does not wait."""
    socket_closed, release = threading.Event(), threading.Event()
    server = closing_server(transport, socket_closed, daemon_threads=True)
    thread = server.start_tracked_thread(lambda: release.wait(5) or None)
    assert thread.daemon and server.live_threads == 1
    server.server_close()
    assert thread.is_alive() and server.live_threads == 1
    release.set()
    thread.join(5)
    assert server.live_threads == 0
