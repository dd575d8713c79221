"""The builtins as asyncio protocols, for `--concurrency event`.

`protocol_factory` (in the package) loads this module at its first call, so the other modes
never import asyncio. An exception in a protocol callback (OutputClosed from stdout/stdio)
reaches the loop's exception handler as asyncio reports it, with the transport closed.
echo and upper pause reading while the client does not read the replies; chargen keeps the
transport's buffer filled; stdio reads stdin in the loop (`stdin.EventStdin`). With -vv
each protocol is watched (`sockserve.watch_asyncio`): every chunk received and written is
reported on its way; otherwise the protocols run unwrapped.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

from ..events import Client
from ..lean_datagrams import LeanAnswer
from .cores import (
    LINGER_SECONDS,
    OneAnswer,
    Phase,
    chunk_transform,
    datagram_answer,
    greeting,
)
from .framing import LineBuffer, datagram_line
from .output import OutputClosed, OutputFailed
from .shared import INET_FAMILIES, MAX_UDP_PAYLOAD, Shared
from .stdin import CONFIRM_SECONDS, EventStdin, client_sent_eof, unconfirmed


class EventStream(asyncio.Protocol):
    """Base of the stream protocols: counts bytes, reports the connection when it is lost.

    discard is this class as it is. `takes_client`: the event server sets `client` (the
    connection's `events.Client`) before connection_made; else it is the peer's address.
    When nothing comes between the accept and the protocol, the event server sets
    `event_server` instead: the protocol tells it of its connection's start (which gives the
    `client`) and end itself, and is not hooked (`sockserve.event.EventServer.opened`).
    """

    transport: Any = None
    takes_client = True
    client: Any = None
    event_server: Any = None
    # The byte counts: class defaults, so that a new connection sets no more than it needs.
    received = 0
    sent = 0

    def __init__(self, shared: Shared, stdin: EventStdin | None = None) -> None:
        self.shared = shared
        self.stdin = stdin

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.event_server
        if server is not None:
            self.client = server.opened(self, transport)
        elif self.client is None:
            self.client = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            recorder = self.shared.recorder
            if recorder is not None:
                recorder.record(self.client, self.received, self.sent)
        finally:
            server = self.event_server
            if server is not None:
                server.closed(self)

    def data_received(self, data: bytes) -> None:
        self.saw(data)

    def eof_received(self) -> bool | None:
        return None  # close once what we wrote is out

    def saw(self, data: bytes) -> None:
        self.received += len(data)

    def send(self, data: bytes) -> None:
        self.transport.write(data)
        self.sent += len(data)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class EventEcho(EventStream):
    """echo: write the data back as it came, count it; reading pauses while the client does
    not read our replies."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.received += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sent += self.received  # after a --banner the loop counted
        EventStream.connection_lost(self, exc)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class EventTransform(EventEcho):
    """upper (and echo, with no transform): each chunk goes back transformed."""

    def __init__(self, shared: Shared, stdin: EventStdin | None = None) -> None:
        super().__init__(shared, stdin)
        self.transform = chunk_transform(shared.name)

    def data_received(self, data: bytes) -> None:
        transform = self.transform
        self.transport.write(data if transform is None else transform(data))
        self.received += len(data)  # upper keeps the length: received == sent


class EventStdout(EventStream):
    """stdout: in whole lines (a `LineBuffer` per connection), or raw, each chunk as it came."""

    def __init__(self, shared: Shared, stdin: EventStdin | None = None) -> None:
        super().__init__(shared, stdin)
        self.lines = LineBuffer() if shared.lines else None
        self.output_ok = True

    def data_received(self, data: bytes) -> None:
        self.saw(data)
        writer = self.shared.writer
        assert writer is not None
        if self.lines is None:
            writer.write(data)
            return
        out = self.lines.feed(data)
        if out is not None:
            self.write_out(writer, out)

    def write_out(self, writer: Any, out: Any) -> None:
        try:
            writer.write_lines(out)
        except (OutputClosed, OutputFailed):
            self.output_ok = False
            raise

    def connection_lost(self, exc: Exception | None) -> None:
        """Write the partial last line, then report the connection."""
        try:
            rest = self.lines.take() if self.lines is not None else b""
            if rest and self.output_ok:
                assert self.shared.writer is not None
                self.write_out(self.shared.writer, rest)
        finally:
            super().connection_lost(exc)


