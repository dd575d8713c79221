"""Concurrency mixins and the eight prebuilt Forking*/Threading* server classes.

A mixin goes first in the bases, because it overrides `process_request` (and extends
`server_close`, `service_actions`, `handle_timeout`) of the server class it is mixed into.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import threading
from typing import Any

from .servers import TCPServer, UDPServer

__all__ = ["ThreadingMixIn", "ThreadingTCPServer", "ThreadingUDPServer"]

logger = logging.getLogger("sockserve.socketserver")


def _shutdown_requested(server: object) -> bool:
    return bool(getattr(server, "_shutdown_requested", False))


if hasattr(os, "fork"):
    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]

    class ForkingMixIn:
        """Handle each request in a new child process.

        Class variables: `timeout` (for handle_request), `max_children` (never more live
        children: a new request waits until one exits, without polling), `block_on_close`
        (server_close waits for the children unless False). `active_children` is the set of
        live child pids, or None before the first fork.

        A child handles one request and leaves through `os._exit`: status 0 when the handler
        returned, 1 when it raised.
        """

        timeout: float | None = 300
        active_children: set[int] | None = None
        max_children: int = 40
        block_on_close: bool = True
        _pidfds: dict[int, int] | None = None

        def collect_children(self, *, blocking: bool = False) -> None:
            """Reap finished children; first wait until fewer than `max_children` are alive."""
            if self.active_children is None:
                return
            while len(self.active_children) >= self.max_children:
                self._reap(blocking=False)
                if len(self.active_children) < self.max_children or _shutdown_requested(self):
                    break
                self._wait_for_any_child()
            self._reap(blocking=blocking)

        def _reap(self, *, blocking: bool) -> None:
            assert self.active_children is not None
            flags = 0 if blocking else os.WNOHANG
            for pid in list(self.active_children):
                try:
                    done, status = os.waitpid(pid, flags)
                except ChildProcessError:
                    done, status = pid, 0  # already reaped elsewhere
                except OSError:
                    continue
                if done:
                    self._forget_child(pid, status)

        def _forget_child(self, pid: int, status: int) -> None:
            assert self.active_children is not None
            self.active_children.discard(pid)
            if self._pidfds is not None:
                fd = self._pidfds.pop(pid, None)
                if fd is not None:
                    os.close(fd)
            code = os.waitstatus_to_exitcode(status)
            if code:
                logger.debug("child %d exited with status %d", pid, code)

        def _wait_for_any_child(self) -> None:
            """Block until one of our children exits (pidfds), without reaping others'."""
            if self._pidfds:
                with selectors.DefaultSelector() as sel:
                    for fd in self._pidfds.values():
                        sel.register(fd, selectors.EVENT_READ)
                    waker = getattr(self, "_wakeup_fd", lambda: None)()
                    if waker is not None:
                        sel.register(waker, selectors.EVENT_READ)  # shutdown() interrupts
                    sel.select()
                return
            try:  # no pidfd support: wait for any child, as the stdlib does
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                self.active_children = set()
                return
            if self.active_children is not None and pid in self.active_children:
                self._forget_child(pid, status)

        def handle_timeout(self) -> None:
            """Reap finished children."""
            self.collect_children()

        def service_actions(self) -> None:
            """Reap finished children (called on each `serve_forever` iteration)."""
            self.collect_children()

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork a child that handles the request; the parent only closes its copy."""
            self.collect_children()  # waits here while max_children are alive
            if self.active_children and len(self.active_children) >= self.max_children:
                self.shutdown_request(request)  # type: ignore[attr-defined]
                return  # shutdown() interrupted the wait: refuse rather than exceed the bound
            pid = os.fork()
            if pid:
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                if hasattr(os, "pidfd_open"):
                    if self._pidfds is None:
                        self._pidfds = {}
                    try:
                        self._pidfds[pid] = os.pidfd_open(pid)
                    except OSError:
                        pass  # kernel without pidfds: fall back to waitpid
                self.close_request(request)  # type: ignore[attr-defined]
                return
            status = 1
            try:
                self.finish_request(request, client_address)  # type: ignore[attr-defined]
                status = 0
            except Exception:
                self.handle_error(request, client_address)  # type: ignore[attr-defined]
            finally:
                try:
                    self.shutdown_request(request)  # type: ignore[attr-defined]
                finally:
                    os._exit(status)

        def server_close(self) -> None:
            """Close the server, then reap children (waiting for them if block_on_close)."""
            super().server_close()  # type: ignore[misc]
            self.collect_children(blocking=self.block_on_close)


class _Pool:
    """At most `size` worker threads that run submitted jobs; submit waits when all are busy."""

    def __init__(self, size: int, daemon: bool, run: Any) -> None:
        self.size = size
        self.daemon = daemon
        self.run = run
        self.lock = threading.Lock()
        self.has_job = threading.Condition(self.lock)
        self.has_slot = threading.Condition(self.lock)
        self.jobs: collections.deque[tuple[Any, Any]] = collections.deque()
        self.workers: set[threading.Thread] = set()
        self.busy = 0
        self.closed = False

    def submit(self, job: tuple[Any, Any], should_stop: Any) -> bool:
        """Queue a job, waiting for a free worker; return False if `should_stop()` first."""
        with self.lock:
            while self.busy >= self.size:
                if should_stop() or self.closed:
                    return False
                self.has_slot.wait()
            self.busy += 1
            self.jobs.append(job)
            if len(self.workers) < self.busy:
                worker = threading.Thread(target=self._work, daemon=self.daemon)
                self.workers.add(worker)
                worker.start()
            else:
                self.has_job.notify()
        return True

    def wake(self) -> None:
        with self.lock:
            self.has_slot.notify_all()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self.lock:
                while not self.jobs and not self.closed:
                    self.has_job.wait()
                if not self.jobs:
                    self.workers.discard(me)
                    return
                job = self.jobs.popleft()
            try:
                self.run(*job)
            finally:
                with self.lock:
                    self.busy -= 1
                    self.has_slot.notify()

    def close(self, wait: bool) -> None:
        with self.lock:
            self.closed = True
            self.has_job.notify_all()
            self.has_slot.notify_all()
            workers = list(self.workers)
        if wait:
            for worker in workers:
                if not worker.daemon:
                    worker.join()


class ThreadingMixIn:
    """Handle each request in a thread.

    Class variables: `daemon_threads` (threads that do not keep the process alive),
    `block_on_close` (server_close joins the non-daemon threads unless False), and sockserve's
    `max_threads`: None for one new thread per request (the stdlib's way), or N for a pool of at
    most N threads; when all N are busy the server waits before accepting more. Finished
    threads are forgotten at once, never kept in a list.
    """

    daemon_threads: bool = False
    block_on_close: bool = True
    max_threads: int | None = None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run in a thread: handle the request, report an Exception, close the request."""
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        except Exception:
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def _thread_state(self) -> tuple[threading.Lock, set[threading.Thread]]:
        state = vars(self).get("_sockserve_threads")
        if state is None:
            state = vars(self).setdefault("_sockserve_threads", (threading.Lock(), set()))
        return state

    def _pool(self) -> _Pool:
        pool = vars(self).get("_sockserve_pool")
        if pool is None:
            assert self.max_threads is not None
            pool = _Pool(self.max_threads, self.daemon_threads, self.process_request_thread)
            pool = vars(self).setdefault("_sockserve_pool", pool)
        return pool

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the request to a new thread (or a pool thread when max_threads is set)."""
        if self.max_threads is not None:
            stop = lambda: _shutdown_requested(self)  # noqa: E731
            if not self._pool().submit((request, client_address), stop):
                self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        lock, threads = self._thread_state()
        thread = threading.Thread(
            target=self._run_tracked, args=(request, client_address), daemon=self.daemon_threads
        )
        if not thread.daemon:
            with lock:
                threads.add(thread)
        try:
            thread.start()
        except BaseException:
            with lock:
                threads.discard(thread)
            raise

    def _run_tracked(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            lock, threads = self._thread_state()
            with lock:
                threads.discard(threading.current_thread())

    def _wake(self) -> None:
        super()._wake()  # type: ignore[misc]
        pool = vars(self).get("_sockserve_pool")
        if pool is not None:
            pool.wake()

    def server_close(self) -> None:
        """Close the server, then join non-daemon threads unless block_on_close is False."""
        super().server_close()  # type: ignore[misc]
        pool = vars(self).get("_sockserve_pool")
        if pool is not None:
            pool.close(wait=self.block_on_close)
        if self.block_on_close:
            lock, threads = self._thread_state()
            with lock:
                pending = list(threads)
            for thread in pending:
                thread.join()

    @property
    def live_threads(self) -> int:
        """How many request threads are alive now (sockserve's addition)."""
        pool = vars(self).get("_sockserve_pool")
        if pool is not None:
            return len(pool.workers)
        return len(self._thread_state()[1])


if hasattr(os, "fork"):

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP server that forks a child per datagram."""

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP server that forks a child per connection."""


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """UDP server that handles each datagram in a thread."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """TCP server that handles each connection in a thread."""


if hasattr(socket, "AF_UNIX"):
    from .servers import UnixDatagramServer, UnixStreamServer

    __all__ += ["ThreadingUnixStreamServer", "ThreadingUnixDatagramServer"]

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """Unix stream server that handles each connection in a thread."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """Unix datagram server that handles each datagram in a thread."""

    if hasattr(os, "fork"):
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """Unix stream server that forks a child per connection."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """Unix datagram server that forks a child per datagram."""
