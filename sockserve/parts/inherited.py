"""Sockets sockserve did not create: a listening one (--fd, --activated), or the one
connection on stdin and stdout (--inetd)."""

from __future__ import annotations

import os
import socket
from typing import Any

from ..socketserver import TCPServer


class InheritedSocketPart(TCPServer):
    """Serve the socket on descriptor `inherited_fd` instead of binding one.

    The last part before the framework class: the other parts' server_bind and
    server_activate run as usual, on the inherited socket. Replaces server_bind (the socket
    made at construction is closed; the inherited one is bound already: its address is read
    back) and server_activate (it is listening already, with its creator's backlog). No
    UnixFilePart is composed with it: its socket file is not sockserve's to check or remove.
    """

    inherited_fd: int = -1

    def server_bind(self) -> None:
        """Take the inherited socket in place of the new one, and read its address."""
        self.socket.close()
        self.socket = socket.socket(fileno=self.inherited_fd)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Nothing: the socket listens already (a datagram socket needs nothing)."""


class InetdPart(TCPServer):
    """Serve the one connection on stdin and stdout (inetd's nowait, systemd's Accept=yes),
    then stop.

    The last part before the framework class, in sync mode. Replaces server_bind (the
    "listening" socket is our copy of stdin; its address is read back), server_activate
    (nothing), serve_forever (the connection is handled once, through every part's steps)
    and get_request (the connection, on a descriptor of its own, and its peer).
    """

    connection_fd = 0

    def server_bind(self) -> None:
        """Take our copy of the connection in place of the new socket."""
        self.socket.close()
        self.socket = socket.socket(fileno=os.dup(self.connection_fd))
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Nothing: there is no listening socket."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle the connection (it need not have sent anything), then stop."""
        self.handle_ready()
        self.request_stop("the connection was served")  # type: ignore[attr-defined]  # RequestsPart's

    def get_request(self) -> tuple[Any, Any]:
        """The connection, on a descriptor of its own (the server's copy closes at the stop)."""
        sock = socket.socket(fileno=os.dup(self.socket.fileno()))
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ""
        return sock, peer
