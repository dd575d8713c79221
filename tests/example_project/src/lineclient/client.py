"""Ask a line-protocol server: one line out, one line back, with a timeout and retries."""

from __future__ import annotations

import socket
import ssl
import time


class ClientError(Exception):
    """The server could not be asked: every attempt failed (the last error is the cause)."""


class LineClient:
    """Send a line to a TCP or unix server and read the reply line.

    Each attempt connects anew; a refused, reset or timed-out attempt is retried `retries`
    times, `backoff` seconds apart. `tls` (an ssl.SSLContext) wraps the connection.
    """

    def __init__(
        self,
        address: tuple[str, int] | str,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.01,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.tls = tls
        self.attempts = 0

    def request(self, line: bytes) -> bytes:
        """Send `line` (a newline is added) and return the reply line, without its newline."""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff)
            self.attempts += 1
            try:
                return self._ask(line)
            except (OSError, EOFError) as exc:  # refused, reset, timed out, closed early
                error = exc
        raise ClientError(f"no answer after {self.retries + 1} attempts: {error}") from error

    def _ask(self, line: bytes) -> bytes:
        with self._connect() as sock:
            sock.sendall(line + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):  # a reply may come in several pieces
                chunk = sock.recv(4096)
                if not chunk:
                    raise EOFError("the server closed the connection before replying")
                reply += chunk
            return reply[:-1]

    def _connect(self) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self.address, timeout=self.timeout)
        if self.tls is not None:
            return self.tls.wrap_socket(sock, server_hostname=self.address[0])
        return sock


def udp_request(
    address: tuple[str, int], data: bytes, timeout: float = 0.5, retries: int = 2
) -> bytes:
    """Send a datagram and return the answer, sending again on a timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for _ in range(retries + 1):
            sock.sendto(data, address)
            try:
                return sock.recv(65536)
            except TimeoutError:
                continue
    raise ClientError(f"no answer after {retries + 1} datagrams")
