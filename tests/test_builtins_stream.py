"""The stream adapter: every builtin on TCP and unix stream servers, and its fast paths.

The fast paths change nothing a client or an observer can see: the same bytes and byte counts
with a fast path as without it. (Speed is the benchmarks' business: benchmarks/run.py.)
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from builtin_checks import (
    CHECKS,
    FORKING,
    STANDALONE,
    STREAM,
    THREADING,
    TIMEOUT,
    Ctx,
    RecordingObserver,
    connect,
    make_ctx,
    no_leaked_threads,  # noqa: F401 - an autouse fixture
    recv_exactly,
    running,
    stream_exchange,
    watched,
)
from clitools import RecordsObserver

from sockserve import builtins as bh, socketserver as ss
from sockserve.builtins import output, stream

STREAMS = sorted(STREAM)


def test_unknown_names_are_refused() -> None:
    options = bh.HandlerOptions()
    with pytest.raises(ValueError, match="choose one of: echo"):
        bh.stream_handler("nope", options)
    with pytest.raises(ValueError):
        bh.datagram_handler("nope", options)
    with pytest.raises(ValueError):
        bh.protocol_factory("nope", "stream", options)
    with pytest.raises(ValueError):
        bh.protocol_factory("echo", "seqpacket", options)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bh.stream_handler("echo", bh.HandlerOptions(chunk_size=0))


def test_classes_carry_their_options() -> None:
    options = bh.HandlerOptions(reply=b"x")
    cls = bh.stream_handler("reply", options)
    assert issubclass(cls, ss.BaseRequestHandler)
    assert cls.options is options and cls.__name__ == "ReplyStreamHandler"
    other = bh.stream_handler("reply", bh.HandlerOptions(reply=b"y"))
    assert other is not cls and cls.options is options
    dcls = bh.datagram_handler("echo", options)
    assert issubclass(dcls, ss.BaseRequestHandler) and dcls.__name__ == "EchoDatagramHandler"


# -- every builtin, thread, fork and sync mode ------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
@pytest.mark.parametrize("name", STANDALONE)
def test_builtin_threading(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir) as (ctx, options):
        handler = bh.stream_handler(name, options)
        with running(transport, handler, sock_dir) as server:
            CHECKS[name](ctx, server.server_address)


@pytest.mark.parametrize("transport", STREAMS)
@pytest.mark.parametrize("name", STANDALONE)
def test_builtin_forking(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir, forked=True) as (ctx, options):
        handler = bh.stream_handler(name, options)
        with running(transport, handler, sock_dir, classes=FORKING) as server:
            CHECKS[name](ctx, server.server_address)


@pytest.mark.parametrize("name", ["echo", "upper", "reply", "chargen", "time"])
def test_builtin_sync(name: str, sock_dir: str) -> None:
    with make_ctx(name, "tcp", sock_dir) as (ctx, options):
        handler = bh.stream_handler(name, options)
        with running("tcp", handler, sock_dir, classes={"tcp": ss.TCPServer}) as server:
            CHECKS[name](ctx, server.server_address)


# -- observers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
def test_observer_sees_chunks_when_it_wants_data(transport: str, sock_dir: str) -> None:
    """On a server that watches its requests (-vv), the watch reports every chunk."""
    observer = RecordingObserver(wants_data=True)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    handler = bh.stream_handler("upper", options)
    attrs = {"monitor": observer, "watch_data": True, "record_counts": False}
    with running(transport, handler, sock_dir, classes=watched(THREADING), **attrs) as server:
        assert stream_exchange(ctx, server.server_address, b"abc") == b"ABC"
    observer.wait_records(1)
    assert observer.chunks == [("in", b"abc"), ("out", b"ABC")]


@pytest.mark.parametrize("name", ["echo", "upper"])
@pytest.mark.parametrize("transport", STREAMS)
def test_observer_that_wants_no_counts_gets_no_records(
    transport: str, name: str, sock_dir: str
) -> None:
    """-q shows no record and no summary: the builtins then never call `record`."""
    observer = RecordingObserver(wants_counts=False)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    expected = b"ABC" if name == "upper" else b"abc"
    handler = bh.stream_handler(name, options)
    with running(transport, handler, sock_dir) as server:  # joins the handler threads
        assert stream_exchange(ctx, server.server_address, b"abc") == expected
    assert observer.records == []


def test_observer_counts_many_connections(sock_dir: str) -> None:
    observer = RecordingObserver()
    handler = bh.stream_handler("echo", bh.HandlerOptions(observer=observer))
    ctx = Ctx("tcp", sock_dir, observer)
    with running("tcp", handler, sock_dir) as server:
        for i in range(5):
            assert stream_exchange(ctx, server.server_address, b"x" * i) == b"x" * i
        records = observer.wait_records(5)
    assert sorted(r[1:] for r in records) == [(i, i) for i in range(5)]


# -- fast paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("splice", [True, False])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_bulk_echo(
    transport: str, splice: bool, sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "USE_SPLICE", splice and output.USE_SPLICE)
    observer = RecordingObserver()
    payload = os.urandom(1 << 16) * 64  # 4 MiB: reads fill the buffer, so splice takes over
    handler = bh.stream_handler("echo", bh.HandlerOptions(observer=observer))
    ctx = Ctx(transport, sock_dir, observer)
    with running(transport, handler, sock_dir) as server:
        assert stream_exchange(ctx, server.server_address, payload) == payload
    assert observer.wait_records(1)[0][1:] == (len(payload), len(payload))


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_bulk_discard_counts_everything(transport: str, sock_dir: str) -> None:
    observer = RecordingObserver()
    handler = bh.stream_handler("discard", bh.HandlerOptions(observer=observer))
    ctx = Ctx(transport, sock_dir, observer)
    with running(transport, handler, sock_dir) as server:
        assert stream_exchange(ctx, server.server_address, b"z" * (3 << 20)) == b""
    assert observer.wait_records(1)[0][1:] == (3 << 20, 0)


def test_tcp_connections_get_nodelay(sock_dir: str) -> None:
    seen: list[int] = []

    class Probe(bh.stream_handler("echo", bh.HandlerOptions())):  # type: ignore[misc]
        def serve(self, sock: socket.socket) -> None:
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            super().serve(sock)

    ctx = Ctx("tcp", sock_dir, RecordingObserver())
    with running("tcp", Probe, sock_dir) as server:
        assert stream_exchange(ctx, server.server_address, b"hi") == b"hi"
    assert seen and seen[0] != 0


# -- reply ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
def test_reply_file(transport: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "reply.http")
    body = b"HTTP/1.0 200 OK\r\n\r\n" + os.urandom(1000) * 300
    with open(path, "wb") as f:
        f.write(body)
    observer = RecordingObserver()
    options = bh.HandlerOptions(reply_file=path, observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    handler = bh.stream_handler("reply", options)
    with running(transport, handler, sock_dir) as server:
        # a request bigger than one read: the rest is read and dropped, no reset
        request = b"POST / HTTP/1.0\r\n\r\n" + b"b" * 300000
        assert stream_exchange(ctx, server.server_address, request) == body
    assert observer.wait_records(1)[0][1:] == (len(request), len(body))


def test_reply_with_nothing_set_answers_empty(sock_dir: str) -> None:
    ctx = Ctx("tcp", sock_dir, RecordingObserver())
    handler = bh.stream_handler("reply", bh.HandlerOptions())
    with running("tcp", handler, sock_dir) as server:
        assert stream_exchange(ctx, server.server_address, b"hello") == b""


def test_reply_when_the_client_sends_nothing(sock_dir: str) -> None:
    ctx = Ctx("unix", sock_dir, RecordingObserver())
    handler = bh.stream_handler("reply", bh.HandlerOptions(reply=b"banner\r\n"))
    with running("unix", handler, sock_dir) as server:
        assert stream_exchange(ctx, server.server_address, b"") == b"banner\r\n"


# -- ending connections ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_chargen_ends_quietly_when_the_client_leaves(transport: str, sock_dir: str) -> None:
    observer = RecordingObserver()
    errors: list[Any] = []
    handler = bh.stream_handler("chargen", bh.HandlerOptions(observer=observer))
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info())}
    with running(transport, handler, sock_dir, **attrs) as server:
        for _ in range(3):
            with connect(transport, server.server_address) as sock:
                assert recv_exactly(sock, 100) == bh.CHARGEN_PERIOD[:100]
        observer.wait_records(3)
    assert not errors


def test_client_reset_ends_an_echo_quietly(sock_dir: str) -> None:
    observer = RecordingObserver()
    errors: list[Any] = []
    handler = bh.stream_handler("echo", bh.HandlerOptions(observer=observer))
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info())}
    with running("tcp", handler, sock_dir, **attrs) as server:
        sock = connect("tcp", server.server_address)
        sock.sendall(b"x" * 1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        observer.wait_records(1)
    assert not errors


def test_idle_timeout_reaches_handle_error(sock_dir: str) -> None:
    observer = RecordingObserver()
    errors: list[Any] = []
    handler = bh.stream_handler("echo", bh.HandlerOptions(observer=observer))

    def get_request(self: Any) -> Any:
        request, client = ss.ThreadingTCPServer.get_request(self)
        request.settimeout(0.05)
        return request, client

    attrs = {
        "handle_error": lambda self, req, addr: errors.append(sys.exc_info()[0]),
        "get_request": get_request,
    }
    with running("tcp", handler, sock_dir, **attrs) as server:
        with connect("tcp", server.server_address) as sock:
            sock.sendall(b"ab")
            assert recv_exactly(sock, 2) == b"ab"
            observer.wait_records(1)
    assert errors == [TimeoutError]
    assert observer.records[0][1:] == (2, 2)


# -- stdout: whole chunks, closed output -------------------------------------------------------


class ChunkLog:
    """An Observer for forked children: reports each chunk's client and size on a pipe."""

    wants_data = True
    wants_counts = True

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def record(self, client_address: Any, received: int, sent: int) -> None:
        os.write(self.w, f"end {client_address[1]}\n".encode())

    def data(self, client_address: Any, direction: str, data: bytes) -> None:
        os.write(self.w, f"in {client_address[1]} {len(data)}\n".encode())


