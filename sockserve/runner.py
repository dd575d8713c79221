"""Run one server from a ServeConfig: banner, signals, serve_forever, graceful stop, summary.

Stopping, in order:
1. The first SIGINT/SIGTERM (or --once, --max-requests, a closed stdout) only asks the loop
   to stop; the loop returns at once and the listening socket is closed (no new clients).
2. In-flight requests get `grace` seconds to finish (threads joined, children reaped).
3. When the grace period ends, or on a second SIGINT/SIGTERM, what is left is aborted:
   connections are shut down, children killed. A forced stop exits 130, a graceful one 0.
Signal handlers only count the signal and ask the loop to stop, or raise to abort.
"""

from __future__ import annotations

import _signal  # signal's C module: what `signal` wraps, without its enum classes (~0.8 ms)
import gc
import os
import select
import socket
import sys
import threading
import time

from .config import ServeConfig
from .console import PlainReporter, Stats, silence
from .errors import ExitStatus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CHILD_RECORD_MAX = select.PIPE_BUF - 1
_PEER_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_STOP_SIGNALS = (_signal.SIGINT, _signal.SIGTERM)
_SIGNAL_NAMES = {_signal.SIGINT: "SIGINT", _signal.SIGTERM: "SIGTERM"}


class ForcedExit(BaseException):
    """Raised in the main thread by a second SIGINT/SIGTERM."""


class GraceExpired(BaseException):
    """Raised in the main thread when the grace period of a graceful stop ends."""


# How many forks led to this process (each child counts its own): RunMonitor.in_child
# compares it with the count it saw, instead of calling getpid() for every request. Where
# there is no register_at_fork there is no fork either, and the count stays 0.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


class RunMonitor:
    """Counts and reports what the server does; forwards events from forked children.

    Implements the Monitor protocol of `factory` and the Observer protocol of the builtin
    handlers. In a forked child, events travel to the parent as JSON lines on a pipe (one
    atomic write each), and the parent reports them from `poll()`.
    """

    def __init__(self, reporter: PlainReporter, config: ServeConfig) -> None:
        self.reporter = reporter
        self.socktype = config.socktype
        self.stats = Stats()
        self.wants_data = config.verbosity >= 2
        self.wants_counts = not reporter.quiet  # --quiet shows neither records nor summary
        self.stop_reason: str | None = None
        self.stop_callback: Any = None
        self.output_closed = False
        self._forks = _forks
        self._pipe: tuple[int, int] | None = None
        self._pipe_ready: Any = None
        if config.concurrency == "fork":
            import json  # noqa: F401 - children forward records as JSON: load it before forks

            self._open_pipe()
        self._partial = b""
        if (
            config.socktype == "dgram"
            and config.concurrency in ("sync", "event")
            and not reporter.shows_datagram_records()
        ):
            # A record per datagram, all from one thread, that the reporter would not show.
            self.record = self._count  # type: ignore[method-assign]

    def _count(self, client: Any, received: int, sent: int) -> None:
        """`record` where it only has to count: one thread, nothing to print or forward."""
        stats = self.stats
        stats.requests += 1
        stats.bytes_in += received
        stats.bytes_out += sent

    def become_worker(self) -> None:
        """In a --workers process: act as the parent of its own request children."""
        self._forks = _forks
        self.stats = Stats()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._open_pipe()

    def _open_pipe(self) -> None:
        """The pipe children forward their records on, and a poll for data on it: the loop
        asks on every iteration, and a read that fails with EAGAIN costs an exception."""
        from .parts.accept_batch import input_waiting  # serve() has loaded it to build the server

        r, w = os.pipe()
        os.set_blocking(r, False)
        self._pipe = (r, w)
        self._pipe_ready = input_waiting(r)

    @property
    def in_child(self) -> bool:
        """True in a forked request child (a comparison: it runs for every request)."""
        return _forks != self._forks

    def _forward(self, record: dict[str, Any]) -> None:
        import json  # loaded by __init__ before any child forks: a lookup here

        line = json.dumps(record, default=str).encode() + b"\n"
        if len(line) > _CHILD_RECORD_MAX:
            record.pop("tb", None)
            line = json.dumps(record, default=str).encode()[:_CHILD_RECORD_MAX] + b"\n"
        if self._pipe is not None:
            try:
                os.write(self._pipe[1], line)
            except OSError:
                pass

    # -- Monitor / Observer interface ---------------------------------------------------------
    def connected(self, client: Any) -> None:
        self.stats.add_connection()
        self.reporter.connected(client)

    def record(self, client: Any, received: int, sent: int) -> None:
        if self.in_child:
            self._forward({"k": "record", "c": _jsonable(client), "i": received, "o": sent})
            return
        self.stats.add_request(received, sent)
        self.reporter.record(client, received, sent, self.socktype)

    def data(self, client: Any, direction: str, data: bytes) -> None:
        self.reporter.data(client, direction, bytes(data))

    def handler_error(self, client: Any, exc: BaseException) -> None:
        from .builtins import OutputClosed

        if isinstance(exc, OutputClosed):
            if self.in_child:
                self._forward({"k": "output-closed"})
            else:
                self._output_closed()
            return
        from .console import format_client

        if isinstance(exc, TimeoutError):
            self._note(f"closed idle connection {format_client(client)}")
            return
        if isinstance(exc, _PEER_GONE):  # the client's doing, not the handler's: one line
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._note(f"client {format_client(client)} went away: {reason}")
            return
        if self.in_child:
            import traceback

            tb = "".join(traceback.format_exception(exc))
            self._forward(
                {
                    "k": "error",
                    "c": _jsonable(client),
                    "t": type(exc).__name__,
                    "m": str(exc),
                    "tb": tb,
                }
            )
            return
        self.stats.add_error()
        self.reporter.error(client, exc)

    def _note(self, message: str) -> None:
        if self.in_child:
            self._forward({"k": "info", "m": message})
        else:
            self.reporter.info(message)

    def warning(self, message: str) -> None:
        self.reporter.warning(message)

    def info(self, message: str) -> None:
        self.reporter.info(message)

    def _output_closed(self) -> None:
        if not self.output_closed:
            self.output_closed = True
            self.request_stop("stdout closed")

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.stop_callback is not None:
            self.stop_callback(reason)

    # -- parent side of the child pipe ---------------------------------------------------------
    def poll(self) -> None:
        """Report what forked children sent (called from the serve loop and at the end)."""
        if self._pipe is None or self.in_child or not self._pipe_ready(0):
            return
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self._pipe[0], 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        *lines, self._partial = data.split(b"\n")
        if lines:
            import json
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            self._replay(rec)

    def _replay(self, rec: dict[str, Any]) -> None:
        kind = rec.get("k")
        if kind == "record":
            self.stats.add_request(int(rec["i"]), int(rec["o"]))
            self.reporter.record(_from_json(rec.get("c")), rec["i"], rec["o"], self.socktype)
        elif kind == "error":
            self.stats.add_error()
            exc = _remote_error(str(rec.get("t")), str(rec.get("m")), rec.get("tb"))
            self.reporter.error(_from_json(rec.get("c")), exc, with_traceback=False)
            if rec.get("tb"):
                self.reporter._emit(str(rec["tb"]).rstrip(), "error")
        elif kind == "output-closed":
            self._output_closed()
        elif kind == "info":
            self.reporter.info(str(rec.get("m")))

    def close(self) -> None:
        if self._pipe is not None and not self.in_child:
            self.poll()
            for fd in self._pipe:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._pipe = None


