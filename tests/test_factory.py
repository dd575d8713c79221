"""factory: server classes for every family × type × concurrency, unix paths, bind errors."""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import sockserve as ss
from sockserve.errors import EnvironmentProblem
from sockserve.factory import ToolServerMixIn, prepare_unix_path, server_class

pytestmark = pytest.mark.leakcheck

FAMILIES = ["inet", "inet6", "unix"]
TYPES = ["stream", "dgram"]
CONCURRENCIES = ["sync", "thread", "fork", "event"]

ROOT = Path(__file__).resolve().parent.parent
#: A user's handler file, named absolutely (whatever directory pytest runs from).
USER_HANDLER = str(ROOT / "examples" / "handler_stream.py")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("socktype", TYPES)
@pytest.mark.parametrize("concurrency", CONCURRENCIES)
def test_server_class_composition(family: str, socktype: str, concurrency: str) -> None:
    cls = server_class(family, socktype, concurrency)
    base = {
        ("inet", "stream"): ss.TCPServer,
        ("inet6", "stream"): ss.TCPServer,
        ("inet", "dgram"): ss.UDPServer,
        ("inet6", "dgram"): ss.UDPServer,
        ("unix", "stream"): ss.UnixStreamServer,
        ("unix", "dgram"): ss.UnixDatagramServer,
    }[(family, socktype)]
    assert issubclass(cls, base)
    assert issubclass(cls, ToolServerMixIn)
    assert cls.__mro__[1] is ToolServerMixIn or cls.__mro__[0] is not ToolServerMixIn
    assert issubclass(cls, ss.ThreadingMixIn) == (concurrency == "thread")
    assert issubclass(cls, ss.ForkingMixIn) == (concurrency == "fork")
    expected_family = {
        "inet": socket.AF_INET,
        "inet6": socket.AF_INET6,
        "unix": socket.AF_UNIX,
    }[family]
    assert cls.address_family == expected_family
    expected_type = socket.SOCK_STREAM if socktype == "stream" else socket.SOCK_DGRAM
    assert cls.socket_type == expected_type
    assert cls.max_packet_size >= 65536  # the tool never truncates a datagram


def test_stale_socket_file_is_replaced(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # the file stays: nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    prepare_unix_path(path, socket.SOCK_STREAM)
    assert not os.path.exists(path)


def test_live_socket_is_refused(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(EnvironmentProblem, match="already in use"):
            prepare_unix_path(path, socket.SOCK_STREAM)
        assert os.path.exists(path)
    finally:
        live.close()


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo"])
def test_non_socket_paths_are_never_deleted(sock_dir: str, kind: str) -> None:
    path = os.path.join(sock_dir, "s")
    if kind == "file":
        with open(path, "w") as f:
            f.write("precious")
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "symlink":
        target = os.path.join(sock_dir, "target")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(target)
        stale.close()
        os.symlink(target, path)
    else:
        os.mkfifo(path)
    with pytest.raises(EnvironmentProblem, match="refusing to replace"):
        prepare_unix_path(path, socket.SOCK_STREAM)
    assert os.path.lexists(path)
    if kind == "file":
        with open(path) as f:
            assert f.read() == "precious"


def _unix_server(path: str, mode: int | None):
    cls = server_class("unix", "stream", "sync")
    cls = type("S", (cls,), {"unix_mode": mode})
    return cls(path, ss.BaseRequestHandler)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o777])
def test_unix_mode_is_applied_and_file_removed_on_close(sock_dir: str, mode: int) -> None:
    path = os.path.join(sock_dir, "s")
    seen: list[int] = []
    real_bind = socket.socket.bind

    def spy_bind(self, addr):  # the mode right after bind: never wider than asked
        real_bind(self, addr)
        if addr == path:
            seen.append(stat.S_IMODE(os.lstat(path).st_mode))

    old_umask = os.umask(0)  # the most permissive umask: --mode must not rely on it
    try:
        socket.socket.bind = spy_bind
        server = _unix_server(path, mode)
    finally:
        socket.socket.bind = real_bind
        os.umask(old_umask)
    try:
        assert seen and seen[0] & ~mode == 0
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
    finally:
        server.server_close()
    assert not os.path.exists(path)


