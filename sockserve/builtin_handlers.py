"""The builtin handlers: echo, upper, discard, stdout, stdio, chargen, daytime, time, reply.

Design. Each builtin's behaviour is first a pure function of bytes (`transform_chunk`,
`respond_datagram`, `greeting`, `chargen_pattern`, ...), testable without sockets. Thin adapters
put it on the wire:

- `stream_handler(name, options)`: a request handler class for TCP and unix stream servers, in
  sync, thread and fork mode;
- `datagram_handler(name, options)`: the same for UDP and unix datagram servers;
- `protocol_factory(name, socktype, options)`: asyncio protocols for the event mode (their
  classes are in `builtin_protocols`, loaded by the first call).

Every class gets its `HandlerOptions` bound as a class attribute. An `Observer` hears about each
connection once when it ends (or each datagram) with its byte counts, and, only when it asks for
them, about every chunk of data.

Rules the adapters keep:

- Bounded memory: streams are read in chunks of at most `chunk_size` bytes into a preallocated
  buffer, never by lines, so no client can make the server allocate without limit (echo and
  upper go on with a 384 KiB buffer once a read fills it, unless someone watches the data).
- A client that resets or goes away simply ends its connection; that is not an error.
- Fast paths change nothing visible: stdout and stdio move bulk data with `os.splice` (socket
  -> pipe -> output, no copy through Python) once a read fills the whole buffer, towards an
  output that is a pipe or a regular file, and only when nobody watches the data and the
  socket is blocking (through a pipe enlarged to 1 MiB where the system allows); discard on
  TCP drops data in the kernel
  (`MSG_TRUNC`); `--reply-file` goes out with `socket.sendfile`; TCP connections get
  TCP_NODELAY, so small replies leave at once.
- Datagrams: the reply to a datagram is one datagram (0 bytes included) sent back to its sender.
  A unix datagram client that did not bind an address cannot be answered and is not. Replies on
  unix datagram sockets never block: if the client's queue is full, the reply is dropped, as a
  datagram may be.

stdout. Each received chunk is written to the output and flushed before the next one. Chunks of
different clients never interleave: threads share one lock, and each chunk goes out under it,
in one `os.write` (bulk data: moved with `os.splice`, see the fast paths above). In a process
other than the one that built the class (a forked request child, or a `--workers` process)
writing to a pipe, chunks are read at most `select.PIPE_BUF` bytes at a time, because only
writes of that size are atomic on a pipe shared between processes; a larger datagram is
written in `PIPE_BUF` pieces, which then stay whole. A closed output (EPIPE, e.g.
`| head -c 10`) raises `OutputClosed`.

stdio, like `nc -l`. Received bytes go to stdout as with `stdout`. One reader of stdin per handler
class (in `builtin_stdin`, loaded for stdio only) sends what it reads:

- streams: to every connected client (in sync mode there is one). A client that has finished
  sending (half-close) stays connected and keeps receiving stdin until stdin ends or it goes
  away. At stdin EOF every connection's write side is shut (clients see EOF), and so is that of
  any later connection. The reader thread runs only while clients are connected; stdin read
  while none is connected waits for the next one. A client that does not read stalls stdin for
  the others. In fork mode each child reads stdin for its own client, so a chunk of stdin goes
  to one of them.
- datagrams: to the sender of the latest datagram, one datagram per read (at most 65507 bytes on
  UDP). The reader starts at the first datagram and stops at stdin EOF, when the server socket
  closes (checked every 0.2 s), or at `release()`. In fork mode stdin is not forwarded.
- event mode: the loop reads stdin itself (no thread) and pauses while a client's transport is
  full.

chargen (RFC 864): streams get the 72-character rotating lines without end; a datagram gets
`min(len(request), 512)` bytes of the pattern from its start. daytime (RFC 867) is a line like
``Tuesday, February 22, 1982 17:37:43-UTC``; time (RFC 868) is four bytes, big-endian seconds
since 1900-01-01 00:00 UTC. On streams both are sent at connect, then the connection closes.

reply: a stream waits for the client's first bytes (or its EOF), sends the reply (`reply` bytes,
or the file `reply_file`), shuts its write side, then reads and drops what the client still sends
until it closes or `LINGER_SECONDS` pass (so an HTTP client is not cut off by a reset). A
datagram is answered with the reply bytes (the file is read once). With neither set the reply is
empty.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import socket
import stat
import sys
import threading
import time
from _weakrefset import WeakSet  # weakref's WeakSet; threading has loaded it already

from .records import Record
from .socketserver import BaseRequestHandler

_raw_family = socket.SocketType.family.__get__  # socket.family as an int, no enum

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from typing import Any, BinaryIO, ClassVar, Literal, Protocol

    from .builtin_protocols import _EventStdin
    from .builtin_stdin import _DatagramStdio, _StreamStdio
else:
    Protocol = object  # typing (~3 ms to import) only for type checkers

__all__ = [
    "BUILTINS",
    "HandlerOptions",
    "Observer",
    "OutputClosed",
    "stream_handler",
    "datagram_handler",
    "protocol_factory",
    "transform_chunk",
    "respond_datagram",
    "greeting",
    "chargen_pattern",
    "chargen_datagram",
    "daytime_line",
    "time_bytes",
]

#: Builtin name -> one-line description (for --help, completions and the man page).
BUILTINS: dict[str, str] = {
    "echo": "send back every byte received",
    "upper": "send back what is received with ASCII letters upper-cased",
    "discard": "read and drop everything, answer nothing (RFC 863)",
    "stdout": "write what is received to stdout, answer nothing",
    "stdio": "like nc -l: received bytes to stdout, stdin to the client",
    "chargen": "send the rotating character pattern of RFC 864",
    "daytime": "send the date and time as one text line (RFC 867)",
    "time": "send seconds since 1900 as 32 bits, big-endian (RFC 868)",
    "reply": "answer each request with --reply TEXT or --reply-file PATH",
}

#: How long a closing stream connection keeps reading what the client still sends.
LINGER_SECONDS = 2.0

_MAX_UDP_PAYLOAD = 65507
_CHARGEN_MAX_DATAGRAM = 512
_RFC868_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_AF_UNIX = getattr(socket, "AF_UNIX", None)
_PEER_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_OUTPUT_GONE_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.EBADF}

# Fast paths, switchable for measurements and tests.
_USE_SPLICE = hasattr(os, "splice")
_USE_MSG_TRUNC = sys.platform.startswith("linux") and hasattr(socket, "MSG_TRUNC")
#: Pipe size asked for the splice of stdout/stdio: bigger pipes move more per system call.
_SPLICE_PIPE_SIZE = 1 << 20
#: The buffer echo and upper go on with once a read fills the connection's buffer (bulk data):
#: fewer system calls per byte. Copied, not spliced: on loopback, pages spliced into a socket
#: make the receiving client's queue overflow (the kernel collapses it, prunes it and drops
#: segments: retransmission timeouts of 200 ms and more). 384 KiB: in five interleaved runs of
#: 1 GiB transfers it moved 0.99-1.30x what 256 KiB did; 512 KiB and more brought those drops
#: and timeouts back.
_BULK_BUFFER = 384 * 1024


def _family(sock: Any) -> int:
    """`sock.family` as a plain int; cheap for real sockets (it runs for every datagram)."""
    try:
        return _raw_family(sock)
    except TypeError:  # a socket-like object that is not a socket
        return int(sock.family)


class OutputClosed(Exception):
    """Raised by stdout and stdio when our output is gone (EPIPE: the reader exited)."""


class Observer(Protocol):
    """What the handlers report to (the runner implements it)."""

    wants_data: bool
    wants_counts: bool  # False: nothing shows the records (-q), so `record` is never called

    def record(self, client_address: Any, received: int, sent: int) -> None:
        """Called once per connection when it ends (streams), or once per datagram."""

    def data(self, client_address: Any, direction: Literal["in", "out"], data: bytes) -> None:
        """Called for every chunk, only when `wants_data` is true."""


class HandlerOptions(Record):
    """Settings of the builtins; `output`/`input` default to our stdout/stdin (binary)."""

    reply: bytes | None = None
    reply_file: str | None = None
    output: BinaryIO | None = None
    input: BinaryIO | None = None
    observer: Observer | None = None
    chunk_size: int = 65536


# -- the pure part: bytes in, bytes (or None: nothing) out -------------------------------------

_CHARGEN_CHARS = bytes(range(32, 127))  # the 95 printable ASCII characters
_CHARGEN_LINE = 72


def _chargen_period() -> bytes:
    ring = _CHARGEN_CHARS * 2
    lines = []
    for i in range(len(_CHARGEN_CHARS)):
        start = (i + 1) % len(_CHARGEN_CHARS)  # line 0 starts with "!", as in RFC 864
        lines.append(ring[start : start + _CHARGEN_LINE] + b"\r\n")
    return b"".join(lines)


#: One full cycle of the chargen pattern: 95 lines of 72 characters and CRLF (7030 bytes).
CHARGEN_PERIOD = _chargen_period()


def chargen_pattern(start: int, size: int) -> bytes:
    """Return `size` bytes of the endless chargen stream, from byte offset `start`."""
    period = len(CHARGEN_PERIOD)
    start %= period
    reps = (start + size) // period + 1
    return (CHARGEN_PERIOD * reps)[start : start + size]


def chargen_datagram(request: bytes) -> bytes:
    """The reply to a chargen datagram: `min(len(request), 512)` bytes of the pattern."""
    return CHARGEN_PERIOD[: min(len(request), _CHARGEN_MAX_DATAGRAM)]


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def daytime_line(now: float | None = None) -> bytes:
    """The RFC 867 answer for `now` (default: the current time), in UTC, ending in CRLF."""
    t = time.gmtime(time.time() if now is None else now)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d}, {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}-UTC\r\n"
    ).encode("ascii")


def time_bytes(now: float | None = None) -> bytes:
    """The RFC 868 answer: seconds since 1900-01-01 00:00 UTC, 32-bit big-endian (wraps)."""
    seconds = int(time.time() if now is None else now) + _RFC868_EPOCH_OFFSET
    return (seconds & 0xFFFFFFFF).to_bytes(4, "big")


def _upper(data: Any) -> bytes:
    return bytes(data).upper()  # ASCII only: other bytes, valid UTF-8 or not, pass unchanged


def transform_chunk(name: str, data: bytes) -> bytes | None:
    """What a chunk-by-chunk stream builtin sends back for `data`; None means nothing."""
    if name == "echo":
        return bytes(data)
    if name == "upper":
        return _upper(data)
    if name in ("discard", "stdout", "stdio"):
        return None
    raise ValueError(f"{name!r} does not answer chunk by chunk")


def greeting(name: str, now: float | None = None) -> bytes:
    """What daytime or time send when a stream client connects."""
    if name == "daytime":
        return daytime_line(now)
    if name == "time":
        return time_bytes(now)
    raise ValueError(f"{name!r} sends no greeting")


def respond_datagram(
    name: str, data: bytes, *, reply: bytes = b"", now: float | None = None
) -> bytes | None:
    """The datagram a builtin sends back for the datagram `data`; None means no reply."""
    _check_name(name)
    if name == "chargen":
        return chargen_datagram(data)
    if name in ("daytime", "time"):
        return greeting(name, now)
    if name == "reply":
        return reply
    return transform_chunk(name, data)


def _check_name(name: str) -> None:
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin handler {name!r}; choose one of: {', '.join(BUILTINS)}")


# -- shared plumbing -----------------------------------------------------------------------------


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


_WRITERS: WeakSet[_OutputWriter] = WeakSet()


class _OutputWriter:
    """Writes chunks to the output under one lock; one `os.write` per chunk when it has an fd."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.fd = _fileno(stream)
        self.lock = threading.Lock()
        self.creator_pid = os.getpid()
        self.is_pipe = False
        #: `splice_from` may splice into the output: a pipe or a regular file (not a terminal).
        self.can_splice = False
        if self.fd is not None:
            try:
                stream.flush()  # what was buffered before us goes first
            except (OSError, ValueError):
                pass
            try:
                mode = os.fstat(self.fd).st_mode
            except OSError:
                pass
            else:
                self.is_pipe = stat.S_ISFIFO(mode)
                self.can_splice = _USE_SPLICE and (self.is_pipe or stat.S_ISREG(mode))
        _WRITERS.add(self)

    def chunk_limit(self, chunk_size: int) -> int:
        """How much to read per chunk so that a chunk reaches the output in one atomic write."""
        if self.is_pipe and os.getpid() != self.creator_pid:
            return min(chunk_size, select.PIPE_BUF)
        return chunk_size

    def write(self, data: Any) -> None:
        """Write all of `data`; raise OutputClosed when the output is gone."""
        try:
            with self.lock:
                if self.fd is None:
                    self.stream.write(data)
                    self.stream.flush()
                elif os.getpid() != self.creator_pid and self.is_pipe:
                    self._write_pieces(data, select.PIPE_BUF)
                else:
                    self._write_pieces(data, len(data) or 1)
        except OSError as exc:
            if exc.errno in _OUTPUT_GONE_ERRNOS:
                raise OutputClosed(f"output closed: {exc.strerror}") from exc
            raise
        except ValueError as exc:  # the stream object itself was closed
            raise OutputClosed("output closed") from exc

    def splice_from(self, pipe: int, n: int) -> None:
        """Move the `n` bytes waiting in `pipe` (the caller's) to the output as one chunk,
        with no copy through Python; raise OutputClosed when the output is gone. An output
        that refuses splice (EINVAL: a file opened for appending, on some kernels) gets them
        copied, and every chunk after them."""
        try:
            with self.lock:
                fd = self.fd
                assert fd is not None
                while n:
                    if not self.can_splice:
                        data = os.read(pipe, n)
                        if not data:  # cannot be: the caller put n bytes in the pipe
                            break
                        self._write_pieces(data, len(data))
                        n -= len(data)
                        continue
                    try:
                        n -= os.splice(pipe, fd, n, flags=os.SPLICE_F_MOVE)
                    except BlockingIOError:  # an output left non-blocking by someone else
                        select.select([], [fd], [])
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        self.can_splice = False
        except OSError as exc:
            if exc.errno in _OUTPUT_GONE_ERRNOS:
                raise OutputClosed(f"output closed: {exc.strerror}") from exc
            raise

    def _write_pieces(self, data: Any, piece: int) -> None:
        fd = self.fd
        assert fd is not None
        with memoryview(data) as view:
            view = view.cast("B")
            while view:
                try:
                    n = os.write(fd, view[:piece])
                except BlockingIOError:  # an output left non-blocking by someone else
                    select.select([], [fd], [])
                    continue
                view = view[n:]


