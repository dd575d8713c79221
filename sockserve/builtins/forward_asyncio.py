"""forward as asyncio protocols, for `--concurrency event` (this module imports asyncio).

Streams: each client connection (`ClientSide`) opens its upstream connection (`UpstreamSide`)
and reads nothing until it is made. Each side writes what the other receives; a side whose
write buffer is full (over the transport's high-water mark) pauses reading on the other
(back-pressure). An EOF is passed on with write_eof; the two connections close once both
EOFs have passed. A connection lost on an error (a reset) aborts the other with SO_LINGER 0,
which resets it. An upstream that cannot be reached resets the client, as in the other modes
(`forward`). Faults on the upstream side (--faults-to, `sockserve.relay_faults`) put the
upstream protocol behind a watch of its own; an EOF or a close waits for what a side's faults
hold back (`after_paced`), a side a fault reset resets the other. Over `--forward-tls` the
upstream's TLS is `forward_tls_asyncio`'s, which can pass an EOF on (asyncio's own cannot).

Datagrams: one protocol for the server's socket (`ForwardDatagramProtocol`), one upstream
socket per client read by the loop (`loop.add_reader`), the associations of `forward`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, Literal

from ..addresses import Address
from ..fault_stages import Connection
from ..faults import attach_transport
from ..relay_faults import after_paced, side_connection, upstream_watch
from ..upstreams import upstream_url
from ..watch import Watch
from .forward import (
    CONNECT_TIMEOUT,
    describe,
    reset_on_close,
    tell_failed,
)
from .forward_datagram import (
    DEFAULT_ASSOCIATION_IDLE,
    Association,
    Associations,
    association_watch,
    open_association,
    send_upstream,
)
from .shared import HandlerOptions, Shared


def reset(transport: Any) -> None:
    """Close `transport` with a reset (SO_LINGER 0, then abort)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        reset_on_close(sock)
    transport.abort()


def faulted_watch(transport: Any) -> Watch | None:
    """The watch a relay's faults dressed, among those `transport` goes through (a watched
    transport's, under a -vv one's); None without faults."""
    while transport is not None and hasattr(transport, "_owner"):
        watch = transport._owner.watch
        if side_connection(watch) is not None:
            return watch
        transport = getattr(transport, "_transport", None)
    return None


def was_reset(conn: Connection | None) -> bool:
    """True when a fault reset that side (--reset-after): the other is reset too."""
    return conn is not None and conn.ended == "reset"


def pass_reset_on(watch: Watch | None, transport: Any) -> None:
    """A fault reset the other side: reset `transport` too, once what it was already given
    (and its faults hold back) has gone out, as the copying relay does."""

    def after() -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            reset_on_close(sock)
        transport.close()  # sends what it holds, then closes: a reset, with SO_LINGER 0

    after_paced(watch, after)


def close_after_paced(watch: Watch | None, transport: Any) -> None:
    """Close `transport` once what its side's faults hold back has gone."""
    after_paced(watch, transport.close)


def eof_after_paced(watch: Watch | None, transport: Any) -> None:
    """Pass an EOF on to `transport` once what its side's faults hold back has gone."""

    def eof() -> None:
        if not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    after_paced(watch, eof)