def test_server_close_leaves_a_replaced_file_alone(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    server = _unix_server(path, None)
    os.unlink(path)
    with open(path, "w") as f:
        f.write("someone else's")
    server.server_close()
    assert os.path.exists(path)


def test_request_stop_from_a_handler_thread_returns_fast() -> None:
    cls = server_class("inet", "stream", "thread")
    entered = threading.Event()

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            self.server.request_stop("handler asked")
            entered.set()

    with cls(("127.0.0.1", 0), Handler) as server:
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 30})
        t.start()
        with socket.create_connection(server.server_address, timeout=5):
            assert entered.wait(5)
        t.join(5)
        assert not t.is_alive()
        assert server.stop_reason == "handler asked"


def _config(captured: list, *args: str):
    """The ServeConfig the command builds for ARGS (with the `captured` fixture in place)."""
    from click.testing import CliRunner

    from sockserve import cli

    result = CliRunner().invoke(cli.main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return captured[-1]


@pytest.mark.parametrize(
    ("args", "inline"),
    [
        (["udp", ":0", "-H", "echo", "-c", "thread"], True),
        (["udp", ":0", "-H", "time", "-c", "thread"], True),
        (["udp", ":0", "-H", "stdout", "-c", "thread"], False),  # a stalled reader may block
        (["udp", ":0", "-H", "echo", "-c", "sync"], False),
        (["udp", ":0", "-H", "stdio", "-c", "thread"], False),
        (["tcp", ":0", "-H", "echo", "-c", "thread"], False),
    ],
)
def test_datagram_builtins_that_never_wait_run_inline_in_thread_mode(
    args: list[str], inline: bool, monkeypatch: pytest.MonkeyPatch, captured: list
) -> None:
    from sockserve import builtins as bh
    from sockserve.factory import make_server

    config = _config(captured, *args)
    threaded: list[object] = []
    original = ss.ThreadingMixIn.process_request

    def spy(self, request, client_address):  # type: ignore[no-untyped-def]
        threaded.append(client_address)
        return original(self, request, client_address)

    monkeypatch.setattr(ss.ThreadingMixIn, "process_request", spy)
    make = bh.datagram_handler if config.socktype == "dgram" else bh.stream_handler
    server = make_server(config, make(config.handler.builtin, bh.HandlerOptions()))
    assert server.inline_requests is inline
    if config.transport != "udp" or config.handler.builtin != "echo" or not inline:
        server.server_close()
        return
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for i in range(20):
                client.sendto(b"n%d" % i, server.server_address)
                assert client.recv(100) == b"n%d" % i
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert threaded == []  # every datagram answered on the loop thread, none handed to a thread


@pytest.mark.parametrize(
    ("args", "lean"),
    [
        (["udp", ":0", "-H", "echo", "-c", "sync"], True),
        (["udp", ":0", "-H", "stdout", "-c", "sync"], True),
        (["udp", ":0", "-H", "upper", "-c", "thread"], True),  # inline in thread mode
        (["udp", ":0", "-H", "stdout", "-c", "thread"], False),  # a thread per datagram
        (["tcp", ":0", "-H", "echo", "-c", "sync"], False),
    ],
)
def test_lean_datagram_path_is_chosen_for_builtins_on_the_loop_thread(
    args: list[str], lean: bool, captured: list
) -> None:
    from sockserve import builtins as bh
    from sockserve.factory import make_server

    config = _config(captured, *args)
    make = bh.datagram_handler if config.socktype == "dgram" else bh.stream_handler
    server = make_server(config, make(config.handler.builtin, bh.HandlerOptions()))
    server.server_close()
    assert server.lean_datagrams is lean


def _burst_server(captured: list, *extra: str):
    """A sync UDP echo server (lean path) with its observer; not yet serving."""
    from clitools import RecordsObserver

    from sockserve import builtins as bh
    from sockserve.factory import make_server

    config = _config(captured, "udp", "127.0.0.1:0", "-H", "echo", "-c", "sync", *extra)
    observer = RecordsObserver()
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    return make_server(config, handler), observer


def _send_burst(server: ToolServerMixIn, client: socket.socket, count: int) -> None:
    """Queue `count` datagrams on the server before its loop runs, so one wake-up sees all."""
    for i in range(count):
        client.sendto(b"d%03d" % i, server.server_address)


def test_a_burst_of_datagrams_is_answered_in_batches_every_one_once(captured: list) -> None:
    server, observer = _burst_server(captured)
    assert server.datagram_batch > 1
    count = server.datagram_batch * 3 + 5  # several batches and a partial one
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        _send_burst(server, client, count)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            got = sorted(client.recv(100) for _ in range(count))
        finally:
            server.shutdown()
            thread.join()
            server.server_close()
    assert got == [b"d%03d" % i for i in range(count)]
    assert server.requests_started == count
    assert len(observer.records) == count


@pytest.mark.parametrize("limit", [1, 3])
def test_request_limit_is_exact_when_more_datagrams_wait(captured: list, limit: int) -> None:
    extra = ("--once",) if limit == 1 else ("--max-requests", str(limit))
    server, observer = _burst_server(captured, *extra)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.bind(("127.0.0.1", 0))
        _send_burst(server, client, 10)
        thread = threading.Thread(target=server.serve_forever, args=(30,))
        thread.start()
        thread.join(5)  # the limit stops the loop by itself, well before poll_interval
        stopped = not thread.is_alive()
        if not stopped:
            server.shutdown()
            thread.join()
        server.server_close()
        answers = [client.recv(100) for _ in range(limit)]
        client.settimeout(0.05)
        with pytest.raises(TimeoutError):
            client.recv(100)  # the other datagrams were left unanswered
    assert stopped
    assert server.stop_reason == "request limit reached"
    assert answers == [b"d%03d" % i for i in range(limit)]
    assert server.requests_started == limit
    assert len(observer.records) == limit


@pytest.mark.parametrize(
    ("args", "reuse", "batch", "accepting_threads"),
    [
        (["tcp", ":0", "-H", "echo"], True, 1, True),
        (["tcp", ":0", "-H", "echo", "--max-threads", "4"], True, 1, True),  # the bound
        (["tcp", ":0", "-H", "echo", "--workers", "2"], True, 16, False),  # shared listener
        (["tcp", ":0", "-H", USER_HANDLER], False, 16, False),  # a user's
        (["tcp", ":0", "-H", "echo", "-c", "sync"], True, 1, False),
        (["tcp", ":0", "-H", "echo", "-c", "fork"], True, 16, False),  # a fork per connection
        (["tcp", ":0", "-H", USER_HANDLER, "-c", "fork"], False, 16, False),
        (["udp", ":0", "-H", "stdout", "-c", "thread"], True, 1, False),
        (["udp", ":0", "-H", "echo", "-c", "fork"], True, 1, False),
    ],
)
def test_how_thread_mode_takes_connections(
    args: list[str], reuse: bool, batch: int, accepting_threads: bool, captured: list
) -> None:
    """Builtins: handler threads accept for themselves; otherwise the loop accepts (up to 16
    waiting connections per wake-up) and hands each over; builtins' threads are reused."""
    from sockserve import builtins as bh
    from sockserve.factory import make_server

    config = _config(captured, *args)
    if config.handler.builtin is None:
        handler = config.handler.cls
    elif config.socktype == "dgram":
        handler = bh.datagram_handler(config.handler.builtin, bh.HandlerOptions())
    else:
        handler = bh.stream_handler(config.handler.builtin, bh.HandlerOptions())
    server = make_server(config, handler)
    try:
        assert (server.reuse_threads, server.accept_batch) == (reuse, batch)
        assert server.threads_accept is accepting_threads
        assert server.loop_handles_requests is not accepting_threads
        assert server.socket.getblocking() is (batch == 1)
    finally:
        server.server_close()


def _make_accepting_server(captured: list, *extra: str) -> ToolServerMixIn:
    """A thread-mode TCP echo server whose handler threads accept (not serving yet)."""
    from clitools import RecordsObserver

    from sockserve import builtins as bh
    from sockserve.factory import make_server

    config = _config(captured, "tcp", "127.0.0.1:0", "-H", "echo", *extra)
    handler = bh.stream_handler("echo", bh.HandlerOptions(observer=RecordsObserver()))
    server = make_server(config, handler)
    assert server.threads_accept
    return server


def _accepting_server(captured: list, *extra: str) -> tuple[ToolServerMixIn, threading.Thread]:
    """A thread-mode TCP echo server whose handler threads accept (serving, in a thread)."""
    server = _make_accepting_server(captured, *extra)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    return server, thread


def _stop(server: ToolServerMixIn, thread: threading.Thread) -> float:
    start = time.monotonic()
    server.shutdown()
    thread.join(5)
    stopped = not thread.is_alive()
    server.server_close()
    assert stopped, "serve_forever did not return after shutdown()"
    return time.monotonic() - start


def _echo_hi(server: ToolServerMixIn) -> None:
    """One connection to a serving echo server: "hi" comes back."""
    with socket.create_connection(server.server_address, timeout=5) as sock:  # type: ignore[attr-defined]
        sock.sendall(b"hi")
        assert sock.recv(10) == b"hi"


def _accept_threads() -> set[threading.Thread]:
    """This process's threads running `_accept_and_serve` (of whichever server)."""
    return {t for t in threading.enumerate() if t.name.endswith("(_accept_and_serve)")}


def test_accepting_threads_never_make_a_connection_wait(captured: list) -> None:
    """Twelve connections held open at once (more than idle_acceptors), then a thirteenth:
    it is answered at once, so a thread was always waiting in accept."""
    server, thread = _accepting_server(captured)
    held: list[socket.socket] = []
    try:
        for i in range(12):
            sock = socket.create_connection(server.server_address, timeout=5)
            held.append(sock)
            sock.sendall(b"%d" % i)
            assert sock.recv(10) == b"%d" % i  # each is being served, in its own thread
        with socket.create_connection(server.server_address, timeout=5) as last:
            last.sendall(b"last")
            assert last.recv(10) == b"last"
        assert len(_accept_threads()) >= 13
    finally:
        for sock in held:
            sock.close()
        took = _stop(server, thread)
    assert took < 2.0, f"stop took {took:.3f}s"
    assert not _accept_threads()


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU affinity needs Linux and two CPUs allowed",
)


