"""The real command when its surroundings fail: a closed stdout or stderr, a full disk, a reply
too big for one datagram, a handler that fails to import or raises (issue 15, items 6-8, 10)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from clitools import finish, inet_address, spawn, tcp_exchange, wait_listening

SOCKSERVE = [sys.executable, "-m", "sockserve"]
ENV = dict(os.environ, NO_COLOR="1", COLUMNS="200", TERM="dumb")


def in_shell(redirect: str, *args: str) -> list[str]:
    """`sockserve ARGS REDIRECT` as a shell runs it (`>&-` closes stdout, `2>&-` stderr)."""
    return ["sh", "-c", f'exec "$@" {redirect}', "sh", *SOCKSERVE, *args]


def spawn_in_shell(redirect: str, *args: str) -> pexpect.spawn:
    """The command in a pty, through a shell that applies `redirect`."""
    cmd = in_shell(redirect, *args)
    return pexpect.spawn(cmd[0], cmd[1:], timeout=15, env=ENV, dimensions=(50, 200))


# -- item 6: closed stdout or stderr -------------------------------------------------------------
@pytest.mark.parametrize("handler", ["stdout", "stdio"])
def test_closed_stdout_refuses_a_handler_that_writes_to_it(handler: str) -> None:
    run = subprocess.run(
        in_shell(">&-", "tcp", "127.0.0.1:0", "-H", handler),
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert run.returncode == 1, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == (
        f"sockserve: error: -H {handler} writes what clients send to stdout, but stdout is closed"
    )
    assert lines[1].startswith("hint: redirect stdout") and len(lines) == 2


def test_closed_stdout_with_print_address_serves_and_warns() -> None:
    child = spawn_in_shell(">&-", "tcp", "127.0.0.1:0", "--print-address", "-H", "upper")
    child.expect("warning: stdout is closed: --print-address has nowhere to print the address")
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"still served") == b"STILL SERVED"
    child.sendintr()
    status, out = finish(child)
    assert status == 0, out
    assert "Traceback" not in out


def test_closed_stderr_serves_and_nothing_lands_on_stdout(tmp_path: Path) -> None:
    """Run without stderr: its lines go nowhere (not into stdout, nor into a socket that took
    descriptor 2), even a handler's error."""
    handler = tmp_path / "boom.py"
    handler.write_text(
        "import sockserve\n"
        "class Boom(sockserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        data = self.request.recv(100)\n"
        "        self.request.sendall(data)\n"
        "        raise ValueError('kaboom')\n"
    )
    proc = subprocess.Popen(
        in_shell("2>&-", "tcp", "127.0.0.1:0", "--print-address", "-H", str(handler)),
        stdout=subprocess.PIPE,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
        assert tcp_exchange((host, int(port)), b"first") == b"first"
        assert tcp_exchange((host, int(port)), b"second") == b"second"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == b""  # the error's lines went to no stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- item 7: a full disk -------------------------------------------------------------------------
full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def _send(transport: str, addr: tuple[str, int], payload: bytes) -> None:
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(payload, addr)
    else:
        tcp_exchange(addr, payload)


@full
@pytest.mark.parametrize(
    ("transport", "mode"),
    [("tcp", "thread"), ("tcp", "fork"), ("tcp", "sync"), ("tcp", "event"), ("udp", "sync")],
)
def test_full_disk_is_one_error_and_exit_1(transport: str, mode: str) -> None:
    child = spawn_in_shell(">/dev/full", transport, "127.0.0.1:0", "-H", "stdout", "-c", mode)
    addr = inet_address(wait_listening(child))
    _send(transport, addr, b"lost on a full disk\n")
    status, out = finish(child)
    assert status == 1, out
    assert "Traceback" not in out
    assert "(stdout failed)" in out
    assert out.count("sockserve: error:") == 1
    assert "sockserve: error: cannot write to stdout: no space left on device\r\n" in out
    assert "hint: free some space where stdout goes, or redirect it elsewhere" in out


@full
def test_full_disk_in_a_worker_stops_all_with_exit_1() -> None:
    child = spawn_in_shell(">/dev/full", "tcp", "127.0.0.1:0", "-H", "stdout", "--workers", "2")
    addr = inet_address(wait_listening(child))
    _send("tcp", addr, b"lost on a full disk\n")
    status, out = finish(child)
    assert status == 1, out
    assert "warning: cannot write to stdout: no space left on device" in out
    assert "Traceback" not in out


@full
def test_full_disk_is_a_fatal_json_event() -> None:
    child = spawn_in_shell(">/dev/full", "tcp", "127.0.0.1:0", "-H", "stdout", "--json")
    child.expect(rb'"url": "tcp://127.0.0.1:(\d+)"')
    _send("tcp", ("127.0.0.1", int(child.match.group(1))), b"lost\n")
    status, out = finish(child)
    assert status == 1, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"] in ("shutdown", "fatal")] == [
        "shutdown",
        "fatal",
    ]
    assert events[-1]["message"] == "cannot write to stdout: no space left on device"
    assert not [e for e in events if e["event"] == "error"]


# -- item 8: a reply too big for one datagram ----------------------------------------------------
def _refusal(tmp_path: Path, size: int, *args: str) -> str:
    big = tmp_path / "big.file"
    big.write_bytes(bytes(size))
    run = subprocess.run(
        [*SOCKSERVE, *args, "--reply-file", str(big)],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    return " ".join(run.stderr.split())


def test_udp_reply_file_over_the_ipv4_limit_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path, 200_000, "udp", "127.0.0.1:0")
    assert f"--reply-file {tmp_path}/big.file is 200000 bytes" in message
    assert "more than one UDP datagram over IPv4 carries (at most 65507 bytes)" in message