def _reset_locks_in_child() -> None:
    for writer in list(_WRITERS):
        writer.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


class _Buffers:
    """A small free list of receive buffers, so a new connection reuses an old one's.

    One buffer is made up front: in fork mode the parent serves nothing, so every child
    would otherwise zero a new one (16 page faults for 64 KiB); it takes the parent's copy,
    and only the pages it writes to are copied.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = [bytearray(size)]

    def get(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(self.size)

    def put(self, buf: bytearray) -> None:
        if len(self._free) < 16:
            self._free.append(buf)


class _Shared:
    """What all connections of one handler class (or protocol factory) share."""

    def __init__(self, name: str, options: HandlerOptions) -> None:
        if options.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.name = name
        self.options = options
        self.observer = observer = options.observer
        self.recorder = observer if observer is not None and observer.wants_counts else None
        self.chunk_size = options.chunk_size
        self.buffers = _Buffers(options.chunk_size)
        self.writer: _OutputWriter | None = None
        if name in ("stdout", "stdio"):
            self.writer = _OutputWriter(options.output or sys.stdout.buffer)
        self.input: BinaryIO | None = None
        if name == "stdio":
            self.input = options.input or sys.stdin.buffer
        self.reply = options.reply if options.reply is not None else b""
        self.stream_stdio: _StreamStdio | None = None
        self.datagram_stdio: _DatagramStdio | None = None
        self.event_stdin: _EventStdin | None = None
        self.chargen_block = b""
        if name == "chargen":
            reps = max(1, options.chunk_size // len(CHARGEN_PERIOD))
            self.chargen_block = CHARGEN_PERIOD * reps

    def watcher(self) -> Observer | None:
        obs = self.observer
        return obs if obs is not None and obs.wants_data else None

    def datagram_reply_bytes(self) -> bytes:
        if self.options.reply_file is not None:
            with open(self.options.reply_file, "rb") as f:
                return f.read()
        return self.reply

    def release(self) -> None:
        if self.stream_stdio is not None:
            self.stream_stdio.release()
        if self.datagram_stdio is not None:
            self.datagram_stdio.release()


def _send_datagram(sock: socket.socket, data: bytes, client: Any) -> int:
    """Send one datagram to `client`; on unix sockets drop it rather than block."""
    flags = socket.MSG_DONTWAIT if _family(sock) == _AF_UNIX else 0
    try:
        return sock.sendto(data, flags, client)
    except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
        return 0  # the client's queue is full, or it is gone: the datagram is lost


def _wait_hangup(sock: socket.socket) -> None:
    """Wait until both directions of `sock` are shut (or it fails); honour its timeout."""
    poller = select.poll()
    poller.register(sock, 0)  # no events asked: only POLLHUP / POLLERR / POLLNVAL report
    timeout = sock.gettimeout()
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError("timed out waiting for the connection to end")


# -- stream adapters ---------------------------------------------------------------------------


class _StreamBuiltin(BaseRequestHandler):
    """Base of the stream builtins: counts bytes, reports the connection once when it ends.

    Subclasses implement `serve(sock)`. A client that resets or goes away ends the connection
    quietly; OutputClosed, TimeoutError and other errors go on to the server's handle_error.
    """

    builtin: ClassVar[str] = ""
    socktype: ClassVar[str] = "stream"
    options: ClassVar[HandlerOptions]
    shared: ClassVar[_Shared]
    nodelay: ClassVar[bool] = True

    received: int
    sent: int
    watch: Observer | None

    @classmethod
    def release(cls) -> None:
        """Stop background work of the class (the stdin reader of stdio); idempotent."""
        cls.shared.release()

    def setup(self) -> None:
        self.received = 0
        self.sent = 0
        self.watch = self.shared.watcher()
        sock = self.request
        if (
            self.nodelay
            and not getattr(self.server, "nodelay_inherited", False)  # sockserve's servers
            and _family(sock) in _INET_FAMILIES
        ):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def handle(self) -> None:
        try:
            self.serve(self.request)
        except _PEER_GONE:
            pass  # the client reset or closed: the connection simply ends
        finally:
            recorder = self.shared.recorder
            if recorder is not None:
                recorder.record(self.client_address, self.received, self.sent)

    def serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def send(self, sock: socket.socket, data: Any) -> None:
        sock.sendall(data)
        self.sent += len(data)
        if self.watch is not None:
            self.watch.data(self.client_address, "out", bytes(data))

    def saw(self, data: Any) -> None:
        self.received += len(data)
        if self.watch is not None:
            self.watch.data(self.client_address, "in", bytes(data))

    def linger(self, sock: socket.socket, buf: bytearray) -> None:
        """Shut our write side, then drop what the client still sends until it closes."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + LINGER_SECONDS
        limit = sock.gettimeout()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                sock.settimeout(left if limit is None else min(left, limit))
                n = sock.recv_into(buf)
                if not n:
                    return
                self.saw(memoryview(buf)[:n])
        except OSError:  # timeout, reset: either way we are done
            return