@needs_two_cpus
def test_accepting_threads_stay_on_one_cpu(captured: list) -> None:
    """The builtins' threads run on the CPU the loop started on; the loop's thread gets its
    CPUs back when serve_forever returns."""
    before = os.sched_getaffinity(0)
    server = _make_accepting_server(captured)
    seen: dict[str, set[int]] = {}

    def serve() -> None:
        seen["loop before"] = os.sched_getaffinity(0)
        server.serve_forever(0.05)
        seen["loop after"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"  # a thread has served it; another waits in accept
            cpus = {frozenset(os.sched_getaffinity(t.native_id)) for t in _accept_threads()}
    finally:
        _stop(server, thread)
    assert len(cpus) == 1, cpus  # every accepting thread, the same CPU
    (cpu_set,) = cpus
    assert len(cpu_set) == 1 and cpu_set <= before
    assert seen == {"loop before": before, "loop after": before}
    assert os.sched_getaffinity(0) == before  # this thread was never touched


@needs_two_cpus
def test_a_thread_on_one_cpu_already_is_left_alone() -> None:
    from sockserve.factory import _restore_cpus, _stay_on_this_cpu

    results: list[object] = []

    def pinned() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        results.append(_stay_on_this_cpu())

    def free() -> None:
        cpus = os.sched_getaffinity(0)
        results.append(_stay_on_this_cpu() == cpus and len(os.sched_getaffinity(0)) == 1)
        _restore_cpus(cpus)
        results.append(os.sched_getaffinity(0) == cpus)

    for target in (pinned, free):
        t = threading.Thread(target=target)
        t.start()
        t.join(5)
    assert results == [None, True, True]


def _cpus_a_user_handler_sees(captured: list, *extra: str) -> tuple[set[int], set[int]]:
    """Serve one connection with a handler of the user's in thread mode; return the CPUs its
    thread had, and those of the loop's thread after serve_forever."""
    from sockserve.factory import make_server

    config = _config(captured, "tcp", "127.0.0.1:0", "-H", USER_HANDLER, *extra)
    server = make_server(config, config.handler.cls)
    assert not server.threads_accept
    affinity: list[set[int]] = []
    after: list[set[int]] = []
    orig = server.RequestHandlerClass

    class Probe(orig):  # type: ignore[misc, valid-type]
        def handle(self) -> None:
            affinity.append(os.sched_getaffinity(0))
            super().handle()

    def serve() -> None:
        server.serve_forever(0.05)
        after.append(os.sched_getaffinity(0))

    server.RequestHandlerClass = Probe
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"hi\n")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100)
    finally:
        _stop(server, thread)
    assert len(affinity) == 1
    return affinity[0], after[0]


