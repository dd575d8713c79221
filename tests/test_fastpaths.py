"""The fast paths of the builtin handlers change nothing a client or an observer can see.

Behaviour only: the same bytes and byte counts with a fast path as without it. (Speed is the
benchmarks' business: benchmarks/run.py.)
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clitools import RecordsObserver

from sockserve import builtin_handlers as bh, socketserver as ss

TIMEOUT = 5.0
SAMPLES = [b"", b"x", b"Hello, World!\r\n", bytes(range(256)), "héllo".encode() * 50]


@contextlib.contextmanager
def serve(server: ss.BaseServer) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


# -- datagrams: the answer chosen once per class ------------------------------------------------


@pytest.mark.parametrize("name", ["echo", "upper", "chargen", "reply", "discard", "daytime"])
@pytest.mark.parametrize("data", SAMPLES)
def test_datagram_answer_matches_respond_datagram(name: str, data: bytes) -> None:
    answer = bh._datagram_answer(name, b"canned\n")
    expected = bh.respond_datagram(name, data, reply=b"canned\n")
    if answer is None:  # answered through respond_datagram itself
        assert name in ("discard", "daytime")
        return
    assert answer(data) == expected
    assert answer(memoryview(data)) == expected


@pytest.mark.parametrize("name", ["echo", "upper", "chargen", "reply", "time"])
def test_datagram_handler_replies_and_counts(name: str) -> None:
    observer = RecordsObserver()
    handler = bh.datagram_handler(name, bh.HandlerOptions(reply=b"ok", observer=observer))
    server = ss.UDPServer(("127.0.0.1", 0), handler)
    with serve(server) as address:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            replies = []
            for data in (b"abc", bytes(range(200))):
                client.sendto(data, address)
                replies.append(client.recv(65536))
            records = observer.wait(2)
    for data, reply in zip((b"abc", bytes(range(200))), replies, strict=True):
        if name == "time":
            assert len(reply) == 4
        else:
            assert reply == bh.respond_datagram(name, data, reply=b"ok")
    assert [(r[1], r[2]) for r in records] == [(3, len(replies[0])), (200, len(replies[1]))]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets")
def test_unix_datagram_reply_still_never_blocks(tmp_path: Any) -> None:
    """A client whose queue is full loses replies instead of stalling the server."""
    observer = RecordsObserver()
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    server = ss.UnixDatagramServer(str(tmp_path / "s"), handler)
    with serve(server) as address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(str(tmp_path / "c"))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            client.settimeout(TIMEOUT)
            for _ in range(300):  # never read: the client's queue fills up
                client.sendto(b"x" * 512, address)
            records = observer.wait(300)
    assert len(records) == 300
    assert any(sent == 0 for _, _, sent in records)  # some replies were dropped


def test_family_of_socket_like_object() -> None:
    class Wrapped:
        family = socket.AF_INET

    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as sock:
        assert bh._family(sock) == sock.family
    assert bh._family(Wrapped()) == socket.AF_INET


# -- streams: the bulk echo ------------------------------------------------------------------


def bulk_echo(name: str, payload: bytes, observer: RecordsObserver) -> bytes:
    handler = bh.stream_handler(name, bh.HandlerOptions(observer=observer))
    server = ss.ThreadingTCPServer(("127.0.0.1", 0), handler)
    with serve(server) as address:
        with socket.create_connection(address, timeout=TIMEOUT) as client:
            got = bytearray()

            def read() -> None:
                while chunk := client.recv(1 << 20):
                    got.extend(chunk)

            reader = threading.Thread(target=read)
            reader.start()
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            reader.join(TIMEOUT)
            assert not reader.is_alive()
        observer.wait(1)
    return bytes(got)


@pytest.mark.parametrize("name", ["echo", "upper"])
def test_bulk_echo_returns_every_byte(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that fills the buffer switches to the bigger bulk buffer: the bytes and the
    counts stay those of the plain loop."""
    grown: list[int] = []
    real = bytearray

    def tracking(size: Any = 0) -> bytearray:
        if size == bh._BULK_BUFFER:
            grown.append(size)
        return real(size)

    monkeypatch.setattr(bh, "bytearray", tracking, raising=False)
    payload = os.urandom(1 << 16) * 48 + b"tail"  # 3 MiB and a bit: well past the switch
    expected = payload.upper() if name == "upper" else payload
    observer = RecordsObserver()
    assert bulk_echo(name, payload, observer) == expected
    assert observer.records[0][1:] == (len(payload), len(payload))
    assert grown  # the switch happened