class _RemoteError(Exception):
    """An exception that happened in a forked child, known by its text only."""

    def __init__(self, text: str, tb: str | None) -> None:
        super().__init__(text)
        self.tb = tb


_REMOTE_TYPES: dict[str, type[_RemoteError]] = {}


def _remote_error(type_name: str, message: str, tb: str | None) -> _RemoteError:
    """A _RemoteError whose class bears the child's exception type name (for the reporters)."""
    cls = _REMOTE_TYPES.get(type_name)
    if cls is None:
        cls = type(type_name, (_RemoteError,), {}) if type_name.isidentifier() else _RemoteError
        _REMOTE_TYPES[type_name] = cls
    return cls(message, tb)


def _jsonable(client: Any) -> Any:
    if isinstance(client, bytes):
        return client.decode(errors="replace")
    return client


def _from_json(client: Any) -> Any:
    return tuple(client) if isinstance(client, list) else client


def build_handler(config: ServeConfig, monitor: RunMonitor) -> Any:
    """The handler class (or protocol factory for `event`) for the config."""
    loaded = config.handler
    if loaded.builtin is None:
        return loaded.cls
    from . import builtins as bh

    options = bh.HandlerOptions(reply=config.reply, reply_file=config.reply_file, observer=monitor)
    if config.concurrency == "event":
        return bh.protocol_factory(loaded.builtin, config.socktype, options)
    if config.socktype == "stream":
        return bh.stream_handler(loaded.builtin, options)
    return bh.datagram_handler(loaded.builtin, options)


