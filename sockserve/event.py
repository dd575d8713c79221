"""The event concurrency mode: every connection in one thread, on asyncio (uvloop when installed).

With ``--concurrency event`` a user handler is an asyncio protocol class (README, "Event mode:
asyncio protocols"): an ``asyncio.Protocol`` or ``asyncio.BufferedProtocol`` made per stream
connection by calling the class with no arguments, or one ``asyncio.DatagramProtocol`` for a
datagram socket. Its callbacks run in the loop and must never block. A callback that raises
(SystemExit and KeyboardInterrupt too: a handler cannot stop the server) is reported with its
traceback like a failing request handler; a stream connection is then aborted, a datagram
socket keeps serving. A user protocol is watched (`sockserve.watch_asyncio`): what it
receives and writes is counted for the summary and ``-v`` lines, and shown with ``-vv`` as for
any other handler.

EventServer runs such protocols (or the builtins' protocol factories) on a socket the factory
already bound; see its docstring for the stop sequence the lifecycle drives. A UDP builtin
that needs nothing of a transport is answered from a reader callback instead
(`sockserve.lean_datagrams`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .arrival import arrival_asked
from .arrival_asyncio import ArrivalDatagramTransport
from .errors import HANDLER_ERRORS
from .events import Client, Events, NullEvents
from .lean_datagrams import LeanDatagramEndpoint
from .watch import Dresser, Watch
from .watch_asyncio import watched

if TYPE_CHECKING:
    from .access import AccessRules  # built by config when --allow/--deny... is given

logger = logging.getLogger(__name__)  # routed to the reporter (`logs.setup_logging`)

#: How long an abort waits for the loop to report every aborted connection lost.
_ABORT_WAIT = 2.0
#: The client shown for an error the loop reports without a connection (a user's timer, a task).
_NO_CLIENT = "(event loop)"


def default_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when uvloop is importable, else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class EventServer:
    """Serve a bound socket with asyncio protocols, every connection in one thread.

    Args:
        sock: the bound socket (listening, for streams). The server owns it once
            `serve_forever` runs, and closes it when it stops.
        protocol_factory: called with no arguments for each connection (once for datagrams).
        idle_timeout: close a stream connection that neither received nor sent anything for
            this many seconds, reported to `events.handler_error` as a TimeoutError.
        events: hears `connected` for each stream connection, `handler_error` for exceptions
            of protocol callbacks, and, when the server counts bytes, `record` for each ended
            connection and each datagram. None: errors are logged, the rest goes nowhere.
        on_stop: called with the reason when the server stops by itself (`request_limit`).
        count_bytes: put each protocol behind a watch (`sockserve.watch_asyncio`) that counts
            what it receives and writes, reported to `events.record`, and every chunk to
            `events.data` while `events.wants_data` (-vv). False for protocols that report
            their own counts (the builtins, watched by their factory under -vv): they run
            unwrapped, and when `idle_timeout` is set their ``received`` and ``sent``
            attributes tell whether a connection is busy.
        backlog: the listen queue length (asyncio listens again on the socket).
        banner: written to each stream connection as it is made, before the protocol's
            connection_made (--banner): counted and shown (-vv) as the connection's own.
        loop_factory: makes the event loop; default: `default_loop_factory()`.
        watch_dressers: add stages (faults, transcripts) to each protocol's watch; with any,
            every protocol is watched (see `sockserve.watch.Dresser`).
        access: the access rules: a peer they refuse is closed at once (its datagram
            dropped) and told to `events.refused`; None: every peer is served.
        tls: the run's `sockserve.tls.TlsSetup`: each stream connection, once accepted (and
            `connected`), runs its TLS handshake in a task (`sockserve.tls_asyncio`); the
            protocol hears of the connection only once it is done.

    For the caller, in this order: `serve_forever()` until `request_stop()` (or the
    `request_limit`) stops it and closes the listening socket; then, optionally, `drain(timeout)`
    to let open connections end (a `request_stop()` meanwhile cuts it short); then
    `close_connections(0)` to abort what is left and close the loop. `request_stop()` is safe
    from a signal handler: it only wakes the loop.
    """

    #: Stop once this many connections (streams) or datagrams have started; None: never.
    request_limit: int | None = None

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        idle_timeout: float | None = None,
        events: Events | None = None,
        on_stop: Callable[[str], None] | None = None,
        count_bytes: bool = True,
        backlog: int = 128,
        banner: bytes = b"",
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        watch_dressers: Sequence[Dresser] = (),
        access: AccessRules | None = None,
        tls: Any = None,
    ) -> None:
        self.socket = sock
        self.protocol_factory = protocol_factory
        self.idle_timeout = idle_timeout
        self.events: Events = events if events is not None else NullEvents()
        self._log_errors = events is None
        self.on_stop = on_stop
        self.count_bytes = count_bytes
        self.backlog = backlog
        self.banner = banner
        self.loop_factory = loop_factory or default_loop_factory()
        self.watch_dressers = tuple(watch_dressers)
        self.access = access if access else None
        self.tls = tls
        self.stream = sock.type == socket.SOCK_STREAM
        # A connection goes straight to its protocol unless faults or TLS come first.
        self._holds_back = bool(self.watch_dressers) or tls is not None
        self._plain = not count_bytes and not self.watch_dressers  # `_make`: no watch
        # Nothing comes between the accept and the protocol: a protocol that tells the server
        # of its connection itself (`opened`) is not hooked.
        self._told = self.stream and not (
            self._holds_back or access or banner or idle_timeout is not None
        )
        self._client_ids = getattr(self.events, "client_ids", None)  # the run's monitor's
        self.requests_started = 0
        self.stop_reason: str | None = None
        self._conns: set[Any] = set()  # each a `_Served`, or a protocol that tells (`opened`)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None  # asyncio.Server (streams)
        self._endpoint: Any = None  # the datagram transport, until it is lost
        self._stop_requested = False
        self._stop_requests = 0  # request_stop calls so far
        self._drain_since = 0  # the count when the drain began: a later one interrupts it
        self._interrupted = False
        self._refusing = False  # no new connections or datagrams: stopped or limit reached
        self._serving = False  # serve_forever's run_forever is the one running
        self._draining = False
        self._sweeper: asyncio.TimerHandle | None = None

    # -- for the caller ----------------------------------------------------------------------

    @property
    def active_connections(self) -> int:
        """Stream connections still open."""
        return len(self._conns)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until `request_stop()`; the listening socket is closed on return.

        `poll_interval` is accepted for the framework's signature and unused: a stop request
        wakes the loop at once.
        """
        if self._loop is None:
            self._start()
        loop = self._loop
        assert loop is not None
        if loop.is_closed():
            raise RuntimeError("this EventServer has been closed")
        self._serving = True
        try:
            if self._stop_requested:  # before, or while the listener was set up
                self._stop_now()
            loop.run_forever()
        finally:
            self._serving = False

    def request_stop(self, reason: str | None = None) -> None:
        """Make `serve_forever` return soon and stop accepting.

        Safe from a signal handler (it only wakes the loop), another thread, or a protocol
        callback. During `drain`, it makes the drain return.
        """
        if self.stop_reason is None and reason is not None:
            self.stop_reason = reason
        self._stop_requested = True
        self._stop_requests += 1
        self._refusing = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
                loop.call_soon_threadsafe(self._stop_now)

    def drain(self, timeout: float | None) -> bool:
        """Let the open connections end by themselves; True when none is left.

        Stops accepting; a datagram socket first sends what it has buffered, then closes.
        Returns False after `timeout` seconds (None: no limit), or as soon as `request_stop()`
        is called meanwhile. The loop stays open: `close_connections(0)` comes next.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return True
        self._refusing = True
        self._drain_since = self._stop_requests
        self._interrupted = False
        if self._server is not None:
            self._server.close()
        if self._endpoint is not None:
            self._endpoint.close()
        self._run_until_closed(None if timeout is None else loop.time() + timeout)
        return not self._conns and self._endpoint is None

    def close_connections(self, timeout: float | None) -> None:
        """End the open connections, then close the loop.

        None waits until every connection has ended by itself (see `drain`); 0 aborts them at
        once; a positive number waits that long, then aborts. Returns at once when the loop is
        already closed.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._refusing = True
        if self._server is not None:
            self._server.close()
        if timeout != 0:
            self.drain(timeout)
        if self._conns or self._endpoint is not None:
            for conn in list(self._conns):
                conn.transport.abort()
            if self._endpoint is not None:
                self._endpoint.abort()
            self._interrupted = False
            self._run_until_closed(loop.time() + _ABORT_WAIT)
        self._close_loop()

    # -- the loop ------------------------------------------------------------------------------

    def _start(self) -> None:
        loop = self.loop_factory()
        self._loop = loop
        loop.set_exception_handler(self._on_loop_error)
        try:
            loop.run_until_complete(self._listen(loop))
        except BaseException:
            self._close_loop()
            raise

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = self.socket
        if not self.stream:
            if arrival_asked(sock):  # on 0.0.0.0 or [::]: replies from the arrival address
                self._endpoint = ArrivalDatagramTransport(loop, sock, self._new_endpoint())
                return
            protocol = self._make()
            lean = getattr(protocol, "lean_datagrams", None) if self._plain else None
            answer = lean() if lean is not None else None
            if answer is not None and LeanDatagramEndpoint.fits(sock):  # a builtin on UDP
                self._endpoint = LeanDatagramEndpoint(
                    loop, sock, protocol, answer, self._datagram_admission(), self._endpoint_lost
                )
                return
            endpoint = functools.partial(self._serve_endpoint, protocol)
            transport, _ = await loop.create_datagram_endpoint(endpoint, sock=sock)
            self._endpoint = transport
            return
        factory = self._new_connection
        if sock.family == getattr(socket, "AF_UNIX", None):
            try:  # the runner removes the socket file itself, once, after every worker
                coro = loop.create_unix_server(  # type: ignore[call-arg, unused-ignore]  # 3.13+ arg
                    factory, sock=sock, backlog=self.backlog, cleanup_socket=False
                )
            except TypeError:  # before Python 3.13 (and uvloop 0.21) there was no cleanup
                coro = loop.create_unix_server(factory, sock=sock, backlog=self.backlog)
            self._server = await coro
        else:
            self._server = await loop.create_server(factory, sock=sock, backlog=self.backlog)

    def _new_connection(self) -> Any:
        protocol: Any
        try:
            protocol = self.protocol_factory() if self._plain else self._make()
        except HANDLER_ERRORS:  # reported: the loop must not see it (uvloop's listener would
            return _Unserved()  # stop accepting, a SystemExit would stop the loop)
        if self._told and hasattr(type(protocol), "event_server"):
            if self._refusing:  # stopped, or the request limit reached
                return _Unserved()
            # Counted now: the next accepted in this batch sees the limit. `_start_request`,
            # without its frame when there is no limit (once per connection).
            if self.request_limit is None:
                self.requests_started += 1
            else:
                self._start_request()
            protocol.event_server = self
            return protocol
        return _Served(self, protocol).protocol

    def opened(self, conn: Any, transport: Any, peer: Any = None) -> Any:
        """Register an open connection and tell `connected`; returns its client for events
        (`peer`, the peer's address, is looked up when not given).

        `_Served` calls it for a hooked protocol. A protocol that has an `event_server`
        attribute, set by the server before its connection_made (the builtins'
        `EventStream`), calls it itself from its connection_made, and `closed` from its
        connection_lost, in place of the hooks `_Served` puts on any other protocol: it costs
        less per connection (benchmarks/RESULTS.md). The server sets it only when nothing comes
        between the accept and the protocol (faults, TLS, access rules, a banner, an idle
        timeout).
        """
        if peer is None:
            peer = transport.get_extra_info("peername")
        self._conns.add(conn)
        ids = self._client_ids
        client = peer if ids is None else Client(peer, ids.next())
        self.events.connected(client)
        return client

    def closed(self, protocol: Any) -> None:
        """The end of a connection registered by `opened`."""
        self._conns.discard(protocol)
        if self._draining:
            self._maybe_drained()

    def _new_endpoint(self) -> Any:
        return self._serve_endpoint(self._make())

    def _serve_endpoint(self, protocol: Any) -> Any:
        return _ServedEndpoint(self, protocol).protocol

    def _datagram_admission(self) -> Callable[[Any], bool] | None:
        """`_admit_datagram` when datagrams are counted or checked (the request limit, the
        access rules); None when every datagram is served as it comes."""
        if self.request_limit is None and self.access is None:
            return None
        return self._admit_datagram

    def _admit_datagram(self, addr: Any) -> bool:
        """Count a datagram from `addr` as a request; False: drop it (stopped, the request
        limit reached, or refused by the access rules)."""
        if self._refusing:
            return False  # the rest is dropped, as sync mode never reads it
        if not self._admits(addr):
            return False
        self._start_request()
        return True

    def _make(self) -> Any:
        """A new protocol; when the server counts, behind a watch (`sockserve.watch_asyncio`)."""
        try:
            protocol = self.protocol_factory()
        except HANDLER_ERRORS as exc:
            self._report(_NO_CLIENT, exc)
            raise
        if self._plain:
            return protocol
        events = self.events
        # A protocol that counts for itself (a builtin) is only dressed here: under -vv
        # its factory watches it already.
        reports = events.wants_data and self.count_bytes
        watch = Watch(events, None, reports=reports, dressers=self.watch_dressers)
        if not self.count_bytes and not watch.dressed:  # no dresser chose it (--fault-rate)
            return protocol
        # A builtin records its own datagrams: only a counted protocol is recorded here.
        return watched(protocol, watch, self._report, records=self.count_bytes)

    def _stop_now(self) -> None:
        self._refusing = True
        if self._server is not None:
            self._server.close()
        if self._endpoint is not None:
            self._endpoint.close()
        if self._loop is None:
            return
        if self._serving:
            self._loop.stop()
        elif self._draining and self._stop_requests > self._drain_since:
            self._interrupted = True
            self._loop.stop()

    def _run_until_closed(self, deadline: float | None) -> None:
        """Run the loop until no connection (or datagram socket) is left, or `deadline`."""
        loop = self._loop
        assert loop is not None
        self._draining = True
        try:
            while (self._conns or self._endpoint is not None) and not self._interrupted:
                timer = None
                if deadline is not None:
                    if loop.time() >= deadline:
                        break
                    timer = loop.call_at(deadline, loop.stop)
                try:
                    loop.run_forever()
                finally:
                    if timer is not None:
                        timer.cancel()
        finally:
            self._draining = False

    def _maybe_drained(self) -> None:
        if self._draining and not self._conns and self._endpoint is None:
            assert self._loop is not None
            self._loop.stop()

    def _close_loop(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        if self.socket.fileno() != -1 and self._server is None and self._endpoint is None:
            self.socket.close()  # never handed to the loop
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            for dresser in self.watch_dressers:  # those that keep files for the run (--record)
                close = getattr(dresser, "close", None)
                if close is not None:
                    close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: report callback errors (asyncio re-raises the rest)."""
        exc = context.get("exception")
        protocol = context.get("protocol")
        transport = context.get("transport")
        if exc is None or (protocol is None and transport is None and isinstance(exc, OSError)):
            message = context.get("message", "event loop error")
            logger.warning("%s%s", message, f": {exc}" if exc is not None else "")
            return
        client = getattr(protocol, "client", None)
        if client is None and transport is not None:
            with contextlib.suppress(Exception):
                client = transport.get_extra_info("peername")
        self._report(client, exc)

    def _report(self, client: Any, exc: BaseException) -> None:
        """Tell of a protocol's (or the loop's) exception; a None client is the loop's."""
        if client is None:
            client = _NO_CLIENT
        if self._log_errors:
            logger.error("error handling %s", client, exc_info=exc)
        else:
            self.events.handler_error(client, exc)

    # -- connections ---------------------------------------------------------------------------

    def _watch_idle(self, conn: _Served) -> None:
        """Start timing a new connection's silence (`idle_timeout`)."""
        conn.mark = conn.activity()
        assert self._loop is not None  # connections come from the running loop
        conn.since = self._loop.time()
        if self._sweeper is None:
            self._schedule_sweep()

    def _admits(self, client: Any, transport: Any = None) -> bool:
        """True if the access rules serve `client` (a stream's `transport` gives its socket,
        for a unix peer's credentials); else tell of the refusal."""
        access = self.access
        if access is None:
            return True
        reason = access.decide(client)
        if reason is None and transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                reason = access.decide_credentials(sock)
        if reason is None:
            return True
        self.events.refused(client, reason)
        return False

    def _closed(self, conn: _Served) -> None:
        self._conns.discard(conn)
        if conn.idle:
            timeout = self.idle_timeout
            self._report(conn.client, TimeoutError(f"no traffic for {timeout:g}s"))
        if self.count_bytes:  # a watched protocol (`_make`): the server records its counts
            sent = conn.protocol.sent + conn.banner_sent
            self.events.record(conn.client, conn.protocol.received, sent)
        if self._draining:
            self._maybe_drained()

    def _start_request(self) -> None:
        """Count a request (a connection or a datagram) as started; stop at the limit."""
        self.requests_started += 1
        limit = self.request_limit
        if limit is not None and self.requests_started >= limit:
            self._refusing = True
            reason = "request limit reached"
            if self.on_stop is not None:
                self.on_stop(reason)
            self.request_stop(reason)

    def _endpoint_lost(self) -> None:
        self._endpoint = None
        self._maybe_drained()

    def _schedule_sweep(self) -> None:
        assert self.idle_timeout is not None and self._loop is not None
        every = max(self.idle_timeout / 4, 0.005)
        self._sweeper = self._loop.call_later(every, self._sweep)

    def _sweep(self) -> None:
        """Close the connections that showed no traffic for `idle_timeout` seconds."""
        self._sweeper = None
        loop = self._loop
        timeout = self.idle_timeout
        assert loop is not None and timeout is not None
        now = loop.time()
        for conn in list(self._conns):
            mark = conn.activity()
            if mark != conn.mark:
                conn.mark, conn.since = mark, now
            elif now - conn.since >= timeout and not conn.idle:
                conn.idle = True
                transport = conn.transport
                if transport.get_write_buffer_size():
                    transport.abort()
                else:
                    transport.close()
        if self._conns:
            self._schedule_sweep()


