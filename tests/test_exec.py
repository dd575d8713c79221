"""--exec and --sh-exec through the real command: a program per connection or datagram."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from clitools import wait_process

MODES = ["sync", "thread", "fork"]


class Server:
    """A `sockserve` process started with --print-address (and --json unless told)."""

    def __init__(self, proc: subprocess.Popen[str], address: str, err: Path) -> None:
        self.proc = proc
        self.address = address
        self.err = err

    def connect(self) -> socket.socket:
        if self.address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(self.address)
            return sock
        host, port = self.address.rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=10)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return wait_process(self.proc, timeout)

    def stderr(self) -> str:
        return self.err.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event["event"] == name:
                    found.append(event)
        return found

    def wait_event(self, name: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count} {name} events expected; stderr:\n{self.stderr()}")


@contextmanager
def serving(tmp_path: Path, proto: str, *args: str, json_events: bool = True) -> Iterator[Server]:
    address = str(tmp_path / "s.sock") if proto.startswith("unix") else ":0"
    err = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
    command = [sys.executable, "-m", "sockserve", proto, address, "--print-address", *args]
    if json_events:
        command.append("--json")
    with open(err, "w") as err_file:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line, err.read_text()
        yield Server(proc, line, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def zombies_of(pid: int) -> int:
    """How many children of `pid` are zombies."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            count += 1
    return count


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- streams ------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "unix"])
@pytest.mark.parametrize("mode", MODES)
def test_cat_echoes_with_half_close(tmp_path: Path, mode: str, proto: str) -> None:
    """The client shuts its write side: cat sees EOF, and all its output comes back."""
    payload = os.urandom(300_000)
    with serving(tmp_path, proto, "--exec", "cat", "-c", mode) as server:
        for _ in range(2):
            with server.connect() as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                assert read_all(sock) == payload
        exits = server.wait_event("exec", 2)
        assert server.stop() == 0
    assert [e["status"] for e in exits] == [0, 0]
    assert all(e["seconds"] >= 0 and e["signal"] is None for e in exits)
    closes = server.events("close")
    if proto == "tcp":  # the kernel counts what the program read and wrote
        assert [(c["bytes_in"], c["bytes_out"]) for c in closes] == [(len(payload),) * 2] * 2
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_relayed_when_watched(tmp_path: Path, mode: str) -> None:
    """-vv: the program gets pipes, sockserve relays them and sees every chunk."""
    with serving(tmp_path, "tcp", "--exec", "cat", "-vv", "-c", mode) as server:
        with server.connect() as sock:
            sock.sendall(b"through the watch")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"through the watch"
        server.wait_event("close")
        assert server.stop() == 0
    data = server.events("data")
    assert b"".join(bytes.fromhex(d["hex"]) for d in data if d["direction"] == "in") == (
        b"through the watch"
    )
    assert b"".join(bytes.fromhex(d["hex"]) for d in data if d["direction"] == "out") == (
        b"through the watch"
    )
    assert [(c["bytes_in"], c["bytes_out"]) for c in server.events("close")] == [(17, 17)]


@pytest.mark.parametrize("watched", [False, True])
def test_output_delivered_when_the_program_exits_early(tmp_path: Path, watched: bool) -> None:
    """The program exits without reading everything while the client still sends: all its
    output arrives, then EOF (a close with unread input would reset the connection and drop
    what was still queued)."""
    extra = ["-vv"] if watched else []
    line = "head -c 5; head -c 1000000 /dev/zero"
    with serving(tmp_path, "tcp", "--sh-exec", line, *extra) as server:
        with server.connect() as sock:
            stop = threading.Event()

            def keep_sending() -> None:
                try:
                    while not stop.is_set():
                        sock.sendall(b"x" * 4096)
                        time.sleep(0.001)
                except OSError:
                    pass

            sock.sendall(b"hello world")
            sender = threading.Thread(target=keep_sending)
            sender.start()
            try:
                first = sock.recv(5)
                deadline = time.monotonic() + 2
                while not server.events("exec") and time.monotonic() < deadline:
                    time.sleep(0.02)  # the program may end (and the server close) first
                assert first + read_all(sock) == b"hello" + bytes(1000000)
            finally:
                stop.set()
                sender.join()
        assert server.wait_event("exec")[0]["status"] == 0
        assert server.stop() == 0


def test_environment_names_the_client(tmp_path: Path) -> None:
    with serving(tmp_path, "tcp", "--exec", "env") as server:
        with server.connect() as sock:
            local = sock.getsockname()
            sock.shutdown(socket.SHUT_WR)
            env = dict(
                line.split("=", 1) for line in read_all(sock).decode().splitlines() if "=" in line
            )
        assert server.stop() == 0
    host, port = server.address.rsplit(":", 1)
    assert env["PROTO"] == "TCP"
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"]) == (local[0], str(local[1]))
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (host, port)
    assert env["SOCKSERVE_TRANSPORT"] == "tcp"
    assert env["SOCKSERVE_CLIENT"] == f"{local[0]}:{local[1]}"
    assert env["SOCKSERVE_PID"] == str(server.proc.pid)
    assert env["SOCKSERVE_CONN"] == "1"  # the connection id its --json events carry


