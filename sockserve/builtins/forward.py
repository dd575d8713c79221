"""forward: a transparent proxy, for stream servers in sync, thread and fork mode (the
datagram servers' is `forward_datagram`, event mode's `forward_asyncio`).

Streams (tcp, unix). Each connection gets its own upstream connection, and each direction is
relayed as it comes (`StreamRelay`). What it keeps in hand is bounded: one buffer (or one pipe)
per direction, and it reads a side only once the other took the last chunk, so a side that does
not read stops the other (back-pressure). An EOF is passed on as shutdown(SHUT_WR): the
connection ends once both directions have ended, as socat's two unidirectional flows. A reset
(or any other error) on one side becomes a reset on the other (SO_LINGER 0, then close). An
upstream that refuses or cannot be reached resets the client's connection; the run hears one
`upstream` event and one warning, and goes on. Bulk data moves with `os.splice` (socket → pipe
→ socket, never through Python; both directions on the handler's thread, with non-blocking
splices and poll) when nobody watches the client's socket and neither socket has a timeout;
otherwise with recv and sendall on the sockets the handler was given (a thread per direction: a
watch's stages may block), so a watch sees the client side. Faults on the upstream side
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
from ..socketserver import BaseRequestHandler
from ..upstreams import upstream_url
from ..watch import WatchedSocket
from .shared import HandlerOptions, Shared
from .stream import StreamBuiltin, grow_pipe

#: How long connecting to the upstream may take (streams, without --timeout).
CONNECT_TIMEOUT = 10.0
#: The buffer each direction copies through (when not spliced).
RELAY_BUFFER = 65536
#: The pipe each spliced direction moves its data through: at most this much in flight.
SPLICE_PIPE_SIZE = 1 << 18
#: SO_LINGER on, 0 seconds: close() sends a reset.
_LINGER_RESET = struct.pack("ii", 1, 0)
CAN_SPLICE = hasattr(os, "splice")
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


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
        """Both directions on this thread, the sockets non-blocking and polled (`Flow`: each
        direction copies small chunks and splices bulk). A direction holding data waits for
        its destination to take it before reading its source again."""
        import select

        socks = self.sockets
        fds = [sock.fileno() for sock in socks]
        for sock in socks:
            sock.setblocking(False)
        flows = (Flow(socks[0], socks[1]), Flow(socks[1], socks[0]))
        poller = select.poll()
        masks = [select.POLLIN, select.POLLIN]
        for fd in fds:
            poller.register(fd, select.POLLIN)
        try:
            while flows[0].relaying or flows[1].relaying:
                for fd, events in poller.poll():
                    side = 0 if fd == fds[0] else 1
                    source, sink = (
                        flows[side],
                        flows[1 - side],
                    )  # fd is the one's source, the other's sink
                    if events & ~select.POLLOUT and source.relaying and not source.held:
                        source.read()
                    if events & ~select.POLLIN and sink.relaying and sink.held:
                        sink.flush()
                for d, flow in enumerate(flows):
                    if flow.broken is not None:  # 0: its source, 1: its destination
                        self.failed[d if flow.broken == 0 else 1 - d] = True
                        return
                for i in (0, 1):  # what each socket waits for now
                    mask = 0
                    if flows[i].relaying and not flows[i].held:
                        mask |= select.POLLIN
                    if flows[1 - i].relaying and flows[1 - i].held:
                        mask |= select.POLLOUT
                    if mask != masks[i]:
                        if not mask:
                            poller.unregister(fds[i])  # nothing asked: no wake-up for a hang-up
                        elif masks[i]:
                            poller.modify(fds[i], mask)
                        else:
                            poller.register(fds[i], mask)
                        masks[i] = mask
        finally:
            for d, flow in enumerate(flows):
                self.moved[d] += flow.moved
                flow.close()

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


class Flow:
    """One direction of the polled relay, `src` to `dst` (both non-blocking): chunks are
    copied (recv, send) until a read fills the buffer; from then on they are spliced through a
    pipe (bulk never passes through Python). It reads only when nothing is held: the buffer or
    the pipe is all it keeps in hand. `broken`: 0 when `src` failed, 1 when `dst` did."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.relaying = True
        self.held = 0  # bytes read and not yet taken by dst
        self.moved = 0
        self.broken: int | None = None
        self.buffer = bytearray(RELAY_BUFFER)
        self.view = memoryview(self.buffer)
        self.start = 0  # where the held bytes begin in the buffer
        self.bulk = False  # the last read filled the buffer: splice from the next one
        self.pipe: tuple[int, int] | None = None
        self.size = RELAY_BUFFER  # how much one splice moves

    def read(self) -> None:
        """Read what `src` has (nothing held); pass an EOF on as a half-close."""
        try:
            if self.pipe is None and self.bulk:
                self.pipe = os.pipe()
                self.size = max(RELAY_BUFFER, grow_pipe(self.pipe[1], SPLICE_PIPE_SIZE))
            if self.pipe is not None:
                n = os.splice(self.src.fileno(), self.pipe[1], self.size, flags=SPLICE_FLAGS)
            else:
                n = self.src.recv_into(self.buffer)
                self.bulk = n == RELAY_BUFFER
        except BlockingIOError:
            return
        except OSError:
            self.broken = 0
            return
        if not n:
            self.relaying = False
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        self.held, self.start = n, 0
        self.flush()

    def flush(self) -> None:
        """Give `dst` what it takes of the held bytes."""
        try:
            if self.pipe is not None:
                n = os.splice(self.pipe[0], self.dst.fileno(), self.held, flags=SPLICE_FLAGS)
            else:
                n = self.dst.send(self.view[self.start : self.start + self.held])
        except BlockingIOError:
            return
        except OSError:
            self.broken = 1
            return
        self.held -= n
        self.start += n
        self.moved += n

    def close(self) -> None:
        self.view.release()
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)


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
        relay = StreamRelay(client, upstream, splice, idle)
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
