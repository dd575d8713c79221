"""LeanDatagramPart: a datagram builtin answers on the loop thread, a burst per wake-up."""

from __future__ import annotations

import socket
from typing import Any

from ..events import Client, ClientIds, Events
from ..watch import Dresser, Watch, WatchedDatagramSocket
from .backoff import RESOURCE_ERRNOS, AcceptBackoffPart
from .requests import RequestsPart


class LeanDatagramPart(RequestsPart, AcceptBackoffPart):
    """Answer datagrams on the loop thread, each straight through the handler class's
    `serve_datagram(data, sock, client)`: no handler instance, no thread.

    For builtins whose answer never waits (sync mode, or thread mode where a thread per
    datagram would cost far more than the answer; see benchmarks/RESULTS.md). The answers
    are the same. Each datagram's sender is a `Client` with its own id when
    `client_ids` is set. With `watch_data` (-vv) each datagram goes through a watch
    (`serve_watched`), so its chunks are reported in order: its "in", its "out", its
    record, then the next datagram's. Replaces handle_ready (the steps get_request →
    process_request → the handler, for up to `datagram_batch` waiting datagrams) and
    process_request (the handler runs here, not in a thread).
    """

    #: At most this many waiting datagrams are answered per wake-up of the loop.
    datagram_batch = 32 if hasattr(socket, "MSG_DONTWAIT") else 1
    max_packet_size: int  # the datagram server's
    monitor: Events | None = None
    #: Report every chunk of every datagram (-vv), as `WatchPart` does.
    watch_data = False
    #: Add stages to each datagram's watch (faults, transcripts), as `WatchPart` does.
    watch_dressers: tuple[Dresser, ...] = ()
    #: Receive with `ReplySourcePart.receive_datagram`: each reply leaves from the address its
    #: datagram arrived on (a socket on 0.0.0.0 or [::]).
    reply_from_arrival = False
    #: Number each datagram (`ClientIdsPart`'s): the handler reports it as a `Client`.
    client_ids: ClientIds | None = None
    #: Size each read by a peek at the datagram's length (`WholeDatagramPart`, unix datagrams
    #: past 64 KiB, on Linux); done here, inline, as it is once per datagram.
    peek_datagram_size = False

    def handle_ready(self) -> None:
        """Answer the datagrams waiting on the socket, up to `datagram_batch` of them.

        The request limit and a stop request end the batch at once.
        """
        sock = self.socket
        recvfrom = sock.recvfrom
        serve = self.RequestHandlerClass.serve_datagram  # type: ignore[attr-defined]  # the builtins' classmethod
        if self.watch_data or self.watch_dressers:
            serve = self.serve_watched
        size = self.max_packet_size
        peek = None
        if self.peek_datagram_size:  # unix datagrams: each read sized by a peek at its length
            peek, probe = sock.recv_into, bytearray(1)
            peek_flags = socket.MSG_PEEK | getattr(socket, "MSG_TRUNC", 0)
        receive = self.receive_datagram if self.reply_from_arrival else None  # type: ignore[attr-defined]  # ReplySourcePart's
        reply = sock
        flags = 0  # the first datagram is known to be there; the others may not be
        ids = self.client_ids
        for _ in range(self.datagram_batch):
            try:
                if peek is not None:
                    data, client = recvfrom(max(size, peek(probe, 1, flags | peek_flags)), flags)
                elif receive is None:
                    data, client = recvfrom(size, flags)
                else:
                    data, reply, client = receive(flags)
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
            if ids is not None:
                client = Client(client, ids.next())
            try:
                serve(data, reply, client)
            except Exception:
                self.handle_error((data, reply), client)
            if self.stop_reason is not None:
                return

    def serve_watched(self, data: bytes, sock: socket.socket, client: Any) -> None:
        """Answer one datagram through a watch: `data` seen as "in", the reply sent through
        the watched socket as "out". The handler records the counts, once.

        `client` is the sender's address, or its `Client` (`serve_datagram` takes either).
        """
        watch = Watch(
            self.monitor,
            client,
            self.watch_data,
            shows_empty_out=False,
            dressers=self.watch_dressers,
        )
        if not watch.incoming(data) and data:
            return  # a fault dropped it (`sockserve.faults`)
        serve = self.RequestHandlerClass.serve_datagram  # type: ignore[attr-defined]  # the builtins' classmethod
        try:
            serve(data, WatchedDatagramSocket(sock, watch), client)
        finally:
            watch.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle the request on this thread (a reply that never waits costs less than a
        thread start)."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)
