"""The `script` builtin as an asyncio protocol, for `--concurrency event` (loaded only there).

As `script_stream`, each connection runs its own `conversation.Conversation`; here the loop's
timers keep time (the wait for a line, `wait`), and reading pauses whenever the script is not
waiting for a line, so a client that floods a sleeping script fills only its socket buffer.
The store is the factory's: shared by every connection of the server.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from ..console import format_client
from .conversation import Close, Conversation, Log, ScriptAction, Send, Sleep
from .protocols import EventStream
from .shared import Shared


class EventScript(EventStream):
    """script: one conversation of the script per connection."""

    def __init__(self, shared: Shared, store: dict[str, str]) -> None:
        super().__init__(shared)
        script = shared.options.script
        assert script is not None
        self.conv = Conversation(script, store)
        self.timer: asyncio.TimerHandle | None = None
        self.sleeper: asyncio.TimerHandle | None = None
        self.wait = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.loop = asyncio.get_running_loop()
        self.carry_out(self.conv.start())

    def data_received(self, data: bytes) -> None:
        self.saw(data)
        self.carry_out(self.conv.receive(data))

    def eof_received(self) -> bool:
        self.carry_out(self.conv.receive(b""))
        return not self.conv.closed  # a sleeping script still answers a half-closed client

    def carry_out(self, actions: list[ScriptAction]) -> None:
        transport = self.transport
        for action in actions:
            if isinstance(action, Send):
                if not transport.is_closing():
                    self.send(action.data)
            elif isinstance(action, Log):
                observer = self.shared.observer
                if observer is not None:
                    observer.info(f"script {format_client(self.client)}: {action.text}")
            elif isinstance(action, Sleep):
                self.sleeper = self.loop.call_later(action.seconds, self.wake)
            elif isinstance(action, Close):
                if action.reset:
                    abort(transport)
                else:
                    transport.close()
        conv = self.conv
        if conv.closed or transport.is_closing():
            self.cancel_timer()
            return
        if not conv.reading:
            transport.pause_reading()
            return
        transport.resume_reading()
        if conv.wait_number != self.wait:
            self.wait = conv.wait_number
            self.cancel_timer()
            seconds = conv.read_timeout
            if seconds is not None:
                self.timer = self.loop.call_later(seconds, self.time_out)

    def wake(self) -> None:
        self.sleeper = None
        self.carry_out(self.conv.woke())

    def time_out(self) -> None:
        self.timer = None
        self.carry_out(self.conv.timed_out())

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()
        if self.sleeper is not None:
            self.sleeper.cancel()
            self.sleeper = None
        super().connection_lost(exc)


def abort(transport: Any) -> None:
    """Close with a TCP reset (SO_LINGER 0); a unix socket simply closes."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family != socket.AF_UNIX:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def script_protocol_factory(shared: Shared) -> Any:
    """A factory of the script's protocols, sharing one store."""
    store: dict[str, str] = {}

    def make() -> asyncio.Protocol:
        return EventScript(shared, store)

    return make
