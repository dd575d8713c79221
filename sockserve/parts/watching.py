"""WatchPart: what passes through each request's socket, watched (-vv) or counted."""

from __future__ import annotations

import socket
import sys
from typing import Any

from .. import socketserver
from ..events import Events
from ..socketserver import TCPServer
from ..watch import Dresser, Watch, WatchedDatagramSocket, WatchedSocket

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


def kernel_counts_work(sock: socket.socket) -> bool:
    """True if the kernel keeps the byte counts `tcp_byte_counts` reads, for this socket."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        return len(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_END)) >= _TCPI_END
    except OSError:
        return False


def tcp_byte_counts(sock: socket.socket) -> tuple[int, int]:
    """(received, sent) on a TCP connection, as the kernel counted them: bytes that arrived
    (not the peer's FIN) less those still unread, and bytes sent (retransmissions once) plus
    those still queued.

    What a counting watch (`sockserve.watch`) would report, without a Python call per recv
    and send (see benchmarks/RESULTS.md).
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
    """A user handler's TCP connection, counted by the kernel (`tcp_byte_counts`): recv and
    send are socket.socket's own. The counts are read when the server ends the request, or
    when the handler closes or detaches the socket first."""

    client: Any = None
    counts: tuple[int, int] | None = None

    @classmethod
    def adopt(cls, sock: socket.socket, client: Any) -> KernelCountedSocket:
        """Move `sock`'s descriptor into a new kernel-counted socket (`sock` is detached)."""
        counted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        counted.client = client
        return counted

    def close(self) -> None:
        self.snapshot()
        super().close()

    def detach(self) -> int:
        self.snapshot()
        return super().detach()

    def snapshot(self) -> None:
        """Read the kernel's counts, once, while the socket is open."""
        if self.counts is None and self.fileno() >= 0:
            try:
                self.counts = tcp_byte_counts(self)
            except OSError:
                self.counts = (0, 0)


class WatchPart(TCPServer):
    """Hand each request's socket to the handler through a `sockserve.watch.Watch`, and
    record a user's handler's byte counts with `monitor` when the request ends.

    With `watch_data` (-vv) every request is watched and each chunk reported, whatever the
    handler. Otherwise the part counts for a user's handler, which does not count itself:
    TCP connections by the kernel where it keeps the counts (Linux's TCP_INFO: recv and send
    stay socket.socket's own), unix connections and datagrams through a watch that only
    counts. A datagram received is passed through the watch here.

    Extends get_request (the request becomes a watched socket), shutdown_request (the
    record, when `record_counts`: the builtins record their own) and close_request (the
    watch is closed: `Watch.close`).
    """

    monitor: Events | None = None
    #: Report every chunk of every request (-vv).
    watch_data = False
    #: Record each request's byte counts when it ends (a user's handler; compose turns it
    #: off for the builtins).
    record_counts = True
    #: Add stages to each request's watch (faults, transcripts): every request is watched.
    watch_dressers: tuple[Dresser, ...] = ()
    #: TCP byte counts come from the kernel; None until the first connection tells.
    kernel_counts: bool | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept or receive; hand the handler a watched (or kernel-counted) socket."""
        request: Any
        request, client = super().get_request()  # (data, socket) on datagram servers
        reports = self.watch_data
        dressers = self.watch_dressers
        if self.socket_type == socket.SOCK_STREAM:
            if hasattr(request, "established"):  # TLS (`parts.tls`): its plaintext is watched
                request.watch = Watch(self.monitor, client, reports, dressers=dressers)
                return request, client
            watch = None
            if reports or dressers:  # a watch no dresser dressed (--fault-rate) costs nothing
                watch = Watch(self.monitor, client, reports, dressers=dressers)
                if reports or watch.dressed:
                    return WatchedSocket.adopt(request, watch), client
                if not self.record_counts:
                    return request, client  # a builtin: it counts for itself
            if self.kernel_counts is None:  # decided once, on the first connection
                type(self).kernel_counts = kernel_counts_work(request)
            if self.kernel_counts:
                return KernelCountedSocket.adopt(request, client), client
            watch = watch or Watch(self.monitor, client)
            return WatchedSocket.adopt(request, watch), client
        data, sock = request
        watch = Watch(self.monitor, client, reports, shows_empty_out=False, dressers=dressers)
        watch.incoming(data)
        return (data, WatchedDatagramSocket(sock, watch)), client

    def shutdown_request(self, request: Any) -> None:
        """Record the request's byte counts, then shut it down and close it (in fork
        mode, where the parent closes its copy of each request, close the watch here)."""
        if _FORKING is not None and isinstance(self, _FORKING):
            _close_watch(request)
        monitor = self.monitor
        if monitor is not None and self.record_counts:
            if isinstance(request, KernelCountedSocket):
                request.snapshot()
                monitor.record(request.client, *(request.counts or (0, 0)))
            elif isinstance(request, WatchedSocket) or hasattr(request, "established"):
                watch = request.watch  # a WatchedSocket's, or a TLS connection's
                monitor.record(watch.client, watch.received, watch.sent)
            elif isinstance(request, tuple) and isinstance(request[1], WatchedDatagramSocket):
                watch = request[1].watch
                monitor.record(watch.client, watch.received, watch.sent)
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        """Close the request's watch (but in a fork mode server: see shutdown_request),
        then the request."""
        if _FORKING is None or not isinstance(self, _FORKING):
            _close_watch(request)
        super().close_request(request)


#: A fork mode server's parent closes its copy of each request: the child ends the watch.
_FORKING: Any = getattr(socketserver, "ForkingMixIn", None)


def _close_watch(request: Any) -> None:
    """The request ended: close its watch (`Watch.close`), if it has one."""
    if isinstance(request, WatchedSocket):
        request.watch.close()
    elif isinstance(request, tuple) and isinstance(request[1], WatchedDatagramSocket):
        request[1].watch.close()