@needs_two_cpus
def test_user_handler_threads_keep_every_cpu(captured: list) -> None:
    """A handler of your own may run code that leaves the GIL (hashing, compression): by
    default its threads keep the CPUs they had."""
    assert _cpus_a_user_handler_sees(captured) == (os.sched_getaffinity(0),) * 2


@needs_two_cpus
def test_pin_keeps_user_handler_threads_on_one_cpu(captured: list) -> None:
    """--pin: the handler's thread runs on one CPU; the loop's thread has its CPUs back."""
    cpus = os.sched_getaffinity(0)
    seen, after = _cpus_a_user_handler_sees(captured, "--pin")
    assert len(seen) == 1 and seen <= cpus
    assert after == cpus


@needs_two_cpus
def test_no_pin_leaves_the_builtins_threads_every_cpu(captured: list) -> None:
    cpus = os.sched_getaffinity(0)
    server, thread = _accepting_server(captured, "--no-pin")
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            seen = {frozenset(os.sched_getaffinity(t.native_id)) for t in _accept_threads()}
    finally:
        _stop(server, thread)
    assert seen == {frozenset(cpus)}


@pytest.mark.parametrize(
    ("extra", "gil", "pinned"),
    [
        ((), True, True),  # the builtins: pinned by default
        ((), False, False),  # ... but not when threads run in parallel (free-threaded)
        (("--pin",), False, True),  # asked for: pinned all the same
        (("--no-pin",), True, False),
        (("--workers", "2"), True, False),  # workers: one listener, not pinned
    ],
)
def test_which_servers_pin_their_threads(
    captured: list,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    gil: bool,
    pinned: bool,
) -> None:
    from sockserve import builtins as bh
    from sockserve.factory import make_server

    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: gil, raising=False)
    config = _config(captured, "tcp", "127.0.0.1:0", "-H", "echo", *extra)
    server = make_server(config, bh.stream_handler("echo", bh.HandlerOptions()))
    try:
        assert server.pin_threads is pinned
    finally:
        server.server_close()


