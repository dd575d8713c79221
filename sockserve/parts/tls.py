"""TLS for thread, fork and sync servers: each connection wrapped at accept, its handshake
run in the request's own thread or child, with a time limit."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ..events import Events
from ..socketserver import TCPServer

if TYPE_CHECKING:  # ssl is loaded only by a run that serves TLS (`sockserve.tls`)
    import ssl


class TlsWrapPart(TCPServer):
    """Wrap each accepted connection in the run's `tls_context` (no handshake yet: that is
    `TlsPart`'s, outside the accept loop), before a watch takes it (`WatchPart` watches
    the plaintext).

    Extends get_request. Comes after `WatchPart` in the bases: it sees the raw socket.
    """

    tls_context: ssl.SSLContext

    def get_request(self) -> tuple[Any, Any]:
        """Accept, and wrap the connection for a server-side handshake to come."""
        request, client_address = super().get_request()
        try:
            wrapped = self.tls_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except BaseException:
            request.close()
            raise
        return wrapped, client_address


class TlsPart(TCPServer):
    """Run each connection's TLS handshake before its handler, in the request's own thread
    or child (in sync mode, the loop's), within `tls_handshake_timeout` seconds.

    After the handshake `monitor.tls(client, info)` tells the version, cipher, ALPN
    protocol, SNI name and client certificate; a handshake that fails is told with its
    reason (`info["error"]`), the handler does not run, and the server goes on. With
    `tls_records_failures` (the builtins, which record their own connections), a failed
    connection is also recorded, with no bytes.

    Once the handler is done, the server's end of the data (close_notify) is sent.

    Extends finish_request. Comes before `BannerPart`: the banner goes out encrypted.
    """

    monitor: Events | None = None
    tls_handshake_timeout = 10.0
    tls_records_failures = False

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake, tell how it went, then hand the connection to the handler."""
        from .. import tls  # loaded already: the run's context came from it

        monitor = self.monitor
        timeout = request.gettimeout()
        limit = self.tls_handshake_timeout
        try:
            request.settimeout(limit if timeout is None else min(limit, timeout))
            request.do_handshake()
            request.settimeout(timeout)
        except (OSError, ValueError) as exc:
            if monitor is not None:
                monitor.tls(client_address, tls.failure_info(exc, limit))
                if self.tls_records_failures:
                    monitor.record(client_address, 0, 0)
            return
        request.established = True
        if monitor is not None:
            monitor.tls(client_address, tls.handshake_info(request))
        super().finish_request(request, client_address)
        try:  # TLS's end of data (close_notify), whichever way the server then closes
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed by the handler, or gone
