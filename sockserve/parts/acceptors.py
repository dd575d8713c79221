"""AcceptingThreadsPart: handler threads that wait in accept() themselves."""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..events import address_of
from ..socketserver import TCPServer, ThreadingMixIn
from .backoff import DispatchRefusalPart
from .requests import RequestsPart


class Acceptors:
    """The bookkeeping of the threads that take connections themselves.

    `ready` counts the threads not serving a connection: waiting in accept, or on their way
    back there; `alive` counts them all. The thread that takes the last ready one's place
    starts another one first, unless `limit` (--max-threads) threads are alive: then the next
    connections wait in the listen queue until a thread is done with its own.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.ready = 0
        self.alive = 0
        self.stopping = False
        self.busy = False  # a connection was taken since the loop last looked
        self.wakers: dict[Any, socket.socket] = {}  # the loop's wake-up connections, by address

    def reserve(self, count: int = 1) -> None:
        """`count` more threads about to start (ready), or fewer (-1: a start that failed)."""
        with self.lock:
            self.ready += count
            self.alive += count

    def took(self) -> bool:
        """Back from accept with a connection: True (and a thread reserved) when no thread is
        ready any more and the limit lets another one start."""
        with self.lock:
            self.ready -= 1
            start = (
                self.ready == 0
                and not self.stopping
                and (self.limit is None or self.alive < self.limit)
            )
            if start:
                self.ready += 1
                self.alive += 1
            return start

    def leave(self, ready: bool) -> None:
        """A thread ends, ready (its accept failed) or not (done with a connection)."""
        with self.lock:
            self.alive -= 1
            if ready:
                self.ready -= 1

    def retire(self, waker_address: Any) -> bool:
        """A thread took one of the loop's wake-up connections: True if it is to end (others
        are ready), False if it is the last ready one and goes back to accept."""
        with self.lock:
            ours = self.wakers.pop(waker_address, None)
            retired = self.ready > 1
            if retired:
                self.ready -= 1
                self.alive -= 1
        if ours is not None:
            ours.close()
        return retired

    def served(self, most: int) -> bool:
        """Done with a connection: True to go back to accept, while fewer than `most` are;
        False when the thread is to end (it has left then)."""
        with self.lock:
            if self.stopping or self.ready >= most:
                self.alive -= 1
                return False
            self.ready += 1
            return True

    def stop(self) -> None:
        with self.lock:
            self.stopping = True


def wake_connection(
    listener: socket.socket, register: Callable[[Any, socket.socket | None], None]
) -> bool:
    """Connect to our own listening socket from an address we know, to end an idle thread.

    `register(address, our_end)` runs before the connect, so that the thread that accepts the
    connection knows it for ours; `register(address, None)` takes it back if the connect
    fails. False where we cannot name such an address, or the connect failed."""
    family = listener.family
    here = listener.getsockname()
    if family == getattr(socket, "AF_UNIX", None):
        if not sys.platform.startswith("linux"):
            return False  # an unbound unix client has no address to tell it apart
        name: Any = f"\0sockserve-wake-{os.getpid()}-{id(listener)}-{time.monotonic_ns()}"
        target = here
    else:
        loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
        name = (loopback, 0)
        target = (loopback, *here[1:]) if here[0] in ("0.0.0.0", "::") else here
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # out of descriptors (EMFILE): trim later, when there are some again
        return False
    address = None
    try:
        sock.bind(name)
        sock.setblocking(False)
        address = sock.getsockname()
        register(address, sock)
        try:
            sock.connect(target)
        except BlockingIOError:
            pass
    except OSError:
        if address is not None:
            register(address, None)
        sock.close()
        return False
    return True


class AcceptingThreadsPart(DispatchRefusalPart, RequestsPart, ThreadingMixIn, TCPServer):
    """Handler threads wait in accept() themselves (the kernel wakes one per connection) and
    serve what they accept, so no connection is handed from thread to thread; the loop
    thread only waits for the stop and trims idle threads.

    One thread always waits in accept, so connections never wait for each other (with
    --max-threads N, until N threads are alive); a thread done with its connection waits for
    the next one while fewer than `idle_acceptors` do. For one process only: workers share
    one listener, whose shutdown would stop them all.

    Extends serve_forever (start the first thread; wake them all at the end),
    verify_request (under the threads' lock, for an exact limit), service_actions (trim)
    and shutdown_request (close alone sends the FIN: no forked child holds the descriptor).
    """

    loop_handles_requests = False
    idle_acceptors = 8
    _acceptors: Acceptors | None = None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start a thread waiting in accept, run the loop, then wake every thread still
        waiting there."""
        acceptors = self._acceptors = Acceptors(self.max_threads)
        acceptors.reserve()
        try:
            self._start_acceptor()
            super().serve_forever(poll_interval)
        finally:
            acceptors.stop()
            try:  # wakes accept() with EINVAL; no more clients
                self.socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            self.close_wakers()

    def _start_acceptor(self) -> None:
        """Start a thread for `_accept_and_serve`, reserved in `_acceptors` beforehand."""
        acceptors = self._acceptors
        assert acceptors is not None
        try:
            self.start_tracked_thread(self._accept_and_serve)
        except BaseException:
            acceptors.reserve(-1)
            raise

    def _accept_and_serve(self) -> None:
        """A handler thread: accept a connection, see that another thread is ready to accept
        the next one, serve the connection; again while few enough are ready."""
        acceptors = self._acceptors
        assert acceptors is not None
        while True:
            try:
                request, client_address = self.get_request()
            except OSError as exc:
                if acceptors.stopping or exc.errno == errno.EINVAL:
                    acceptors.leave(ready=True)
                    if not acceptors.stopping:  # shut down by someone else: serve no more
                        self.request_stop("the listening socket was shut down")
                    return
                continue  # EMFILE (get_request waited), a connection aborted early
            if acceptors.wakers and address_of(client_address) in acceptors.wakers:
                self.close_request(request)  # the loop is trimming idle threads
                if acceptors.retire(address_of(client_address)):
                    return
                continue
            acceptors.busy = True
            if acceptors.took():
                try:
                    self._start_acceptor()
                except (OSError, RuntimeError) as exc:
                    self.refuse(request, client_address, exc)  # this thread accepts instead
                    request = None
                else:
                    if self._dispatch_failing_since is not None:
                        self.dispatching_again()
            if request is not None:
                if self.verify_request(request, client_address):
                    self.process_request_thread(request, client_address)
                else:
                    self.shutdown_request(request)
            if not acceptors.served(self.idle_acceptors):
                return

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Let the request through (and count it) under the threads' lock."""
        acceptors = self._acceptors
        if acceptors is None:
            return super().verify_request(request, client_address)
        with acceptors.lock:
            return super().verify_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Close the connection (close alone sends the FIN: no child holds a copy)."""
        self.close_request(request)

    def service_actions(self) -> None:
        """Run the other parts' actions, then trim idle threads."""
        super().service_actions()
        self.trim_acceptors()

    def trim_acceptors(self) -> None:
        """After a whole poll interval with no connection, end the threads ready beyond one,
        each by a connection of our own that it takes."""
        acceptors = self._acceptors
        if acceptors is None:
            return
        if acceptors.wakers:  # a whole interval and not taken: a connect that failed late
            self.close_wakers()
            return
        if acceptors.busy or acceptors.stopping:
            acceptors.busy = False
            return

        def register(address: Any, sock: socket.socket | None) -> None:
            with acceptors.lock:
                if sock is None:
                    acceptors.wakers.pop(address, None)
                else:
                    acceptors.wakers[address] = sock

        for _ in range(max(acceptors.ready - 1, 0)):
            if not wake_connection(self.socket, register):
                return

    def close_wakers(self) -> None:
        """Close the wake-up connections no thread has taken."""
        acceptors = self._acceptors
        if acceptors is not None and acceptors.wakers:
            with acceptors.lock:
                wakers, acceptors.wakers = acceptors.wakers, {}
            for sock in wakers.values():
                sock.close()