class _TransformStream(_StreamBuiltin):
    """echo and upper: each chunk received is sent back, through `transform` if set."""

    transform: ClassVar[Callable[[Any], bytes] | None] = None

    def serve(self, sock: socket.socket) -> None:
        buffers = self.shared.buffers
        pooled = buf = buffers.get()
        view = memoryview(buf)
        size = len(buf)
        transform = type(self).transform
        watch = self.watch
        grow = watch is None and size < _BULK_BUFFER
        recv_into = sock.recv_into
        sendall = sock.sendall
        received = sent = 0
        try:
            while True:
                n = recv_into(buf)
                if not n:
                    return
                received += n
                chunk = view[:n]
                if watch is not None:
                    watch.data(self.client_address, "in", bytes(chunk))
                out = chunk if transform is None else transform(chunk)
                sendall(out)
                sent += len(out)
                if watch is not None:
                    watch.data(self.client_address, "out", bytes(out))
                if grow and n == size:  # the read filled the buffer: a bulk transfer
                    grow = False
                    view.release()
                    buf = bytearray(_BULK_BUFFER)
                    view = memoryview(buf)
                    size = len(buf)
        finally:
            self.received += received
            self.sent += sent
            view.release()
            buffers.put(pooled)


def _grow_pipe(fd: int, want: int) -> int:
    """Ask for a pipe buffer of `want` bytes; return the size it has (0 if unknown)."""
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, max(4096, min(want, 1 << 30)))
    except OSError:  # over /proc/sys/fs/pipe-max-size for this user: keep what it has
        try:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return 0


