"""Run one server from a ServeConfig: build it, announce it, serve, report the summary.

`serve(config, reporter)` is the whole run; `Run` is the same run in two steps (built and
bound, then served), which the Python API (`api.py`) drives from a thread and stops by a
call. The monitor (`monitor.py`) counts and reports what happens; the lifecycle
(`lifecycle.py`) handles the signals and stops in order; `workers.py` runs --workers
processes. This module only puts them together."""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
from typing import Any

from . import builtins as bh
from .addresses import format_bound, format_host_port, format_plain
from .compose import make_server
from .config import ServeConfig
from .console import PlainReporter, silence
from .errors import ExitStatus
from .lifecycle import RUN_SIGNALS, Lifecycle, run_loop
from .monitor import RunMonitor

__all__ = ["Run", "RunMonitor", "build_handler", "make_loop_server", "print_address", "serve"]


def build_handler(config: ServeConfig, monitor: RunMonitor) -> Any:
    """The handler class (or protocol factory for `event`) for the config."""
    loaded = config.handler
    if loaded.builtin is None:
        return loaded.cls
    if loaded.builtin == "exec":  # a program per connection (ServeConfig refuses event mode)
        from .builtins import program

        if config.socktype == "stream":
            return program.stream_program_handler(config.exec_spec(), monitor)
        return program.datagram_program_handler(config.exec_spec(), monitor)
    options = bh.HandlerOptions(
        reply=config.reply,
        reply_file=config.reply_file,
        observer=monitor,
        lines=not config.raw,
        to_all=config.to_all,
        slow_client=config.slow_client,
        script=config.script,
        upstream=config.forward,
        upstream_tls=upstream_tls(config),
        idle_timeout=config.timeout,
    )
    if loaded.builtin == "replay":
        from .builtins.replay import replay_handler  # -H replay only

        assert config.transcript is not None  # ServeConfig read it
        return replay_handler(
            config.transcript,
            config.socktype,
            config.concurrency,
            config.timing,
            config.match,
            options,
        )
    if config.concurrency == "event":
        return bh.protocol_factory(loaded.builtin, config.socktype, options)
    if config.socktype == "stream":
        return bh.stream_handler(loaded.builtin, options)
    return bh.datagram_handler(loaded.builtin, options)


def upstream_tls(config: ServeConfig) -> Any:
    """The TLS of the --forward upstream (`sockserve.upstream_tls.UpstreamTls`), or None."""
    settings = config.forward_tls
    if settings is None or config.forward is None:
        return None
    from .upstream_tls import prepare_upstream_tls  # ssl: only for --forward-tls

    return prepare_upstream_tls(
        config.forward, settings.ca, settings.sni, settings.cert, settings.key, settings.no_verify
    )


def make_loop_server(
    config: ServeConfig, server: Any, handler: Any, monitor: RunMonitor, tls: Any = None
) -> Any:
    """The server whose serve_forever runs: `server` itself, or the event loop's on its socket
    (with `tls`, the run's `sockserve.tls.TlsSetup`: each connection's handshake is a task).

    The event server stops by itself at the request limit through `monitor.request_stop`,
    which the lifecycle hears.
    """
    if config.concurrency != "event":
        return server
    from .event import EventServer  # asyncio: loaded only for event mode

    return EventServer(
        server.socket,
        handler,
        idle_timeout=config.timeout,
        events=monitor,
        on_stop=monitor.request_stop,
        count_bytes=config.handler.builtin is None,
        backlog=config.backlog,
        banner=config.banner_bytes() if config.socktype == "stream" else b"",
        watch_dressers=getattr(server, "watch_dressers", ()),  # the bound server's, as they are
        access=config.access,
        tls=tls,
    )


