"""The fault stages (`sockserve.faults` puts them on watches): each one small, toxiproxy's way.

`Pacer` hands pieces on at their due times, by sleeping in the caller's thread, on an event
loop with call_later, or, for a datagram socket in sync or thread mode, through the owner's
`SendSchedule` (one sender thread: datagrams are delayed side by side, not one after
another). A `Connection` is what the stages of one connection share.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .events import Direction, address_of
from .faultplan import FaultPlan
from .send_schedule import SendSchedule
from .watch import Sink, Stage, Watch

#: Throttled output leaves in slices of at most this share of a second's worth.
THROTTLE_SLICE = 0.05
#: On an event loop, a reordered datagram waits at most this long for the next one.
REORDER_HOLD = 0.2


def milliseconds(seconds: float) -> str:
    """`0.05` → `50ms`."""
    return f"{seconds * 1000:.0f}ms"


class Pacer:
    """Hands pieces on at due times (time.monotonic()), in order: sleeping in the caller's
    thread, or, on an event loop (`loop`), with call_later (each piece copied), or, given a
    `schedule`, by its thread, in order within the flow `flow()` names (each piece copied).

    `gone()` true: the connection is lost, queued pieces are dropped.
    """

    def __init__(
        self,
        loop: bool,
        gone: Callable[[], bool] | None = None,
        schedule: SendSchedule | None = None,
        flow: Callable[[], Any] | None = None,
    ) -> None:
        self.loop = loop
        self.gone = gone
        self.schedule = schedule
        self.flow = flow
        self.last = 0.0
        self.queue: deque[tuple[float, Callable[[memoryview], int], bytes]] = deque()
        self.timer: Any = None

    def at(self, due: float, hand: Callable[[memoryview], int], piece: memoryview) -> int:
        """Hand `piece` on at `due` (not before a piece handed earlier); return how many
        bytes of it were taken (on a loop or a schedule: all, later)."""
        if self.schedule is not None:
            return self.schedule.at(self.flow() if self.flow else None, due, hand, piece)
        due = max(due, self.last)
        self.last = due
        if not self.loop:
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            return hand(piece)
        if not self.queue and due <= time.monotonic():
            return hand(piece)
        self.queue.append((due, hand, bytes(piece)))
        if self.timer is None:
            self._schedule()
        return len(piece)

    def _schedule(self) -> None:
        import asyncio  # on an event loop only: loaded already

        wait = max(0.0, self.queue[0][0] - time.monotonic())
        self.timer = asyncio.get_running_loop().call_later(wait, self._run)

    def _run(self) -> None:
        self.timer = None
        if self.gone is not None and self.gone():
            self.queue.clear()
            return
        now = time.monotonic() + 0.0005
        while self.queue and self.queue[0][0] <= now:
            _, hand, data = self.queue.popleft()
            hand(memoryview(data))
        if self.queue:
            self._schedule()


class Connection:
    """What the fault stages of one connection (or datagram socket) share."""

    def __init__(self, plan: FaultPlan, rng: random.Random, watch: Watch, owner: Any) -> None:
        self.plan = plan
        self.rng = rng
        self.watch = watch
        self.owner = owner  # the FaultDresser: loop, held (--reorder), failed (--fail-first)
        self.loop = owner.loop
        self.active = True  # datagrams: chosen by --fault-rate (decided per datagram)
        self.dropped = False  # the latest datagram received was dropped
        self.passed = 0  # bytes through, both directions (--close-after, --reset-after)
        self.sent = 0  # bytes sent (--stall-after)
        self.ended: str | None = None  # "close", "reset" or "stall": output is swallowed
        self.told: set[str] = set()
        self.sock: socket.socket | None = None
        self.transport: Any = None
        self.side: str | None = None  # a relay's: "client" or "upstream" (--faults-to)
        #: A datagram socket's in sync or thread mode: what sends the delayed datagrams.
        self.schedule: SendSchedule | None = getattr(owner, "schedule", None)

    def fire(self, kind: str, detail: str = "", once: bool = False) -> None:
        """Tell of a fault applied (`once`: only its first time on this connection)."""
        if once:
            if kind in self.told:
                return
            self.told.add(kind)
        events = self.watch.events
        if events is None:
            return
        if self.side is None:
            events.fault(self.watch.client, kind, detail)
        else:
            events.fault(self.watch.client, kind, detail, side=self.side)

    def flow(self) -> Any:
        """The flow a datagram sent now belongs to: this side's, toward its peer."""
        return self.side, address_of(self.watch.client)

    def gone(self) -> bool:
        """True once the transport (event loop) is closing."""
        return self.transport is not None and self.transport.is_closing()

    def end(self, how: str) -> None:
        """Close (orderly) or reset the connection now, or stall it; once."""
        if self.ended is not None:
            return
        self.ended = how
        if how == "stall":
            self.fire("stall", f"after {self.sent} B sent")
            return
        self.fire(how, f"after {self.passed} B")
        if how == "close":
            close_now(self.sock, self.transport)
        else:
            reset_now(self.sock, self.transport)


