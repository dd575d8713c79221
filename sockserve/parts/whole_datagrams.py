"""WholeDatagramPart: a unix datagram is read whole, however big (up to its socket's buffers)."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..socketserver import TCPServer

__all__ = ["WholeDatagramPart"]

#: recv(MSG_PEEK | MSG_TRUNC) returns the real length of the datagram waiting (Linux).
PEEK_TELLS_SIZE = sys.platform.startswith("linux") and hasattr(socket, "MSG_TRUNC")


class WholeDatagramPart(TCPServer):
    """Read each datagram of a unix datagram socket whole: a unix datagram may be bigger than
    UDP's 64 KiB (up to the sender's SO_SNDBUF), and a read into a smaller buffer would cut it
    without a word.

    On Linux each read is sized by a peek that tells the datagram's length (MSG_PEEK |
    MSG_TRUNC); elsewhere every read takes the socket's receive buffer size (SO_RCVBUF), the
    most one datagram can be. Never smaller than `max_packet_size`, so a datagram another
    process (`--workers`) took between the peek and the read costs the next one nothing.
    Replaces get_request; `recvfrom_whole(flags)` is the same receive for
    `LeanDatagramPart`.
    """

    max_packet_size: int  # the datagram server's
    _largest = 0

    def server_bind(self) -> None:
        """Bind, then learn the largest datagram the socket can hold (without a size peek)."""
        super().server_bind()
        try:
            self._largest = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            self._largest = 0
        self._probe = bytearray(1)

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram, whole: ((data, socket), client address)."""
        data, client = self.recvfrom_whole(0)
        return (data, self.socket), client

    def recvfrom_whole(self, flags: int) -> tuple[bytes, Any]:
        """recvfrom one whole datagram; `flags` as recvfrom's (MSG_DONTWAIT)."""
        sock = self.socket
        size = self.max_packet_size
        if PEEK_TELLS_SIZE:
            size = max(
                size, sock.recv_into(self._probe, 1, flags | socket.MSG_PEEK | socket.MSG_TRUNC)
            )
        else:
            size = max(size, self._largest)
        return sock.recvfrom(size, flags)
