"""The run's monitor: counts what the server does and passes its events to the reporter.

`RunMonitor` implements `events.Events`. In a forked request child (fork mode) an event
cannot reach the reporter of the parent: it travels as one JSON line on a pipe (one atomic
write each), and the parent reports it from `poll()`, which the serve loop calls. The
pipe's two ends are the only users of json here: other runs never load it.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from .builtins import OutputClosed
from .builtins.output import OutputFailed
from .config import ServeConfig
from .console import PlainReporter, format_client, format_user_traceback
from .errors import EnvironmentProblem
from .events import Client, ClientIds, Direction, Stats, address_of, remote_error

#: The longest line a child writes on the pipe: one write of at most PIPE_BUF bytes is atomic.
CHILD_RECORD_MAX = select.PIPE_BUF - 1
#: Errors that are the client's doing, not the handler's: reported in one line.
PEER_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
#: A peer refused by the access rules is reported at most once per this many seconds (each
#: refusal is counted); REFUSED_PEERS peers are remembered for it, the oldest forgotten.
REFUSED_EVERY = 1.0
REFUSED_PEERS = 1024

# How many forks led to this process (each child counts its own): RunMonitor.in_child
# compares it with the count it saw, instead of calling getpid() for every request. Where
# there is no register_at_fork there is no fork either, and the count stays 0.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def read_lines(fd: int, partial: bytes) -> tuple[list[bytes], bytes]:
    """Read what a non-blocking pipe holds; return its complete lines, and the rest of a line
    still to come (`partial` is the rest the last call returned)."""
    chunks = [partial]
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # BlockingIOError: all read
            break
        if not chunk:
            break
        chunks.append(chunk)
    *lines, rest = b"".join(chunks).split(b"\n")
    return lines, rest


class RunMonitor:
    """Count and report the events of one run; forward them from forked children.

    `on_stop(reason)`, set by the lifecycle, is called when the run must stop by itself (the
    builtins' stdout closed or failed); `stop_reason` keeps the first reason the run stopped
    for. `output_closed` tells that stdout takes no more; `fatal`, the error the run must end
    with (exit 1) once stopped: stdout failed, and data was lost. `client_ids` numbers the
    run's connections and datagram requests: the servers make each request's `Client` with
    it, and a forked child's events carry the id over the pipe.
    """

    def __init__(self, reporter: PlainReporter, config: ServeConfig) -> None:
        reporter.socktype = config.socktype
        self.reporter = reporter
        self.socktype = config.socktype
        self.stats = Stats()
        self.client_ids = ClientIds()
        self.wants_data = config.verbosity >= 2
        self.wants_counts = reporter.wants_counts
        self.stop_reason: str | None = None
        self.on_stop: Callable[[str], None] | None = None
        self.output_closed = False
        self.fatal: EnvironmentProblem | None = None
        self._forks = _forks
        self._pipe: tuple[int, int] | None = None
        self._pipe_poll: select.poll | None = None
        self._partial = b""
        self._refused_lock = threading.Lock()
        self._refused_at: dict[Any, float] = {}
        if config.concurrency == "fork":
            self._open_pipe()
        if (
            config.socktype == "dgram"
            and config.concurrency in ("sync", "event")
            and not reporter.shows_datagram_records()
        ):
            # A record per datagram, all from one thread, that the reporter would not show.
            self.record = self._count  # type: ignore[method-assign]  # a cheaper record, per run
        if not self.wants_counts and not reporter.shows_connections():  # --quiet
            if config.concurrency == "event":  # counted from the loop's thread alone: no lock
                self.connected = self._count_connection_here  # type: ignore[method-assign]
            else:
                self.connected = self._count_connection  # type: ignore[method-assign]

    def _count(self, client: Any, received: int, sent: int) -> None:
        """`record` where it only has to count: one thread, nothing to print or forward."""
        stats = self.stats
        stats.requests += 1
        stats.bytes_in += received
        stats.bytes_out += sent

    def _count_connection(self, client: Any) -> None:
        """`connected` where the reporter shows neither connections nor counts (--quiet):
        only count it."""
        self.stats.add_connection()

    def _count_connection_here(self, client: Any) -> None:
        """`_count_connection` when every connection is counted from one thread."""
        self.stats.connections += 1

    def become_worker(self) -> None:
        """In a --workers process: act as the parent of its own request children."""
        self._forks = _forks
        self.stats = Stats()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._open_pipe()

    def _open_pipe(self) -> None:
        """Open the pipe children forward their events on, and a poll for data on it.

        The loop asks on every iteration: an empty poll costs no exception, where a read
        that fails with EAGAIN does.
        """
        r, w = os.pipe()
        os.set_blocking(r, False)
        self._pipe = (r, w)
        self._pipe_poll = select.poll()
        self._pipe_poll.register(r, select.POLLIN)

    @property
    def in_child(self) -> bool:
        """True in a forked request child (a comparison: it runs for every request)."""
        return _forks != self._forks

    def _forward(self, record: dict[str, Any]) -> None:
        import json  # the child pipe's lines (fork mode only): other runs never load it

        line = json.dumps(record, default=str).encode() + b"\n"
        if len(line) > CHILD_RECORD_MAX:
            record.pop("tb", None)
            line = json.dumps(record, default=str).encode()[:CHILD_RECORD_MAX] + b"\n"
        if self._pipe is not None:
            try:
                os.write(self._pipe[1], line)
            except OSError:
                pass

    # -- Events -----------------------------------------------------------------------------------
    def connected(self, client: Any) -> None:
        """Count the connection and report it."""
        self.stats.add_connection()
        self.reporter.connected(client)

    def record(self, client: Any, received: int, sent: int) -> None:
        """Count the request and report it (from a child: forward it)."""
        if self.in_child:
            self._forward({"k": "record", "c": _jsonable(client), "i": received, "o": sent})
            return
        self.stats.add_request(received, sent)
        self.reporter.record(client, received, sent)

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """Report the chunk."""
        self.reporter.data(client, direction, bytes(data))

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """Report a handler's error; what is no bug of the handler's is one line of info.

        OutputClosed (the builtins' stdout went away) stops the run instead; OutputFailed (a
        full disk) stops it with a fatal error; an idle timeout and a client gone away are
        reported as info.
        """
        if isinstance(exc, OutputFailed):
            if self.in_child:
                self._forward({"k": "output-failed", "m": exc.message, "h": exc.hint})
            else:
                self._output_failed(exc.message, exc.hint)
            return
        if isinstance(exc, OutputClosed):
            if self.in_child:
                self._forward({"k": "output-closed"})
            else:
                self._output_closed()
            return
        if isinstance(exc, TimeoutError):
            self._note(f"closed idle connection {format_client(client)}")
            return
        if isinstance(exc, PEER_GONE):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._note(f"client {format_client(client)} went away: {reason}")
            return
        if self.in_child:
            self._forward(
                {
                    "k": "error",
                    "c": _jsonable(client),
                    "t": type(exc).__name__,
                    "m": str(exc),
                    "tb": format_user_traceback(exc),
                }
            )
            return
        self.stats.add_error()
        self.reporter.handler_error(client, exc)

    def warning(self, message: str) -> None:
        """Report the warning (from a child: forward it)."""
        if self.in_child:
            self._forward({"k": "warning", "m": message})
            return
        self.reporter.warning(message)

    def info(self, message: str) -> None:
        """Report the line."""
        self.reporter.info(message)

    def refused(self, client: Any, reason: str) -> None:
        """Count the refusal; report it unless the same peer was reported less than
        `REFUSED_EVERY` seconds ago."""
        self.stats.add_refused()
        peer = address_of(client)
        peer = peer[0] if isinstance(peer, tuple) and peer else peer
        now = time.monotonic()
        with self._refused_lock:
            last = self._refused_at.pop(peer, None)
            if last is not None and now - last < REFUSED_EVERY:
                self._refused_at[peer] = last
                return
            self._refused_at[peer] = now
            while len(self._refused_at) > REFUSED_PEERS:
                del self._refused_at[next(iter(self._refused_at))]
        self.reporter.refused(client, reason)

    def upstream(
        self, client: Any, upstream: str, error: str | None, tls: dict[str, Any] | None = None
    ) -> None:
        """Report the upstream connected or failed (from a child: forward it)."""
        extra = {} if tls is None else {"tls": tls}
        if self.in_child:
            rec = {"k": "upstream", "c": _jsonable(client), "u": upstream, "e": error}
            self._forward({**rec, "t": tls} if tls is not None else rec)
            return
        self.reporter.upstream(client, upstream, error, **extra)

    def _note(self, message: str) -> None:
        if self.in_child:
            self._forward({"k": "info", "m": message})
        else:
            self.reporter.info(message)

    def _output_closed(self) -> None:
        if not self.output_closed:
            self.output_closed = True
            self.request_stop("stdout closed")

    def _output_failed(self, message: str, hint: str | None) -> None:
        """Stop the run; it ends with `message` (the first failure's) and exit 1."""
        if self.fatal is None:
            self.fatal = EnvironmentProblem(message, hint)
            self.stats.add_error()
            self.output_closed = True  # nothing more goes to it, not even Python's last flush
            self.request_stop("stdout failed")

    def request_stop(self, reason: str) -> None:
        """Stop the run for `reason` (the first reason given is kept)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.on_stop is not None:
            self.on_stop(reason)

    # -- parent side of the child pipe ------------------------------------------------------------
    def poll(self) -> None:
        """Report what forked children sent (called from the serve loop and at the end)."""
        if self._pipe is None or self.in_child:
            return
        assert self._pipe_poll is not None
        if not self._pipe_poll.poll(0):
            return
        import json  # the child pipe's lines (fork mode only): other runs never load it

        lines, self._partial = read_lines(self._pipe[0], self._partial)
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
            self.reporter.record(_from_json(rec.get("c")), rec["i"], rec["o"])
        elif kind == "error":
            self.stats.add_error()
            exc = remote_error(str(rec.get("t")), str(rec.get("m")), rec.get("tb"))
            self.reporter.handler_error(_from_json(rec.get("c")), exc)
        elif kind == "output-closed":
            self._output_closed()
        elif kind == "output-failed":
            self._output_failed(str(rec.get("m")), rec.get("h"))
        elif kind == "info":
            self.reporter.info(str(rec.get("m")))
        elif kind == "tls":
            info = rec.get("t") or {}
            if "error" in info:
                self.stats.add_tls_failure()
            self.reporter.tls(_from_json(rec.get("c")), info)
        elif kind == "fault":
            side = rec.get("s")
            self.reporter.fault(
                _from_json(rec.get("c")),
                str(rec.get("f")),
                str(rec.get("d")),
                side=None if side is None else str(side),
            )
        elif kind == "sent":
            self.stats.add_sent(int(rec["o"]))
            self.reporter.sent(_from_json(rec.get("c")), int(rec["o"]))
        elif kind == "warning":
            self.reporter.warning(str(rec.get("m")))
        elif kind == "exec-exit":
            self.reporter.exec_exit(_from_json(rec.get("c")), int(rec["s"]), float(rec["t"]))
        elif kind == "exec-stderr":
            line = bytes.fromhex(str(rec.get("l")))
            self.reporter.exec_stderr(_from_json(rec.get("c")), line)
        elif kind == "upstream":
            error = rec.get("e")
            extra = {"tls": rec["t"]} if rec.get("t") is not None else {}
            self.reporter.upstream(_from_json(rec.get("c")), str(rec.get("u")), error, **extra)

    def close(self) -> None:
        """Report what children sent last; close the pipe."""
        if self._pipe is not None and not self.in_child:
            self.poll()
            for fd in self._pipe:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._pipe = None

    def tls(self, client: Any, info: dict[str, Any]) -> None:
        """Report a TLS handshake (from a child: forward it); count the failed ones."""
        if self.in_child:
            self._forward({"k": "tls", "c": _jsonable(client), "t": info})
            return
        if "error" in info:
            self.stats.add_tls_failure()
        self.reporter.tls(client, info)

    def fault(self, client: Any, kind: str, detail: str, side: str | None = None) -> None:
        """Report a fault applied (from a child: forward it)."""
        if self.in_child:
            record = {"k": "fault", "c": _jsonable(client), "f": kind, "d": detail}
            if side is not None:
                record["s"] = side
            self._forward(record)
            return
        self.reporter.fault(client, kind, detail, side=side)

    def sent(self, client: Any, size: int) -> None:
        """Count the bytes out and report them (from a child: forward them)."""
        if self.in_child:
            self._forward({"k": "sent", "c": _jsonable(client), "o": size})
            return
        self.stats.add_sent(size)
        self.reporter.sent(client, size)

    def exec_exit(self, client: Any, status: int, seconds: float) -> None:
        """Report the end of a program (from a child: forward it)."""
        if self.in_child:
            self._forward({"k": "exec-exit", "c": _jsonable(client), "s": status, "t": seconds})
            return
        self.reporter.exec_exit(client, status, seconds)

    def exec_stderr(self, client: Any, line: bytes) -> None:
        """Report a line of a program's stderr (from a child: forward it, in hex)."""
        if self.in_child:
            self._forward({"k": "exec-stderr", "c": _jsonable(client), "l": bytes(line).hex()})
            return
        self.reporter.exec_stderr(client, bytes(line))


def _jsonable(client: Any) -> Any:
    """`client` for a child's line: a `Client` as {"a": address, "n": id}."""
    if type(client) is Client:
        return {"a": _jsonable(client.address), "n": client.id}
    if isinstance(client, bytes):
        return client.decode(errors="replace")
    return client


def _from_json(client: Any) -> Any:
    """The client of a child's line, as the child had it (a `Client` with its id)."""
    if isinstance(client, dict):
        return Client(_from_json(client.get("a")), client.get("n"))
    return tuple(client) if isinstance(client, list) else client