def test_unix_environment_has_the_peer_credentials(tmp_path: Path) -> None:
    with serving(tmp_path, "unix", "--sh-exec", "env") as server:
        with server.connect() as sock:
            sock.shutdown(socket.SHUT_WR)
            env = dict(
                line.split("=", 1) for line in read_all(sock).decode().splitlines() if "=" in line
            )
        assert server.stop() == 0
    assert env["PROTO"] == "UNIX"
    assert env["UNIXLOCALPATH"] == server.address
    assert "UNIXREMOTEPATH" not in env  # the client did not bind a path
    assert env["UNIXREMOTEPID"] == str(os.getpid())
    assert (env["UNIXREMOTEEUID"], env["UNIXREMOTEEGID"]) == (str(os.geteuid()), str(os.getegid()))
    assert env["SOCKSERVE_TRANSPORT"] == "unix"
    assert env["SOCKSERVE_CONN"] == "1"


@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_stderr_modes(tmp_path: Path, mode: str) -> None:
    line = "echo out; echo 'to stderr' >&2; echo more >&2"
    with serving(tmp_path, "tcp", "--sh-exec", line, "-c", mode) as server:
        with server.connect() as sock:
            assert read_all(sock) == b"out\n"
        lines = server.wait_event("exec-stderr", 2)
        assert server.stop() == 0
    assert [e["line"] for e in lines] == ["to stderr", "more"]
    assert lines[0]["client"] == server.events("connect")[0]["client"]
    with serving(tmp_path, "tcp", "--sh-exec", line, "--exec-stderr", "client") as server:
        with server.connect() as sock:
            assert sorted(read_all(sock).splitlines()) == [b"more", b"out", b"to stderr"]
        assert server.stop() == 0
    assert not server.events("exec-stderr")
    with serving(tmp_path, "tcp", "--sh-exec", line, "--exec-stderr", "discard") as server:
        with server.connect() as sock:
            assert read_all(sock) == b"out\n"
        server.wait_event("exec")
        assert server.stop() == 0
    assert not server.events("exec-stderr")


def test_plain_lines_at_v(tmp_path: Path) -> None:
    with serving(
        tmp_path, "tcp", "--sh-exec", "echo oops >&2; exit 3", "-v", json_events=False
    ) as server:
        with server.connect() as sock:
            host, port = sock.getsockname()[:2]
            client = f"{host}:{port}"
            assert read_all(sock) == b""
        deadline = time.monotonic() + 10
        while "exit 3" not in server.stderr() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stop() == 0
    text = server.stderr()
    assert f"stderr {client}: oops" in text
    assert f"exec {client}: exit 3 after " in text


