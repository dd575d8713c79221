"""Concurrency mixins and the eight prebuilt Forking*/Threading* server classes.

A mixin goes first in the bases, because it overrides `process_request` (and extends
`server_close`, `service_actions`, `handle_timeout`) of the server class it is mixed into.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .servers import TCPServer, UDPServer, _RequestType, _RetAddress, _Waker

if TYPE_CHECKING:  # loaded by the first reusable thread that waits (see `next_job`)
    import queue

__all__ = ["ThreadingMixIn", "ThreadingTCPServer", "ThreadingUDPServer"]

#: A wait for requests to end (server_close, a full max_children) wakes this often (seconds).
#: A signal that arrives just before such a wait begins does not interrupt it: its Python
#: handler runs only when the wait returns to Python, which is then at most this late.
_SIGNAL_CHECK = 0.1


if hasattr(os, "fork"):
    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]

    class ForkingMixIn:
        """Handle each request in a new child process.

        Class variables: `timeout` (for handle_request), `max_children` (never more live
        children: a new request waits until one exits, without polling), `block_on_close`
        (server_close waits for the children unless False). `active_children` is the set of
        live child pids, or None before the first fork.

        A child handles one request and leaves through `os._exit`: status 0 when the handler
        returned, 1 when it raised. The waits for a free slot end early on a shutdown request
        (`shutdown_requested`, `wakeup_fileno()`): the request is then refused.
        """

        timeout: float | None = 300
        active_children: set[int] | None = None
        max_children: int = 40
        block_on_close: bool = True
        _pidfds: dict[int, int] | None = None

        # The server class the mixin goes before supplies these: declared for type checkers
        # only (an annotation makes no attribute, so the server's own are found).
        finish_request: Callable[[_RequestType, _RetAddress], None]
        handle_error: Callable[[_RequestType, _RetAddress], None]
        shutdown_request: Callable[[_RequestType], None]
        close_request: Callable[[_RequestType], None]
        wakeup_fileno: Callable[[], int | None]
        shutdown_requested: bool

        def collect_children(self, *, blocking: bool = False) -> None:
            """Reap finished children; first wait until fewer than `max_children` are alive."""
            if self.active_children is None:
                return
            while len(self.active_children) >= self.max_children:
                self._reap()
                if len(self.active_children) < self.max_children:
                    break
                if self.shutdown_requested:
                    break
                self._wait_for_any_child()
            self._reap()
            while blocking and self.active_children:
                self._wait_for_any_child()
                self._reap()

        def _reap(self) -> None:
            """Reap the children that have exited, without waiting."""
            assert self.active_children is not None
            for pid in list(self.active_children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid  # already reaped elsewhere
                except OSError:
                    continue
                if done:
                    self._forget_child(pid)

        def _forget_child(self, pid: int) -> None:
            assert self.active_children is not None
            self.active_children.discard(pid)
            if self._pidfds is not None:
                fd = self._pidfds.pop(pid, None)
                if fd is not None:
                    os.close(fd)

        def _wait_for_any_child(self) -> None:
            """Wait until one of our children exits (pidfds), without reaping others'; or
            `_SIGNAL_CHECK` seconds at most, so that a pending signal handler gets to run."""
            assert self.active_children is not None
            pidfds = self._pidfds or {}
            if self.active_children and self.active_children <= pidfds.keys():
                with selectors.DefaultSelector() as sel:
                    for pid in self.active_children:
                        sel.register(pidfds[pid], selectors.EVENT_READ)
                    waker = self.wakeup_fileno()
                    if waker is not None:
                        sel.register(waker, selectors.EVENT_READ)  # shutdown() interrupts
                    sel.select(_SIGNAL_CHECK)
                return
            # A child without a pidfd (no kernel support, or pidfd_open failed): look at any
            # child, as the stdlib waits for any, rather than only at the children with one.
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no children at all: someone else reaped ours
                for pid in list(self.active_children):
                    self._forget_child(pid)
                return
            if pid in self.active_children:
                self._forget_child(pid)
            elif not pid:  # none has exited: no event to wait on without a pidfd
                time.sleep(_SIGNAL_CHECK)

        def handle_timeout(self) -> None:
            """Reap finished children."""
            self.collect_children()

        def service_actions(self) -> None:
            """Reap finished children (called on each `serve_forever` iteration)."""
            self.collect_children()

        def process_request(self, request: _RequestType, client_address: _RetAddress) -> None:
            """Fork a child that handles the request; the parent only closes its copy."""
            self.collect_children()  # waits here while max_children are alive
            if self.active_children and len(self.active_children) >= self.max_children:
                self.shutdown_request(request)
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
                self.close_request(request)
                return
            status = 1
            try:
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    os._exit(status)

        def server_close(self) -> None:
            """Close the server, then reap children (waiting for them if block_on_close).

            Children still running are left alone (they stay in `active_children`, for a later
            `collect_children`), but their pidfds are closed: the server keeps no descriptor.
            """
            super().server_close()  # type: ignore[misc]  # the server class's (a mixin)
            self.collect_children(blocking=self.block_on_close)
            if self._pidfds:
                for fd in self._pidfds.values():
                    os.close(fd)
                self._pidfds.clear()


class _Threads(list[threading.Thread]):
    """The non-daemon threads `server_close` waits for: the stdlib's `_threads`.

    As the stdlib's: `append` records a thread (not a daemon one) before it starts, `reap`
    forgets the ended ones, `join` forgets and joins them all. Here a thread also removes
    itself when it ends (`discard`), so the list holds only the running ones and `append`
    has nothing to reap. A lock keeps those changes whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def append(self, thread: threading.Thread) -> None:
        """Record `thread`, unless it is a daemon."""
        if not thread.daemon:
            with self._lock:
                super().append(thread)

    def discard(self, thread: threading.Thread) -> None:
        """Forget `thread` if it is recorded."""
        with self._lock:
            try:
                self.remove(thread)
            except ValueError:
                pass  # a daemon, or already taken by pop_all

    def pop_all(self) -> list[threading.Thread]:
        """Forget every thread and return them."""
        with self._lock:
            threads = self[:]
            self.clear()
        return threads

    def reap(self) -> None:
        """Forget the threads that have ended (one not started yet stays)."""
        with self._lock:
            self[:] = [t for t in self if t.ident is None or t.is_alive()]

    def join(self) -> None:
        """Forget every thread and wait for each to end."""
        for thread in self.pop_all():
            while thread.is_alive():
                thread.join(_SIGNAL_CHECK)  # returns to Python: see _SIGNAL_CHECK