class EventChargen(EventStream):
    """chargen: keep the transport's buffer filled until the client goes away."""

    paused = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.loop = asyncio.get_running_loop()
        self.fill()

    def fill(self) -> None:
        if self.transport.is_closing():
            return
        self.send(self.shared.chargen_block)
        if not self.paused:
            self.loop.call_soon(self.fill)

    def eof_received(self) -> bool:
        return True  # a half-closed client still reads the pattern

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.fill()


class EventAnswer(EventStream):
    """reply, daytime and time: one answer, then close (`cores.OneAnswer`).

    reply answers the first bytes (or EOF) with the reply bytes or the file, read in chunks
    while the transport takes them; daytime and time answer at connect.
    """

    paused = False
    file: Any = None
    timer: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.loop = asyncio.get_running_loop()
        self.conn = OneAnswer(waits_for_request=self.shared.name == "reply")
        if self.conn.phase is Phase.SENDING:
            self.send(greeting(self.shared.name))
            self.finish_sending()

    def data_received(self, data: bytes) -> None:
        self.saw(data)
        self.receive(data)

    def eof_received(self) -> bool:
        self.receive(b"")
        return self.conn.phase is Phase.SENDING  # keep our side open until the answer is out

    def receive(self, data: bytes) -> None:
        waiting = self.conn.phase is Phase.WAITING
        self.conn.receive(data)
        if self.conn.phase is Phase.CLOSED:
            self.transport.close()
        elif waiting:
            self.start_reply()

    def start_reply(self) -> None:
        path = self.shared.options.reply_file
        if path is None:
            self.send(self.shared.reply)
            self.finish_sending()
            return
        self.file = open(path, "rb")  # noqa: SIM115 - closed when sent, or when the connection ends
        self.pump()

    def pump(self) -> None:
        if self.file is None or self.paused or self.transport.is_closing():
            return
        chunk = self.file.read(self.shared.chunk_size)
        if not chunk:
            self.file.close()
            self.file = None
            self.finish_sending()
            return
        self.send(chunk)
        self.loop.call_soon(self.pump)

    def finish_sending(self) -> None:
        """The answer is out: shut the write side, drop input until EOF or LINGER_SECONDS."""
        self.conn.answer_sent()
        transport = self.transport
        if transport.is_closing():
            return
        if self.conn.phase is Phase.CLOSED or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.timer = self.loop.call_later(LINGER_SECONDS, self.linger_over)

    def linger_over(self) -> None:
        self.conn.linger_over()
        self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.file is not None:
            self.file.close()
            self.file = None
        super().connection_lost(exc)


