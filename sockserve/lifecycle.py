"""The lifecycle of one run: signals, the ordered stop, the drain and the abort.

As gunicorn's arbiter does it, a signal handler only records the signal and wakes the loop;
the loop decides what the signal means (`Lifecycle.handle_int`, `handle_term`):

1. The first SIGINT/SIGTERM/SIGHUP (or --once, --max-requests, a closed stdout) stops the
   serve loop; the listening socket is closed at once (no new clients).
2. In-flight requests get `grace` seconds, from the first signal, to finish (threads joined,
   children reaped, event connections ended).
3. When the grace period ends, or on a second stop signal, what is left is aborted: the
   connections are shut down (a forked child shuts down its own on SIGTERM), so that each
   handler ends and reports its counts; the abort waits for them as long as the grace period
   (`abort_wait`), then kills the children left. A forced stop exits 130, a graceful one 0.

SIGUSR1 and SIGUSR2 are ignored, with a line of info: a stray one never kills the server.
SIGHUP is left ignored when it was at start (`nohup`).

An exception is raised from a signal handler in one case only: in sync mode a request handler
runs in the main thread, and only an exception can interrupt it when it blocks past the grace
period (`GraceExpired`, from the SIGALRM timer) or past a second signal (`ForcedExit`).
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .config import ServeConfig
from .errors import ExitStatus
from .monitor import RunMonitor

#: The signals that stop a run (SIGHUP: the terminal closed).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The signals a run hears and ignores: by default they would kill it without a summary.
IGNORED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)
#: What the line about an ignored signal adds.
STOP_HINT = "SIGINT, SIGTERM or SIGHUP stops sockserve"
#: Every signal a run handles.
RUN_SIGNALS: tuple[signal.Signals, ...] = STOP_SIGNALS + IGNORED_SIGNALS
#: How often a drain reports what forked children sent.
DRAIN_POLL = 0.2
#: How long an abort waits for killed children to be reaped.
ABORT_WAIT = 2.0
#: The least an abort waits for the aborted requests to end and report (with --grace 0).
ABORT_SETTLE = 0.25

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class ForcedExit(BaseException):
    """Raised in the main thread by a second SIGINT/SIGTERM while a sync handler runs there."""


class GraceExpired(BaseException):
    """Raised in the main thread by the grace timer while a sync handler runs there."""


class Outcome(enum.Enum):
    """How the stop ended."""

    GRACEFUL = "graceful"  #: every request ended by itself
    EXPIRED = "expired"  #: the grace period ended first: the rest was aborted
    FORCED = "forced"  #: a second signal: the rest was aborted


class Waker:
    """A self-pipe: a select on `fileno()` returns once `wake()` is called (or a signal came,
    when it is the signal wakeup fd)."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def fileno(self) -> int:
        """The end to wait on."""
        return self.reader.fileno()

    def wake(self) -> None:
        """Make the wait return (safe from a signal handler and any thread)."""
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed
            self.writer.send(b"\0")

    def wait(self, timeout: float | None) -> None:
        """Wait until woken (or `timeout` seconds), then take every pending wake."""
        with contextlib.suppress(InterruptedError):
            select.select([self.reader], [], [], timeout)
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        """Close both ends."""
        self.reader.close()
        self.writer.close()


