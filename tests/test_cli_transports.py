"""The real command over every transport and address form: udp, unix-dgram, @abstract,
IPv6 and dual-stack, -vv hex dumps, -q, --reply, stdio like `nc -l`, 64 KiB datagrams."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys

import pexpect
import pytest
from clitools import finish, inet_address, spawn, tcp_exchange, wait_listening


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="IPv6 loopback unavailable")


def test_udp_upper_once() -> None:
    child = spawn(["udp", ":0", "-H", "upper", "--once"])
    url = wait_listening(child)
    assert url.startswith("udp://127.0.0.1:")
    child.expect(r"\(sync, handler=upper")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(b"shout", inet_address(url))
        assert s.recv(100) == b"SHOUT"
    status, out = finish(child)
    assert status == 0
    assert "1 datagram, 5 B in, 5 B out" in out


def test_udp_64k_datagram_is_not_truncated() -> None:
    child = spawn(["udp", ":0", "-H", "echo", "--once"])
    addr = inet_address(wait_listening(child))
    payload = os.urandom(65507)  # the largest UDP payload over IPv4
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(10)
        s.sendto(payload, addr)
        assert s.recv(70000) == payload
    status, _ = finish(child)
    assert status == 0


def test_unix_dgram_echo_and_socket_removed(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "d.sock")
    child = spawn(["unix-dgram", path, "-H", "echo", "--max-requests", "2"])
    assert wait_listening(child) == f"unix-dgram://{path}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(os.path.join(sock_dir, "client.sock"))  # a client must be named to get a reply
        s.settimeout(10)
        big = os.urandom(65536)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for payload in (b"ping", big):
            s.sendto(payload, path)
            assert s.recv(70000) == payload
    status, out = finish(child)
    assert status == 0, out
    assert not os.path.exists(path)


def test_abstract_unix_stream() -> None:
    name = f"sockserve-test-{os.getpid()}"
    child = spawn(["unix", f"@{name}", "-H", "upper", "--once"])
    assert wait_listening(child) == f"unix://@{name}"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect("\0" + name)
        s.sendall(b"abstract")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"ABSTRACT"
    status, _ = finish(child)
    assert status == 0


@needs_ipv6
def test_family_inet6_port_only_is_ipv6_loopback() -> None:
    child = spawn(["tcp", ":0", "--family", "inet6", "--once"])
    url = wait_listening(child)
    assert url.startswith("tcp://[::1]:")
    assert tcp_exchange(inet_address(url), b"six") == b"six"
    assert finish(child)[0] == 0


@needs_ipv6
def test_dual_stack_accepts_ipv4_and_warns() -> None:
    child = spawn(["tcp", "[::]:0", "-H", "upper", "--max-requests", "2"])
    url = wait_listening(child)
    child.expect("warning: listening on all interfaces")
    port = inet_address(url)[1]
    assert tcp_exchange(("127.0.0.1", port), b"four") == b"FOUR"
    assert tcp_exchange(("::1", port), b"six") == b"SIX"
    status, out = finish(child)
    assert status == 0
    assert "connect 127.0.0.1:" in out  # shown as IPv4, not ::ffff:127.0.0.1


def test_all_interfaces_v4_warns() -> None:
    child = spawn(["tcp", "0.0.0.0:0", "--once"])
    url = wait_listening(child)
    child.expect("warning: listening on all interfaces")
    assert tcp_exchange(("127.0.0.1", inet_address(url)[1]), b"x") == b"x"
    assert finish(child)[0] == 0


def test_loopback_default_prints_no_warning() -> None:
    child = spawn(["tcp", ":0", "--once"])
    addr = inet_address(wait_listening(child))
    tcp_exchange(addr, b"x")
    _, out = finish(child)
    assert "warning" not in out


def test_hex_dump_with_vv() -> None:
    child = spawn(["tcp", ":0", "-H", "echo", "--once", "-vv"])
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"hi\x00\xff") == b"hi\x00\xff"
    status, out = finish(child)
    assert status == 0
    assert "68 69 00 ff" in out
    assert "|hi..|" in out
    assert "(4 B in, 4 B out)" in out


def test_quiet_prints_nothing_but_errors() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", "tcp", ":0", "--once", "-q", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
    assert tcp_exchange((host, int(port)), b"q") == b"q"
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert err == b""


def test_reply_text_answers_http_like_client() -> None:
    child = spawn(["tcp", ":0", "--reply", "HTTP/1.0 200 OK\\r\\n\\r\\nhi\\n", "--once"])
    addr = inet_address(wait_listening(child))
    answer = tcp_exchange(addr, b"GET / HTTP/1.0\r\n\r\n")
    assert answer == b"HTTP/1.0 200 OK\r\n\r\nhi\n"
    assert finish(child)[0] == 0


def test_stdio_like_nc_listen() -> None:
    """Received bytes go to stdout; our stdin goes to the client; stdin EOF closes it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", "tcp", ":0", "-H", "stdio", "--once", "-q"]
        + ["--print-address"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"from client\n")
        proc.stdin.write(b"from stdin\n")
        proc.stdin.flush()
        assert s.recv(100) == b"from stdin\n"
        proc.stdin.close()  # EOF: the server shuts its write side
        assert s.recv(100) == b""
    assert proc.wait(timeout=15) == 0
    assert proc.stdout.read() == b"from client\n"
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()


