"""`--workers N`: prefork N processes that serve one listening socket, and supervise them.

Loaded by `runner.serve` only when N > 1. Each worker runs the usual serve loop, which the
runner hands over as `serve_one`; this process forwards the stop signals, reaps the workers
and adds up their counters. As in the lifecycle, a signal handler only records the signal
and wakes the supervisor's wait; the supervisor decides (`Supervisor.handle_int`,
`handle_term`, `handle_hup`; SIGUSR1 and SIGUSR2 are ignored, as in the lifecycle). A
worker that dies while serving is replaced, at a bounded rate; one that cannot start stops
them all (`Supervisor`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .config import ServeConfig
from .errors import ExitStatus
from .lifecycle import IGNORED_SIGNALS, RUN_SIGNALS, STOP_HINT, SignalQueue
from .monitor import RunMonitor, read_lines

#: Runs the usual serve loop in a worker, stopped by the given signals; returns its status.
ServeOne = Callable[[tuple[int, ...]], int]


#: A worker that dies while serving is started again at most once a second per slot...
RESTART_INTERVAL = 1.0
#: ...unless this many workers died within DEATH_WINDOW seconds: then the server stops.
DEATH_LIMIT = 5
DEATH_WINDOW = 10.0


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

    A worker that dies while serving (a signal, a crash) is started again in its slot (see
    `Supervisor`). Worker k (1..N) numbers its connections k, k+N, k+2N...; one started
    again in slot k goes on after the last id of the one before (kept in shared memory).
    """
    import mmap  # --workers only: the slots' last connection ids, shared with the workers

    count = config.workers
    result_r, result_w = os.pipe()
    news_r, news_w = os.pipe()
    os.set_blocking(news_r, False)
    shared = mmap.mmap(-1, 8 * count)
    last_ids = memoryview(shared).cast("Q")
    supervisor_pid = os.getpid()

    def spawn(slot: int) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker, checked through its effects
            os.close(result_r)
            os.close(news_r)
            last = last_ids[slot]
            first = last + count if last else slot + 1
            monitor.client_ids.restart(first, count, last_ids, slot)
            _worker_main(server, monitor, serve_one, result_w, news_w, supervisor_pid)
        return pid

    supervisor = Supervisor({}, monitor, spawn, news_r)
    try:
        for slot in range(count):
            supervisor.start(slot)
        return supervisor.run(announce)
    finally:
        for fd in (result_w, news_w, news_r):
            os.close(fd)
        _collect_worker_stats(result_r, monitor)
        os.close(result_r)
        last_ids.release()
        shared.close()