class _Signals:
    """Install SIGINT/SIGTERM handlers for one run; restore the old ones on exit.

    While the run lasts, a forked request child resets its signals (`_reset_in_child`).
    """

    def __init__(self, on_first: Any, grace: float, sigs: tuple[int, ...] = _STOP_SIGNALS) -> None:
        self.on_first = on_first
        self.sigs = sigs
        self.grace = grace
        self.count = 0
        self.armed = False
        self.name: str | None = None
        self.saved: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
            self.on_first(f"{self.name} received")
            self.arm_grace()  # in-flight requests have `grace` seconds from now
            return
        raise ForcedExit()

    def expire(self, signum: int, frame: Any) -> None:
        raise GraceExpired()

    def arm_grace(self) -> None:
        """Start the grace period once; GraceExpired is raised in the main thread at its end."""
        if self.armed:
            return
        self.armed = True
        if self.grace > 0:
            _signal.setitimer(_signal.ITIMER_REAL, self.grace)
        else:
            raise GraceExpired()

    def __enter__(self) -> _Signals:
        global _in_run
        _install_child_reset()
        _in_run = True
        if threading.current_thread() is threading.main_thread():
            for sig in self.sigs:
                self.saved[sig] = _signal.signal(sig, self.handle)
            self.saved[_signal.SIGALRM] = _signal.signal(_signal.SIGALRM, self.expire)
        return self

    def __exit__(self, *exc: object) -> None:
        global _in_run
        try:
            if self.saved:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
                for sig, old in self.saved.items():
                    _signal.signal(sig, old)
        finally:
            _in_run = False


_child_reset_installed = False
_in_run = False


def _reset_in_child() -> None:
    """After fork in a handler child: the parent coordinates the stop, the child just works."""
    if not _in_run:
        return
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # Ctrl-C hits the whole process group
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)


def _install_child_reset() -> None:
    global _child_reset_installed
    if not _child_reset_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reset_in_child)
        _child_reset_installed = True


def print_address(text: str) -> None:
    """Write the bound address on stdout and flush, without ever blocking on a gone reader."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        silence(sys.stdout)


def serve(config: ServeConfig, reporter: PlainReporter) -> int:
    """Serve until stopped; return the exit status. Raises SockserveError before serving."""
    from .addresses import format_bound, format_plain
    from .compose import make_server

    monitor = RunMonitor(reporter, config)
    try:
        handler = build_handler(config, monitor)
        server: Any = make_server(config, handler, monitor)
    except BaseException:
        monitor.close()
        raise
    loop_server: Any = server
    family = "unix" if config.family == "unix" else _family_of(server)
    try:
        if config.workers == 1:
            loop_server = make_loop_server(config, server, handler, monitor)
        sockaddr = server.server_address

        def announce() -> None:
            if config.print_address:
                print_address(format_plain(family, config.socktype, sockaddr))
            details: dict[str, Any] = {
                "concurrency": config.concurrency,
                "handler": config.handler.name,
            }
            if config.workers > 1:
                details["workers"] = config.workers
            elif (cpu := server.pin_loop_thread()) is not None:
                details["pinned_cpu"] = cpu  # the loop runs in this thread, right after
            if config.family == "unix" or config.output == "json":
                details["pid"] = os.getpid()
            reporter.listening(format_bound(family, config.socktype, sockaddr), details)
            if config.address.all_interfaces:
                reporter.warning(
                    "listening on all interfaces: other machines can connect "
                    "(use 127.0.0.1 or :PORT to stay local)"
                )

        resume_gc()
        if config.workers > 1:
            from .workers import serve_workers

            status = serve_workers(config, server, handler, monitor, announce=announce)
        else:
            status = run_loop(config, server, loop_server, monitor, announce=announce)
    finally:
        try:
            server.server_close()
        except Exception:
            pass
        monitor.close()
    reason = monitor.stop_reason
    reporter.summary(monitor.stats, config.socktype, reason)
    if monitor.output_closed:
        silence(sys.stdout)
    return status


def resume_gc() -> None:
    """Turn the cyclic garbage collector back on if the command paused it for start-up.

    What start-up made (modules, classes, the server) lives as long as the process: frozen,
    it is never scanned again, so the first collections do not walk it all, and forked
    children do not touch (and copy) its pages.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _family_of(server: Any) -> str:
    return "inet6" if server.address_family == socket.AF_INET6 else "inet"


class _EventHooks:
    """Adapt the event server's hooks to the monitor.

    Builtin protocols record their connections themselves (they have the monitor as their
    observer); the server then passes no byte counts, and nothing is recorded here.
    """

    def __init__(self, monitor: RunMonitor) -> None:
        self.monitor = monitor

    def connected(self, client: Any) -> None:
        self.monitor.connected(client)

    def disconnected(self, client: Any, received: int | None, sent: int | None, exc: Any) -> None:
        if received is not None:
            self.monitor.record(client, received, sent or 0)

    def error(self, client: Any, exc: BaseException) -> None:
        self.monitor.handler_error(client, exc)  # TimeoutError: an idle connection was closed

    def stopping(self, reason: str) -> None:
        self.monitor.request_stop(reason)


