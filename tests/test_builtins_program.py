"""The exec builtin's pieces without the command: environment, stderr lines, replies, stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from sockserve.builtins import program
from sockserve.builtins.program_env import program_env
from sockserve.exec_command import ExecSpec


def test_tcp_environment() -> None:
    env = program_env("tcp", ("127.0.0.1", 9), ("::ffff:10.0.0.1", 4000), "10.0.0.1:4000", None)
    assert env["PROTO"] == "TCP"
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"]) == ("10.0.0.1", "4000")
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == ("127.0.0.1", "9")
    assert (env["SOCKSERVE_TRANSPORT"], env["SOCKSERVE_CLIENT"]) == ("tcp", "10.0.0.1:4000")
    assert env["PATH"] == os.environ["PATH"]  # the server's environment is passed on


def test_udp_and_unix_datagram_environment() -> None:
    env = program_env("udp", ("::1", 53, 0, 0), ("::1", 5000, 0, 0), "[::1]:5000", None)
    assert (env["PROTO"], env["UDPREMOTEIP"], env["UDPLOCALPORT"]) == ("UDP", "::1", "53")
    env = program_env("unix-dgram", "/tmp/s", b"\0abstract", "@abstract", None)
    assert (env["PROTO"], env["UNIXLOCALPATH"], env["UNIXREMOTEPATH"]) == (
        "UNIX",
        "/tmp/s",
        "@abstract",
    )
    assert "UNIXREMOTEPID" not in env


def test_unix_stream_peer_credentials() -> None:
    a, b = socket.socketpair()
    with a, b:
        env = program_env("unix", "", "", "unix client", a)
    assert env["UNIXREMOTEPID"] == str(os.getpid())
    assert env["UNIXREMOTEEUID"] == str(os.geteuid())
    assert "UNIXREMOTEPATH" not in env


def test_stderr_lines_are_split_and_bounded() -> None:
    r, w = os.pipe()
    long = b"y" * (program.STDERR_LINE_MAX + 10)
    os.write(w, b"one\r\ntwo\n\n" + long + b"\nlast")
    os.close(w)
    lines: list[bytes] = []
    program.pass_lines(r, lines.append)
    os.close(r)
    assert lines == [b"one", b"two", b"", long[: program.STDERR_LINE_MAX], b"y" * 10, b"last"]


def test_reply_is_bounded() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "head -c 300 /dev/zero"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert program.read_reply(proc.stdout, 300) == (bytes(300), True)
    proc.wait()
    proc = subprocess.Popen(
        ["sh", "-c", "head -c 301 /dev/zero"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    reply, whole = program.read_reply(proc.stdout, 300)
    assert not whole
    proc.wait()


def test_programs_get_sigterm_then_sigkill(tmp_path: Path) -> None:
    """stop(None) escalates: SIGTERM first, SIGKILL the next time; the whole group gets it."""
    spec = ExecSpec(argv=("sh", "-c", "trap '' TERM; echo ready; sleep 30 & wait"), command="x")
    proc = program.spawn(spec, dict(os.environ), subprocess.DEVNULL, subprocess.PIPE, None)
    try:
        assert os.getpgid(proc.pid) == proc.pid  # a group of its own
        assert proc.pid in program.PROGRAMS.pids()
        assert proc.stdout.readline() == b"ready\n"  # the shell has set its trap
        assert program.PROGRAMS.stop(None) is True  # SIGTERM: ignored
        time.sleep(0.2)
        assert proc.poll() is None
        assert program.PROGRAMS.stop(None) is False  # SIGKILL
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        program.PROGRAMS.discard(proc)
        program.PROGRAMS.terminated = False
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.pid not in program.PROGRAMS.pids()


def test_a_program_that_cannot_start(tmp_path: Path) -> None:
    spec = ExecSpec(argv=(str(tmp_path / "gone"),), command="gone")
    try:
        program.spawn(spec, {}, subprocess.DEVNULL, subprocess.DEVNULL, None)
    except program.StartFailed as exc:
        assert str(exc) == "cannot start gone: No such file or directory"
    else:  # pragma: no cover
        raise AssertionError("StartFailed expected")