def close_now(sock: socket.socket | None, transport: Any = None) -> None:
    """End a connection in order (FIN); the handler then reads EOF."""
    if transport is not None:
        transport.close()
    elif sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def reset_now(sock: socket.socket | None, transport: Any = None) -> None:
    """Reset a TCP connection (SO_LINGER 0, then its last descriptor closed: RST).

    A blocking socket's descriptor is replaced, in place, by one end of a socket pair whose
    other end is closed: the handler's socket object reads EOF from then on, and no other
    connection can take its number.
    """
    linger = struct.pack("ii", 1, 0)
    if transport is not None:
        raw = transport.get_extra_info("socket")
        if raw is not None:
            try:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            except OSError:
                pass
        transport.abort()
        return
    if sock is None or sock.fileno() < 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RD)  # wakes a thread reading it (a relay's other direction)
    except OSError:
        pass
    dead, other = socket.socketpair()
    other.close()
    try:
        os.dup2(dead.fileno(), sock.fileno(), inheritable=False)
    finally:
        dead.close()


class FaultStage(Stage):
    """A stage of one connection's faults."""

    def __init__(self, conn: Connection, direction: Direction) -> None:
        super().__init__()
        self.conn = conn
        self.direction: Direction = direction
        self.pacer = Pacer(conn.loop, conn.gone, conn.schedule, conn.flow)

    def hand_on(self, sink: Sink) -> Callable[[memoryview], int]:
        """What hands a piece to the next stage (or `sink`)."""
        return lambda piece: Stage.pass_on(self, piece, sink)


class Delay(FaultStage):
    """--delay DURATION[:JITTER]: each chunk sent leaves that much later (jitter: ± at
    random), in order."""

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        if not conn.active or conn.ended:
            return super().pass_on(chunk, sink)
        plan = conn.plan
        delay = plan.delay
        if plan.jitter:
            delay = max(0.0, delay + conn.rng.uniform(-plan.jitter, plan.jitter))
        conn.fire("delay", milliseconds(plan.delay), once=True)
        return self.pacer.at(time.monotonic() + delay, self.hand_on(sink), chunk)


class Throttle(FaultStage):
    """--throttle RATE, one direction: sent bytes leave at RATE (in slices), each at the
    time its last byte would have crossed the link; received chunks reach the handler no
    faster than RATE."""

    free_at = 0.0

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        rate = conn.plan.throttle
        if not conn.active or conn.ended or rate is None or not chunk:
            return super().pass_on(chunk, sink)
        conn.fire("throttle", f"{rate} B/s", once=True)
        now = time.monotonic()
        start = max(now, self.free_at)
        if self.direction == "in":
            self.free_at = start + len(chunk) / rate
            if conn.loop:
                self._pause_reading(start - now)
            elif start > now:
                time.sleep(start - now)
            return super().pass_on(chunk, sink)
        step = max(1, int(rate * THROTTLE_SLICE))
        hand = self.hand_on(sink)
        done = 0
        due = start
        while done < len(chunk):
            piece = chunk[done : done + step]
            due += len(piece) / rate
            n = self.pacer.at(due, hand, piece)
            done += n
            if n < len(piece):
                break
        self.free_at = due
        return done

    def _pause_reading(self, wait: float) -> None:
        transport = self.conn.transport
        if wait < 0.001 or transport is None or transport.is_closing():
            return
        import asyncio  # on an event loop only: loaded already

        transport.pause_reading()

        def resume() -> None:
            if not transport.is_closing():
                transport.resume_reading()

        asyncio.get_running_loop().call_later(wait, resume)


