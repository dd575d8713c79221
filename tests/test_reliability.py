"""Reliability and security (issue 5): load held, faults survived, bad input, safe defaults.

Most tests run the real command (`python -m sockserve ...`) in a subprocess and measure it from
the outside through /proc: open descriptors, threads, child processes, RSS. The few that must
reach inside the server (a failing fork(), the umask during bind, datagrams through every
builtin with its output captured) build it in this process with `make_server`, as the runner
does. Every socket is on 127.0.0.1, ::1 or a unix path under a short directory in /tmp; the
all-interfaces tests only bind 0.0.0.0 / ::, and connect to loopback.

Load loops are bounded in count and time. The long runs (10,000 connections per mode) are in
benchmarks/soak.py, which has its own helpers (benchmarks/soaktools.py).
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import io
import json
import os
import re
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builtin_checks import SOLO
from clitools import wait_process
from servertools import wait_until

from sockserve import builtins as bh, socketserver as ss
from sockserve.addresses import parse_address
from sockserve.compose import make_server
from sockserve.config import ServeConfig
from sockserve.console import JsonReporter, PlainReporter
from sockserve.errors import ExitStatus
from sockserve.loading import load_handler
from sockserve.runner import RunMonitor, build_handler, serve

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="measures servers through /proc"
)

TIMEOUT = 10.0
HAS_EVENT = (Path(ss.__file__).parent.parent / "event.py").exists()
MODES = ["sync", "thread", "fork", *(["event"] if HAS_EVENT else [])]
CONSOLE_SCRIPT = Path(sys.executable).with_name("sockserve")
BANNER = re.compile(r"listening on (tcp|udp|unix|unix-dgram)://(\S+)")
#: The builtins that serve on their own: forward needs an upstream (tests/test_forward.py).
STANDALONE = [name for name in bh.BUILTINS if name != "forward"]

#: The builtins that answer bytes themselves (exec runs a program: see test_exec.py).


# -- the server under test, in a subprocess ----------------------------------------------------


class Server:
    """`python -m sockserve ARGS` (or any command) in its own session; stderr read by a thread.

    `lines` collects stderr; `wait_for(regex)` waits for a line, so tests synchronise on what
    the server says rather than on sleeps. `pid` is the server's (for a shell pipeline, the
    shell's; the metrics then make no sense).
    """

    def __init__(
        self,
        args: list[str],
        *,
        stdout: Any = subprocess.DEVNULL,
        cwd: str | None = None,
        command: list[str] | None = None,
    ) -> None:
        cmd = command if command is not None else [sys.executable, "-m", "sockserve", *args]
        self.print_address = "--print-address" in cmd and stdout is subprocess.DEVNULL
        if self.print_address:
            stdout = subprocess.PIPE
        env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # our signals reach the server only, never the test
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.ended = False
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> re.Match[str]:
        """Wait for a stderr line (from line `start` on) matching `pattern`; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        return m
                if self.ended:
                    raise AssertionError(f"exited without {pattern!r}:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.output}")
                self.cond.wait(left)

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for line in self.lines if rx.search(line))

    def wait_count(self, pattern: str, n: int, timeout: float = TIMEOUT) -> None:
        """Wait until `n` stderr lines match `pattern`."""
        with self.cond:
            ok = self.cond.wait_for(lambda: self.count(pattern) >= n or self.ended, timeout)
            assert ok and self.count(pattern) >= n, f"< {n} x {pattern!r}:\n{self.output}"

    @property
    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def address(self) -> Any:
        """The bound address, from the banner (or --print-address): (host, port) or a path."""
        if self.print_address:
            assert self.proc.stdout is not None
            text = self.proc.stdout.readline().decode().strip()
            assert text, f"no address printed:\n{self.output}"
            if text.startswith("/"):
                return text
        else:
            m = self.wait_for(BANNER.pattern)
            text = m.group(2)
            if m.group(1).startswith("unix"):
                return text
        host, _, port = text.rpartition(":")
        return host.strip("[]"), int(port)

    def serving(self) -> Any:
        """The address, once an echo round trip proves the serve loop runs."""
        addr = self.address()
        assert exchange(addr, b"warm-up") == b"warm-up"
        return addr

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = TIMEOUT) -> int:
        code = wait_process(self.proc, timeout)
        self.reader.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        self.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # the session we started, by its id
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    # -- what /proc says about it --
    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def status_kib(self, key: str) -> int:
        """A /proc/PID/status figure in KiB: VmRSS (now) or VmHWM (peak)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def cpu_ticks(self) -> int:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def children(self) -> list[tuple[int, str]]:
        """(pid, state) of every child process; state Z is a zombie."""
        return children_of(self.pid)


def children_of(parent: int) -> list[tuple[int, str]]:
    try:  # each of its threads' children (see conftest.child_pids), then their states
        pids: set[int] = set()
        for tid in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
    except OSError:  # gone, no such file, or a thread that just ended: scan /proc
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    found = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == parent:
            found.append((pid, fields[0]))
    return found


def server_connections(port: int) -> int:
    """Connection sockets on local `port` that a process still holds (TIME_WAIT ones have no
    inode): zero once the server has closed every connection it accepted."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rpartition(":")[2], 16)
                if local_port == port and fields[3] != "0A" and fields[9] != "0":
                    count += 1
    return count


