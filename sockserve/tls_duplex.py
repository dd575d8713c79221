"""A TLS connection that one thread reads while another writes: the relays of forward (a
thread per direction) and stdio (the stdin thread writes, the handler reads).

OpenSSL's SSL object must never be used by two threads at once. Here every call into it is
made under one lock and never blocks: the lock is held only while OpenSSL works on bytes in
hand, and waiting for the socket (poll) happens outside it. So each direction stays
independent: one may wait (a destination that does not read, a fault stage that sleeps)
while the other goes on. Two kinds, with the same methods (those the relays call):

- `BioTls`, the upstream of ``--forward-tls`` (made by `sockserve.upstream_tls`): an
  ssl.SSLObject over memory BIOs; the reading thread reads the raw socket, the records to
  send go out under a send lock; a watch (``--faults-to upstream``) sees the plaintext.
  Its half-close is exact: what arrived is decrypted first, then close_notify and a FIN go
  out, and what the peer sends afterwards still arrives.
- `SocketTls`, a served connection (the ssl.SSLSocket that `parts.tls` made and shook
  hands on): the socket made non-blocking, each SSLSocket call under the lock, a watch
  (`WatchedTlsSocket`) run outside it. CPython's SSLSocket.unwrap calls SSL_shutdown
  twice, the second time reading the socket, and a record read then is an error
  ("application data after close notify") that breaks the connection. So its close_notify
  goes out only once nothing waits to be read (the reader is given `CLOSE_NOTIFY_WAIT` to
  take it); otherwise the half-close is a bare FIN, which a peer reads as a ragged EOF.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Any

__all__ = ["CLOSE_NOTIFY_WAIT", "BioTls", "SocketTls", "tls_reason"]

#: What one SSL_write takes at most (a few TLS records).
WRITE_PIECE = 65536
#: What one raw read of a `BioTls` takes at most.
RAW_READ = 65536
#: How long a `SocketTls` half-close waits for its reader to take what came in first.
CLOSE_NOTIFY_WAIT = 1.0


def wait_for(sock: socket.socket, event: int, timeout: float | None) -> None:
    """Wait until `sock` is ready for `event` (POLLIN, POLLOUT) or fails; TimeoutError
    after `timeout` seconds (None: no limit)."""
    poller = select.poll()
    poller.register(sock, event)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError("timed out")


def readable_now(sock: socket.socket) -> bool:
    """True if `sock` has something to read (data, an EOF, an error) at once."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _OverSocket:
    """What both kinds answer of the socket they run over (`sock`), as the relays ask a
    socket; `timeout` is their own (each wait's bound), not the non-blocking socket's."""

    sock: Any
    timeout: float | None

    @property
    def family(self) -> int:
        return int(self.sock.family)

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def gettimeout(self) -> float | None:
        return self.timeout

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)


