"""RequestsPart: requests counted, limited (--once, --max-requests), tracked, and the stop."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..socketserver import TCPServer


class RequestsPart(TCPServer):
    """Count the requests `verify_request` lets through, stop the loop at `request_limit`,
    and keep the open connections in `active_requests` (for an abort, which waits for them
    to be closed with `wait_closed`).

    Every server the command builds has this part: it carries the run's stop
    (`request_stop`, `stop_reason`) and `pin_loop_thread`, which `PinningPart` overrides.
    """

    request_limit: int | None = None
    requests_started = 0
    stop_reason: str | None = None
    #: The CPU the loop's thread is kept on (`PinningPart`); None: not pinned.
    pinned_cpu: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.active_requests: set[Any] = set()  # connections being handled, for an abort
        self._closed = threading.Condition()  # notified when a connection is closed
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[Any, Any]:
        """Accept, and remember the connection until it is closed."""
        request, client_address = super().get_request()
        if self.socket_type == socket.SOCK_STREAM:
            self.active_requests.add(request)
        return request, client_address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the request; False for one past the limit (threads that accept may take one
        more before the loop stops them)."""
        return super().verify_request(request, client_address) and self.count_request()

    def count_request(self) -> bool:
        """Count a request and stop at the limit; False (uncounted) past the limit."""
        limit = self.request_limit
        if limit is not None and self.requests_started >= limit:
            return False
        self.requests_started += 1
        if limit is not None and self.requests_started >= limit:
            self.request_stop("request limit reached")
        return True

    def close_request(self, request: Any) -> None:
        """Forget the request (the parent's copy, in fork mode), then close it."""
        self.active_requests.discard(request)
        super().close_request(request)
        with self._closed:
            self._closed.notify_all()

    def wait_closed(self, deadline: float) -> bool:
        """Wait until every connection is closed (its handler has ended and reported), or
        until `deadline` (time.monotonic()); True if none is left."""
        with self._closed:
            return self._closed.wait_for(
                lambda: not self.active_requests, max(0.0, deadline - time.monotonic())
            )

    def request_stop(self, reason: str) -> None:
        """Ask serve_forever to stop (safe from the loop, other threads and signal handlers)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.request_shutdown()

    def pin_loop_thread(self) -> int | None:
        """Return the CPU the loop's thread is kept on: None, unless `PinningPart` pins."""
        return self.pinned_cpu
