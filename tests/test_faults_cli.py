"""Faults end to end: the real `sockserve` command, real clients, in thread, fork and event mode."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from sockserve.cli import main

STREAM_MODES = ["thread", "fork", "event"]


@dataclass
class Served:
    address: tuple[str, int]
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    #: stderr's lines as they come (read by a thread while it runs)
    lines: list[str] = field(default_factory=list)

    def faults(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "fault"]

    def drops_so_far(self) -> int:
        """How many datagrams the running server has reported dropped."""
        return sum('"kind": "drop"' in line for line in list(self.lines))


@contextlib.contextmanager
def serving(*args: str) -> Iterator[Served]:
    """Run `sockserve ARGS --print-address --json`; stop it with SIGTERM on the way out and
    keep its events (parsed from stderr) and exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", *args, "--print-address", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            proc.wait(10)
            pytest.fail(f"sockserve did not start: {proc.stderr.read() if proc.stderr else ''}")
        host, _, port = line.rpartition(":")
        served = Served((host, int(port)), proc)
        assert proc.stderr is not None
        reader = threading.Thread(target=served.lines.extend, args=(proc.stderr,), daemon=True)
        reader.start()
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    reader.join(15)
    err = "".join(served.lines)
    served.status = proc.returncode
    served.events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert "Traceback" not in err


