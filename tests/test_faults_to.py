"""--faults-to client|upstream|both on forward: a real client → the real `sockserve` command
forwarding → a small upstream in the test, which notes when each byte reached it and how its
connection ended. Timing bounds are coarse (the machine may be loaded), in thread, fork and
event mode."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from sockserve.cli import main
from sockserve.config import build_config
from sockserve.errors import UsageError

STREAM_MODES = ["thread", "fork", "event"]
DATAGRAM_MODES = ["sync", "thread", "event"]
DELAY = 0.2  # --delay 200ms: what is delayed arrives at least DELAY_SEEN later
DELAY_SEEN = 0.17
PROMPT = 0.12  # what is not delayed arrives sooner than this


@dataclass
class Upstream:
    """A stream upstream in the test: each connection's chunks with their arrival times,
    and how it ended ("eof" or "reset"); `echo` sends each chunk back."""

    sock: socket.socket
    echo: bool = True
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        name = self.sock.getsockname()
        return name if isinstance(name, str) else f"{name[0]}:{name[1]}"

    def serve_one(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(65536):
                    self.chunks.append((time.monotonic(), data))
                    if self.echo:
                        conn.sendall(data)
                self.ended.append("eof")
            except ConnectionResetError:
                self.ended.append("reset")
            except OSError as exc:
                self.ended.append(type(exc).__name__)
        self.done.set()

    def received(self) -> bytes:
        return b"".join(data for _, data in self.chunks)


@contextlib.contextmanager
def upstream(echo: bool = True, unix: bool = False) -> Iterator[Upstream]:
    """An upstream serving one connection, on loopback TCP or a unix path."""
    with contextlib.ExitStack() as stack:
        if unix:
            where = stack.enter_context(tempfile.TemporaryDirectory(prefix="ft"))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(os.path.join(where, "up.sock"))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        stack.callback(sock.close)
        sock.listen(4)
        up = Upstream(sock, echo)
        thread = threading.Thread(target=up.serve_one, daemon=True)
        thread.start()
        yield up
        sock.close()
        thread.join(10)


@dataclass
class Proxy:
    address: Any
    events: list[dict[str, Any]] = field(default_factory=list)

    def faults(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "fault"]


@contextlib.contextmanager
def proxy(proto: str, listen: str, *args: str) -> Iterator[Proxy]:
    """Run `sockserve PROTO LISTEN ARGS --print-address --json`; stop it with SIGTERM on the
    way out (it must exit 0, without a traceback) and keep its events."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", proto, listen, *args, "--print-address", "--json"],
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
        if proto.startswith("unix"):
            address: Any = line
        else:
            host, _, port = line.rpartition(":")
            address = (host, int(port))
        served = Proxy(address)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    served.events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def connect(address: Any) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def read_until_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything `sock` receives, and how it ended: "eof" or "reset"."""
    got = b""
    try:
        while data := sock.recv(65536):
            got += data
    except ConnectionResetError:
        return got, "reset"
    return got, "eof"


def exchange_timed(address: Any, up: Upstream) -> tuple[float, float, float]:
    """Send b"ping", wait for it back: (sent, reached the upstream, back at the client)."""
    with connect(address) as sock:
        sent = time.monotonic()
        sock.sendall(b"ping")
        got = b""
        while len(got) < 4:
            got += sock.recv(4)
        back = time.monotonic()
        assert got == b"ping"
        sock.shutdown(socket.SHUT_WR)
        assert read_until_end(sock) == (b"", "eof")
    assert up.done.wait(10)
    return sent, up.chunks[0][0], back


# -- streams: which way is delayed --------------------------------------------------------------


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_delay_to_upstream_delays_what_reaches_it_not_the_reply(mode: str) -> None:
    with (
        upstream() as up,
        proxy(
            "tcp", ":0", "--forward", up.address, "-c", mode, "--delay", "200ms",
            "--faults-to", "upstream",
        ) as served,
    ):  # fmt: skip
        sent, arrived, back = exchange_timed(served.address, up)
    assert arrived - sent >= DELAY_SEEN
    assert back - arrived < PROMPT
    assert up.ended == ["eof"]
    faults = served.faults()
    assert [(f["kind"], f["side"]) for f in faults] == [("delay", "upstream")]
    connects = [e for e in served.events if e["event"] == "connect"]
    assert faults[0]["conn"] == connects[0]["conn"]


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_delay_to_client_delays_the_reply_only(mode: str) -> None:
    with (
        upstream() as up,
        proxy(
            "tcp", ":0", "--forward", up.address, "-c", mode, "--delay", "200ms",
            "--faults-to", "client",
        ) as served,
    ):  # fmt: skip
        sent, arrived, back = exchange_timed(served.address, up)
    assert arrived - sent < PROMPT
    assert back - arrived >= DELAY_SEEN
    assert [(f["kind"], f["side"]) for f in served.faults()] == [("delay", "client")]


def test_delay_both_ways_by_default() -> None:
    with (
        upstream() as up,
        proxy("tcp", ":0", "--forward", up.address, "--delay", "200ms") as served,
    ):
        sent, arrived, back = exchange_timed(served.address, up)
    assert arrived - sent >= DELAY_SEEN
    assert back - arrived >= DELAY_SEEN
    assert sorted(f["side"] for f in served.faults()) == ["client", "upstream"]


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_delayed_data_is_not_overtaken_by_the_eof(mode: str) -> None:
    """The client sends and half-closes at once: the upstream still gets every byte, then
    the EOF, DELAY later."""
    with (
        upstream(echo=False) as up,
        proxy(
            "tcp", ":0", "--forward", up.address, "-c", mode, "--delay", "200ms",
            "--faults-to", "upstream",
        ) as served,
        connect(served.address) as sock,
    ):  # fmt: skip
        sent = time.monotonic()
        sock.sendall(b"request")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_end(sock) == (b"", "eof")
        assert up.done.wait(10)
    assert up.received() == b"request"
    assert up.ended == ["eof"]
    assert up.chunks[0][0] - sent >= DELAY_SEEN


def test_unix_listener_delays_toward_a_unix_upstream() -> None:
    with tempfile.TemporaryDirectory(prefix="ft") as where:
        listen = os.path.join(where, "proxy.sock")
        with (
            upstream(unix=True) as up,
            proxy(
                "unix", listen, "--forward", up.address, "--delay", "200ms",
                "--faults-to", "upstream",
            ) as served,
        ):  # fmt: skip
            sent, arrived, back = exchange_timed(served.address, up)
    assert arrived - sent >= DELAY_SEEN
    assert back - arrived < PROMPT


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_throttle_to_client_slows_the_reply_not_the_request(mode: str) -> None:
    """20 KB/s toward the client: 6000 bytes take about 0.3 s to come back; the upstream
    has them at once."""
    payload = bytes(range(256)) * 23 + b"x" * 112  # 6000 bytes
    with (
        upstream() as up,
        proxy(
            "tcp", ":0", "--forward", up.address, "-c", mode, "--throttle", "20K",
            "--faults-to", "client",
        ) as served,
        connect(served.address) as sock,
    ):  # fmt: skip
        sent = time.monotonic()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        took = time.monotonic() - sent
        sock.shutdown(socket.SHUT_WR)
        read_until_end(sock)
        assert up.done.wait(10)
    assert got == payload
    assert up.chunks[-1][0] - sent < PROMPT  # all of it reached the upstream at once
    assert 0.2 <= took < 1.5


# -- streams: cuts -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_reset_after_to_client_resets_it_and_the_upstream(mode: str) -> None:
    """--reset-after 4 on the client's side: the client is reset once 4 bytes passed; the
    relay passes the reset on, so the upstream's connection ends in a reset too."""
    with (
        upstream() as up,
        proxy(
            "tcp", ":0", "--forward", up.address, "-c", mode, "--reset-after", "4",
            "--faults-to", "client",
        ) as served,
        connect(served.address) as sock,
    ):  # fmt: skip
        sock.sendall(b"ping")
        _, how = read_until_end(sock)
        assert up.done.wait(10)
    assert how == "reset"
    assert up.received() == b"ping"
    assert up.ended == ["reset"]
    assert [(f["kind"], f["side"]) for f in served.faults()] == [("reset", "client")]


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_close_after_to_upstream_ends_it_in_order_and_the_client_too(mode: str) -> None:
    """--close-after 4 on the upstream's side: the upstream gets 4 bytes and an orderly
    end; the client, an orderly end as well (what the upstream would have said is lost)."""
    with (
        upstream(echo=False) as up,
        proxy(
            "tcp", ":0", "--forward", up.address, "-c", mode, "--close-after", "4",
            "--faults-to", "upstream",
        ) as served,
        connect(served.address) as sock,
    ):  # fmt: skip
        sock.sendall(b"pingpong")
        got, how = read_until_end(sock)
        assert up.done.wait(10)
    assert (got, how) == (b"", "eof")
    assert up.received() == b"ping"
    assert up.ended == ["eof"]
    assert [(f["kind"], f["side"]) for f in served.faults()] == [("close", "upstream")]