def test_idle_accepting_threads_are_trimmed_to_one(captured: list) -> None:
    """After a burst, a whole poll interval with no connection ends the threads beyond one
    (the loop connects to itself once per thread to end); the next client is still served."""
    server, thread = _accepting_server(captured)
    try:
        with ExitStack() as stack:
            held = [
                stack.enter_context(socket.create_connection(server.server_address, timeout=5))
                for _ in range(6)
            ]
            for sock in held:
                sock.sendall(b"x")
                assert sock.recv(10) == b"x"
                sock.close()
        deadline = time.monotonic() + 5
        while len(_accept_threads()) > 1:  # a /proc-like figure: no event to wait on
            assert time.monotonic() < deadline, f"{len(_accept_threads())} threads left"
            time.sleep(0.01)
        assert server._acceptors.ready == 1
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"after")
            assert sock.recv(10) == b"after"
        served = server.requests_started
    finally:
        _stop(server, thread)
    assert served == 7  # the loop's own wake-up connections are not counted


def test_accepting_threads_keep_the_request_limit_exact(captured: list) -> None:
    server, thread = _accepting_server(captured, "--max-requests", "3")
    clients: list[socket.socket] = []
    try:
        for _ in range(6):
            try:
                sock = socket.create_connection(server.server_address, timeout=5)
            except OSError:
                continue  # the third connection stopped the server: refused
            clients.append(sock)
            try:
                sock.sendall(b"n")
            except OSError:
                continue  # refused after all: reset (its recv fails or finds no answer)
        thread.join(5)  # the limit stops the loop by itself
        assert not thread.is_alive()
        answered = 0
        for sock in clients:
            try:
                answered += sock.recv(10) == b"n"
            except OSError:
                pass  # refused: reset, or the listener shut down
    finally:
        for sock in clients:
            sock.close()
        if thread.is_alive():  # a failed check: stop the loop before closing under it
            server.shutdown()
            thread.join(5)
        server.server_close()
    assert server.stop_reason == "request limit reached"
    assert server.requests_started == 3
    assert answered == 3


@pytest.mark.parametrize("concurrency", ["sync", "thread"])
def test_builtin_connections_get_nodelay_from_the_listener(
    captured: list, concurrency: str
) -> None:
    """TCP_NODELAY is set once on the listener; accepted connections have it without a call."""
    from sockserve import builtins as bh
    from sockserve.factory import make_server

    seen: list[int] = []
    set_here: list[bool] = []

    class Probe(bh.stream_handler("echo", bh.HandlerOptions())):  # type: ignore[misc]
        def setup(self) -> None:
            calls: list[tuple] = []
            self.request = _Spy(self.request, calls)
            super().setup()
            self.request = self.request.sock
            set_here.append(any(c[1] == socket.TCP_NODELAY for c in calls))

        def serve(self, sock: socket.socket) -> None:
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            super().serve(sock)

    config = _config(captured, "tcp", "127.0.0.1:0", "-H", "echo", "-c", concurrency)
    server = make_server(config, Probe)
    assert server.nodelay_inherited is sys.platform.startswith("linux")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        _echo_hi(server)
    finally:
        _stop(server, thread)
    assert seen and seen[0] != 0
    assert set_here == [not server.nodelay_inherited]