def drain(fd: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 1 << 16):
            into.extend(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_stdout_chunks_never_interleave(mode: str, sock_dir: str) -> None:
    """Several clients write large amounts at once; the pipe shows each chunk whole."""
    log = ChunkLog()
    out_r, out_w = os.pipe()
    output = os.fdopen(out_w, "wb")
    options = bh.HandlerOptions(output=output, observer=log)
    handler = bh.stream_handler("stdout", options)
    classes = FORKING if mode == "fork" else THREADING
    out = bytearray()
    logged = bytearray()
    out_reader = drain(out_r, out)
    log_reader = drain(log.r, logged)
    letters: dict[int, int] = {}
    per_client = 1 << 20
    try:
        attrs = {"monitor": log, "watch_data": True, "record_counts": False}
        with running("tcp", handler, sock_dir, classes=watched(classes), **attrs) as server:
            socks = [connect("tcp", server.server_address) for _ in range(4)]
            for i, sock in enumerate(socks):
                letters[sock.getsockname()[1]] = ord("A") + i
            start = threading.Barrier(len(socks))

            def send(sock: socket.socket, letter: int) -> None:
                start.wait(TIMEOUT)
                block = bytes([letter]) * (1 << 16)
                for _ in range(per_client // len(block)):
                    sock.sendall(block)
                sock.shutdown(socket.SHUT_WR)  # forked children hold copies of this socket
                sock.close()

            senders = [
                threading.Thread(target=send, args=(s, letters[s.getsockname()[1]])) for s in socks
            ]
            for t in senders:
                t.start()
            for t in senders:
                t.join(TIMEOUT * 4)
            deadline = time.monotonic() + TIMEOUT * 4
            while logged.count(b"end ") < len(socks) and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        output.close()
        os.close(log.w)
        out_reader.join(TIMEOUT)
        log_reader.join(TIMEOUT)
        os.close(out_r)
        os.close(log.r)
    # Replay the log: the output must be exactly the chunks, each one contiguous.
    sizes: dict[int, list[int]] = {letter: [] for letter in letters.values()}
    for line in logged.decode().splitlines():
        parts = line.split()
        if parts[0] == "in":
            sizes[letters[int(parts[1])]].append(int(parts[2]))
    assert all(sum(s) == per_client for s in sizes.values())
    if mode == "fork":
        assert max(max(s) for s in sizes.values()) <= select.PIPE_BUF
    position = {letter: 0 for letter in sizes}
    i = 0
    while i < len(out):
        letter = out[i]
        size = sizes[letter][position[letter]]
        position[letter] += 1
        assert out[i : i + size] == bytes([letter]) * size, f"chunk at {i} torn"
        i += size
    assert all(position[letter] == len(sizes[letter]) for letter in sizes)


@pytest.mark.parametrize("transport", STREAMS)
def test_stdout_raises_output_closed(transport: str, sock_dir: str) -> None:
    r, w = os.pipe()
    os.close(r)  # nobody reads: writes fail with EPIPE
    errors: list[Any] = []
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info()[1])}
    output_file = os.fdopen(w, "wb")
    options = bh.HandlerOptions(output=output_file)
    ctx = Ctx(transport, sock_dir, RecordingObserver())
    try:
        handler = bh.stream_handler("stdout", options)
        with running(transport, handler, sock_dir, **attrs) as server:
            with contextlib.suppress(OSError):
                stream_exchange(ctx, server.server_address, b"data")
    finally:
        with contextlib.suppress(OSError):
            output_file.close()
    assert len(errors) == 1 and isinstance(errors[0], bh.OutputClosed)


# -- fast paths: bulk echo, splice ------------------------------------------------------------


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
        if size == stream.BULK_BUFFER:
            grown.append(size)
        return real(size)

    monkeypatch.setattr(stream, "bytearray", tracking, raising=False)
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


@pytest.mark.skipif(not output.USE_SPLICE, reason="os.splice is Linux-only")
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


@pytest.mark.skipif(not output.USE_SPLICE, reason="os.splice is Linux-only")
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


@pytest.mark.skipif(not output.USE_SPLICE, reason="os.splice is Linux-only")
def test_grow_pipe_reports_the_size_it_got(monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    r, w = os.pipe()
    try:
        got = stream.grow_pipe(w, 1 << 20)
        assert got >= 65536
        assert stream.grow_pipe(w, 1 << 40) >= 65536  # never shrunk by an absurd request
        real = fcntl.fcntl

        def refuse(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETPIPE_SZ:
                raise PermissionError(1, "over pipe-max-size")
            return real(fd, cmd, arg)

        monkeypatch.setattr(fcntl, "fcntl", refuse)
        assert stream.grow_pipe(w, 1 << 20) == real(w, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)
