"""What soak.py drives and reads: the real `sockserve` command on 127.0.0.1, seen through /proc.

`Served` starts `python -m sockserve tcp 127.0.0.1:0 ARGS` in a session of its own, keeps the
lines it writes on stderr, and reads its address from the banner (or, with --print-address,
from stdout). Its /proc readings (descriptors, threads, child processes, RSS, CPU time) are
what the soak reports; `settle` waits until they rest. The clients are plain TCP echo
exchanges. Linux only; every socket is on 127.0.0.1.
"""

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
from collections.abc import Callable

#: The concurrency modes a soak runs unless told otherwise.
MODES = ("sync", "thread", "fork", "event")
#: Seconds any one wait may last before the soak gives up on it.
PATIENCE = 10.0

Address = tuple[str, int]
_BANNER = r"listening on tcp://(\S+)"


def split_address(text: str) -> Address:
    """("127.0.0.1", 43125) from "127.0.0.1:43125"."""
    host, _, port = text.rpartition(":")
    return host, int(port)


class Served:
    """One `sockserve` process serving TCP on 127.0.0.1 port 0; `args` follow the address.

    Signals go to its pid only; `kill` ends its whole session (it may have forked).
    """

    def __init__(self, *args: str) -> None:
        self.said: list[str] = []  # its stderr lines so far
        self.silent = False  # stderr closed: the process is gone
        self._news = threading.Condition()
        self.prints_address = "--print-address" in args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", "tcp", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.prints_address else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        name = f"stderr of sockserve {self.pid}"
        self._reader = threading.Thread(target=self._read_stderr, name=name, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        """Keep each line the server writes on stderr, until it closes it."""
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._heard(raw.decode(errors="replace").rstrip("\n"))
        self._heard(None)

    def _heard(self, line: str | None) -> None:
        """Keep a stderr line, or note (None) that stderr ended; wake whoever waits."""
        with self._news:
            if line is None:
                self.silent = True
            else:
                self.said.append(line)
            self._news.notify_all()

    def lines_matching(self, pattern: str) -> list[re.Match[str]]:
        """Every stderr line so far that `pattern` finds something in."""
        with self._news:
            found = (re.search(pattern, line) for line in self.said)
            return [match for match in found if match]

    def await_line(self, pattern: str, timeout: float = PATIENCE) -> re.Match[str]:
        """The first stderr line `pattern` finds something in, once the server has said it."""
        with self._news:
            self._news.wait_for(lambda: self.lines_matching(pattern) or self.silent, timeout)
        matches = self.lines_matching(pattern)
        if not matches:
            raise RuntimeError(f"sockserve did not say {pattern!r}; it said:\n" + self.transcript())
        return matches[0]

    def transcript(self) -> str:
        """Everything the server has said on stderr."""
        with self._news:
            return "\n".join(self.said)

    def address(self) -> Address:
        """Where the server listens: from --print-address's line, else from the banner."""
        if not self.prints_address:
            return split_address(self.await_line(_BANNER).group(1))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError("sockserve printed no address:\n" + self.transcript())
        return split_address(line)

    def echoing(self) -> Address:
        """The address, once one echo has come back from it."""
        address = self.address()
        if echo(address, b"ready?") != b"ready?":
            raise RuntimeError("sockserve did not echo")
        return address

    def stop(self, sig: int = signal.SIGTERM, timeout: float = PATIENCE) -> int:
        """Send `sig` and return the exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        status = self.proc.wait(timeout)
        self._reader.join(timeout)
        return status

    def kill(self) -> None:
        """End the session the server leads (it may have forked), if it still runs, and
        close the pipes."""
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None:
                os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in filter(None, (self.proc.stdout, self.proc.stderr)):
            pipe.close()

    # -- /proc readings --------------------------------------------------------------------------

    def proc_path(self, *names: str) -> str:
        """/proc/PID/NAMES... of the server."""
        return os.path.join("/proc", str(self.pid), *names)

    def fds(self) -> int:
        """Descriptors open in the server."""
        return len(os.listdir(self.proc_path("fd")))

    def threads(self) -> int:
        """Threads of the server."""
        return len(os.listdir(self.proc_path("task")))

    def status_kib(self, field: str) -> int:
        """A KiB figure of /proc/PID/status: VmRSS (resident now), VmHWM (its peak)."""
        with open(self.proc_path("status")) as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0])
        raise KeyError(field)

    def cpu_ticks(self) -> int:
        """User plus system clock ticks the server has used."""
        _, numbers = proc_stat(self.pid)
        return numbers[10] + numbers[11]  # utime, stime

    def children(self) -> list[tuple[int, str]]:
        """(pid, state letter) of each child process; "Z" is a zombie not yet reaped."""
        pids: list[int] = []
        for task in os.listdir(self.proc_path("task")):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                with open(self.proc_path("task", task, "children")) as listed:
                    pids += map(int, listed.read().split())
        states = []
        for pid in pids:
            with contextlib.suppress(OSError):  # reaped meanwhile
                states.append((pid, proc_stat(pid)[0]))
        return states

    def resting(self) -> tuple[int, int, int]:
        """(descriptors, threads, children): what `settle` waits to stop moving."""
        return self.fds(), self.threads(), len(self.children())


def proc_stat(pid: int) -> tuple[str, list[int]]:
    """The fields of /proc/PID/stat after the command name: (state, the numbers after it)."""
    with open(f"/proc/{pid}/stat") as stat:
        state, *numbers = stat.read().rpartition(")")[2].split()
    return state, [int(number) for number in numbers]


def open_connections(port: int) -> int:
    """TCP sockets with local port `port`, not listening, that a process still holds (one
    in TIME_WAIT belongs to no process)."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                local_port = int(fields[1].rpartition(":")[2], 16)
                listening = fields[3] == "0A"
                if local_port == port and not listening and fields[9] != "0":  # 9: the inode
                    held += 1
    return held


def poll_until(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Read /proc until `condition` holds (no event says a thread has ended); False if it
    never did within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def settle(server: Served, port: int, timeout: float = PATIENCE) -> bool:
    """Wait until the server holds no connection on `port`, has no child, and its readings
    stay the same for 0.1 s; False if it never came to rest within `timeout`."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] | None = None
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        now = server.resting()
        if now != last or open_connections(port) or now[2]:
            last, steady_since = now, time.monotonic()
        elif time.monotonic() - steady_since >= 0.1:
            return True
        time.sleep(0.01)
    return False


def connect(address: Address, timeout: float = PATIENCE) -> socket.socket:
    """A TCP connection to the server, for holding open."""
    return socket.create_connection(address, timeout=timeout)


def echo(address: Address, payload: bytes) -> bytes:
    """One exchange: connect, send `payload`, half-close, and return all that came back."""
    with connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)
