"""--exec in fork mode: a program is in the process group that bears its request child's pid,
and never outlives that child, even when the child is killed (SIGKILL: it runs nothing)."""

from __future__ import annotations

import os
import select
import signal
import socket
from pathlib import Path

import pytest
from servertools import wait_until
from test_exec import serving

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for process `pid` (not ours) to exit, on its pidfd: True if it did in time."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def read_pid(fifo: Path) -> int:
    """The pid a program writes in `fifo` (the open waits for the program's)."""
    with open(fifo) as f:
        return int(f.read())


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_killed_request_child_takes_its_program_along(tmp_path: Path, proto: str) -> None:
    """SIGKILL a request child: its program dies with it (the parent kills the group that
    bears the child's pid), the server goes on, and no program is in sockserve's group."""
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    line = f"echo $$ > {fifo}; exec sleep 30"
    with serving(tmp_path, proto, "--sh-exec", line, "-c", "fork", json_events=False) as server:
        host, port = server.address.rsplit(":", 1)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        first, second = socket.socket(socket.AF_INET, kind), socket.socket(socket.AF_INET, kind)
        with first, second:
            first.connect((host, int(port)))
            first.send(b"x")
            pid = read_pid(fifo)
            child = parent_of(pid)
            group = os.getpgid(server.proc.pid)
            assert parent_of(child) == server.proc.pid
            assert os.getpgid(pid) == child  # the group that bears the child's pid...
            # ...holds its programs only: the child goes back to sockserve's group once Popen
            # returns, which may be after the program has written its pid.
            assert wait_until(lambda: os.getpgid(child) == group, 5), "still in its program's group"
            os.kill(child, signal.SIGKILL)
            assert wait_gone(pid, 5), "the program outlived its request child"
            second.connect((host, int(port)))  # served on: a new child, a new program
            second.send(b"x")
            again = read_pid(fifo)
            assert again != pid
            assert os.getpgid(again) not in (group, child)  # Ctrl-C reaches sockserve only
            assert server.stop() == 0
        assert wait_gone(again, 5)
