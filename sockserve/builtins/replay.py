"""-H replay --transcript FILE: serve the server's side of a recorded conversation back.

Streams (`Transcript.steps`): before each recorded "out" chunk, replay waits for the client's
input the recording had before it, then (`--timing recorded`) for the recorded delay, then
sends the chunk; after the last one it waits for the input recorded after it and the time to
the recorded close, and closes (its write side first, then it reads what the client still
sends, for at most `LINGER_SECONDS`, as reply does).

Waiting for input (`InputMatcher`), `--match`:
- length (default): until the client has sent, in all, at least as many bytes as the
  recording had by then (what a step does not use counts for the next);
- content: a step whose recorded input is text waits until that text has arrived (anywhere
  in what the client sent since the previous step), for at most `MATCH_WAIT` seconds; then
  it waits by length. A step whose recorded input is bytes (hex) waits by length.
A client that closes before sending what a step waits for ends the connection.

Datagrams (`Transcript.exchanges`): the n-th datagram of a peer is answered at once with the
datagrams recorded after the n-th "in" one (none after the last): per peer, in one process.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import OrderedDict
from typing import Any, ClassVar

from ..events import address_of
from ..transcripts import Step, Transcript
from .cores import LINGER_SECONDS
from .datagram import DatagramBuiltin
from .shared import HandlerOptions, Shared, send_datagram
from .stream import StreamBuiltin

__all__ = ["MATCH_WAIT", "InputMatcher", "replay_handler"]

#: How long --match content waits for a step's text before it waits by length.
MATCH_WAIT = 2.0
#: Datagram peers whose place in the transcript is kept, at most (the oldest is forgotten).
MAX_PEERS = 4096


class InputMatcher:
    """The client's input as replay waits on it: `feed` what arrives, ask `take(step)`.

    Memory stays bounded: for content matching only the tail of the input that may still
    hold the awaited text is kept.
    """

    def __init__(self) -> None:
        self.available = 0  # bytes received that no step has used yet
        self.window = bytearray()  # the last of those bytes, for content matching

    def feed(self, data: bytes | memoryview) -> None:
        self.available += len(data)
        self.window += data

    def take(self, step: Step, by_content: bool) -> bool:
        """Use the input `step` waits for, if it is there: its text (`by_content`), or as
        many bytes as it recorded."""
        expect = step.expect
        need = len(expect)
        if by_content and need:
            at = self.window.find(expect)
            if at < 0:
                del self.window[: max(0, len(self.window) - need + 1)]
                return False
            end = at + need
            del self.window[:end]
            self.available = len(self.window)
            return True
        if self.available < need:
            return False
        self.available -= need
        if len(self.window) > self.available:
            del self.window[: len(self.window) - self.available]
        return True


def content_wanted(step: Step, match: str) -> bool:
    """True if `step` waits by content (first) under `match`."""
    return match == "content" and step.expect_text and bool(step.expect)


class ReplayStream(StreamBuiltin):
    """A stream connection replayed: the steps of the transcript, in order."""

    steps: ClassVar[list[Step]]
    timing: ClassVar[str] = "recorded"
    match: ClassVar[str] = "length"

    def serve(self, sock: socket.socket) -> None:
        buf = bytearray(self.shared.chunk_size)
        matcher = InputMatcher()
        recorded = self.timing == "recorded"
        for step in self.steps:
            if not self.wait_for(sock, matcher, step, buf):
                return  # the client ended before sending what the recording had
            if recorded and step.delay > 0:
                time.sleep(step.delay)
            if step.send:
                self.send(sock, step.send)
        self.close_as_recorded(sock, buf)

    def wait_for(
        self, sock: socket.socket, matcher: InputMatcher, step: Step, buf: bytearray
    ) -> bool:
        """Receive until `matcher` has the input of `step`; False if the client closed."""
        by_content = content_wanted(step, self.match)
        deadline = time.monotonic() + MATCH_WAIT
        while not matcher.take(step, by_content):
            if by_content:
                left = deadline - time.monotonic()
                if left <= 0:
                    by_content = False
                    continue
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    continue
            n = sock.recv_into(buf)
            if not n:
                return False
            data = memoryview(buf)[:n]
            self.saw(data)
            matcher.feed(data)
        return True

    def close_as_recorded(self, sock: socket.socket, buf: bytearray) -> None:
        """Shut our write side, then read what the client still sends until it closes
        (for at most LINGER_SECONDS), so that it gets no reset."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    return
                n = sock.recv_into(buf)
                if not n:
                    return
                self.saw(memoryview(buf)[:n])
        except OSError:
            return


class ReplayDatagram(DatagramBuiltin):
    """Datagrams replayed: each peer's n-th datagram gets what the recording sent after
    the n-th."""

    exchanges: ClassVar[list[tuple[bytes, list[bytes]]]]
    places: ClassVar[OrderedDict[Any, int]]
    lock: ClassVar[threading.Lock]

    @classmethod
    def serve_datagram(cls, data: Any, sock: Any, client: Any) -> None:
        recorder = cls.shared.recorder
        sent = 0
        try:
            answers = cls.answers_for(client)
            address = address_of(client)  # a `Client` with its id: the events', not sendto's
            if address:
                for answer in answers:
                    sent += send_datagram(sock, answer, address)
        finally:
            if recorder is not None:
                recorder.record(client, len(data), sent)

    @classmethod
    def answers_for(cls, client: Any) -> list[bytes]:
        """The datagrams to answer `client`'s next one with (it moves on by one)."""
        key = address_of(client)
        with cls.lock:
            place = cls.places.pop(key, 0)
            cls.places[key] = place + 1
            if len(cls.places) > MAX_PEERS:
                cls.places.popitem(last=False)
        if place >= len(cls.exchanges):
            return []
        return cls.exchanges[place][1]


def replay_handler(
    transcript: Transcript,
    socktype: str,
    concurrency: str,
    timing: str,
    match: str,
    options: HandlerOptions,
) -> Any:
    """The handler class (or, for `event`, the protocol factory) replaying `transcript`."""
    shared = Shared("replay", options)
    if concurrency == "event":
        from .replay_event import event_factory  # asyncio: event mode only

        return event_factory(transcript, socktype, timing, match, shared)
    if socktype == "stream":
        attrs: dict[str, Any] = {
            "builtin": "replay",
            "options": options,
            "shared": shared,
            "steps": transcript.steps(),
            "timing": timing,
            "match": match,
            "__module__": __name__,
        }
        return type("ReplayStreamHandler", (ReplayStream,), attrs)
    attrs = {
        "builtin": "replay",
        "options": options,
        "shared": shared,
        "exchanges": transcript.exchanges(),
        "places": OrderedDict(),
        "lock": threading.Lock(),
        "__module__": __name__,
    }
    return type("ReplayDatagramHandler", (ReplayDatagram,), attrs)
