"""ClientIdsPart: each request's client address becomes a `Client` the run's events share."""

from __future__ import annotations

import socket
from typing import Any

from ..events import Client, ClientIds
from ..socketserver import TCPServer


class ClientIdsPart(TCPServer):
    """Carry each request's peer address as a `Client` through the server's steps, so that
    every event about the request tells the same connection id; hand the handler the plain
    address.

    Below the other parts that use the address: they see the `Client` from get_request on.
    A connection's id is drawn from `client_ids` when it is let through
    (`ReportingPart.verify_request`), so ids follow the order of acceptance with no gap
    (the threads that accept take connections of their own to end idle ones); a datagram's
    when it is received.
    Extends get_request (wraps the address) and finish_request (unwraps it, except for a
    handler class whose `takes_client` is true: the builtins, which report for themselves).
    """

    client_ids: ClientIds | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept or receive; the address becomes a `Client`. A datagram's id is drawn now
        (a watch reports it as received before verify), a connection's at verify."""
        request, address = super().get_request()
        ids = self.client_ids
        if ids is not None and self.socket_type == socket.SOCK_DGRAM:
            return request, Client(address, ids.next())
        return request, Client(address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler with the plain address (the builtins get the `Client`)."""
        if type(client_address) is Client and not getattr(
            self.RequestHandlerClass, "takes_client", False
        ):
            client_address = client_address.address
        super().finish_request(request, client_address)

    def number(self, client: Any) -> None:
        """Give `client` its id, once (a request let through)."""
        ids = self.client_ids
        if ids is not None and type(client) is Client and client.id is None:
            client.id = ids.next()