def make_loop_server(config: ServeConfig, server: Any, handler: Any, monitor: RunMonitor) -> Any:
    """The server whose serve_forever runs: `server` itself, or the event loop's on its socket."""
    if config.concurrency != "event":
        return server
    from .event import EventServer

    return EventServer(
        server.socket,
        handler,
        idle_timeout=config.timeout,
        hooks=_EventHooks(monitor),
        count_bytes=config.handler.builtin is None,
        backlog=config.backlog,
    )


def run_loop(
    config: ServeConfig,
    server: Any,
    loop_server: Any,
    monitor: RunMonitor,
    sigs: tuple[int, ...] = _STOP_SIGNALS,
    announce: Any = None,
) -> int:
    """The serve loop and the ordered stop (see the module docstring).

    `announce` (the banner) is called once the signal handlers are in place: whoever sends
    SIGTERM on seeing the banner gets a graceful stop, never the default action.
    """
    limit = config.request_limit

    def stop(reason: str) -> None:
        if getattr(server, "stop_reason", None) is None and hasattr(server, "stop_reason"):
            server.stop_reason = reason
        if monitor.stop_reason is None:
            monitor.stop_reason = reason
        if loop_server is server:
            server.request_shutdown()
        else:
            loop_server.request_stop()

    monitor.stop_callback = stop
    if loop_server is not server and limit is not None:
        loop_server.request_limit = limit
    signals = _Signals(stop, config.grace, sigs)
    poll = 0.2 if config.concurrency == "fork" else 0.5
    with signals:
        try:
            expired = False
            try:
                if announce is not None:
                    announce()
                loop_server.serve_forever(poll_interval=poll)
            except GraceExpired:
                expired = True  # sync mode: the request in progress outlived the grace period
            if monitor.stop_reason is None:
                monitor.stop_reason = getattr(server, "stop_reason", None)
            _close_listener(server)
            signals.count = max(signals.count, 1)  # from now on, a signal forces the exit
            if expired or not config.block_on_close:
                if expired:
                    monitor.warning(f"grace period of {config.grace:g}s over: aborting requests")
                _abort(server, loop_server)
            else:
                pending = _in_flight(server, loop_server)
                if pending:
                    plural = "s" if pending != 1 else ""
                    monitor.info(
                        f"stopping: waiting up to {config.grace:g}s for {pending} request{plural}"
                        " (Ctrl-C again to force)"
                    )
                try:
                    signals.arm_grace()
                    _drain(server, loop_server)
                except GraceExpired:
                    monitor.warning(f"grace period of {config.grace:g}s over: aborting requests")
                    _abort(server, loop_server)
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        except ForcedExit:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            monitor.stop_reason = "forced by a second signal"
            _abort(server, loop_server)
            return ExitStatus.INTERRUPTED
    return ExitStatus.OK


def _in_flight(server: Any, loop_server: Any) -> int:
    """How many requests are still being handled."""
    if loop_server is not server:
        return int(getattr(loop_server, "active_connections", 0))
    children = getattr(server, "active_children", None)
    if children:
        return len(children)
    return len(getattr(server, "active_requests", ()))


def _close_listener(server: Any) -> None:
    """Stop new clients at once: close the listening socket (the file is removed later)."""
    sock = getattr(server, "socket", None)
    if sock is not None and server.socket_type == socket.SOCK_STREAM:
        try:
            sock.close()
        except OSError:
            pass


def _drain(server: Any, loop_server: Any) -> None:
    """Wait for in-flight requests (threads, children, event connections) to end."""
    if loop_server is not server:
        loop_server.close_connections(None)
        return
    server.server_close()
    monitor = server.monitor
    if monitor is not None:
        monitor.poll()


def _abort(server: Any, loop_server: Any) -> None:
    """End what is still running: shut connections down, kill children."""
    if loop_server is not server:
        loop_server.close_connections(0)
        return
    for sock in list(getattr(server, "active_requests", ())):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    children = getattr(server, "active_children", None) or ()
    for pid in list(children):
        try:
            os.kill(pid, _signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for pid in list(children):
        try:
            while time.monotonic() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
        except OSError:  # ChildProcessError: reaped already
            pass
    if children:
        children.clear()
    try:
        server.block_on_close = False
        server.server_close()
    except Exception:
        pass
    server.monitor.poll() if server.monitor is not None else None
