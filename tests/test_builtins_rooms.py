"""broadcast and chat: the room alone (`builtins.rooms`), then the real command with real
clients, in thread and event mode: who gets what, and what a client that never reads does
to the others under each --slow-client policy (with the server's memory measured)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockserve.builtins.rooms import ChatLines, Outbox, Room

COMMAND = [sys.executable, "-m", "sockserve"]

# -- the room -----------------------------------------------------------------------------------


def test_chat_lines_are_whole_and_bounded():
    lines = ChatLines(limit=8)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nde\nf") == [b"abc\n", b"de\n"]
    assert lines.feed(b"ghijklmnop") == [b"fghijklm\n"]  # 8 bytes: cut, a newline added
    assert lines.end() == [b"nop\n"]
    assert lines.end() == []


def test_broadcast_relays_to_the_others_or_to_all():
    room = Room(chat=False)
    a, _ = room.join(("127.0.0.1", 1))
    b, _ = room.join(("127.0.0.1", 2))
    assert room.said(a, b"x") == [(b, b"x")]
    everyone = Room(chat=False, to_all=True)
    a, _ = everyone.join(("127.0.0.1", 1))
    b, _ = everyone.join(("127.0.0.1", 2))
    assert everyone.said(a, b"x") == [(a, b"x"), (b, b"x")]


def test_chat_names_prefixes_and_announces():
    room = Room(chat=True)
    a, joined = room.join(("127.0.0.1", 1))
    assert joined == []
    b, joined = room.join(("::1", 2, 0, 0))
    assert joined == [(a, b"* [::1]:2 joined\n")]
    c, _ = room.join("")  # an unnamed unix peer
    assert c.name == "unix-1"
    assert room.said(a, b"hi\nhal") == [(b, b"[127.0.0.1:1] hi\n"), (c, b"[127.0.0.1:1] hi\n")]
    assert room.leave(a) == [
        (b, b"[127.0.0.1:1] hal\n"),
        (c, b"[127.0.0.1:1] hal\n"),
        (b, b"* 127.0.0.1:1 left\n"),
        (c, b"* 127.0.0.1:1 left\n"),
    ]
    assert room.leave(a) == []


@pytest.mark.parametrize(
    ("policy", "delivered", "full", "dropped"),
    [("disconnect", True, True, 0), ("drop", True, False, 6), ("block", False, False, 0)],
)
def test_a_full_outbox_follows_the_policy(policy, delivered, full, dropped):
    room = Room(chat=False, slow_client=policy, backlog=10)
    a, _ = room.join(("127.0.0.1", 1))
    assert room.deliver(a, b"12345678")
    assert room.deliver(a, b"123456") is delivered
    assert (a.outbox.full, a.outbox.dropped, a.outbox.size) == (full, dropped, 8)


def test_one_chunk_fits_an_empty_outbox_whatever_its_size():
    outbox = Outbox(backlog=4)
    assert outbox.room_for(b"123456789")
    outbox.put(b"123456789")
    assert not outbox.room_for(b"1")
    assert outbox.take() == b"123456789" and outbox.size == 0


# -- the real command -------------------------------------------------------------------------


class Server:
    """A running `sockserve`: its address, its process, and the stderr lines so far."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = threading.Condition()
        assert proc.stdout is not None
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        assert port, "the server did not start"
        self.address = (host, int(port)) if port.isdigit() else ("", 0)  # unix: a path
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 15) -> None:
        """Wait until a line of stderr contains `text`."""
        with self.changed:
            found = self.changed.wait_for(lambda: any(text in x for x in self.lines), timeout)
        assert found, f"no {text!r} in {self.lines}"

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        """A client, once the server has put it in the room."""
        sock = connect(self.address, rcvbuf)
        self.wait_for("{}:{} joined the room".format(*sock.getsockname()))
        return sock


@contextlib.contextmanager
def serving(*args: str) -> Iterator[Server]:
    """Run `sockserve ARGS --print-address`; stop it with SIGTERM (exit 0) at the end."""
    proc = subprocess.Popen(
        [*COMMAND, *args, "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server = Server(proc)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    server.reader.join(10)
    assert proc.returncode == 0, server.lines
    assert not any("Traceback" in line for line in server.lines), server.lines


def connect(address: tuple[str, int], rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(15)
    sock.connect(address)
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, data
        data += chunk
    return data


MODES = ["thread", "event"]


@pytest.mark.parametrize("mode", MODES)
def test_broadcast_sends_each_clients_bytes_to_the_others(mode):
    with serving("tcp", "127.0.0.1:0", "-H", "broadcast", "-c", mode) as server:
        a, b, c = server.connect(), server.connect(), server.connect()
        with a, b, c:
            a.sendall(b"binary\x00\xff")
            assert read_exactly(b, 8) == b"binary\x00\xff"
            assert read_exactly(c, 8) == b"binary\x00\xff"
            c.sendall(b"!")
            assert read_exactly(a, 1) == b"!" and read_exactly(b, 1) == b"!"
    assert any("3 connections" in line for line in server.lines)


@pytest.mark.parametrize("mode", MODES)
def test_broadcast_to_all_includes_the_sender(mode):
    args = ("tcp", "127.0.0.1:0", "-H", "broadcast", "--to-all", "-c", mode)
    with serving(*args) as server, server.connect() as a:
        a.sendall(b"me too")
        assert read_exactly(a, 6) == b"me too"


@pytest.mark.parametrize("mode", MODES)
def test_chat_prefixes_lines_and_announces_joins_and_leaves(mode):
    with serving("tcp", "127.0.0.1:0", "-H", "chat", "-c", mode) as server:
        with server.connect() as a:
            b = server.connect()
            b_name = "{}:{}".format(*b.getsockname())
            a_name = "{}:{}".format(*a.getsockname())
            assert read_line(a) == f"* {b_name} joined\n".encode()
            a.sendall(b"hel")
            a.sendall(b"lo\nhow are")
            assert read_line(b) == f"[{a_name}] hello\n".encode()
            b.sendall(b"fine\n")
            assert read_line(a) == f"[{b_name}] fine\n".encode()
            b.close()
            assert read_line(a) == f"* {b_name} left\n".encode()
            c = server.connect()
            c_name = "{}:{}".format(*c.getsockname())
            assert read_line(a) == f"* {c_name} joined\n".encode()
            a.shutdown(socket.SHUT_WR)  # the unfinished line goes out, then the goodbye
            assert read_line(c) == f"[{a_name}] how are\n".encode()
            assert read_line(c) == f"* {a_name} left\n".encode()
            c.close()


def test_chat_over_unix_names_peers_by_number(tmp_path):
    path = str(tmp_path / "chat.sock")
    with serving("unix", path, "-H", "chat") as server:
        a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            a.settimeout(15)
            b.settimeout(15)
            a.connect(path)
            server.wait_for("(1 client in it)")
            b.connect(path)
            assert re.fullmatch(rb"\* unix-\d+ joined\n", read_line(a))
            b.sendall(b"psst\n")
            assert re.fullmatch(rb"\[unix-\d+\] psst\n", read_line(a))
    assert not os.path.exists(path)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
TOTAL = 8 * 1024 * 1024


def send_and_collect(sender: socket.socket, reader: socket.socket, total: int) -> bytes:
    """Send `total` bytes from `sender` while `reader` reads them, never more than 1 MiB
    ahead of it (a reader that keeps up); return what it read."""
    got = bytearray()
    progress = threading.Condition()
    done = threading.Event()

    def read() -> None:
        try:
            while len(got) < total and (chunk := reader.recv(1 << 20)):
                with progress:
                    got.extend(chunk)
                    progress.notify_all()
        finally:
            done.set()
            with progress:
                progress.notify_all()

    thread = threading.Thread(target=read)
    thread.start()
    block = os.urandom(65536)
    for sent in range(0, total, len(block)):
        with progress:
            progress.wait_for(lambda s=sent: s - len(got) < 1 << 20 or done.is_set(), 30)
        sender.sendall(block)
    assert done.wait(60)
    thread.join()
    return bytes(got)


@needs_proc
@pytest.mark.parametrize("mode", MODES)
def test_a_client_that_never_reads_is_disconnected_and_the_others_go_on(mode):
    with serving("tcp", "127.0.0.1:0", "-H", "broadcast", "-c", mode) as server:
        sender, reader, idle = server.connect(), server.connect(), server.connect(4096)
        with sender, reader, idle:
            before = rss_kib(server.proc.pid)
            got = send_and_collect(sender, reader, TOTAL)
            assert len(got) == TOTAL
            grew = rss_kib(server.proc.pid) - before
            assert grew < 40 * 1024, f"server grew by {grew} KiB"
            idle.settimeout(15)
            with contextlib.suppress(ConnectionResetError):
                while idle.recv(1 << 20):  # what it was sent before, then the end
                    pass
    assert any("disconnected slow client" in line for line in server.lines), server.lines


@pytest.mark.parametrize("mode", MODES)
def test_drop_keeps_a_slow_client_and_drops_what_does_not_fit(mode):
    args = ("tcp", "127.0.0.1:0", "-H", "broadcast", "--slow-client", "drop", "-c", mode)
    with serving(*args) as server:
        sender, reader, idle = server.connect(), server.connect(), server.connect(4096)
        with sender, reader, idle:
            assert len(send_and_collect(sender, reader, TOTAL)) == TOTAL
            with server.connect():  # the slow client is still in the room
                server.wait_for("joined the room (4 clients in it)")
            idle.shutdown(socket.SHUT_WR)  # it leaves: what waits for it comes, then the end
            late = bytearray()
            while chunk := idle.recv(1 << 20):
                late += chunk
            assert 0 < len(late) < TOTAL
            server.wait_for("B dropped (--slow-client drop)")
    assert not any("disconnected slow client" in line for line in server.lines)


@pytest.mark.parametrize("mode", MODES)
def test_block_makes_every_sender_wait_for_the_slowest(mode):
    args = ("tcp", "127.0.0.1:0", "-H", "broadcast", "--slow-client", "block", "-c", mode)
    with serving(*args) as server:
        sender, reader, idle = server.connect(), server.connect(), server.connect(4096)
        with sender, reader, idle:
            total = TOTAL
            got = bytearray()

            def send() -> None:
                block = bytes(65536)
                for _ in range(total // len(block)):
                    sender.sendall(block)

            writer = threading.Thread(target=send, daemon=True)
            writer.start()
            # Read until the flow stops (0.3 s without a byte) or 1.5 s: were nobody held
            # back, 8 MiB would flow through loopback in far less.
            reader.settimeout(0.3)
            deadline = time.monotonic() + 1.5
            with contextlib.suppress(TimeoutError):
                while time.monotonic() < deadline:  # the idle client holds everyone back
                    got += reader.recv(1 << 20)
            assert len(got) < total // 2
            drained = threading.Thread(target=lambda: read_exactly(idle, total), daemon=True)
            drained.start()  # now it reads: everyone goes on
            reader.settimeout(30)
            got += read_exactly(reader, total - len(got))
            assert len(got) == total
            writer.join(30)
            drained.join(30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["udp", ":0", "-H", "chat"], "udp has none"),
        (["tcp", ":0", "-H", "broadcast", "-c", "fork"], "not with --concurrency fork"),
        (["tcp", ":0", "-H", "chat", "-c", "sync"], "not with --concurrency sync"),
        (["tcp", ":0", "-H", "chat", "--workers", "2"], "not with --workers"),
        (["tcp", ":0", "-H", "chat", "--to-all"], "--to-all only applies to -H broadcast"),
        (["tcp", ":0", "--to-all"], "--to-all only applies to -H broadcast"),
        (["tcp", ":0", "--slow-client", "drop"], "--slow-client only applies"),
    ],
)
def test_rooms_refuse_what_cannot_work(args, message):
    proc = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