class SignalQueue:
    """Record the signals that arrive, and wake a waiter; restore everything on exit.

    A context manager: on entry it installs `record` for `signals` and makes its waker the
    signal wakeup fd (main thread only; elsewhere it installs nothing); on exit it restores
    the previous handlers and wakeup fd. `on_signal(signum)` runs in the handler after the
    signal is recorded: it may only wake a loop, or raise to interrupt a blocked handler.
    """

    def __init__(
        self,
        signals: tuple[int, ...] = RUN_SIGNALS,
        on_signal: Callable[[int], None] | None = None,
    ) -> None:
        self.signals = signals
        self.on_signal = on_signal
        self.received: list[tuple[int, float]] = []  # (signal, time.monotonic())
        self.taken = 0
        self.waker = Waker()
        self._saved: dict[int, SignalHandler] = {}
        self._saved_wakeup: int | None = None

    def record(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: record the signal and wake the waiter."""
        self.received.append((signum, time.monotonic()))
        self.waker.wake()
        if self.on_signal is not None:
            self.on_signal(signum)

    def take(self) -> list[tuple[int, float]]:
        """The signals recorded since the last `take`, oldest first."""
        new = self.received[self.taken :]
        self.taken += len(new)
        return new

    def __enter__(self) -> SignalQueue:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # nohup: the user asked to outlive the terminal
                self._saved[sig] = signal.signal(sig, self.record)
            writer = self.waker.writer.fileno()
            self._saved_wakeup = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved_wakeup is not None:
            signal.set_wakeup_fd(self._saved_wakeup)
            self._saved_wakeup = None
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved.clear()
        self.waker.close()


# -- forked request children ------------------------------------------------------------------

_child_reset_installed = False
#: The fork-mode server of the run in progress (None otherwise): what its request child aborts.
_running_server: Any = None


def _reset_in_child() -> None:
    """After fork in a request child: the parent coordinates the stop, the child just works.

    SIGTERM, the parent's abort, shuts the child's connection down: its handler ends and the
    child reports the connection before it exits.
    """
    server = _running_server
    if server is None:
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    # Ctrl-C and a closed terminal hit the whole process group: the parent decides.
    for sig in (signal.SIGINT, signal.SIGHUP, *IGNORED_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: _stop_in_child(server))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    with contextlib.suppress(ValueError):  # forked from another thread: nothing was set there
        signal.set_wakeup_fd(-1)


def _stop_in_child(server: Any) -> None:
    """SIGTERM in a request child: its programs (--exec) are told first, its connection
    stays until the next SIGTERM; other handlers' connections are shut down at once."""
    if not stop_programs(server, None):
        shut_down_requests(server)


def stop_programs(server: Any, force: bool | None) -> bool:
    """Signal the programs the handler runs (--exec), if it runs any: SIGTERM (`force`
    False), SIGKILL (True), or SIGTERM then SIGKILL on the next call (None). True if they
    were only told to stop (their connections stay open)."""
    hook = getattr(getattr(server, "RequestHandlerClass", None), "stop_programs", None)
    return bool(hook(server, force)) if hook is not None else False


def stop_leftovers(server: Any, children: list[int]) -> None:
    """The aborted request `children` are gone: kill what their programs left (--exec in
    fork mode: `ProgramGroupsPart`), as collect_children does for those it reaps."""
    kill = getattr(server, "kill_leftovers", None)
    if kill is not None:
        for pid in children:
            kill(pid)


def shut_down_requests(server: Any) -> None:
    """Shut down every connection `server` is handling: each handler sees the end of its input
    (or a broken pipe) and ends."""
    for sock in list(getattr(server, "active_requests", ())):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _install_child_reset() -> None:
    global _child_reset_installed
    if not _child_reset_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reset_in_child)
        _child_reset_installed = True


# -- the lifecycle ------------------------------------------------------------------------------


