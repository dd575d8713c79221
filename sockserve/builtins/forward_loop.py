"""The polled relay of `forward` (streams, no watch, no timeout): one connection on its own
thread (`relay_here`: sync mode, a forked child), or every connection of a thread-mode server
on one shared loop thread (`relay_shared`), whose handler threads wait for their relay to end.

One thread moving every connection's bytes is faster than a hundred moving one each: the
relay is a few microseconds of Python between system calls, and each thread that takes the
GIL after a system call makes the others wait for it (a hand-off per call). On the shared
loop the handler threads sleep until their relay ends, and nobody waits for the GIL (see
benchmarks/RESULTS.md).

Each direction is a `Flow`: it copies small chunks (recv, send) and splices bulk through a
pipe once a read fills its buffer; it reads its source only when the destination took all it
held (back-pressure), and passes an EOF on as a half-close. A `Relay` is one connection's two
flows, driven by the readiness of its two sockets.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from typing import Any

from .forward import RELAY_BUFFER, SPLICE_PIPE_SIZE
from .stream import grow_pipe

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
READ, WRITE = select.POLLIN, select.POLLOUT  # the same bits as EPOLLIN, EPOLLOUT


class Flow:
    """One direction, `src` to `dst` (both non-blocking). `broken`: 0 when `src` failed, 1
    when `dst` did."""

    def __init__(self, src: Any, dst: Any) -> None:
        self.src, self.dst = src, dst
        self.relaying = True
        self.held = 0  # bytes read and not yet taken by dst
        self.moved = 0
        self.broken: int | None = None
        self.buffer = bytearray(RELAY_BUFFER)
        self.view = memoryview(self.buffer)
        self.start = 0  # where the held bytes begin in the buffer
        self.bulk = False  # the last read filled the buffer: splice from the next one
        self.pipe: tuple[int, int] | None = None
        self.size = RELAY_BUFFER  # what one splice moves at most

    def read(self) -> None:
        """Read what `src` has (nothing is held), and pass it on; an EOF as a half-close."""
        try:
            if self.pipe is None and self.bulk:
                self.pipe = os.pipe()
                self.size = max(RELAY_BUFFER, grow_pipe(self.pipe[1], SPLICE_PIPE_SIZE))
            if self.pipe is not None:
                n = os.splice(self.src.fileno(), self.pipe[1], self.size, flags=SPLICE_FLAGS)
            else:
                n = self.src.recv_into(self.buffer)
                self.bulk = n == RELAY_BUFFER
        except BlockingIOError:
            return
        except OSError:
            self.broken = 0
            return
        if not n:
            self.relaying = False
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        self.held, self.start = n, 0
        self.flush()

    def flush(self) -> None:
        """Give `dst` what it takes of the held bytes."""
        try:
            if self.pipe is not None:
                n = os.splice(self.pipe[0], self.dst.fileno(), self.held, flags=SPLICE_FLAGS)
            else:
                n = self.dst.send(self.view[self.start : self.start + self.held])
        except BlockingIOError:
            return
        except OSError:
            self.broken = 1
            return
        self.held -= n
        self.start += n
        self.moved += n

    def close(self) -> None:
        self.view.release()
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)


class Relay:
    """One connection's two flows: 0 client → upstream, 1 upstream → client.

    `failed[i]`: side i (0 the client, 1 the upstream) was reset, went away or failed.
    """

    def __init__(self, client: Any, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.fds = (client.fileno(), upstream.fileno())
        for sock in self.sockets:
            sock.setblocking(False)
        self.flows = (Flow(client, upstream), Flow(upstream, client))
        self.masks = [0, 0]  # what each socket is polled for
        self.failed = [False, False]
        self.error: BaseException | None = None  # a bug the loop hit: raised by the handler
        self.done = threading.Event()

    def on_ready(self, side: int, events: int) -> bool:
        """Socket `side` is ready (`events`, poll's bits): it is one flow's source and the
        other's destination. True if what the relay waits for may have changed."""
        source, sink = self.flows[side], self.flows[1 - side]
        changed = False
        if events & ~WRITE and source.relaying and not source.held:
            source.read()  # usually all of it passed on at once: nothing changed
            changed = bool(source.held) or not source.relaying or source.broken is not None
        if events & ~READ and sink.relaying and sink.held:
            sink.flush()
            changed = changed or not sink.held or sink.broken is not None
        return changed

    @property
    def ended(self) -> bool:
        """Both directions ended, or a side failed (recorded in `failed`)."""
        for d, flow in enumerate(self.flows):
            if flow.broken is not None:
                self.failed[d if flow.broken == 0 else 1 - d] = True
                return True
        return not (self.flows[0].relaying or self.flows[1].relaying)

    def wanted(self, side: int) -> int:
        """What socket `side` waits for now (0: nothing, not even its hang-up)."""
        source, sink = self.flows[side], self.flows[1 - side]
        mask = 0
        if source.relaying and not source.held:
            mask |= READ
        if sink.relaying and sink.held:
            mask |= WRITE
        return mask

    def update(self, poller: Any) -> bool:
        """Have `poller` (a poll or an epoll object) wait for what the relay waits for now;
        False once it has ended."""
        if self.ended:
            return False
        for side in (0, 1):
            mask = self.wanted(side)
            if mask != self.masks[side]:
                if not self.masks[side]:
                    poller.register(self.fds[side], mask)
                elif mask:
                    poller.modify(self.fds[side], mask)
                else:
                    poller.unregister(self.fds[side])
                self.masks[side] = mask
        return True

    def finish(self) -> None:
        """Add up what moved, release the flows, wake the handler."""
        for flow in self.flows:
            flow.close()
        self.done.set()

    @property
    def moved(self) -> tuple[int, int]:
        return self.flows[0].moved, self.flows[1].moved


def relay_here(relay: Relay) -> None:
    """Run `relay` on this thread until it ends (poll)."""
    poller = select.poll()
    try:
        while relay.update(poller):
            changed = False
            while not changed:
                for fd, events in poller.poll():
                    changed |= relay.on_ready(0 if fd == relay.fds[0] else 1, events)
    finally:
        relay.finish()


class SharedLoop:
    """A thread relaying every connection handed to it (`relay_shared`), over epoll. It ends,
    and closes its descriptors, once it relays none: the next connection starts another."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.epoll = select.epoll()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self.wake, select.EPOLLIN)
        self.arrived: list[Relay] = []  # handed over, not yet registered (under _lock)
        self.relays = 0  # handed over and not finished (under _lock)
        self.sides: dict[int, tuple[Relay, int]] = {}  # fd → its relay, and which side it is
        self.thread = threading.Thread(target=self.run, name="forward relay loop", daemon=True)
        self.thread.start()

    def run(self) -> None:
        epoll, sides, wake = self.epoll, self.sides, self.wake
        try:
            while True:
                for fd, events in epoll.poll():
                    if fd == wake:
                        self.take_arrived()
                        continue
                    entry = sides.get(fd)
                    if entry is not None:  # else: its relay ended earlier in this batch
                        self.step(entry[0], entry[1], events)
                if not sides and self.retire():
                    return
        finally:
            self.abandon()
            epoll.close()
            os.close(wake)

    def retire(self) -> bool:
        """True (and no longer the shared loop) when nothing was handed over meanwhile."""
        global _loop
        with _lock:
            if self.relays:
                return False
            if _loop is self:
                _loop = None
            return True

    def abandon(self) -> None:
        """After a bug in the loop itself: end the relays it still had (their handlers raise)
        and let the next connection start another loop."""
        global _loop
        with _lock:
            if _loop is self:
                _loop = None
            left = [relay for relay, side in self.sides.values() if side == 0] + self.arrived
            self.arrived = []
        for relay in left:
            relay.error = relay.error or RuntimeError("the forward relay loop failed")
            relay.finish()

    def take_arrived(self) -> None:
        """Register the relays handed over since the last wake-up."""
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            pass
        with _lock:
            arrived, self.arrived = self.arrived, []
        for relay in arrived:
            for side in (0, 1):
                self.sides[relay.fds[side]] = (relay, side)
            self.step(relay, None, 0)

    def step(self, relay: Relay, side: int | None, events: int) -> None:
        """Move what `events` on `side` allow; poll for what the relay waits for next, or
        finish it."""
        try:
            if side is not None and not relay.on_ready(side, events):
                return
            if relay.update(self.epoll):
                return
        except Exception as exc:  # a bug: end this relay (its handler raises it), not the loop
            relay.error = exc
        for s in (0, 1):
            if relay.masks[s]:
                with contextlib.suppress(OSError):
                    self.epoll.unregister(relay.fds[s])
            del self.sides[relay.fds[s]]
        with _lock:
            self.relays -= 1
        relay.finish()


_loop: SharedLoop | None = None  # the running shared loop, if any
_lock = threading.Lock()


def relay_shared(relay: Relay) -> None:
    """Run `relay` on the shared loop (started if none runs); return once it ended, raising
    what the loop hit."""
    global _loop
    with _lock:
        if _loop is None or _loop.pid != os.getpid():  # a forked child starts its own
            _loop = SharedLoop()
        loop = _loop
        loop.arrived.append(relay)
        loop.relays += 1
    os.eventfd_write(loop.wake, 1)
    relay.done.wait()
    if relay.error is not None:
        raise relay.error
