"""The builtins as request handlers for stream servers (TCP, unix), in sync, thread and fork mode.

Streams are read in chunks of at most `chunk_size` bytes into a preallocated buffer (stdout's
line framing holds a bounded partial line), so no client can make the server allocate without
limit. TCP connections get
TCP_NODELAY, so small replies leave at once. Fast paths, invisible to clients and observers:
echo and upper go on with a bigger buffer once a read fills theirs (`BULK_BUFFER`); discard on
TCP drops data in the kernel (MSG_TRUNC); stdout and stdio, raw (--raw), move bulk data with
`os.splice` (`StdoutStream.splice_out`; line framing reads every byte); `--reply-file` goes out
with `socket.sendfile`. None of them runs on a watched socket (`sockserve.watch`, -vv), which
sees and reports every chunk itself.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ..events import address_of
from ..socketserver import BaseRequestHandler
from ..watch import is_watched
from .cores import LINGER_SECONDS, OneAnswer, Phase, check_name, chunk_transform, greeting
from .framing import LineBuffer
from .output import OutputClosed, OutputFailed, OutputWriter
from .shared import INET_FAMILIES, PEER_GONE, HandlerOptions, Shared

if TYPE_CHECKING:  # stdin is loaded for stdio only
    from .stdin import StreamStdio

USE_MSG_TRUNC = sys.platform.startswith("linux") and hasattr(socket, "MSG_TRUNC")
#: Pipe size asked for the splice of stdout/stdio: bigger pipes move more per system call.
SPLICE_PIPE_SIZE = 1 << 20
#: The buffer echo and upper go on with once a read fills the connection's buffer (bulk data):
#: fewer system calls per byte. Copied, not spliced: on loopback, pages spliced into a socket
#: make the receiving client's queue overflow (the kernel collapses it, prunes it and drops
#: segments, then retransmits after timeouts). Larger buffers brought those drops back; see
#: benchmarks/RESULTS.md for the sizes measured.
BULK_BUFFER = 384 * 1024


class StreamBuiltin(BaseRequestHandler):
    """Base of the stream builtins: counts bytes, reports the connection once when it ends.

    On a watched socket (`watched`) the fast paths that bypass the socket object are off.

    Subclasses implement `serve(sock)`. A client that resets or goes away ends the connection
    quietly; OutputClosed, TimeoutError and other errors go on to the server's handle_error.
    `takes_client`: the server hands it the peer as a `Client` (`parts.client_ids`); the
    handler keeps the plain `client_address` and reports the `Client`.
    """

    builtin: ClassVar[str] = ""
    socktype: ClassVar[str] = "stream"
    options: ClassVar[HandlerOptions]
    shared: ClassVar[Shared]
    nodelay: ClassVar[bool] = True
    takes_client: ClassVar[bool] = True

    received: int
    sent: int
    watched: bool

    @classmethod
    def release(cls) -> None:
        """Stop background work of the class (the stdin reader of stdio); idempotent."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.client = client_address  # what events get: a `Client`, or the address
        super().__init__(request, address_of(client_address), server)

    def setup(self) -> None:
        self.received = 0
        self.sent = 0
        sock = self.request
        self.watched = is_watched(sock)
        if (
            self.nodelay
            and not getattr(self.server, "nodelay_inherited", False)  # sockserve's servers
            and sock.family in INET_FAMILIES
        ):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def handle(self) -> None:
        try:
            self.serve(self.request)
        except PEER_GONE:
            pass  # the client reset or closed: the connection simply ends
        finally:
            recorder = self.shared.recorder
            if recorder is not None:
                recorder.record(self.client, self.received, self.sent)

    def serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def send(self, sock: socket.socket, data: Any) -> None:
        sock.sendall(data)
        self.sent += len(data)

    def saw(self, data: Any) -> None:
        self.received += len(data)


class TransformStream(StreamBuiltin):
    """echo and upper: each chunk received is sent back, through `cores.chunk_transform`."""

    def serve(self, sock: socket.socket) -> None:
        buffers = self.shared.buffers
        pooled = buf = buffers.get()
        view = memoryview(buf)
        size = len(buf)
        transform = chunk_transform(self.builtin)
        grow = not self.watched and size < BULK_BUFFER
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
                out = chunk if transform is None else transform(chunk)
                sendall(out)
                sent += len(out)
                if grow and n == size:  # the read filled the buffer: a bulk transfer
                    grow = False
                    view.release()
                    buf = bytearray(BULK_BUFFER)
                    view = memoryview(buf)
                    size = len(buf)
        finally:
            self.received += received
            self.sent += sent
            view.release()
            buffers.put(pooled)


class DiscardStream(StreamBuiltin):
    """discard: read and drop until the client closes; on TCP the kernel drops the data."""

    def serve(self, sock: socket.socket) -> None:
        buffers = self.shared.buffers
        buf = buffers.get()
        try:
            if self.watched:  # every chunk is seen: no MSG_TRUNC
                while n := sock.recv_into(buf):
                    self.saw(memoryview(buf)[:n])
                return
            flags = 0
            if USE_MSG_TRUNC and sock.family in INET_FAMILIES:
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