class _UpperStream(_TransformStream):
    transform = staticmethod(_upper)


class _DiscardStream(_StreamBuiltin):
    """discard: read and drop until the client closes; on TCP the kernel drops the data."""

    def serve(self, sock: socket.socket) -> None:
        buffers = self.shared.buffers
        buf = buffers.get()
        try:
            if self.watch is not None:
                while n := sock.recv_into(buf):
                    self.saw(memoryview(buf)[:n])
                return
            flags = 0
            if _USE_MSG_TRUNC and _family(sock) in _INET_FAMILIES:
                flags = socket.MSG_TRUNC  # TCP: count and drop without copying to user space
            recv_into = sock.recv_into
            size = len(buf)
            received = 0
            try:
                while n := recv_into(buf, size, flags):
                    received += n
            finally:
                self.received += received
        finally:
            buffers.put(buf)


class _StdoutStream(_StreamBuiltin):
    """stdout: each chunk received goes to the output, whole (see the module docstring)."""

    def serve(self, sock: socket.socket) -> None:
        writer = self.shared.writer
        assert writer is not None
        buffers = self.shared.buffers
        buf = buffers.get()
        view = memoryview(buf)
        limit = writer.chunk_limit(len(buf))
        may_splice = (
            writer.can_splice
            and limit == len(buf)  # not the PIPE_BUF pieces of another process
            and self.watch is None
            and sock.gettimeout() is None
        )
        try:
            while n := sock.recv_into(buf, limit):
                chunk = view[:n]
                self.saw(chunk)
                writer.write(chunk)
                if may_splice and n == limit:  # a bulk transfer: stop copying through Python
                    self._splice_out(sock, writer, limit)
                    return
        finally:
            view.release()
            buffers.put(buf)

    def _splice_out(self, sock: socket.socket, writer: _OutputWriter, size: int) -> None:
        """The rest of the connection to the output through a pipe of ours with os.splice:
        socket -> pipe outside the output's lock (waiting for the client holds up nobody),
        pipe -> output under it, so each chunk still goes out whole."""
        fd = sock.fileno()
        r, w = os.pipe()
        size = max(size, _grow_pipe(w, _SPLICE_PIPE_SIZE))
        try:
            while n := os.splice(fd, w, size, flags=os.SPLICE_F_MOVE):
                self.received += n
                writer.splice_from(r, n)
        finally:
            os.close(r)
            os.close(w)


