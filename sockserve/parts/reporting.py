"""ReportingPart: what the server does, told to the run's events interface."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..errors import HANDLER_EXITS
from ..events import Events
from ..socketserver import TCPServer


def tell(monitor: Events | None, message: str, warning: bool = False) -> None:
    """Give `message` to the monitor; with none, print a warning on stderr (as the framework's
    handle_error prints) and drop the rest."""
    if monitor is None:
        if warning:
            print(message, file=sys.stderr)
    elif warning:
        monitor.warning(message)
    else:
        monitor.info(message)


class ReportingPart(TCPServer):
    """Report accepted connections and handler errors to `monitor`, and let it poll (what
    forked children sent) on every loop iteration.

    Extends verify_request, finish_request and service_actions; replaces handle_error (the
    framework's default prints the traceback) while there is a monitor.
    """

    monitor: Events | None = None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Number the request let through (with `ClientIdsPart`), report a stream
        connection."""
        if not super().verify_request(request, client_address):
            return False
        number = getattr(self, "number", None)  # ClientIdsPart's: the request's id
        if number is not None:
            number(client_address)
        if self.monitor is not None and self.socket_type == socket.SOCK_STREAM:
            self.monitor.connected(client_address)
        return True

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler; a SystemExit or KeyboardInterrupt it raises goes to handle_error,
        as an Exception does: a handler cannot stop the server (in a thread, a child, or sync).

        The lifecycle's own exceptions (a second Ctrl-C, the end of the grace period in sync
        mode) derive from neither: they pass, and stop the server.
        """
        try:
            super().finish_request(request, client_address)
        except HANDLER_EXITS:
            self.handle_error(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report a handler's exception to the monitor."""
        exc = sys.exc_info()[1]
        if self.monitor is None or exc is None:
            super().handle_error(request, client_address)
            return
        self.monitor.handler_error(client_address, exc)

    def service_actions(self) -> None:
        """Run the other parts' actions (reaping...), then the monitor's poll, if it has one."""
        super().service_actions()
        poll = getattr(self.monitor, "poll", None)  # the run's monitor: forked children's news
        if poll is not None:
            poll()
