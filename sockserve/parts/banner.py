"""BannerPart: every stream client is sent --banner as soon as it connects, before the handler.

A server-speaks-first protocol (SMTP's `220`, FTP, POP3) greets before the client says
anything; the banner is that greeting, for any handler, the builtins and a user's.
"""

from __future__ import annotations

from typing import Any

from ..socketserver import BaseRequestHandler, TCPServer


class BannerPart(TCPServer):
    """Send `banner` on each connection, in the request's own thread or child, then run the
    handler (a client that is already gone is the handler's to see: it ends as usual).

    Extends finish_request. The banner goes through the request's socket, so a watch (-vv)
    shows it and a user's handler's counts include it; the builtins count their own bytes,
    so compose gives them `counting_banner`'s subclass.
    """

    banner = b""

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Greet the client, then hand the connection to the handler."""
        try:
            request.sendall(self.banner)
        except OSError:
            pass  # reset or gone: the handler's first read or write ends the connection
        super().finish_request(request, client_address)


def counting_banner(handler: type[BaseRequestHandler], size: int) -> type[BaseRequestHandler]:
    """A subclass of a builtin stream handler whose byte counts start with the banner's
    `size` bytes, which `BannerPart` sent before it ran."""

    def setup(self: Any) -> None:
        handler.setup(self)
        self.sent += size

    return type(handler.__name__, (handler,), {"setup": setup, "__module__": handler.__module__})
