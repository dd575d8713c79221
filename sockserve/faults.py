"""Faults: stages that misbehave on purpose, on a watched connection (toxiproxy's toxics).

A `FaultDresser` (the configuration's, see `compose.watch_dressers`) chooses which
connections get faults (--fault-rate) and appends the stages of a `FaultPlan` to their
watch: `fault_stages(conn, direction, datagram)` builds one direction's, and is all a relay needs to
break its own traffic. Every stage of one connection shares a `Connection`: its random
generator (derived from --seed, one per connection, so forked children differ), its byte
counts, and how to close or reset it (`attach_socket` for a blocking socket,
`attach_transport` on an event loop).

The stages themselves are in `sockserve.fault_stages`. Timing: a stage hands a chunk on at
its due time through a `Pacer`, which sleeps in the caller's thread (a stream's handler
thread or child: the handler waits, as on a slow network), on an event loop schedules it
with call_later (the loop never waits), and on a datagram socket in sync or thread mode
gives it to the dresser's `SendSchedule` (one sender thread for the run: a datagram leaves
its delay after it was handed over, whatever was handed over before it). What is received
reaches the handler whole (it already holds it): a throttle on "in" waits before the next
chunk (blocking) or pauses reading (event loop). Each application of a fault is told with
`Events.fault`; delay, throttle and chunk once per connection (or datagram). A relay
(`--faults-to`) dresses each side's watch with `FaultDresser.dress(watch, directions)`.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable
from typing import Any

from .events import Direction
from .fault_stages import (
    Chunk,
    Connection,
    Cutoff,
    DatagramIn,
    DatagramOut,
    Delay,
    FaultStage,
    Held,
    Pacer,
    Throttle,
    close_now,
    milliseconds,
    reset_now,
)
from .faultplan import FaultPlan
from .send_schedule import SendSchedule
from .watch import Stage, Watch

__all__ = [
    "Connection",
    "FaultDresser",
    "Pacer",
    "admit_connection",
    "attach_socket",
    "attach_transport",
    "close_now",
    "connection_of",
    "fault_stages",
    "reset_now",
]


def fault_stages(conn: Connection, direction: Direction, datagram: bool) -> list[Stage]:
    """The stages of `conn.plan` for one direction of a connection, in chain order."""
    plan = conn.plan
    stages: list[Stage] = []
    if direction == "in":
        if datagram:
            stages.append(DatagramIn(conn, "in"))
        if plan.throttle is not None:
            stages.append(Throttle(conn, "in"))
        if plan.close_after is not None or plan.reset_after is not None:
            stages.append(Cutoff(conn, "in"))
        if not stages and (plan.fail_first or plan.delay_accept):
            stages.append(FaultStage(conn, "in"))  # passes all: marks the connection chosen
        return stages
    if plan.delay:
        stages.append(Delay(conn, "out"))
    if plan.throttle is not None:
        stages.append(Throttle(conn, "out"))
    if plan.chunk is not None:
        stages.append(Chunk(conn, "out"))
    if datagram:
        if plan.drop or plan.duplicate or plan.reorder:
            stages.append(DatagramOut(conn, "out"))
    elif (
        any(value is not None for value in (plan.close_after, plan.reset_after, plan.stall_after))
        or plan.stall
    ):
        stages.append(Cutoff(conn, "out"))
    return stages


class FaultDresser:
    """The configuration's dresser: each new watch it chooses (--fault-rate; every datagram
    socket's, which chooses per datagram) gets a `Connection` and its stages.

    One random generator per process, seeded by --seed, draws the choice and each
    connection's own generator, in the order the watches are made. `loop`: the watches are
    an event loop's (`sockserve.watch_asyncio`). `schedule`: what sends the datagrams a
    delay holds back (a datagram server in sync or thread mode); the server closes it
    (`close`) when it closes.
    """

    def __init__(
        self, plan: FaultPlan, datagram: bool, loop: bool, schedule: SendSchedule | None = None
    ) -> None:
        self.plan = plan
        self.datagram = datagram
        self.loop = loop
        self.schedule = schedule
        self.rng = random.Random(plan.seed)
        self.lock = threading.Lock()
        self.failed = 0  # connections failed by --fail-first so far
        self.held = Held()

    def __call__(self, watch: Watch) -> None:
        self.dress(watch)

    def dress(
        self, watch: Watch, directions: tuple[Direction, ...] = ("in", "out")
    ) -> Connection | None:
        """Choose `watch` or not; if chosen, append the stages of `directions` (a relay
        breaking one side only passes one) and return its Connection."""
        conn = self.choose(watch)
        if conn is None:
            return None
        for direction in directions:
            for stage in fault_stages(conn, direction, self.datagram):
                watch.append(direction, stage)
        return conn

    def close(self) -> None:
        """The server closes: send the datagrams still held back, then stop sending."""
        if self.schedule is not None:
            self.schedule.close()

    def choose(self, watch: Watch) -> Connection | None:
        """Draw whether `watch` takes faults (--fault-rate; every datagram socket does, and
        chooses per datagram); if so, its Connection, with a generator of its own."""
        plan = self.plan
        with self.lock:
            chosen = self.datagram or plan.fault_rate >= 100
            if not chosen:
                chosen = self.rng.random() * 100 < plan.fault_rate
            seed = self.rng.getrandbits(64) if chosen else 0
        if not chosen:
            return None
        return Connection(plan, random.Random(seed), watch, self)

    def take_failure(self) -> bool:
        """True for the first --fail-first connections chosen (counted here)."""
        with self.lock:
            if self.failed >= self.plan.fail_first:
                return False
            self.failed += 1
            return True


def connection_of(watch: Watch) -> Connection | None:
    """The faults' Connection of `watch`, or None when it has none (not chosen)."""
    for stage in (watch.inbound.next, watch.outbound.next):
        while stage is not None:
            if isinstance(stage, FaultStage):
                return stage.conn
            stage = stage.next
    return None


