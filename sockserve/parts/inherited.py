"""InheritedSocketPart: serve a listening socket sockserve did not create (--fd, --activated)."""

from __future__ import annotations

import socket

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
