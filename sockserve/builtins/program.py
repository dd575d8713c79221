"""The exec builtin: a program per connection (or per datagram), as tcpserver and inetd run one.

`--exec 'prog arg'` (split like argv, no shell) and `--sh-exec 'line'` (/bin/sh -c) make an
`ExecSpec`; `stream_program_handler` and `datagram_program_handler` make the request handler
classes that run it.

Streams: the connection is the program's standard input and output. When nothing watches the
bytes, the program gets the socket itself as descriptors 0 and 1 (no relay); on a watched
socket (-vv, faults: `sockserve.watch`) or a TLS one (ssl.SSLSocket) it gets pipes, and
sockserve relays them through that socket. Both ways keep half-close: the client's EOF is
the program's EOF on stdin, and everything the program wrote is delivered before the
connection closes (our write side is shut, then what the client still sends is read and
dropped until it closes or `LINGER_SECONDS` pass, so that no reset cuts the output off).

Datagrams: one run per datagram, the datagram on stdin; what the program writes to stdout
is the reply (nothing written: no reply; more than one datagram carries: not sent, a warning).

Each run ends with `exec_exit(client, status, seconds)` (status as Popen's returncode: the
exit status, or minus the signal that killed it). The program's stderr is passed on as
`exec_stderr` lines (pass), sent to the client with its stdout (client), or dropped (discard).

Every program runs in a process group other than sockserve's (Ctrl-C at a terminal reaches
sockserve only) and is listed in `PROGRAMS` while it lives. The run's stop calls the handler
class's `stop_programs`: SIGTERM at the first stop signal, SIGKILL when the grace period is
over (a forked request child escalates on each SIGTERM its parent sends).

Outside fork mode a program leads a group of its own. In fork mode its group bears the pid of
its request child (`spawn_in_child_group`), so that the parent, which knows that pid, kills
what is left of the group once the child is gone, however it ended
(`parts.program_groups.ProgramGroupsPart`, and the lifecycle's abort): a program never
outlives its request child. The program is started without a `preexec_fn`, which would make
Popen fork the whole request child (tens of MB) instead of vfork it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ..events import Events, address_of
from ..exec_command import ExecSpec
from ..socketserver import BaseRequestHandler
from ..watch import is_watched
from .cores import LINGER_SECONDS
from .program_env import program_env
from .shared import send_datagram

#: The chunks relayed between the socket and the program's pipes.
RELAY_CHUNK = 65536
#: The longest stderr line passed on as one event; a longer one is cut in pieces.
STDERR_LINE_MAX = 4096


# -- the live programs ----------------------------------------------------------------------------


class Programs:
    """The programs this process runs, each leading a process group, to stop them together.

    `stop(force)`: SIGTERM to each (force False), SIGKILL (True), or, with None, SIGTERM the
    first time and SIGKILL after. Safe from a signal handler: it only sends signals.
    """

    def __init__(self) -> None:
        self._live: dict[int, int] = {}  # program pid: its process group
        self.lock = threading.Lock()
        self.terminated = False

    def add(self, proc: subprocess.Popen[bytes], group: int) -> None:
        with self.lock:
            self._live[proc.pid] = group
        if self.terminated:  # started while the run stops: it is told at once
            _signal_group(group, signal.SIGTERM)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self._live.pop(proc.pid, None)

    def pids(self) -> list[int]:
        return list(self._live)

    def group_of(self, proc: subprocess.Popen[bytes]) -> int:
        return self._live.get(proc.pid, proc.pid)

    def groups(self) -> set[int]:
        return set(self._live.values())

    def stop(self, force: bool | None) -> bool:
        """Signal every live program; return True if it was a SIGTERM (not a kill)."""
        if force is None:
            force = self.terminated
        self.terminated = True
        sig = signal.SIGKILL if force else signal.SIGTERM
        for group in self.groups():
            _signal_group(group, sig)
        return not force


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):  # gone already
        os.killpg(pid, sig)


#: This process's programs (a forked request child has its own copy, emptied at fork).
PROGRAMS = Programs()


def _forget_programs() -> None:
    """After fork, in the child: its parent's programs are not its own."""
    global PROGRAMS
    PROGRAMS = Programs()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_programs)


class StartFailed(Exception):
    """The program could not be started (it vanished, or lost its execute permission)."""