class _Spy:
    """A socket stand-in for `setup`: records setsockopt calls, passes everything on."""

    def __init__(self, sock: socket.socket, calls: list[tuple]) -> None:
        self.sock = sock
        self.calls = calls

    def setsockopt(self, *args: object) -> None:
        self.calls.append(args)
        self.sock.setsockopt(*args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


# -- a user handler's TCP byte counts, from the kernel ---------------------------------------------

needs_kernel_counts = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="TCP_INFO byte counts are Linux's"
)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        try:
            server, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    server.settimeout(5)
    return server, client


@needs_kernel_counts
@pytest.mark.parametrize("client_closes", [False, True])
def test_kernel_counts_what_the_handler_read_and_wrote(client_closes: bool) -> None:
    from sockserve.factory import _kernel_counts_work, _tcp_byte_counts

    server, client = _tcp_pair()
    with server, client:
        assert _kernel_counts_work(server)
        client.sendall(b"0123456789")
        if client_closes:
            client.shutdown(socket.SHUT_WR)  # its FIN takes a sequence number, not a byte
        assert server.recv(4) == b"0123"  # six bytes left unread
        server.sendall(b"abc")
        assert client.recv(10) == b"abc"
        assert _tcp_byte_counts(server) == (4, 3)
        assert server.recv(100) == b"456789"
        if client_closes:
            assert server.recv(100) == b""
        assert _tcp_byte_counts(server) == (10, 3)


@needs_kernel_counts
def test_kernel_counts_include_what_is_still_queued_to_send() -> None:
    from sockserve.factory import _tcp_byte_counts

    server, client = _tcp_pair()
    with server, client:
        server.setblocking(False)
        sent = 0
        try:
            while True:  # until the client's window and our send buffer are full
                sent += server.send(b"x" * 65536)
        except BlockingIOError:
            pass
        assert _tcp_byte_counts(server) == (0, sent)


@needs_kernel_counts
def test_kernel_counts_after_the_client_reset() -> None:
    from sockserve.factory import _tcp_byte_counts

    server, client = _tcp_pair()
    with server, client:
        client.sendall(b"hello")
        assert server.recv(5, socket.MSG_WAITALL) == b"hello"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        with pytest.raises(ConnectionResetError):
            server.recv(10)
        assert _tcp_byte_counts(server) == (5, 0)