@pytest.mark.parametrize("mode", ["sync", "thread", "fork"])
def test_every_concurrency_serves_tcp(mode: str) -> None:
    child = spawn(["tcp", ":0", "-H", "upper", "-c", mode, "--max-requests", "2"])
    addr = inet_address(wait_listening(child))
    child.expect(rf"\({mode}, handler=upper")
    assert tcp_exchange(addr, b"a") == b"A"
    assert tcp_exchange(addr, b"b") == b"B"
    status, out = finish(child)
    assert status == 0, out
    assert "2 connections, 2 B in, 2 B out" in out


def test_user_handler_with_module_colon_class(sock_dir: str) -> None:
    with open(os.path.join(sock_dir, "myproto_sockserve.py"), "w") as f:
        f.write(
            "import sockserve\n"
            "class Rev(sockserve.StreamRequestHandler):\n"
            "    def handle(self):\n"
            "        self.wfile.write(self.rfile.readline().strip()[::-1] + b'\\n')\n"
        )
    child = spawn(["tcp", ":0", "-H", "myproto_sockserve:Rev", "--once"], cwd=sock_dir)
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"abc\n") == b"cba\n"
    status, out = finish(child)
    assert status == 0, out
    assert "1 connection, 4 B in, 4 B out" in out


def test_stdlib_handler_subclass_runs_in_fork_mode(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "legacy.py")
    with open(path, "w") as f:
        f.write(
            "import socketserver\n"
            "class Legacy(socketserver.BaseRequestHandler):\n"
            "    def handle(self):\n"
            "        self.request.sendall(self.request.recv(100)[::-1])\n"
        )
    child = spawn(["tcp", ":0", "-H", path, "-c", "fork", "--once"])
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"xyz", expect=3) == b"zyx"
    assert finish(child)[0] == 0


def test_python_m_sockserve_help_is_the_same_command() -> None:
    child = pexpect.spawn(
        sys.executable, ["-m", "sockserve", "--help"], env=dict(os.environ, NO_COLOR="1")
    )
    child.expect("PROTO")
    status, _ = finish(child)
    assert status == 0


def test_regular_file_at_unix_path_is_never_deleted(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "precious.txt")
    with open(path, "w") as f:
        f.write("keep me")
    child = spawn(["unix", path])
    status, out = finish(child)
    assert status == 1
    assert f"sockserve: error: refusing to replace {path}: it is a regular file" in out
    assert "Traceback" not in out
    with open(path) as f:
        assert f.read() == "keep me"


def test_missing_directory_for_unix_path(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "no", "such", "dir.sock")
    child = spawn(["unix", path])
    status, out = finish(child)
    assert status == 1
    assert "its directory does not exist" in out


