"""forward: a transparent proxy, for stream and datagram servers in sync, thread and fork mode.

Streams (tcp, unix). Each connection gets its own upstream connection, and each direction is
relayed as it comes by its own thread (`StreamRelay`; the handler's thread carries client →
upstream). What it keeps in hand is bounded: one buffer (or one pipe) per direction, and it
reads a side only once the other took the last chunk, so a side that does not read stops the
other (back-pressure). An EOF is passed on as shutdown(SHUT_WR): the connection ends once both
directions have ended, as socat's two unidirectional flows. A reset (or any other error) on
one side becomes a reset on the other (SO_LINGER 0, then close). An upstream that refuses or
cannot be reached resets the client's connection; the run hears one `upstream` event and one
warning, and goes on. Bulk data moves with `os.splice` (socket → pipe → socket, never through
Python) when nobody watches the client's socket and neither socket has a timeout; otherwise
with recv and sendall on the sockets the handler was given, so a watch sees the client side.

Datagrams (udp, unix-dgram). Each client address gets one upstream socket (an association,
`Associations`): datagrams from the client go out on it, and what the upstream answers on it
goes back to that client from the server's socket, sent by one reply thread for all clients.
An association unused for `idle_timeout` seconds (--timeout; default
`DEFAULT_ASSOCIATION_IDLE`) expires, and at most `MAX_ASSOCIATIONS` live at once (the least
recently used goes first). Fork mode cannot serve them (each child sees one datagram); the
configuration refuses it.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..addresses import Address
from ..socketserver import BaseRequestHandler
from ..upstreams import upstream_url
from ..watch import is_watched
from .shared import HandlerOptions, Shared, send_datagram
from .stream import StreamBuiltin, grow_pipe

#: How long connecting to the upstream may take (streams, without --timeout).
CONNECT_TIMEOUT = 10.0
#: The buffer each direction copies through (when not spliced).
RELAY_BUFFER = 65536
#: The pipe each spliced direction moves its data through: at most this much in flight.
SPLICE_PIPE_SIZE = 1 << 18
#: How long a datagram client's association lives unused, without --timeout.
DEFAULT_ASSOCIATION_IDLE = 60.0
#: At most this many datagram associations (each an open socket) at once.
MAX_ASSOCIATIONS = 512
#: The reply thread looks at the server socket (closed: it stops) this often, at least.
REPLY_TICK = 0.25
#: SO_LINGER on, 0 seconds: close() sends a reset.
_LINGER_RESET = struct.pack("ii", 1, 0)
CAN_SPLICE = hasattr(os, "splice")


def describe(exc: BaseException) -> str:
    """The reason an OSError gives, in words (ECONNREFUSED: "Connection refused")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def reset_on_close(sock: Any) -> None:
    """Make the next close of `sock` send a reset (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


def open_upstream(upstream: Address, socktype: str, timeout: float | None) -> socket.socket:
    """A socket connected to `upstream` (a `socktype` socket, with `timeout` to connect).

    A unix datagram socket is bound to an automatic abstract name first (Linux), so the
    upstream can answer it. Raises OSError.
    """
    kind = socket.SOCK_STREAM if socktype == "stream" else socket.SOCK_DGRAM
    if upstream.family == "unix":
        sock = socket.socket(socket.AF_UNIX, kind)
        target: Any = upstream.sockaddr()
    else:
        family, _, _, _, target = socket.getaddrinfo(upstream.host, upstream.port, 0, kind)[0]
        sock = socket.socket(family, kind)
    try:
        if upstream.family == "unix" and kind == socket.SOCK_DGRAM:
            sock.bind("")  # autobind: an abstract address the upstream can send to
        sock.settimeout(timeout)
        sock.connect(target)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class StreamRelay:
    """Relay between `client` and `upstream` both ways until both directions have ended.

    `moved[0]` counts client → upstream bytes, `moved[1]` upstream → client. `idle`: the
    sockets' timeout, if any; the relay ends (`timed_out`) once neither direction moved for
    that long. After `run`, `reset_client` tells the client must be reset (the upstream
    failed); the upstream is closed by `run`, reset when the client failed.
    """

    def __init__(
        self, client: Any, upstream: socket.socket, splice: bool, idle: float | None
    ) -> None:
        self.sockets = (client, upstream)
        self.splice = splice
        self.idle = idle
        self.moved = [0, 0]
        self.failed = [False, False]  # the side reset, went away or failed
        self.timed_out = False
        self.last = time.monotonic()
        self.lock = threading.Lock()

    @property
    def reset_client(self) -> bool:
        """True when the upstream failed: the client's connection is to be reset."""
        return self.failed[1] or self.timed_out

    def run(self) -> None:
        """Relay both ways on this thread and one more; close (or reset) the upstream."""
        back = threading.Thread(target=self.direction, args=(1,), name="forward (upstream)")
        back.start()
        try:
            self.direction(0)
        finally:
            back.join()
            upstream = self.sockets[1]
            if self.failed[0] or self.timed_out:
                reset_on_close(upstream)
            upstream.close()

    def direction(self, index: int) -> None:
        """Relay from side `index` to the other; pass its EOF on as a half-close."""
        src, dst = self.sockets[index], self.sockets[1 - index]
        try:
            ended = self.splice_through(index) if self.splice else self.copy(index)
        except BaseException:
            self.fail(index)
            raise
        if ended:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        del src

    def copy(self, index: int) -> bool:
        """recv and sendall; True at the source's EOF, False when a side failed."""
        src, dst = self.sockets[index], self.sockets[1 - index]
        buf = bytearray(RELAY_BUFFER)
        view = memoryview(buf)
        idle = self.idle
        try:
            while True:
                try:
                    n = src.recv_into(buf)
                except TimeoutError:
                    if time.monotonic() - self.last < idle:  # type: ignore[operator]  # idle is set
                        continue  # the other direction is busy: not idle
                    self.time_out()
                    return False
                except OSError:
                    self.fail(index)
                    return False
                if not n:
                    return True
                try:
                    dst.sendall(view[:n])
                except TimeoutError:
                    self.time_out()
                    return False
                except OSError:
                    self.fail(1 - index)
                    return False
                self.moved[index] += n
                if idle is not None:
                    self.last = time.monotonic()
        finally:
            view.release()

    def splice_through(self, index: int) -> bool:
        """os.splice source → pipe → destination; True at the source's EOF."""
        src_fd = self.sockets[index].fileno()
        dst_fd = self.sockets[1 - index].fileno()
        r, w = os.pipe()
        size = max(RELAY_BUFFER, grow_pipe(w, SPLICE_PIPE_SIZE))
        splice = os.splice
        move = os.SPLICE_F_MOVE
        try:
            while True:
                try:
                    n = splice(src_fd, w, size, flags=move)
                except OSError:
                    self.fail(index)
                    return False
                if not n:
                    return True
                left = n
                while left:
                    try:
                        left -= splice(r, dst_fd, left, flags=move)
                    except OSError:
                        self.fail(1 - index)
                        return False
                self.moved[index] += n
        finally:
            os.close(r)
            os.close(w)

    def fail(self, index: int) -> None:
        """Side `index` failed: the other is to be reset; wake the thread reading it."""
        with self.lock:
            if self.failed[index]:
                return
            self.failed[index] = True
        other = self.sockets[1 - index]
        reset_on_close(other)
        try:
            other.shutdown(socket.SHUT_RD)  # its reader sees an end, and stops
        except OSError:
            pass

    def time_out(self) -> None:
        """Neither direction moved for `idle`: stop both (each is reset at close)."""
        self.timed_out = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class ForwardStream(StreamBuiltin):
    """forward on a stream server: connect the upstream, relay both ways (`StreamRelay`)."""

    upstream: ClassVar[Address]

    def serve(self, sock: socket.socket) -> None:
        observer = self.shared.observer
        url = upstream_url(self.upstream, "stream")
        idle = sock.gettimeout()
        try:
            upstream = open_upstream(self.upstream, "stream", idle or CONNECT_TIMEOUT)
        except OSError as exc:
            if observer is not None:
                reason = describe(exc)
                observer.upstream(self.client_address, url, reason)
                observer.warning(
                    f"upstream {url} failed for {client_text(self.client_address)}: {reason}; "
                    "reset the client's connection"
                )
            reset_on_close(sock)
            sock.close()  # now, before the server's shutdown could send an orderly FIN
            return
        upstream.settimeout(idle)
        if observer is not None:
            observer.upstream(self.client_address, url, None)
        splice = CAN_SPLICE and not self.watched and idle is None
        relay = StreamRelay(sock, upstream, splice, idle)
        try:
            relay.run()
        finally:
            self.received += relay.moved[0]
            self.sent += relay.moved[1]
        if relay.reset_client:
            reset_on_close(sock)
            sock.close()
        if relay.timed_out:
            raise TimeoutError(f"no traffic either way for {idle:g}s")