def test_stall_to_client_still_feeds_the_upstream() -> None:
    """--stall on the client's side: the client hears nothing, what it sends still reaches
    the upstream."""
    with (
        upstream() as up,
        proxy("tcp", ":0", "--forward", up.address, "--stall", "--faults-to", "client") as served,
    ):
        with connect(served.address) as sock:
            sock.sendall(b"hello")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(10)
        assert up.done.wait(10)
    assert up.received() == b"hello"


# -- datagrams ----------------------------------------------------------------------------------


@dataclass
class DatagramUpstream:
    """A datagram echo upstream in the test that keeps what it received."""

    sock: socket.socket
    got: list[bytes] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            with self.arrived:
                self.got.append(data)
                self.arrived.notify_all()
            if peer:
                self.sock.sendto(data, peer)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.got) >= count, timeout)
            return list(self.got)


@contextlib.contextmanager
def datagram_upstream(unix_dir: str | None = None) -> Iterator[tuple[str, DatagramUpstream]]:
    if unix_dir is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        where = f"{host}:{port}"
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        where = os.path.join(unix_dir, "up.sock")
        sock.bind(where)
    up = DatagramUpstream(sock)
    thread = threading.Thread(target=up.run, daemon=True)
    thread.start()
    try:
        yield where, up
    finally:
        with contextlib.suppress(OSError):  # unconnected: it fails, yet wakes the reader
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)
        assert not thread.is_alive()


