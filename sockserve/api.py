"""The Python API: `serve(proto, address, **options)` runs a server in a thread of this process.

The keywords are the command's long options with dashes as underscores (`max_threads=4`,
`handler="upper"` or a handler class), checked by `config.build_config` with the command's
rules; a rule broken, an address in use, is the command's error raised (`UsageError`,
`EnvironmentProblem`), never a SystemExit. The returned `Server` is running; it is a context
manager (`with`, and `async with`, which stops it in a worker thread) and `stop()` drains as
the command does on Ctrl-C, within `grace`. Nothing is printed: the server records what the
command would report (`connections`, `errors`, `lines`) and waits on it without polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .config import ServeConfig, build_config
from .console import PlainReporter, format_client, format_user_traceback
from .errors import HandlerLoadError, UsageError
from .events import Direction, RemoteError, address_of
from .lifecycle import ABORT_WAIT, shut_down_requests
from .loading import LoadedHandler, handler_kind
from .runner import Run

__all__ = ["Connection", "HandlerError", "Server", "serve", "serve_async"]

logger = logging.getLogger("sockserve")

#: The command's options about its output and its processes: a server of the API reports to
#: its own records, in this process.
COMMAND_ONLY = (
    "print_address",
    "print_host_port",
    "json",
    "verbose",
    "quiet",
    "color",
    "traceback",
    "workers",
)
#: What `stop()` waits for beyond the grace period and the abort, before it gives up.
STOP_MARGIN = 2.0


@dataclass
class Connection:
    """A connection (or a datagram) the server saw, with its byte counts.

    `bytes_in`/`bytes_out` are final once `closed`; `data_in`/`data_out` are what passed each
    way so far (empty with `capture=False`).
    """

    client: Any  # the peer's address, as socket.accept or recvfrom gave it
    id: int | None = None  # the connection id its --json events carry (`conn`)
    bytes_in: int = 0
    bytes_out: int = 0
    closed: bool = False
    _in: bytearray = field(default_factory=bytearray, repr=False)
    _out: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def data_in(self) -> bytes:
        """What the client sent."""
        return bytes(self._in)

    @property
    def data_out(self) -> bytes:
        """What the server sent the client."""
        return bytes(self._out)


@dataclass(frozen=True)
class HandlerError:
    """An exception a handler raised while serving `client`; `traceback` is its text."""

    client: Any
    exception: BaseException
    traceback: str

    def __str__(self) -> str:
        head = f"error handling {format_client(self.client)}"
        return f"{head}: {type(self.exception).__name__}: {self.exception}\n{self.traceback}"


def _key(client: Any) -> Any:
    """What tells one connection's events from another's: its id (a forked child's events
    come back over a pipe, as another object with the same id), else its address."""
    return ("id", client.id) if getattr(client, "id", None) is not None else address_of(client)


class Recorder(PlainReporter):
    """The reporter of an API server: it keeps the events, and logs the lines the command
    would print to the `sockserve` logger (what pytest shows of a failed test)."""

    def __init__(self, socktype: str) -> None:
        super().__init__(None, verbosity=1, socktype=socktype)
        self.wants_data = True
        self.cond = threading.Condition()
        self.lines: list[str] = []
        self.connections: list[Connection] = []
        self.errors: list[HandlerError] = []
        self._open: dict[Any, Connection] = {}

    def _emit(self, text: str, style: str = "") -> None:
        with self.cond:
            self.lines.append(text)
        level = {"error": logging.ERROR, "warning": logging.WARNING}.get(style, logging.INFO)
        logger.log(level, "%s", text)

    def _entry(self, client: Any) -> Connection:
        """The open entry of `client`, made at its first event (a datagram has no connect)."""
        conn = self._open.get(_key(client))
        if conn is None:
            conn = Connection(address_of(client), getattr(client, "id", None))
            self._open[_key(client)] = conn
            self.connections.append(conn)
            self.cond.notify_all()
        return conn

    def connected(self, client: Any) -> None:
        """Open an entry for the connection."""
        with self.cond:
            self._open.pop(_key(client), None)
            self._entry(client)
        super().connected(client)

    def record(self, client: Any, received: int, sent: int) -> None:
        """Close the entry with its counts."""
        with self.cond:
            conn = self._entry(client)
            del self._open[_key(client)]
            conn.bytes_in, conn.bytes_out, conn.closed = received, sent, True
            self.cond.notify_all()
        super().record(client, received, sent)

    def data(self, client: Any, direction: Direction, data: bytes) -> None:
        """Keep the chunk (no line: the command shows it only at -vv)."""
        with self.cond:
            conn = self._entry(client)
            (conn._in if direction == "in" else conn._out).extend(data)
            self.cond.notify_all()

    def handler_error(self, client: Any, exc: BaseException) -> None:
        """Keep the error with its traceback, and log it."""
        if exc.__traceback__ is not None:
            tb = format_user_traceback(exc)
        elif isinstance(exc, RemoteError):  # raised in a forked child: known by its text
            tb = exc.tb or ""
        else:
            tb = ""
        with self.cond:
            self.errors.append(HandlerError(address_of(client), exc, tb.rstrip()))
            self.cond.notify_all()
        super().handler_error(client, exc)


def serve(proto: str, address: str | None = None, **options: Any) -> Server:
    """Start a server in a thread of this process and return it, running.

    `address` None is port 0 on 127.0.0.1 (tcp, udp) or a socket in a new temporary
    directory (unix, unix-dgram), removed at the stop. `options` are the command's long
    options with underscores; `handler` also takes a handler class. `capture=False` keeps
    no data (`wait_for_data` then refuses), for bulk traffic; neither does fork mode.
    Raises UsageError (exit 2 of the command) or EnvironmentProblem (exit 1).
    """
    capture = bool(options.pop("capture", True))
    refused = [name for name in COMMAND_ONLY if name in options]
    if refused:
        option = "--" + refused[0].replace("_", "-")
        raise UsageError(
            f"{option} shapes the command's output or processes: not in the Python API",
            hint="drop it; the server records its events (server.connections, server.errors)",
        )
    if options.get("script") is not None:  # a path, as on the command line
        from .script_file import read_script  # its parser uses the command's value types

        options["script"] = read_script(options["script"])
    handler = options.get("handler")
    if isinstance(handler, type):
        options["handler"] = _loaded_class(handler)
    tmpdir = None
    if address is None:
        if proto in ("unix", "unix-dgram") or options.get("family") == "unix":
            tmpdir = _short_tmpdir()
            address = os.path.join(tmpdir, "socket")
        else:
            address = ":0"
    # A forked child's chunks stay in the child: fork mode records connections and counts.
    capture = capture and options.get("concurrency") != "fork"
    try:
        config = build_config(proto=proto, address=address, verbose=2 if capture else 0, **options)
        return Server(config, capture, tmpdir)
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise


@contextlib.asynccontextmanager
async def serve_async(
    proto: str, address: str | None = None, **options: Any
) -> AsyncIterator[Server]:
    """`async with serve_async(...) as server`: `serve`, with the start and the stop run in
    a worker thread, so the event loop goes on meanwhile."""
    import asyncio
    import functools

    server = await asyncio.to_thread(functools.partial(serve, proto, address, **options))
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def _short_tmpdir() -> str:
    """A new temporary directory whose socket path fits AF_UNIX's ~108 bytes (TMPDIR may be
    long, as on macOS: /tmp then)."""
    folder = tempfile.mkdtemp(prefix="sockserve-")
    if len(folder) > 80 and os.path.isdir("/tmp"):
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="sockserve-", dir="/tmp")
    return folder


def _loaded_class(cls: type) -> LoadedHandler:
    kind = handler_kind(cls)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if kind is None:
        raise HandlerLoadError(
            f"{name} is not a handler class",
            hint="pass a subclass of socketserver.BaseRequestHandler, or an asyncio protocol "
            "with concurrency='event'",
        )
    return LoadedHandler(name=name, cls=cls, kind=kind)


class Server:
    """A running server of the API (see the module docstring); made by `serve`."""

    def __init__(self, config: ServeConfig, capture: bool, tmpdir: str | None = None) -> None:
        self.config = config
        self.capture = capture
        self._tmpdir = tmpdir
        self._recorder = Recorder(config.socktype)
        self._run = Run(config, self._recorder)
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._failure: BaseException | None = None
        self.status: int | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"sockserve {self.url}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.status = self._run.serve(signals=(), freeze=False)
        except BaseException as exc:  # raised again by stop()
            self._failure = exc

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<sockserve.Server {self.url} {state}>"

    # -- where it listens -------------------------------------------------------------------------
    @property
    def transport(self) -> str:
        """tcp, udp, unix or unix-dgram."""
        return self.config.transport

    @property
    def address(self) -> Any:
        """What to connect or send to: (host, port), or the unix socket's path."""
        sockaddr = self._run.server.server_address
        if isinstance(sockaddr, tuple):
            return sockaddr[:2]
        return sockaddr

    @property
    def host(self) -> str | None:
        """The bound host (tcp, udp), else None."""
        address = self.address
        return address[0] if isinstance(address, tuple) else None

    @property
    def port(self) -> int | None:
        """The bound port (tcp, udp; port 0 resolved), else None."""
        address = self.address
        return address[1] if isinstance(address, tuple) else None

    @property
    def path(self) -> str | None:
        """The unix socket's path (tcp, udp: None)."""
        address = self.address
        if isinstance(address, bytes):
            address = address.decode(errors="replace")
        return None if isinstance(address, tuple) else address

    @property
    def url(self) -> str:
        """tcp://127.0.0.1:PORT, unix:///PATH...: the server in one string."""
        if self.host is None:
            return f"{self.transport}://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"

    @property
    def ca_file(self) -> str | None:
        """The file of the CA that signed the server's TLS certificate; None without TLS."""
        tls = self._run.tls
        return None if tls is None else tls.ca_path

    # -- what it saw ------------------------------------------------------------------------------
    @property
    def connections(self) -> list[Connection]:
        """The connections (or datagrams) seen so far, oldest first."""
        with self._recorder.cond:
            return list(self._recorder.connections)

    @property
    def errors(self) -> list[HandlerError]:
        """The exceptions handlers raised so far (see `take_errors`)."""
        with self._recorder.cond:
            return list(self._recorder.errors)

    def take_errors(self) -> list[HandlerError]:
        """The handler errors so far, forgotten: a test that expects them takes them."""
        with self._recorder.cond:
            errors, self._recorder.errors[:] = list(self._recorder.errors), []
            return errors

    @property
    def lines(self) -> list[str]:
        """The lines the command would have printed on stderr (also logged to `sockserve`)."""
        with self._recorder.cond:
            return list(self._recorder.lines)

    def wait_for_connections(self, n: int = 1, timeout: float | None = 5.0) -> list[Connection]:
        """Wait until `n` connections (or datagrams) were seen; return them all.

        Raises TimeoutError after `timeout` seconds (None: no limit).
        """
        recorder = self._recorder
        with recorder.cond:
            if not recorder.cond.wait_for(lambda: len(recorder.connections) >= n, timeout):
                seen = len(recorder.connections)
                raise TimeoutError(f"{self.url}: {seen} of {n} connections after {timeout:g}s")
            return list(recorder.connections)

    def wait_for_data(
        self,
        pattern: bytes | str | re.Pattern[bytes],
        timeout: float | None = 5.0,
        direction: Direction = "in",
    ) -> Connection:
        """Wait until what one client sent (`direction` "in"; "out": what it was sent) holds
        `pattern`, bytes or text to find, or a compiled bytes regex; return its connection.

        Raises TimeoutError after `timeout` seconds (None: no limit).
        """
        if not self.capture:
            fork = self.config.concurrency == "fork"
            why = "runs in fork mode (the data stays in the children)" if fork else "capture=False"
            raise UsageError(
                f"wait_for_data needs the data: this server {why}",
                hint="use concurrency='thread' (the default for streams), or capture=True",
            )
        if isinstance(pattern, str):
            pattern = pattern.encode()
        if isinstance(pattern, re.Pattern) and not isinstance(pattern.pattern, bytes):
            raise TypeError("wait_for_data takes a bytes regex: re.compile(rb'...')")
        wanted = pattern

        def holds(data: bytearray) -> bool:
            if isinstance(wanted, bytes):
                return wanted in data
            return wanted.search(data) is not None

        recorder = self._recorder
        found: list[Connection] = []

        def matched() -> bool:
            for conn in recorder.connections:
                if holds(conn._in if direction == "in" else conn._out):
                    found.append(conn)
                    return True
            return False

        with recorder.cond:
            if not recorder.cond.wait_for(matched, timeout):
                raise TimeoutError(
                    f"{self.url}: no connection's data ({direction}) matched {pattern!r} "
                    f"after {timeout:g}s"
                )
        return found[0]

    # -- the stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop as the command does on Ctrl-C: no new clients, in-flight requests get `grace`
        seconds, then are aborted; return once everything is closed (the unix socket file and
        the temporary directory removed). Raises what the run raised, if it failed."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._run.stop("stopped")
        limit = self.config.grace + ABORT_WAIT + STOP_MARGIN
        self._thread.join(limit)
        if self._thread.is_alive():  # a sync handler that ignores the stop: cut it off
            shut_down_requests(self._run.server)
            self._thread.join(ABORT_WAIT)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.url}: the server did not stop within {limit:g}s")
        if self._failure is not None:
            raise self._failure

    @property
    def running(self) -> bool:
        """True until the server has stopped."""
        return self._thread.is_alive()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)
