"""The builtins as asyncio protocols, for `--concurrency event`.

`builtin_handlers.protocol_factory` loads this module at its first call: the sync, thread and
fork modes never load these classes, a third of the builtins' code. The logic lives in plain
classes; `_protocol_class` combines one with asyncio.Protocol or DatagramProtocol at first
use, so that importing this module does not import asyncio. What each builtin does is
described in `builtin_handlers`.
"""

from __future__ import annotations

import functools
import os

from .builtin_handlers import (
    _INET_FAMILIES,
    _MAX_UDP_PAYLOAD,
    LINGER_SECONDS,
    _datagram_answer,
    _fileno,
    _Shared,
    _upper,
    greeting,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from typing import Any, BinaryIO, ClassVar


class _EventStream:
    """Base of the stream protocols: counts bytes, reports the connection when it is lost."""

    transport: Any

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.received = 0
        self.sent = 0
        self.watch = shared.watcher()
        self.client: Any = None
        self.transport = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        recorder = self.shared.recorder
        if recorder is not None:
            recorder.record(self.client, self.received, self.sent)

    def data_received(self, data: bytes) -> None:
        self.saw(data)

    def eof_received(self) -> bool | None:
        return None  # close once what we wrote is out

    def saw(self, data: bytes) -> None:
        self.received += len(data)
        if self.watch is not None:
            self.watch.data(self.client, "in", data)

    def send(self, data: bytes) -> None:
        self.transport.write(data)
        self.sent += len(data)
        if self.watch is not None:
            self.watch.data(self.client, "out", data)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class _EventTransform(_EventStream):
    """echo and upper; reading pauses while the client does not read our replies."""

    transform: ClassVar[Callable[[Any], bytes] | None] = None

    def data_received(self, data: bytes) -> None:
        watch = self.watch
        if watch is not None:
            watch.data(self.client, "in", data)
        transform = self.transform
        out = data if transform is None else transform(data)
        self.transport.write(out)
        self.received += len(data)  # upper keeps the length: received == sent
        if watch is not None:
            watch.data(self.client, "out", out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sent = self.received
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class _EventEcho(_EventTransform):
    """echo when nobody watches the data (the usual case): write it back, count it."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.received += len(data)


class _EventUpper(_EventTransform):
    transform = staticmethod(_upper)


class _EventStdout(_EventStream):
    def data_received(self, data: bytes) -> None:
        self.saw(data)
        writer = self.shared.writer
        assert writer is not None
        writer.write(data)


class _EventChargen(_EventStream):
    """chargen: keep the transport's buffer filled until the client goes away."""

    paused = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        import asyncio

        self.loop = asyncio.get_running_loop()
        self._fill()

    def _fill(self) -> None:
        if self.transport.is_closing():
            return
        self.send(self.shared.chargen_block)
        if not self.paused:
            self.loop.call_soon(self._fill)

    def eof_received(self) -> bool:
        return True  # a half-closed client still reads the pattern

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()


class _EventClosing(_EventStream):
    """Close after our answer: shut the write side, drop input until EOF or LINGER_SECONDS."""

    client_eof = False
    done = False
    timer: Any = None

    def finish_sending(self) -> None:
        self.done = True
        transport = self.transport
        if transport.is_closing():
            return
        if self.client_eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        import asyncio

        self.timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def eof_received(self) -> bool:
        self.client_eof = True
        return not self.done

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().connection_lost(exc)


class _EventGreeting(_EventClosing):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.send(greeting(self.shared.name))
        self.finish_sending()


class _EventReply(_EventClosing):
    """reply: answer the first bytes (or EOF) with the reply bytes or file, then close."""

    started = False
    paused = False
    file: Any = None

    def data_received(self, data: bytes) -> None:
        self.saw(data)
        if not self.started:
            self.start()

    def eof_received(self) -> bool:
        self.client_eof = True
        if not self.started:
            self.start()
        return not self.done

    def start(self) -> None:
        self.started = True
        path = self.shared.options.reply_file
        if path is None:
            self.send(self.shared.reply)
            self.finish_sending()
            return
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.file = open(path, "rb")  # closed when sent, or when the connection ends
        self._pump()

    def _pump(self) -> None:
        if self.file is None or self.paused or self.transport.is_closing():
            return
        chunk = self.file.read(self.shared.chunk_size)
        if not chunk:
            self.file.close()
            self.file = None
            self.finish_sending()
            return
        self.send(chunk)
        self.loop.call_soon(self._pump)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().connection_lost(exc)


class _EventStdin:
    """stdin in the event loop, for the stdio protocols of one factory: no thread.

    A pipe or terminal is watched with `add_reader`; a regular file (which a selector cannot
    watch) or a file object without a descriptor is read chunk by chunk from `call_soon`.
    Reading stops while no client is connected or while a client's transport is full.
    """

    def __init__(self, source: BinaryIO, chunk_size: int) -> None:
        self.source = source
        self.fd = _fileno(source)
        self.chunk_size = chunk_size
        self.peers: list[Any] = []
        self.pending: list[bytes] = []
        self.eof = False
        self.paused = 0
        self.loop: Any = None
        self.reading: str | None = None  # "reader", "soon" or None
        self.handle: Any = None

    def attach(self, proto: Any) -> None:
        if proto in self.peers:
            return
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.peers.append(proto)
        pending, self.pending = self.pending, []
        for data in pending:
            proto.stdin_data(data)
        if self.eof:
            proto.stdin_eof()
        else:
            self._start()

    def detach(self, proto: Any) -> None:
        if proto in self.peers:
            self.peers.remove(proto)
        if not self.peers:
            self._stop()

    def pause(self) -> None:
        self.paused += 1
        self._stop()

    def resume(self) -> None:
        self.paused = max(0, self.paused - 1)
        if self.peers:
            self._start()

    def _start(self) -> None:
        if self.reading is not None or self.paused or self.eof:
            return
        if self.fd is not None:
            try:
                self.loop.add_reader(self.fd, self._read)
                self.reading = "reader"
                return
            except (OSError, ValueError):
                pass  # a regular file: it never blocks, so read it from call_soon
        self.reading = "soon"
        self.handle = self.loop.call_soon(self._read)

    def _stop(self) -> None:
        if self.reading == "reader":
            self.loop.remove_reader(self.fd)
        elif self.reading == "soon" and self.handle is not None:
            self.handle.cancel()
        self.reading = None
        self.handle = None

    def _read(self) -> None:
        try:
            if self.fd is not None:
                data = os.read(self.fd, self.chunk_size)
            else:
                data = getattr(self.source, "read1", self.source.read)(self.chunk_size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self._stop()
            for proto in list(self.peers):
                proto.stdin_eof()
            return
        if not self.peers:
            self.pending.append(data)
        for proto in list(self.peers):
            proto.stdin_data(data)
        if self.reading == "soon":
            self.handle = self.loop.call_soon(self._read)


class _EventStdio(_EventStdout):
    """stdio on a stream: as with threads, a half-closed client keeps getting stdin."""

    client_eof = False
    stdin_done = False
    paused = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        assert self.shared.event_stdin is not None
        self.shared.event_stdin.attach(self)

    def eof_received(self) -> bool:
        self.client_eof = True
        return not self.stdin_done

    def stdin_data(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.send(data)

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
        assert self.shared.event_stdin is not None
        self.shared.event_stdin.pause()

    def resume_writing(self) -> None:
        self.paused = False
        assert self.shared.event_stdin is not None
        self.shared.event_stdin.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        stdin = self.shared.event_stdin
        assert stdin is not None
        if self.paused:
            self.paused = False
            stdin.resume()
        stdin.detach(self)
        super().connection_lost(exc)


def _no_record(client: Any, received: int, sent: int) -> None:
    pass


class _EventDatagram:
    """Datagram protocol for every builtin: one reply datagram per datagram."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: Any = None
        self.reply = shared.datagram_reply_bytes() if shared.name == "reply" else b""
        self.answer = _datagram_answer(shared.name, self.reply)
        self.last_sender: Any = None
        self.stdin_limit = shared.chunk_size
        if shared.writer is None and shared.watcher() is None:
            recorder = shared.recorder
            self.record = _no_record if recorder is None else recorder.record
            if shared.name != "echo":
                quick = self._answer
            else:
                quick = self._echo if recorder is not None else self._reflect
            self.datagram_received = quick  # type: ignore[method-assign]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in _INET_FAMILIES:
            self.stdin_limit = min(self.stdin_limit, _MAX_UDP_PAYLOAD)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        shared = self.shared
        watch = shared.watcher()
        sent = 0
        try:
            if watch is not None:
                watch.data(addr, "in", data)
            if shared.writer is not None:
                if shared.event_stdin is not None and addr:
                    self.last_sender = addr
                    shared.event_stdin.attach(self)
                if data:
                    shared.writer.write(data)
                return
            reply = self.answer(data)
            if reply is None or not addr:
                return
            self.transport.sendto(reply, addr)
            sent = len(reply)
            if watch is not None:
                watch.data(addr, "out", reply)
        finally:
            if shared.recorder is not None:
                shared.recorder.record(addr, len(data), sent)

    def _answer(self, data: bytes, addr: Any) -> None:
        """`datagram_received` with no output and no -vv: only the answer and the record."""
        sent = 0
        try:
            reply = self.answer(data)
            if reply is not None and addr:
                self.transport.sendto(reply, addr)
                sent = len(reply)
        finally:
            self.record(addr, len(data), sent)

    def _echo(self, data: bytes, addr: Any) -> None:
        """`_answer` for echo: the datagram goes back as it came (any bytes-like will do)."""
        sent = 0
        try:
            if addr:
                self.transport.sendto(data, addr)
                sent = len(data)
        finally:
            self.record(addr, len(data), sent)

    def _reflect(self, data: bytes, addr: Any) -> None:
        """`_echo` with nothing to record (-q): no more than an asyncio echo server does."""
        if addr:
            self.transport.sendto(data, addr)

    def stdin_data(self, data: bytes) -> None:
        if self.last_sender is None or self.transport.is_closing():
            return
        for i in range(0, len(data), self.stdin_limit):
            self.transport.sendto(data[i : i + self.stdin_limit], self.last_sender)

    def stdin_eof(self) -> None:
        pass

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: the client is gone, nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        if self.shared.event_stdin is not None:
            self.shared.event_stdin.detach(self)


_EVENT_STREAM_CLASSES: dict[str, type[_EventStream]] = {
    "echo": _EventTransform,
    "upper": _EventUpper,
    "discard": _EventStream,
    "stdout": _EventStdout,
    "stdio": _EventStdio,
    "chargen": _EventChargen,
    "daytime": _EventGreeting,
    "time": _EventGreeting,
    "reply": _EventReply,
}


@functools.cache
def _protocol_class(name: str, socktype: str, watched: bool = False) -> type[asyncio.BaseProtocol]:
    import asyncio

    if socktype == "dgram":
        logic: type = _EventDatagram
        base: type = asyncio.DatagramProtocol
    else:
        logic = _EVENT_STREAM_CLASSES[name]
        if logic is _EventTransform and not watched:
            logic = _EventEcho
        base = asyncio.Protocol
    cls_name = f"{name.capitalize()}{'Datagram' if socktype == 'dgram' else 'Stream'}Protocol"
    return type(cls_name, (logic, base), {"__module__": __name__})


def shared_protocol_factory(shared: _Shared, socktype: str) -> Callable[[], asyncio.BaseProtocol]:
    """What `builtin_handlers.protocol_factory` returns, for its checked arguments."""
    if shared.name == "stdio":
        assert shared.input is not None
        shared.event_stdin = _EventStdin(shared.input, shared.chunk_size)
    watched = shared.watcher() is not None
    return functools.partial(_protocol_class(shared.name, socktype, watched), shared)