def quiescent(server: Server, port: int, threads: int = 1) -> bool:
    """No connection open, no request thread, no child: the server's resting state. A thread
    mode server with a builtin rests with 2 threads: the loop, and one waiting in accept."""
    return server_connections(port) == 0 and server.threads() == threads and not server.children()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Server]]:
    """Start servers; any still running at the end are killed (by their session id)."""
    started: list[Server] = []

    def start(args: list[str], **kwargs: Any) -> Server:
        server = Server(args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


# -- clients -----------------------------------------------------------------------------------


def connect(addr: Any, timeout: float = TIMEOUT) -> socket.socket:
    if isinstance(addr, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(addr, timeout=timeout)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(65536, size - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := sock.recv(65536):
        buf += chunk
    return bytes(buf)


def exchange(addr: Any, payload: bytes) -> bytes:
    """Connect, send, half-close, read until EOF."""
    with connect(addr) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def write_handler(directory: Any, name: str, source: str) -> str:
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(source)
    return path


FAULTY_HANDLER = """\
import threading
import sockserve

class Faulty(sockserve.BaseRequestHandler):
    # raise -> ValueError; hang-io -> blocked in recv; hang -> blocked forever (no I/O)
    def handle(self):
        data = self.request.recv(100)
        if data == b"raise":
            raise ValueError("handler bug")
        if data in (b"hang-io", b"hang"):
            self.request.sendall(b"hanging")
            if data == b"hang":
                threading.Event().wait()
            while self.request.recv(100):
                pass
            return
        self.request.sendall(data)
"""

LINES_HANDLER = """\
import sockserve

class Lines(sockserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
"""


# == Load held ==================================================================================


def test_thread_mode_holds_1000_concurrent_connections(spawn: Callable[..., Server]) -> None:
    """1,000 connections open at once, each served by its own thread, every echo exact."""
    count = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count * 2 + 100  # our 1,000 client sockets, and the server's (it inherits the limit)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        server = spawn(["tcp", ":0", "-q", "--print-address", "-H", "echo"])
        _held_connections(server, count)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _held_connections(server: Server, count: int) -> None:
    addr = server.serving()
    assert wait_until(lambda: quiescent(server, addr[1], threads=2))
    base_threads, base_fds = server.threads(), server.fds()
    clients: list[socket.socket] = []
    payloads = [os.urandom(1 + (i * 7919) % 20000) for i in range(count)]
    try:
        # Connect in batches of 100, each batch echoed before the next: the accept queue
        # (backlog 128) never overflows, so no connect waits out a SYN retransmission.
        for start in range(0, count, 100):
            batch = [connect(addr) for _ in range(min(100, count - start))]
            clients += batch
            for sock, payload in zip(batch, payloads[start:], strict=False):
                sock.sendall(payload)
            for sock, payload in zip(batch, payloads[start:], strict=False):
                assert recv_exactly(sock, len(payload)) == payload
        # All 1,000 still open: each is served concurrently, by its own handler thread.
        held = (server.threads(), server.fds(), server.status_kib("VmRSS"))
        assert held[0] >= base_threads + count
        assert held[1] >= base_fds + count
        for sock, payload in zip(clients, payloads, strict=True):
            sock.sendall(payload[::-1])
        for sock, payload in zip(clients, payloads, strict=True):
            assert recv_exactly(sock, len(payload)) == payload[::-1]
    finally:
        for sock in clients:
            sock.close()
    assert wait_until(lambda: server.threads() == base_threads and server.fds() == base_fds)
    print(
        f"{count} held: threads {base_threads}->{held[0]}->{server.threads()}, "
        f"fds {base_fds}->{held[1]}->{server.fds()}, RSS {held[2]} KiB while held"
    )


@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_bounded_modes_never_exceed_their_limit(spawn: Callable[..., Server], mode: str) -> None:
    """--max-threads / --max-children N under 10×N clients: never more than N at work."""
    limit = 4
    option = "--max-threads" if mode == "thread" else "--max-children"
    server = spawn(["tcp", ":0", "-c", mode, option, str(limit), "-H", "echo"])
    addr = server.serving()

    def live() -> int:  # request threads (besides the main thread), or child processes
        return server.threads() - 1 if mode == "thread" else len(server.children())

    # At rest: no child; or one thread, waiting in accept (it counts against the bound).
    resting = 1 if mode == "thread" else 0
    assert wait_until(lambda: live() == resting)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.0005 if mode == "fork" else 0):  # (a /proc scan is costly)
            with contextlib.suppress(OSError, ValueError):
                peak = max(peak, live())

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [connect(addr) for _ in range(10 * limit)]
    try:
        for i, sock in enumerate(clients):
            sock.sendall(b"client %d\n" % i)
        # Each echo handler holds its client until the client closes, so the clients that got
        # their echo and are still open are exactly the requests at work.
        waiting = set(clients)
        served: list[socket.socket] = []
        closed = 0
        at_work_max = 0
        checked_idle = False
        while waiting:
            ready, _, _ = select.select(list(waiting), [], [], TIMEOUT)
            assert ready, f"{len(waiting)} clients never served"
            for sock in ready:
                i = clients.index(sock)
                assert sock.recv(100) == b"client %d\n" % i
                waiting.discard(sock)
                served.append(sock)
            at_work = len(served) - closed
            at_work_max = max(at_work_max, at_work)
            assert at_work <= limit
            if at_work == limit:
                # the bound is reached: nobody else is served before a slot frees up (a
                # thread that just finished may still be counted for an instant: see below)
                now = live()
                assert limit <= now <= (limit + 1 if mode == "thread" else limit), now
                if not checked_idle:
                    idle, _, _ = select.select(list(waiting), [], [], 0.2)
                    assert not idle
                    checked_idle = True
            if at_work == limit or not waiting:
                served[closed].close()  # free one slot
                closed += 1
    finally:
        stop.set()
        sampler.join()
        for sock in clients:
            sock.close()
    assert at_work_max == limit
    print(f"{mode}: at work <= {at_work_max}, OS peak {peak} (limit {limit}, 40 clients)")
    # A finished request thread can still be exiting (in the framework's bookkeeping) when
    # the next one starts: the OS may count one more thread for an instant; never a child.
    assert peak <= (limit + 1 if mode == "thread" else limit), peak
    assert wait_until(lambda: live() == resting)  # idle threads beyond one are ended
    assert server.stop() == 0
    assert "0 errors" in server.output


def churn(addr: Any, count: int, size: int = 100) -> None:
    """`count` connections one after another, each echoed and verified."""
    for i in range(count):
        payload = (b"%d;" % i) * (size // 4)
        assert exchange(addr, payload) == payload


@pytest.mark.parametrize("mode", MODES)
def test_resources_back_to_baseline_after_many_connections(
    spawn: Callable[..., Server], mode: str
) -> None:
    """Thousands of connections: fds, threads, children back to baseline, RSS flat."""
    count = 200 if mode == "fork" else 1000  # benchmarks/soak.py runs 10,000 per mode
    server = spawn(["tcp", ":0", "-c", mode, "-q", "--print-address", "-H", "echo"])
    addr = server.address()
    churn(addr, 100 if mode == "fork" else 300)  # warm-up: caches and allocator arenas fill
    assert wait_until(lambda: quiescent(server, addr[1], threads=2 if mode == "thread" else 1))
    base = (server.fds(), server.threads(), server.status_kib("VmRSS"))
    churn(addr, count)
    settled = wait_until(
        lambda: (server.fds(), server.threads()) == base[:2] and not server.children()
    )
    after = (server.fds(), server.threads(), server.status_kib("VmRSS"))
    assert settled, f"before {base}, after {after}, children {server.children()}"
    assert after[2] - base[2] < 1024, f"RSS grew from {base[2]} to {after[2]} KiB"
    print(f"{mode}: {count} conns, (fds, threads, RSS KiB) {base} -> {after}")
    assert server.stop() == 0
    assert not children_of(server.pid)


# == Faults survived ==========================================================================


def send_until_full(sock: socket.socket, chunk: bytes, limit: int) -> None:
    """Send up to `limit` bytes, stopping early when the buffers are full (never blocks)."""
    sock.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while sent < limit:
            sent += sock.send(chunk)
    sock.settimeout(TIMEOUT)


def _client_faults(addr: Any, endless: bool) -> list[int]:
    """RST mid-request, RST with our replies unread, half-close, vanish while the server
    writes; returns the client ports of the faulty connections. `endless`: the server sends
    without end (chargen)."""
    ports = []
    sock = connect(addr)
    ports.append(sock.getsockname()[1])
    sock.sendall(b"a partial line, no newline")
    reset(sock)

    sock = connect(addr)
    ports.append(sock.getsockname()[1])
    send_until_full(sock, b"x\n" * 32768, 4 << 20)  # replies unread: the server blocks writing
    reset(sock)

    with connect(addr) as sock:  # half-close: the reply still arrives, then EOF
        sock.sendall(b"half\n")
        sock.shutdown(socket.SHUT_WR)
        if endless:
            assert len(recv_exactly(sock, 10_000)) == 10_000
        else:
            assert recv_all(sock) in (b"half\n", b"HALF\n")

    sock = connect(addr)
    ports.append(sock.getsockname()[1])
    send_until_full(sock, b"y\n" * 32768, 1 << 20)
    sock.recv(10)
    sock.close()  # FIN with data unread: our kernel answers the server's next write with RST
    return ports


@pytest.mark.parametrize(
    ("mode", "handler"),
    [
        *((mode, "echo") for mode in MODES),
        ("thread", "upper"),
        ("fork", "chargen"),
        ("thread", "lines"),
        ("fork", "lines"),
    ],
)
def test_client_faults_are_logged_at_most_once(
    spawn: Callable[..., Server], tmp_path: Any, mode: str, handler: str
) -> None:
    if handler == "lines":  # a user's StreamRequestHandler: errors reach handle_error
        handler = write_handler(tmp_path, "lines.py", LINES_HANDLER)
    server = spawn(["tcp", ":0", "-c", mode, "-H", handler])
    addr = server.address()
    ports = _client_faults(addr, endless=handler == "chargen")
    if handler != "chargen":
        assert exchange(addr, b"still here\n").lower() == b"still here\n"
    else:
        with connect(addr) as sock:
            assert len(recv_exactly(sock, 1000)) == 1000
    assert server.stop() == 0
    out = server.output
    assert "Traceback" not in out
    for port in ports:
        notes = [
            line
            for line in server.lines
            if re.search(rf":{port}\b", line) and not line.startswith(("connect ", "close "))
        ]
        assert len(notes) <= 1, notes
        assert all("went away" in line for line in notes), notes
    assert re.search(r"stopped after .* 0 errors", out), out


@pytest.mark.parametrize("mode", MODES)
def test_idle_clients_are_closed_by_timeout(spawn: Callable[..., Server], mode: str) -> None:
    """--timeout closes silent, half-sent (slowloris) and non-reading clients; others go on."""
    timeout = 0.3
    server = spawn(["tcp", ":0", "-c", mode, "-H", "echo", "--timeout", str(timeout)])
    addr = server.serving()
    started = time.monotonic()
    silent = connect(addr)
    slowloris = connect(addr)
    slowloris.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more
    slowloris.recv(100)  # its echo
    stalled = connect(addr)  # sends, never reads: the server blocks writing the echo
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            stalled.send(b"z" * 65536)
    latencies = []
    if mode != "sync":  # sync serves one client at a time: the others wait for the timeout
        for _ in range(5):
            t = time.monotonic()
            assert exchange(addr, b"meanwhile") == b"meanwhile"
            latencies.append(time.monotonic() - t)
        assert max(latencies) < timeout * 0.8, latencies  # nobody waited for the timeout
    closed_after = []
    for sock in (silent, slowloris):
        recv_all(sock)  # EOF: the server closed it
        closed_after.append(time.monotonic() - started)
        sock.close()
    stalled.close()
    assert all(timeout * 0.8 < t < timeout * 3 + 1 for t in closed_after), closed_after
    print(f"{mode}: idle closed after {closed_after}, others' latency max {max(latencies or [0])}")
    assert exchange(addr, b"after") == b"after"
    server.wait_for(r"closed idle connection 127\.0\.0\.1:\d+$")
    assert server.stop() == 0
    assert "Traceback" not in server.output


@pytest.mark.parametrize(
    ("mode", "hang"),
    [
        ("sync", "hang-io"),
        ("sync", "hang"),
        ("thread", "hang-io"),
        ("thread", "hang"),
        ("fork", "hang"),  # (a child is killed, in I/O or not)
    ],
)
def test_handler_raising_or_hanging(
    spawn: Callable[..., Server], tmp_path: Any, mode: str, hang: str
) -> None:
    """A raise is logged with its traceback and the connection closed; a hang never holds
    the stop past the grace period."""
    handler = write_handler(tmp_path, "faulty.py", FAULTY_HANDLER)
    grace = 0.15
    server = spawn(["tcp", ":0", "-c", mode, "-H", handler, "--grace", str(grace)])
    addr = server.address()
    with connect(addr) as sock:
        sock.sendall(b"raise")
        assert recv_all(sock) == b""  # closed
    server.wait_for(r"^error handling 127\.0\.0\.1:\d+: ValueError: handler bug$")
    server.wait_for(r"^Traceback \(most recent call last\):$")
    server.wait_for(r'faulty\.py", line \d+, in handle$')
    assert exchange(addr, b"fine") == b"fine"  # the server goes on
    sock = connect(addr)
    sock.sendall(hang.encode())
    assert recv_exactly(sock, 7) == b"hanging"
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    took = time.monotonic() - started
    sock.close()
    assert grace * 0.8 < took < grace + 1.5, took
    print(f"{mode} {hang}: SIGTERM -> exit {took * 1000:.0f} ms (grace {grace}s)")
    assert f"grace period of {grace:g}s over" in server.output
    assert re.search(r"stopped after .*, 1 error \(SIGTERM received\)", server.output)
    assert not children_of(server.pid)


def test_accept_emfile_backs_off_and_recovers(spawn: Callable[..., Server]) -> None:
    """Out of descriptors: one warning, no busy loop, back to serving once fds are free."""
    server = spawn(["tcp", ":0", "-H", "echo"])
    addr = server.serving()
    limit = server.fds() + 24
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (limit, limit * 4))
    held = [connect(addr) for _ in range(60)]  # 24 get a thread; the rest wait in the backlog
    try:
        server.wait_for(r"^warning: cannot accept: Too many open files")
        ticks = server.cpu_ticks()
        pausing = time.monotonic()
        time.sleep(0.5)  # measure: the paused server must not spin
        spent = server.cpu_ticks() - ticks
        assert spent <= 0.1 * os.sysconf("SC_CLK_TCK"), f"{spent} ticks in 0.5s while paused"
        freed = time.monotonic()
    finally:
        for sock in held:
            sock.close()
    assert exchange(addr, b"recovered") == b"recovered"
    recovery = time.monotonic() - freed
    assert recovery < 1.5, recovery  # the back-off is capped at 0.5s
    server.wait_for(r"^accepting again after [\d.]+s$")
    assert exchange(addr, b"and again") == b"and again"
    assert server.count("cannot accept") == 1
    assert server.stop() == 0
    assert "Traceback" not in server.output
    print(f"EMFILE: paused {freed - pausing:.2f}s, recovered {recovery * 1000:.0f} ms after")


# -- in-process servers: for what a subprocess cannot show --------------------------------------


@contextlib.contextmanager
def served(
    transport: str,
    builtin: str,
    concurrency: str = "sync",
    *,
    options: bh.HandlerOptions | None = None,
    reporter: PlainReporter | None = None,
    address: str | None = None,
) -> Iterator[tuple[Any, Any, RunMonitor]]:
    """A server built as the runner builds it (config, monitor, make_server), run in a thread.

    With `options`, the builtin gets them (an output file for stdout, an input for stdio)
    plus the monitor as its observer. Yields (server, address, monitor).
    """
    family = {"tcp": None, "udp": None, "unix": "unix", "unix-dgram": "unix"}[transport]
    socktype = "stream" if transport in ("tcp", "unix") else "dgram"
    parsed = parse_address(address or "127.0.0.1:0", family)
    config = ServeConfig(
        family=parsed.family,
        socktype=socktype,
        address=parsed,
        handler=load_handler(builtin),
        concurrency=concurrency,  # type: ignore[arg-type]
        reply=b"canned reply",
        verbosity=getattr(reporter, "verbosity", 0),
    )
    monitor = RunMonitor(reporter or PlainReporter(io.StringIO()), config)
    if options is None:
        handler = build_handler(config, monitor)
    else:
        options = bh.HandlerOptions(
            reply=config.reply,
            output=options.output,
            input=options.input,
            observer=monitor,
        )
        make = bh.stream_handler if socktype == "stream" else bh.datagram_handler
        handler = make(builtin, options)
    server: Any = make_server(config, handler, monitor)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server, server.server_address, monitor
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        monitor.close()
        handler.release()


def closed_without_answer(addr: Any) -> bool:
    """Connect and wait: True when the server closes the connection without a byte."""
    with connect(addr) as sock:
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_failure_refuses_the_request_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork() failing with EAGAIN: that client is closed, one warning, the server goes on."""
    out = io.StringIO()
    real_fork = os.fork
    failures = [BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))] * 2

    def fork() -> int:
        if failures:
            raise failures.pop()
        return real_fork()

    with served("tcp", "echo", "fork", reporter=PlainReporter(out)) as (server, addr, _):
        monkeypatch.setattr(os, "fork", fork)
        for _ in range(2):
            assert closed_without_answer(addr)
        with connect(addr) as sock:
            sock.sendall(b"served")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"served"
    log = out.getvalue()
    assert log.count("warning: cannot fork a child for a new request") == 1, log
    assert "(Resource temporarily unavailable)" in log
    assert "serving again after" in log and "(2 refused)" in log
    assert "Traceback" not in log and "error" not in log


def test_thread_start_failure_refuses_the_request_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    real_start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def start(self: threading.Thread) -> None:
        # an accepting thread cannot start the next one (the first one, started by the
        # loop, did start: patching only once the loop runs would race with that start)
        if failures and threading.current_thread().name.endswith("(_accept_and_serve)"):
            raise failures.pop()
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with served("tcp", "echo", "thread", reporter=PlainReporter(out)) as (server, addr, _):
        assert closed_without_answer(addr)
        assert exchange(addr, b"served") == b"served"
    log = out.getvalue()
    assert log.count("warning: cannot start a thread for a new request") == 1, log
    assert "serving again after" in log and "(1 refused)" in log
    assert "Traceback" not in log


# -- stopping ------------------------------------------------------------------------------------


def test_banner_comes_after_the_signal_handlers() -> None:
    """Whoever sends SIGTERM on seeing the banner (or --print-address) gets a graceful stop:
    the handlers are in place before the banner, never the default action that kills."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    before = signal.getsignal(signal.SIGTERM)
    seen: dict[str, Any] = {}

    class Reporter(PlainReporter):
        def listening(self, url: str, details: Any) -> None:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            host, _, port = url.removeprefix("tcp://").rpartition(":")
            client = threading.Thread(target=exchange, args=((host, int(port)), b"once"))
            client.start()  # --once: the server stops after it
            seen["client"] = client
            super().listening(url, details)

    config = ServeConfig(
        family="inet",
        socktype="stream",
        address=parse_address("127.0.0.1:0", "inet"),
        handler=load_handler("echo"),
        once=True,
    )
    assert serve(config, Reporter(io.StringIO())) == ExitStatus.OK
    seen["client"].join(TIMEOUT)
    assert seen["handler"] not in (signal.SIG_DFL, signal.SIG_IGN, None, before)
    assert signal.getsignal(signal.SIGTERM) == before  # restored on the way out


def _kill_children() -> None:
    """SIGKILL this process's children (test safety: unblocks a hung wait)."""
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for pid in f.read().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)


def test_workers_supervisor_sees_a_signal_that_came_just_before_its_wait() -> None:
    """The --workers supervisor waits in select on its workers. A signal whose Python handler
    had not run when that wait began must still wake it (the signal's wakeup fd is the
    supervisor's wake pipe). `_thread.interrupt_main` makes that case: the signal flagged,
    its wakeup fd written, no system call interrupted."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")

    interrupt = threading.Timer(0.3, _thread.interrupt_main, args=(signal.SIGTERM,))

    class Reporter(PlainReporter):
        def listening(self, url: str, details: Any) -> None:
            super().listening(url, details)  # the supervisor forwards signals from here on
            interrupt.start()

    config = ServeConfig(
        family="inet",
        socktype="stream",
        address=parse_address("127.0.0.1:0", "inet"),
        handler=load_handler("echo"),
        workers=2,
    )
    killer = threading.Timer(5, _kill_children)  # else a missed signal would wait forever
    killer.start()
    start = time.monotonic()
    try:
        status = serve(config, Reporter(io.StringIO()))
    finally:
        killer.cancel()
        killer.join()
        interrupt.cancel()
        if interrupt.is_alive():
            interrupt.join()
    took = time.monotonic() - start
    assert (status, took < 3) == (ExitStatus.OK, True), f"{status} after {took:.2f}s"


@pytest.mark.parametrize("extra", [[], ["-c", "fork"], ["--workers", "2"]])
def test_address_printed_only_once_signals_are_handled(
    spawn: Callable[..., Server], extra: list[str]
) -> None:
    """--print-address blocked on a full pipe: at that instant SIGTERM must already be
    caught (else a script that kills the server on reading the address kills it outright,
    leaving a socket file, or --workers processes serving as orphans)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(write_end, bytes(4096))
    os.set_blocking(write_end, True)
    try:
        server = spawn(["tcp", ":0", "--print-address", *extra], stdout=write_end)
        os.close(write_end)
        wchan = f"/proc/{server.pid}/wchan"
        assert wait_until(lambda: Path(wchan).read_text().endswith("pipe_write"))
        sigcgt = next(
            line
            for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
            if line.startswith("SigCgt:")
        )
        assert int(sigcgt.split()[1], 16) & (1 << (signal.SIGTERM - 1)), sigcgt
        workers = [pid for pid, _ in server.children()]
        assert len(workers) == (2 if "--workers" in extra else 0)
        assert len(os.read(read_end, filled)) == filled
        with os.fdopen(read_end, "rb") as out:
            read_end = -1
            assert re.fullmatch(rb"127\.0\.0\.1:\d+\n", out.readline())
            assert server.stop() == 0
        assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    finally:
        if read_end >= 0:
            os.close(read_end)


@pytest.mark.parametrize(
    ("mode", "sig"),
    [
        ("thread", signal.SIGTERM),
        ("fork", signal.SIGINT),
        ("sync", signal.SIGTERM),
        *([("event", signal.SIGINT)] if HAS_EVENT else []),
    ],
)
def test_stop_during_load(spawn: Callable[..., Server], sock_dir: str, mode: str, sig: int) -> None:
    """SIGTERM/Ctrl-C under load: in-flight requests finish, nothing new is accepted, the
    socket file goes, a summary, exit 0. Every load request is answered whole or refused."""
    path = os.path.join(sock_dir, "s.sock")
    server = spawn(["unix", path, "-c", mode, "-H", "echo", "--grace", "5"])
    assert server.address() == path
    in_flight: list[socket.socket] = []
    if mode != "sync":  # (a sync server would serve only the first of them)
        for _ in range(5):
            sock = connect(path)
            sock.sendall(b"first half")
            assert recv_exactly(sock, 10) == b"first half"
            in_flight.append(sock)
    outcomes: dict[str, int] = {"whole": 0, "refused": 0, "reset": 0, "partial": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + 20

    def load(k: int) -> None:
        for i in range(100_000):
            if time.monotonic() > deadline:
                return
            payload = (b"%d-%d;" % (k, i)) * 500
            try:
                got = exchange(path, payload)
                outcome = "whole" if got == payload else ("reset" if not got else "partial")
            except (ConnectionRefusedError, FileNotFoundError):
                outcome = "refused"
            except (ConnectionResetError, BrokenPipeError):
                outcome = "reset"  # queued in the backlog when the listener closed
            with lock:
                outcomes[outcome] += 1
            if outcome == "refused":
                return

    loaders = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for thread in loaders:
        thread.start()
    wait_until(lambda: outcomes["whole"] >= 50)
    signalled = time.monotonic()
    server.send_signal(sig)
    for thread in loaders:
        thread.join(TIMEOUT)
    with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
        connect(path).close()  # no new accepts
    for sock in in_flight:  # ... but the requests in flight go on to their end
        sock.sendall(b"second half")
        assert recv_exactly(sock, 11) == b"second half"
        sock.close()
    assert server.wait() == 0
    took = time.monotonic() - signalled
    assert took < 3, took
    assert outcomes["partial"] == 0, outcomes
    assert outcomes["whole"] >= 50 and outcomes["refused"] >= 1, outcomes
    assert not os.path.exists(path)
    assert not children_of(server.pid)
    name = signal.Signals(sig).name
    assert re.search(rf"^stopped after .* \({name} received\)$", server.output, re.M)
    assert "Traceback" not in server.output
    print(f"{mode}: stopped {took * 1000:.0f} ms after {signal.Signals(sig).name}, {outcomes}")


@pytest.mark.parametrize("mode", ["sync", "thread", "fork"])
def test_second_signal_forces_the_exit(
    spawn: Callable[..., Server], tmp_path: Any, mode: str
) -> None:
    """A handler blocked in recv holds the stop for its 60 s; a second signal ends the run
    at once (the abort's shutdown ends the handler: no 2 s abort wait; a handler that ignores
    its socket under a forced exit is test_cli_pty's test_second_ctrl_c_forces_exit_130)."""
    handler = write_handler(tmp_path, "faulty.py", FAULTY_HANDLER)
    server = spawn(["tcp", ":0", "-c", mode, "-H", handler, "--grace", "60"])
    addr = server.address()
    with connect(addr) as sock:
        sock.sendall(b"hang-io")
        assert recv_exactly(sock, 7) == b"hanging"
        server.send_signal(signal.SIGINT)
        started = time.monotonic()
        if mode != "sync":
            server.wait_for("stopping: waiting up to 60s for 1 request")
            server.send_signal(signal.SIGINT)
        else:
            # The sync loop is inside the handler: nothing says the first signal was seen.
            # Signal until it exits: any signal after the first one forces the exit.
            while server.proc.poll() is None and time.monotonic() - started < TIMEOUT:
                server.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    wait_process(server.proc, 0.05)
        assert server.wait() == 130
        took = time.monotonic() - started
        assert took < 3
        print(f"{mode}: forced exit 130 {took * 1000:.0f} ms after the first Ctrl-C")
    assert "Traceback" not in server.output
    assert not children_of(server.pid)


@pytest.mark.parametrize("redirect", [">", ">>", "|"])
def test_stdout_bulk_into_a_file_or_pipe_keeps_every_byte(
    spawn: Callable[..., Server], tmp_path: Any, redirect: str
) -> None:
    """`-H stdout` with 8 MiB from one client (the splice path) into a file, a file opened
    for appending (which refuses splice: copied), or a pipe: every byte arrives, after
    what the file already held."""
    out = tmp_path / "out.bin"
    out.write_bytes(b"before\n")
    argv = " ".join([sys.executable, "-m", "sockserve", "tcp", ":0", "-H", "stdout", "--once"])
    sink = f"| cat >> {out}" if redirect == "|" else f"{redirect} {out}"
    server = spawn([], command=["bash", "-c", f"{argv} </dev/null {sink}"])
    payload = os.urandom(1 << 16) * 128
    with socket.create_connection(server.address(), timeout=10) as sock:
        sock.sendall(payload)
    assert server.wait() == 0, server.output
    expected = payload if redirect == ">" else b"before\n" + payload
    assert out.read_bytes() == expected


@pytest.mark.parametrize(
    "args",
    [
        ["tcp", ":0", "-H", "stdout"],
        ["tcp", ":0", "-H", "stdout", "-c", "fork"],
        ["tcp", ":0", "-H", "stdout", "-c", "sync"],
        ["udp", ":0", "-H", "stdout"],
        ["tcp", ":0", "-H", "stdio"],
    ],
    ids=["thread", "fork", "sync", "udp", "stdio"],
)
def test_downstream_pipe_closing_is_a_clean_exit(
    spawn: Callable[..., Server], tmp_path: Any, args: list[str]
) -> None:
    """`sockserve ... -H stdout | head -c 10`: exit 0 (documented: stdout closed), no
    traceback, no "Exception ignored" at exit."""
    head = tmp_path / "head.out"
    argv = " ".join([sys.executable, "-m", "sockserve", *args])
    script = f"{argv} </dev/null | head -c 10 > {head}; echo status=${{PIPESTATUS[0]}} >&2"
    server = spawn([], command=["bash", "-c", script])
    addr = server.address()
    udp = args[0] == "udp"
    for i in range(200):  # bounded: the first chunk fills head, a later write meets EPIPE
        chunk = b"%04d:" % i + b"x" * 995
        try:
            if udp:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.sendto(chunk, addr)
            else:
                exchange(addr, chunk)
        except OSError:
            break  # refused: the server is gone
        if server.count("^status=") or server.count("stdout closed"):
            break
    m = server.wait_for(r"^status=(\d+)$")
    out = server.output
    assert m.group(1) == "0", out
    assert server.wait() == 0
    # stdio: a client sees EOF as soon as our stdin ends, so the next one may connect while
    # the last one's bytes are still being written: two connections' chunks may interleave,
    # after the start of the first chunk written
    shape = rb"\d{4}:[\d:x]{5}" if "stdio" in args else rb"\d{4}:xxxxx"
    assert re.fullmatch(shape, head.read_bytes()), out
    assert "stdout closed" in out
    assert "Traceback" not in out and "Exception ignored" not in out, out


# == Bad input ==================================================================================

DATAGRAM_MAX = {"udp": 65507, "udp6": 65527, "unix-dgram": 65536}
JUNK = bytes(range(256)) + b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xed\xa0\x80\xf8\x88\x80\x80"


@pytest.mark.parametrize("transport", ["udp", "udp6", "unix-dgram"])
@pytest.mark.parametrize("builtin", SOLO)
def test_datagrams_of_0_bytes_and_maximum_size(sock_dir: str, transport: str, builtin: str) -> None:
    """0 bytes, the largest datagram, and binary junk, through every builtin: never
    truncated, answered as the builtin says, written whole by stdout."""
    biggest = os.urandom(DATAGRAM_MAX[transport])
    payloads = [b"", biggest, JUNK]
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    os.close(in_w)  # stdio: stdin at EOF, nothing to forward
    output = os.fdopen(out_w, "wb", buffering=0)
    drained = bytearray()
    drain = threading.Thread(target=lambda: drained.extend(_read_all(out_r)))
    drain.start()
    log = io.StringIO()
    reporter = JsonReporter(log, verbosity=2)  # -vv --json: every byte through the reporter
    options = bh.HandlerOptions(output=output, input=os.fdopen(in_r, "rb", buffering=0))
    if transport == "unix-dgram":
        server_path = os.path.join(sock_dir, "s")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind(os.path.join(sock_dir.encode(), b"c\xff\xfe"))  # not UTF-8, on purpose
        address: str | None = server_path
        kind = "unix-dgram"
    else:
        v6 = transport == "udp6"
        client = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        address = "[::1]:0" if v6 else "127.0.0.1:0"
        kind = "udp"
    client.settimeout(TIMEOUT)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        with served(kind, builtin, options=options, reporter=reporter, address=address) as (
            _,
            addr,
            monitor,
        ):
            for n, payload in enumerate(payloads, 1):
                client.sendto(payload, addr)
                assert wait_until(lambda n=n: monitor.stats.requests >= n)
                answer = bh.respond_datagram(builtin, payload, reply=b"canned reply")
                if builtin in ("daytime", "time"):
                    assert len(client.recv(65536)) == len(answer or b"")
                elif answer is not None:
                    assert client.recv(70000) == answer
            client.settimeout(0)
            with pytest.raises(BlockingIOError):
                client.recv(70000)  # nothing more: no extra reply
            assert monitor.stats.bytes_in == sum(map(len, payloads))
    finally:
        client.close()
        output.close()
        drain.join(TIMEOUT)
    if builtin in ("stdout", "stdio"):
        assert bytes(drained) == biggest + JUNK
    else:
        assert not drained
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert not [e for e in events if e["event"] in ("error", "warning")], events
    seen = [bytes.fromhex(e["hex"]) for e in events if e.get("direction") == "in"]
    assert seen == payloads, [len(x) for x in seen]  # the -vv dump shows every byte


def _read_all(fd: int) -> bytes:
    chunks = []
    with open(fd, "rb", buffering=0) as f:
        while chunk := f.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("builtin", SOLO)
def test_binary_junk_through_every_stream_builtin_with_hexdump(builtin: str) -> None:
    """Invalid UTF-8 and every byte value, with -vv (hex dump of all traffic) on."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    os.close(in_w)
    output = os.fdopen(out_w, "wb", buffering=0)
    drained = bytearray()
    drain = threading.Thread(target=lambda: drained.extend(_read_all(out_r)))
    drain.start()
    log = io.StringIO()
    options = bh.HandlerOptions(output=output, input=os.fdopen(in_r, "rb", buffering=0))
    try:
        with served(
            "tcp", builtin, "thread", options=options, reporter=PlainReporter(log, verbosity=2)
        ) as (_, addr, monitor):
            with connect(addr) as sock:
                sock.sendall(JUNK)
                if builtin == "chargen":
                    assert len(recv_exactly(sock, 5000)) == 5000
                else:
                    sock.shutdown(socket.SHUT_WR)
                    got = recv_all(sock)
                    expected = {"echo": JUNK, "upper": JUNK.upper(), "reply": b"canned reply"}
                    if builtin in expected:
                        assert got == expected[builtin]
                    elif builtin == "daytime":
                        assert got.endswith(b"-UTC\r\n")
                    elif builtin == "time":
                        assert len(got) == 4
                    else:
                        assert got == b""
            assert wait_until(lambda: monitor.stats.requests >= 1)
    finally:
        output.close()
        drain.join(TIMEOUT)
    if builtin in ("stdout", "stdio"):
        assert bytes(drained) == JUNK
    text = log.getvalue()
    assert "error handling" not in text and "warning:" not in text, text
    assert "Traceback" not in text, text
    assert "|........" in text or builtin in ("daytime", "time", "chargen")  # the hex dump


@pytest.mark.parametrize("builtin", ["echo", "upper", "stdout"])
def test_long_lines_never_grow_server_memory(spawn: Callable[..., Server], builtin: str) -> None:
    """200 MB without a newline: the server reads in bounded chunks; its peak RSS stays put."""
    total = 200 * 1024 * 1024
    block = b"abcdefgh" * (1 << 17)  # 1 MiB, no newline
    server = spawn(["tcp", ":0", "-H", builtin], stdout=subprocess.PIPE)
    addr = server.address()
    assert server.proc.stdout is not None
    written = 0

    def drain_stdout() -> None:
        nonlocal written
        while chunk := server.proc.stdout.read1(1 << 20):  # type: ignore[union-attr]
            written += len(chunk)

    drainer = threading.Thread(target=drain_stdout)
    drainer.start()
    exchange(addr, b"warm-up")
    server.wait_count("^close ", 1)
    base_peak = server.status_kib("VmHWM")
    with connect(addr) as sock:

        def send() -> None:
            with memoryview(block) as view:
                for _ in range(total // len(block)):
                    sock.sendall(view)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        started = time.monotonic()
        sender.start()
        received = 0
        buf = bytearray(1 << 20)
        while n := sock.recv_into(buf):
            received += n
        sender.join(TIMEOUT)
        took = time.monotonic() - started
    server.wait_count("^close ", 2)
    peak = server.status_kib("VmHWM")
    assert server.stop() == 0
    drainer.join(TIMEOUT)
    if builtin == "stdout":
        assert written == total + len(b"warm-up")
    else:
        assert received == total
    assert peak - base_peak < 16 * 1024, f"peak RSS {base_peak} -> {peak} KiB"
    print(f"{builtin}: 200 MB in {took:.2f}s, peak RSS {base_peak} -> {peak} KiB")


# -- unix socket files -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["unix", "unix-dgram"])
def test_unix_stale_socket_replaced_and_removed_on_exit(
    spawn: Callable[..., Server], sock_dir: str, transport: str
) -> None:
    path = os.path.join(sock_dir, "s.sock")
    kind = socket.SOCK_STREAM if transport == "unix" else socket.SOCK_DGRAM
    stale = socket.socket(socket.AF_UNIX, kind)
    stale.bind(path)
    stale.close()  # the file stays; nobody is bound to it any more
    server = spawn([transport, path, "--mode", "600"])
    assert server.address() == path
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert server.stop() == 0
    assert not os.path.lexists(path)


@pytest.mark.parametrize("transport", ["unix", "unix-dgram"])
def test_unix_live_socket_is_refused(
    spawn: Callable[..., Server], sock_dir: str, transport: str
) -> None:
    path = os.path.join(sock_dir, "s.sock")
    kind = socket.SOCK_STREAM if transport == "unix" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_UNIX, kind) as live:
        live.bind(path)
        if kind == socket.SOCK_STREAM:
            live.listen()
        server = spawn([transport, path])
        assert server.wait() == 1
        assert "already in use" in server.output and "Traceback" not in server.output
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        if kind == socket.SOCK_STREAM:
            connect(path).close()  # still ours, still listening


@pytest.mark.parametrize("kind", ["file", "directory", "symlink-to-stale-socket", "dangling"])
def test_unix_path_that_is_not_a_socket_is_never_deleted(
    spawn: Callable[..., Server], sock_dir: str, kind: str
) -> None:
    path = os.path.join(sock_dir, "s.sock")
    target = os.path.join(sock_dir, "target")
    if kind == "file":
        Path(path).write_text("precious")
    elif kind == "directory":
        os.mkdir(path)
    else:
        if kind == "symlink-to-stale-socket":
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(target)
            stale.close()
        os.symlink(target, path)
    before = os.lstat(path)
    server = spawn(["unix", path])
    assert server.wait() == 1
    assert "refusing to replace" in server.output and "Traceback" not in server.output
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
    )
    if kind == "file":
        assert Path(path).read_text() == "precious"
    if kind == "symlink-to-stale-socket":
        assert stat.S_ISSOCK(os.lstat(target).st_mode)  # the target is untouched too


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_unix_mode_without_a_wider_window_and_umask_restored(sock_dir: str, mode: int) -> None:
    """The socket is created under a umask that gives at most `mode` (never wider, even for
    an instant), then chmod-ed to exactly `mode`; the process umask is restored after."""
    path = os.path.join(sock_dir, "s")
    at_bind: list[int] = []
    real_bind = socket.socket.bind

    def spy(self: socket.socket, addr: Any) -> None:
        real_bind(self, addr)
        if addr == path:
            at_bind.append(stat.S_IMODE(os.lstat(path).st_mode))

    config_mode = ServeConfig(
        family="unix",
        socktype="stream",
        address=parse_address(path, "unix"),
        handler=load_handler("echo"),
        mode=mode,
    )
    old = os.umask(0o002)  # a usual umask, wider than `mode`'s complement
    try:
        socket.socket.bind = spy  # type: ignore[method-assign]
        try:
            server: Any = make_server(config_mode, ss.BaseRequestHandler)
        finally:
            socket.socket.bind = real_bind  # type: ignore[method-assign]
        assert os.umask(0o002) == 0o002  # restored
        assert at_bind and at_bind[0] & ~mode == 0, oct(at_bind[0])
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        server.server_close()
        assert not os.path.lexists(path)
        # restored when bind fails, too
        missing = os.path.join(sock_dir, "no-such-dir", "s")
        failing = ServeConfig(
            family="unix",
            socktype="stream",
            address=parse_address(missing, "unix"),
            handler=load_handler("echo"),
            mode=mode,
        )
        with pytest.raises(Exception, match="directory does not exist"):
            make_server(failing, ss.BaseRequestHandler)
        assert os.umask(0o002) == 0o002
    finally:
        os.umask(old)


# == Security defaults ==========================================================================


@pytest.mark.parametrize(
    ("args", "host"),
    [
        (["tcp", ":0"], "127.0.0.1"),
        (["tcp", "0"], "127.0.0.1"),
        (["udp", ":0"], "127.0.0.1"),
        (["tcp", ":0", "--family", "inet6"], "::1"),
    ],
)
def test_loopback_by_default(spawn: Callable[..., Server], args: list[str], host: str) -> None:
    server = spawn(args)
    assert server.address()[0] == host
    assert server.stop() == 0
    assert "all interfaces" not in server.output


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("0.0.0.0:0", "127.0.0.1"),
        ("*:0", "127.0.0.1"),
        ("[::]:0", "::1"),
        ("[::]:0", "127.0.0.1"),  # dual-stack
        ("0:0", "127.0.0.1"),  # inet_aton's spelling of 0.0.0.0
        ("[::0]:0", "::1"),
    ],
)
def test_all_interfaces_warns(spawn: Callable[..., Server], address: str, client: str) -> None:
    server = spawn(["tcp", address])
    _, port = server.address()
    server.wait_for(r"^warning: listening on all interfaces")
    assert exchange((client, port), b"local") == b"local"
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("text", "everywhere"),
    [
        ("0.0.0.0:1", True),
        ("*:1", True),
        ("[::]:1", True),
        ("[::0]:1", True),
        ("[0:0::0]:1", True),
        ("[::ffff:0.0.0.0]:1", True),
        ("0:1", True),
        ("0x0:1", True),
        ("000.000.000.000:1", True),
        ("0.0:1", True),
        (":1", False),
        ("1", False),
        ("127.0.0.1:1", False),
        ("[::1]:1", False),
        ("localhost:1", False),
        ("10.0.0.1:1", False),
        ("[::ffff:127.0.0.1]:1", False),
    ],
)
def test_every_spelling_of_all_interfaces_is_recognised(text: str, everywhere: bool) -> None:
    assert parse_address(text, None).all_interfaces is everywhere


STRAY_NAMES = ["echo", "upper", "json", "signal", "selectors", "traceback", "click", "asyncio"]


@pytest.mark.parametrize("spec", ["echo", "upper", "mine:Handler", "mine.py", "./mine.py:Handler"])
def test_stray_modules_in_cwd_never_run(
    spawn: Callable[..., Server], tmp_path: Any, spec: str
) -> None:
    """Only the handler the user names is imported; a stray echo.py or json.py in the cwd
    (or beside the named file) never runs, whatever is imported after the handler."""
    for name in STRAY_NAMES:
        (tmp_path / f"{name}.py").write_text(
            f"open({str(tmp_path / ('RAN-' + name))!r}, 'w').close()\n"
        )
    (tmp_path / "mine.py").write_text(
        "import sockserve\n"
        "class Handler(sockserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.sendall(b'mine')\n"
    )
    server = spawn([], command=[str(CONSOLE_SCRIPT), "tcp", ":0", "-H", spec], cwd=str(tmp_path))
    addr = server.address()
    expected = {"echo": b"hello", "upper": b"HELLO"}.get(spec, b"mine")
    assert exchange(addr, b"hello") == expected
    assert server.stop() == 0
    assert not sorted(p.name for p in tmp_path.glob("RAN-*"))