class ClientSide(asyncio.Protocol):
    """One client connection of the proxy; `received` and `sent` count the client's bytes
    (the event server's idle sweep reads them)."""

    def __init__(self, shared: Shared, upstream: Address) -> None:
        self.shared = shared
        self.upstream = upstream
        self.received = 0
        self.sent = 0
        self.client: Any = None
        self.transport: Any = None
        self.up: Any = None  # the upstream's transport, once connected
        self.task: asyncio.Task[None] | None = None
        self.client_eof = False
        self.upstream_eof = False
        self.early: list[bytes] = []  # what came before the upstream connection
        self.watch: Watch | None = None  # the client side's, when faults dress it
        self.up_watch: Watch | None = None  # the upstream side's, when faults dress it
        self.faults: tuple[Connection | None, Connection | None] = (None, None)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self.watch = faulted_watch(transport)
        transport.pause_reading()  # until the upstream is there to take it (asyncio's loop)
        self.task = asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        """Connect the upstream; reset the client if it cannot be reached."""
        loop = asyncio.get_running_loop()
        observer = self.shared.observer
        url = upstream_url(self.upstream, "stream")
        factory: Callable[[], asyncio.BaseProtocol] = functools.partial(UpstreamSide, self)
        faulted = upstream_watch(self.watch)  # --faults-to upstream or both
        if faulted is not None:
            from ..watch_asyncio import watched

            self.up_watch = faulted[0]
            factory = functools.partial(watched_upstream, self, faulted[0], watched)
        self.faults = (side_connection(self.watch), None if faulted is None else faulted[1])
        secure = self.shared.options.upstream_tls  # --forward-tls
        made: Any
        try:
            if secure is not None:  # TLS of ours, not the loop's: it can half-close
                from .forward_tls_asyncio import open_tls_upstream

                made = open_tls_upstream(
                    self.upstream,
                    secure,
                    factory,
                    lambda why: tell_failed(observer, self.client, url, why, "reset it"),
                )
            elif self.upstream.family == "unix":
                made = loop.create_unix_connection(factory, self.upstream.sockaddr())
            else:
                host, port = self.upstream.sockaddr()
                made = loop.create_connection(factory, host, port)
            transport, protocol = await asyncio.wait_for(made, CONNECT_TIMEOUT)
        except (TimeoutError, OSError, ValueError) as exc:
            if secure is not None and not isinstance(exc, ConnectionRefusedError):
                reason = secure.describe_failure(exc, CONNECT_TIMEOUT)
            elif isinstance(exc, OSError):
                reason = describe(exc)
            else:
                reason = "timed out"
            tell_failed(observer, self.client, url, reason, "reset the client's connection")
            if not self.transport.is_closing():
                reset(self.transport)
            return
        gone = self.transport.is_closing()  # the client went away meanwhile
        if gone and not was_reset(self.faults[0]):
            transport.close()
            return
        extra = {}
        if secure is not None:
            extra["tls"] = secure.details(transport.get_extra_info("ssl_object"))
        if self.up_watch is not None:
            attach_transport(self.up_watch, transport)
            inner: Any = protocol  # a watched protocol: its UpstreamSide has the watched transport
            transport = inner.protocol.transport
        self.up = transport
        if observer is not None:
            observer.upstream(self.client, url, None, **extra)
        if gone:  # a fault reset the client: what it sent goes on, then the reset
            transport.writelines(self.early)
            pass_reset_on(self.up_watch, transport)
            return
        transport.writelines(self.early)
        self.early.clear()
        if self.client_eof:
            eof_after_paced(self.up_watch, transport)
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.up is None:  # read before the upstream is there (uvloop): keep it, wait
            self.early.append(data)
            self.transport.pause_reading()
            return
        self.up.write(data)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.up is not None and not self.up.is_closing():
            eof_after_paced(self.up_watch, self.up)
        self.maybe_close()
        return True  # the upstream may still answer

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def maybe_close(self) -> None:
        """Both EOFs passed: close both connections (what they still hold goes out first)."""
        if self.client_eof and self.upstream_eof:
            close_after_paced(self.watch, self.transport)
            if self.up is not None:
                close_after_paced(self.up_watch, self.up)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None and not self.task.done():
            if not was_reset(self.faults[0]):  # else the upstream hears of it, once made
                self.task.cancel()
        up = self.up
        if up is not None and not up.is_closing():
            pass_end_on(exc, was_reset(self.faults[0]), self.up_watch, up)
        recorder = self.shared.recorder
        if recorder is not None:
            recorder.record(self.client, self.received, self.sent)


def pass_end_on(exc: Exception | None, fault_reset: bool, watch: Any, transport: Any) -> None:
    """One side ended: tell `transport` (the other side, behind `watch`) as it ended. An
    error resets it, a fault's reset is passed on as a reset, an orderly end closes it once
    the data its faults still hold has gone out."""
    if exc is not None:
        reset(transport)
    elif fault_reset:
        pass_reset_on(watch, transport)
    else:
        close_after_paced(watch, transport)