class Chunk(FaultStage):
    """--chunk N[:DURATION]: what is sent goes in writes of at most N bytes, that long apart."""

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        size = conn.plan.chunk
        if (
            not conn.active
            or conn.ended
            or size is None
            or len(chunk) <= size
            and not (conn.plan.chunk_gap)
        ):
            return super().pass_on(chunk, sink)
        gap = conn.plan.chunk_gap
        conn.fire("chunk", f"{size} B" + (f" every {milliseconds(gap)}" if gap else ""), once=True)
        hand = self.hand_on(sink)
        due = max(time.monotonic(), self.pacer.last)
        if self.pacer.last:
            due = max(due, self.pacer.last + gap)
        done = 0
        while done < len(chunk):
            piece = chunk[done : done + size]
            n = self.pacer.at(due, hand, piece)
            done += n
            if n < len(piece):
                break
            due += gap
        return done


class Cutoff(FaultStage):
    """The last stage: --close-after and --reset-after (bytes of both directions together),
    --stall and --stall-after (bytes sent). Once it has cut, what is sent is swallowed (the
    handler sees it sent) and what is received is the EOF of a closed socket."""

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        plan = conn.plan
        if not conn.active:
            return super().pass_on(chunk, sink)
        if self.direction == "in":
            n = super().pass_on(chunk, sink)
            conn.passed += n
            self._check_passed()
            return n
        if conn.ended is not None:
            return len(chunk)
        room = len(chunk)
        limit = plan.close_after if plan.close_after is not None else plan.reset_after
        if limit is not None:
            room = min(room, limit - conn.passed)
        stall_at = 0 if plan.stall else plan.stall_after
        if stall_at is not None:
            room = min(room, stall_at - conn.sent)
        room = max(room, 0)
        n = super().pass_on(chunk[:room], sink) if room else 0
        conn.passed += n
        conn.sent += n
        if n < room:
            return n  # a partial send: the handler sends the rest later
        if stall_at is not None and conn.sent >= stall_at:
            conn.end("stall")
        self._check_passed()
        return len(chunk)

    def _check_passed(self) -> None:
        conn = self.conn
        plan = conn.plan
        if plan.close_after is not None and conn.passed >= plan.close_after:
            conn.end("close")
        elif plan.reset_after is not None and conn.passed >= plan.reset_after:
            conn.end("reset")


class DatagramIn(FaultStage):
    """The first "in" stage of a datagram socket: --fault-rate chooses the datagram, --drop
    loses it (the stage hands nothing on: the request is not served)."""

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        plan = conn.plan
        conn.told.clear()
        conn.active = plan.fault_rate >= 100 or conn.rng.random() * 100 < plan.fault_rate
        conn.dropped = conn.active and plan.drop > 0 and conn.rng.random() * 100 < plan.drop
        if conn.dropped:
            conn.fire("drop", "in")
            return 0
        return super().pass_on(chunk, sink)


class DatagramOut(FaultStage):
    """The last "out" stage of a datagram socket: --drop, --duplicate and --reorder."""

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        plan = conn.plan
        if not conn.active:
            return super().pass_on(chunk, sink)
        rng = conn.rng
        if plan.drop and rng.random() * 100 < plan.drop:
            conn.fire("drop", "out")
            return len(chunk)
        held = conn.owner.held
        if plan.reorder and rng.random() * 100 < plan.reorder and held.hold(chunk, sink):
            conn.fire("reorder", "held back")
            if conn.loop:
                held.flush_later()
            return len(chunk)
        n = super().pass_on(chunk, sink)
        if plan.duplicate and rng.random() * 100 < plan.duplicate:
            conn.fire("duplicate", "out")
            super().pass_on(chunk, sink)
        held.flush()
        return n


class Held:
    """The datagram --reorder holds back (one at most), sent after the next one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.item: tuple[bytes, Sink, float] | None = None
        self.timer: Any = None

    def hold(self, chunk: memoryview, sink: Sink) -> bool:
        """Keep `chunk` to send later; False if one is held already."""
        with self.lock:
            if self.item is not None:
                return False
            self.item = (bytes(chunk), sink, time.monotonic())
            return True

    def flush(self, older_than: float | None = None) -> None:
        """Send the datagram held (only if held that long)."""
        with self.lock:
            item = self.item
            if item is None or (older_than is not None and time.monotonic() - item[2] < older_than):
                return
            self.item = None
        try:
            item[1](memoryview(item[0]))
        except OSError:
            pass  # its client is gone: lost, as datagrams are

    def flush_later(self) -> None:
        """On an event loop: send it after REORDER_HOLD if no datagram came first."""
        import asyncio  # on an event loop only: loaded already

        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(REORDER_HOLD, self.flush)
