"""stdin for the stdio builtin: what it reads goes to the clients.

Loaded for stdio only. In sync, thread and fork mode one reader thread per handler class
(`StdinReader`) sends what it reads:

- streams (`StreamStdio`): to every connected client (in sync mode there is one). A client
  that has finished sending (half-close) stays connected and keeps receiving stdin until stdin
  ends or it goes away. At stdin EOF every connection's write side is shut (clients see EOF),
  and so is that of any later connection. The reader thread runs only while clients are
  connected; stdin read while none is connected waits for the next one. So does stdin that
  no client got: a TCP client that sent its EOF may have closed entirely, which TCP tells
  only by resetting the connection when data reaches it, so what is sent to such a client
  counts once acknowledged (`delivered`), and goes to the next client otherwise. Its EOF
  counts from when it arrived (`client_sent_eof`), whether or not the handler has read up to
  it yet, as in event mode. A client
  that does not read stalls stdin for the others. In fork mode each child reads stdin for
  its own client, so a chunk of stdin goes to one of them; what a child read for a client
  that had closed goes to the next child through a pipe (`StreamStdio.leftover`).
- datagrams (`DatagramStdio`): to the sender of the latest datagram, one datagram per read (at
  most 65507 bytes on UDP). The reader starts at the first datagram and stops at stdin EOF,
  when the server socket closes (checked every 0.2 s), or at `release()`. In fork mode stdin
  is not forwarded.

In event mode the loop reads stdin itself, with no thread (`EventStdin`), and pauses while a
client's transport is full.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from .output import fileno
from .shared import INET_FAMILIES, MAX_UDP_PAYLOAD, send_datagram


class StdinReader:
    """A thread reading `source` in chunks, handing each to `deliver`, until EOF or `stop()`.

    `alive`, when given, is checked at least every 0.2 s; the thread ends when it returns False.
    """

    def __init__(
        self,
        source: BinaryIO,
        chunk_size: int,
        deliver: Callable[[bytes], None],
        at_eof: Callable[[], None],
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.source = source
        self.fd = fileno(source)
        self.chunk_size = chunk_size
        self.deliver = deliver
        self.at_eof = at_eof
        self.alive = alive
        self.lock = threading.Lock()
        self.stopping = False
        self.wake: tuple[int, int] | None = os.pipe()
        self.thread = threading.Thread(target=self._run, name="sockserve-stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (from any other thread)."""
        with self.lock:
            self.stopping = True
            if self.wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self.wake[1], b"x")
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def _run(self) -> None:
        try:
            if self.fd is None:
                self._run_unselectable()
            else:
                self._run_fd(self.fd)
        finally:
            with self.lock:
                if self.wake is not None:
                    for fd in self.wake:
                        os.close(fd)
                    self.wake = None

    def _run_fd(self, fd: int) -> None:
        assert self.wake is not None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self.wake[0], select.POLLIN)
        timeout = None if self.alive is None else 200
        while not self.stopping:
            events = poller.poll(timeout)
            if self.stopping or (self.alive is not None and not self.alive()):
                return
            if not any(efd == fd for efd, _ in events):
                continue
            try:
                data = os.read(fd, self.chunk_size)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # e.g. EIO from a terminal that went away: as good as EOF
            if not data:
                self.at_eof()
                return
            self.deliver(data)

    def _run_unselectable(self) -> None:
        read = getattr(self.source, "read1", self.source.read)
        while not self.stopping:
            if self.alive is not None and not self.alive():
                return
            data = read(self.chunk_size)
            if not data:
                self.at_eof()
                return
            self.deliver(data)


#: How long stdin sent to a TCP client that sent its EOF may wait for its acknowledgement.
CONFIRM_SECONDS = 2.0
#: The ioctl that tells how much of what a TCP socket sent is not acknowledged yet (Linux).
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None


def unconfirmed(sock: Any) -> int | None:
    """Bytes `sock` (TCP) sent that its peer has not acknowledged; None: reset, or the system
    cannot tell (then the bytes are taken as delivered: 0)."""
    if _SIOCOUTQ is None:
        return 0
    poller = select.poll()
    poller.register(sock, 0)  # POLLERR / POLLHUP only: reset, or shut both ways
    if poller.poll(0):
        return None
    try:
        out = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(out, sys.byteorder)


