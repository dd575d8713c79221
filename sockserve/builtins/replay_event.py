"""-H replay in event mode: the same replay as `replay`, as asyncio protocols (loaded by
`replay.replay_handler` for -c event only: this module imports asyncio)."""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..transcripts import Step, Transcript
from .cores import LINGER_SECONDS
from .replay import MATCH_WAIT, MAX_PEERS, InputMatcher, content_wanted
from .shared import Shared

__all__ = ["EventReplayDatagram", "EventReplayStream", "event_factory"]


class EventReplayStream(asyncio.Protocol):
    """A stream connection replayed: a step runs when its input is in, after its delay."""

    def __init__(self, shared: Shared, steps: list[Step], timing: str, match: str) -> None:
        self.shared = shared
        self.steps = steps
        self.recorded = timing == "recorded"
        self.match = match
        self.matcher = InputMatcher()
        self.index = 0
        self.received = 0
        self.sent = 0
        self.client: Any = None
        self.transport: Any = None
        self.eof = False
        self.done = False
        self.by_content = False
        self.timer: asyncio.TimerHandle | None = None  # a step's delay, or its content wait
        self.sleeping = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self._start_step()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.done:
            return  # lingering: what the client still sends is read and dropped
        self.matcher.feed(data)
        self._advance()

    def eof_received(self) -> bool:
        self.eof = True
        if self.done:
            self.transport.close()
        else:
            self._advance()
        return True  # our side closes when the replay says so

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        recorder = self.shared.recorder
        if recorder is not None:
            recorder.record(self.client, self.received, self.sent)

    def _start_step(self) -> None:
        if self.index >= len(self.steps):
            return
        step = self.steps[self.index]
        self.by_content = content_wanted(step, self.match)
        if self.by_content:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(MATCH_WAIT, self._content_over)
        self._advance()

    def _content_over(self) -> None:
        self.timer = None
        self.by_content = False
        self._advance()

    def _advance(self) -> None:
        """Run the current step if its input is in; close if the client ended first."""
        if self.sleeping or self.done or self.index >= len(self.steps):
            return
        step = self.steps[self.index]
        if not self.matcher.take(step, self.by_content):
            if self.eof:  # the client ended before sending what the recording had
                self.done = True
                self.transport.close()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.recorded and step.delay > 0:
            self.sleeping = True
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(step.delay, self._send, step)
        else:
            self._send(step)

    def _send(self, step: Step) -> None:
        self.timer = None
        self.sleeping = False
        if self.transport.is_closing():
            return
        if step.send:
            self.transport.write(step.send)
            self.sent += len(step.send)
        self.index += 1
        if self.index < len(self.steps):
            self._start_step()
            return
        self.done = True  # the recorded close: our write side, then the client's EOF
        if self.eof or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(LINGER_SECONDS, self.transport.close)


class EventReplayDatagram(asyncio.DatagramProtocol):
    """Datagrams replayed: each peer's n-th datagram gets what the recording sent after
    the n-th."""

    def __init__(self, shared: Shared, exchanges: list[tuple[bytes, list[bytes]]]) -> None:
        self.shared = shared
        self.exchanges = exchanges
        self.places: OrderedDict[Any, int] = OrderedDict()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        key = getattr(addr, "address", addr)
        place = self.places.pop(key, 0)
        self.places[key] = place + 1
        if len(self.places) > MAX_PEERS:
            self.places.popitem(last=False)
        sent = 0
        if place < len(self.exchanges) and addr:
            for answer in self.exchanges[place][1]:
                self.transport.sendto(answer, addr)
                sent += len(answer)
        recorder = self.shared.recorder
        if recorder is not None:
            recorder.record(addr, len(data), sent)


def event_factory(
    transcript: Transcript, socktype: str, timing: str, match: str, shared: Shared
) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory replaying `transcript`; watched (every chunk reported) when the
    observer wants every chunk (-vv), as the other builtins' are."""
    factory: Callable[[], asyncio.BaseProtocol]
    if socktype == "stream":
        factory = functools.partial(EventReplayStream, shared, transcript.steps(), timing, match)
    else:
        factory = functools.partial(EventReplayDatagram, shared, transcript.exchanges())
    observer = shared.observer
    if observer is None or not observer.wants_data:
        return factory
    from ..watch_asyncio import watching_factory

    return watching_factory(factory, observer)