def spawn(spec: ExecSpec, env: dict[str, str], stdin: Any, stdout: Any, stderr: Any) -> Any:
    """Start the program in a process group other than sockserve's, listed in `PROGRAMS`:
    a group of its own, or in fork mode the one that bears its request child's pid.

    Raises StartFailed with the reason.
    """
    stdio = (stdin, stdout, stderr)
    if spec.forked:
        proc = spawn_in_child_group(spec, env, stdio)
        group = os.getpid()
    else:
        proc = _popen(spec, env, stdio, process_group=0)
        group = proc.pid
    PROGRAMS.add(proc, group)
    return proc


def _popen(spec: ExecSpec, env: dict[str, str], stdio: tuple[Any, ...], **options: Any) -> Any:
    stdin, stdout, stderr = stdio
    try:
        return subprocess.Popen(
            spec.argv,
            executable=spec.executable,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            **options,
        )
    except OSError as exc:
        raise StartFailed(f"cannot start {spec.command}: {exc.strerror or exc}") from None


def spawn_in_child_group(spec: ExecSpec, env: dict[str, str], stdio: tuple[Any, ...]) -> Any:
    """In a request child: start the program in the process group that bears this child's
    pid, which the child leads for the start only, then leaves for its former group. The
    group then holds only programs: the child signals them there without signalling itself,
    and the parent kills what is left of it when the child is gone (`ProgramGroupsPart`).

    No preexec_fn (PR_SET_PDEATHSIG): Popen would fork this whole process, not vfork it
    (see benchmarks/RESULTS.md)."""
    home = os.getpgrp()
    os.setpgid(0, 0)
    try:
        return _popen(spec, env, stdio)  # the program inherits the group
    finally:
        with contextlib.suppress(OSError):  # sockserve's group: gone only with sockserve
            os.setpgid(0, home)