class _StdioStream(_StdoutStream):
    """stdio: received bytes to the output, stdin to the client (see the module docstring)."""

    def serve(self, sock: socket.socket) -> None:
        shared = self.shared
        stdio = shared.stream_stdio
        assert stdio is not None
        peer = stdio.attach(sock, self.client_address, self.watch)
        try:
            super().serve(sock)
            _wait_hangup(sock)  # the client is done sending; stdin may still have more for it
        finally:
            stdio.detach(peer)
            self.sent += peer.sent


class _ChargenStream(_StreamBuiltin):
    """chargen: send the pattern until the client goes away; input is ignored."""

    def serve(self, sock: socket.socket) -> None:
        block = self.shared.chargen_block
        if self.watch is not None:
            while True:
                self.send(sock, block)
        sendall = sock.sendall
        size = len(block)
        while True:
            sendall(block)
            self.sent += size


class _GreetingStream(_StreamBuiltin):
    """daytime and time: send one answer at connect, then close."""

    def serve(self, sock: socket.socket) -> None:
        self.send(sock, greeting(self.builtin))
        buf = bytearray(4096)
        self.linger(sock, buf)


class _ReplyStream(_StreamBuiltin):
    """reply: wait for the client's first bytes, send the reply, then close."""

    def serve(self, sock: socket.socket) -> None:
        buffers = self.shared.buffers
        buf = buffers.get()
        try:
            n = sock.recv_into(buf)
            if n:
                self.saw(memoryview(buf)[:n])
            path = self.options.reply_file
            if path is None:
                self.send(sock, self.shared.reply)
            else:
                with open(path, "rb") as f:
                    if self.watch is None:
                        self.sent += sock.sendfile(f)
                    else:
                        while chunk := f.read(len(buf)):
                            self.send(sock, chunk)
            self.linger(sock, buf)
        finally:
            buffers.put(buf)


