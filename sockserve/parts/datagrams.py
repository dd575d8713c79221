"""LeanDatagramPart: a datagram builtin answers on the loop thread, a burst per wake-up."""

from __future__ import annotations

import socket
from typing import Any

from .backoff import RESOURCE_ERRNOS, AcceptBackoffPart
from .requests import RequestsPart


class LeanDatagramPart(RequestsPart, AcceptBackoffPart):
    """Answer datagrams on the loop thread, each straight through the handler class's
    `serve_datagram(data, sock, client)`: no handler instance, no thread.

    For builtins whose answer never waits (sync mode, or thread mode where a thread per
    datagram would cost far more than the answer; see benchmarks/RESULTS.md). The answers
    are the same. Replaces handle_ready (the steps get_request → process_request → the
    handler, for up to `datagram_batch` waiting datagrams) and process_request (the
    handler runs here, not in a thread).
    """

    #: At most this many waiting datagrams are answered per wake-up of the loop.
    datagram_batch = 32 if hasattr(socket, "MSG_DONTWAIT") else 1
    max_packet_size: int  # the datagram server's

    def handle_ready(self) -> None:
        """Answer the datagrams waiting on the socket, up to `datagram_batch` of them.

        The request limit and a stop request end the batch at once.
        """
        sock = self.socket
        recvfrom = sock.recvfrom
        serve = self.RequestHandlerClass.serve_datagram  # type: ignore[attr-defined]  # the builtins' classmethod
        size = self.max_packet_size
        flags = 0  # the first datagram is known to be there; the others may not be
        for _ in range(self.datagram_batch):
            try:
                data, client = recvfrom(size, flags)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    self.accept_failed(exc)
                return
            flags = socket.MSG_DONTWAIT
            if self._accept_failing_since is not None:
                self.accepting_again()
            if not self.count_request():
                return
            try:
                serve(data, sock, client)
            except Exception:
                self.handle_error((data, sock), client)
            if self.stop_reason is not None:
                return

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle the request on this thread (a reply that never waits costs less than a
        thread start)."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)
