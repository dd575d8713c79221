"""What the adapters of the builtins share: their options, per-class state, datagram sending."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ..addresses import Address
from ..events import Events
from ..loading import ROOM_BUILTINS, SlowClient
from .cores import chargen_block
from .output import OutputWriter

if TYPE_CHECKING:
    from ..script_model import Script  # --script only: the run that gives it has loaded it
    from .rooms import Room  # broadcast and chat only: loaded by their Shared

#: The largest UDP payload (IPv4): what one datagram of stdin may carry on UDP.
MAX_UDP_PAYLOAD = 65507
INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
#: The client reset or closed: its connection simply ends, that is not an error.
PEER_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True, repr=False)
class HandlerOptions:
    """Settings of the builtins; `output`/`input` default to our stdout/stdin (binary).

    `lines`: stdout and stdio write whole lines per connection and one line per datagram
    (`framing`; the command's default); False writes the bytes as they come (--raw).
    Not shown whole (`repr=False`): nothing does, and each generated method costs start-up.
    """

    reply: bytes | None = None
    reply_file: str | None = None
    output: BinaryIO | None = None
    input: BinaryIO | None = None
    observer: Events | None = None
    chunk_size: int = 65536
    to_all: bool = False  # broadcast: back to the sender too
    slow_client: SlowClient = "disconnect"  # broadcast and chat (see `rooms`)
    lines: bool = False
    script: Script | None = None  # script: the parsed --script file
    #: forward: where to relay; how long a datagram client's association lasts unused.
    upstream: Address | None = None
    #: forward over TLS (--forward-tls): a `sockserve.upstream_tls.UpstreamTls`, or None.
    upstream_tls: Any = None
    idle_timeout: float | None = None


class Buffers:
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


class Shared:
    """What all connections of one handler class (or protocol factory) share.

    Raises ValueError for a `chunk_size` below 1.
    """

    def __init__(self, name: str, options: HandlerOptions) -> None:
        if options.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.name = name
        self.options = options
        self.observer = observer = options.observer
        #: Who gets the byte counts; None when nothing shows them (-q).
        self.recorder = observer if observer is not None and observer.wants_counts else None
        #: Who hears of bytes sent outside a request (`Events.sent`: stdio's stdin to a datagram
        #: client); None when nobody counts, or the observer knows only records and chunks.
        self.on_sent: Callable[[Any, int], None] | None = getattr(self.recorder, "sent", None)
        self.chunk_size = options.chunk_size
        self.lines = options.lines
        self.buffers = Buffers(options.chunk_size)
        self.writer: OutputWriter | None = None
        if name in ("stdout", "stdio"):
            self.writer = OutputWriter(options.output or sys.stdout.buffer)
        self.input: BinaryIO | None = None
        if name == "stdio":
            self.input = options.input or sys.stdin.buffer
        self.reply = options.reply if options.reply is not None else b""
        self.chargen_block = chargen_block(options.chunk_size) if name == "chargen" else b""
        self.room: Room | None = None
        if name in ROOM_BUILTINS:
            from .rooms import Room

            self.room = Room(name == "chat", options.to_all, options.slow_client)

    def datagram_reply_bytes(self) -> bytes:
        """The reply a datagram gets: the reply file's contents (read now) or the reply bytes.

        Raises OSError when the file cannot be read.
        """
        if self.options.reply_file is not None:
            with open(self.options.reply_file, "rb") as f:
                return f.read()
        return self.reply


def send_datagram(sock: socket.socket, data: bytes, client: Any) -> int:
    """Send one datagram to `client`; on unix sockets drop it rather than block.

    A unix client's address is a path (an inet one a tuple): that tells the family without
    asking the socket for every datagram.
    """
    flags = 0 if type(client) is tuple else socket.MSG_DONTWAIT
    try:
        return sock.sendto(data, flags, client)
    except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
        return 0  # the client's queue is full, or it is gone: the datagram is lost