def _shout_once(
    captured: list, args: list[str], socket_type: type, closes: bool = False, counts: bool = True
) -> list[tuple]:
    """Serve a user's handler (it shouts the first line back twice, then closes its socket
    itself if `closes`) for one client sending b"hey\\n"; check the handler got a
    `socket_type` socket; return the monitor's records (it wants byte counts if `counts`)."""
    from clitools import RecordsObserver

    from sockserve.factory import make_server

    class Monitor(RecordsObserver):
        wants_counts = counts

        def connected(self, client: object) -> None:
            pass

    seen: list[type] = []

    class Shout(ss.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(type(self.connection))
            self.wfile.write(self.rfile.readline().upper() * 2)
            if closes:
                self.connection.close()

    config = _config(captured, *args, "-H", USER_HANDLER)
    monitor = Monitor()
    server = make_server(config, Shout, monitor)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        family = socket.AF_UNIX if config.family == "unix" else socket.AF_INET
        with socket.socket(family) as sock:
            sock.settimeout(5)
            sock.connect(server.server_address)
            sock.sendall(b"hey\n")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(100):
                reply += chunk
        assert reply == b"HEY\n" * 2
        if counts:
            assert monitor.wait(1)
    finally:
        _stop(server, thread)
    assert seen == [socket_type]
    return [r[1:] for r in monitor.records]


@needs_kernel_counts
@pytest.mark.parametrize("concurrency", ["thread", "sync"])
@pytest.mark.parametrize("closes", [False, True], ids=["server-closes", "handler-closes"])
def test_user_handler_records_come_from_the_kernel(
    captured: list, concurrency: str, closes: bool
) -> None:
    """On TCP a user's handler gets a socket without counting wrappers around recv and send;
    its record is still exact, also when the handler closes the socket itself."""
    from sockserve.factory import KernelCountedSocket

    args = ["tcp", "127.0.0.1:0", "-c", concurrency]
    assert _shout_once(captured, args, KernelCountedSocket, closes) == [(4, 8)]
    assert KernelCountedSocket.recv_into is socket.socket.recv_into  # the C method itself
    assert KernelCountedSocket.sendall is socket.socket.sendall


def test_counting_socket_counts_every_call() -> None:
    """Where the kernel keeps no byte counts (unix sockets), the wrapper counts each call."""
    from sockserve.factory import CountingSocket

    a, b = socket.socketpair()
    with b, CountingSocket(a.family, a.type, a.proto, fileno=a.detach()) as sock:
        b.sendall(b"0123456789")
        assert sock.recv(3) == b"012"
        buf = bytearray(4)
        assert sock.recv_into(buf) == 4
        assert sock.recv_into(memoryview(buf)[:2], 2) == 2
        assert sock.send(b"ab") == 2
        sock.sendall(b"cde")
        sock.sendall(bytearray(b"fg"))
        sock.sendall(memoryview(b"xhijx")[1:4])
        sock.sendall(memoryview(bytes(range(8))).cast("I"))  # 2 items of 4 bytes
        assert (sock.received, sock.sent) == (9, 2 + 3 + 2 + 3 + 8)
        assert b.recv(100) == b"abcdefghij" + bytes(range(8))


def test_unix_user_handler_is_counted_by_the_wrapper(captured: list, sock_dir: str) -> None:
    from sockserve.factory import CountingSocket

    path = os.path.join(sock_dir, "own.sock")
    assert _shout_once(captured, ["unix", path], CountingSocket) == [(4, 8)]
    assert _shout_once(captured, ["unix", path], CountingSocket, closes=True) == [(4, 8)]


@pytest.mark.parametrize("proto", ["tcp", "unix"])
@pytest.mark.parametrize("concurrency", ["thread", "sync"])
def test_user_handler_gets_its_socket_bare_when_no_counts_are_shown(
    captured: list, sock_dir: str, proto: str, concurrency: str
) -> None:
    """With no report showing byte counts (--quiet), nothing is wrapped around a user's
    socket and nothing is counted."""
    where = "127.0.0.1:0" if proto == "tcp" else os.path.join(sock_dir, "bare.sock")
    args = [proto, where, "-c", concurrency]
    assert _shout_once(captured, args, socket.socket, counts=False) == []
    assert _shout_once(captured, args, socket.socket, closes=True, counts=False) == []


def test_accepting_threads_start_another_only_below_max_threads() -> None:
    """The thread that takes the last ready place starts (reserves) another, unless
    --max-threads are alive; one done with its connection goes back to accept or ends."""
    from sockserve.factory import _Acceptors

    acceptors = _Acceptors(limit=2)
    acceptors.reserve()  # the first thread
    assert acceptors.took()  # none ready, 1 alive: another one is reserved
    assert (acceptors.ready, acceptors.alive) == (1, 2)
    assert not acceptors.took()  # none ready, but 2 alive: the next connection waits
    assert (acceptors.ready, acceptors.alive) == (0, 2)
    assert acceptors.served(most=8)  # one is done: back to accept
    assert (acceptors.ready, acceptors.alive) == (1, 2)
    assert not acceptors.served(most=1)  # the other is done, one is ready already: it ends
    assert (acceptors.ready, acceptors.alive) == (1, 1)
    assert acceptors.took()  # below the limit again: another one is reserved
    assert (acceptors.ready, acceptors.alive) == (1, 2)
    unbounded = _Acceptors()
    unbounded.reserve()
    assert unbounded.took() and unbounded.took() and unbounded.took()
    assert (unbounded.ready, unbounded.alive) == (1, 4)


def test_a_wake_up_connection_never_taken_is_dropped_at_the_next_pass(captured: list) -> None:
    """A self-connection still unaccepted a whole poll interval later (its connect failed
    late) is closed and forgotten, so trimming goes on afterwards."""
    from sockserve.factory import _Acceptors

    server = _make_accepting_server(captured)  # no loop: the test plays its part
    stale = socket.socket()
    try:
        acceptors = server._acceptors = _Acceptors()
        acceptors.reserve(2)  # two threads ready: one too many, to be trimmed
        with acceptors.lock:
            acceptors.wakers[("127.0.0.1", 9)] = stale
        server._trim_acceptors()
        assert not acceptors.wakers
        assert stale.fileno() == -1
        server._trim_acceptors()  # the next pass trims again: one wake-up connection
        assert len(acceptors.wakers) == 1
    finally:
        stale.close()
        server._close_wakers()
        server.server_close()


@needs_two_cpus
def test_the_banner_pins_before_the_loop_and_names_the_cpu(captured: list) -> None:
    """`pin_loop_thread` (the banner calls it in the loop's thread, just before serve_forever)
    pins once and names the CPU the threads then run on; serve_forever gives the CPUs back."""
    server = _make_accepting_server(captured)
    cpus = os.sched_getaffinity(0)
    seen: dict[str, object] = {}

    def serve() -> None:
        cpu = server.pin_loop_thread()
        seen["cpu"] = cpu
        seen["again"] = server.pin_loop_thread()
        seen["during"] = os.sched_getaffinity(0)
        server.serve_forever(0.05)
        seen["after"] = os.sched_getaffinity(0)
        seen["pinned after"] = server.pinned_cpu

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        _echo_hi(server)
    finally:
        _stop(server, thread)
    cpu = seen["cpu"]
    assert isinstance(cpu, int) and cpu in cpus
    assert seen["again"] == cpu and seen["during"] == {cpu}
    assert seen["after"] == cpus and seen["pinned after"] is None


def test_an_unpinned_server_names_no_cpu(captured: list) -> None:
    server = _make_accepting_server(captured, "--no-pin")
    try:
        before = os.sched_getaffinity(0)
        assert server.pin_loop_thread() is None and os.sched_getaffinity(0) == before
    finally:
        server.server_close()


def _shut_down(socks: list[socket.socket]) -> None:
    """End connections whose descriptors forked children share (close alone would not)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_mode_takes_a_burst_of_connections_in_one_wake_up(captured: list) -> None:
    """Connections waiting together are accepted in one loop iteration, a child each; every
    one is served, counted and reaped."""
    from clitools import RecordsObserver

    from sockserve import builtins as bh
    from sockserve.factory import make_server

    config = _config(captured, "tcp", "127.0.0.1:0", "-H", "echo", "-c", "fork")
    observer = RecordsObserver()
    server = make_server(config, bh.stream_handler("echo", bh.HandlerOptions(observer=observer)))
    with server, ExitStack() as clients_open:  # the clients end first: no child waits for them
        clients = [
            clients_open.enter_context(socket.create_connection(server.server_address, timeout=5))
            for _ in range(12)
        ]
        clients_open.callback(_shut_down, clients)  # the children hold copies of these sockets
        server.handle_ready()  # the loop's step once the listener is readable
        first = server.requests_started  # all 12 unless a handshake is still in flight
        deadline = time.monotonic() + 5
        while server.requests_started < 12 and time.monotonic() < deadline:
            if select.select([server.socket], [], [], 0.1)[0]:
                server.handle_ready()
        assert first > 1 and server.requests_started == 12
        for i, client in enumerate(clients):
            client.sendall(b"%d" % i)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"%d" % i
        server.collect_children(blocking=True)
        assert not server.active_children


def test_a_batch_of_accepts_stops_without_a_failing_accept(captured: list) -> None:
    """The loop accepts while connections wait, and asks the listener (poll) before each
    further accept: one waiting connection costs one accept, not a second one that fails."""
    from sockserve.factory import make_server

    config = _config(captured, "tcp", "127.0.0.1:0", "-H", USER_HANDLER, "-c", "thread")
    server = make_server(config, config.handler.cls)
    assert server.accept_batch > 1
    calls: list[str] = []
    real_get_request = server.get_request

    def get_request() -> tuple[Any, Any]:
        try:
            result = real_get_request()
        except OSError as exc:
            calls.append(type(exc).__name__)
            raise
        calls.append("accepted")
        return result

    server.get_request = get_request  # type: ignore[method-assign]
    with server, socket.create_connection(server.server_address, timeout=5) as client:
        assert select.select([server.socket], [], [], 5)[0]
        server.handle_ready()
        client.sendall(b"hi\n")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100).endswith(b" hi\n")  # the example numbers its lines
    assert calls == ["accepted"]
