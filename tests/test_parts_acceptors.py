"""AcceptingThreadsPart: handler threads that accept for themselves."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import pytest
from servertools import (
    accept_threads,
    accepting_server,
    make_accepting_server,
    stop_serving,
)

pytestmark = pytest.mark.leakcheck


def test_accepting_threads_never_make_a_connection_wait(captured: list) -> None:
    """Twelve connections held open at once (more than idle_acceptors), then a thirteenth:
    it is answered at once, so a thread was always waiting in accept."""
    server, thread = accepting_server(captured)
    held: list[socket.socket] = []
    try:
        for i in range(12):
            sock = socket.create_connection(server.server_address, timeout=5)
            held.append(sock)
            sock.sendall(b"%d" % i)
            assert sock.recv(10) == b"%d" % i  # each is being served, in its own thread
        with socket.create_connection(server.server_address, timeout=5) as last:
            last.sendall(b"last")
            assert last.recv(10) == b"last"
        assert len(accept_threads()) >= 13
    finally:
        for sock in held:
            sock.close()
        took = stop_serving(server, thread)
    assert took < 2.0, f"stop took {took:.3f}s"
    assert not accept_threads()


def test_idle_accepting_threads_are_trimmed_to_one(captured: list) -> None:
    """After a burst, a whole poll interval with no connection ends the threads beyond one
    (the loop connects to itself once per thread to end); the next client is still served."""
    server, thread = accepting_server(captured)
    try:
        with ExitStack() as stack:
            held = [
                stack.enter_context(socket.create_connection(server.server_address, timeout=5))
                for _ in range(6)
            ]
            for sock in held:
                sock.sendall(b"x")
                assert sock.recv(10) == b"x"
                sock.close()
        deadline = time.monotonic() + 5
        while len(accept_threads()) > 1:  # a /proc-like figure: no event to wait on
            assert time.monotonic() < deadline, f"{len(accept_threads())} threads left"
            time.sleep(0.01)
        assert server._acceptors.ready == 1
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"after")
            assert sock.recv(10) == b"after"
        served = server.requests_started
    finally:
        stop_serving(server, thread)
    assert served == 7  # the loop's own wake-up connections are not counted


def test_accepting_threads_keep_the_request_limit_exact(captured: list) -> None:
    server, thread = accepting_server(captured, "--max-requests", "3")
    clients: list[socket.socket] = []
    try:
        for _ in range(6):
            try:
                sock = socket.create_connection(server.server_address, timeout=5)
            except OSError:
                continue  # the third connection stopped the server: refused
            clients.append(sock)
            try:
                sock.sendall(b"n")
            except OSError:
                continue  # refused after all: reset (its recv fails or finds no answer)
        thread.join(5)  # the limit stops the loop by itself
        assert not thread.is_alive()
        answered = 0
        for sock in clients:
            try:
                answered += sock.recv(10) == b"n"
            except OSError:
                pass  # refused: reset, or the listener shut down
    finally:
        for sock in clients:
            sock.close()
        if thread.is_alive():  # a failed check: stop the loop before closing under it
            server.shutdown()
            thread.join(5)
        server.server_close()
    assert server.stop_reason == "request limit reached"
    assert server.requests_started == 3
    assert answered == 3


def test_accepting_threads_start_another_only_below_max_threads() -> None:
    """The thread that takes the last ready place starts (reserves) another, unless
    --max-threads are alive; one done with its connection goes back to accept or ends."""
    from sockserve.parts.acceptors import Acceptors

    acceptors = Acceptors(limit=2)
    acceptors.reserve()  # the first thread
    assert acceptors.took()  # none ready, 1 alive: another one is reserved
    assert (acceptors.ready, acceptors.alive) == (1, 2)
    assert not acceptors.took()  # none ready, but 2 alive: the next connection waits
    assert (acceptors.ready, acceptors.alive) == (0, 2)
    assert acceptors.served(most=8)  # one is done: back to accept
    assert (acceptors.ready, acceptors.alive) == (1, 2)
    assert not acceptors.served(most=1)  # the other is done, one is ready already: it ends
    assert (acceptors.ready, acceptors.alive) == (1, 1)
    assert acceptors.took()  # below the limit again: another one is reserved
    assert (acceptors.ready, acceptors.alive) == (1, 2)
    unbounded = Acceptors()
    unbounded.reserve()
    assert unbounded.took() and unbounded.took() and unbounded.took()
    assert (unbounded.ready, unbounded.alive) == (1, 4)


def test_a_wake_up_connection_never_taken_is_dropped_at_the_next_pass(captured: list) -> None:
    """A self-connection still unaccepted a whole poll interval later (its connect failed
    late) is closed and forgotten, so trimming goes on afterwards."""
    from sockserve.parts.acceptors import Acceptors

    server = make_accepting_server(captured)  # no loop: the test plays its part
    stale = socket.socket()
    try:
        acceptors = server._acceptors = Acceptors()
        acceptors.reserve(2)  # two threads ready: one too many, to be trimmed
        with acceptors.lock:
            acceptors.wakers[("127.0.0.1", 9)] = stale
        server.trim_acceptors()
        assert not acceptors.wakers
        assert stale.fileno() == -1
        server.trim_acceptors()  # the next pass trims again: one wake-up connection
        assert len(acceptors.wakers) == 1
    finally:
        stale.close()
        server.close_wakers()
        server.server_close()


def test_wake_connection_out_of_descriptors_gives_up_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE while making the wake-up connection: no exception out of the loop's trim (it
    stopped serve_forever before, and the listener then refused everyone), just False."""
    import errno

    from sockserve.parts import acceptors

    registered: list[object] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        class NoDescriptors(socket.socket):
            def __init__(self, *args: object, **kwargs: object) -> None:
                raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(acceptors.socket, "socket", NoDescriptors)
        assert acceptors.wake_connection(listener, lambda a, s: registered.append(a)) is False
    assert registered == []