def client_text(client: Any) -> str:
    from ..console import format_client  # the warning's text only

    return format_client(client)


@dataclass
class Association:
    """One datagram client's upstream socket; `reply_to` is the socket its replies leave by."""

    client: Any
    sock: socket.socket
    reply_to: Any
    last: float = field(default_factory=time.monotonic)
    closed: bool = False


class Associations:
    """The associations of one server, by client: bounded, each expiring when unused.

    `add` returns the association it pushed out (the least recently used) when `limit` are
    open; `expired(now)` takes out those unused for `idle` seconds. Closing their sockets is
    the caller's (the one thread that reads them).
    """

    def __init__(self, idle: float, limit: int = MAX_ASSOCIATIONS) -> None:
        self.idle = idle
        self.limit = limit
        self._by_client: OrderedDict[Any, Association] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_client)

    def get(self, client: Any, now: float) -> Association | None:
        """The client's association, marked used at `now`; None if it has none."""
        found = self._by_client.get(client)
        if found is not None:
            found.last = now
            self._by_client.move_to_end(client)
        return found

    def add(self, assoc: Association) -> Association | None:
        """Keep `assoc`; return the one it pushed out, if any."""
        out = None
        if len(self._by_client) >= self.limit:
            _, out = self._by_client.popitem(last=False)
            out.closed = True
        self._by_client[assoc.client] = assoc
        return out

    def expired(self, now: float) -> list[Association]:
        """Take out the associations unused since `now - idle`."""
        gone = []
        for client, assoc in list(self._by_client.items()):
            if now - assoc.last < self.idle:
                break  # kept in order of use: the rest are younger
            del self._by_client[client]
            assoc.closed = True
            gone.append(assoc)
        return gone

    def take_all(self) -> list[Association]:
        """Take out every association."""
        every = list(self._by_client.values())
        self._by_client.clear()
        for assoc in every:
            assoc.closed = True
        return every


