"""SendSchedule: held datagrams leave at their own due times, in order within a flow."""

from __future__ import annotations

import threading
import time

from sockserve.send_schedule import SendSchedule


class Sink:
    """Keeps each piece handed to it, with when it came and on which thread."""

    def __init__(self, fails: bytes = b"") -> None:
        self.pieces: list[tuple[float, bytes]] = []
        self.threads: set[str] = set()
        self.fails = fails
        self.arrived = threading.Condition()

    def __call__(self, piece: memoryview) -> int:
        if bytes(piece) == self.fails:
            raise ConnectionRefusedError
        with self.arrived:
            self.pieces.append((time.monotonic(), bytes(piece)))
            self.threads.add(threading.current_thread().name)
            self.arrived.notify_all()
        return len(piece)

    def wait_for(self, count: int) -> list[bytes]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.pieces) >= count, 5)
            return [piece for _, piece in self.pieces]

    def when(self, piece: bytes) -> float:
        return next(at for at, got in self.pieces if got == piece)


def schedule_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "delayed datagrams"]


def test_each_leaves_at_its_own_time_not_after_the_one_before() -> None:
    schedule, sink = SendSchedule(), Sink()
    start = time.monotonic()
    for n in range(5):
        assert schedule.at(("peer", n), start + 0.05, sink, memoryview(b"d%d" % n)) == 2
    assert sink.wait_for(5) == [b"d0", b"d1", b"d2", b"d3", b"d4"]
    late = [sink.when(b"d%d" % n) - start for n in range(5)]
    assert all(0.05 <= t < 0.2 for t in late), late
    assert sink.threads == {"delayed datagrams"}  # nobody waited in the caller's thread
    schedule.close()
    assert not schedule_threads()


def test_one_flow_keeps_its_order_other_flows_do_not_wait() -> None:
    schedule, sink = SendSchedule(), Sink()
    start = time.monotonic()
    schedule.at("a", start + 0.12, sink, memoryview(b"a-first"))
    schedule.at("a", start + 0.01, sink, memoryview(b"a-second"))  # due sooner, yet waits
    schedule.at("b", start + 0.01, sink, memoryview(b"b"))
    assert sink.wait_for(3) == [b"b", b"a-first", b"a-second"]  # b did not wait for a
    assert sink.when(b"a-second") >= sink.when(b"a-first") >= start + 0.12
    schedule.close()


def test_a_datagram_that_cannot_be_sent_is_lost_and_the_rest_go() -> None:
    schedule, sink = SendSchedule(), Sink(fails=b"refused")
    now = time.monotonic()
    schedule.at("a", now + 0.01, sink, memoryview(b"refused"))
    schedule.at("a", now + 0.02, sink, memoryview(b"next"))
    assert sink.wait_for(1) == [b"next"]
    schedule.close()
    assert not schedule_threads()


def test_close_sends_what_is_held_then_the_caller_waits_itself() -> None:
    schedule, sink = SendSchedule(), Sink()
    start = time.monotonic()
    piece = bytearray(b"held")
    schedule.at("a", start + 0.05, sink, memoryview(piece))
    piece[:] = b"XXXX"  # the schedule keeps a copy
    schedule.close()
    assert [got for _, got in sink.pieces] == [b"held"]
    assert sink.when(b"held") >= start + 0.05
    assert not schedule_threads()
    assert schedule.at("a", time.monotonic() + 0.02, sink, memoryview(b"after")) == 5
    assert sink.threads == {"delayed datagrams", threading.current_thread().name}
    assert [got for _, got in sink.pieces] == [b"held", b"after"]
    schedule.close()  # again: nothing to do


def test_a_schedule_never_used_starts_no_thread() -> None:
    SendSchedule().close()
    assert not schedule_threads()
