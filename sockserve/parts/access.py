"""AccessPart: peers the access rules do not serve are refused before any handler runs."""

from __future__ import annotations

import socket
import threading
from typing import Any

from ..access import AccessRules
from ..events import Events, address_of
from ..socketserver import TCPServer


class AccessPart(TCPServer):
    """Refuse the requests of peers that `access_rules` do not serve: a stream connection is
    closed at once, a datagram is dropped unanswered; each is told to `Events.refused`.

    Extends verify_request (the rules decide first, so a refused request is neither counted
    nor reported as a connection) and shutdown_request (a refused request is only closed).
    """

    access_rules: AccessRules = AccessRules()
    monitor: Events | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._refused = threading.local()  # the request verify_request refused, per thread
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Let through only the requests of peers the rules serve."""
        reason = self.access_rules.decide(address_of(client_address))
        if reason is None and self.socket_type == socket.SOCK_STREAM:
            reason = self.access_rules.decide_credentials(request)
        if reason is None:
            return super().verify_request(request, client_address)
        self._refused.request = request
        if self.monitor is not None:
            self.monitor.refused(client_address, reason)
        return False

    def shutdown_request(self, request: Any) -> None:
        """Close a refused request (no record: it was never served); shut down the others."""
        if getattr(self._refused, "request", None) is request:
            self._refused.request = None
            self.close_request(request)
            return
        super().shutdown_request(request)