class _Served:
    """One stream connection: the protocol's connection_made and connection_lost are hooked
    on the instance, so data goes straight from the transport to the protocol; each hook is
    removed when called, and the protocol's own method called in its place."""

    transport: Any = None
    client: Any = None
    refused = False
    handshake: Any = None  # the TLS handshake task (`sockserve.tls_asyncio`), while it runs
    # The protocol has heard of the connection (False while faults hold it back, --fail-first
    # or --delay-accept, and during a TLS handshake).
    begun = True
    ended = False
    idle = False
    mark: Any = None
    since = 0.0
    banner_sent = 0

    def __init__(self, server: EventServer, protocol: Any) -> None:
        self.server = server
        self.protocol = protocol
        protocol.connection_made = self.connection_made
        protocol.connection_lost = self.connection_lost

    def connection_made(self, transport: Any) -> None:
        """Register the connection, or refuse it (stopping, the limit reached, the access
        rules); then begin it, unless faults or a TLS handshake come first."""
        del self.protocol.connection_made  # unhooked: the protocol's own from now on
        self.transport = transport
        server = self.server
        self.client = peer = transport.get_extra_info("peername")
        if server._refusing or (server.access is not None and not server._admits(peer, transport)):
            self.refused = True
            transport.abort()
            return
        self.client = server.opened(self, transport, peer)
        if server.idle_timeout is not None:
            server._watch_idle(self)
        server._start_request()
        if not server._holds_back:
            self.begin(transport)
            return
        watch = getattr(self.protocol, "watch", None)  # a watched protocol's
        if watch is not None and server.watch_dressers:  # faults: --fail-first...
            from .faults import admit_connection  # faults and --record only

            self.begun = False
            admit_connection(watch, transport, self.client, self.admitted)
            return
        self.admitted(transport)

    def admitted(self, transport: Any) -> None:
        """The connection passed its faults: the TLS handshake (a task), or begin at once."""
        if self.server.tls is not None:
            from .tls_asyncio import start_handshake  # ssl: only for a run with TLS

            self.begun = False
            start_handshake(self, transport)
            return
        self.begin(transport)

    def begin(self, transport: Any) -> None:
        """Greet (--banner), then tell the protocol of the connection on `transport`."""
        self.transport = transport
        self.begun = True
        protocol = self.protocol
        if getattr(protocol, "takes_client", False):  # it reports as the server does
            protocol.client = self.client
        if self.server.banner:
            self.greet(transport)
        protocol.connection_made(transport)

    def greet(self, transport: Any) -> None:
        """Write the banner before the protocol hears of the connection; count it as sent
        (the builtins count their own: theirs `sent`, a watched protocol's the server's).

        A dressed protocol's banner goes through its watch's "out" chain, as any chunk it
        writes (a transcript records it), and that watch counts it.
        """
        server = self.server
        banner = server.banner
        watch = getattr(self.protocol, "watch", None) if server.watch_dressers else None
        if watch is None:
            transport.write(banner)
        else:

            def sink(chunk: memoryview) -> int:
                transport.write(chunk)
                return len(chunk)

            watch.client = self.client  # before the protocol's connection_made sets it
            watch.outbound.pass_on(memoryview(banner), sink)
        events = server.events
        if events.wants_data and (watch is None or not watch.reports):
            events.data(self.client, "out", banner)
        if server.count_bytes:
            if watch is None:
                self.banner_sent = len(banner)
            return
        builtin = self.protocol
        while hasattr(builtin, "watch") and hasattr(builtin, "protocol"):  # watched: -vv, dressed
            builtin = builtin.protocol
        with contextlib.suppress(AttributeError):
            builtin.sent += len(banner)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:  # told already: a TLS handshake's end, then the loop
            return
        self.ended = True
        protocol = self.protocol
        del protocol.connection_lost  # unhooked: nothing on the protocol points back here
        if self.refused:
            return
        if not self.begun:  # held back (faults, a TLS handshake): the protocol never knew
            self.server._closed(self)
            return
        try:
            protocol.connection_lost(exc)
        finally:
            self.server._closed(self)

    def activity(self) -> tuple[int, int]:
        """What changes while the connection is busy: byte counts, the write buffer."""
        protocol = self.protocol
        moved = getattr(protocol, "received", 0) + getattr(protocol, "sent", 0)
        return moved, self.transport.get_write_buffer_size()


class _Unserved(asyncio.Protocol):
    """A stream connection whose protocol could not be made: aborted at once."""

    def connection_made(self, transport: Any) -> None:
        transport.abort()


class _ServedEndpoint:
    """The datagram socket's protocol, hooked on the instance as `_Served` is:
    connection_lost always, datagram_received to count requests (a watched protocol, or
    under a request limit)."""

    def __init__(self, server: EventServer, protocol: Any) -> None:
        self.server = server
        self.protocol = protocol
        self.lost = protocol.connection_lost
        protocol.connection_lost = self.connection_lost
        if server.request_limit is not None or server.count_bytes or server.access is not None:
            self.received = protocol.datagram_received
            protocol.datagram_received = self.datagram_received

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.server._admit_datagram(addr):
            self.received(data, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        attrs = vars(self.protocol)
        attrs.pop("connection_lost", None)
        attrs.pop("datagram_received", None)
        try:
            self.lost(exc)
        finally:
            self.server._endpoint_lost()
