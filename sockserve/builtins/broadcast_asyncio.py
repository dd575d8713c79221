"""broadcast and chat as asyncio protocols, for `--concurrency event` (loaded only there).

A member's transport buffers what it is sent up to the room's backlog (its high-water
mark); past it asyncio pauses writing to it, and the room's outbox for it applies the
`slow_client` policy (`rooms.Room.deliver`). Under `block`, while any member is paused,
every member's reading pauses too, so nothing new arrives until the slow one catches up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .protocols import EventStream
from .rooms import Member, Room
from .shared import Shared


class EventRoom:
    """A room shared by the protocols of one event-mode server (one thread: no lock)."""

    def __init__(self, room: Room, shared: Shared) -> None:
        self.room = room
        self.shared = shared
        self.protocols: dict[Member, EventRoomMember] = {}
        self.paused: set[EventRoomMember] = set()

    def deliver(self, deliveries: list[tuple[Member, bytes]]) -> None:
        for target, data in deliveries:
            protocol = self.protocols.get(target)
            if protocol is None or protocol.transport.is_closing():
                continue
            if protocol not in self.paused:
                protocol.send(data)
                continue
            if self.room.slow_client == "block" or self.room.deliver(target, data):
                if self.room.slow_client == "block":
                    target.outbox.put(data)  # readers are paused: at most a read per sender
                elif target.outbox.full:
                    self.disconnect(protocol)

    def tell(self, what: str) -> None:
        observer = self.shared.observer
        if observer is not None:
            count = len(self.room.members)
            observer.info(f"{what} ({count} client{'s' if count != 1 else ''} in it)")

    def disconnect(self, protocol: EventRoomMember) -> None:
        observer = self.shared.observer
        if observer is not None:
            observer.info(
                f"disconnected slow client {protocol.member.name}: more than "
                f"{self.room.backlog} B waiting for it (--slow-client)"
            )
        protocol.transport.abort()

    def forget(self, protocol: EventRoomMember) -> None:
        """A member is gone: what waited for it goes; readers paused for it go on."""
        protocol.member.outbox.take()
        if protocol in self.paused:
            self.paused.discard(protocol)
            self._resume_readers()

    def _resume_readers(self) -> None:
        if self.room.slow_client == "block" and not self.paused:
            for other in self.protocols.values():
                if not other.transport.is_closing():
                    other.transport.resume_reading()

    def paused_writing(self, protocol: EventRoomMember) -> None:
        self.paused.add(protocol)
        if self.room.slow_client == "block" and len(self.paused) == 1:
            for other in self.protocols.values():
                other.transport.pause_reading()

    def resumed_writing(self, protocol: EventRoomMember) -> None:
        self.paused.discard(protocol)
        data = protocol.member.outbox.take()
        if data:
            protocol.send(data)  # may pause it again
        self._resume_readers()


class EventRoomMember(EventStream):
    """One client of a broadcast or chat room."""

    member: Member

    def __init__(self, shared: Shared, hub: EventRoom) -> None:
        super().__init__(shared)
        self.hub = hub

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        hub = self.hub
        transport.set_write_buffer_limits(high=hub.room.backlog)
        self.member, deliveries = hub.room.join(self.client)
        hub.protocols[self.member] = self
        if hub.room.slow_client == "block" and hub.paused:
            transport.pause_reading()
        hub.deliver(deliveries)
        hub.tell(f"{self.member.name} joined the room")

    def data_received(self, data: bytes) -> None:
        self.saw(data)
        self.hub.deliver(self.hub.room.said(self.member, data))

    def connection_lost(self, exc: Exception | None) -> None:
        hub = self.hub
        member = getattr(self, "member", None)
        if member is not None:
            hub.protocols.pop(member, None)
            hub.forget(self)
            hub.deliver(hub.room.leave(member))
            hub.tell(f"{member.name} left the room")
            observer = self.shared.observer
            if member.outbox.dropped and observer is not None:
                observer.info(
                    f"slow client {member.name}: {member.outbox.dropped} B dropped "
                    "(--slow-client drop)"
                )
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.hub.paused_writing(self)

    def resume_writing(self) -> None:
        self.hub.resumed_writing(self)


def room_protocol_factory(shared: Shared, room: Room) -> Any:
    """A factory of the room's member protocols."""
    hub = EventRoom(room, shared)

    def make() -> asyncio.Protocol:
        return EventRoomMember(shared, hub)

    return make