def stop_programs(server: Any, force: bool | None) -> bool:
    """The run stops: signal this process's programs (see `Programs.stop`); a fork-mode
    parent passes a SIGTERM on to its request children. True if the programs were only told
    (SIGTERM): their connections stay open."""
    told = PROGRAMS.stop(force)
    if force is False:
        for pid in list(getattr(server, "active_children", None) or ()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    return told


# -- stderr ---------------------------------------------------------------------------------------


def pass_lines(fd: int, tell: Callable[[bytes], None]) -> None:
    """Read `fd` to its end, telling each line (without its end of line; at most
    STDERR_LINE_MAX bytes, a longer one in pieces)."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, RELAY_CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _tell_line(line, tell)
        while len(pending) > STDERR_LINE_MAX:
            tell(pending[:STDERR_LINE_MAX])
            pending = pending[STDERR_LINE_MAX:]
    if pending:
        _tell_line(pending, tell)


def _tell_line(line: bytes, tell: Callable[[bytes], None]) -> None:
    line = line.removesuffix(b"\r")
    for start in range(0, max(len(line), 1), STDERR_LINE_MAX):
        tell(line[start : start + STDERR_LINE_MAX])


# -- the handlers --------------------------------------------------------------------------------


class ProgramHandler(BaseRequestHandler):
    """Base of the exec handlers: the spec, the events, the stop of the programs.

    `takes_client`: the server hands it the peer as an `events.Client` (its events carry the
    connection id, and so does the program's SOCKSERVE_CONN).
    """

    spec: ClassVar[ExecSpec]
    events: ClassVar[Events | None] = None
    takes_client: ClassVar[bool] = True

    @classmethod
    def stop_programs(cls, server: Any, force: bool | None) -> bool:
        """See `stop_programs`; the lifecycle calls it on the handler class."""
        return stop_programs(server, force)

    @classmethod
    def tell_stderr(cls, client: Any) -> Callable[[bytes], None]:
        events = cls.events

        def tell(line: bytes) -> None:
            if events is not None:
                events.exec_stderr(client, line)

        return tell

    @classmethod
    def stderr_target(cls, to_client: Any) -> Any:
        """Where the program's stderr goes: a pipe (pass), the client, or nowhere."""
        mode = cls.spec.stderr
        if mode == "pass":
            return subprocess.PIPE
        if mode == "client":
            return to_client
        return subprocess.DEVNULL

    @classmethod
    def end_run(cls, proc: Any, client: Any, started: float) -> None:
        """Reap the program (killing it first if it still runs: an abort), report its end."""
        try:
            if proc.poll() is None:
                _signal_group(PROGRAMS.group_of(proc), signal.SIGKILL)
            status = proc.wait()
        finally:
            PROGRAMS.discard(proc)
        if cls.events is not None:
            cls.events.exec_exit(client, status, time.monotonic() - started)

    @classmethod
    def failed(cls, client: Any, exc: StartFailed) -> None:
        if cls.events is not None:
            cls.events.warning(f"{exc} (client {_client_text(client)}: closed)")


def _with_conn(env: dict[str, str], client: Any) -> dict[str, str]:
    """`env` with SOCKSERVE_CONN, the connection id the events carry, when there is one."""
    conn = getattr(client, "id", None)
    if conn is not None:
        env["SOCKSERVE_CONN"] = str(conn)
    return env


def _client_text(client: Any) -> str:
    from ..console import format_client

    return format_client(client)


class StreamProgram(ProgramHandler):
    """Run the program with the connection as its stdin and stdout."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        spec = self.spec
        client = self.client_address
        env = _with_conn(
            program_env(
                spec.transport,
                _sockname(sock),
                _peername(sock, address_of(client)),
                _client_text(address_of(client)),
                sock if spec.transport == "unix" else None,
            ),
            client,
        )
        watch = getattr(sock, "watch", None)
        ssl = sys.modules.get("ssl")  # a TLS connection's bytes are not the socket's: relayed
        tls = ssl is not None and isinstance(sock, ssl.SSLSocket)
        relay = (
            tls
            or is_watched(sock)
            and (
                watch is None
                or watch.reports
                or watch.inbound.next is not None
                or watch.outbound.next is not None
            )
        )
        started = time.monotonic()
        try:
            if relay:
                self.run_relayed(sock, env, client, started)
            else:
                self.run_direct(sock, env, client, started)
        except StartFailed as exc:
            self.failed(client, exc)

    def run_direct(
        self, sock: socket.socket, env: dict[str, str], client: Any, started: float
    ) -> None:
        """The program reads and writes the socket itself."""
        if sock.gettimeout() is not None:
            sock.settimeout(None)  # its descriptor must block for the program
        fd = sock.fileno()
        proc = spawn(self.spec, env, fd, fd, self.stderr_target(fd))
        try:
            if proc.stderr is not None:
                with proc.stderr:
                    pass_lines(proc.stderr.fileno(), self.tell_stderr(client))
            proc.wait()
        finally:
            self.end_run(proc, client, started)
        snapshot = getattr(sock, "snapshot", None)  # kernel counts (TCP): what the program had
        if snapshot is not None:
            snapshot()
        linger(sock)

    def run_relayed(
        self, sock: socket.socket, env: dict[str, str], client: Any, started: float
    ) -> None:
        """The program has pipes; we move the bytes through the (watched) socket."""
        stderr = subprocess.STDOUT if self.spec.stderr == "client" else self.stderr_target(None)
        proc = spawn(self.spec, env, subprocess.PIPE, subprocess.PIPE, stderr)
        threads = [threading.Thread(target=relay_in, args=(sock, proc.stdin), daemon=True)]
        if proc.stderr is not None:
            threads.append(
                threading.Thread(
                    target=_pass_and_close,
                    args=(proc.stderr, self.tell_stderr(client)),
                    daemon=True,
                )
            )
        for thread in threads:
            thread.start()
        try:
            relay_out(proc.stdout, sock)
            proc.wait()
        finally:
            self.end_run(proc, client, started)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            threads[0].join(LINGER_SECONDS)  # what the client still sends is read and dropped
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # it did not close: stop reading
            for thread in threads:
                thread.join()


def _pass_and_close(pipe: Any, tell: Callable[[bytes], None]) -> None:
    with pipe:
        pass_lines(pipe.fileno(), tell)


def _sockname(sock: socket.socket) -> Any:
    try:
        return sock.getsockname()
    except OSError:
        return None


def _peername(sock: socket.socket, client: Any) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return client


def relay_in(sock: socket.socket, stdin: Any) -> None:
    """Socket to the program's stdin; at the client's EOF, close stdin. Once the program
    takes no more, what the client sends is read and dropped until it closes."""
    fd = stdin.fileno()
    open_ = True
    try:
        while True:
            try:
                data = sock.recv(RELAY_CHUNK)
            except OSError:
                return
            if not data:
                return
            if open_:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError:  # the program closed stdin or ended
                    open_ = False
                    stdin.close()
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def relay_out(stdout: Any, sock: socket.socket) -> None:
    """The program's stdout to the socket, until the program closes it (or the client goes)."""
    with stdout:
        fd = stdout.fileno()
        while data := os.read(fd, RELAY_CHUNK):
            try:
                sock.sendall(data)
            except OSError:  # the client is gone: the program gets EPIPE on its next write
                return


def linger(sock: socket.socket) -> None:
    """Shut our write side (the output is all sent), then read and drop what the client
    still sends until it closes, or LINGER_SECONDS pass: a close with unread input would
    reset the connection and could lose the output the client has not read yet."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    if PROGRAMS.terminated:  # the run stops: no waiting for the client
        return
    deadline = time.monotonic() + LINGER_SECONDS
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(RELAY_CHUNK):
                return
    except OSError:  # timed out, reset: either way it is over
        return


class DatagramProgram(ProgramHandler):
    """One run per datagram: the datagram on stdin, the program's stdout as the reply."""

    def handle(self) -> None:
        data, sock = self.request
        self.serve_datagram(data, sock, self.client_address)

    @classmethod
    def serve_datagram(cls, data: Any, sock: Any, client: Any) -> None:
        """Run the program for one datagram `data` from `client`, send back its output."""
        spec = cls.spec
        address = address_of(client)  # a `Client` (its id for the events) or the address
        env = program_env(spec.transport, _sockname(sock), address, _client_text(address), None)
        env = _with_conn(env, client)
        stderr = subprocess.STDOUT if spec.stderr == "client" else cls.stderr_target(None)
        started = time.monotonic()
        sent = 0
        try:
            proc = spawn(spec, env, subprocess.PIPE, subprocess.PIPE, stderr)
        except StartFailed as exc:
            cls.failed(client, exc)
            return
        try:
            reader = None
            if proc.stderr is not None:
                reader = threading.Thread(
                    target=_pass_and_close, args=(proc.stderr, cls.tell_stderr(client)), daemon=True
                )
                reader.start()
            with contextlib.suppress(OSError), proc.stdin:  # it may not read it all
                proc.stdin.write(data)
            reply, whole = read_reply(proc.stdout, spec.reply_limit)
            proc.wait()
            if reader is not None:
                reader.join()
        finally:
            cls.end_run(proc, client, started)
        if not whole:
            if cls.events is not None:
                cls.events.warning(
                    f"{spec.command} wrote more than one datagram carries (at most "
                    f"{spec.reply_limit} bytes) for {_client_text(client)}: no reply sent"
                )
        elif reply and address:
            sent = send_datagram(sock, reply, address)
        if cls.events is not None and cls.events.wants_counts:
            cls.events.record(client, len(data), sent)


def read_reply(stdout: Any, limit: int) -> tuple[bytes, bool]:
    """Read the program's output, up to `limit` bytes; (output, False) if it wrote more
    (the pipe is then closed: a program still writing gets EPIPE)."""
    with stdout:
        fd = stdout.fileno()
        chunks = []
        size = 0
        while size <= limit and (chunk := os.read(fd, RELAY_CHUNK)):
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks), size <= limit


def _prepared(spec: ExecSpec) -> ExecSpec:
    """`spec` with its program found in PATH once (not at each start); in fork mode, json
    loaded here (each request child sends its events in it), not in the first children."""
    if spec.forked:
        import json  # noqa: F401
    if spec.executable is None and os.sep not in spec.argv[0]:
        import dataclasses
        import shutil

        spec = dataclasses.replace(spec, executable=shutil.which(spec.argv[0]))
    return spec


def stream_program_handler(spec: ExecSpec, events: Events | None) -> type[BaseRequestHandler]:
    """A request handler class for stream servers that runs `spec` per connection."""
    attrs = {"spec": _prepared(spec), "events": events, "__module__": __name__}
    return type("ExecStreamHandler", (StreamProgram,), attrs)


def datagram_program_handler(spec: ExecSpec, events: Events | None) -> type[BaseRequestHandler]:
    """A request handler class for datagram servers that runs `spec` per datagram."""
    attrs = {"spec": _prepared(spec), "events": events, "__module__": __name__}
    return type("ExecDatagramHandler", (DatagramProgram,), attrs)
