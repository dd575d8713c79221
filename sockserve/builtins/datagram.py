"""The builtins as request handlers for datagram servers (UDP, unix datagram).

One request is one datagram; the reply to it is one datagram (0 bytes included, in event mode
too: `protocols.EventDatagram.send_empty`), sent back to its sender. A unix datagram client
that did not bind an address cannot be answered and is not. Replies on unix datagram sockets
never block: if the client's queue is full, the reply is dropped, as a datagram may be. stdout
and stdio write each datagram whole to the output, as one line (a newline added where it lacks
one) unless raw; stdio sends stdin to the sender of the latest datagram
(`stdin.DatagramStdio`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ..events import Client, address_of
from ..loading import ROOM_BUILTINS
from ..socketserver import BaseRequestHandler
from .cores import check_name, datagram_answer
from .framing import datagram_line
from .shared import HandlerOptions, Shared, send_datagram

if TYPE_CHECKING:  # stdin is loaded for stdio only
    from .stdin import DatagramStdio


class DatagramBuiltin(BaseRequestHandler):
    """Base of the datagram builtins; the answer function is chosen once per class.

    `serve_datagram(data, sock, client)` does what `handle` does without a handler instance:
    the tool's servers call it directly for every datagram that waits. `takes_client`: the
    server hands it the sender as a `Client` (`parts.client_ids`), reported as given.
    """

    builtin: ClassVar[str] = ""
    socktype: ClassVar[str] = "dgram"
    options: ClassVar[HandlerOptions]
    shared: ClassVar[Shared]
    reply: ClassVar[bytes] = b""
    answer: ClassVar[Callable[[Any], bytes | None]]
    stdio: ClassVar[DatagramStdio | None] = None
    takes_client: ClassVar[bool] = True

    @classmethod
    def release(cls) -> None:
        """Stop background work of the class (the stdin reader of stdio); idempotent."""
        if cls.stdio is not None:
            cls.stdio.release()

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.client = client_address  # what events get: a `Client`, or the address
        super().__init__(request, address_of(client_address), server)

    def handle(self) -> None:
        data, sock = self.request
        self.serve_datagram(data, sock, self.client)

    @classmethod
    def serve_datagram(cls, data: Any, sock: Any, client: Any) -> None:
        """Answer one datagram `data` that `sock` received from `client` (an address, or
        its `Client`: reported as it is)."""
        shared = cls.shared
        recorder = shared.recorder
        reported = client
        if type(client) is Client:
            client = client.address
        sent = 0
        try:
            writer = shared.writer
            if writer is not None:
                if cls.stdio is not None:
                    cls.stdio.note_sender(sock, client)
                if data:
                    if shared.lines:
                        writer.write_lines(datagram_line(data))
                    else:
                        writer.write(data)
                return
            reply = cls.answer(data)
            if reply is None or not client:
                return
            sent = send_datagram(sock, reply, client)
        finally:
            if recorder is not None:
                recorder.record(reported, len(data), sent)


def datagram_handler(name: str, options: HandlerOptions) -> type[BaseRequestHandler]:
    """A new request handler class for datagram servers running the builtin `name`.

    Raises ValueError for an unknown name or a builtin of streams only (broadcast, chat),
    OSError when `reply_file` cannot be read.
    """
    check_name(name)
    if name in ROOM_BUILTINS or name == "script":
        raise ValueError(f"{name} serves stream connections only")
    if name == "forward":
        from .forward_datagram import forward_datagram_handler  # forward only

        return forward_datagram_handler(options)
    shared = Shared(name, options)
    reply = shared.datagram_reply_bytes() if name == "reply" else b""
    attrs: dict[str, Any] = {
        "builtin": name,
        "options": options,
        "shared": shared,
        "reply": reply,
        "answer": staticmethod(datagram_answer(name, reply)),
        "__module__": __name__,
    }
    if name == "stdio":
        from .stdin import DatagramStdio  # stdio only

        assert shared.input is not None
        attrs["stdio"] = DatagramStdio(shared.input, shared.chunk_size, shared.on_sent)
    return type(f"{name.capitalize()}DatagramHandler", (DatagramBuiltin,), attrs)
