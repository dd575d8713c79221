"""Helpers for driving the real `sockserve` command in a pty (pexpect) from the tests."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence

import pexpect

BANNER = re.compile(rb"listening on (\S+)")
TCP_URL = re.compile(rb"(tcp|udp)://(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):(\d+)")


def spawn(args: Sequence[str], *, timeout: float = 15, cwd: str | None = None) -> pexpect.spawn:
    """Start `python -m sockserve ARGS` in a pty (no colours, a wide terminal)."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    return pexpect.spawn(
        sys.executable,
        ["-m", "sockserve", *args],
        timeout=timeout,
        env=env,
        cwd=cwd,
        dimensions=(50, 200),
    )


def wait_listening(child: pexpect.spawn) -> str:
    """Wait for the banner and return the URL it names."""
    child.expect(BANNER)
    return child.match.group(1).decode()


def inet_address(url: str) -> tuple[str, int]:
    """('127.0.0.1', 43125) from tcp://127.0.0.1:43125."""
    m = TCP_URL.match(url.encode())
    assert m, url
    host = m.group(2).decode().strip("[]")
    return host, int(m.group(3))


def finish(child: pexpect.spawn, timeout: float = 15) -> tuple[int | None, str]:
    """Wait for the process to end; return (exit status, everything it printed)."""
    child.expect(pexpect.EOF, timeout=timeout)
    out = (child.before or b"").decode(errors="replace")
    child.close()
    return child.exitstatus, out


def tcp_exchange(address: tuple[str, int], payload: bytes, expect: int | None = None) -> bytes:
    """Connect, send, half-close, read until EOF (or `expect` bytes)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(address)
        s.sendall(payload)
        if expect is None:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        got = 0
        while expect is None or got < expect:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
