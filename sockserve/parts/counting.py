"""ByteCountingPart: the byte counts of a user's handler, which does not report them itself."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..events import Events
from ..socketserver import TCPServer


def _nbytes(data: Any) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


class CountingSocket(socket.socket):
    """A connected socket that counts the bytes a user's handler receives and sends (where the
    kernel does not count them: unix sockets)."""

    received = 0
    sent = 0
    client: Any = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.received += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        self.received += n
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        n = super().send(data, flags)
        self.sent += n
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)
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

    What a counting socket wrapper would report, without a Python call per recv and send
    (see benchmarks/RESULTS.md).
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


class CountingDatagramSocket:
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


class ByteCountingPart(TCPServer):
    """Count the bytes a user's handler receives and sends, and record them with `monitor`
    when the request ends.

    Extends get_request (the request becomes a counted socket) and shutdown_request (the
    record). TCP connections are counted by the kernel where it keeps the counts (Linux's
    TCP_INFO); unix connections and datagrams by a wrapper.
    """

    monitor: Events | None = None
    #: TCP byte counts come from the kernel; None until the first connection tells.
    kernel_counts: bool | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept or receive; wrap what the handler gets in a counting socket."""
        request, client = super().get_request()
        if self.socket_type == socket.SOCK_STREAM:
            if self.kernel_counts is None:  # decided once, on the first connection
                type(self).kernel_counts = kernel_counts_work(request)
            wrapper = KernelCountedSocket if self.kernel_counts else CountingSocket
            request = wrapper(request.family, request.type, request.proto, fileno=request.detach())
            request.client = client
        else:
            data, sock = request
            request = (data, CountingDatagramSocket(sock, client))
        return request, client

    def shutdown_request(self, request: Any) -> None:
        """Record the request's byte counts, then shut it down and close it."""
        monitor = self.monitor
        if monitor is not None:
            if isinstance(request, KernelCountedSocket):
                request.snapshot()
                monitor.record(request.client, *(request.counts or (0, 0)))
            elif isinstance(request, CountingSocket):
                monitor.record(request.client, request.received, request.sent)
            elif isinstance(request, tuple) and isinstance(request[1], CountingDatagramSocket):
                monitor.record(request[1].client, len(request[0]), request[1].sent)
        super().shutdown_request(request)
