"""Parts about the listening socket: TCP_NODELAY set on it once, a forked child's copy closed."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..socketserver import TCPServer


class NodelayListenerPart(TCPServer):
    """Set TCP_NODELAY once on the listener, which Linux hands down to every accepted
    connection; `nodelay_inherited` tells the builtins not to set it on each.

    Extends server_activate (TCP stream servers).
    """

    nodelay_inherited = False

    def server_activate(self) -> None:
        """Listen, with TCP_NODELAY on the listener (Linux)."""
        super().server_activate()
        if not sys.platform.startswith("linux"):
            return
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        else:
            self.nodelay_inherited = True


class ChildClosesListenerPart(TCPServer):
    """In a forked child, close the child's copy of the listener before handling.

    Otherwise every child keeps the listening socket open: once the server stops, the
    kernel would go on queueing new connections that nobody accepts until the last child
    exits, instead of refusing them. Extends finish_request (fork mode, stream servers).
    """

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Close the listener (this process's copy), then handle the request."""
        self.socket.close()
        super().finish_request(request, client_address)
