"""forward for datagram servers (udp, unix-dgram) in sync and thread mode.

Each client address gets one upstream socket (an association, `Associations`): datagrams from
the client go out on it, and what the upstream answers on it goes back to that client from the
server's socket, sent by one reply thread for all clients (through the request's watched
socket when it has one, so -vv and the watch's stages see the replies). A --delay on either
side never waits in that thread or the server's: the faults' `SendSchedule` sends each
delayed datagram at its own time. An association unused
for `idle_timeout` seconds (--timeout; default `DEFAULT_ASSOCIATION_IDLE`) expires, and at most
`MAX_ASSOCIATIONS` live at once (the least recently used goes first). Fork mode cannot serve
them (each child sees one datagram); the configuration refuses it. Each datagram forwarded is
recorded as (len, 0), each reply passed back as (0, len).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..addresses import Address
from ..events import address_of
from ..faults import connection_of
from ..relay_faults import upstream_watch
from ..socketserver import BaseRequestHandler
from ..upstreams import upstream_url
from ..watch import Watch, is_watched
from .forward import describe, open_upstream, tell_failed, upstream_of
from .shared import HandlerOptions, Shared, send_datagram

#: How long a datagram client's association lives unused, without --timeout.
DEFAULT_ASSOCIATION_IDLE = 60.0
#: At most this many datagram associations (each an open socket) at once.
MAX_ASSOCIATIONS = 512
#: The reply thread looks at the server socket (closed: it stops) this often, at least.
REPLY_TICK = 0.25
#: A datagram to the upstream that --reorder held back this long is sent (on the next tick).
REORDER_KEPT = 0.1


@dataclass
class Association:
    """One datagram client's upstream socket; `reply_to` is the socket its replies leave by."""

    client: Any
    sock: socket.socket
    reply_to: Any
    last: float = field(default_factory=time.monotonic)
    closed: bool = False
    watch: Watch | None = None  # the upstream side's, when faults dress it (--faults-to)


def association_watch(client_watch: Watch | None) -> Watch | None:
    """The upstream side's watch of a new association, dressed with its faults; None when
    that side takes none."""
    faulted = upstream_watch(client_watch)
    return None if faulted is None else faulted[0]


def upstream_held(watch: Watch) -> Any:
    """The --reorder hold of an upstream watch's faults."""
    conn = connection_of(watch)
    return None if conn is None else conn.owner.held


def send_upstream(assoc: Association, data: Any, client_watch: Watch | None) -> None:
    """Send a client's datagram on `assoc` (through its faults, told with the client's id
    as `client_watch` has it); a datagram the upstream cannot take is lost."""

    def send(chunk: memoryview) -> int:
        try:
            return assoc.sock.send(chunk)
        except OSError:  # its queue is full, it refused an earlier one, or it expired: lost
            return len(chunk)

    watch = assoc.watch
    if watch is None:
        send(memoryview(data))
        return
    if client_watch is not None:
        watch.client = client_watch.client
    watch.outgoing(data, send)


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


def open_association(upstream: Address, url: str, observer: Any, client: Any) -> Any:
    """A new non-blocking datagram socket to `upstream` for `client`; None (told as a failed
    upstream: its datagram is dropped) when it cannot be opened."""
    try:
        up = open_upstream(upstream, "dgram", None)
    except OSError as exc:
        tell_failed(observer, client, url, describe(exc), "dropped its datagram")
        return None
    up.setblocking(False)
    return up


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
        self.held: Any = None  # the upstream side's --reorder hold, sent if kept too long

    def forward(self, data: Any, sock: Any, client: Any) -> None:
        """Send one datagram from `client` (received on `sock`) on to the upstream."""
        now = time.monotonic()
        client_watch = getattr(sock, "watch", None)
        with self.lock:
            # By the peer's address: `client` may be this datagram's `events.Client`.
            assoc = self.associations.get(address_of(client), now)
            if assoc is None:
                assoc = self.associate(sock, client)
                if assoc is None:
                    return
            assoc.reply_to = sock
            if assoc.watch is None:
                send_upstream(assoc, data, None)
        if assoc.watch is not None:  # faults may hold it a while: not under the lock
            send_upstream(assoc, data, client_watch)
        if self.recorder is not None:
            self.recorder.record(client, len(data), 0)

    def associate(self, sock: Any, client: Any) -> Association | None:
        """Open the client's upstream socket (under the lock); None when it cannot be."""
        observer = self.observer
        up = open_association(self.upstream, self.url, observer, client)
        if up is None:
            return None
        assoc = Association(address_of(client), up, sock)
        assoc.watch = association_watch(getattr(sock, "watch", None))
        if assoc.watch is not None:
            self.held = upstream_held(assoc.watch)
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
                if self.held is not None:
                    self.held.flush(older_than=REORDER_KEPT)
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


def forward_datagram_handler(options: HandlerOptions) -> type[BaseRequestHandler]:
    """A request handler class forwarding datagrams to `options.upstream`."""
    shared = Shared("forward", options)
    relay = DatagramRelay(upstream_of(options), shared, options.idle_timeout)
    attrs = {"options": options, "shared": shared, "relay": relay, "__module__": __name__}
    return type("ForwardDatagramHandler", (ForwardDatagram,), attrs)