# -- streams: stdout and stdio through splice --------------------------------------------------


def _open_output(kind: str, path: Any) -> tuple[Any, Callable[[], bytes]]:
    """The handler's output of `kind`, and a function that returns all written to it once the
    output is closed."""
    if kind == "pipe":
        r, w = os.pipe()
        got = bytearray()

        def read() -> None:
            while chunk := os.read(r, 1 << 20):
                got.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()

        def result() -> bytes:
            reader.join(TIMEOUT)
            os.close(r)
            return bytes(got)

        return os.fdopen(w, "wb"), result
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_APPEND if kind == "append" else 0)
    output = os.fdopen(os.open(path, flags), "wb")
    return output, path.read_bytes


@pytest.mark.skipif(not bh._USE_SPLICE, reason="os.splice is Linux-only")
@pytest.mark.parametrize("kind", ["pipe", "file", "append"])
def test_stdout_bulk_data_through_splice_arrives_whole(
    kind: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four clients send 2 MiB each at once to -H stdout: every byte arrives, in order per
    client, and each write to the output (a splice or, once the output refuses splice, a copy)
    holds one client's bytes. A file opened for appending refuses splice (EINVAL here): the
    handler copies instead, from the bytes already in its pipe on."""
    output, written = _open_output(kind, tmp_path / "out.bin")
    out_fd = output.fileno()
    moves: list[tuple[str, int]] = []  # to the output, in order (each under the output's lock)
    real_splice, real_write = os.splice, os.write

    def splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        n = real_splice(src, dst, count, *args, **kwargs)
        if dst == out_fd:
            moves.append(("splice", n))
        return n

    def write(fd: int, data: Any) -> int:
        n = real_write(fd, data)
        if fd == out_fd:
            moves.append(("write", n))
        return n

    monkeypatch.setattr(os, "splice", splice)
    monkeypatch.setattr(os, "write", write)
    observer = RecordsObserver()
    handler = bh.stream_handler("stdout", bh.HandlerOptions(output=output, observer=observer))
    payloads = [bytes(range(64 * i, 64 * i + 64)) * (1 << 15) for i in range(4)]  # 2 MiB each
    try:
        with serve(ss.ThreadingTCPServer(("127.0.0.1", 0), handler)) as address:
            clients = [socket.create_connection(address, timeout=TIMEOUT) for _ in payloads]
            start = threading.Barrier(len(clients))

            def send(sock: socket.socket, payload: bytes) -> None:
                with sock:
                    start.wait(TIMEOUT)
                    sock.sendall(payload)

            pairs = zip(clients, payloads, strict=True)
            senders = [threading.Thread(target=send, args=pair) for pair in pairs]
            for t in senders:
                t.start()
            for t in senders:
                t.join(TIMEOUT)
            observer.wait(len(payloads))
    finally:
        output.close()
    out = written()
    assert len(out) == sum(map(len, payloads))
    alphabets = [bytes(range(64 * i, 64 * i + 64)) for i in range(4)]  # client i's bytes
    others = [bytes(b for b in range(256) if b // 64 != i) for i in range(4)]
    for i, payload in enumerate(payloads):  # each client's bytes, in order, none lost
        assert out.translate(None, others[i]) == payload
    assert sorted(r[1] for r in observer.records) == [len(p) for p in payloads]
    position = 0
    for _, n in moves:  # every write to the output holds one client's bytes
        part = out[position : position + n]
        assert not part.translate(None, alphabets[part[0] // 64]), f"torn at {position}"
        position += n
    assert position == len(out)
    kinds = {how for how, _ in moves}
    assert "splice" in kinds if kind != "append" else kinds == {"write"}
    assert handler.shared.writer.can_splice is (kind != "append")


@pytest.mark.skipif(not bh._USE_SPLICE, reason="os.splice is Linux-only")
def test_stdout_splice_into_a_closed_output_raises_output_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`-H stdout | head -c N` with a bulk client: the output goes away while the handler
    splices into it; that ends as on the copying path, with OutputClosed (the server then
    stops)."""
    r, w = os.pipe()
    output = os.fdopen(w, "wb")
    splicing = threading.Event()  # a splice to the output has started
    real_splice = os.splice

    def splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        if dst == w:
            splicing.set()
        return real_splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", splice)
    errors: list[BaseException | None] = []
    done = threading.Event()

    class Server(ss.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[1])
            done.set()

    handler = bh.stream_handler("stdout", bh.HandlerOptions(output=output))
    try:
        with serve(Server(("127.0.0.1", 0), handler)) as address:
            with socket.create_connection(address, timeout=TIMEOUT) as client:

                def send() -> None:
                    with contextlib.suppress(OSError):  # the server may close on us
                        client.sendall(b"x" * (8 << 20))

                sender = threading.Thread(target=send)
                sender.start()
                first = os.read(r, 1 << 16)  # the reader takes what comes until the splices
                while not splicing.is_set():  # start, then goes
                    first += os.read(r, 1 << 16)
                os.close(r)
                assert done.wait(TIMEOUT)
                client.close()
                sender.join(TIMEOUT)
    finally:
        output.close()
    assert first and len(errors) == 1 and isinstance(errors[0], bh.OutputClosed)


@pytest.mark.skipif(not bh._USE_SPLICE, reason="os.splice is Linux-only")
def test_grow_pipe_reports_the_size_it_got(monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    r, w = os.pipe()
    try:
        got = bh._grow_pipe(w, 1 << 20)
        assert got >= 65536
        assert bh._grow_pipe(w, 1 << 40) >= 65536  # never shrunk by an absurd request
        real = fcntl.fcntl

        def refuse(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETPIPE_SZ:
                raise PermissionError(1, "over pipe-max-size")
            return real(fd, cmd, arg)

        monkeypatch.setattr(fcntl, "fcntl", refuse)
        assert bh._grow_pipe(w, 1 << 20) == real(w, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)


# -- start-up: rich only when a line is printed ---------------------------------------------


def test_rich_reporter_imports_rich_at_first_line_only() -> None:
    """With --quiet on a terminal nothing is printed while serving, so rich is never loaded;
    the first line printed still comes out in colour."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sockserve.console import RichReporter\n"
        "r = RichReporter(quiet=True, force_color=True)\n"
        "r.listening('tcp://127.0.0.1:1', {'concurrency': 'thread'})\n"
        "r.record(('127.0.0.1', 2), 1, 1)\n"
        "assert 'rich' not in sys.modules, 'rich imported before any line was printed'\n"
        "r.fatal('boom', 'a hint')\n"
        "assert 'rich.console' in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "sockserve: error: boom" in out.stderr
    assert "hint: a hint" in out.stderr
    assert "\x1b[" in out.stderr  # coloured, as before


# -- event mode: the same answer function -----------------------------------------------------


@pytest.mark.parametrize("name", ["echo", "upper", "chargen", "reply", "daytime"])
def test_event_datagram_protocol_answers_like_respond_datagram(name: str) -> None:
    import asyncio

    observer = RecordsObserver()
    factory = bh.protocol_factory(name, "dgram", bh.HandlerOptions(reply=b"ok", observer=observer))

    async def exchange() -> list[bytes]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(factory, local_addr=("127.0.0.1", 0))
        try:
            address = transport.get_extra_info("sockname")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.setblocking(False)
                replies = []
                for data in (b"abc", bytes(range(200))):
                    await loop.sock_sendto(client, data, address)
                    replies.append(await asyncio.wait_for(loop.sock_recv(client, 65536), TIMEOUT))
                return replies
        finally:
            transport.close()

    replies = asyncio.run(exchange())
    for data, reply in zip((b"abc", bytes(range(200))), replies, strict=True):
        if name == "daytime":
            assert reply.endswith(b"-UTC\r\n")
        else:
            assert reply == bh.respond_datagram(name, data, reply=b"ok")
    assert [(r[1], r[2]) for r in observer.wait(2)] == [
        (3, len(replies[0])),
        (200, len(replies[1])),
    ]


# -- the run monitor: "in a forked child?" without a system call per request ------------------


def monitor_for(
    args: list[str], verbosity: int | None = None, quiet: bool = False
) -> tuple[Any, io.StringIO]:
    """A RunMonitor for the config the command builds from `args`, reporting into a buffer
    (at the config's verbosity unless `verbosity` is given)."""
    from sockserve import cli
    from sockserve.console import JsonReporter, PlainReporter
    from sockserve.runner import RunMonitor

    ctx = cli.main.make_context("sockserve", args)
    with ctx:
        config = cli.build_config(ctx.params)
    out = io.StringIO()
    level = config.verbosity if verbosity is None else verbosity
    if config.output == "json":  # as make_reporter does, into the buffer
        reporter = JsonReporter(out, level, quiet=False)
    else:
        reporter = PlainReporter(out, level, quiet=quiet)
    return RunMonitor(reporter, config), out


def make_monitor(concurrency: str) -> Any:
    return monitor_for(["tcp", "127.0.0.1:0", "-c", concurrency], verbosity=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_monitor_counts_in_parent_and_forwards_from_forked_child() -> None:
    monitor, out = make_monitor("fork")
    try:
        monitor.record(("127.0.0.1", 1), 10, 10)  # the parent: counted at once
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                monitor.record(("127.0.0.1", 2), 20, 30)  # forwarded through the pipe
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        monitor.poll()
    finally:
        monitor.close()
    stats = monitor.stats
    assert (stats.requests, stats.bytes_in, stats.bytes_out) == (2, 30, 40)
    assert "close 127.0.0.1:1 (10 B in, 10 B out)" in out.getvalue()
    assert "close 127.0.0.1:2 (20 B in, 30 B out)" in out.getvalue()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_monitor_reads_the_child_pipe_only_when_it_has_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop polls on every iteration: an empty pipe costs no read (and no EAGAIN
    exception); a record there is read and reported, also after become_worker."""
    from sockserve import runner

    reads: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    monitor, out = make_monitor("fork")
    monkeypatch.setattr(runner.os, "read", read)
    try:
        for _ in range(3):
            monitor.poll()
        assert reads == []
        for round_ in (1, 2):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                try:
                    monitor.record(("127.0.0.1", round_), 1, 2)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            monitor.poll()
            assert reads and f"close 127.0.0.1:{round_} (1 B in, 2 B out)" in out.getvalue()
            monitor.become_worker()  # a new pipe, and a new poll for it
            reads.clear()
            monitor.poll()
            assert reads == []
    finally:
        monitor.close()


def test_a_buffer_is_ready_before_the_first_connection() -> None:
    """Made up front, so fork mode's children take the parent's copy instead of zeroing one."""
    pool = bh._Buffers(4096)
    (ready,) = pool._free
    assert pool.get() is ready and len(ready) == 4096
    assert len(pool.get()) == 4096 and pool._free == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_monitor_in_a_worker_counts_for_itself() -> None:
    """A --workers process calls become_worker(): it is a parent again, not a child."""
    monitor, _ = make_monitor("thread")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            monitor.become_worker()
            monitor.record(("127.0.0.1", 3), 5, 6)
            if monitor.stats.requests == 1 and not monitor.in_child:
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert monitor.stats.requests == 0  # the worker's count stayed in the worker


@pytest.mark.parametrize(
    ("args", "quiet", "counts_only"),
    [
        (["udp", "127.0.0.1:0", "-c", "sync"], False, True),
        (["udp", "127.0.0.1:0", "-c", "event"], True, True),
        (["udp", "127.0.0.1:0", "-c", "sync", "-v"], False, False),  # prints a line each
        (["udp", "127.0.0.1:0", "-c", "sync", "--json"], False, False),  # an event each
        (["udp", "127.0.0.1:0", "-c", "thread", "-H", "stdout"], False, False),  # threads
        (["tcp", "127.0.0.1:0", "-c", "sync"], False, False),
    ],
)
def test_monitor_only_counts_datagrams_it_would_not_show(
    args: list[str], quiet: bool, counts_only: bool
) -> None:
    """One thread and nothing to print: a datagram's record is three additions, no lock."""
    monitor, out = monitor_for(args, quiet=quiet)
    try:
        assert (monitor.record == monitor._count) is counts_only
        monitor.record(("127.0.0.1", 1), 10, 12)
        monitor.record(("127.0.0.1", 2), 5, 0)
    finally:
        monitor.close()
    stats = monitor.stats
    assert (stats.requests, stats.bytes_in, stats.bytes_out) == (2, 15, 12)
    if counts_only:
        assert out.getvalue() == ""


def test_serve_path_does_not_import_rich() -> None:
    """What `sockserve tcp :0` imports before it listens: rich only at the first line printed
    on a terminal."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import sockserve.cli, sockserve.runner, sockserve.console, sockserve.factory\n"
        "import sockserve.builtin_handlers, sockserve.config, sockserve.addresses\n"
        "print(sorted(m for m in ('rich',) if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"
