"""Honest fault timing on datagrams (issue 17 §3): datagrams sent back to back with --delay
each arrive the delay after they were sent, side by side, not one delay after another, in
sync, thread and event mode, on a plain server and on a relay (--faults-to)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from time import monotonic
from typing import Any

import pytest

import sockserve

MODES = ["sync", "thread", "event"]
COUNT = 4  # datagrams in flight at once
DELAY = 0.15
EARLIEST = 0.145  # a delayed datagram never leaves sooner
#: Later than the delay by at most this: a loaded machine may stall the whole exchange a
#: while (all come late together).
SLACK = 0.35
#: The first and the last come back at most this far apart. One after another, each would
#: be DELAY after the one before: COUNT of them, (COUNT - 1) * DELAY apart.
SPREAD = 1.5 * DELAY


def sent_and_answered(address: Any, count: int = COUNT) -> list[float]:
    """Send `count` datagrams back to back; how long each took to come back, in the order
    they came back (each is told apart by its payload)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        sent: dict[bytes, float] = {}
        for n in range(count):
            payload = b"d%d" % n
            sent[payload] = monotonic()
            client.sendto(payload, address)
        came: list[tuple[bytes, float]] = []
        for _ in range(count):
            data = client.recv(100)
            came.append((data, monotonic() - sent[data]))
    assert sorted(payload for payload, _ in came) == sorted(sent)
    assert [payload for payload, _ in came] == list(sent)  # in the order sent
    return [took for _, took in came]


def assert_side_by_side(took: list[float], delay: float = DELAY, jitter: float = 0.0) -> None:
    """Each took the delay (± jitter), none waited for the one before."""
    shown = [f"{t:.3f}" for t in took]
    assert all(delay - jitter - 0.005 <= t <= delay + jitter + SLACK for t in took), shown
    assert max(took) - min(took) <= SPREAD + 2 * jitter, shown


def delayed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "delayed datagrams"]


@contextlib.contextmanager
def echo_upstream() -> Iterator[str]:
    """A datagram echo upstream on loopback: its address as HOST:PORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65536)
            except OSError:
                return
            if peer is None:  # woken by the shutdown
                return
            sock.sendto(data, peer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        host, port = sock.getsockname()
        yield f"{host}:{port}"
    finally:
        with contextlib.suppress(OSError):  # unconnected: it fails, yet wakes the reader
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)


@pytest.mark.parametrize("mode", MODES)
def test_echo_replies_are_delayed_side_by_side(mode: str) -> None:
    with sockserve.serve("udp", handler="echo", concurrency=mode, delay=DELAY) as server:
        assert_side_by_side(sent_and_answered(server.address))
    assert not delayed_threads()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["client", "upstream"])
def test_forward_delays_side_by_side_toward_either_side(mode: str, side: str) -> None:
    with (
        echo_upstream() as where,
        sockserve.serve(
            "udp", forward=where, concurrency=mode, delay=DELAY, faults_to=side
        ) as server,
    ):
        assert_side_by_side(sent_and_answered(server.address))
    assert not delayed_threads()


def test_forward_delays_both_ways_side_by_side() -> None:
    with (
        echo_upstream() as where,
        sockserve.serve("udp", forward=where, concurrency="sync", delay=DELAY) as server,
    ):
        assert_side_by_side(sent_and_answered(server.address), 2 * DELAY)


@pytest.mark.parametrize("mode", MODES)
def test_jitter_keeps_within_its_bound_and_the_order(mode: str) -> None:
    jitter = 0.05
    with sockserve.serve(
        "udp", handler="echo", concurrency=mode, delay=(DELAY, jitter), seed=7
    ) as server:
        took = sent_and_answered(server.address, 8)
    assert_side_by_side(took, DELAY, jitter)


def test_a_reply_still_delayed_at_the_stop_is_sent_first() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        server = sockserve.serve("udp", handler="echo", concurrency="sync", delay=DELAY)
        try:
            sent = monotonic()
            client.sendto(b"last", server.address)
            server.wait_for_data(b"last")
        finally:
            server.stop()
        assert client.recv(100) == b"last"
        assert monotonic() - sent >= EARLIEST
    assert not delayed_threads()
