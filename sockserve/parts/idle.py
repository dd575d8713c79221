"""IdleTimeoutPart: --timeout on every stream connection."""

from __future__ import annotations

from typing import Any

from ..socketserver import TCPServer


class IdleTimeoutPart(TCPServer):
    """Give every accepted connection a timeout of `idle_timeout` seconds: a recv or send
    that waits longer raises TimeoutError in the handler, which ends the request.

    Extends get_request (stream servers).
    """

    idle_timeout: float | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept, and set the connection's timeout."""
        request, client_address = super().get_request()
        request.settimeout(self.idle_timeout)
        return request, client_address