class UpstreamSide(asyncio.Protocol):
    """The upstream connection of one `ClientSide`; `transport` is the one it was given (a
    watched transport, when faults break the upstream side)."""

    def __init__(self, owner: ClientSide) -> None:
        self.owner = owner
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner.sent += len(data)
        owner.transport.write(data)

    def eof_received(self) -> bool:
        owner = self.owner
        owner.upstream_eof = True
        eof_after_paced(owner.watch, owner.transport)
        owner.maybe_close()
        return True  # the client may still send

    def pause_writing(self) -> None:
        self.owner.transport.pause_reading()

    def resume_writing(self) -> None:
        self.owner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        client = owner.transport
        if not client.is_closing():
            pass_end_on(exc, was_reset(owner.faults[1]), owner.watch, client)


def watched_upstream(owner: ClientSide, watch: Watch, watched: Any) -> asyncio.BaseProtocol:
    """The upstream protocol of `owner` behind `watch` (its faults)."""
    protocol: asyncio.BaseProtocol = watched(UpstreamSide(owner), watch)
    return protocol


class ForwardDatagramProtocol(asyncio.DatagramProtocol):
    """The server socket's protocol: each client's datagrams to its association, the
    upstream's answers back to the client; idle associations expire."""

    def __init__(self, shared: Shared, upstream: Address, idle: float | None) -> None:
        self.shared = shared
        self.upstream = upstream
        self.url = upstream_url(upstream, "dgram")
        self.associations = Associations(idle or DEFAULT_ASSOCIATION_IDLE)
        self.transport: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sweeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assoc = self.associations.get(addr, time.monotonic())
        if assoc is None:
            assoc = self.associate(addr)
            if assoc is None:
                return
        send_upstream(assoc, data, faulted_watch(self.transport))
        recorder = self.shared.recorder
        if recorder is not None:
            recorder.record(addr, len(data), 0)

    def associate(self, client: Any) -> Association | None:
        """Open the client's upstream socket, read by the loop; None when it cannot be."""
        observer = self.shared.observer
        up = open_association(self.upstream, self.url, observer, client)
        if up is None:
            return None
        assoc = Association(client, up, self.transport)
        assoc.watch = association_watch(faulted_watch(self.transport))
        pushed = self.associations.add(assoc)
        if pushed is not None:
            self.drop(pushed)
        assert self.loop is not None
        self.loop.add_reader(up.fileno(), self.pass_back, assoc)
        if self.sweeper is None:
            self.schedule_sweep()
        if observer is not None:
            observer.upstream(client, self.url, None)
        return assoc

    def pass_back(self, assoc: Association) -> None:
        """Send what the upstream answered on `assoc` back to its client."""
        recorder = self.shared.recorder
        for _ in range(64):  # a burst, then the others' turn
            try:
                data = assoc.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                continue  # refused (an ICMP error for an earlier datagram)
            assoc.last = time.monotonic()
            if assoc.client and not self.transport.is_closing():
                self.transport.sendto(data, assoc.client)
                if recorder is not None:
                    recorder.record(assoc.client, 0, len(data))

    def drop(self, assoc: Association) -> None:
        assert self.loop is not None
        self.loop.remove_reader(assoc.sock.fileno())
        assoc.sock.close()

    def schedule_sweep(self) -> None:
        assert self.loop is not None
        self.sweeper = self.loop.call_later(self.associations.idle / 4, self.sweep)

    def sweep(self) -> None:
        """Close the associations unused for the idle time."""
        self.sweeper = None
        for assoc in self.associations.expired(time.monotonic()):
            self.drop(assoc)
        if len(self.associations):
            self.schedule_sweep()

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: the client is gone

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for assoc in self.associations.take_all():
            self.drop(assoc)


def forward_protocol_factory(
    socktype: Literal["stream", "dgram"], options: HandlerOptions
) -> Callable[[], asyncio.BaseProtocol]:
    """Protocols forwarding to `options.upstream`; watched when the observer wants every
    chunk (-vv), as the other builtins' are."""
    if options.upstream is None:
        raise ValueError("forward needs HandlerOptions(upstream=...)")
    shared = Shared("forward", options)
    factory: Callable[[], asyncio.BaseProtocol]
    if socktype == "dgram":
        factory = functools.partial(
            ForwardDatagramProtocol, shared, options.upstream, options.idle_timeout
        )
    else:
        factory = functools.partial(ClientSide, shared, options.upstream)
    observer = shared.observer
    if observer is None or not observer.wants_data:
        return factory
    from ..watch_asyncio import watching_factory

    return watching_factory(factory, observer)