class EventStdio(EventStdout):
    """stdio on a stream: as with threads, a half-closed client keeps getting stdin.

    Once a TCP client has sent its EOF (arrived, even if not read yet: `client_sent_eof`) it
    may be gone entirely: what stdin sends it then is kept (`unconfirmed`) until acknowledged;
    if the connection is reset instead, it goes back to stdin (`EventStdin.give_back`) for the
    other clients, or the next one.
    """

    stdin: EventStdin
    client_eof = False
    stdin_done = False
    paused = False
    confirming = False
    check: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.loop = asyncio.get_running_loop()
        self.unconfirmed: list[bytes] = []
        sock = transport.get_extra_info("socket")
        self.sock = sock
        self.confirming = sock is not None and sock.family in INET_FAMILIES
        self.stdin.attach(self)

    def eof_received(self) -> bool:
        self.client_eof = True
        return not self.stdin_done

    def stdin_data(self, data: bytes) -> bool:
        """Send a chunk of stdin; False when this client cannot take it."""
        if self.transport.is_closing():
            return False
        confirm = self.confirming and (self.client_eof or client_sent_eof(self.sock))
        self.send(data)
        if confirm:
            self.unconfirmed.append(data)
            if self.check is None:
                self.deadline = self.loop.time() + CONFIRM_SECONDS
                self.pause = 0.001
                self.check = self.loop.call_soon(self.check_delivered)
        return True

    def check_delivered(self) -> None:
        """Forget what the client acknowledged; abort a reset connection (connection_lost
        gives back what it never got)."""
        self.check = None
        if not self.unconfirmed or self.transport.is_closing():
            return
        # Still in the transport's buffer: not even sent. A failed send ends the connection.
        left = -1 if self.transport.get_write_buffer_size() else unconfirmed(self.sock)
        if left is None:  # reset: the client had closed
            self.transport.abort()
            return
        if left == 0 or self.loop.time() >= self.deadline:
            self.unconfirmed.clear()
            return
        self.check = self.loop.call_later(self.pause, self.check_delivered)
        self.pause = min(self.pause * 2, 0.05)

    def stdin_eof(self) -> None:
        self.stdin_done = True
        if self.transport.is_closing():
            return
        if self.client_eof or not self.transport.can_write_eof():
            self.transport.close()
        else:
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused = True
        self.stdin.pause()

    def resume_writing(self) -> None:
        self.paused = False
        self.stdin.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.check is not None:
            self.check.cancel()
            self.check = None
        if self.paused:
            self.paused = False
            self.stdin.resume()
        self.stdin.detach(self)
        if self.unconfirmed:  # the client never got it
            self.sent -= sum(map(len, self.unconfirmed))
            self.stdin.give_back(self.unconfirmed)
            self.unconfirmed = []
        super().connection_lost(exc)


def _no_record(client: Any, received: int, sent: int) -> None:
    pass


