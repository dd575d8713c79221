"""Helpers for driving the real `sockserve` command in a pty (pexpect) from the tests."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pexpect

BANNER = re.compile(rb"listening on (\S+)")
TCP_URL = re.compile(rb"(tcp|udp)://(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):(\d+)")


#: sockserve processes a test started with subprocess (`track`), ended after each test by
#: conftest's `no_server_left` if the test did not (a failed assertion midway).
_TRACKED: list[subprocess.Popen[Any]] = []


def track(proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
    """Register `proc` to be ended (by its pid) after the test, if still running; returns it."""
    _TRACKED.append(proc)
    return proc


def end_tracked() -> None:
    """Kill what `track` registered and still runs, reap it, close its pipes."""
    while _TRACKED:
        proc = _TRACKED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def spawn(args: Sequence[str], *, timeout: float = 15, cwd: str | None = None) -> pexpect.spawn:
    """Start `python -m sockserve ARGS` in a pty (no colours, a wide terminal).

    SIGHUP starts at its default action, as in a terminal, even when the tests themselves
    run under nohup (sockserve keeps an inherited ignored SIGHUP ignored). The terminal has
    NOFLSH set: without it, `sendintr()` makes the tty discard the output the program wrote
    that the pty had not yet passed on, and a line printed just before Ctrl-C is lost now
    and then under load.
    """
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    return pexpect.spawn(
        sys.executable,
        ["-m", "sockserve", *args],
        timeout=timeout,
        env=env,
        cwd=cwd,
        dimensions=(50, 200),
        preexec_fn=_in_child,
    )


def _in_child() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    attrs = termios.tcgetattr(0)  # the pty, as stdin
    attrs[3] |= termios.NOFLSH  # lflag: Ctrl-C (SIGINT) keeps the output not yet read
    termios.tcsetattr(0, termios.TCSANOW, attrs)


@contextlib.contextmanager
def serving(*args: str) -> Iterator[str]:
    """Run `python -m sockserve ARGS --print-address -q` (no pty) until the block ends; yield
    the address it printed. Then SIGTERM (unless it ended by itself): it must exit 0 with no
    traceback on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", *args, "--print-address", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        address = proc.stdout.readline().strip()
        assert address, proc.stderr.read()
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


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
    wait_exited(child.pid, timeout)
    # It has exited: close() need not give the kernel its 0.1 s before it looks.
    child.ptyproc.delayafterclose = 0
    child.close()
    return child.exitstatus, out


def wait_process(proc: subprocess.Popen[Any], timeout: float) -> int:
    """`proc.wait(timeout)`, woken by the exit itself (a pidfd): Popen.wait polls, up to
    50 ms late."""
    if proc.returncode is None:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError):  # reaped already
            fd = os.pidfd_open(proc.pid)
            try:
                select.select([fd], [], [], timeout)
            finally:
                os.close(fd)
        timeout = max(0.0, deadline - time.monotonic())
    return proc.wait(timeout)


def wait_exited(pid: int, timeout: float) -> None:
    """Wait (at most `timeout` seconds) until the child `pid` has exited (reaped or not)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # reaped already
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"pid {pid} still running {timeout}s after it closed its output"
    finally:
        os.close(fd)


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


class RecordsObserver:
    """An Observer for the builtins: one (client, received, sent) record per connection or
    datagram, and `wait(n)` for the first n of them."""

    wants_data = False
    wants_counts = True

    def __init__(self) -> None:
        self.records: list[tuple[Any, int, int]] = []
        self.cond = threading.Condition()

    def record(self, client: Any, received: int, sent: int) -> None:
        with self.cond:
            self.records.append((client, received, sent))
            self.cond.notify_all()

    def data(self, client: Any, direction: str, data: bytes) -> None:  # pragma: no cover
        pass

    def wait(self, count: int = 1, timeout: float = 10) -> list[tuple[Any, int, int]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.records) >= count, timeout)
            return list(self.records)


def write_sockserve_wrapper(bin_dir: Path) -> Path:
    """A `sockserve` executable in bin_dir that runs this checkout's command (for shells)."""
    wrapper = bin_dir / "sockserve"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec '{sys.executable}' -c "
        '\'from sockserve.cli import main; main(prog_name="sockserve")\' "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper
