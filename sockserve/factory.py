"""Build the server for a ServeConfig: the class (with type()), the handler, the bound socket.

`server_class(family, socktype, concurrency)` composes a framework class at run time:
``(ToolServerMixIn, ConcurrencyMixIn, BaseServerClass)``. ToolServerMixIn adds what the
command needs and the stdlib lacks: safe unix socket files (stale ones replaced, live ones and
non-sockets refused, created with --mode and removed on close), EMFILE back-off in accept,
idle timeouts, byte counts and events for a Monitor, and a request limit.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import sys
import threading
import time
from _socket import socket as _raw  # the C methods of socket.socket, called without super()

from . import socketserver as ss
from .config import MAX_DATAGRAM, ServeConfig
from .errors import EnvironmentProblem, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol
else:
    Protocol = object  # typing (~3 ms to import) only for type checkers

logger = logging.getLogger(__name__)

_BASES: dict[tuple[str, str], type[ss.BaseServer]] = {
    ("inet", "stream"): ss.TCPServer,
    ("inet6", "stream"): ss.TCPServer,
    ("inet", "dgram"): ss.UDPServer,
    ("inet6", "dgram"): ss.UDPServer,
    ("unix", "stream"): ss.UnixStreamServer,
    ("unix", "dgram"): ss.UnixDatagramServer,
}
_MIXINS: dict[str, type | None] = {
    "sync": None,
    "thread": ss.ThreadingMixIn,
    "fork": getattr(ss, "ForkingMixIn", None),
    "event": None,  # the event loop runs on the socket this class binds
}
#: Datagram builtins whose answer never waits (no stdin, no stdout that a reader may stall):
#: in thread mode they run on the loop thread, since a thread per datagram would cost ~100x
#: the work. The answers are the same; the server just starts no thread for them.
INLINE_DATAGRAM_BUILTINS = frozenset(
    {"echo", "upper", "discard", "chargen", "daytime", "time", "reply"}
)
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Monitor(Protocol):
    """Receives what the server does; the runner's implementation reports and counts it."""

    wants_data: bool
    #: Byte counts of each connection are shown (records, summary); if not, a user's handler
    #: gets its socket unwrapped and uncounted.
    wants_counts: bool

    def connected(self, client: Any) -> None: ...
    def record(self, client: Any, received: int, sent: int) -> None: ...
    def data(self, client: Any, direction: str, data: bytes) -> None: ...
    def handler_error(self, client: Any, exc: BaseException) -> None: ...
    def warning(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...


def _nbytes(data: Any) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


class CountingSocket(socket.socket):
    """A connected socket that counts the bytes a user's handler receives and sends (where the
    kernel does not count them: unix sockets). The C methods are called directly: this runs
    for every recv and send."""

    received = 0
    sent = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = _raw.recv(self, bufsize, flags)
        self.received += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = _raw.recv_into(self, buffer, nbytes, flags)
        self.received += n
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        n = _raw.send(self, data, flags)
        self.sent += n
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        _raw.sendall(self, data, flags)
        self.sent += _nbytes(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        n = super().sendfile(file, offset, count)
        self.sent += n
        return n


#: Offsets in Linux's struct tcp_info (uapi/linux/tcp.h; fields are only ever appended):
#: tcpi_state (u8), tcpi_bytes_received (u64), tcpi_notsent_bytes (u32), tcpi_bytes_sent
#: and tcpi_bytes_retrans (u64, Linux 5.5+). A shorter answer means an older kernel.
_TCPI_BYTES_RECEIVED = 128
_TCPI_NOTSENT_BYTES = 144
_TCPI_BYTES_SENT = 200
_TCPI_END = 216
#: TCP states in which the peer's FIN has arrived (it counts as one byte received):
#: CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT.
_TCP_FIN_RECEIVED = frozenset({8, 9, 11, 6})


def _kernel_counts_work(sock: socket.socket) -> bool:
    """True if the kernel keeps the byte counts `_tcp_byte_counts` reads, for this socket."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        return len(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_END)) >= _TCPI_END
    except OSError:
        return False


def _tcp_byte_counts(sock: socket.socket) -> tuple[int, int]:
    """(received, sent) on a TCP connection, as the kernel counted them: bytes that arrived
    (not the peer's FIN) less those still unread, and bytes sent (retransmissions once) plus
    those still queued.

    What a counting socket wrapper would report, without a Python call per recv and send
    (which made a user's thread-mode handler 40 % slower in ping-pong).
    """
    import fcntl
    import termios

    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_END)
    received = int.from_bytes(info[_TCPI_BYTES_RECEIVED : _TCPI_BYTES_RECEIVED + 8], sys.byteorder)
    notsent = int.from_bytes(info[_TCPI_NOTSENT_BYTES : _TCPI_NOTSENT_BYTES + 4], sys.byteorder)
    sent = int.from_bytes(info[_TCPI_BYTES_SENT : _TCPI_BYTES_SENT + 8], sys.byteorder)
    retrans = int.from_bytes(info[_TCPI_BYTES_SENT + 8 : _TCPI_END], sys.byteorder)
    unread = int.from_bytes(
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4)), sys.byteorder, signed=True
    )
    if info[0] in _TCP_FIN_RECEIVED:
        received -= 1
    return received - max(unread, 0), sent - retrans + notsent


class KernelCountedSocket(socket.socket):
    """A user handler's TCP connection, counted by the kernel (`_tcp_byte_counts`): recv and
    send are the plain C methods. The counts are read when the server ends the request, or
    when the handler closes or detaches the socket first."""

    client: Any = None
    counts: tuple[int, int] | None = None

    def close(self) -> None:
        self._snapshot()
        super().close()

    def detach(self) -> int:
        self._snapshot()
        return super().detach()

    def _snapshot(self) -> None:
        if self.counts is None and self.fileno() >= 0:
            try:
                self.counts = _tcp_byte_counts(self)
            except OSError:
                self.counts = (0, 0)


class _CountingDatagramSocket:
    """Stands in for the server's datagram socket in one request, counting what is sent."""

    __slots__ = ("_sock", "sent", "client")

    def __init__(self, sock: socket.socket, client: Any) -> None:
        self._sock = sock
        self.sent = 0
        self.client = client

    def sendto(self, data: Any, *args: Any) -> int:
        n = self._sock.sendto(data, *args)
        self.sent += n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _wake_connection(
    listener: socket.socket, register: Callable[[Any, socket.socket | None], None]
) -> bool:
    """Connect to our own listening socket from an address we know, for `_trim_acceptors`.

    `register(address, our_end)` runs before the connect, so that the thread that accepts the
    connection knows it for ours; `register(address, None)` takes it back if the connect
    fails. False where we cannot name such an address, or the connect failed."""
    family = listener.family
    here = listener.getsockname()
    if family == getattr(socket, "AF_UNIX", None):
        if not sys.platform.startswith("linux"):
            return False  # an unbound unix client has no address to tell it apart
        name = f"\0sockserve-wake-{os.getpid()}-{id(listener)}-{time.monotonic_ns()}"
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = here
    else:
        loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
        sock = socket.socket(family, socket.SOCK_STREAM)
        name = (loopback, 0)
        target = (loopback, *here[1:]) if here[0] in ("0.0.0.0", "::") else here
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


def _stay_on_this_cpu() -> set[int] | None:
    """Keep the calling thread, and the threads it starts, on the CPU it runs on (Linux).

    For thread mode (`pin_threads`): threads that run Python take turns under the GIL,
    and handing the GIL to a thread on another CPU costs far more than a switch on one CPU,
    the more so the more threads wait (ping-pong with 100 connections: about 2× the
    requests per second). Returns the CPUs the thread had, for `_restore_cpus`; None where
    nothing changed (one CPU only, no sched_setaffinity, or the system refuses).
    """
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed) < 2:
            return None
        with open("/proc/thread-self/stat", "rb") as f:  # field 39: the CPU it last ran on
            cpu = int(f.read().rpartition(b")")[2].split()[36])
        if cpu not in allowed:
            return None
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    return allowed


def _gil_enabled() -> bool:
    """False on a free-threaded Python running without its GIL: threads then run in
    parallel, and nothing is won by keeping them on one CPU."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def input_waiting(fd: Any) -> Callable[[int], list[Any]]:
    """A poll for input on `fd` (a descriptor or an object with fileno()): call it with a
    timeout in ms (0: do not wait); a non-empty list means input waits. Unlike a read or an
    accept that fails with EAGAIN, an empty answer costs no exception."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller.poll


def _restore_cpus(cpus: set[int] | None) -> None:
    if cpus is not None:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


class _Acceptors:
    """The bookkeeping of the threads that take connections themselves (`threads_accept`).

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


class ToolServerMixIn:
    """What the sockserve command adds to a framework server (see the module docstring)."""

    monitor: Monitor | None = None
    builtin_handler = False
    concurrency = "sync"  # set by server_class: "thread" and "fork" hand requests over
    inline_requests = False  # thread mode: answer on the loop thread (datagram builtins)
    #: A datagram builtin answered on the loop thread (sync mode, or inline_requests): each
    #: datagram goes straight to the handler class's `serve_datagram`.
    lean_datagrams = False
    #: At most this many waiting datagrams are answered per wake-up of the loop.
    datagram_batch = 32 if hasattr(socket, "MSG_DONTWAIT") else 1
    #: At most this many waiting connections are accepted per wake-up of the loop (thread and
    #: fork modes: each accept only hands the connection over to a thread or a child); the
    #: listener is non-blocking then.
    accept_batch = 1
    _accepted = 0
    #: With `accept_batch`: poll(0) on the listener, true when a connection waits.
    _listener_ready: Any = staticmethod(lambda timeout: True)
    #: Thread mode, builtin stream handler, one process: handler threads wait in accept()
    #: themselves (the kernel wakes one per connection) and serve what they accept, so no
    #: connection is handed from thread to thread; the loop thread only waits for the stop.
    #: One thread always waits in accept, so connections never wait for each other (with
    #: --max-threads N, until N threads are alive); a thread done with its connection waits
    #: for the next one while fewer than `idle_acceptors` do.
    threads_accept = False
    idle_acceptors = 8
    #: Thread mode: serve_forever keeps its thread, and so every thread it starts, on one
    #: CPU (`--pin`; by default for the builtins, whose threads run Python in turn).
    pin_threads = False
    #: The CPU `pin_loop_thread` kept the loop's thread on (None: not pinned).
    pinned_cpu: int | None = None
    _cpus_before_pin: set[int] | None = None
    #: A user handler's TCP byte counts come from the kernel (TCP_INFO) where it keeps them;
    #: None until the first connection tells.
    kernel_counts: bool | None = None
    #: A user handler's bytes are counted (some report shows them); otherwise its request is
    #: the accepted socket itself, with nothing around recv and send.
    count_user_bytes = False
    #: Accepted connections come with TCP_NODELAY already (set on the listener): the builtins
    #: then skip setting it on each.
    nodelay_inherited = False
    _acceptors: _Acceptors | None = None
    idle_timeout: float | None = None
    unix_mode: int | None = None
    request_limit: int | None = None
    max_packet_size = MAX_DATAGRAM
    requests_started = 0
    stop_reason: str | None = None
    _unix_file: tuple[str, int, int] | None = None
    _accept_failing_since: float | None = None
    _accept_backoff = 0.0
    _dispatch_failing_since: float | None = None
    _dispatch_refused = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.active_requests: set[Any] = set()  # connections being handled, for an abort
        super().__init__(*args, **kwargs)

    # -- binding and closing ------------------------------------------------------------------
    def server_bind(self) -> None:
        """Bind; for a unix path, replace a stale socket file and apply --mode via umask."""
        path = self.server_address  # type: ignore[has-type]
        if (
            self.address_family != getattr(socket, "AF_UNIX", None)
            or not isinstance(path, str)
            or path.startswith("\0")  # abstract namespace: no file to prepare or remove
        ):
            super().server_bind()  # type: ignore[misc]
            return
        prepare_unix_path(path, self.socket_type)  # type: ignore[attr-defined]
        old_umask = None
        if self.unix_mode is not None:
            old_umask = os.umask(0o777 & ~self.unix_mode)
        try:
            super().server_bind()  # type: ignore[misc]
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        st = os.stat(path)
        self._unix_file = (path, st.st_dev, st.st_ino)
        if self.unix_mode is not None:
            os.chmod(path, self.unix_mode)

    def server_close(self) -> None:
        """Close the socket, then remove the unix socket file this server created."""
        super().server_close()  # type: ignore[misc]
        if self._unix_file is not None:
            path, dev, ino = self._unix_file
            self._unix_file = None
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except FileNotFoundError:
                pass

    # -- requests ------------------------------------------------------------------------------
    def get_request(self) -> tuple[Any, Any]:
        """Accept or receive; back off while the process is out of descriptors."""
        try:
            request, client = super().get_request()  # type: ignore[misc]
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRNOS:
                self._accept_failed(exc)
            raise
        self._accepted += 1
        if self._accept_failing_since is not None:
            self._accepting_again()
        if self.socket_type == socket.SOCK_STREAM:  # type: ignore[attr-defined]
            if self.count_user_bytes:
                if self.kernel_counts is None:  # decided once, on the first connection
                    type(self).kernel_counts = _kernel_counts_work(request)
                wrapper = KernelCountedSocket if self.kernel_counts else CountingSocket
                request = wrapper(
                    request.family, request.type, request.proto, fileno=request.detach()
                )
                request.client = client
            if self.idle_timeout is not None:
                request.settimeout(self.idle_timeout)
            self.active_requests.add(request)
        elif self.count_user_bytes:
            data, sock = request
            request = (data, _CountingDatagramSocket(sock, client))
        return request, client

    # -- threads waiting in accept (threads_accept) ------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """The framework loop. With `pin_threads`, first keep this thread on its CPU
        (`_stay_on_this_cpu`): the threads it starts inherit that. With `threads_accept`,
        first start a thread waiting in accept, and once the loop stops, wake every thread
        still waiting there."""
        acceptors = None
        if self.threads_accept:
            acceptors = self._acceptors = _Acceptors(getattr(self, "max_threads", None))
            acceptors.reserve()
        self.pin_loop_thread()
        try:
            if acceptors is not None:
                self._start_acceptor()
            super().serve_forever(poll_interval)  # type: ignore[misc]
        finally:
            _restore_cpus(self._cpus_before_pin)  # the calling thread as it was
            self._cpus_before_pin = self.pinned_cpu = None
            if acceptors is not None:
                acceptors.stop()
                try:  # wakes accept() with EINVAL; no more clients
                    self.socket.shutdown(socket.SHUT_RD)  # type: ignore[attr-defined]
                except OSError:
                    pass
                self._close_wakers()

    def pin_loop_thread(self) -> int | None:
        """With `pin_threads`, keep the calling thread (the one that will run serve_forever)
        on its CPU, once; return that CPU, or None if nothing is pinned. The banner calls it
        before serve_forever, to name the CPU."""
        if self.pin_threads and self._cpus_before_pin is None:
            self._cpus_before_pin = _stay_on_this_cpu()
            if self._cpus_before_pin is not None:
                self.pinned_cpu = next(iter(os.sched_getaffinity(0)))
        return self.pinned_cpu

    def _start_acceptor(self) -> None:
        """Start a thread for `_accept_and_serve`, reserved in `_acceptors` beforehand."""
        acceptors = self._acceptors
        assert acceptors is not None
        try:
            self.start_tracked_thread(self._accept_and_serve)  # type: ignore[attr-defined]
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
            if acceptors.wakers and client_address in acceptors.wakers:
                self.close_request(request)  # the loop is trimming idle threads
                if acceptors.retire(client_address):
                    return
                continue
            acceptors.busy = True
            if acceptors.took():
                try:
                    self._start_acceptor()
                except (OSError, RuntimeError) as exc:
                    self._refuse(request, client_address, exc)  # this thread accepts instead
                    request = None
                else:
                    if self._dispatch_failing_since is not None:
                        self._dispatching_again()
            if request is not None:
                if self.verify_request(request, client_address) and self._admit(
                    request, client_address
                ):
                    self.process_request_thread(request, client_address)  # type: ignore[attr-defined]
                else:
                    self.shutdown_request(request)
            if not acceptors.served(self.idle_acceptors):
                return

    def server_activate(self) -> None:
        """Listen; a non-blocking listener for `accept_batch`, and for the builtins TCP_NODELAY
        set once on the listener, which Linux hands down to every accepted connection."""
        super().server_activate()  # type: ignore[misc]
        if self.accept_batch > 1:
            self.socket.setblocking(False)  # type: ignore[attr-defined]
            self._listener_ready = input_waiting(self.socket)  # type: ignore[attr-defined]
        if (
            self.builtin_handler
            and sys.platform.startswith("linux")
            and self.address_family in (socket.AF_INET, socket.AF_INET6)  # type: ignore[attr-defined]
            and self.socket_type == socket.SOCK_STREAM  # type: ignore[attr-defined]
        ):
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
            except OSError:
                pass
            else:
                self.nodelay_inherited = True

    def handle_ready(self) -> None:
        """Serve what is waiting: datagram builtins take the lean path (`_serve_datagrams`);
        with `accept_batch`, accept until no connection waits (or the batch is done)."""
        if self.lean_datagrams:
            self._serve_datagrams()
            return
        ready = self._listener_ready
        for i in range(self.accept_batch):
            if i and not ready(0):  # none waits: no accept that fails with an exception
                return
            accepted = self._accepted
            super().handle_ready()  # type: ignore[misc]
            if self._accepted == accepted or self.stop_reason is not None:
                return

    def _serve_datagrams(self) -> None:
        """Answer the datagrams waiting on the socket, up to `datagram_batch` of them.

        The same steps as get_request → process_request → the handler, for a builtin that
        answers in place: no handler instance and one loop wake-up for a burst. The request
        limit and a stop request end the batch at once.
        """
        sock = self.socket  # type: ignore[attr-defined]
        recvfrom = sock.recvfrom
        serve = self.RequestHandlerClass.serve_datagram  # type: ignore[attr-defined]
        size = self.max_packet_size
        limit = self.request_limit
        flags = 0  # the first datagram is known to be there; the others may not be
        for _ in range(self.datagram_batch):
            try:
                data, client = recvfrom(size, flags)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._accept_failed(exc)
                return
            flags = socket.MSG_DONTWAIT
            if self._accept_failing_since is not None:
                self._accepting_again()
            self.requests_started += 1
            if limit is not None and self.requests_started >= limit:
                self.request_stop("request limit reached")
            try:
                serve(data, sock, client)
            except Exception:
                self.handle_error((data, sock), client)
            if self.stop_reason is not None:
                return

    def _trim_acceptors(self) -> None:
        """Run by the loop every poll_interval: after a whole interval with no connection,
        end the threads ready beyond one, each by a connection of our own that it takes."""
        acceptors = self._acceptors
        if acceptors is None:
            return
        if acceptors.wakers:  # a whole interval and not taken: a connect that failed late
            self._close_wakers()
            return
        if acceptors.busy or acceptors.stopping:
            acceptors.busy = False
            return
        surplus = acceptors.ready - 1

        def register(address: Any, sock: socket.socket | None) -> None:
            with acceptors.lock:
                if sock is None:
                    acceptors.wakers.pop(address, None)
                else:
                    acceptors.wakers[address] = sock

        for _ in range(max(surplus, 0)):
            if not _wake_connection(self.socket, register):  # type: ignore[attr-defined]
                return

    def _close_wakers(self) -> None:
        acceptors = self._acceptors
        if acceptors is not None and acceptors.wakers:
            with acceptors.lock:
                wakers, acceptors.wakers = acceptors.wakers, {}
            for sock in wakers.values():
                sock.close()

    def service_actions(self) -> None:
        """Run the mixin's actions (reaping), then report what forked children sent."""
        super().service_actions()  # type: ignore[misc]
        if self._acceptors is not None:
            self._trim_acceptors()
        poll = getattr(self.monitor, "poll", None)
        if poll is not None:
            poll()

    def _accepting_again(self) -> None:
        took = time.monotonic() - (self._accept_failing_since or 0.0)
        self._accept_failing_since = None
        self._accept_backoff = 0.0
        if self.monitor is not None:
            self.monitor.info(f"accepting again after {took:.2f}s")

    def _accept_failed(self, exc: OSError) -> None:
        """Log once, then wait (interruptible by shutdown) before the next accept."""
        if self._accept_failing_since is None:
            self._accept_failing_since = time.monotonic()
            self._accept_backoff = 0.01
            if self.monitor is not None:
                self.monitor.warning(
                    f"cannot accept: {os.strerror(exc.errno or 0)}; pausing accepts until "
                    "descriptors free up (raise the limit with `ulimit -n`)"
                )
        else:
            self._accept_backoff = min(self._accept_backoff * 2, 0.5)
        wake = self.wakeup_fileno()  # type: ignore[attr-defined]
        select.select([wake] if wake is not None else [], [], [], self._accept_backoff)

    def _admit(self, request: Any, client_address: Any) -> bool:
        """Count and report the request, and stop at the request limit; False for a request
        past the limit (threads in accept may take one more before the loop stops them)."""
        acceptors = self._acceptors
        if acceptors is not None:
            with acceptors.lock:
                if self.request_limit is not None and self.requests_started >= self.request_limit:
                    return False
                self.requests_started += 1
        else:
            self.requests_started += 1
        if self.monitor is not None and self.socket_type == socket.SOCK_STREAM:  # type: ignore[attr-defined]
            self.monitor.connected(client_address)
        if self.request_limit is not None and self.requests_started >= self.request_limit:
            self.request_stop("request limit reached")
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Report the request, stop accepting after the request limit, then dispatch it."""
        self._admit(request, client_address)
        if self.inline_requests:  # a reply that never waits costs less than a thread start
            self.finish_request(request, client_address)
            self.shutdown_request(request)
            return
        if self.concurrency == "sync":
            super().process_request(request, client_address)  # type: ignore[misc]
            return
        try:  # only a thread start or a fork can fail here: the handler runs elsewhere
            super().process_request(request, client_address)  # type: ignore[misc]
        except (OSError, RuntimeError) as exc:
            self._refuse(request, client_address, exc)
            return
        if self._dispatch_failing_since is not None:
            self._dispatching_again()

    def _dispatching_again(self) -> None:
        took = time.monotonic() - (self._dispatch_failing_since or 0.0)
        refused, self._dispatch_refused = self._dispatch_refused, 0
        self._dispatch_failing_since = None
        self._tell(f"serving again after {took:.2f}s ({refused} refused)")

    def _refuse(self, request: Any, client_address: Any, exc: BaseException) -> None:
        """Close a request no thread or child could take (fork EAGAIN...); warn once."""
        if self._dispatch_failing_since is None:
            self._dispatch_failing_since = time.monotonic()
            what = "fork a child" if self.concurrency == "fork" else "start a thread"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._tell(
                f"cannot {what} for a new request ({reason}): refusing requests until that "
                "works again (check `ulimit -u` and free memory, or lower --max-children / "
                "--max-threads)",
                warning=True,
            )
        self._dispatch_refused += 1
        stream = self.socket_type == socket.SOCK_STREAM  # type: ignore[attr-defined]
        if stream and self.builtin_handler and self.monitor is not None:
            self.monitor.record(client_address, 0, 0)  # a close for the connect reported
        self.shutdown_request(request)

    def _tell(self, message: str, warning: bool = False) -> None:
        if self.monitor is None:
            (logger.warning if warning else logger.info)(message)
        elif warning:
            self.monitor.warning(message)
        else:
            self.monitor.info(message)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handle the request; in a forked child, first close the child's copy of the listener.

        Otherwise every child keeps the listening socket open: once the server stops, the
        kernel would go on queueing new connections that nobody accepts until the last child
        exits, instead of refusing them.
        """
        if self.concurrency == "fork" and self.socket_type == socket.SOCK_STREAM:  # type: ignore[attr-defined]
            self.socket.close()  # type: ignore[attr-defined]
        super().finish_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        """Report byte counts of a user handler's request, then shut it down and close it.

        With `threads_accept` (a builtin, in threads of this process) close alone sends the
        FIN: no forked child holds the descriptor, and shutdown would be one more system
        call, mostly failing on a connection the client already reset.
        """
        if self.threads_accept:
            self.close_request(request)
            return
        if self.count_user_bytes:
            if isinstance(request, KernelCountedSocket):
                request._snapshot()
                self.monitor.record(request.client, *(request.counts or (0, 0)))
            elif isinstance(request, CountingSocket):
                self.monitor.record(request.client, request.received, request.sent)
            elif isinstance(request, tuple) and isinstance(request[1], _CountingDatagramSocket):
                self.monitor.record(request[1].client, len(request[0]), request[1].sent)
        super().shutdown_request(request)  # type: ignore[misc]

    def close_request(self, request: Any) -> None:
        """Forget the request (the parent's copy, in fork mode), then close it."""
        self.active_requests.discard(request)
        super().close_request(request)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report a handler's exception to the monitor (the framework default logs it)."""
        exc = sys.exc_info()[1]
        if self.monitor is None or exc is None:
            super().handle_error(request, client_address)  # type: ignore[misc]
            return
        self.monitor.handler_error(client_address, exc)

    def request_stop(self, reason: str) -> None:
        """Ask serve_forever to stop (safe from the loop, other threads and signal handlers)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.request_shutdown()  # type: ignore[attr-defined]


def prepare_unix_path(path: str, socket_type: int) -> None:
    """Make `path` free for bind: remove a stale socket file; refuse anything else.

    Raises EnvironmentProblem when a server is listening there, or when the path is a regular
    file, directory, symlink or other non-socket (those are never deleted).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = _file_kind(st.st_mode)
        raise EnvironmentProblem(
            f"refusing to replace {path}: it is {kind}, not a socket",
            hint="remove it yourself if it is yours, or choose another path",
        )
    probe = socket.socket(socket.AF_UNIX, socket_type)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale file left by a dead server
        return
    except OSError as exc:
        if exc.errno in (errno.EPROTOTYPE,):
            raise EnvironmentProblem(
                f"{path} is a unix socket of another type in use by a running program",
                hint="choose another path",
            ) from None
        raise EnvironmentProblem(
            f"cannot check the existing socket {path}: {exc.strerror}",
            hint="remove it if it is stale, or choose another path",
        ) from None
    finally:
        probe.close()
    raise EnvironmentProblem(
        f"{path} is already in use by a running server",
        hint="stop that server, or choose another path",
    )


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a special file"


def server_class(family: str, socktype: str, concurrency: str) -> type[ss.BaseServer]:
    """Compose the framework server class for family × type × concurrency."""
    base = _BASES[(family, socktype)]
    mixin = _MIXINS[concurrency]
    if concurrency == "fork" and mixin is None:  # pragma: no cover - platforms without fork
        raise UsageError("--concurrency fork needs fork(), which this platform lacks")
    bases: tuple[type, ...] = (
        (ToolServerMixIn, base) if mixin is None else (ToolServerMixIn, mixin, base)
    )
    prefix = {"thread": "Threading", "fork": "Forking"}.get(concurrency, "")
    handed_over = concurrency if mixin is not None else "sync"  # event binds like sync
    attrs: dict[str, Any] = {"__module__": __name__, "concurrency": handed_over}
    if family == "inet6":
        attrs["address_family"] = socket.AF_INET6
    return type(f"{prefix}{base.__name__}", bases, attrs)


def resolve_sockaddr(config: ServeConfig) -> tuple[str, Any]:
    """Return (family, sockaddr) to bind, resolving a host name once."""
    address = config.address
    if config.family == "unix":
        return "unix", address.sockaddr()
    family = config.family
    host = address.host or ""
    try:
        socket.inet_pton(socket.AF_INET6 if family == "inet6" else socket.AF_INET, host)
        return family, address.sockaddr()
    except OSError:
        pass
    want = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    sock_type = socket.SOCK_STREAM if config.socktype == "stream" else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(host, address.port, want, sock_type, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"cannot resolve host {host!r}: {exc.strerror}",
            hint="use an IP address such as 127.0.0.1 or [::1]",
        ) from None
    fam, _, _, _, sockaddr = infos[0]
    return ("inet6" if fam == socket.AF_INET6 else "inet"), sockaddr


def make_server(config: ServeConfig, handler: Any, monitor: Monitor | None = None) -> ss.BaseServer:
    """Create, bind and activate the server for `config`, with `handler` as its handler class.

    Raises EnvironmentProblem (address in use, permission denied, ...) with a hint.
    """
    family, sockaddr = resolve_sockaddr(config)
    concurrency = "sync" if config.concurrency == "event" else config.concurrency
    cls = server_class(family, config.socktype, concurrency)
    inline = (
        concurrency == "thread"
        and config.socktype == "dgram"
        and config.handler.builtin in INLINE_DATAGRAM_BUILTINS
    )
    threads_accept = (
        concurrency == "thread"
        and config.socktype == "stream"
        and config.handler.builtin is not None
        and config.workers == 1  # workers share one listener: its shutdown would stop them all
    )
    if config.pin is None:  # the builtins' threads, while they take turns under a GIL
        pin_threads = threads_accept and _gil_enabled()
    else:  # ServeConfig refuses --pin outside thread mode and with --workers
        pin_threads = config.pin
    attrs: dict[str, Any] = {
        "monitor": monitor,
        "builtin_handler": config.handler.builtin is not None,
        "count_user_bytes": config.handler.builtin is None
        and monitor is not None
        and monitor.wants_counts,
        "inline_requests": inline,
        "lean_datagrams": config.socktype == "dgram"
        and config.handler.builtin is not None
        and (concurrency == "sync" or inline),
        "idle_timeout": config.timeout,
        "unix_mode": config.mode,
        "request_limit": config.request_limit,
        "request_queue_size": config.backlog,
        "allow_reuse_address": config.reuse_address,
        "allow_reuse_port": config.reuse_port or config.workers > 1,
        "dualstack_ipv6": family == "inet6" and config.address.all_interfaces,
        "daemon_threads": config.daemon_threads,
        # Our builtins keep nothing in threading.local: their threads can take the next request.
        "reuse_threads": config.handler.builtin is not None,
        "threads_accept": threads_accept,
        "pin_threads": pin_threads,
        "loop_handles_requests": not threads_accept,
        "accept_batch": 16
        if concurrency in ("thread", "fork") and config.socktype == "stream" and not threads_accept
        else 1,
        "block_on_close": config.block_on_close,
    }
    if config.max_children is not None:
        attrs["max_children"] = config.max_children
    if config.max_threads is not None:
        attrs["max_threads"] = config.max_threads
    cls = type(cls.__name__, (cls,), attrs)
    try:
        return cls(sockaddr, handler)
    except OSError as exc:
        raise translate_bind_error(exc, config) from None


def translate_bind_error(exc: OSError, config: ServeConfig) -> EnvironmentProblem:
    """Turn the usual OSErrors of bind/listen into one-line errors with a hint."""
    where = str(config.address)
    if exc.errno == errno.EADDRINUSE:
        if config.family == "unix":
            return EnvironmentProblem(
                f"{where} is already in use", hint="stop the other server or choose another name"
            )
        return EnvironmentProblem(
            f"address {where} is already in use",
            hint="choose another port, or use port 0 (e.g. :0) to let the OS pick a free one",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        if config.family != "unix" and config.address.port and config.address.port < 1024:
            return EnvironmentProblem(
                f"permission denied binding to {where}: ports below 1024 are privileged",
                hint="use a port of 1024 or above (e.g. :8080), or port 0",
            )
        return EnvironmentProblem(
            f"permission denied binding to {where}",
            hint="choose a path or address you may write to",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return EnvironmentProblem(
            f"cannot bind to {where}: no such address on this machine",
            hint="use 127.0.0.1, [::1], or an address of one of this machine's interfaces",
        )
    if exc.errno == errno.ENOENT and config.family == "unix":
        return EnvironmentProblem(
            f"cannot create {where}: its directory does not exist",
            hint="create the directory first, or choose another path",
        )
    if exc.errno == errno.EAFNOSUPPORT:
        return EnvironmentProblem(
            f"cannot bind to {where}: address family not supported here",
            hint="IPv6 may be disabled; use an IPv4 address such as 127.0.0.1",
        )
    return EnvironmentProblem(f"cannot listen on {where}: {exc.strerror or exc}")