def print_address(text: str) -> None:
    """Write the bound address on stdout and flush, without ever blocking on a gone reader."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        silence(sys.stdout)


def serve(config: ServeConfig, reporter: PlainReporter) -> int:
    """Serve until stopped; return the exit status.

    Raises SockserveError before serving, or after it when stdout failed (data was lost).
    """
    return Run(config, reporter).serve()


class Run:
    """One run: the server is built and bound at construction; `serve` serves until `stop`.

    The command serves in the main thread, stopped by signals (`serve()`); the Python API
    serves in a thread of its own (`serve(signals=(), freeze=False)`) and stops it with
    `stop(reason)`, from any thread, before or while it serves.
    Construction raises SockserveError (a bad banner file, the address in use...).
    """

    def __init__(self, config: ServeConfig, reporter: PlainReporter) -> None:
        self.config = config
        self.reporter = reporter
        self.monitor = monitor = RunMonitor(reporter, config)
        #: The run's `sockserve.tls.TlsSetup` (its context, the CA file), or None.
        self.tls: Any = None
        try:
            if config.tls:
                from .tls import prepare_tls  # ssl and the certificates: only for TLS

                self.tls = prepare_tls(config)
            self.handler = build_handler(config, monitor)
            self.server: Any = make_server(config, self.handler, monitor, self.tls)
        except BaseException:
            if self.tls is not None:
                self.tls.close()
            monitor.close()
            raise
        self.family = "unix" if config.family == "unix" else _family_of(self.server)
        if config.forward is not None:  # port 0 is known now, before serving
            from .upstreams import check_not_self

            try:
                check_not_self(
                    config.forward,
                    self.family,
                    self.server.server_address,
                    config.address.all_interfaces,
                )
            except BaseException:
                self.server.server_close()
                if self.tls is not None:
                    self.tls.close()
                monitor.close()
                raise
        self._lifecycle: Lifecycle | None = None
        self._stop_reason: str | None = None  # asked for before the lifecycle began
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        """Stop serving for `reason`, gracefully (in-flight requests get --grace); any thread."""
        with self._lock:
            if self._lifecycle is None:
                self._stop_reason = self._stop_reason or reason  # `serve` stops at once
                return
            lifecycle = self._lifecycle
        lifecycle.stop(reason)

    def serve(self, signals: tuple[int, ...] = RUN_SIGNALS, freeze: bool = True) -> int:
        """Serve until stopped; return the exit status (see the module function `serve`).

        `signals`: those the run handles (in the main thread); `freeze`: freeze what start-up
        made (the command's process), out of the collector's sight.
        """
        config, server, monitor, reporter = self.config, self.server, self.monitor, self.reporter
        handler, family, tls = self.handler, self.family, self.tls
        try:
            sockaddr = server.server_address

            def announce() -> None:
                if config.print_address:
                    print_address(format_plain(family, config.socktype, sockaddr))
                if config.print_host_port:
                    print_address(format_host_port(sockaddr))
                details: dict[str, Any] = {
                    "concurrency": config.concurrency,
                    "handler": config.handler.name,
                }
                if config.faults is not None:
                    details["faults"] = config.faults.describe()
                    if config.forward is not None:  # a relay: the sides they break
                        details["faults"] += "; to " + " and ".join(config.fault_sides)
                if config.record is not None:
                    details["record"] = config.record  # where the transcripts go
                if config.workers > 1:
                    details["workers"] = config.workers
                elif (cpu := server.pin_loop_thread()) is not None:
                    details["pinned_cpu"] = cpu  # the loop runs in this thread, right after
                if config.family == "unix" or config.output == "json":
                    details["pid"] = os.getpid()
                if tls is not None:
                    details.update(tls.details())
                reporter.listening(format_bound(family, config.socktype, sockaddr), details)
                if config.address.all_interfaces:
                    reporter.warning(
                        "listening on all interfaces: other machines can connect "
                        "(use 127.0.0.1 or :PORT to stay local)"
                    )

            # What start-up made lives as long as the process: frozen, the collector never
            # scans it again, and forked children (workers, fork mode) do not copy its pages
            # by touching it.
            if freeze:
                gc.freeze()
            if config.workers > 1:
                from .workers import serve_workers  # only --workers needs it

                def serve_one(signals: tuple[int, ...]) -> int:
                    loop_server = make_loop_server(config, server, handler, monitor, tls)
                    status = run_loop(config, server, loop_server, monitor, signals)
                    if monitor.fatal is not None:  # the supervisor sees only the worker's status
                        monitor.warning(monitor.fatal.message)
                        return ExitStatus.ERROR
                    return status

                status = serve_workers(config, server, monitor, serve_one, announce=announce)
            else:
                loop_server = make_loop_server(config, server, handler, monitor, tls)
                lifecycle = Lifecycle(config, server, loop_server, monitor, signals, announce)
                with self._lock:
                    self._lifecycle = lifecycle
                    if self._stop_reason is not None:
                        lifecycle.stop(self._stop_reason)
                status = lifecycle.run()
        finally:
            try:
                server.server_close()
            except Exception:
                pass
            if tls is not None:
                tls.close()
            monitor.close()
        reporter.summary(monitor.stats, config.socktype, monitor.stop_reason)
        if monitor.output_closed:
            silence(sys.stdout)
        if monitor.fatal is not None:
            raise monitor.fatal  # stdout failed: data was lost
        return status


def _family_of(server: Any) -> str:
    return "inet6" if server.address_family == socket.AF_INET6 else "inet"
