"""broadcast and chat: many clients in one conversation, the part that needs no socket.

A `Room` knows who is in it and turns what one member sends into what each other member
gets: broadcast relays the bytes as they come (to every other member, or to all with
`to_all`); chat frames them into lines prefixed with the sender's name (`ChatLines`) and
announces joins and leaves. Each member has an `Outbox`: the bytes waiting for it, bounded
by `backlog` bytes. What happens when a member falls that far behind is the room's
`slow_client` policy:

- `disconnect` (the default): the member is told to go (`Outbox.full` is set; the adapter
  closes its connection), the others go on;
- `drop`: what does not fit is dropped for that member only (counted in `Outbox.dropped`);
- `block`: the sender waits for room (every client then goes at the pace of the slowest).

The adapters (`broadcast.py` for threads, `broadcast_asyncio.py` for the event loop) move
the bytes; this module only decides.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..events import address_of
from ..loading import ROOM_BUILTINS, SLOW_CLIENT_POLICIES, SlowClient

__all__ = ["ROOM_BUILTINS", "ChatLines", "Member", "Outbox", "Room", "SlowClient"]

#: The bytes that may wait for one member (beyond what its socket buffers hold).
DEFAULT_BACKLOG = 256 * 1024
#: A chat line longer than this is passed on in pieces, each with the sender's prefix.
MAX_LINE = 64 * 1024


class ChatLines:
    """One sender's bytes cut into whole lines (at most `MAX_LINE` bytes each)."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines in `data` (with what came before), each ending in b"\\n"."""
        self.partial += data
        lines: list[bytes] = []
        while True:
            end = self.partial.find(b"\n", 0, self.limit)
            if end < 0:
                if len(self.partial) < self.limit:
                    return lines
                end = self.limit - 1  # a line too long: pass on a piece, with a newline added
                lines.append(bytes(self.partial[: end + 1]) + b"\n")
            else:
                lines.append(bytes(self.partial[: end + 1]))
            del self.partial[: end + 1]

    def end(self) -> list[bytes]:
        """The last line the sender did not end, with a newline added (or nothing)."""
        if not self.partial:
            return []
        line = bytes(self.partial) + b"\n"
        self.partial.clear()
        return [line]


@dataclass(eq=False)
class Outbox:
    """The bytes waiting for one member, at most `backlog` of them."""

    backlog: int
    chunks: deque[bytes] = field(default_factory=deque)
    size: int = 0
    dropped: int = 0
    full: bool = False  # over the backlog under `disconnect`: the member must go

    def room_for(self, data: bytes) -> bool:
        """True if `data` fits (anything fits an empty outbox: one chunk is never refused)."""
        return not self.chunks or self.size + len(data) <= self.backlog

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def take(self) -> bytes:
        """Everything waiting, as one chunk (b"" if nothing is)."""
        if not self.chunks:
            return b""
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        return data


@dataclass(eq=False)
class Member:
    """One client in a room: its name, its outbox, its line framing (chat)."""

    name: str
    outbox: Outbox
    lines: ChatLines = field(default_factory=ChatLines)


class Room:
    """The members of one server's conversation and what each of them is to get.

    Not thread-safe: the thread adapter calls it under its lock, the event loop from its
    one thread.
    """

    def __init__(
        self,
        chat: bool,
        to_all: bool = False,
        slow_client: SlowClient = "disconnect",
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        if slow_client not in SLOW_CLIENT_POLICIES:
            raise ValueError(f"slow_client must be one of {SLOW_CLIENT_POLICIES}")
        self.chat = chat
        self.to_all = to_all
        self.slow_client = slow_client
        self.backlog = backlog
        self.members: list[Member] = []
        self._unnamed = 0

    def name_for(self, client: object) -> str:
        """How chat names a client: HOST:PORT, [v6]:PORT, or unix-N for a unix peer."""
        client = address_of(client)
        if isinstance(client, tuple) and len(client) >= 2:
            host, port = str(client[0]), client[1]
            host = host.removeprefix("::ffff:")
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._unnamed += 1
        return f"unix-{self._unnamed}"

    def join(self, client: object) -> tuple[Member, list[tuple[Member, bytes]]]:
        """Add a member; return it and what the others get (chat: the announcement)."""
        member = Member(self.name_for(client), Outbox(self.backlog))
        self.members.append(member)
        if not self.chat:
            return member, []
        return member, self._to_others(member, f"* {member.name} joined\n".encode())

    def leave(self, member: Member) -> list[tuple[Member, bytes]]:
        """Remove a member; return what the others get (chat: its last line, the goodbye)."""
        if member not in self.members:
            return []
        deliveries = []
        if self.chat:
            for line in member.lines.end():
                deliveries += self._from(member, line)
        self.members.remove(member)
        if self.chat:
            deliveries += self._to_others(member, f"* {member.name} left\n".encode())
        return deliveries

    def said(self, member: Member, data: bytes) -> list[tuple[Member, bytes]]:
        """What each member gets of the bytes `member` sent."""
        if not self.chat:
            return self._from(member, data)
        deliveries = []
        for line in member.lines.feed(data):
            deliveries += self._from(member, line)
        return deliveries

    def _from(self, member: Member, data: bytes) -> list[tuple[Member, bytes]]:
        if self.chat:
            data = f"[{member.name}] ".encode() + data
        targets = self.members if self.to_all else (m for m in self.members if m is not member)
        return [(target, data) for target in targets]

    def _to_others(self, member: Member, data: bytes) -> list[tuple[Member, bytes]]:
        return [(other, data) for other in self.members if other is not member]

    def deliver(self, target: Member, data: bytes) -> bool:
        """Queue `data` for `target` unless the policy says otherwise; False if it must wait
        (`block`, no room yet). Under `disconnect` an overflow marks the outbox `full`."""
        outbox = target.outbox
        if outbox.full:
            return True  # leaving: nothing more for it
        if outbox.room_for(data):
            outbox.put(data)
            return True
        if self.slow_client == "block":
            return False
        if self.slow_client == "drop":
            outbox.dropped += len(data)
        else:
            outbox.full = True
        return True