@pytest.mark.parametrize(
    ("err", "args", "expected"),
    [
        (
            13,
            ["tcp", "127.0.0.1:80"],
            "127.0.0.1:80: ports below 1024",
        ),
        (13, ["unix", "/tmp/x.sock"], "permission denied binding to /tmp/x.sock"),
        (99, ["tcp", "127.0.0.9:0"], "cannot bind to 127.0.0.9:0: no such address"),
        (97, ["tcp", "[::1]:0"], "address family not supported"),
        (98, ["unix", "@busy"], "@busy is already in use"),
    ],
)
def test_bind_errors_are_translated(
    err: int, args: list[str], expected: str, captured: list
) -> None:
    """The OSErrors a bind can raise (root cannot provoke EACCES here) become one line + hint."""
    from click.testing import CliRunner

    from sockserve import cli
    from sockserve.compose import translate_bind_error
    from sockserve.errors import EnvironmentProblem

    CliRunner().invoke(cli.main, args, catch_exceptions=False)
    seen = captured
    problem = translate_bind_error(OSError(err, os.strerror(err)), seen[0])  # type: ignore[arg-type]
    assert isinstance(problem, EnvironmentProblem)
    assert expected in problem.message
    assert problem.hint


def test_workers_share_the_port_and_stop_together(sock_dir: str) -> None:
    """Two sync workers: while one holds a connection, the next one is served by the other."""
    path = os.path.join(sock_dir, "pid.py")
    with open(path, "w") as f:
        f.write(
            "import os, sockserve\n"
            "class Pid(sockserve.BaseRequestHandler):\n"
            "    def handle(self):\n"
            "        self.request.sendall(str(os.getpid()).encode() + b'\\n')\n"
            "        self.request.recv(1)  # hold the worker until the client closes\n"
        )
    child = spawn(["tcp", ":0", "-H", path, "-c", "sync", "--workers", "2"])
    addr = inet_address(wait_listening(child))
    child.expect(r"workers=2")
    first = socket.create_connection(addr, timeout=10)
    second = socket.create_connection(addr, timeout=10)
    try:
        pids = {int(first.recv(20)), int(second.recv(20))}
    finally:
        first.close()
        second.close()
    assert len(pids) == 2
    assert child.pid not in pids
    child.sendintr()
    status, out = finish(child)
    assert status == 0, out
    assert "2 connections" in out
    for pid in pids:  # both workers are gone (reaped by the supervisor, which has exited)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize(("no_color", "colored"), [(None, True), ("1", False)])
def test_colors_on_a_tty_unless_no_color(no_color: str | None, colored: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm-256color", COLUMNS="200")
    if no_color is not None:
        env["NO_COLOR"] = no_color
    child = pexpect.spawn(
        sys.executable, ["-m", "sockserve", "tcp", ":0", "--once"], env=env, timeout=15
    )
    seen = io.BytesIO()
    child.logfile_read = seen
    child.expect(r"tcp://127\.0\.0\.1:(\d+)")
    tcp_exchange(("127.0.0.1", int(child.match.group(1))), b"x")
    status, _ = finish(child)
    assert status == 0
    text = seen.getvalue().decode(errors="replace")
    assert "listening on" in text
    assert bool(re.search(r"\x1b\[[0-9;]*(3[0-7]|38;)", text)) == colored  # a colour, not bold


def test_user_handler_socket_is_counted_unless_quiet(tmp_path, sock_dir: str) -> None:
    """Byte counts of a user's handler reach the summary; with -q, which shows no counts,
    the handler gets the accepted socket itself."""
    handler = tmp_path / "kind.py"
    handler.write_text(
        "import socketserver\n"
        "class Kind(socketserver.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.recv(10)\n"
        "        self.request.sendall(type(self.request).__name__.encode())\n"
    )
    path = os.path.join(sock_dir, "kind.sock")
    args = [sys.executable, "-m", "sockserve", "unix", path, "-H", f"{handler}:Kind", "--once"]
    for quiet, expected in ((True, b"socket"), (False, b"WatchedSocket")):
        proc = subprocess.Popen(
            [*args, "--print-address", *(["-q"] if quiet else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().decode().strip() == path
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(path)
                s.sendall(b"which")
                assert s.recv(100) == expected
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:  # a failed check: do not leave the --once server running
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0
        assert (err == b"") if quiet else (b"5 B in, %d B out" % len(expected) in err)