_STREAM_CLASSES: dict[str, type[_StreamBuiltin]] = {
    "echo": _TransformStream,
    "upper": _UpperStream,
    "discard": _DiscardStream,
    "stdout": _StdoutStream,
    "stdio": _StdioStream,
    "chargen": _ChargenStream,
    "daytime": _GreetingStream,
    "time": _GreetingStream,
    "reply": _ReplyStream,
}


# -- datagram adapter ----------------------------------------------------------------------------


class _DatagramBuiltin(BaseRequestHandler):
    """Base of the datagram builtins: one request is one datagram; the reply is one datagram.

    The per-datagram path is kept short (it runs once per packet): the answer function is
    chosen once per class (`answer`: the same results as `respond_datagram`).
    """

    builtin: ClassVar[str] = ""
    socktype: ClassVar[str] = "dgram"
    options: ClassVar[HandlerOptions]
    shared: ClassVar[_Shared]
    reply: ClassVar[bytes] = b""
    answer: ClassVar[Callable[[Any], Any]]

    @classmethod
    def release(cls) -> None:
        """Stop background work of the class (the stdin reader of stdio); idempotent."""
        cls.shared.release()

    def handle(self) -> None:
        data, sock = self.request
        self.serve_datagram(data, sock, self.client_address)

    @classmethod
    def serve_datagram(cls, data: Any, sock: Any, client: Any) -> None:
        """Answer one datagram; what `handle` does, callable without a handler instance
        (the tool's servers call it directly for every datagram that waits)."""
        shared = cls.shared
        recorder = shared.recorder
        watch = shared.watcher()
        sent = 0
        try:
            if watch is not None:
                watch.data(client, "in", bytes(data))
            writer = shared.writer
            if writer is not None:
                if shared.datagram_stdio is not None:
                    shared.datagram_stdio.note_sender(sock, client)
                if data:
                    writer.write(data)
                return
            reply = cls.answer(data)
            if reply is None or not client:
                return
            sent = _send_datagram(sock, reply, client)
            if watch is not None and sent:
                watch.data(client, "out", reply)
        finally:
            if recorder is not None:
                recorder.record(client, len(data), sent)