class BioTls(_OverSocket):
    """A client TLS connection over `sock` (a connected socket), driven through memory BIOs.

    `handshake(timeout)` first, from one thread; then `recv_into` in one thread and
    `sendall` in another. `timeout`: how long a read or a send may wait (None: no limit);
    TimeoutError after it, as a socket with that timeout would raise.
    """

    encrypted = True

    def __init__(
        self,
        sock: socket.socket,
        sslobj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        timeout: float | None,
    ) -> None:
        self.sock = sock
        self.sslobj = sslobj
        self.incoming = incoming
        self.outgoing = outgoing
        self.timeout = timeout
        self.lock = threading.Lock()  # every call into sslobj and the BIOs
        self.send_lock = threading.Lock()  # the raw socket's writes, in order
        self.plain = bytearray()  # decrypted before a half-close, not taken yet
        self.ended = False  # the peer's end of data (close_notify or EOF) was read
        self.alert: str | None = None  # the TLS error that ended reading, if any
        #: Sees the plaintext, outside the lock (forward's --faults-to upstream sets it).
        self.watch: Any = None
        sock.setblocking(False)

    # -- what the relays call ---------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def handshake(self, timeout: float | None) -> None:
        """Shake hands within `timeout` seconds. Raises ssl.SSLError (a certificate that
        does not verify: ssl.SSLCertVerificationError), TimeoutError, OSError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self.sslobj.do_handshake()
                self.flush(wait=True)
                return
            except ssl.SSLWantReadError:
                self.flush(wait=True)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.feed(left):
                self.incoming.write_eof()

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read up to `nbytes` (0: the buffer's size) of plaintext into `buffer`; 0 at the
        peer's end of data."""
        size = nbytes or len(buffer)
        while True:
            with self.lock:
                got = self._read(buffer, size)
                flush = self.outgoing.pending  # a KeyUpdate's answer, a session ticket's
            if flush:
                self.flush(wait=False)
            if got is not None:
                if got and self.watch is not None:
                    with memoryview(buffer) as view, view.cast("B") as octets:
                        self.watch.incoming(octets[:got])
                return got
            if not self.feed(self.timeout):
                with self.lock:
                    self.incoming.write_eof()

    def recv(self, size: int) -> bytes:
        buf = bytearray(size)
        return bytes(buf[: self.recv_into(buf)])

    def sendall(self, data: Any) -> None:
        """Encrypt and send all of `data` (through the watch, if any); returns once it went
        to the socket."""
        if self.watch is not None:
            self.watch.outgoing(data, self._send_plain)
            return
        with memoryview(data) as view, view.cast("B") as octets:
            self._send_plain(octets)

    def _send_plain(self, chunk: memoryview) -> int:
        for start in range(0, len(chunk), WRITE_PIECE):
            with self.lock:
                self.sslobj.write(chunk[start : start + WRITE_PIECE])
            self.flush(wait=True)
        return len(chunk)

    def send(self, data: Any) -> int:
        self.sendall(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        """SHUT_WR: close_notify, then a FIN (what the peer sends afterwards still comes).
        Other ways: the socket only (wakes a reader)."""
        if how == socket.SHUT_WR:
            with self.lock:
                self._take_all()  # no record left in the BIO for SSL_shutdown to choke on
                try:
                    self.sslobj.unwrap()  # close_notify into the BIO; not waiting for theirs
                except ssl.SSLWantReadError:
                    pass
                except (OSError, ValueError):
                    pass  # broken already: the FIN alone
            try:
                self.flush(wait=True)
            except OSError:
                pass
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    # -- inside ---------------------------------------------------------------------------

    def _read(self, buffer: Any, size: int) -> int | None:
        """One non-blocking read (under the lock): the byte count, 0 at the end, None when
        more must come from the socket."""
        if self.plain:
            n = min(size, len(self.plain))
            with memoryview(buffer) as view, view.cast("B") as octets:
                octets[:n] = self.plain[:n]
            del self.plain[:n]
            return n
        if self.ended:
            return 0
        try:
            got: Any = self.sslobj.read(size, buffer)  # with a buffer: a count
        except ssl.SSLWantReadError:
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a bare FIN
            self.ended = True
            return 0
        except ssl.SSLError as exc:  # an alert: TLS 1.3 refuses a client certificate so
            self.alert = (exc.reason or str(exc)).lower().replace("_", " ")
            raise
        return int(got)

    def _take_all(self) -> None:
        """Decrypt every whole record the BIO holds into `plain` (under the lock)."""
        while not self.ended:
            try:
                chunk = self.sslobj.read(RAW_READ)
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.ended = True
                return
            except (OSError, ValueError):
                return  # the reader meets the error itself
            if not chunk:
                self.ended = True
                return
            self.plain += chunk

    def feed(self, timeout: float | None) -> bool:
        """Move what the socket has into the incoming BIO; False at its EOF."""
        while True:
            try:
                data = self.sock.recv(RAW_READ)
            except BlockingIOError:
                wait_for(self.sock, select.POLLIN, timeout)
                continue
            if not data:
                return False
            with self.lock:
                self.incoming.write(data)
            return True

    def flush(self, wait: bool) -> None:
        """Send what the outgoing BIO holds. `wait` False (the reading thread): only when no
        other thread is sending, which then sends it too (it looks again after)."""
        while True:
            if not self.send_lock.acquire(blocking=wait):
                return
            try:
                while True:
                    with self.lock:
                        data = self.outgoing.read()
                    if not data:
                        break
                    self._send_raw(data)
            finally:
                self.send_lock.release()
            with self.lock:
                if not self.outgoing.pending:
                    return

    def _send_raw(self, data: bytes) -> None:
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += self.sock.send(view[sent:])
                except BlockingIOError:
                    wait_for(self.sock, select.POLLOUT, self.timeout)


class SocketTls(_OverSocket):
    """A served TLS connection (`sock`: an ssl.SSLSocket, handshake done) that one thread
    reads while another writes. `sock` stays non-blocking until `release()`; its timeout
    bounds each wait, as it did (TimeoutError). A watch (`sock.watch`, a
    `WatchedTlsSocket`'s) sees the plaintext, outside the lock."""

    encrypted = True

    def __init__(self, sock: Any) -> None:  # an ssl.SSLSocket
        self.sock = sock
        self.timeout = sock.gettimeout()
        self.watch = getattr(sock, "watch", None)
        self.lock = threading.Lock()
        self.read_more = threading.Condition(self.lock)  # the reader took something
        self.ended = False  # the peer's end of data was read
        self.unwrapped = False  # both close_notify passed: sock is a plain socket now
        sock.settimeout(0)

    def release(self) -> None:
        """Give `sock` its timeout back (single-threaded again)."""
        if self.sock.fileno() != -1:
            self.sock.settimeout(self.timeout)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read up to `nbytes` (0: the buffer's size) of plaintext into `buffer`; 0 at the
        peer's end of data."""
        while True:
            with self.lock:
                if self.ended or self.unwrapped:
                    return 0
                try:
                    n = ssl.SSLSocket.recv_into(self.sock, buffer, nbytes)  # not the watch's
                    want = 0
                except ssl.SSLWantReadError:
                    want = select.POLLIN
                except ssl.SSLWantWriteError:
                    want = select.POLLOUT
                except ssl.SSLZeroReturnError:
                    n, want = 0, 0
                if not want:
                    if not n:
                        self.ended = True
                    self.read_more.notify_all()
            if not want:
                break
            wait_for(self.sock, want, self.timeout)
        if n and self.watch is not None:
            with memoryview(buffer) as view, view.cast("B") as octets:
                self.watch.incoming(octets[:n])
        return n

    def recv(self, size: int) -> bytes:
        buf = bytearray(size)
        return bytes(buf[: self.recv_into(buf)])

    def sendall(self, data: Any) -> None:
        """Send all of `data` (through the watch, if any)."""
        if self.watch is not None:
            self.watch.outgoing(data, self._send_chunk)
            return
        with memoryview(data) as view, view.cast("B") as octets:
            self._send_chunk(octets)

    def send(self, data: Any) -> int:
        self.sendall(data)
        return len(data)

    def _send_chunk(self, chunk: memoryview) -> int:
        for start in range(0, len(chunk), WRITE_PIECE):
            piece = chunk[start : start + WRITE_PIECE]  # retried as is after a WANT
            while True:
                with self.lock:
                    try:
                        ssl.SSLSocket.send(self.sock, piece)  # whole: no partial writes
                        break
                    except ssl.SSLWantWriteError:
                        want = select.POLLOUT
                    except ssl.SSLWantReadError:
                        want = select.POLLIN
                # a renegotiation's read is the reader's: look again soon
                wait = self.timeout if want == select.POLLOUT else 0.05
                try:
                    wait_for(self.sock, want, wait)
                except TimeoutError:
                    if want == select.POLLOUT:
                        raise
        return len(chunk)

    def shutdown(self, how: int) -> None:
        """SHUT_WR: close_notify (once nothing waits to be read), then a FIN. Other ways:
        the socket only (wakes a reader or a sender)."""
        if how == socket.SHUT_WR:
            self._close_notify()
            if getattr(self.sock, "established", False):
                self.sock.established = False  # a TlsSocket's: TlsPart need not unwrap again
        socket.socket.shutdown(self.sock, how)

    def _close_notify(self) -> None:
        deadline = time.monotonic() + CLOSE_NOTIFY_WAIT
        with self.lock:
            while True:
                quiet = self.ended or not (self.sock.pending() or readable_now(self.sock))
                if quiet and not self.unwrapped:
                    try:
                        ssl.SSLSocket.unwrap(self.sock)
                        self.unwrapped = True
                    except ssl.SSLWantWriteError:
                        pass  # the socket is full: the FIN alone
                    except (OSError, ValueError):
                        pass  # sent, not waiting for the peer's (WantRead); or broken
                    return
                left = deadline - time.monotonic()
                if left <= 0 or not self.read_more.wait(left):
                    return  # the reader does not take it: the FIN alone

    def close(self) -> None:
        self.sock.close()


def tls_reason(exc: BaseException) -> str:
    """Why a TLS set-up or handshake failed, in words (an SSLError's reason, an OSError's
    strerror): for the one-line errors and warnings of both TLS sides."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