def grow_pipe(fd: int, want: int) -> int:
    """Ask for a pipe buffer of `want` bytes; return the size it has (0 if unknown)."""
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, max(4096, min(want, 1 << 30)))
    except OSError:  # over /proc/sys/fs/pipe-max-size for this user: keep what it has
        try:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return 0


class StdoutStream(StreamBuiltin):
    """stdout: what is received goes to the output (see `output`): in whole lines through a
    `LineBuffer` (framing), or, raw, each chunk whole as it came.

    Raw, bulk data moves with `os.splice` (socket -> pipe -> output, no copy through Python)
    once a read fills the whole buffer, towards an output that is a pipe or a regular file,
    and only when nobody watches the data and the socket is blocking.
    """

    def serve(self, sock: socket.socket) -> None:
        writer = self.shared.writer
        assert writer is not None
        if self.shared.lines:
            self.serve_lines(sock, writer)
            return
        buffers = self.shared.buffers
        buf = buffers.get()
        view = memoryview(buf)
        limit = writer.chunk_limit(len(buf))
        may_splice = (
            writer.can_splice
            and limit == len(buf)  # not the PIPE_BUF pieces of another process
            and not self.watched
            and sock.gettimeout() is None
        )
        try:
            while n := sock.recv_into(buf, limit):
                chunk = view[:n]
                self.saw(chunk)
                writer.write(chunk)
                if may_splice and n == limit:  # a bulk transfer: stop copying through Python
                    self.splice_out(sock, writer, limit)
                    return
        finally:
            view.release()
            buffers.put(buf)

    def serve_lines(self, sock: socket.socket, writer: OutputWriter) -> None:
        """Write whole lines; the partial last line when the client closes (or resets)."""
        buffers = self.shared.buffers
        buf = buffers.get()
        lines = LineBuffer()
        output_ok = True
        try:
            while n := sock.recv_into(buf):
                self.received += n
                out = lines.feed(buf, n)
                if out is not None:
                    writer.write_lines(out)
        except (OutputClosed, OutputFailed):
            output_ok = False
            raise
        finally:
            buffers.put(buf)
            rest = lines.take()
            if rest and output_ok:
                writer.write_lines(rest)

    def splice_out(self, sock: socket.socket, writer: OutputWriter, size: int) -> None:
        """Move the rest of the connection to the output through a pipe of ours.

        socket -> pipe outside the output's lock (waiting for the client holds up nobody),
        pipe -> output under it, so each chunk still goes out whole. The pipe is enlarged to
        SPLICE_PIPE_SIZE where the system allows.
        """
        fd = sock.fileno()
        r, w = os.pipe()
        size = max(size, grow_pipe(w, SPLICE_PIPE_SIZE))
        try:
            while n := os.splice(fd, w, size, flags=os.SPLICE_F_MOVE):
                self.received += n
                writer.splice_from(r, n)
        finally:
            os.close(r)
            os.close(w)


class StdioStream(StdoutStream):
    """stdio, like `nc -l`: received bytes to the output, stdin to the client (`stdin`)."""

    stdio: ClassVar[StreamStdio]  # made by `stream_handler`

    @classmethod
    def release(cls) -> None:
        cls.stdio.release()

    def serve(self, sock: socket.socket) -> None:
        conn: Any = sock
        if getattr(sock, "encrypted", False):  # TLS: the stdin thread writes as this one reads
            from ..tls_duplex import SocketTls

            conn = SocketTls(sock)
        peer = self.stdio.attach(conn)
        try:
            super().serve(conn)
            peer.client_done()  # from now on, stdin it never gets goes to the next client
            wait_hangup(conn)  # the client is done sending; stdin may still have more for it
        finally:
            self.stdio.detach(peer)
            self.sent += peer.sent
            if conn is not sock:
                conn.release()


def wait_hangup(sock: socket.socket) -> None:
    """Wait until both directions of `sock` are shut (or it fails); honour its timeout."""
    poller = select.poll()
    poller.register(sock, 0)  # no events asked: only POLLHUP / POLLERR / POLLNVAL report
    timeout = sock.gettimeout()
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError("timed out waiting for the connection to end")


