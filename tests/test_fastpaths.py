"""The fast paths of the run: rich and json loaded only when needed, the run monitor's counts.

Behaviour only (speed is the benchmarks' business: benchmarks/run.py). The builtins' fast
paths are tested beside their adapters: tests/test_builtins_stream.py, _datagram.py,
_protocols.py.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest

# -- start-up: rich only when a line is printed ---------------------------------------------


def test_rich_reporter_imports_rich_at_first_line_only() -> None:
    """With --quiet on a terminal nothing is printed while serving, so rich is never loaded;
    the first line printed still comes out in colour."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sockserve.console import RichReporter\n"
        "r = RichReporter(quiet=True, force_color=True)\n"
        "r.listening('tcp://127.0.0.1:1', {'concurrency': 'thread'})\n"
        "r.record(('127.0.0.1', 2), 1, 1)\n"
        "assert 'rich' not in sys.modules, 'rich imported before any line was printed'\n"
        "r.fatal('boom', 'a hint')\n"
        "assert 'rich.console' in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "sockserve: error: boom" in out.stderr
    assert "hint: a hint" in out.stderr
    assert "\x1b[" in out.stderr  # coloured, as before


# -- the run monitor: "in a forked child?" without a system call per request ------------------


def monitor_for(
    args: list[str], verbosity: int | None = None, quiet: bool = False
) -> tuple[Any, io.StringIO]:
    """A RunMonitor for the config the command builds from `args`, reporting into a buffer
    (at the config's verbosity unless `verbosity` is given)."""
    from sockserve import cli
    from sockserve.console import JsonReporter, PlainReporter
    from sockserve.runner import RunMonitor

    ctx = cli.main.make_context("sockserve", args)
    with ctx:
        config = cli.build_config(ctx.params)
    out = io.StringIO()
    level = config.verbosity if verbosity is None else verbosity
    if config.output == "json":  # as make_reporter does, into the buffer
        reporter = JsonReporter(out, level, quiet=False)
    else:
        reporter = PlainReporter(out, level, quiet=quiet)
    return RunMonitor(reporter, config), out


def make_monitor(concurrency: str) -> Any:
    return monitor_for(["tcp", "127.0.0.1:0", "-c", concurrency], verbosity=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_monitor_counts_in_parent_and_forwards_from_forked_child() -> None:
    monitor, out = make_monitor("fork")
    try:
        monitor.record(("127.0.0.1", 1), 10, 10)  # the parent: counted at once
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                monitor.record(("127.0.0.1", 2), 20, 30)  # forwarded through the pipe
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        monitor.poll()
    finally:
        monitor.close()
    stats = monitor.stats
    assert (stats.requests, stats.bytes_in, stats.bytes_out) == (2, 30, 40)
    assert "close 127.0.0.1:1 (10 B in, 10 B out)" in out.getvalue()
    assert "close 127.0.0.1:2 (20 B in, 30 B out)" in out.getvalue()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_monitor_reads_the_child_pipe_only_when_it_has_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop polls on every iteration: an empty pipe costs no read (and no EAGAIN
    exception); a record there is read and reported, also after become_worker."""
    from sockserve import runner

    reads: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    monitor, out = make_monitor("fork")
    monkeypatch.setattr(runner.os, "read", read)
    try:
        for _ in range(3):
            monitor.poll()
        assert reads == []
        for round_ in (1, 2):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                try:
                    monitor.record(("127.0.0.1", round_), 1, 2)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            monitor.poll()
            assert reads and f"close 127.0.0.1:{round_} (1 B in, 2 B out)" in out.getvalue()
            monitor.become_worker()  # a new pipe, and a new poll for it
            reads.clear()
            monitor.poll()
            assert reads == []
    finally:
        monitor.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_monitor_in_a_worker_counts_for_itself() -> None:
    """A --workers process calls become_worker(): it is a parent again, not a child."""
    monitor, _ = make_monitor("thread")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            monitor.become_worker()
            monitor.record(("127.0.0.1", 3), 5, 6)
            if monitor.stats.requests == 1 and not monitor.in_child:
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert monitor.stats.requests == 0  # the worker's count stayed in the worker


@pytest.mark.parametrize(
    ("args", "quiet", "counts_only"),
    [
        (["udp", "127.0.0.1:0", "-c", "sync"], False, True),
        (["udp", "127.0.0.1:0", "-c", "event"], True, True),
        (["udp", "127.0.0.1:0", "-c", "sync", "-v"], False, False),  # prints a line each
        (["udp", "127.0.0.1:0", "-c", "sync", "--json"], False, False),  # an event each
        (["udp", "127.0.0.1:0", "-c", "thread", "-H", "stdout"], False, False),  # threads
        (["tcp", "127.0.0.1:0", "-c", "sync"], False, False),
    ],
)
def test_monitor_only_counts_datagrams_it_would_not_show(
    args: list[str], quiet: bool, counts_only: bool
) -> None:
    """One thread and nothing to print: a datagram's record is three additions, no lock."""
    monitor, out = monitor_for(args, quiet=quiet)
    try:
        assert (monitor.record == monitor._count) is counts_only
        monitor.record(("127.0.0.1", 1), 10, 12)
        monitor.record(("127.0.0.1", 2), 5, 0)
    finally:
        monitor.close()
    stats = monitor.stats
    assert (stats.requests, stats.bytes_in, stats.bytes_out) == (2, 15, 12)
    if counts_only:
        assert out.getvalue() == ""


def test_serve_path_does_not_import_rich() -> None:
    """What `sockserve tcp :0` imports before it listens: rich only at the first line printed
    on a terminal."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import sockserve.cli, sockserve.runner, sockserve.console, sockserve.compose\n"
        "import sockserve.builtins, sockserve.config, sockserve.addresses\n"
        "print(sorted(m for m in ('rich',) if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"
