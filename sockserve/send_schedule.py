"""SendSchedule: datagrams a fault holds back, sent at their due times by one thread.

A datagram server in sync or thread mode must not wait out a --delay in the thread that
hands the datagram over (the server's loop, or a relay's one reply thread): the datagrams
behind it would wait too, each delay after the one before. A `SendSchedule` keeps them in a
timer heap instead, and one sender thread hands each on at its own due time, so each leaves
its delay after it was handed over. Within one flow (a peer, on one side of a relay) they
leave in the order they were handed over, as they do on an event loop: one is never due
before the one handed over before it.

The thread starts with the first datagram; `close` sends what is still held, at its time,
and stops it. After that, a datagram handed over waits in its caller's thread, as a stream's
chunk does.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SendSchedule"]

#: `close` waits this much longer than the last datagram held is due, at most.
CLOSE_SLACK = 1.0

#: What hands a datagram on (the next stage, then the socket); returns the bytes taken.
Hand = Callable[[memoryview], int]


class SendSchedule:
    """A timer heap of datagrams, sent by one thread in due order (ties: first handed over,
    first sent). A datagram that cannot be sent (OSError) is lost, as datagrams are."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._heap: list[tuple[float, int, Any, Hand, bytes]] = []
        self._order = itertools.count()
        self._flows: dict[Any, list[Any]] = {}  # flow: [latest due time, how many held]
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running = False

    def at(self, flow: Any, due: float, hand: Hand, piece: memoryview) -> int:
        """Hand `piece` on at `due` (time.monotonic()), not before what `flow` was handed
        earlier; return its size (it is sent later). Once closed: wait here, then send."""
        with self._ready:
            if not self._closed or self._running:
                held = self._flows.setdefault(flow, [0.0, 0])
                due = held[0] = max(due, held[0])
                held[1] += 1
                order = next(self._order)
                heapq.heappush(self._heap, (due, order, flow, hand, bytes(piece)))
                if self._thread is None:
                    self._running = True
                    self._thread = threading.Thread(
                        target=self._run, name="delayed datagrams", daemon=True
                    )
                    self._thread.start()
                elif self._heap[0][1] == order:  # due first: the thread waits less
                    self._ready.notify()
                return len(piece)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return hand(piece)

    def _run(self) -> None:
        """The sender thread: hand each datagram on at its due time; end once closed and
        nothing is held."""
        ready = self._ready
        while True:
            with ready:
                while True:
                    if not self._heap:
                        if self._closed:
                            self._running = False
                            return
                        ready.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    ready.wait(wait)
                _, _, flow, hand, data = heapq.heappop(self._heap)
                held = self._flows[flow]
                held[1] -= 1
                if not held[1]:
                    del self._flows[flow]
            try:
                hand(memoryview(data))
            except OSError:
                pass  # its peer or the server's socket is gone: lost, as datagrams are

    def close(self) -> None:
        """Send what is held, each at its time, then stop the thread; idempotent."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
            latest = max((item[0] for item in self._heap), default=0.0)
        if thread is not None:
            thread.join(max(0.0, latest - time.monotonic()) + CLOSE_SLACK)