class EventDatagram(asyncio.DatagramProtocol):
    """Datagram protocol for every builtin: one reply datagram per datagram.

    With no output, `datagram_received` is one of the lean methods below, chosen once per
    protocol.
    """

    #: The sender of the datagram being answered, as a `Client`, when a watch around the
    #: protocol (-vv) made it (`takes_client`); else each record makes its own.
    takes_client = True
    sender: Client | None = None

    def __init__(self, shared: Shared, stdin: EventStdin | None = None) -> None:
        self.shared = shared
        self.stdin = stdin
        self.transport: Any = None
        self.ids = getattr(shared.observer, "client_ids", None)  # the run's monitor numbers
        self.reply = shared.datagram_reply_bytes() if shared.name == "reply" else b""
        self.answer = datagram_answer(shared.name, self.reply)
        self.last_sender: Any = None
        self.empty_sender: socket.socket | None = None
        self.stdin_limit = shared.chunk_size
        if shared.writer is None:
            recorder = shared.recorder
            self.record = _no_record if recorder is None else recorder.record
            if shared.name != "echo":
                quick = self.answer_only
            else:
                quick = self.echo if recorder is not None else self.reflect
            self.datagram_received = quick  # type: ignore[method-assign] # chosen per protocol

    def lean_datagrams(self) -> LeanAnswer | None:
        """How the event server may answer for this protocol without its callbacks
        (`sockserve.lean_datagrams`); None when it writes the datagrams out (stdout, stdio)."""
        shared = self.shared
        if shared.writer is not None:
            return None
        answer = None if shared.name == "echo" else self.answer
        recorder = shared.recorder
        return LeanAnswer(answer, None if recorder is None else recorder.record, self.ids)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in INET_FAMILIES:
            self.stdin_limit = min(self.stdin_limit, MAX_UDP_PAYLOAD)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        shared = self.shared
        sent = 0
        try:
            if shared.writer is not None:
                if self.stdin is not None and addr:
                    self.last_sender = addr
                    self.stdin.attach(self)
                if data:
                    if shared.lines:
                        shared.writer.write_lines(datagram_line(data))
                    else:
                        shared.writer.write(data)
                return
            reply = self.answer(data)
            if reply is None or not addr:
                return
            if reply:
                self.transport.sendto(reply, addr)
            else:
                self.send_empty(addr)
            sent = len(reply)
        finally:
            if shared.recorder is not None:
                shared.recorder.record(self.reported(addr), len(data), sent)

    def answer_only(self, data: bytes, addr: Any) -> None:
        """`datagram_received` with no output: only the answer and the record."""
        sent = 0
        try:
            reply = self.answer(data)
            if reply is not None and addr:
                if reply:
                    self.transport.sendto(reply, addr)
                else:
                    self.send_empty(addr)
                sent = len(reply)
        finally:
            self.record(self.reported(addr), len(data), sent)

    def echo(self, data: bytes, addr: Any) -> None:
        """`answer_only` for echo: the datagram goes back as it came (any bytes-like will do)."""
        sent = 0
        try:
            if addr:
                if data:
                    self.transport.sendto(data, addr)
                else:
                    self.send_empty(addr)
                sent = len(data)
        finally:
            self.record(self.reported(addr), len(data), sent)

    def reported(self, addr: Any) -> Any:
        """The sender as events tell it: the watch's `Client`, a new one, or `addr`."""
        sender = self.sender
        if sender is not None:
            return sender
        ids = self.ids
        return addr if ids is None else Client(addr, ids.next())

    def reflect(self, data: bytes, addr: Any) -> None:
        """`echo` with nothing to record (-q): no more than an asyncio echo server does."""
        if addr:
            if data:
                self.transport.sendto(data, addr)
            else:
                self.send_empty(addr)

    def stdin_data(self, data: bytes) -> bool:
        """Send a chunk of stdin to the latest sender (dropped if there is none)."""
        if self.last_sender is None or self.transport.is_closing():
            return True
        on_sent = self.shared.on_sent
        for i in range(0, len(data), self.stdin_limit):
            piece = data[i : i + self.stdin_limit]
            self.transport.sendto(piece, self.last_sender)
            if on_sent is not None:
                on_sent(self.last_sender, len(piece))
        return True

    def stdin_eof(self) -> None:
        pass

    def send_empty(self, addr: Any) -> None:
        """Send an empty datagram to `addr`, as the other modes answer an empty one: asyncio's
        and uvloop's transports drop it (their sendto(b"") does nothing), so it goes out on a
        duplicate of the transport's socket, unless the transport sends empty datagrams itself
        (`arrival_asyncio`: from the arrival address)."""
        transport = self.transport
        if transport.get_extra_info("sends_empty_datagrams"):
            transport.sendto(b"", addr)
            return
        sock = self.empty_sender
        if sock is None:
            raw = transport.get_extra_info("socket")
            if raw is None:
                return
            sock = self.empty_sender = socket.fromfd(raw.fileno(), raw.family, raw.type)
        try:
            sock.sendto(b"", socket.MSG_DONTWAIT, addr)
        except OSError:
            pass  # the client's queue is full, or it is gone: the datagram is lost

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: the client is gone, nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        if self.empty_sender is not None:
            self.empty_sender.close()
            self.empty_sender = None
        if self.stdin is not None:
            self.stdin.detach(self)


EVENT_STREAM_CLASSES: dict[str, type[EventStream]] = {
    "echo": EventEcho,
    "upper": EventTransform,
    "discard": EventStream,
    "stdout": EventStdout,
    "stdio": EventStdio,
    "chargen": EventChargen,
    "daytime": EventAnswer,
    "time": EventAnswer,
    "reply": EventAnswer,
}


def make_protocol_factory(
    shared: Shared, socktype: Literal["stream", "dgram"], stdin_source: BinaryIO | None
) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory for a checked builtin name and socktype (see `protocol_factory`);
    its protocols are watched when the observer wants every chunk (-vv)."""
    stdin = EventStdin(stdin_source, shared.chunk_size) if stdin_source is not None else None
    factory: Callable[[], asyncio.BaseProtocol]
    if shared.room is not None:
        from .broadcast_asyncio import room_protocol_factory  # broadcast and chat only

        factory = room_protocol_factory(shared, shared.room)
    elif shared.name == "script":
        from .script_asyncio import script_protocol_factory  # script only

        factory = script_protocol_factory(shared)
    elif socktype == "dgram":
        factory = functools.partial(EventDatagram, shared, stdin)
    else:
        factory = functools.partial(EVENT_STREAM_CLASSES[shared.name], shared, stdin)
    observer = shared.observer
    if observer is None or not observer.wants_data:
        return factory
    from ..watch_asyncio import watching_factory

    return watching_factory(factory, observer)
