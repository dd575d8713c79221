"""The fault stages on a Watch, with sinks that keep what they get (no sockets but a pair)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest
from servertools import EventsRecorder

from sockserve.faultplan import FaultPlan
from sockserve.faults import (
    FaultDresser,
    attach_socket,
    reset_now,
)
from sockserve.watch import Watch


class Sink:
    """An "out" sink that keeps each piece and when it came."""

    def __init__(self, takes: int | None = None) -> None:
        self.pieces: list[tuple[float, bytes]] = []
        self.takes = takes

    def __call__(self, chunk: memoryview) -> int:
        n = len(chunk) if self.takes is None else min(self.takes, len(chunk))
        self.pieces.append((time.monotonic(), bytes(chunk[:n])))
        return n

    @property
    def data(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


def dressed(plan: FaultPlan, datagram: bool = False, loop: bool = False) -> tuple[Watch, Any]:
    events = EventsRecorder()
    watch = Watch(events, ("127.0.0.1", 5), dressers=[FaultDresser(plan, datagram, loop)])
    return watch, events


def test_delay_sleeps_before_each_chunk_and_is_told_once() -> None:
    watch, events = dressed(FaultPlan(delay=0.03))
    sink = Sink()
    start = time.monotonic()
    assert watch.outgoing(b"ab", sink) == 2
    assert watch.outgoing(b"cd", sink) == 2
    assert sink.data == b"abcd"
    assert time.monotonic() - start >= 0.058
    assert events.named("fault") == [(("127.0.0.1", 5), "delay", "30ms")]
    assert watch.sent == 4


def test_throttle_out_paces_slices_at_the_rate() -> None:
    watch, _ = dressed(FaultPlan(throttle=20000))  # slices of 1000 B, 50 ms each
    sink = Sink()
    start = time.monotonic()
    assert watch.outgoing(bytes(3000), sink) == 3000
    assert [len(piece) for _, piece in sink.pieces] == [1000, 1000, 1000]
    assert sink.pieces[-1][0] - start >= 0.145


def test_throttle_in_waits_before_the_next_chunk() -> None:
    watch, _ = dressed(FaultPlan(throttle=10000))
    start = time.monotonic()
    watch.incoming(bytes(500))  # passes at once; the next one waits for its 50 ms
    assert time.monotonic() - start < 0.03
    watch.incoming(bytes(500))
    assert time.monotonic() - start >= 0.045


def test_chunk_splits_and_a_partial_send_stops_it() -> None:
    watch, events = dressed(FaultPlan(chunk=3))
    sink = Sink()
    assert watch.outgoing(b"abcdefgh", sink) == 8
    assert [piece for _, piece in sink.pieces] == [b"abc", b"def", b"gh"]
    assert events.named("fault")[0][1:] == ("chunk", "3 B")
    short = Sink(takes=2)
    assert watch.outgoing(b"abcdef", short) == 2  # send() took 2 of the first 3


def test_stall_after_swallows_the_rest() -> None:
    watch, events = dressed(FaultPlan(stall_after=5))
    sink = Sink()
    assert watch.outgoing(b"0123456789", sink) == 10
    assert watch.outgoing(b"more", sink) == 4
    assert sink.data == b"01234"
    assert [call[1] for call in events.named("fault")] == ["stall"]


def test_close_after_counts_both_ways_and_shuts_the_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(2)
        b.settimeout(2)
        watch, events = dressed(FaultPlan(close_after=6))
        conn = attach_socket(watch, a)
        assert conn is not None
        watch.incoming(b"abc")
        sink = Sink()
        assert watch.outgoing(b"defgh", sink) == 5
        assert sink.data == b"def"  # 3 in + 3 out: the limit
        assert b.recv(10) == b""  # shut down: EOF
        assert a.recv(10) == b""  # the handler reads EOF too
        assert watch.outgoing(b"late", sink) == 4 and sink.data == b"def"
        assert events.named("fault")[0][1:] == ("close", "after 6 B")


def test_reset_replaces_the_descriptor_with_a_dead_end() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname(), timeout=2) as client:
        served, _ = listener.accept()
        with served:
            fd = served.fileno()
            reset_now(served)
            assert served.fileno() == fd  # the same number, now a dead socket pair end
            assert not os.get_inheritable(fd)
            assert served.recv(10) == b""
            with pytest.raises(ConnectionResetError):
                client.recv(10)


def test_datagram_drop_in_hands_nothing_on_and_out_swallows() -> None:
    watch, events = dressed(FaultPlan(drop=100), datagram=True)
    assert watch.incoming(b"hello") == 0
    watch, events = dressed(FaultPlan(drop=100, fault_rate=0), datagram=True)
    sink = Sink()
    assert watch.incoming(b"hello") == 5
    assert watch.outgoing(b"hello", sink) == 5 and sink.data == b"hello"
    assert events.named("fault") == []


def test_duplicate_and_reorder_out() -> None:
    watch, _ = dressed(FaultPlan(duplicate=100), datagram=True)
    sink = Sink()
    watch.incoming(b"x")
    watch.outgoing(b"one", sink)
    assert [piece for _, piece in sink.pieces] == [b"one", b"one"]
    dresser = FaultDresser(FaultPlan(reorder=100), True, False)
    sink = Sink()
    for data in (b"1", b"2", b"3"):
        watch = Watch(None, None, dressers=[dresser])
        watch.incoming(b"q")
        watch.outgoing(data, sink)
    assert [piece for _, piece in sink.pieces] == [b"2", b"1"]  # 3 is held
    dresser.held.flush()
    assert sink.pieces[-1][1] == b"3"


def test_on_a_loop_nothing_blocks_and_order_is_kept() -> None:
    async def run() -> tuple[float, Sink]:
        watch, _ = dressed(FaultPlan(delay=0.03, chunk=2), loop=True)
        sink = Sink()
        start = time.monotonic()
        assert watch.outgoing(b"abcde", sink) == 5
        assert watch.outgoing(b"f", sink) == 1
        returned = time.monotonic() - start
        await asyncio.sleep(0.08)
        return returned, sink

    returned, sink = asyncio.run(run())
    assert returned < 0.01
    assert [piece for _, piece in sink.pieces] == [b"ab", b"cd", b"e", b"f"]