def connect(served: Served) -> socket.socket:
    s = socket.create_connection(served.address, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_delay_is_seen_by_the_client(mode: str) -> None:
    with serving("tcp", ":0", "-c", mode, "--delay", "50ms") as served, connect(served) as s:
        for _ in range(2):  # the second exchange too: each chunk sent is delayed
            start = time.monotonic()
            s.sendall(b"ping")
            assert recv_exactly(s, 4) == b"ping"
            elapsed = time.monotonic() - start
            assert 0.045 <= elapsed < 0.25, elapsed
    kinds = [e["kind"] for e in served.faults()]
    assert kinds == ["delay"]  # told once per connection
    listening = served.events[0]
    assert listening["event"] == "listening" and listening["faults"] == "delay 50ms"


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_throttle_takes_the_time_its_rate_says(mode: str) -> None:
    payload = bytes(range(256)) * 100  # 25600 B at 100 KB/s: about a quarter of a second
    with serving("tcp", ":0", "-c", mode, "--throttle", "100K") as served, connect(served) as s:
        start = time.monotonic()
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
        elapsed = time.monotonic() - start
    assert 0.21 <= elapsed < 1.05, elapsed  # at most 0.8 s late, on a busy machine


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_chunk_splits_what_is_sent(mode: str) -> None:
    with serving("tcp", ":0", "-c", mode, "--chunk", "3:10ms") as served, connect(served) as s:
        s.sendall(b"abcdefghijklmnopqrstuvwxyz0123")
        sizes = []
        data = b""
        while len(data) < 30:
            chunk = s.recv(100)
            assert chunk
            sizes.append(len(chunk))
            data += chunk
    assert data == b"abcdefghijklmnopqrstuvwxyz0123"
    assert len(sizes) >= 5 and min(sizes) <= 3, sizes  # ten writes; a busy client may merge some


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_close_after_is_an_eof_and_reset_after_a_reset(mode: str) -> None:
    with serving("tcp", ":0", "-c", mode, "--close-after", "10") as served, connect(served) as s:
        s.sendall(b"x" * 20)
        assert s.recv(100) == b""  # the 20 B received passed the limit: closed, no echo
    assert [e["kind"] for e in served.faults()] == ["close"]
    with serving("tcp", ":0", "-c", mode, "--reset-after", "10") as served, connect(served) as s:
        s.sendall(b"x" * 20)
        with pytest.raises(ConnectionResetError):
            s.recv(100)
    assert [e["kind"] for e in served.faults()] == ["reset"]


def test_stall_after_answers_that_much_then_nothing() -> None:
    with serving("tcp", ":0", "--stall-after", "5") as served, connect(served) as s:
        s.sendall(b"0123456789")
        assert recv_exactly(s, 5) == b"01234"
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(100)
    assert [e["kind"] for e in served.faults()] == ["stall"]


def _exchange_or_error(served: Served) -> bytes | str:
    try:
        with connect(served) as s:
            s.sendall(b"hi")
            return s.recv(10)
    except ConnectionResetError:
        return "reset"


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_fail_first_resets_the_first_connections(mode: str) -> None:
    with serving("tcp", ":0", "-c", mode, "--fail-first", "2") as served:
        outcomes = [_exchange_or_error(served) for _ in range(3)]
    assert outcomes == ["reset", "reset", b"hi"]
    faults = served.faults()
    assert [e["kind"] for e in faults] == ["fail-reset", "fail-reset"]
    assert all(e["client"].startswith("127.0.0.1:") for e in faults)


def test_fail_first_close_mode_is_an_eof() -> None:
    with serving("tcp", ":0", "--fail-first", "1", "--fail-mode", "close") as served:
        outcomes = [_exchange_or_error(served) for _ in range(2)]
    assert outcomes == [b"", b"hi"]


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_fault_rate_zero_fires_no_fault(mode: str) -> None:
    args = ("--fail-first", "1", "--delay", "1s", "--fault-rate", "0")
    with serving("tcp", ":0", "-c", mode, *args) as served:
        start = time.monotonic()
        assert _exchange_or_error(served) == b"hi"
        assert time.monotonic() - start < 0.9
    assert served.faults() == []


def test_a_users_stream_handler_is_delayed_without_changes(tmp_path: Any) -> None:
    (tmp_path / "lines.py").write_text(
        "import socketserver\n"
        "class Lines(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        for line in self.rfile:\n"
        "            self.wfile.write(line.upper())\n"
    )
    handler = f"{tmp_path / 'lines.py'}:Lines"
    with serving("tcp", ":0", "-H", handler, "--delay", "50ms") as served, connect(served) as s:
        start = time.monotonic()
        s.sendall(b"hello\n")
        assert recv_exactly(s, 6) == b"HELLO\n"
        assert time.monotonic() - start >= 0.045


def udp_round(served: Served, count: int = 20, accounted: bool = False) -> list[int]:
    """Send datagrams 0..count-1; return the numbers of the replies, in arrival order, once
    0.25 s pass without one. `accounted` (only --drop in play: each datagram is either
    answered once or reported dropped): stop as soon as replies and drops make `count`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(b"%d" % i, served.address)
            time.sleep(0.002)
        got: list[int] = []
        quiet_until = time.monotonic() + 0.25
        while time.monotonic() < quiet_until:
            if accounted and len(got) + served.drops_so_far() >= count:
                break
            s.settimeout(0.01 if accounted else quiet_until - time.monotonic())
            with contextlib.suppress(TimeoutError):
                got.append(int(s.recv(100)))
                quiet_until = time.monotonic() + 0.25
        return got


@pytest.mark.parametrize("mode", ["sync", "fork", "event"])  # thread: the seed's test
def test_drop_all_or_nothing(mode: str) -> None:
    with serving("udp", ":0", "-c", mode, "--drop", "100") as served:
        assert udp_round(served, 5, accounted=True) == []
    assert {e["kind"] for e in served.faults()} == {"drop"}
    with serving("udp", ":0", "-c", mode, "--drop", "0") as served:
        assert sorted(udp_round(served, 5, accounted=True)) == [
            0,
            1,
            2,
            3,
            4,
        ]  # fork: children race


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_same_seed_same_datagrams_dropped(mode: str) -> None:
    rounds = []
    for seed in ("7", "7", "8"):
        with serving("udp", ":0", "-c", mode, "--drop", "30", "--seed", seed) as served:
            rounds.append(udp_round(served, accounted=True))
    assert rounds[0] == rounds[1]
    assert 0 < len(rounds[0]) < 20
    assert rounds[2] != rounds[0]


def test_duplicate_and_reorder_datagrams(tmp_path: Any) -> None:
    (tmp_path / "dgram.py").write_text(
        "import socketserver\n"
        "class Echo(socketserver.DatagramRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(self.rfile.read())\n"
    )
    handler = f"{tmp_path / 'dgram.py'}:Echo"
    with serving("udp", ":0", "-c", "thread", "-H", handler, "--duplicate", "100") as served:
        assert udp_round(served, 3) == [0, 0, 1, 1, 2, 2]
    with serving("udp", ":0", "-c", "event", "--reorder", "50", "--seed", "3") as served:
        got = udp_round(served)
    assert sorted(got) == list(range(20)) and got != list(range(20))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["tcp", ":0", "--delay", "-50ms"], "expected seconds"),
        (["tcp", ":0", "--throttle", "K"], "expected bytes per second"),
        (["udp", ":0", "--drop", "101"], "from 0 to 100"),
        (["tcp", ":0", "--drop", "5"], "--drop only applies to datagrams"),
        (["udp", ":0", "--throttle", "1K"], "--throttle only applies to streams"),
        (["tcp", ":0", "--close-after", "1x"], "expected a size in bytes"),
        (["unix", "/tmp/x.sock", "--fail-first", "1"], "--fail-mode reset sends a TCP reset"),
        (["udp", ":0", "-c", "fork", "--reorder", "5"], "each child answers only one"),
        (["tcp", ":0", "--seed", "3"], "no fault is given"),
    ],
)
def test_bad_fault_options_are_one_line_and_exit_2(args: list[str], words: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if "Error" in line]
    assert len(error_lines) == 1
