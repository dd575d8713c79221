"""`--workers N`: prefork N processes that serve one listening socket, and supervise them.

Loaded by `runner.serve` only when N > 1. Each worker runs the runner's usual loop; this
process forwards the stop signals, reaps the workers and adds up their counters.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

from .errors import ExitStatus
from .runner import make_loop_server, run_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import ServeConfig
    from .runner import RunMonitor


def serve_workers(
    config: ServeConfig, server: Any, handler: Any, monitor: RunMonitor, announce: Any = None
) -> int:
    """Prefork `config.workers` processes on the bound socket and supervise them.

    Each worker runs the usual loop; SIGINT is ignored there, SIGTERM from this process is
    its stop signal (a second SIGTERM forces it). This process forwards Ctrl-C/SIGTERM,
    reaps the workers and adds their counters (sent as JSON on a pipe) to its own.
    `announce` (the banner) runs once this process forwards signals: a SIGTERM sent on
    seeing the banner never kills it by default and leaves the workers serving as orphans.
    """
    result_r, result_w = os.pipe()
    workers: dict[int, int] = {}
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker, checked through its effects
            os.close(result_r)
            _worker_main(config, server, handler, monitor, result_w)
        workers[pid] = _pidfd(pid)
    os.close(result_w)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)

    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # The signal itself wakes the select below, even one that came just before the select
    # began (its Python handler, on_signal, runs only once the select has returned).
    saved_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    forwarded = 0
    failed = False
    try:
        if announce is not None:
            announce()
        while workers:
            fds = [wake_r, *(fd for fd in workers.values() if fd >= 0)]
            timeout = None if all(fd >= 0 for fd in workers.values()) else 0.1
            with contextlib.suppress(InterruptedError):
                select.select(fds, [], [], timeout)
            with contextlib.suppress(OSError):
                os.read(wake_r, 1024)
            while forwarded < len(received):
                forwarded += 1
                if forwarded == 1:
                    monitor.stop_reason = f"{signal.Signals(received[0]).name} received"
                for pid in workers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM)
            for pid in list(workers):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                fd = workers.pop(pid)
                if fd >= 0:
                    os.close(fd)
                code = os.waitstatus_to_exitcode(status)
                if not received and not failed:
                    failed = True
                    monitor.warning(f"worker {pid} exited with status {code}: stopping")
                    monitor.stop_reason = "a worker exited"
                    for other in workers:
                        with contextlib.suppress(OSError):
                            os.kill(other, signal.SIGTERM)
    finally:
        signal.set_wakeup_fd(saved_wakeup)
        for sig, old in saved.items():
            signal.signal(sig, old)
        for fd in (wake_r, wake_w):
            os.close(fd)
        _collect_worker_stats(result_r, monitor)
        os.close(result_r)
    if len(received) >= 2:
        return ExitStatus.INTERRUPTED
    return ExitStatus.ERROR if failed else ExitStatus.OK


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _worker_main(
    config: ServeConfig, server: Any, handler: Any, monitor: RunMonitor, result_fd: int
) -> None:  # pragma: no cover - runs in a worker process
    status = ExitStatus.ERROR
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        server._unix_file = None  # the supervisor removes the socket file
        server.socket.setblocking(False)  # another worker may win the accept race
        monitor.become_worker()
        loop_server = make_loop_server(config, server, handler, monitor)
        status = run_loop(config, server, loop_server, monitor, sigs=(signal.SIGTERM,))
        stats = monitor.stats
        record = {
            "connections": stats.connections,
            "requests": stats.requests,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "errors": stats.errors,
        }
        import json

        os.write(result_fd, json.dumps(record).encode() + b"\n")
    except BaseException:
        status = ExitStatus.ERROR
    finally:
        os._exit(int(status))


def _collect_worker_stats(fd: int, monitor: RunMonitor) -> None:
    import json

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
            rec = json.loads(line)
        except ValueError:
            continue
        stats = monitor.stats
        with stats.lock:
            stats.connections += int(rec["connections"])
            stats.requests += int(rec["requests"])
            stats.bytes_in += int(rec["bytes_in"])
            stats.bytes_out += int(rec["bytes_out"])
            stats.errors += int(rec["errors"])