class ChargenStream(StreamBuiltin):
    """chargen: send the pattern until the client goes away; what it sends is read and dropped
    (RFC 864), so a client that sends while it reads never fills its queue and blocks.

    Sends never block (MSG_DONTWAIT): while the client's window is full, a poll waits for room
    or for input, which is drained. The socket's timeout (--timeout) bounds that wait.
    """

    def serve(self, sock: socket.socket) -> None:
        block = self.shared.chargen_block  # whole periods: each send goes on where the last ended
        size = len(block)
        ssl = sys.modules.get("ssl")  # loaded already when TLS is on
        if ssl is not None and isinstance(sock, ssl.SSLSocket):
            # A TLS socket takes no MSG_DONTWAIT: the pattern goes out, its input waits.
            while True:
                sock.sendall(block)
                self.sent += size
        pattern = memoryview(block * 2)  # a send may start anywhere in the block
        buffers = self.shared.buffers
        buf = buffers.get()
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        timeout = sock.gettimeout()
        wait_ms = None if timeout is None else timeout * 1000
        reading = True
        send, recv_into = sock.send, sock.recv_into
        dontwait = socket.MSG_DONTWAIT
        start = 0
        try:
            while True:
                try:
                    n = send(pattern[start : start + size], dontwait)
                except BlockingIOError:
                    if not poller.poll(wait_ms):
                        raise TimeoutError("timed out sending the chargen pattern") from None
                    n = 0
                self.sent += n
                start = (start + n) % size
                while reading:  # drop what the client sent meanwhile
                    try:
                        got = recv_into(buf, len(buf), dontwait)
                    except BlockingIOError:
                        break
                    if not got:  # the client's EOF: it still reads the pattern
                        reading = False
                        poller.modify(sock, select.POLLOUT)
                    self.received += got
        finally:
            pattern.release()
            buffers.put(buf)


class AnswerStream(StreamBuiltin):
    """reply, daytime and time: one answer, then close (`cores.OneAnswer`).

    reply waits for the client's first bytes (or its EOF) and sends the reply bytes or the
    file `reply_file` (with sendfile); daytime and time answer at connect.
    """

    def serve(self, sock: socket.socket) -> None:
        conn = OneAnswer(waits_for_request=self.builtin == "reply")
        buffers = self.shared.buffers
        buf = buffers.get()
        try:
            if conn.phase is Phase.WAITING:
                n = sock.recv_into(buf)
                if n:
                    self.saw(memoryview(buf)[:n])
                conn.receive(memoryview(buf)[:n])
            self.send_answer(sock, buf)
            conn.answer_sent()
            if conn.phase is Phase.LINGERING:
                self.linger(sock, buf, conn)
        finally:
            buffers.put(buf)

    def send_answer(self, sock: socket.socket, buf: bytearray) -> None:
        if self.builtin != "reply":
            self.send(sock, greeting(self.builtin))
            return
        path = self.options.reply_file
        if path is None:
            self.send(sock, self.shared.reply)
            return
        with open(path, "rb") as f:
            if not self.watched:
                self.sent += sock.sendfile(f)
            else:
                while chunk := f.read(len(buf)):
                    self.send(sock, chunk)

    def linger(self, sock: socket.socket, buf: bytearray, conn: OneAnswer) -> None:
        """Shut our write side, then drop what the client still sends until it closes."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + LINGER_SECONDS
        limit = sock.gettimeout()
        try:
            while conn.phase is Phase.LINGERING:
                left = deadline - time.monotonic()
                if left <= 0:
                    conn.linger_over()
                    return
                sock.settimeout(left if limit is None else min(left, limit))
                n = sock.recv_into(buf)
                if n:
                    self.saw(memoryview(buf)[:n])
                conn.receive(memoryview(buf)[:n])
        except OSError:  # timeout, reset: either way we are done
            conn.linger_over()


STREAM_CLASSES: dict[str, type[StreamBuiltin]] = {
    "echo": TransformStream,
    "upper": TransformStream,
    "discard": DiscardStream,
    "stdout": StdoutStream,
    "stdio": StdioStream,
    "chargen": ChargenStream,
    "daytime": AnswerStream,
    "time": AnswerStream,
    "reply": AnswerStream,
}


def stream_handler(name: str, options: HandlerOptions) -> type[BaseRequestHandler]:
    """A new request handler class for stream servers running the builtin `name`.

    Raises ValueError for an unknown name (and for forward without `options.upstream`).
    """
    check_name(name)
    if name == "forward":
        from .forward import forward_stream_handler  # forward only

        return forward_stream_handler(options)
    shared = Shared(name, options)
    attrs: dict[str, Any] = {
        "builtin": name,
        "options": options,
        "shared": shared,
        "__module__": __name__,
    }
    if name == "stdio":
        from .stdin import StreamStdio  # stdio only

        assert shared.input is not None
        attrs["stdio"] = StreamStdio(shared.input, shared.chunk_size)
    if shared.room is not None:
        from .broadcast import RoomStream, ThreadRoom  # broadcast and chat only

        attrs["hub"] = ThreadRoom(shared.room, shared.observer)
        return type(f"{name.capitalize()}StreamHandler", (RoomStream,), attrs)
    if name == "script":
        from .script_stream import ScriptStream  # script only

        attrs["store"] = {}
        return type("ScriptStreamHandler", (ScriptStream,), attrs)
    return type(f"{name.capitalize()}StreamHandler", (STREAM_CLASSES[name],), attrs)