@pytest.mark.parametrize(
    ("mode", "limit"), [("thread", "--max-threads"), ("fork", "--max-children")]
)
def test_the_mode_bounds_the_programs_alive(tmp_path: Path, mode: str, limit: str) -> None:
    """Four clients, a bound of two: at most two programs live at once; the others wait."""
    marks = tmp_path / "alive"
    marks.mkdir()
    line = f"touch {marks}/$$; cat >/dev/null; rm {marks}/$$"
    with serving(tmp_path, "tcp", "--sh-exec", line, "-c", mode, limit, "2") as server:
        clients = [server.connect() for _ in range(4)]
        deadline = time.monotonic() + 10
        while len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # a third program would have started by now
        assert len(os.listdir(marks)) == 2
        most = 0
        for sock in clients:
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
            sock.close()
            most = max(most, len(os.listdir(marks)))
        server.wait_event("exec", 4)
        assert most <= 2
        # A request child's exit is reaped on the server loop's next turn (as the stdlib's
        # ForkingMixIn does): the last one may still be a zombie right after its event.
        deadline = time.monotonic() + 5
        while zombies_of(server.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert zombies_of(server.proc.pid) == 0
        assert server.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_stop_terms_then_kills_after_grace(tmp_path: Path, mode: str) -> None:
    """On stop, SIGTERM; a program that ignores it is killed when --grace is over."""
    line = "trap '' TERM; echo $$; sleep 30"
    grace = 0.3
    with serving(tmp_path, "tcp", "--sh-exec", line, "-c", mode, "--grace", f"{grace}") as server:
        sock = server.connect()
        pid = int(sock.recv(100).split()[0])
        assert alive(pid)
        started = time.monotonic()
        assert server.stop() == 0
        took = time.monotonic() - started
        sock.close()
    assert grace * 0.9 <= took < 8
    assert not alive(pid)
    exits = server.events("exec")
    if exits:  # the run told it (fork mode: unless the child itself was killed first)
        assert exits[0]["signal"] == "SIGKILL"
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_stop_sends_sigterm_at_once(tmp_path: Path, mode: str) -> None:
    with serving(tmp_path, "tcp", "--sh-exec", "echo $$; exec sleep 30", "-c", mode) as server:
        sock = server.connect()
        pid = int(sock.recv(100).split()[0])
        started = time.monotonic()
        assert server.stop() == 0  # --grace is 5 s: the program ended long before
        assert time.monotonic() - started < 4
        sock.close()
    assert not alive(pid)
    assert [e["signal"] for e in server.events("exec")] == ["SIGTERM"]


def test_once_lets_the_program_finish(tmp_path: Path) -> None:
    with serving(tmp_path, "tcp", "--sh-exec", "read x; echo got $x", "--once") as server:
        with server.connect() as sock:
            server.wait_event("connect")  # --once: the run stops now, the program still runs
            sock.sendall(b"it\n")
            assert read_all(sock) == b"got it\n"
        assert server.proc.wait(10) == 0


def test_a_program_gone_after_start_is_one_line(tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_text("#!/bin/sh\necho hi\n")
    program.chmod(0o755)
    with serving(tmp_path, "tcp", "--exec", str(program), json_events=False) as server:
        program.unlink()
        with server.connect() as sock:
            assert read_all(sock) == b""
        program.write_text("#!/bin/sh\necho hi\n")
        program.chmod(0o755)
        with server.connect() as sock:
            assert read_all(sock) == b"hi\n"
        assert server.stop() == 0
    text = server.stderr()
    assert f"warning: cannot start {program}: No such file or directory" in text
    assert "Traceback" not in text


# -- datagrams ----------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["udp", "unix-dgram"])
@pytest.mark.parametrize("mode", MODES)
def test_one_run_per_datagram(tmp_path: Path, mode: str, proto: str) -> None:
    with serving(tmp_path, proto, "--exec", "tr a-z A-Z", "-c", mode) as server:
        if proto == "udp":
            host, port = server.address.rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            target: Any = (host, int(port))
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(tmp_path / "c.sock"))
            target = server.address
        with sock:
            sock.settimeout(10)
            for word in (b"one", b"two"):
                sock.sendto(word, target)
                assert sock.recv(100) == word.upper()
        exits = server.wait_event("exec", 2)
        assert server.stop() == 0
    assert [e["status"] for e in exits] == [0, 0]
    assert [(r["bytes_in"], r["bytes_out"]) for r in server.events("request")] == [(3, 3)] * 2


def test_datagram_environment_and_limits(tmp_path: Path) -> None:
    line = (
        'case "$(cat)" in big) head -c 70000 /dev/zero;; none) ;; *) echo "$UDPREMOTEPORT";; esac'
    )
    with serving(tmp_path, "udp", "--sh-exec", line) as server:
        host, port = server.address.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.sendto(b"none", (host, int(port)))
            sock.sendto(b"big", (host, int(port)))
            sock.sendto(b"port", (host, int(port)))
            # No reply to the first two: the first reply is the third's.
            assert sock.recv(100) == b"%d\n" % sock.getsockname()[1]
        server.wait_event("exec", 3)
        assert server.stop() == 0
    warnings = [w["message"] for w in server.events("warning")]
    assert any("more than one datagram carries (at most 65507 bytes)" in w for w in warnings)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exec", "no-such-program-here"], "--exec: no-such-program-here is not found in PATH"),
        (["--exec", "/nonexistent/prog"], "--exec: /nonexistent/prog does not exist"),
        (["--exec", "/tmp"], "--exec: /tmp is a directory"),
        (["--exec", ""], "--exec needs a program"),
        (["--exec", "cat 'x"], "no closing quotation"),
        (["--sh-exec", " "], "--sh-exec needs a shell line"),
        (["--exec", "cat", "-H", "upper"], "cannot be combined with -H upper"),
        (["--exec", "cat", "--sh-exec", "cat"], "--exec and --sh-exec cannot be combined"),
        (["-H", "exec"], "-H exec needs --exec PROGRAM or --sh-exec LINE"),
        (["--exec-stderr", "client"], "--exec-stderr only applies with --exec or --sh-exec"),
        (["--exec", "cat", "-c", "event"], "--concurrency event does not run it"),
        (["--exec", "cat", "--timeout", "1"], "with --exec the program reads it"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sockserve", "tcp", ":0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_text("#!/bin/sh\n")
    result = subprocess.run(
        [sys.executable, "-m", "sockserve", "tcp", ":0", "--exec", str(program)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"--exec: {program} is not executable" in result.stderr
