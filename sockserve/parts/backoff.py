"""When the system runs short: accepts that fail (EMFILE...) and dispatches that fail."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any

from .. import socketserver
from ..events import Events
from ..socketserver import TCPServer
from .reporting import tell

#: accept() or recvfrom() failing for want of descriptors or memory: wait, then try again.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptBackoffPart(TCPServer):
    """Out of descriptors or memory in accept: warn once, then wait before each next
    accept (doubling up to 0.5 s, cut short by shutdown) until one works again.

    Extends get_request.
    """

    monitor: Events | None = None
    _accept_failing_since: float | None = None
    _accept_backoff = 0.0

    def get_request(self) -> tuple[Any, Any]:
        """Accept or receive; back off while the process is out of descriptors."""
        try:
            result = super().get_request()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self.accept_failed(exc)
            raise
        if self._accept_failing_since is not None:
            self.accepting_again()
        return result

    def accepting_again(self) -> None:
        """Report the end of a run of failed accepts."""
        took = time.monotonic() - (self._accept_failing_since or 0.0)
        self._accept_failing_since = None
        self._accept_backoff = 0.0
        if self.monitor is not None:
            self.monitor.info(f"accepting again after {took:.2f}s")

    def accept_failed(self, exc: OSError) -> None:
        """Warn once, then wait (interruptible by shutdown) before the next accept."""
        if self._accept_failing_since is None:
            self._accept_failing_since = time.monotonic()
            self._accept_backoff = 0.01
            if self.monitor is not None:
                self.monitor.warning(
                    f"cannot accept: {os.strerror(exc.errno or 0)}; pausing accepts until "
                    "descriptors free up (raise the limit with `ulimit -n`)"
                )
        else:
            self._accept_backoff = min(self._accept_backoff * 2, 0.5)
        wake = self.wakeup_fileno()
        select.select([wake] if wake is not None else [], [], [], self._accept_backoff)


class DispatchRefusalPart(TCPServer):
    """A request no thread or child can take (the start or the fork failed): close it, warn
    once, and go on; say so when dispatching works again.

    Extends process_request (of ThreadingMixIn or ForkingMixIn, after it in the bases).
    """

    monitor: Events | None = None
    #: The handler is a builtin, which reports its own connections' ends: a refused
    #: connection's end is reported here instead.
    builtin_handler = False
    _dispatch_failing_since: float | None = None
    _dispatch_refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the request over; refuse it if no thread or child can be started."""
        try:  # only a thread start or a fork can fail here: the handler runs elsewhere
            super().process_request(request, client_address)
        except (OSError, RuntimeError) as exc:
            self.refuse(request, client_address, exc)
            return
        if self._dispatch_failing_since is not None:
            self.dispatching_again()

    def dispatching_again(self) -> None:
        """Report the end of a run of refused requests."""
        took = time.monotonic() - (self._dispatch_failing_since or 0.0)
        refused, self._dispatch_refused = self._dispatch_refused, 0
        self._dispatch_failing_since = None
        tell(self.monitor, f"serving again after {took:.2f}s ({refused} refused)")

    def refuse(self, request: Any, client_address: Any, exc: BaseException) -> None:
        """Close a request no thread or child could take (fork EAGAIN...); warn once."""
        if self._dispatch_failing_since is None:
            self._dispatch_failing_since = time.monotonic()
            forking = getattr(socketserver, "ForkingMixIn", None)
            forks = forking is not None and isinstance(self, forking)
            what = "fork a child" if forks else "start a thread"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            tell(
                self.monitor,
                f"cannot {what} for a new request ({reason}): refusing requests until that "
                "works again (check `ulimit -u` and free memory, or lower --max-children / "
                "--max-threads)",
                warning=True,
            )
        self._dispatch_refused += 1
        stream = self.socket_type == socket.SOCK_STREAM
        if stream and self.builtin_handler and self.monitor is not None:
            self.monitor.record(client_address, 0, 0)  # a close for the connect reported
        self.shutdown_request(request)