class Lifecycle:
    """Serve, then stop in order (see the module docstring); `run()` returns the exit status.

    `server` is the framework server the factory built; `loop_server` is the one whose
    serve_forever runs: `server` itself, or the EventServer on its socket (event mode).
    `announce` (the banner) is called once the signal handlers are in place: whoever sends
    SIGTERM on seeing the banner gets a graceful stop, never the default action.
    """

    def __init__(
        self,
        config: ServeConfig,
        server: Any,
        loop_server: Any,
        monitor: RunMonitor,
        signals: tuple[int, ...] = RUN_SIGNALS,
        announce: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.server = server
        self.loop_server = loop_server
        self.monitor = monitor
        self.announce = announce
        self.event_loop = loop_server is not server
        self.grace = config.grace
        #: A sync request handler may be running in the main thread: signals must interrupt it.
        self.interruptible = False
        self.stopping = False
        self.forced = False
        self.deadline: float | None = None
        self.queue = SignalQueue(signals, self._on_signal)
        self._timer_armed = False
        self._drainer: threading.Thread | None = None

    # -- in the signal handler ------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        """Wake the serve loop; in a blocked sync handler, interrupt it when it is time."""
        if signum not in STOP_SIGNALS:
            # Told at once, from a thread of its own: the handler may have interrupted a
            # write of the reporter's, and the serve loop only listens for a stop.
            message = f"{signal.Signals(signum).name} ignored ({STOP_HINT})"
            threading.Thread(target=self.monitor.info, args=(message,), daemon=True).start()
            return
        self.wake_loop()
        stops = sum(sig in STOP_SIGNALS for sig, _ in self.queue.received)
        if stops == 1:
            stop_programs(self.server, False)  # --exec: SIGTERM, SIGKILL at the abort
        if not self.interruptible:
            return
        if stops > 1:
            raise ForcedExit()
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Start the grace timer once (sync mode): GraceExpired at its end."""
        if self._timer_armed:
            return
        self._timer_armed = True
        if self.grace > 0:
            signal.setitimer(signal.ITIMER_REAL, self.grace)
        else:
            raise GraceExpired()

    def on_grace_timer(self, signum: int, frame: FrameType | None) -> None:
        """The grace timer's signal handler (sync mode): interrupt a blocked handler."""
        if self.interruptible:
            raise GraceExpired()
        self.queue.waker.wake()

    def wake_loop(self) -> None:
        """Make the serve loop return (or the event loop's drain): safe from a signal handler."""
        if self.event_loop:
            self.loop_server.request_stop()
        else:
            self.server.request_shutdown()

    # -- in the loop: what each signal means ---------------------------------------------------
    def dispatch(self) -> None:
        """Act on the signals recorded since the last call, one method per signal."""
        for signum, when in self.queue.take():
            name = signal.Signals(signum).name
            getattr(self, f"handle_{name[3:].lower()}", self.handle_term)(name, when)

    def handle_int(self, name: str, when: float) -> None:
        """SIGINT (Ctrl-C): the first stops gracefully, the next forces the stop."""
        self._stop_signal(name, when)

    def handle_term(self, name: str, when: float) -> None:
        """SIGTERM: the first stops gracefully, the next forces the stop."""
        self._stop_signal(name, when)

    def handle_hup(self, name: str, when: float) -> None:
        """SIGHUP (the terminal closed): as SIGTERM."""
        self._stop_signal(name, when)

    def handle_usr1(self, name: str, when: float) -> None:
        """SIGUSR1: ignored (the signal handler told it already)."""

    def handle_usr2(self, name: str, when: float) -> None:
        """SIGUSR2: ignored (the signal handler told it already)."""

    def _stop_signal(self, name: str, when: float) -> None:
        if self.stopping:
            self.forced = True
            return
        self.stop(f"{name} received", when)

    def stop(self, reason: str, when: float | None = None) -> None:
        """Stop the serve loop for `reason`; in-flight requests have `grace` seconds from `when`.

        Also the monitor's `on_stop` and the event server's request limit callback.
        """
        if hasattr(self.server, "stop_reason") and self.server.stop_reason is None:
            self.server.stop_reason = reason
        if self.monitor.stop_reason is None:
            self.monitor.stop_reason = reason
        self._begin_stop(when)
        self.wake_loop()

    def _begin_stop(self, when: float | None = None) -> None:
        if not self.stopping:
            self.stopping = True
            self.deadline = (time.monotonic() if when is None else when) + self.grace

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped, stop in order; return the exit status."""
        global _running_server
        _install_child_reset()
        self.monitor.on_stop = self.stop
        if self.event_loop and self.config.request_limit is not None:
            self.loop_server.request_limit = self.config.request_limit
        sync = self.config.concurrency == "sync"
        main = threading.current_thread() is threading.main_thread()
        saved_alarm: SignalHandler = None
        if self.config.concurrency == "fork":  # only its request children take the reset
            _running_server = self.server
        try:
            with self.queue:
                if sync and main:
                    saved_alarm = signal.signal(signal.SIGALRM, self.on_grace_timer)
                try:
                    outcome = self._serve_and_stop(interruptible=sync and main)
                finally:
                    if saved_alarm is not None:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                        signal.signal(signal.SIGALRM, saved_alarm)
        finally:
            _running_server = None
            self.monitor.on_stop = None
        if outcome is Outcome.FORCED:
            return ExitStatus.INTERRUPTED
        return ExitStatus.OK

    def _serve_and_stop(self, interruptible: bool) -> Outcome:
        poll = 0.2 if self.config.concurrency == "fork" else 0.5
        try:
            self.interruptible = interruptible
            try:
                if self.announce is not None:
                    self.announce()
                self.loop_server.serve_forever(poll_interval=poll)
            except GraceExpired:  # sync mode: the request in progress outlived the grace period
                self.interruptible = False
                self.dispatch()
                return self._abort(Outcome.EXPIRED)
            finally:
                self.interruptible = False
        except ForcedExit:
            self.dispatch()
            return self._abort(Outcome.FORCED)
        if self.monitor.stop_reason is None:
            self.monitor.stop_reason = getattr(self.server, "stop_reason", None)
        self.dispatch()
        self._begin_stop()  # from now on, any signal forces the stop
        if self.forced:
            return self._abort(Outcome.FORCED)
        self._close_listener()
        if not self.config.block_on_close:
            return self._abort(Outcome.EXPIRED, warn=False)
        return self._drain()

    def _close_listener(self) -> None:
        """Stop new clients at once: close the listening socket (the file is removed later)."""
        sock = getattr(self.server, "socket", None)
        if sock is not None and self.server.socket_type == socket.SOCK_STREAM:
            with contextlib.suppress(OSError):
                sock.close()

    def in_flight(self) -> int:
        """How many requests are still being handled."""
        if self.event_loop:
            return int(self.loop_server.active_connections)
        children = getattr(self.server, "active_children", None)
        if children:
            return len(children)
        return len(getattr(self.server, "active_requests", ()))

    def _drain(self) -> Outcome:
        """Let in-flight requests end, until the grace period ends or a signal forces the stop."""
        pending = self.in_flight()
        if pending:
            plural = "s" if pending != 1 else ""
            if self.config.daemon_threads:  # server_close does not wait for daemon threads
                it = "they end" if plural else "it ends"
                self.monitor.info(
                    f"stopping: not waiting for {pending} request{plural} (--daemon-threads):"
                    f" {it} with the process"
                )
            else:
                self.monitor.info(
                    f"stopping: waiting up to {self.grace:g}s for {pending} request{plural}"
                    " (Ctrl-C again to force)"
                )
        if self.event_loop:
            ended = self.loop_server.drain(self._remaining())
            self.dispatch()
            if self.forced:
                return self._abort(Outcome.FORCED)
            if not ended:
                return self._abort(Outcome.EXPIRED)
            self.loop_server.close_connections(0)
            return Outcome.GRACEFUL
        # server_close waits for threads and children: it runs in a thread of its own, so
        # that this one waits for it, a signal and the end of the grace period all at once.
        done = threading.Event()
        waker = self.queue.waker

        def close() -> None:
            try:
                self.server.server_close()
            finally:
                done.set()
                waker.wake()

        self._drainer = threading.Thread(target=close, name="sockserve-drain", daemon=True)
        self._drainer.start()
        while True:
            self.dispatch()
            if self.forced:
                return self._abort(Outcome.FORCED)
            if done.is_set():
                self.monitor.poll()
                return Outcome.GRACEFUL
            remaining = self._remaining()
            if remaining <= 0:
                return self._abort(Outcome.EXPIRED)
            waker.wait(min(remaining, DRAIN_POLL))
            self.monitor.poll()  # children that end report meanwhile, and never block on it

    def abort_wait(self) -> float:
        """How long an abort waits for the requests it aborted to end and report.

        A handler blocked on its socket ends at once; only one that ignores its socket's
        shutdown makes the abort wait this long (the grace period, within ABORT_SETTLE and
        ABORT_WAIT), and its report is lost.
        """
        return min(ABORT_WAIT, max(self.grace, ABORT_SETTLE))

    def _remaining(self) -> float:
        assert self.deadline is not None
        return max(0.0, self.deadline - time.monotonic())

    def _abort(self, outcome: Outcome, warn: bool = True) -> Outcome:
        """End what is still running: shut connections down, stop the children (SIGTERM, then
        SIGKILL for those still running after `abort_wait`), and report what they report."""
        if self._timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if outcome is Outcome.FORCED:
            self.monitor.stop_reason = "forced by a second signal"
        elif warn:
            self.monitor.warning(f"grace period of {self.grace:g}s over: aborting requests")
        if self.event_loop:
            self.loop_server.close_connections(0)
            return outcome
        server = self.server
        stop_programs(server, True)  # --exec: what still runs is killed
        server.block_on_close = False  # no more joining: the final server_close returns at once
        shut_down_requests(server)
        children = getattr(server, "active_children", None) or set()
        aborted = list(children)
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)  # the child shuts its connection down and reports
        if self._drainer is None:
            with contextlib.suppress(Exception):
                server.server_close()
        deadline = time.monotonic() + self.abort_wait()
        _reap(children, deadline, self.monitor.poll)
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # it did not end in time: its report is lost
        _reap(children, time.monotonic() + ABORT_WAIT, self.monitor.poll)
        children.clear()
        stop_leftovers(server, aborted)
        wait_closed = getattr(server, "wait_closed", None)
        if wait_closed is not None:
            wait_closed(deadline)  # the threads' handlers report as they end
        if self._drainer is not None:
            # Its server_close ends with the handlers: let it finish (the unix socket file's
            # removal among the rest) rather than exit in its middle.
            self._drainer.join(max(0.0, deadline - time.monotonic()))
        self.monitor.poll()
        return outcome


def _reap(children: set[int], deadline: float, poll: Callable[[], None]) -> None:
    """Reap the `children` that exit (forgetting them) until `deadline` at most, calling
    `poll` (the monitor's: what they report) as they go."""
    while children and time.monotonic() < deadline:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except OSError:  # ChildProcessError: reaped already (the drainer's server_close)
                done = pid
            if done:
                children.discard(pid)
        poll()
        if children:
            time.sleep(0.01)


def run_loop(
    config: ServeConfig,
    server: Any,
    loop_server: Any,
    monitor: RunMonitor,
    signals: tuple[int, ...] = RUN_SIGNALS,
    announce: Callable[[], None] | None = None,
) -> int:
    """Serve and stop in order (see `Lifecycle`); return the exit status."""
    return Lifecycle(config, server, loop_server, monitor, signals, announce).run()