class DatagramRelay:
    """Forward datagrams to the upstream, one association per client; one thread sends the
    replies back, expires associations, and stops once the server's socket is closed."""

    def __init__(self, upstream: Address, shared: Shared, idle: float | None) -> None:
        self.upstream = upstream
        self.url = upstream_url(upstream, "dgram")
        self.observer = shared.observer
        self.recorder = shared.recorder
        self.associations = Associations(idle or DEFAULT_ASSOCIATION_IDLE)
        self.lock = threading.Lock()
        self.selector: selectors.BaseSelector | None = None
        self.thread: threading.Thread | None = None
        self.server_socket: Any = None
        self.doomed: list[Association] = []  # pushed out: the reply thread closes them

    def forward(self, data: Any, sock: Any, client: Any) -> None:
        """Send one datagram from `client` (received on `sock`) on to the upstream."""
        now = time.monotonic()
        with self.lock:
            assoc = self.associations.get(client, now)
            if assoc is None:
                assoc = self.associate(sock, client)
                if assoc is None:
                    return
            assoc.reply_to = sock
            try:
                assoc.sock.send(data)
            except OSError:
                pass  # the upstream's queue is full, or it refused an earlier one: lost
        if self.recorder is not None:
            self.recorder.record(client, len(data), 0)

    def associate(self, sock: Any, client: Any) -> Association | None:
        """Open the client's upstream socket (under the lock); None when it cannot be."""
        observer = self.observer
        try:
            up = open_upstream(self.upstream, "dgram", None)
        except OSError as exc:
            if observer is not None:
                observer.upstream(client, self.url, describe(exc))
                observer.warning(
                    f"upstream {self.url} failed for {client_text(client)}: {describe(exc)}; "
                    "dropped its datagram"
                )
            return None
        up.setblocking(False)
        assoc = Association(client, up, sock)
        pushed = self.associations.add(assoc)
        if pushed is not None:
            self.doomed.append(pushed)
        self.start(sock)
        assert self.selector is not None
        self.selector.register(up, selectors.EVENT_READ, assoc)
        if observer is not None:
            observer.upstream(client, self.url, None)
        return assoc

    def start(self, sock: Any) -> None:
        """Start the reply thread with the first association."""
        if self.thread is not None and self.thread.is_alive():
            return
        self.server_socket = sock
        self.selector = selectors.DefaultSelector()
        self.thread = threading.Thread(target=self.reply_loop, name="forward replies", daemon=True)
        self.thread.start()

    def reply_loop(self) -> None:
        """Send replies back until the server's socket closes; then close every association."""
        selector = self.selector
        assert selector is not None
        tick = min(REPLY_TICK, self.associations.idle / 4)
        try:
            while self.server_socket.fileno() != -1:
                for key, _ in selector.select(tick):
                    self.pass_back(key.data)
                with self.lock:
                    gone = self.associations.expired(time.monotonic()) + self.doomed
                    self.doomed = []
                    for assoc in gone:
                        selector.unregister(assoc.sock)
                        assoc.sock.close()
        finally:
            with self.lock:
                for assoc in self.associations.take_all() + self.doomed:
                    assoc.sock.close()
                self.doomed = []
                selector.close()

    def pass_back(self, assoc: Association) -> None:
        """Send what the upstream answered on `assoc` back to its client."""
        if assoc.closed:
            return
        client = assoc.client
        for _ in range(64):  # a burst, then the others' turn
            try:
                data = assoc.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                continue  # refused (an ICMP error for an earlier datagram): nothing to pass
            assoc.last = time.monotonic()
            if not client:
                continue  # an unnamed unix client cannot be answered
            sent = send_datagram(assoc.reply_to, data, client)
            observer = self.observer
            if observer is not None and observer.wants_data and not is_watched(assoc.reply_to):
                observer.data(client, "out", data)
            if self.recorder is not None:
                self.recorder.record(client, 0, sent)


