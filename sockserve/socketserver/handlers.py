"""Request handler base classes: one instance per request, setup → handle → finish."""

from __future__ import annotations

import io
import socket
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .servers import BaseServer, _RequestType, _RetAddress

__all__ = ["BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler"]


class BaseRequestHandler:
    """Base class for request handlers; a new instance serves each request.

    The constructor stores `request`, `client_address` and `server`, then calls `setup()`,
    `handle()` and `finish()`. `finish()` runs even when `handle()` raises, but not when
    `setup()` raises. Override `handle()`; extend `setup()`/`finish()` with super() calls.
    """

    request: Any
    client_address: _RetAddress
    server: BaseServer

    def __init__(
        self, request: _RequestType, client_address: _RetAddress, server: BaseServer
    ) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Prepare for `handle()`; does nothing here."""

    def handle(self) -> None:
        """Serve the request; does nothing here."""

    def finish(self) -> None:
        """Clean up after `handle()`; does nothing here."""


class _SocketWriter(io.BufferedIOBase):
    """A writable file object over a socket that sends every write at once, unbuffered."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class StreamRequestHandler(BaseRequestHandler):
    """Handler for stream sockets, with `rfile` and `wfile` file objects over the connection.

    Class variables: `rbufsize` (-1: default buffering for rfile), `wbufsize` (0: wfile sends
    each write at once), `timeout` (socket timeout, None for none), and
    `disable_nagle_algorithm` (set TCP_NODELAY).
    """

    rbufsize: ClassVar[int] = -1
    wbufsize: ClassVar[int] = 0
    timeout: ClassVar[float | None] = None
    disable_nagle_algorithm: ClassVar[bool] = False
    connection: Any
    rfile: io.BufferedIOBase
    wfile: io.BufferedIOBase

    def setup(self) -> None:
        """Apply the socket options and create `rfile` and `wfile`."""
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self) -> None:
        """Flush `wfile`, then close both file objects; a peer that went away is no error.

        Both files are closed even then: an open `rfile` would keep the connection's
        descriptor open after `shutdown_request` closed the socket.
        """
        try:
            if not self.wfile.closed:
                try:
                    self.wfile.flush()
                except OSError:
                    pass  # the peer went away; nothing left to deliver
            try:
                self.wfile.close()
            except OSError:
                pass  # close() retries the flush that just failed
        finally:
            self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """Handler for datagram sockets: `rfile` reads the datagram, `wfile` collects the reply.

    On finish, what was written to `wfile` is sent back to `client_address` as one datagram.
    """

    packet: bytes
    socket: socket.socket
    rfile: io.BytesIO  # typeshed says BufferedIOBase; BytesIO is one, and has getvalue()
    wfile: io.BytesIO

    def setup(self) -> None:
        """Wrap the received packet in `rfile` and start an empty `wfile`."""
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        """Send the contents of `wfile` to the client."""
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
