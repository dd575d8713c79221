"""`sockserve ... --forward UPSTREAM` end to end: the real command between real sockets.

The upstream is a socket this test accepts on (or a small thread answering upper-cased), so
what reaches it, and how (EOF, reset), is checked directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 10.0
_LINGER_RESET = struct.pack("ii", 1, 0)


@contextlib.contextmanager
def proxy(*args: str, tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Run `sockserve ARGS --print-address`; yield (process, address, stderr file). On exit:
    SIGTERM, and the exit status must be 0."""
    err = tmp / "stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", *args, "--print-address"],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().decode().strip()
        assert address, err.read_text()
        yield proc, address, err
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        if proc.stdout is not None:
            proc.stdout.close()
    assert status == 0, err.read_text()


def inet(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def connect(address: str) -> socket.socket:
    if address.startswith(("/", "@")):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(TIMEOUT)
        sock.connect(address.replace("@", "\0", 1) if address.startswith("@") else address)
        return sock
    return socket.create_connection(inet(address), timeout=TIMEOUT)


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.settimeout(TIMEOUT)
        yield sock


def addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@pytest.mark.parametrize("mode", ["thread", "fork", "sync", "event"])
def test_a_request_then_eof_gets_its_answer(
    mode: str, listener: socket.socket, tmp_path: Path
) -> None:
    with proxy("tcp", ":0", "--forward", addr(listener), "-c", mode, tmp=tmp_path) as (_, a, _):
        with connect(a) as client:
            far, _ = listener.accept()
            with far:
                far.settimeout(TIMEOUT)
                client.sendall(b"request")
                client.shutdown(socket.SHUT_WR)
                assert read_to_eof(far) == b"request"  # the EOF came as EOF
                far.sendall(b"answer")
            assert read_to_eof(client) == b"answer"


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_resets_pass_both_ways(mode: str, listener: socket.socket, tmp_path: Path) -> None:
    with proxy("tcp", ":0", "--forward", addr(listener), "-c", mode, tmp=tmp_path) as (_, a, _):
        for first in ("client", "upstream"):
            with connect(a) as client:
                far, _ = listener.accept()
                with far:
                    far.settimeout(TIMEOUT)
                    client.sendall(b"x")
                    assert far.recv(1) == b"x"
                    resetting, other = (client, far) if first == "client" else (far, client)
                    resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                    resetting.close()
                    with pytest.raises(ConnectionResetError):
                        other.recv(10)


def test_unix_listener_to_tcp_json_events(listener: socket.socket, tmp_path: Path) -> None:
    path = str(tmp_path / "p.sock")
    args = ("unix", path, "--forward", addr(listener), "--json", "-vv")
    with proxy(*args, tmp=tmp_path) as (_, a, err):
        with connect(a) as client:
            far, _ = listener.accept()
            with far:
                client.sendall(b"hi")
                client.shutdown(socket.SHUT_WR)
                assert read_to_eof(far) == b"hi"
                far.sendall(b"hello")
            assert read_to_eof(client) == b"hello"
    events = [json.loads(line) for line in err.read_text().splitlines()]
    (upstream,) = [e for e in events if e["event"] == "upstream"]
    assert upstream["upstream"] == f"tcp://{addr(listener)}" and upstream["error"] is None
    data = [
        (e["direction"], e["bytes"], bytes.fromhex(e["hex"]))
        for e in events
        if e["event"] == "data"
    ]
    assert data == [("in", 2, b"hi"), ("out", 5, b"hello")]
    (close,) = [e for e in events if e["event"] == "close"]
    assert (close["bytes_in"], close["bytes_out"]) == (2, 5)
    assert not os.path.exists(path)


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_unreachable_upstream_one_warning_client_reset(mode: str, tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))  # bound, not listening: refused
        gone = addr(free)
        args = ("tcp", ":0", "--forward", gone, "-c", mode)
        with proxy(*args, tmp=tmp_path) as (_, a, err):
            for _ in range(2):  # the server goes on
                with pytest.raises(ConnectionResetError):
                    with connect(a) as client:
                        client.recv(10)
            deadline = time.monotonic() + TIMEOUT
            while err.read_text().count("warning:") < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    warnings = [line for line in err.read_text().splitlines() if line.startswith("warning")]
    pattern = (
        rf"warning: upstream tcp://{re.escape(gone)} failed for 127\.0\.0\.1:\d+: "
        r"Connection refused; reset the client's connection"
    )
    assert len(warnings) == 2 and all(re.fullmatch(pattern, w) for w in warnings), warnings


