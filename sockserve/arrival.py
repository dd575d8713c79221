"""A datagram's arrival address: ask the socket for it, and reply from it.

A socket bound to an unspecified address receives on every address of the machine, but a
plain sendto lets the kernel pick the reply's source: a client that sent to 127.0.0.2 gets
its answer from 127.0.0.1, and a connected client (`nc -u`, `socat UDP:`, a Python socket
that called connect()) drops it. As DNS servers do, the socket asks for each datagram's
destination (IP_PKTINFO, IPV6_RECVPKTINFO), and the reply carries it back as its source.
Used by `sockserve.parts.reply_source` (sync, thread, fork) and `sockserve.event`.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

__all__ = [
    "ANCILLARY_SPACE",
    "IP_PKTINFO",
    "ReplyingSocket",
    "arrival_asked",
    "ask_for_arrival",
    "replies_from_arrival",
    "reply_ancillary",
]

#: Python names IP_PKTINFO from 3.14 on; the value is the platform's (Linux 8, macOS 26).
IP_PKTINFO: int | None = getattr(
    socket,
    "IP_PKTINFO",
    8 if sys.platform.startswith("linux") else 26 if sys.platform == "darwin" else None,
)
IPV6_RECVPKTINFO: int | None = getattr(socket, "IPV6_RECVPKTINFO", None)
IPV6_PKTINFO: int | None = getattr(socket, "IPV6_PKTINFO", None)
#: Room for one in_pktinfo (12 bytes) or in6_pktinfo (20 bytes).
ANCILLARY_SPACE = socket.CMSG_SPACE(20) if hasattr(socket, "CMSG_SPACE") else 0
_IN_PKTINFO = struct.Struct("I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_ANY4 = bytes(4)


def replies_from_arrival(family: int) -> bool:
    """True if this platform tells a datagram's destination on a socket of `family`."""
    if not hasattr(socket.socket, "recvmsg") or not ANCILLARY_SPACE:
        return False
    if family == socket.AF_INET:
        return IP_PKTINFO is not None
    return family == socket.AF_INET6 and None not in (IPV6_RECVPKTINFO, IPV6_PKTINFO)


def ask_for_arrival(sock: socket.socket) -> None:
    """Make `sock` tell each datagram's destination address (IPv4 ones on a dual-stack IPv6
    socket come as IPv4-mapped addresses)."""
    if sock.family == socket.AF_INET:
        assert IP_PKTINFO is not None
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        assert IPV6_RECVPKTINFO is not None
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)


def arrival_asked(sock: socket.socket) -> bool:
    """True if `sock` tells each datagram's destination (`ask_for_arrival` was called)."""
    try:
        if sock.family == socket.AF_INET and IP_PKTINFO is not None:
            return sock.getsockopt(socket.IPPROTO_IP, IP_PKTINFO) != 0
        if sock.family == socket.AF_INET6 and IPV6_RECVPKTINFO is not None:
            return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO) != 0
    except OSError:
        pass
    return False


def reply_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that sends a reply from where a datagram arrived, given what
    recvmsg returned with it; empty when it tells no usable source (the kernel picks)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            _, spec_dst, addr = _IN_PKTINFO.unpack_from(data)
            local = addr if spec_dst == _ANY4 else spec_dst  # spec_dst: local, for broadcasts too
            return [(level, kind, _IN_PKTINFO.pack(0, local, local))]  # any interface
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            if data[0] == 0xFF:  # a multicast group is no source
                return []
            return [(level, kind, data[:20])]  # the address, and its interface (link-local)
    return []


class ReplyingSocket:
    """Stands in for the server's socket in one datagram's request: sendto to the datagram's
    sender leaves from the address the datagram arrived on (sendmsg with its pktinfo);
    sendto to anyone else, and everything else, is the socket's own."""

    __slots__ = ("_ancillary", "_client", "_sock")

    def __init__(
        self, sock: socket.socket, client: Any, ancillary: list[tuple[int, int, bytes]]
    ) -> None:
        self._sock = sock
        self._client = client
        self._ancillary = ancillary

    def sendto(self, data: Any, flags_or_address: Any, address: Any = None) -> int:
        """As socket.sendto: (data, address) or (data, flags, address)."""
        if address is None:
            flags, address = 0, flags_or_address
        else:
            flags = flags_or_address
        if address != self._client or not self._ancillary:
            return self._sock.sendto(data, flags, address)
        return self._sock.sendmsg([data], self._ancillary, flags, address)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