class Supervisor:
    """Wait for the workers; forward the stop signals to them; replace a worker that dies
    while serving; stop all when one cannot start or ends in error (gunicorn's rules).

    Workers tell on the news pipe (`news_fd`) that they serve (`R<pid>`) and that their
    loop ended in order (`E<pid>`). When a worker exits unasked:

    - it never served (a boot error): every worker stops, exit 1; starting it again would
      only fail again;
    - its loop ended in order (stdout failed...): every worker stops, as today;
    - it died while serving (killed by a signal, a crash): a warning names the exit status
      or the signal, and a new worker takes its slot, at most once per RESTART_INTERVAL per
      slot; DEATH_LIMIT deaths within DEATH_WINDOW seconds stop every worker, exit 1.
    """

    def __init__(
        self,
        workers: dict[int, int],
        monitor: RunMonitor,
        spawn: Callable[[int], int] | None = None,
        news_fd: int = -1,
    ) -> None:
        self.workers = workers  # pid -> pidfd (-1 without one)
        self.monitor = monitor
        self.spawn = spawn
        self.news_fd = news_fd
        self.queue = SignalQueue(RUN_SIGNALS)
        self.signalled = 0
        self.failed = False
        self.slots: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> when its worker was started
        self.serving: set[int] = set()  # pids that told they serve
        self.ended: set[int] = set()  # pids whose loop ended in order
        self.deaths: list[float] = []  # when workers died, within DEATH_WINDOW
        self.due: dict[int, float] = {}  # slot -> when a new worker is to start in it
        self._news = b""

    def start(self, slot: int) -> None:
        """Start a worker in `slot`."""
        assert self.spawn is not None
        pid = self.spawn(slot)
        self.workers[pid] = _pidfd(pid)
        self.slots[pid] = slot
        self.started[slot] = time.monotonic()

    @property
    def stopping(self) -> bool:
        """True once the workers are being stopped (a signal, or a failure)."""
        return bool(self.signalled) or self.failed

    def run(self, announce: Callable[[], None] | None) -> int:
        """Supervise until every worker has exited; return the exit status."""
        try:
            with self.queue:
                if announce is not None:
                    announce()
                while self.workers or (self.due and not self.stopping):
                    self.wait()
                    for signum, _ in self.queue.take():
                        name = signal.Signals(signum).name
                        getattr(self, f"handle_{name[3:].lower()}", self.handle_term)(name)
                    self.reap()
                    self.restart_due()
        finally:
            for fd in self.workers.values():
                if fd >= 0:
                    os.close(fd)
        if self.signalled >= 2:
            return ExitStatus.INTERRUPTED
        return ExitStatus.ERROR if self.failed else ExitStatus.OK

    def wait(self) -> None:
        """Wait until a worker exits or tells, a signal comes, or a restart is due (a short
        wait where no pidfd tells)."""
        fds = [self.queue.waker.fileno(), *(fd for fd in self.workers.values() if fd >= 0)]
        if self.news_fd >= 0:
            fds.append(self.news_fd)
        timeout = None if all(fd >= 0 for fd in self.workers.values()) else 0.1
        if self.due and not self.stopping:
            left = max(0.0, min(self.due.values()) - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        with contextlib.suppress(InterruptedError):
            select.select(fds, [], [], timeout)
        self.queue.waker.wait(0)

    def read_news(self) -> None:
        """Note which workers serve, and whose loop ended in order."""
        if self.news_fd < 0:
            return
        lines, self._news = read_lines(self.news_fd, self._news)
        for line in lines:
            kind, pid = line[:1], line[1:]
            if pid.isdigit():
                (self.serving if kind == b"R" else self.ended).add(int(pid))

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
        """Forget the workers that exited; decide what their exit means (see the class)."""
        self.read_news()
        for pid in list(self.workers):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            fd = self.workers.pop(pid)
            if fd >= 0:
                os.close(fd)
            slot = self.slots.pop(pid, 0)
            serving = pid in self.serving
            ended = pid in self.ended
            self.serving.discard(pid)
            self.ended.discard(pid)
            if self.stopping:
                continue
            why = exit_reason(status)
            if not serving:
                self._fail(f"worker {pid} failed to start ({why}): stopping", "a worker failed")
            elif ended:
                code = os.waitstatus_to_exitcode(status)
                self._fail(f"worker {pid} exited with status {code}: stopping", "a worker exited")
            else:
                self._died(pid, slot, why)

    def _fail(self, message: str, reason: str) -> None:
        self.failed = True
        self.monitor.warning(message)
        self.monitor.stop_reason = reason
        self.kill_all()

    def _died(self, pid: int, slot: int, why: str) -> None:
        """A worker died while serving: start another in its slot, unless they keep dying."""
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < DEATH_WINDOW] + [now]
        if len(self.deaths) >= DEATH_LIMIT:
            self._fail(
                f"worker {pid} died ({why}); {len(self.deaths)} workers died within "
                f"{DEATH_WINDOW:g}s: stopping",
                "workers kept dying",
            )
            return
        self.monitor.warning(f"worker {pid} died ({why}): starting another")
        self.due[slot] = max(now, self.started.get(slot, now) + RESTART_INTERVAL)

    def restart_due(self) -> None:
        """Start the workers whose restart is due (none once stopping)."""
        if self.stopping:
            self.due.clear()
            return
        now = time.monotonic()
        for slot, when in sorted(self.due.items()):
            if when <= now:
                del self.due[slot]
                try:
                    self.start(slot)
                except OSError as exc:  # no process to be had: as a worker that cannot start
                    self._fail(f"cannot start a worker: {exc.strerror or exc}", "a worker failed")
                    return


def exit_reason(status: int) -> str:
    """'killed by SIGKILL' or 'exit status 3', from a wait status."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


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
    server: Any,
    monitor: RunMonitor,
    serve_one: ServeOne,
    result_fd: int,
    news_fd: int,
    supervisor: int,
) -> None:  # pragma: no cover - runs in a worker process
    status: int = ExitStatus.ERROR
    try:
        signal.set_wakeup_fd(-1)  # a worker started again: the supervisor's waker is not ours
        # Ctrl-C and a closed terminal reach every worker: the supervisor decides.
        for sig in (signal.SIGINT, signal.SIGHUP, *IGNORED_SIGNALS):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _stop_with_supervisor(supervisor)
        server._unix_file = None  # the supervisor removes the socket file
        server.socket.setblocking(False)  # another worker may win the accept race
        monitor.become_worker()
        os.write(news_fd, b"R%d\n" % os.getpid())  # booted: from now on, it serves
        status = serve_one((signal.SIGTERM,))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late SIGTERM must not lose the counts
        os.write(result_fd, json.dumps(monitor.stats.counts()).encode() + b"\n")
        os.write(news_fd, b"E%d\n" % os.getpid())  # its loop ended in order
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