class ForwardDatagram(BaseRequestHandler):
    """forward on a datagram server: each datagram to its client's association."""

    builtin: ClassVar[str] = "forward"
    socktype: ClassVar[str] = "dgram"
    options: ClassVar[HandlerOptions]
    shared: ClassVar[Shared]
    relay: ClassVar[DatagramRelay]

    @classmethod
    def release(cls) -> None:
        """Nothing to stop: the reply thread ends with the server's socket."""

    def handle(self) -> None:
        data, sock = self.request
        self.serve_datagram(data, sock, self.client_address)

    @classmethod
    def serve_datagram(cls, data: Any, sock: Any, client: Any) -> None:
        """Forward one datagram `data` that `sock` received from `client`."""
        cls.relay.forward(data, sock, client)


def _upstream_of(options: HandlerOptions) -> Address:
    if options.upstream is None:
        raise ValueError("forward needs HandlerOptions(upstream=...)")
    return options.upstream


def forward_stream_handler(options: HandlerOptions) -> type[BaseRequestHandler]:
    """A request handler class forwarding stream connections to `options.upstream`."""
    shared = Shared("forward", options)
    attrs = {
        "builtin": "forward",
        "options": options,
        "shared": shared,
        "upstream": _upstream_of(options),
        "__module__": __name__,
    }
    return type("ForwardStreamHandler", (ForwardStream,), attrs)


def forward_datagram_handler(options: HandlerOptions) -> type[BaseRequestHandler]:
    """A request handler class forwarding datagrams to `options.upstream`."""
    shared = Shared("forward", options)
    relay = DatagramRelay(_upstream_of(options), shared, options.idle_timeout)
    attrs = {"options": options, "shared": shared, "relay": relay, "__module__": __name__}
    return type("ForwardDatagramHandler", (ForwardDatagram,), attrs)
