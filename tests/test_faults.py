"""The fault dresser: which watches get faults, from the seed; the stages of a relay's side;
the socket the faults act on."""

from __future__ import annotations

import random
import socket
import time
from typing import Any

from servertools import EventsRecorder

from sockserve.faultplan import FaultPlan
from sockserve.faults import (
    Connection,
    FaultDresser,
    attach_socket,
    connection_of,
    fault_stages,
)
from sockserve.watch import Watch, WatchedSocket


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


def test_each_connection_draws_from_its_own_seeded_generator() -> None:
    def draws(seed: int) -> list[float]:
        dresser = FaultDresser(FaultPlan(delay=0.01, jitter=0.01, seed=seed), False, False)
        conns = [connection_of(Watch(None, None, dressers=[dresser])) for _ in range(3)]
        return [conn.rng.random() for conn in conns if conn is not None]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert len(set(draws(1))) == 3  # connections differ (forked children too)


def test_fault_rate_zero_dresses_nothing_and_one_hundred_everything() -> None:
    watch, _ = dressed(FaultPlan(delay=1.0, fault_rate=0))
    assert not watch.dressed and connection_of(watch) is None
    watch, _ = dressed(FaultPlan(fail_first=1))
    assert watch.dressed and connection_of(watch) is not None


def test_fault_rate_chooses_connections_by_the_seed() -> None:
    def chosen(seed: int) -> list[bool]:
        dresser = FaultDresser(FaultPlan(delay=1.0, fault_rate=50, seed=seed), False, False)
        picks = []
        for _ in range(16):
            watch = Watch(None, None, dressers=[dresser])
            picks.append(watch.dressed)
        return picks

    assert chosen(5) == chosen(5)
    assert 0 < sum(chosen(5)) < 16


def test_stages_for_a_relay_are_built_per_direction() -> None:
    plan = FaultPlan(delay=0.01, throttle=1000, chunk=3, close_after=5)
    watch = Watch(None, None)
    conn = Connection(plan, random.Random(1), watch, FaultDresser(plan, False, False))
    names = [type(s).__name__ for s in fault_stages(conn, "out", datagram=False)]
    assert names == ["Delay", "Throttle", "Chunk", "Cutoff"]
    names = [type(s).__name__ for s in fault_stages(conn, "in", datagram=False)]
    assert names == ["Throttle", "Cutoff"]


def test_watched_socket_send_goes_through_the_faults() -> None:
    a, b = socket.socketpair()
    with b:
        b.settimeout(2)
        watch, _ = dressed(FaultPlan(chunk=2, chunk_gap=0.01))
        sock = WatchedSocket.adopt(a, watch)
        with sock:
            attach_socket(watch, sock)
            start = time.monotonic()
            sock.sendall(b"abcd")  # two writes, 10 ms apart
            assert time.monotonic() - start >= 0.009
            assert b.recv(10) == b"abcd"
            assert watch.sent == 4


def test_a_relay_dresses_one_direction_of_a_watch() -> None:
    dresser = FaultDresser(FaultPlan(delay=0.01, throttle=1000), False, False)
    watch = Watch(None, None)
    conn = dresser.dress(watch, ("out",))
    assert conn is not None and connection_of(watch) is conn
    assert watch.inbound.next is None and watch.outbound.next is not None
