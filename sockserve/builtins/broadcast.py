"""broadcast and chat as request handlers for stream servers, in thread mode.

Each connection's handler thread reads what its client sends and hands it to the room
(`rooms.Room`, behind one lock), and sends it on at once to each member whose socket takes
it without waiting; the rest waits in that member's outbox, which the member's writer
thread sends, so a client that does not read holds up only its own writer. A member over the
backlog under `disconnect` has its connection shut down (its reader then sees the end and
leaves). One process must see every client: config refuses fork and sync mode and
`--workers`.
"""

from __future__ import annotations

import socket
import threading
from typing import ClassVar

from ..events import Events
from .rooms import Member, Room
from .shared import PEER_GONE
from .stream import StreamBuiltin


class Writer(threading.Thread):
    """Send what waits in one member's outbox, until it leaves (what is queued goes first)
    or its connection fails."""

    def __init__(self, hub: ThreadRoom, member: Member, sock: socket.socket) -> None:
        super().__init__(name=f"sockserve-{member.name}-writer", daemon=True)
        self.hub = hub
        self.member = member
        self.sock = sock
        self.ready = threading.Condition(hub.lock)  # data for it, or its leaving
        self.leaving = False
        self.failed = False
        self.busy = False  # sending outside the lock
        self.sent = 0

    def run(self) -> None:
        outbox = self.member.outbox
        with self.ready:
            while True:
                while not outbox.chunks and not self.leaving and not self.failed:
                    self.ready.wait()
                data = outbox.take()
                self.hub.room_made.notify_all()
                if not data or self.failed:
                    return
                self.busy = True
                self.ready.release()
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.failed = True
                finally:
                    self.ready.acquire()
                    self.busy = False
                if self.failed:
                    self.hub.room_made.notify_all()
                    return
                self.sent += len(data)

    def send_now(self, data: bytes) -> bytes:
        """Send what the socket takes without waiting, when nothing waits before it (under
        the room's lock); return the rest."""
        if self.busy or self.leaving or self.failed or self.member.outbox.chunks:
            return data
        try:
            n = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return data
        except OSError:
            self.failed = True  # its reader will see the end too
            return b""
        self.sent += n
        return data[n:]


class ThreadRoom:
    """A room shared by the handler threads of one server."""

    def __init__(self, room: Room, events: Events | None) -> None:
        self.room = room
        self.events = events
        self.lock = threading.Lock()
        self.room_made = threading.Condition(self.lock)  # an outbox was emptied (block)
        self.writers: dict[Member, Writer] = {}

    def join(self, sock: socket.socket, client: object) -> Member:
        """Add the client on `sock`; start its writer."""
        with self.lock:
            member, deliveries = self.room.join(client)
            writer = self.writers[member] = Writer(self, member, sock)
            writer.start()
            self._deliver(deliveries)
            self._tell(f"{member.name} joined the room")
        return member

    def said(self, member: Member, data: bytes) -> None:
        """Pass on what `member` sent (blocking for room under `block`)."""
        with self.lock:
            self._deliver(self.room.said(member, data))

    def leave(self, member: Member) -> int:
        """Remove the member; wait for its writer to send what is queued; return the bytes
        it sent in all."""
        with self.lock:
            deliveries = self.room.leave(member)
            writer = self.writers.pop(member)
            writer.leaving = True
            writer.ready.notify()
            self.room_made.notify_all()  # senders blocked on it: it is gone
            self._deliver(deliveries)
            self._tell(f"{member.name} left the room")
        writer.join()
        outbox = member.outbox
        if outbox.dropped and self.events is not None:
            self.events.info(
                f"slow client {member.name}: {outbox.dropped} B dropped (--slow-client drop)"
            )
        return writer.sent

    def _tell(self, what: str) -> None:
        if self.events is not None:
            count = len(self.room.members)
            self.events.info(f"{what} ({count} client{'s' if count != 1 else ''} in it)")

    def _deliver(self, deliveries: list[tuple[Member, bytes]]) -> None:
        """Queue each delivery (under the lock), waiting for room under `block`."""
        for target, data in deliveries:
            writer = self.writers.get(target)
            if writer is None:
                continue
            data = writer.send_now(data)  # a client that keeps up never waits for its writer
            if not data:
                continue
            while not self.room.deliver(target, data):
                self.room_made.wait()
                if target not in self.writers or writer.failed:
                    break
            if target.outbox.full and not writer.leaving:
                self._disconnect(target, writer)
            writer.ready.notify()

    def _disconnect(self, member: Member, writer: Writer) -> None:
        """A member over the backlog (`disconnect`): shut its connection down."""
        writer.leaving = True
        try:
            writer.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.events is not None:
            self.events.info(
                f"disconnected slow client {member.name}: more than {self.room.backlog} B "
                "waiting for it (--slow-client)"
            )


class RoomStream(StreamBuiltin):
    """broadcast and chat: what the client sends goes to the room; the room's writer sends
    it what the others say."""

    hub: ClassVar[ThreadRoom]  # made by `stream_handler`

    def serve(self, sock: socket.socket) -> None:
        hub = self.hub
        member = hub.join(sock, self.client_address)
        buffers = self.shared.buffers
        buf = buffers.get()
        view = memoryview(buf)
        try:
            while n := sock.recv_into(buf):
                self.saw(view[:n])
                hub.said(member, bytes(view[:n]))
        except PEER_GONE:
            pass
        except OSError:
            if not member.outbox.full:  # shut down for being slow: not an error
                raise
        finally:
            view.release()
            buffers.put(buf)
            self.sent += hub.leave(member)