def _datagram_answer(name: str, reply: bytes) -> Callable[[Any], Any]:
    """The function `respond_datagram(name, data, reply=reply)` amounts to, chosen once."""
    if name == "echo":
        return lambda data: data if type(data) is bytes else bytes(data)
    if name == "upper":
        return _upper
    if name == "chargen":
        return chargen_datagram
    if name == "reply":
        return lambda data: reply
    return functools.partial(respond_datagram, name, reply=reply)  # the clock, or no answer


# -- public constructors -------------------------------------------------------------------------


def _class_name(name: str, kind: str) -> str:
    return f"{name.capitalize()}{kind}Handler"


def stream_handler(name: str, options: HandlerOptions) -> type[BaseRequestHandler]:
    """A new request handler class for stream servers running the builtin `name`.

    Raises ValueError for an unknown name.
    """
    _check_name(name)
    shared = _Shared(name, options)
    if name == "stdio":
        from .builtin_stdin import _StreamStdio

        assert shared.input is not None
        shared.stream_stdio = _StreamStdio(shared.input, shared.chunk_size)
    attrs = {"builtin": name, "options": options, "shared": shared, "__module__": __name__}
    return type(_class_name(name, "Stream"), (_STREAM_CLASSES[name],), attrs)


def datagram_handler(name: str, options: HandlerOptions) -> type[BaseRequestHandler]:
    """A new request handler class for datagram servers running the builtin `name`.

    Raises ValueError for an unknown name, OSError when `reply_file` cannot be read.
    """
    _check_name(name)
    shared = _Shared(name, options)
    if name == "stdio":
        from .builtin_stdin import _DatagramStdio

        assert shared.input is not None
        shared.datagram_stdio = _DatagramStdio(shared.input, shared.chunk_size, shared.watcher())
    attrs: dict[str, Any] = {
        "builtin": name,
        "options": options,
        "shared": shared,
        "__module__": __name__,
    }
    if name == "reply":
        attrs["reply"] = shared.datagram_reply_bytes()
    attrs["answer"] = staticmethod(_datagram_answer(name, attrs.get("reply", b"")))
    return type(_class_name(name, "Datagram"), (_DatagramBuiltin,), attrs)


def protocol_factory(
    name: str, socktype: Literal["stream", "dgram"], options: HandlerOptions
) -> Callable[[], asyncio.BaseProtocol]:
    """A factory of asyncio protocols running the builtin `name`, for the event mode.

    Use it with `loop.create_server` / `create_unix_server` (stream) or
    `create_datagram_endpoint` (dgram). Raises ValueError for an unknown name or socktype.
    An exception in a protocol callback (OutputClosed from stdout/stdio) reaches the loop's
    exception handler as asyncio reports it, with the transport closed.
    """
    _check_name(name)
    if socktype not in ("stream", "dgram"):
        raise ValueError(f"socktype must be 'stream' or 'dgram', not {socktype!r}")
    from .builtin_protocols import shared_protocol_factory  # event mode only: loaded here

    return shared_protocol_factory(_Shared(name, options), socktype)
