"""ReplySourcePart: a datagram server on 0.0.0.0 or [::] replies from the address each datagram
arrived on (see `sockserve.arrival`)."""

from __future__ import annotations

from typing import Any

from ..arrival import ANCILLARY_SPACE, ReplyingSocket, ask_for_arrival, reply_ancillary
from ..socketserver import TCPServer

__all__ = ["ReplySourcePart"]


class ReplySourcePart(TCPServer):
    """Reply to each datagram from the address it arrived on, for a datagram socket bound to
    0.0.0.0 or [::] (on a specific address the kernel's choice is already that one).

    Extends server_bind (the socket tells each datagram's destination) and replaces
    get_request (recvmsg; the request's socket is a `ReplyingSocket`, so the builtins and a
    user's DatagramRequestHandler, `self.socket.sendto` or `wfile`, reply from the right
    address). `receive_datagram` is the same receive for `LeanDatagramPart`.
    """

    max_packet_size: int  # the datagram server's

    def server_bind(self) -> None:
        """Bind, then ask the socket for each datagram's destination."""
        super().server_bind()
        ask_for_arrival(self.socket)

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram: ((data, its ReplyingSocket), client address)."""
        data, sock, client = self.receive_datagram(0)
        return (data, sock), client

    def receive_datagram(self, flags: int) -> tuple[bytes, ReplyingSocket, Any]:
        """recvmsg one datagram: (data, the socket that replies from its arrival address,
        the client's address)."""
        sock = self.socket
        data, ancdata, _, client = sock.recvmsg(self.max_packet_size, ANCILLARY_SPACE, flags)
        return data, ReplyingSocket(sock, client, reply_ancillary(ancdata)), client