@contextlib.contextmanager
def udp_upper() -> Iterator[socket.socket]:
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.bind(("127.0.0.1", 0))
    up.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = up.recvfrom(65536)
            except TimeoutError:
                continue
            up.sendto(data.upper(), peer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield up
    finally:
        stop.set()
        thread.join(TIMEOUT)
        up.close()


@pytest.mark.parametrize("listen", ["udp", "unix-dgram"])
def test_datagrams_forwarded_and_answered(listen: str, tmp_path: Path) -> None:
    where = ":0" if listen == "udp" else str(tmp_path / "d.sock")
    with udp_upper() as up:
        args = (listen, where, "--forward", addr(up), "--timeout", "5s")
        with proxy(*args, tmp=tmp_path) as (_, a, _):
            if listen == "udp":
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                target: object = inet(a)
            else:
                client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                client.bind(str(tmp_path / "c.sock"))
                target = a
            with client:
                client.settimeout(TIMEOUT)
                for word in (b"one", b"two"):
                    client.sendto(word, target)
                    assert client.recv(100) == word.upper()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("tcp", ":0", "-H", "forward"), "-H forward needs --forward UPSTREAM"),
        (("tcp", ":0", "-H", "echo", "--forward", ":9"), "cannot be combined with -H echo"),
        (("udp", ":0", "--forward", ":9", "-c", "fork"), "cannot run with -c fork"),
        (("tcp", ":0", "--forward", "udp://:9"), "cannot forward to a datagram upstream"),
        (("tcp", ":0", "--forward", "nowhere"), "no port"),
    ],
)
def test_bad_forward_options_exit_2_in_one_line(args: tuple[str, ...], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sockserve", *args], capture_output=True, timeout=TIMEOUT
    )
    assert done.returncode == 2
    error = [line for line in done.stderr.decode().splitlines() if line.startswith("Error")]
    assert len(error) == 1 and says in error[0], done.stderr


def test_forward_to_its_own_address_is_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = str(tmp_path / "self.sock")
    for args in (
        ("tcp", f"127.0.0.1:{port}", "--forward", f"localhost:{port}"),
        ("tcp", f"0.0.0.0:{port}", "--forward", f":{port}"),
        ("unix", path, "--forward", path),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "sockserve", *args], capture_output=True, timeout=TIMEOUT
        )
        assert done.returncode == 2, done.stderr
        assert b"this server's own address" in done.stderr.splitlines()[0]
        assert b"Traceback" not in done.stderr
    assert not os.path.exists(path)


# -- back-pressure: a fast writer, a reader that does not read ------------------------------

OFFERED = 200 * 1024 * 1024
MB = 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def offer(sock: socket.socket, total: int, patience: float) -> int:
    """Send up to `total` bytes without blocking; stop once nothing more goes for `patience`
    seconds. Return how many went."""
    sock.setblocking(False)
    block = bytes(MB)
    sent = 0
    stalled_since = None
    while sent < total:
        try:
            sent += sock.send(block)
            stalled_since = None
        except BlockingIOError:
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > patience:
                break
            time.sleep(0.01)
    return sent


@pytest.mark.parametrize(
    "extra", [(), ("--timeout", "60s"), ("-c", "event")], ids=["splice", "copy", "event"]
)
@pytest.mark.parametrize("writer", ["upstream", "client"])
def test_buffering_is_bounded_when_one_side_does_not_read(
    writer: str, extra: tuple[str, ...], listener: socket.socket, tmp_path: Path
) -> None:
    with proxy("tcp", ":0", "--forward", addr(listener), "-q", *extra, tmp=tmp_path) as (
        proc,
        a,
        _,
    ):
        with connect(a) as client:
            far, _ = listener.accept()
            with far:
                before = rss(proc.pid)
                fast = far if writer == "upstream" else client
                went = offer(fast, OFFERED, patience=0.5)
                grown = rss(proc.pid) - before
    assert went < OFFERED // 4, f"{went // MB} MiB taken: nothing held it back"
    assert grown < 30 * MB, f"the proxy grew by {grown // MB} MiB"


def test_fork_mode_children_tell_the_upstream_event(
    listener: socket.socket, tmp_path: Path
) -> None:
    args = ("tcp", ":0", "--forward", addr(listener), "-c", "fork", "--json")
    with proxy(*args, tmp=tmp_path) as (_, a, err):
        with connect(a) as client:
            far, _ = listener.accept()
            with far:
                client.sendall(b"abc")
                client.shutdown(socket.SHUT_WR)
                assert read_to_eof(far) == b"abc"
            assert read_to_eof(client) == b""
        deadline = time.monotonic() + TIMEOUT
        while '"close"' not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    events = [json.loads(line) for line in err.read_text().splitlines()]
    upstream = [e for e in events if e["event"] == "upstream"]
    assert [(e["upstream"], e["error"]) for e in upstream] == [(f"tcp://{addr(listener)}", None)]
    assert upstream[0]["client"].startswith("127.0.0.1:")


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_an_idle_connection_is_closed_after_timeout(
    mode: str, listener: socket.socket, tmp_path: Path
) -> None:
    args = ("tcp", ":0", "--forward", addr(listener), "--timeout", "300ms", "-c", mode)
    with proxy(*args, tmp=tmp_path) as (_, a, err):
        with connect(a) as client:
            far, _ = listener.accept()
            with far:
                far.settimeout(TIMEOUT)
                client.sendall(b"x")
                assert far.recv(1) == b"x"
                started = time.monotonic()
                assert client.recv(10) == b""  # closed, not reset
                assert far.recv(10) == b""
                assert 0.25 < time.monotonic() - started < 5
        deadline = time.monotonic() + TIMEOUT
        while "closed idle connection" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "closed idle connection 127.0.0.1:" in err.read_text()