class _NoThreads:
    """What `_threads` is without block_on_close: records nothing, waits for nothing."""

    def append(self, thread: threading.Thread) -> None:
        pass

    def join(self) -> None:
        pass


class _RequestThreads:
    """The live threads of one server, with the wait for a free slot (max_threads).

    A thread is registered before it starts and forgets itself when it ends, so finished
    threads are never kept; the non-daemon ones are also in `joined` (the server's
    `_threads`). The wait for a slot selects on a private socketpair (written to by every
    thread that ends) and on the server's wakeup fd, so `shutdown()` interrupts it, and no
    lock is involved that a signal handler calling `shutdown()` could need.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: set[threading.Thread] = set()
        self.joined = _Threads()
        self.starting = 0  # registered, start() not returned yet
        self.started = threading.Condition(self.lock)  # notified when `starting` drops to 0
        self.snapshots = 0  # callers of `snapshot` waiting on `started`
        self.waiters: set[_Waker] = set()
        # reuse_threads: requests handed to threads waiting for one (`idle` of them, not
        # counting the requests already queued for them); None tells one to end. Made when
        # the first thread waits: a server whose threads are never reused has no queue.
        self.jobs: queue.SimpleQueue[tuple[Any, Any] | None] | None = None
        self.idle = 0
        self.closed = False

    def hand_over(self, request: Any, client_address: Any) -> bool:
        """Give the request to an idle reusable thread; False if none is waiting."""
        with self.lock:
            if not self.idle or self.closed:
                return False
            assert self.jobs is not None  # made by the idle thread's `next_job`
            self.idle -= 1
            self.jobs.put((request, client_address))
        return True

    def next_job(self, idle_timeout: float) -> tuple[Any, Any] | None:
        """For a reusable thread done with a request: wait for the next one, or None to end."""
        import queue

        with self.lock:
            if self.closed:
                return None
            self.idle += 1
            if self.jobs is None:
                self.jobs = queue.SimpleQueue()
            jobs = self.jobs
        try:
            return jobs.get(timeout=idle_timeout)
        except queue.Empty:
            with self.lock:  # a request may have been handed over as the wait ran out
                try:
                    return jobs.get_nowait()
                except queue.Empty:
                    self.idle -= 1
                    return None

    def close(self) -> None:
        """No more requests: tell every idle reusable thread to end now."""
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, 0
            for _ in range(idle):
                assert self.jobs is not None  # made by the idle threads' `next_job`
                self.jobs.put(None)

    def start(
        self,
        thread: threading.Thread,
        limit: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        wakeup_fd: Callable[[], int | None] = lambda: None,
    ) -> bool:
        """Register and start `thread`, first waiting while `limit` threads are alive.

        A non-daemon thread is recorded in `joined` too. `snapshot` waits for the starts in
        progress, so it never returns a thread not yet started. Returns False, without
        starting, when `should_stop()` turns true during the wait; a failed start is
        unregistered and raises.
        """
        if not self._register(thread, limit, should_stop, wakeup_fd):
            return False
        self.joined.append(thread)
        try:
            thread.start()
        except BaseException:
            self.discard(thread)
            raise
        finally:
            with self.lock:
                self.starting -= 1
                if not self.starting and self.snapshots:
                    self.started.notify_all()
        return True

    def _register(
        self,
        thread: threading.Thread,
        limit: int | None,
        should_stop: Callable[[], bool],
        wakeup_fd: Callable[[], int | None],
    ) -> bool:
        """Register `thread` as starting once fewer than `limit` are alive; False if
        `should_stop()` turned true during the wait."""
        waiter: _Waker | None = None
        try:
            while True:
                with self.lock:
                    if limit is None or len(self.threads) < limit:
                        self.threads.add(thread)
                        self.starting += 1
                        return True
                    if waiter is None:
                        waiter = _Waker()
                        self.waiters.add(waiter)
                if should_stop():
                    return False
                with selectors.DefaultSelector() as selector:
                    selector.register(waiter, selectors.EVENT_READ)
                    fd = wakeup_fd()
                    if fd is not None:
                        selector.register(fd, selectors.EVENT_READ)
                    selector.select()
                waiter.drain()
        finally:
            if waiter is not None:
                with self.lock:
                    self.waiters.discard(waiter)
                waiter.close()  # no thread can write to it any more: it left the set first

    def discard(self, thread: threading.Thread) -> None:
        """Forget `thread` and wake whoever waits for a slot."""
        self.joined.discard(thread)
        with self.lock:
            self.threads.discard(thread)
            for waiter in self.waiters:
                waiter.wake()

    def snapshot(self) -> list[threading.Thread]:
        """The registered threads, once every start in progress has returned."""
        with self.started:
            self.snapshots += 1
            try:
                self.started.wait_for(lambda: not self.starting)
            finally:
                self.snapshots -= 1
            return list(self.threads)


class ThreadingMixIn:
    """Handle each request in a new thread.

    Class variables: `daemon_threads` (threads that do not keep the process alive),
    `block_on_close` (server_close joins the non-daemon threads unless False), and sockserve's
    `max_threads`: None for no limit (the stdlib's way), or N to run at most N request threads
    at once; when N are busy the server waits for one to end before it handles the next
    request (a shutdown request ends that wait, and the request is refused).

    Instance variables: `live_threads` (sockserve's: how many of the server's threads run),
    and the stdlib's `_threads` (the running non-daemon threads, a list, made at the first
    request; without block_on_close, a placeholder that records nothing).

    Methods for derived classes: `start_tracked_thread(target)` starts a thread of the
    server's own that counts and is joined as request threads are; not to be overridden.
    """

    daemon_threads: bool = False
    block_on_close: bool = True
    max_threads: int | None = None
    #: sockserve's addition, off by default: a thread that has finished its request waits up
    #: to `thread_idle_timeout` seconds for the next one instead of ending, which saves a
    #: thread start per request. Requests still never wait for each other (a new thread starts
    #: when none is idle), but a reused thread keeps its `threading.local` data. Not combined
    #: with max_threads. server_close ends the idle threads at once.
    reuse_threads: bool = False
    thread_idle_timeout: float = 0.1
    #: The stdlib's: replaced per instance by the recording list when block_on_close is set.
    _threads: _Threads | _NoThreads = _NoThreads()

    # The server class the mixin goes before supplies these: declared for type checkers only
    # (an annotation makes no attribute, so the server's own are found).
    finish_request: Callable[[_RequestType, _RetAddress], None]
    handle_error: Callable[[_RequestType, _RetAddress], None]
    shutdown_request: Callable[[_RequestType], None]
    wakeup_fileno: Callable[[], int | None]
    shutdown_requested: bool

    def process_request_thread(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Run in a thread: handle the request, report an Exception, close the request."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def _request_threads(self) -> _RequestThreads:
        state: _RequestThreads | None = vars(self).get("_sockserve_threads")
        if state is None:
            state = vars(self).setdefault("_sockserve_threads", _RequestThreads())
        return state

    def _start(self, thread: threading.Thread, limit: int | None = None) -> bool:
        """Start `thread` (once fewer than `limit` run); False if a shutdown request came."""
        state = self._request_threads()
        if self.block_on_close:  # as the stdlib: `_threads` made per instance, at first use
            vars(self).setdefault("_threads", state.joined)
        if limit is None:
            return state.start(thread)
        return state.start(thread, limit, lambda: self.shutdown_requested, self.wakeup_fileno)

    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Start a thread that handles the request (with max_threads, once a slot is free)."""
        state = self._request_threads()
        reuse = self.reuse_threads and self.max_threads is None
        if reuse and state.hand_over(request, client_address):
            return
        thread = threading.Thread(
            target=self._run_reusable if reuse else self._run_tracked,
            args=(request, client_address),
            daemon=self.daemon_threads,
        )
        if not self._start(thread, self.max_threads):
            self.shutdown_request(request)
            return  # a shutdown request ended the wait: refuse rather than exceed the bound

    def start_tracked_thread(self, target: Callable[[], None]) -> threading.Thread:
        """Start a thread of the server's own, tracked as the request threads are.

        It counts in `live_threads` and `server_close` joins it (unless daemonic); it is
        forgotten when `target` returns. `max_threads` does not apply: the caller bounds it.
        For derived classes; do not override.
        """
        state = self._request_threads()

        def run() -> None:
            try:
                target()
            finally:
                state.discard(threading.current_thread())

        name = f"{type(self).__name__} ({getattr(target, '__name__', 'thread')})"
        thread = threading.Thread(target=run, name=name, daemon=self.daemon_threads)
        self._start(thread)
        return thread

    def _run_tracked(self, request: _RequestType, client_address: _RetAddress) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._request_threads().discard(threading.current_thread())

    def _run_reusable(self, request: _RequestType, client_address: _RetAddress) -> None:
        state = self._request_threads()
        job: tuple[Any, Any] | None = (request, client_address)
        try:
            while job is not None:
                self.process_request_thread(*job)
                job = state.next_job(self.thread_idle_timeout)
        finally:
            state.discard(threading.current_thread())

    def server_close(self) -> None:
        """Close the server, then join non-daemon threads unless block_on_close is False."""
        super().server_close()  # type: ignore[misc]  # the server class's (a mixin)
        state = self._request_threads()
        state.close()
        if self.block_on_close:
            # Again until none is new: a request thread may start another as the server
            # closes (sockserve's tool lets request threads accept).
            joined: set[threading.Thread] = set()
            while pending := [t for t in state.snapshot() if not t.daemon and t not in joined]:
                for thread in pending:
                    while thread.is_alive():
                        thread.join(_SIGNAL_CHECK)  # returns to Python: see _SIGNAL_CHECK
                    joined.add(thread)

    @property
    def live_threads(self) -> int:
        """How many of the server's threads are running now, daemon or not."""
        return len(self._request_threads().threads)


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
