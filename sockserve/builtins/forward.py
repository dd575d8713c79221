"""forward: a transparent proxy, for stream servers in sync, thread and fork mode (the
datagram servers' is `forward_datagram`, event mode's `forward_asyncio`).

Streams (tcp, unix). Each connection gets its own upstream connection, and each direction is
relayed as it comes (`StreamRelay`). What it keeps in hand is bounded: one buffer (or one pipe)
per direction, and it reads a side only once the other took the last chunk, so a side that does
not read stops the other (back-pressure). An EOF is passed on as shutdown(SHUT_WR): the
connection ends once both directions have ended, as socat's two unidirectional flows. A reset
(or any other error) on one side becomes a reset on the other (SO_LINGER 0, then close). An
upstream that refuses or cannot be reached resets the client's connection; the run hears one
`upstream` event and one warning, and goes on. When nobody watches the client's socket and
neither socket has a timeout, both directions are polled (`forward_loop`: small chunks copied,
bulk spliced socket → pipe → socket, never through Python), on the handler's thread, or in
thread mode on one loop thread all connections share; otherwise with recv and sendall on the
sockets the handler was given (a thread per direction: a watch's stages may block), so a
watch sees the client side. Faults on the upstream side
(--faults-to, `sockserve.relay_faults`) put the upstream socket behind a watch of its own;
a side a fault reset is passed on as a reset, one it closed as an orderly end. TLS on either
side (`--tls`, `--forward-tls`) is copied, through `sockserve.tls_duplex`: one SSL object is
never used by both threads at once; a TLS handshake with the upstream that fails is an
upstream that cannot be reached.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any, ClassVar

from ..addresses import Address
from ..events import Events
from ..fault_stages import Connection
from ..faults import attach_socket
from ..relay_faults import side_connection, upstream_watch
from ..socketserver import BaseRequestHandler, ThreadingMixIn
from ..upstreams import upstream_url
from ..watch import WatchedSocket
from .shared import HandlerOptions, Shared
from .stream import StreamBuiltin

#: How long connecting to the upstream may take (streams, without --timeout).
CONNECT_TIMEOUT = 10.0
#: The buffer each direction copies through (when not spliced).
RELAY_BUFFER = 65536
#: The pipe each spliced direction moves its data through: at most this much in flight.
SPLICE_PIPE_SIZE = 1 << 18
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
    sockets' timeout, if any; the relay ends (`timed_out`: both closed in order) once neither
    direction moved for that long. After `run`, `reset_client` tells the client must be reset
    (the upstream failed); the upstream is closed by `run`, reset when the client failed.
    `faults`: each side's fault Connection (--faults-to), if any: a side one reset counts
    as failed (the other is reset), in the copied relay.
    """

    def __init__(
        self,
        client: Any,
        upstream: socket.socket,
        splice: bool,
        idle: float | None,
        shared: bool = False,
    ) -> None:
        self.sockets = (client, upstream)
        self.splice = splice
        self.shared = shared
        self.idle = idle
        self.moved = [0, 0]
        self.failed = [False, False]  # the side reset, went away or failed
        self.timed_out = False
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.faults: tuple[Connection | None, Connection | None] = (None, None)

    @property
    def reset_client(self) -> bool:
        """True when the upstream failed: the client's connection is to be reset."""
        return self.failed[1]

    def run(self) -> None:
        """Relay both ways (spliced: on this thread; copied: on this thread and one more);
        close (or reset) the upstream."""
        try:
            if self.splice:
                self.run_spliced()
            else:
                back = threading.Thread(target=self.direction, args=(1,), name="forward (up)")
                back.start()
                try:
                    self.direction(0)
                finally:
                    back.join()
        finally:
            upstream = self.sockets[1]
            if self.failed[0]:
                reset_on_close(upstream)
            upstream.close()

    def run_spliced(self) -> None:
        """Both directions polled (`forward_loop`): on the loop the server's threads share
        (`shared`), else on this thread."""
        from .forward_loop import Relay, relay_here, relay_shared

        relay = Relay(*self.sockets)
        try:
            if self.shared:
                relay_shared(relay)
            else:
                relay_here(relay)
        finally:
            self.moved[0], self.moved[1] = relay.moved
            self.failed[:] = relay.failed

    def direction(self, index: int) -> None:
        """Copy from side `index` to the other; pass its EOF on as a half-close."""
        dst = self.sockets[1 - index]
        try:
            ended = self.copy(index)
        except BaseException:
            self.fail(index)
            raise
        conn = self.faults[index]
        if conn is not None and conn.ended == "reset":  # a fault reset the source
            self.fail(index)
        elif ended:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

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
        """Neither direction moved for `idle`: stop both (each is closed, as event mode's
        idle sweep closes them)."""
        self.timed_out = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class ForwardStream(StreamBuiltin):
    """forward on a stream server: connect the upstream, relay both ways (`StreamRelay`)."""

    upstream: ClassVar[Address]
    upstream_tls: ClassVar[Any] = None

    def serve(self, sock: socket.socket) -> None:
        observer = self.shared.observer
        url = upstream_url(self.upstream, "stream")
        idle = sock.gettimeout()
        secure = self.upstream_tls  # --forward-tls: a `sockserve.upstream_tls.UpstreamTls`
        try:
            upstream: Any = open_upstream(self.upstream, "stream", idle or CONNECT_TIMEOUT)
            if secure is not None:
                upstream = secure.secure(upstream, idle or CONNECT_TIMEOUT)
        except OSError as exc:
            tell_failed(
                observer, self.client_address, url, describe(exc), "reset the client's connection"
            )
            reset_on_close(sock)
            sock.close()  # now, before the server's shutdown could send an orderly FIN
            return
        upstream.settimeout(idle)
        if observer is not None:
            extra = {} if secure is None else {"tls": secure.details(upstream)}
            observer.upstream(self.client_address, url, None, **extra)
        watch = getattr(sock, "watch", None)
        faulted = upstream_watch(watch)  # --faults-to upstream or both: its own watch
        if faulted is not None:
            if secure is not None:  # the plaintext, through the TLS connection's watch
                upstream.watch = faulted[0]
                attach_socket(faulted[0], upstream.sock)
            else:
                upstream = WatchedSocket.adopt(upstream, faulted[0])
                attach_socket(faulted[0], upstream)
        splice = CAN_SPLICE and not self.watched and idle is None and secure is None
        client: Any = sock
        if getattr(sock, "encrypted", False):  # --tls: its SSL object, safe for two threads
            from ..tls_duplex import SocketTls

            client = SocketTls(sock)
        shared = splice and isinstance(self.server, ThreadingMixIn)  # one loop for all threads
        relay = StreamRelay(client, upstream, splice, idle, shared)
        relay.faults = (side_connection(watch), None if faulted is None else faulted[1])
        try:
            relay.run()
        finally:
            self.received += relay.moved[0]
            self.sent += relay.moved[1]
            if faulted is not None:
                faulted[0].close()
            if client is not sock:
                client.release()
        if relay.reset_client:
            reset_on_close(sock)
            sock.close()
            if getattr(upstream, "alert", None):  # after a TLS 1.3 handshake: a refusal
                tell_failed(observer, self.client_address, url, upstream.alert, "reset it")
        if relay.timed_out:
            raise TimeoutError(f"no traffic either way for {idle:g}s")


def tell_failed(observer: Events | None, client: Any, url: str, reason: str, then: str) -> None:
    """The upstream could not be reached for `client`: an `upstream` event with the reason,
    and a warning that says what became of the client's traffic (`then`)."""
    if observer is not None:
        observer.upstream(client, url, reason)
        observer.warning(f"upstream {url} failed for {client_text(client)}: {reason}; {then}")


def client_text(client: Any) -> str:
    from ..console import format_client  # the warning's text only

    return format_client(client)


def upstream_of(options: HandlerOptions) -> Address:
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
        "upstream": upstream_of(options),
        "upstream_tls": options.upstream_tls,
        "__module__": __name__,
    }
    return type("ForwardStreamHandler", (ForwardStream,), attrs)