def test_udp_reply_file_over_the_ipv6_limit_is_refused(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    message = _refusal(tmp_path, 65_528, "udp", "[::1]:0")
    assert "more than one UDP datagram over IPv6 carries (at most 65527 bytes)" in message


def test_udp_reply_file_at_the_limit_is_sent_whole(tmp_path: Path) -> None:
    reply = tmp_path / "max.file"
    reply.write_bytes(b"r" * 65507)
    child = spawn(["udp", "127.0.0.1:0", "--reply-file", str(reply), "--once"])
    addr = inet_address(wait_listening(child))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(b"?", addr)
        assert s.recv(70000) == b"r" * 65507
    status, out = finish(child)
    assert status == 0, out


def test_unix_dgram_reply_over_the_send_buffer_is_refused(tmp_path: Path, sock_dir: str) -> None:
    from sockserve.config import unix_datagram_limit

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with probe:
        size = 2 * probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + 1
    limit = unix_datagram_limit(size)
    assert limit is not None and unix_datagram_limit(limit) is None
    message = _refusal(tmp_path, size, "unix-dgram", f"{sock_dir}/s")
    assert f"is {size} bytes: more than one unix datagram here carries" in message
    assert f"(at most {limit} bytes: the socket's send buffer, SO_SNDBUF, decides)" in message
    assert not os.path.exists(f"{sock_dir}/s")


# -- item 10: tracebacks start at the user's code ------------------------------------------------
def test_traceback_shows_the_import_chain_of_a_handler(tmp_path: Path) -> None:
    (tmp_path / "helper_mod.py").write_text("def fail():\n    raise RuntimeError('no config')\n")
    (tmp_path / "chain.py").write_text("import helper_mod\nhelper_mod.fail()\nimport sockserve\n")
    run = subprocess.run(
        [*SOCKSERVE, "tcp", ":0", "-H", str(tmp_path / "chain.py"), "--traceback"],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert run.returncode == 2
    tb = run.stderr[: run.stderr.index("Usage:")].splitlines()
    tb = [line for line in tb if line.strip(" ~^")]  # 3.13 underlines the failing call
    assert tb == [
        "Traceback (most recent call last):",
        f'  File "{tmp_path}/chain.py", line 2, in <module>',
        "    helper_mod.fail()",
        f'  File "{tmp_path}/helper_mod.py", line 2, in fail',
        "    raise RuntimeError('no config')",
        "RuntimeError: no config",
    ]
    assert "--traceback shows where it was raised" in run.stderr
    assert "nothing more here" not in run.stderr


def test_traceback_of_a_syntax_error_shows_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def f(:\n    pass\n")
    run = subprocess.run(
        [*SOCKSERVE, "tcp", ":0", "--traceback", "-H", str(tmp_path / "bad.py")],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert run.returncode == 2
    tb = run.stderr[: run.stderr.index("Usage:")]
    assert tb.startswith(f'  File "{tmp_path}/bad.py", line 1\n    def f(:\n')
    assert tb.rstrip().endswith("SyntaxError: invalid syntax")
    assert "sockserve" not in tb.replace(str(tmp_path), "")


BOOM_HANDLER = (
    "import {base}\n"
    "class Boom({base}.BaseRequestHandler):\n"
    "    def handle(self):\n"
    "        self.request.recv(100)\n"
    "        raise ValueError('kaboom')\n"
)
BOOM_PROTOCOL = (
    "import asyncio\n"
    "class Boom(asyncio.Protocol):\n"
    "    def data_received(self, data):\n"
    "        raise ValueError('kaboom')\n"
)


@pytest.mark.parametrize(
    ("mode", "base"),
    [
        ("thread", "sockserve"),
        ("thread", "socketserver"),
        ("sync", "sockserve"),
        ("fork", "socketserver"),
        ("event", None),
    ],
)
def test_handler_error_traceback_starts_in_the_handler(
    tmp_path: Path, mode: str, base: str | None
) -> None:
    handler = tmp_path / "boom.py"
    handler.write_text(BOOM_PROTOCOL if base is None else BOOM_HANDLER.format(base=base))
    line, function = (4, "data_received") if base is None else (5, "handle")
    child = spawn(["tcp", "127.0.0.1:0", "-H", f"{handler}:Boom", "-c", mode, "--once"])
    addr = inet_address(wait_listening(child))
    tcp_exchange(addr, b"boom")
    child.expect(r"error handling [^\r\n]*ValueError: kaboom\r\n")
    child.expect("ValueError: kaboom\r\n")
    tb = child.before.decode().splitlines()
    assert tb == [
        "Traceback (most recent call last):",
        f'  File "{handler}", line {line}, in {function}',
        "    raise ValueError('kaboom')",
    ]
    child.sendintr()
    finish(child)


@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_json_error_traceback_starts_in_the_handler(tmp_path: Path, mode: str) -> None:
    handler = tmp_path / "boom.py"
    handler.write_text(BOOM_HANDLER.format(base="sockserve"))
    child = spawn(["tcp", "127.0.0.1:0", "-H", f"{handler}:Boom", "-c", mode, "--json"])
    child.expect(rb'"url": "tcp://127.0.0.1:(\d+)"')
    tcp_exchange(("127.0.0.1", int(child.match.group(1))), b"boom")
    child.expect(rb'\{"event": "error"[^\r\n]*\}\r\n')
    event = json.loads(child.match.group(0))
    assert event["traceback"].splitlines()[:2] == [
        "Traceback (most recent call last):",
        f'  File "{handler}", line 5, in handle',
    ]
    child.sendintr()
    status, out = finish(child)
    assert status == 0, out