#: poll's "the peer shut its sending side" (Linux): set once the peer's EOF has arrived, read
#: or not.
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)


def client_sent_eof(sock: Any) -> bool:
    """Whether the peer's EOF has reached `sock`, even if the handler has not read up to it
    yet (False where the system cannot tell)."""
    if not _POLLRDHUP:
        return False
    poller = select.poll()
    poller.register(sock, _POLLRDHUP)
    return bool(poller.poll(0))


def delivered(sock: socket.socket) -> bool:
    """Wait until what `sock` sent is acknowledged (True) or the connection is reset
    (False: the client had closed entirely, not only its sending side, and never got it).

    TCP cannot tell a client that closed from one that only sent its EOF until data sent to
    it is answered: acknowledged, or reset. After CONFIRM_SECONDS, or where the system does
    not tell (no SIOCOUTQ), True.
    """
    deadline = time.monotonic() + CONFIRM_SECONDS
    pause = 0.001
    while (left := unconfirmed(sock)) != 0:
        if left is None:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(pause)  # an acknowledgement wakes no poll: ask again, less and less often
        pause = min(pause * 2, 0.05)
    return True


class StreamPeer:
    """One stream connection as the stdin reader sees it.

    Once its client has sent its EOF, a TCP client may be gone entirely: what is sent to it
    then counts only once acknowledged (`delivered`). The EOF counts from when it arrived
    (`client_sent_eof`), not from when the handler read it (`client_done`): the handler may
    still be writing out what came before it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.open = True
        self.sent = 0
        self.tcp = sock.family in INET_FAMILIES
        self.confirm = False

    def client_done(self) -> None:
        """The client sent its EOF: it may still read (half-close), or be gone (TCP)."""
        self.confirm = self.tcp

    def send(self, data: bytes) -> bool:
        """Send `data`; False when the client did not get it (gone)."""
        with self.lock:
            if not self.open:
                return False
            try:
                confirm = self.confirm or (self.tcp and client_sent_eof(self.sock))
                self.sock.sendall(data)
                if confirm and not delivered(self.sock):
                    raise ConnectionResetError("the client had closed")
            except OSError:  # gone, reset, or too slow for its timeout: stop sending to it
                self.open = False
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                return False
            self.sent += len(data)
            return True

    def shut_write(self) -> None:
        with self.lock:
            if self.open:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop sending to this peer; wakes a send blocked on it first."""
        if not self.lock.acquire(blocking=False):
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.lock.acquire()
        self.open = False
        self.lock.release()


class StreamStdio:
    """stdin for the stream connections of one class: one reader while clients are connected.

    Lock order: `gate` (reader start/stop) before `lock` (peer list) or a peer's lock; the
    reader thread takes `lock` and peer locks only, never `gate`.

    In fork mode a child's stdin that its client never got goes into the `leftover` pipe,
    which every child inherits, for the next child to send first.
    """

    def __init__(self, source: BinaryIO, chunk_size: int) -> None:
        self.source = source
        self.chunk_size = chunk_size
        self.gate = threading.Lock()
        self.lock = threading.Lock()
        self.peers: list[StreamPeer] = []
        self.pending: list[bytes] = []
        self.reader: StdinReader | None = None
        self.eof = False
        self.creator_pid = os.getpid()
        self.leftover: tuple[int, int] | None = os.pipe()
        for fd in self.leftover:
            os.set_blocking(fd, False)

    def attach(self, sock: socket.socket) -> StreamPeer:
        peer = StreamPeer(sock)
        if self.leftover is not None and os.getpid() != self.creator_pid:
            self.pending[:0] = _read_available(self.leftover[0])  # an earlier child's
        with self.gate:
            with peer.lock:  # stdin read meanwhile waits until the pending chunks are out
                with self.lock:
                    self.peers.append(peer)
                    pending, self.pending = self.pending, []
                    eof = self.eof
                    if not eof and self.reader is None:
                        self.reader = StdinReader(
                            self.source, self.chunk_size, self._deliver, self._at_eof
                        )
                        self.reader.start()
            for data in pending:
                peer.send(data)
            if eof:
                peer.shut_write()
        return peer

    def detach(self, peer: StreamPeer) -> None:
        peer.close()
        with self.gate:
            with self.lock:
                self.peers.remove(peer)
                reader = None
                if not self.peers:
                    reader, self.reader = self.reader, None
            if reader is not None:
                reader.stop()
        if self.pending and self.leftover is not None and os.getpid() != self.creator_pid:
            with contextlib.suppress(OSError):  # a full pipe: lost, as without it
                os.write(self.leftover[1], b"".join(self.pending))
            self.pending = []

    def release(self) -> None:
        with self.gate:
            with self.lock:
                reader, self.reader = self.reader, None
            if reader is not None:
                reader.stop()
            leftover, self.leftover = self.leftover, None
        if leftover is not None:
            for fd in leftover:
                os.close(fd)

    def _deliver(self, data: bytes) -> None:
        """Send `data` to every client; when none got it (all gone), to those connected now,
        or keep it for the next one."""
        while True:
            with self.lock:
                peers = [peer for peer in self.peers if peer.open]
                if not peers:
                    self.pending.append(data)
                    return
            if any([peer.send(data) for peer in peers]):
                return

    def _at_eof(self) -> None:
        with self.lock:
            self.eof = True
            peers = list(self.peers)
        for peer in peers:
            peer.shut_write()


def _read_available(fd: int) -> list[bytes]:
    """What a non-blocking pipe holds now."""
    chunks = []
    with contextlib.suppress(OSError):  # BlockingIOError: all read
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return chunks


class DatagramStdio:
    """stdin for a datagram server: sent to the sender of the latest datagram, each datagram
    told to `on_sent(client, size)` (`Events.sent`: the run's bytes out)."""

    def __init__(
        self,
        source: BinaryIO,
        chunk_size: int,
        on_sent: Callable[[Any, int], None] | None = None,
    ) -> None:
        self.source = source
        self.chunk_size = chunk_size
        self.on_sent = on_sent
        self.creator_pid = os.getpid()
        self.lock = threading.Lock()
        self.target: tuple[socket.socket, Any] | None = None
        self.reader: StdinReader | None = None
        self.eof = False

    def note_sender(self, sock: socket.socket, client: Any) -> None:
        """Make `client` the destination of stdin; start reading stdin at the first one."""
        if not client or os.getpid() != self.creator_pid:
            return
        with self.lock:
            self.target = (sock, client)
            if self.eof or self.reader is not None:
                return
            limit = self.chunk_size
            if sock.family in INET_FAMILIES:
                limit = min(limit, MAX_UDP_PAYLOAD)
            self.reader = StdinReader(
                self.source, limit, self._deliver, self._at_eof, alive=lambda: sock.fileno() != -1
            )
            self.reader.start()

    def _deliver(self, data: bytes) -> None:
        with self.lock:
            target = self.target
        if target is None:
            return
        sock, client = target
        sent = send_datagram(sock, data, client)  # a watched socket (-vv) reports it
        if sent and self.on_sent is not None:
            self.on_sent(client, sent)

    def _at_eof(self) -> None:
        with self.lock:
            self.eof = True

    def release(self) -> None:
        with self.lock:
            reader, self.reader = self.reader, None
        if reader is not None:
            reader.stop()


class EventStdin:
    """stdin in the event loop, for the stdio protocols of one factory: no thread.

    A pipe or terminal is watched with `add_reader`; a regular file (which a selector cannot
    watch) or a file object without a descriptor is read chunk by chunk from `call_soon`.
    Reading stops while no client is connected or while a client's transport is full.
    """

    def __init__(self, source: BinaryIO, chunk_size: int) -> None:
        self.source = source
        self.fd = fileno(source)
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

    def give_back(self, chunks: list[bytes]) -> None:
        """Chunks a client never got (it was gone): to the other clients, or the next one."""
        for data in chunks:
            self._hand_out(data)

    def _hand_out(self, data: bytes) -> None:
        if not any([proto.stdin_data(data) for proto in list(self.peers)]):
            self.pending.append(data)

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
        self._hand_out(data)
        if self.reading == "soon":
            self.handle = self.loop.call_soon(self._read)
