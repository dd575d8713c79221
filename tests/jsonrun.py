"""Run the real `sockserve` command with --json and read its events as they come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from clitools import wait_process

Event = dict[str, Any]


class JsonRun:
    """`python -m sockserve ARGS --json`, its stderr read line by line in a thread.

    `wait_for(predicate)` waits for an event that matches; `stop()` sends SIGTERM and
    returns the exit status. A context manager: on exit the process is killed if still
    running (a failed test leaves nothing behind).
    """

    def __init__(self, args: Sequence[str], json_output: bool = True) -> None:
        extra = ["--json"] if json_output else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", *args, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, NO_COLOR="1"),
        )
        self.json = json_output
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, name="stderr-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def events(self) -> list[Event]:
        """The JSON events written so far."""
        with self.changed:
            return [json.loads(line) for line in self.lines if line.startswith("{")]

    def wait_line(self, check: Callable[[str], bool], timeout: float = 10) -> str:
        """The first line of stderr for which `check` is true (waits for it)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if check(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (not self.reader.is_alive() and self.proc.poll() is not None):
                    raise AssertionError("no such line in:\n" + "\n".join(self.lines))
                self.changed.wait(left)

    def wait_for(self, check: Callable[[Event], bool], timeout: float = 10) -> Event:
        """The first event for which `check` is true (waits for it)."""
        line = self.wait_line(
            lambda line: line.startswith("{") and check(json.loads(line)), timeout
        )
        return json.loads(line)

    def wait_count(self, name: str, count: int, timeout: float = 10) -> None:
        """Wait until `count` events named `name` were written."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(1 for e in self.events if e["event"] == name) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("\n".join(self.lines))
                self.changed.wait(left)

    def listening_url(self) -> str:
        """The url of the `listening` event (or the banner line without --json)."""
        if self.json:
            return str(self.wait_for(lambda e: e["event"] == "listening")["url"])
        line = self.wait_line(lambda line: line.startswith("listening on "))
        return line.split()[2]

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then the exit status once stderr is read to its end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = wait_process(self.proc, timeout)
        self.reader.join(timeout)
        return status

    def __enter__(self) -> JsonRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` (Linux: /proc/PID/task/*/children)."""
    tasks = f"/proc/{pid}/task"
    found: list[int] = []
    try:
        for task in os.listdir(tasks):
            with open(f"{tasks}/{task}/children") as f:
                found.extend(int(child) for child in f.read().split())
    except OSError:
        return []
    return found
