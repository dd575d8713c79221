"""stdin for the stdio builtin in sync, thread and fork modes (`builtin_handlers`).

`stream_handler` and `datagram_handler` load this module for stdio only. One reader thread
per handler class sends what it reads to the connected stream clients (`_StreamStdio`), or
to the sender of the latest datagram (`_DatagramStdio`); the module docstring of
`builtin_handlers` states the rules. The event mode reads stdin in its loop instead
(`builtin_protocols`).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

from .builtin_handlers import _INET_FAMILIES, _MAX_UDP_PAYLOAD, _fileno, _send_datagram

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

    from .builtin_handlers import Observer


class _StdinReader:
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
        self.fd = _fileno(source)
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


class _StreamPeer:
    """One stream connection as the stdin reader sees it."""

    def __init__(self, sock: socket.socket, client: Any, watch: Observer | None) -> None:
        self.sock = sock
        self.client = client
        self.watch = watch
        self.lock = threading.Lock()
        self.open = True
        self.sent = 0

    def send(self, data: bytes) -> None:
        with self.lock:
            if not self.open:
                return
            try:
                self.sock.sendall(data)
            except OSError:  # gone, reset, or too slow for its timeout: stop sending to it
                self.open = False
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                return
            self.sent += len(data)
            if self.watch is not None:
                self.watch.data(self.client, "out", data)

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


class _StreamStdio:
    """stdin for the stream connections of one class: one reader while clients are connected.

    Lock order: `gate` (reader start/stop) before `lock` (peer list) or a peer's lock; the
    reader thread takes `lock` and peer locks only, never `gate`.
    """

    def __init__(self, source: BinaryIO, chunk_size: int) -> None:
        self.source = source
        self.chunk_size = chunk_size
        self.gate = threading.Lock()
        self.lock = threading.Lock()
        self.peers: list[_StreamPeer] = []
        self.pending: list[bytes] = []
        self.reader: _StdinReader | None = None
        self.eof = False

    def attach(self, sock: socket.socket, client: Any, watch: Observer | None) -> _StreamPeer:
        peer = _StreamPeer(sock, client, watch)
        with self.gate:
            with peer.lock:  # stdin read meanwhile waits until the pending chunks are out
                with self.lock:
                    self.peers.append(peer)
                    pending, self.pending = self.pending, []
                    eof = self.eof
                    if not eof and self.reader is None:
                        self.reader = _StdinReader(
                            self.source, self.chunk_size, self._deliver, self._at_eof
                        )
                        self.reader.start()
            for data in pending:
                peer.send(data)
            if eof:
                peer.shut_write()
        return peer

    def detach(self, peer: _StreamPeer) -> None:
        peer.close()
        with self.gate:
            with self.lock:
                self.peers.remove(peer)
                reader = None
                if not self.peers:
                    reader, self.reader = self.reader, None
            if reader is not None:
                reader.stop()

    def release(self) -> None:
        with self.gate:
            with self.lock:
                reader, self.reader = self.reader, None
            if reader is not None:
                reader.stop()

    def _deliver(self, data: bytes) -> None:
        with self.lock:
            peers = list(self.peers)
            if not peers:
                self.pending.append(data)
                return
        for peer in peers:
            peer.send(data)

    def _at_eof(self) -> None:
        with self.lock:
            self.eof = True
            peers = list(self.peers)
        for peer in peers:
            peer.shut_write()


class _DatagramStdio:
    """stdin for a datagram server: sent to the sender of the latest datagram."""

    def __init__(self, source: BinaryIO, chunk_size: int, watch: Observer | None) -> None:
        self.source = source
        self.chunk_size = chunk_size
        self.watch = watch
        self.creator_pid = os.getpid()
        self.lock = threading.Lock()
        self.target: tuple[socket.socket, Any] | None = None
        self.reader: _StdinReader | None = None
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
            if sock.family in _INET_FAMILIES:
                limit = min(limit, _MAX_UDP_PAYLOAD)
            self.reader = _StdinReader(
                self.source, limit, self._deliver, self._at_eof, alive=lambda: sock.fileno() != -1
            )
            self.reader.start()

    def _deliver(self, data: bytes) -> None:
        with self.lock:
            target = self.target
        if target is None:
            return
        sock, client = target
        if _send_datagram(sock, data, client) and self.watch is not None:
            self.watch.data(client, "out", data)

    def _at_eof(self) -> None:
        with self.lock:
            self.eof = True

    def release(self) -> None:
        with self.lock:
            reader, self.reader = self.reader, None
        if reader is not None:
            reader.stop()
