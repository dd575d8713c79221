"""`--workers N`: prefork N processes that serve one listening socket, and supervise them.

Loaded by `runner.serve` only when N > 1. Each worker runs the usual serve loop, which the
runner hands over as `serve_one`; this process forwards the stop signals, reaps the workers
and adds up their counters. As in the lifecycle, a signal handler only records the signal
and wakes the supervisor's wait; the supervisor decides (`Supervisor.handle_int`,
`handle_term`, `handle_hup`; SIGUSR1 and SIGUSR2 are ignored, as in the lifecycle).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import Any

from .config import ServeConfig
from .errors import ExitStatus
from .lifecycle import IGNORED_SIGNALS, RUN_SIGNALS, STOP_HINT, SignalQueue
from .monitor import RunMonitor

#: Runs the usual serve loop in a worker, stopped by the given signals; returns its status.
ServeOne = Callable[[tuple[int, ...]], int]


def serve_workers(
    config: ServeConfig,
    server: Any,
    monitor: RunMonitor,
    serve_one: ServeOne,
    announce: Callable[[], None] | None = None,
) -> int:
    """Prefork `config.workers` processes on the bound socket and supervise them.

    Each worker runs `serve_one`; SIGINT is ignored there, SIGTERM from this process is its
    stop signal (a second SIGTERM forces it). This process forwards Ctrl-C/SIGTERM, reaps the
    workers and adds their counters (sent as JSON on a pipe) to its own. `announce` (the
    banner) runs once this process handles signals: a SIGTERM sent on seeing the banner never
    kills it by default and leaves the workers serving as orphans.
    """
    result_r, result_w = os.pipe()
    supervisor = os.getpid()
    workers: dict[int, int] = {}
    for slot in range(config.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker, checked through its effects
            os.close(result_r)
            monitor.client_ids.restart(slot + 1, config.workers)  # k, k+N...: unique ids
            _worker_main(server, monitor, serve_one, result_w, supervisor)
        workers[pid] = _pidfd(pid)
    os.close(result_w)
    try:
        return Supervisor(workers, monitor).run(announce)
    finally:
        _collect_worker_stats(result_r, monitor)
        os.close(result_r)


class Supervisor:
    """Wait for the workers; forward the stop signals to them; stop all when one fails."""

    def __init__(self, workers: dict[int, int], monitor: RunMonitor) -> None:
        self.workers = workers  # pid -> pidfd (-1 without one)
        self.monitor = monitor
        self.queue = SignalQueue(RUN_SIGNALS)
        self.signalled = 0
        self.failed = False

    def run(self, announce: Callable[[], None] | None) -> int:
        """Supervise until every worker has exited; return the exit status."""
        try:
            with self.queue:
                if announce is not None:
                    announce()
                while self.workers:
                    self.wait()
                    for signum, _ in self.queue.take():
                        name = signal.Signals(signum).name
                        getattr(self, f"handle_{name[3:].lower()}", self.handle_term)(name)
                    self.reap()
        finally:
            for fd in self.workers.values():
                if fd >= 0:
                    os.close(fd)
        if self.signalled >= 2:
            return ExitStatus.INTERRUPTED
        return ExitStatus.ERROR if self.failed else ExitStatus.OK

    def wait(self) -> None:
        """Wait until a worker exits or a signal comes (a short wait where no pidfd tells)."""
        fds = [self.queue.waker.fileno(), *(fd for fd in self.workers.values() if fd >= 0)]
        timeout = None if all(fd >= 0 for fd in self.workers.values()) else 0.1
        with contextlib.suppress(InterruptedError):
            select.select(fds, [], [], timeout)
        self.queue.waker.wait(0)

    def handle_int(self, name: str) -> None:
        """SIGINT (Ctrl-C): stop the workers (the next one forces them)."""
        self._forward(name)

    def handle_term(self, name: str) -> None:
        """SIGTERM: stop the workers (the next one forces them)."""
        self._forward(name)

    def handle_hup(self, name: str) -> None:
        """SIGHUP (the terminal closed): as SIGTERM."""
        self._forward(name)

    def handle_usr1(self, name: str) -> None:
        """SIGUSR1: ignored, with a line of info."""
        self._ignore(name)

    def handle_usr2(self, name: str) -> None:
        """SIGUSR2: ignored, with a line of info."""
        self._ignore(name)

    def _ignore(self, name: str) -> None:
        self.monitor.info(f"{name} ignored ({STOP_HINT})")

    def _forward(self, name: str) -> None:
        self.signalled += 1
        if self.signalled == 1 and self.monitor.stop_reason is None:
            self.monitor.stop_reason = f"{name} received"
        self.kill_all()

    def kill_all(self) -> None:
        """Send SIGTERM to every worker."""
        for pid in self.workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)

    def reap(self) -> None:
        """Forget the workers that exited; the first that exits unasked stops the others."""
        for pid in list(self.workers):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            fd = self.workers.pop(pid)
            if fd >= 0:
                os.close(fd)
            code = os.waitstatus_to_exitcode(status)
            if not self.signalled and not self.failed:
                self.failed = True
                self.monitor.warning(f"worker {pid} exited with status {code}: stopping")
                self.monitor.stop_reason = "a worker exited"
                self.kill_all()


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _stop_with_supervisor(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (Linux), so that a
    supervisor killed by SIGKILL leaves no worker serving as an orphan."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


#: prctl(2) option: the signal a child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _worker_main(
    server: Any, monitor: RunMonitor, serve_one: ServeOne, result_fd: int, supervisor: int
) -> None:  # pragma: no cover - runs in a worker process
    status: int = ExitStatus.ERROR
    try:
        # Ctrl-C and a closed terminal reach every worker: the supervisor decides.
        for sig in (signal.SIGINT, signal.SIGHUP, *IGNORED_SIGNALS):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _stop_with_supervisor(supervisor)
        server._unix_file = None  # the supervisor removes the socket file
        server.socket.setblocking(False)  # another worker may win the accept race
        monitor.become_worker()
        status = serve_one((signal.SIGTERM,))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late SIGTERM must not lose the counts
        os.write(result_fd, json.dumps(monitor.stats.counts()).encode() + b"\n")
    except BaseException:
        status = ExitStatus.ERROR
    finally:
        os._exit(int(status))


def _collect_worker_stats(fd: int, monitor: RunMonitor) -> None:
    """Add the counters each worker wrote on the pipe to the monitor's."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    for line in data.splitlines():
        try:
            counts = json.loads(line)
        except ValueError:
            continue
        monitor.stats.add(counts)
