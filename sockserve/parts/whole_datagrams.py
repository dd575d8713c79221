"""WholeDatagramPart: a unix datagram is read whole, however big (up to its socket's buffers)."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..socketserver import TCPServer

__all__ = ["WholeDatagramPart"]

#: recv(MSG_PEEK | MSG_TRUNC) returns the real length of the datagram waiting (Linux).
PEEK_TELLS_SIZE = sys.platform.startswith("linux") and hasattr(socket, "MSG_TRUNC")
_PEEK_FLAGS = socket.MSG_PEEK | getattr(socket, "MSG_TRUNC", 0)


class WholeDatagramPart(TCPServer):
    """Read each datagram of a unix datagram socket whole: a unix datagram may be bigger than
    UDP's 64 KiB (up to the sender's SO_SNDBUF), and a read into a smaller buffer would cut it
    without a word.

    On Linux each read is sized by a peek that tells the datagram's length (MSG_PEEK |
    MSG_TRUNC; `peek_datagram_size`, which `LeanDatagramPart` does inline); elsewhere
    `max_packet_size` becomes the socket's receive buffer size (SO_RCVBUF), the most one
    datagram can be there. A read is never smaller than `max_packet_size`, so a datagram
    another process (`--workers`) took between the peek and the read costs the next one
    nothing. Extends server_bind, replaces get_request.
    """

    max_packet_size: int  # the datagram server's
    peek_datagram_size = False

    def server_bind(self) -> None:
        """Bind, then choose how reads are sized: a peek, or the receive buffer's size."""
        super().server_bind()
        self._probe = bytearray(1)
        if PEEK_TELLS_SIZE:
            self.peek_datagram_size = True
            return
        try:
            largest = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            return
        self.max_packet_size = max(self.max_packet_size, largest)

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram, whole: ((data, socket), client address)."""
        data, client = self.recvfrom_whole(0)
        return (data, self.socket), client

    def recvfrom_whole(self, flags: int) -> tuple[bytes, Any]:
        """recvfrom one whole datagram; `flags` as recvfrom's (MSG_DONTWAIT)."""
        sock = self.socket
        size = self.max_packet_size
        if self.peek_datagram_size:
            size = max(size, sock.recv_into(self._probe, 1, flags | _PEEK_FLAGS))
        return sock.recvfrom(size, flags)