def replies(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    """Every datagram `sock` receives until none comes for `quiet` seconds."""
    got = []
    sock.settimeout(quiet)
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(sock.recv(65536))
    return got


@pytest.mark.parametrize("mode", DATAGRAM_MODES)
def test_drop_to_client_loses_only_the_replies(mode: str) -> None:
    with (
        datagram_upstream() as (where, up),
        proxy(
            "udp", ":0", "--forward", where, "-c", mode, "--drop", "100",
            "--faults-to", "client",
        ) as served,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):  # fmt: skip
        client.bind(("127.0.0.1", 0))
        for n in range(3):
            client.sendto(b"d%d" % n, served.address)
        assert up.wait_for(3) == [b"d0", b"d1", b"d2"]  # every one reached the upstream
        assert replies(client) == []  # no reply came back
    drops = served.faults()
    assert [(f["kind"], f["side"]) for f in drops] == [("drop", "client")] * 3
    assert all(f["conn"] for f in drops)


@pytest.mark.parametrize("mode", DATAGRAM_MODES)
def test_duplicate_to_upstream_doubles_what_it_gets(mode: str) -> None:
    """--duplicate 100 toward the upstream: it gets each datagram twice (and echoes both);
    the replies pass as they come."""
    with (
        datagram_upstream() as (where, up),
        proxy(
            "udp", ":0", "--forward", where, "-c", mode, "--duplicate", "100",
            "--faults-to", "upstream",
        ) as served,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):  # fmt: skip
        client.bind(("127.0.0.1", 0))
        client.sendto(b"one", served.address)
        assert up.wait_for(2) == [b"one", b"one"]
        assert replies(client) == [b"one", b"one"]
    assert [(f["kind"], f["side"]) for f in served.faults()] == [("duplicate", "upstream")]


def test_unix_dgram_drop_to_upstream_reaches_nothing() -> None:
    with tempfile.TemporaryDirectory(prefix="ft") as where_dir:
        with (
            datagram_upstream(where_dir) as (where, up),
            proxy(
                "unix-dgram", os.path.join(where_dir, "p.sock"), "--forward", where,
                "--drop", "100", "--faults-to", "upstream",
            ) as served,
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
        ):  # fmt: skip
            client.bind(os.path.join(where_dir, "c.sock"))
            client.sendto(b"lost", served.address)
            assert replies(client) == []
            assert up.wait_for(1, timeout=0.1) == []
    assert [(f["kind"], f["side"]) for f in served.faults()] == [("drop", "upstream")]


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delay", "1s", "--faults-to", "client"], "--faults-to chooses a side of -H forward"),
        (["--forward", ":9", "--faults-to", "upstream"], "--faults-to tells where faults apply"),
        (
            ["--forward", ":9", "--fail-first", "1", "--faults-to", "upstream"],
            "--fail-first acts on the client's connection",
        ),
        (
            ["--forward", ":9", "--delay-accept", "1s", "--faults-to", "upstream"],
            "--delay-accept acts on the client's connection",
        ),
        (["--forward", ":9", "--delay", "1s", "--faults-to", "up"], "Invalid value"),
    ],
)
def test_refused_in_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["tcp", ":0", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_reset_toward_a_unix_upstream_is_refused() -> None:
    result = CliRunner().invoke(
        main, ["tcp", ":0", "--forward", "/tmp/x.sock", "--reset-after", "1K"]
    )
    assert result.exit_code == 2
    assert "--reset-after sends a TCP reset: a unix socket has none" in result.output


def test_reset_on_a_unix_listener_is_taken_toward_a_tcp_upstream() -> None:
    config = build_config(
        proto="unix", address="/tmp/x.sock", forward=":9", reset_after=1000, faults_to="upstream"
    )
    assert config.fault_sides == ("upstream",)
    with pytest.raises(UsageError, match="--reset-after sends a TCP reset"):
        build_config(proto="unix", address="/tmp/x.sock", forward=":9", reset_after=1000)