def attach_socket(watch: Watch, sock: socket.socket) -> Connection | None:
    """Tell the faults of `watch` its blocking stream socket (to close or reset it), and
    set TCP_NODELAY on it: a delayed or chunked write leaves as it is sent."""
    conn = connection_of(watch)
    if conn is None:
        return None
    conn.sock = sock
    _nodelay(sock)
    return conn


def attach_transport(watch: Watch, transport: Any) -> Connection | None:
    """Tell the faults of `watch` its event-loop transport, and set TCP_NODELAY."""
    conn = connection_of(watch)
    if conn is None:
        return None
    conn.transport = transport
    raw = transport.get_extra_info("socket")
    if raw is not None:
        _nodelay(raw)
    return conn


def _nodelay(sock: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def admit_connection(
    watch: Watch, transport: Any, client: Any, start: Callable[[Any], None]
) -> None:
    """On an event loop, a new connection's faults as a whole: --fail-first resets or
    closes it (`start` never runs), --delay-accept runs `start(transport)` that much later
    (reading paused meanwhile); otherwise it runs now. `client`: as the server has it."""
    if watch.client is None:
        watch.client = client
    conn = attach_transport(watch, transport)
    if conn is None:
        start(transport)
        return
    owner, plan = conn.owner, conn.plan
    if plan.fail_first and owner.take_failure():
        conn.fire(f"fail-{plan.fail_mode}", f"connection {owner.failed} of {plan.fail_first}")
        conn.ended = plan.fail_mode
        if plan.fail_mode == "reset":
            reset_now(None, transport)
        else:
            close_now(None, transport)
        return
    if not plan.delay_accept:
        start(transport)
        return
    import asyncio  # on an event loop only: loaded already

    conn.fire("delay-accept", milliseconds(plan.delay_accept))
    transport.pause_reading()

    def later() -> None:
        if not transport.is_closing():
            transport.resume_reading()
            start(transport)

    asyncio.get_running_loop().call_later(plan.delay_accept, later)
