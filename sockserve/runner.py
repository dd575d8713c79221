"""Run one server from a ServeConfig: build it, announce it, serve, report the summary.

`serve(config, reporter)` is the whole run. The monitor (`monitor.py`) counts and reports
what happens; the lifecycle (`lifecycle.py`) handles the signals and stops in order;
`workers.py` runs --workers processes. This module only puts them together.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from typing import Any

from . import builtins as bh
from .addresses import format_bound, format_host_port, format_plain
from .compose import make_server, watch_dressers
from .config import ServeConfig
from .console import PlainReporter, silence
from .errors import ExitStatus
from .lifecycle import run_loop
from .monitor import RunMonitor
from .upstreams import check_not_self

__all__ = ["RunMonitor", "build_handler", "make_loop_server", "print_address", "serve"]


def build_handler(config: ServeConfig, monitor: RunMonitor) -> Any:
    """The handler class (or protocol factory for `event`) for the config."""
    loaded = config.handler
    if loaded.builtin is None:
        return loaded.cls
    options = bh.HandlerOptions(
        reply=config.reply,
        reply_file=config.reply_file,
        observer=monitor,
        upstream=config.forward,
        idle_timeout=config.timeout,
    )
    if config.concurrency == "event":
        return bh.protocol_factory(loaded.builtin, config.socktype, options)
    if config.socktype == "stream":
        return bh.stream_handler(loaded.builtin, options)
    return bh.datagram_handler(loaded.builtin, options)


def make_loop_server(config: ServeConfig, server: Any, handler: Any, monitor: RunMonitor) -> Any:
    """The server whose serve_forever runs: `server` itself, or the event loop's on its socket.

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
        watch_dressers=watch_dressers(config),
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
    monitor = RunMonitor(reporter, config)
    try:
        handler = build_handler(config, monitor)
        server: Any = make_server(config, handler, monitor)
    except BaseException:
        monitor.close()
        raise
    family = "unix" if config.family == "unix" else _family_of(server)
    try:
        sockaddr = server.server_address
        if config.forward is not None:  # port 0 is known now, before serving
            check_not_self(config.forward, family, sockaddr, config.address.all_interfaces)

        def announce() -> None:
            if config.print_address:
                print_address(format_plain(family, config.socktype, sockaddr))
            if config.print_host_port:
                print_address(format_host_port(sockaddr))
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

        # What start-up made lives as long as the process: frozen, the collector never scans
        # it again, and forked children (workers, fork mode) do not copy its pages by touching it.
        gc.freeze()
        if config.workers > 1:
            from .workers import serve_workers  # only --workers needs it

            def serve_one(signals: tuple[int, ...]) -> int:
                loop_server = make_loop_server(config, server, handler, monitor)
                status = run_loop(config, server, loop_server, monitor, signals)
                if monitor.fatal is not None:  # the supervisor sees only the worker's status
                    monitor.warning(monitor.fatal.message)
                    return ExitStatus.ERROR
                return status

            status = serve_workers(config, server, monitor, serve_one, announce=announce)
        else:
            loop_server = make_loop_server(config, server, handler, monitor)
            status = run_loop(config, server, loop_server, monitor, announce=announce)
    finally:
        try:
            server.server_close()
        except Exception:
            pass
        monitor.close()
    reporter.summary(monitor.stats, config.socktype, monitor.stop_reason)
    if monitor.output_closed:
        silence(sys.stdout)
    if monitor.fatal is not None:
        raise monitor.fatal  # stdout failed: data was lost
    return status


def _family_of(server: Any) -> str:
    return "inet6" if server.address_family == socket.AF_INET6 else "inet"
