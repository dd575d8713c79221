"""Tests for the builtin handlers: the pure functions, then every builtin on real sockets.

Each builtin has one client-side check (`check_<name>`) that talks to a server at an address.
The same checks run against the framework's servers (thread mode, every transport) and against
asyncio servers built from `protocol_factory` (event mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sockserve import builtin_handlers as bh, builtin_protocols as bpr, socketserver as ss

TRANSPORTS = ["tcp", "udp", "unix", "unix-dgram"]
STREAM = {"tcp", "unix"}
TIMEOUT = 5.0
# Binary junk: every byte value, invalid UTF-8 sequences, a NUL and a lone CR.
JUNK = bytes(range(256)) + b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\x00\r" + "héllo".encode()

THREADING = {
    "tcp": ss.ThreadingTCPServer,
    "udp": ss.ThreadingUDPServer,
    "unix": ss.ThreadingUnixStreamServer,
    "unix-dgram": ss.ThreadingUnixDatagramServer,
}
FORKING = {
    "tcp": ss.ForkingTCPServer,
    "udp": ss.ForkingUDPServer,
    "unix": ss.ForkingUnixStreamServer,
    "unix-dgram": ss.ForkingUnixDatagramServer,
}


# -- helpers ----------------------------------------------------------------------------------


class RecordingObserver:
    """An Observer that keeps what it is told; `wait_records(n)` waits for n records."""

    def __init__(self, wants_data: bool = False, wants_counts: bool = True) -> None:
        self.wants_data = wants_data
        self.wants_counts = wants_counts
        self.records: list[tuple[Any, int, int]] = []
        self.chunks: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()

    def record(self, client_address: Any, received: int, sent: int) -> None:
        with self.cond:
            self.records.append((client_address, received, sent))
            self.cond.notify_all()

    def data(self, client_address: Any, direction: str, data: bytes) -> None:
        with self.cond:
            self.chunks.append((direction, bytes(data)))

    def wait_records(self, n: int, timeout: float = TIMEOUT) -> list[tuple[Any, int, int]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.records) >= n, timeout), self.records
            return list(self.records)


class ForwardingObserver:
    """An Observer for forked children: records travel on a pipe to a RecordingObserver."""

    wants_data = False
    wants_counts = True

    def __init__(self, target: RecordingObserver) -> None:
        self.target = target
        self.r, self.w = os.pipe()
        self.thread = threading.Thread(target=self._pump)
        self.thread.start()

    def record(self, client_address: Any, received: int, sent: int) -> None:
        os.write(self.w, json.dumps([client_address, received, sent]).encode() + b"\n")

    def data(self, client_address: Any, direction: str, data: bytes) -> None:
        pass

    def _pump(self) -> None:
        with os.fdopen(self.r, "rb") as lines:
            for line in lines:
                client, received, sent = json.loads(line)
                self.target.record(
                    tuple(client) if isinstance(client, list) else client, received, sent
                )

    def close(self) -> None:
        os.close(self.w)  # the children's copies closed when they exited
        self.thread.join(TIMEOUT)


#: Descriptors that belong to the test itself: a forked server child closes its copies, so
#: that (for instance) closing the test's end of the stdin pipe is an EOF the child sees.
_TEST_ONLY_FDS: set[int] = set()


#: The test's client sockets, closed in a forked server child for the same reason (a closed
#: socket has fileno -1, so a reused descriptor number is never closed by mistake).
_TEST_SOCKETS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _close_test_fds_in_child() -> None:
    for fd in _TEST_ONLY_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    for sock in list(_TEST_SOCKETS):
        if sock.fileno() >= 0:
            sock.close()


os.register_at_fork(after_in_child=_close_test_fds_in_child)


@dataclass
class Ctx:
    """What a check needs besides the address."""

    transport: str
    tmpdir: str
    observer: RecordingObserver
    output_path: str | None = None
    stdin_w: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + TIMEOUT
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"threads left running: {extra}"


def server_address(transport: str, tmpdir: str) -> Any:
    if transport in ("tcp", "udp"):
        return ("127.0.0.1", 0)
    return os.path.join(tmpdir, "srv.sock")


@contextlib.contextmanager
def running(
    transport: str, handler: type, tmpdir: str, classes: dict[str, type] = THREADING, **attrs: Any
) -> Iterator[Any]:
    """Run a framework server with `handler` in a thread; yield it; stop and check cleanup."""
    attrs.setdefault("max_packet_size", 65536)
    cls = type("TestServer", (classes[transport],), attrs)
    server = cls(server_address(transport, tmpdir), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        handler.release()
        assert server.socket.fileno() == -1


def family(transport: str) -> int:
    return socket.AF_INET if transport in ("tcp", "udp") else socket.AF_UNIX


def connect(transport: str, address: Any) -> socket.socket:
    sock = socket.socket(family(transport), socket.SOCK_STREAM)
    _TEST_SOCKETS.add(sock)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    return sock


def dgram_client(ctx: Ctx) -> socket.socket:
    sock = socket.socket(family(ctx.transport), socket.SOCK_DGRAM)
    _TEST_SOCKETS.add(sock)
    sock.settimeout(TIMEOUT)
    if ctx.transport == "udp":
        sock.bind(("127.0.0.1", 0))
    else:  # a unix datagram client needs an address to be answered
        n = ctx.extra["clients"] = ctx.extra.get("clients", 0) + 1
        sock.bind(os.path.join(ctx.tmpdir, f"c{n}.sock"))
    return sock


def recv_all(sock: socket.socket, limit: int = 1 << 26) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


def stream_exchange(ctx: Ctx, address: Any, payload: bytes) -> bytes:
    """Send `payload`, half-close, read until EOF (reading while sending, for large payloads)."""
    with connect(ctx.transport, address) as sock:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(recv_all(sock)))
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(TIMEOUT)
        assert result, "no EOF from the server"
        return result[0]


def dgram_exchange(ctx: Ctx, address: Any, payload: bytes) -> bytes:
    with dgram_client(ctx) as sock:
        sock.sendto(payload, address)
        return sock.recv(65536)


def assert_no_datagram(sock: socket.socket, observer: RecordingObserver, n: int) -> None:
    """After the server recorded datagram n (its reply, if any, is sent by then): none came."""
    observer.wait_records(n)
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(65536)


def read_output(ctx: Ctx, n: int) -> bytes:
    """The stdout file's contents once the server recorded n requests."""
    ctx.observer.wait_records(n)
    assert ctx.output_path is not None
    with open(ctx.output_path, "rb") as f:
        return f.read()


# -- the checks: one per builtin, for any server at `address` ----------------------------------


def check_echo(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        assert stream_exchange(ctx, address, JUNK) == JUNK
        assert ctx.observer.wait_records(1)[0][1:] == (len(JUNK), len(JUNK))
    else:
        assert dgram_exchange(ctx, address, JUNK) == JUNK
        assert ctx.observer.wait_records(1)[0][1:] == (len(JUNK), len(JUNK))


def check_upper(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        assert stream_exchange(ctx, address, JUNK) == JUNK.upper()
    else:
        assert dgram_exchange(ctx, address, JUNK) == JUNK.upper()
    assert ctx.observer.wait_records(1)[0][1:] == (len(JUNK), len(JUNK))


def check_discard(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        assert stream_exchange(ctx, address, JUNK * 100) == b""
        assert ctx.observer.wait_records(1)[0][1:] == (len(JUNK) * 100, 0)
    else:
        with dgram_client(ctx) as sock:
            sock.sendto(JUNK, address)
            assert_no_datagram(sock, ctx.observer, 1)
        assert ctx.observer.records[0][1:] == (len(JUNK), 0)


def check_stdout(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        assert stream_exchange(ctx, address, JUNK) == b""
        assert stream_exchange(ctx, address, b"second") == b""
        assert read_output(ctx, 2) == JUNK + b"second"
    else:
        with dgram_client(ctx) as sock:
            sock.sendto(JUNK, address)
            ctx.observer.wait_records(1)
            sock.sendto(b"second", address)
            assert_no_datagram(sock, ctx.observer, 2)
        assert read_output(ctx, 2) == JUNK + b"second"
    assert [r[1:] for r in ctx.observer.records] == [(len(JUNK), 0), (6, 0)]


def check_stdio(ctx: Ctx, address: Any) -> None:
    assert ctx.stdin_w is not None
    if ctx.transport in STREAM:
        with connect(ctx.transport, address) as sock:
            sock.sendall(JUNK)
            os.write(ctx.stdin_w, b"from stdin \xff")
            assert recv_exactly(sock, 12) == b"from stdin \xff"
            sock.shutdown(socket.SHUT_WR)  # half-closed: stdin still reaches us
            os.write(ctx.stdin_w, b"more")
            assert recv_exactly(sock, 4) == b"more"
            _TEST_ONLY_FDS.discard(ctx.stdin_w)
            os.close(ctx.stdin_w)  # stdin EOF: the server shuts its write side
            ctx.stdin_w = None
            assert recv_all(sock) == b""
        assert read_output(ctx, 1) == JUNK
        assert ctx.observer.records[0][1:] == (len(JUNK), 16)
    else:
        with dgram_client(ctx) as sock:
            sock.sendto(JUNK, address)
            assert read_output(ctx, 1) == JUNK
            os.write(ctx.stdin_w, b"to the last sender")
            assert sock.recv(65536) == b"to the last sender"
        assert ctx.observer.records[0][1:] == (len(JUNK), 0)


def check_chargen(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        with connect(ctx.transport, address) as sock:
            sock.sendall(JUNK)  # input is ignored
            data = recv_exactly(sock, 20000)
        assert data == bh.chargen_pattern(0, 20000)
        assert ctx.observer.wait_records(1)[0][2] >= 20000
    else:
        assert dgram_exchange(ctx, address, JUNK[:100]) == bh.CHARGEN_PERIOD[:100]
        assert dgram_exchange(ctx, address, JUNK * 3) == bh.CHARGEN_PERIOD[:512]
        # each thread records after it replied: two records may arrive in either order
        assert sorted(r[2] for r in ctx.observer.wait_records(2)) == [100, 512]


def parse_daytime(line: bytes) -> float:
    assert line.endswith(b"\r\n")
    parsed = time.strptime(line[:-2].decode("ascii"), "%A, %B %d, %Y %H:%M:%S-UTC")
    import calendar

    return calendar.timegm(parsed)


def check_daytime(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        line = stream_exchange(ctx, address, JUNK)
    else:
        line = dgram_exchange(ctx, address, JUNK)
    assert abs(parse_daytime(line) - time.time()) <= 2
    assert ctx.observer.wait_records(1)[0][2] == len(line)


def check_time(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        data = stream_exchange(ctx, address, JUNK)
    else:
        data = dgram_exchange(ctx, address, b"")
    assert len(data) == 4
    (value,) = struct.unpack("!I", data)
    assert abs(value - 2208988800 - time.time()) <= 2
    assert ctx.observer.wait_records(1)[0][2] == 4


REPLY = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello \xff\xfe\r\n"


def check_reply(ctx: Ctx, address: Any) -> None:
    if ctx.transport in STREAM:
        assert stream_exchange(ctx, address, b"GET / HTTP/1.0\r\n\r\n" + JUNK) == REPLY
        assert stream_exchange(ctx, address, b"x") == REPLY
        records = ctx.observer.wait_records(2)
        assert sorted(r[1:] for r in records) == [(1, len(REPLY)), (18 + len(JUNK), len(REPLY))]
    else:
        assert dgram_exchange(ctx, address, JUNK) == REPLY
        assert dgram_exchange(ctx, address, b"") == REPLY


CHECKS: dict[str, Callable[[Ctx, Any], None]] = {
    "echo": check_echo,
    "upper": check_upper,
    "discard": check_discard,
    "stdout": check_stdout,
    "stdio": check_stdio,
    "chargen": check_chargen,
    "daytime": check_daytime,
    "time": check_time,
    "reply": check_reply,
}


@contextlib.contextmanager
def make_ctx(
    name: str, transport: str, tmpdir: str, forked: bool = False
) -> Iterator[tuple[Ctx, bh.HandlerOptions]]:
    """The context of one check and the HandlerOptions it needs; closes files afterwards.

    With `forked`, the handler's observer forwards records from forked children on a pipe.
    """
    observer = RecordingObserver()
    ctx = Ctx(transport, tmpdir, observer)
    files: list[Any] = []
    kwargs: dict[str, Any] = {"observer": observer}
    if forked:
        forwarder = ForwardingObserver(observer)
        files.append(forwarder)
        kwargs["observer"] = forwarder
    if name in ("stdout", "stdio"):
        ctx.output_path = os.path.join(tmpdir, "out")
        kwargs["output"] = open(ctx.output_path, "wb")  # noqa: SIM115 - closed below
        files.append(kwargs["output"])
    if name == "stdio":
        r, w = os.pipe()
        ctx.stdin_w = w
        _TEST_ONLY_FDS.add(w)
        kwargs["input"] = os.fdopen(r, "rb", buffering=0)
        files.append(kwargs["input"])
    if name == "reply":
        kwargs["reply"] = REPLY
    try:
        yield ctx, bh.HandlerOptions(**kwargs)
    finally:
        _TEST_ONLY_FDS.clear()
        if ctx.stdin_w is not None:
            os.close(ctx.stdin_w)
        for f in files:
            f.close()


# -- the pure part --------------------------------------------------------------------------------


def test_builtin_names() -> None:
    assert list(bh.BUILTINS) == [
        "echo",
        "upper",
        "discard",
        "stdout",
        "stdio",
        "chargen",
        "daytime",
        "time",
        "reply",
    ]
    assert all(desc and "\n" not in desc for desc in bh.BUILTINS.values())


def test_transform_chunk() -> None:
    assert bh.transform_chunk("echo", JUNK) == JUNK
    assert bh.transform_chunk("upper", b"abc xyz \xc3\xa9 \xff") == b"ABC XYZ \xc3\xa9 \xff"
    assert bh.transform_chunk("upper", memoryview(JUNK)) == JUNK.upper()
    for name in ("discard", "stdout", "stdio"):
        assert bh.transform_chunk(name, JUNK) is None
    with pytest.raises(ValueError):
        bh.transform_chunk("chargen", b"")


def test_chargen_pattern() -> None:
    period = bh.CHARGEN_PERIOD
    lines = period.split(b"\r\n")[:-1]
    assert len(lines) == 95 and len(period) == 95 * 74
    assert lines[0] == b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh"
    assert lines[1] == lines[0][1:] + b"i"
    assert all(len(line) == 72 and line.isascii() for line in lines)
    assert bh.chargen_pattern(0, 3 * len(period)) == period * 3
    assert bh.chargen_pattern(len(period) - 5, 10) == period[-5:] + period[:5]
    assert bh.chargen_pattern(0, 0) == b""


def test_chargen_datagram_length_follows_the_request() -> None:
    assert bh.chargen_datagram(b"") == b""
    assert bh.chargen_datagram(b"x" * 10) == bh.CHARGEN_PERIOD[:10]
    assert bh.chargen_datagram(b"x" * 512) == bh.CHARGEN_PERIOD[:512]
    assert bh.chargen_datagram(b"x" * 9000) == bh.CHARGEN_PERIOD[:512]


def test_daytime_and_time_formats() -> None:
    assert bh.daytime_line(0) == b"Thursday, January 01, 1970 00:00:00-UTC\r\n"
    assert bh.daytime_line(383247463) == b"Monday, February 22, 1982 17:37:43-UTC\r\n"
    assert abs(parse_daytime(bh.daytime_line()) - time.time()) <= 2
    assert bh.time_bytes(0) == struct.pack("!I", 2208988800)
    assert bh.time_bytes(-2208988800) == b"\0\0\0\0"
    assert bh.time_bytes(2**32 - 2208988800 + 5) == struct.pack("!I", 5)  # wraps in 2036
    (value,) = struct.unpack("!I", bh.time_bytes())
    assert abs(value - 2208988800 - time.time()) <= 2
    assert bh.greeting("time", 0) == bh.time_bytes(0)
    with pytest.raises(ValueError):
        bh.greeting("echo")


def test_respond_datagram() -> None:
    assert bh.respond_datagram("echo", b"") == b""
    assert bh.respond_datagram("echo", JUNK) == JUNK
    assert bh.respond_datagram("upper", JUNK) == JUNK.upper()
    for name in ("discard", "stdout", "stdio"):
        assert bh.respond_datagram(name, JUNK) is None
    assert bh.respond_datagram("chargen", b"ab") == b'!"'
    assert bh.respond_datagram("daytime", JUNK, now=0) == bh.daytime_line(0)
    assert bh.respond_datagram("time", b"", now=0) == bh.time_bytes(0)
    assert bh.respond_datagram("reply", JUNK, reply=b"r") == b"r"
    assert bh.respond_datagram("reply", JUNK) == b""
    with pytest.raises(ValueError, match="unknown builtin handler 'nope'"):
        bh.respond_datagram("nope", b"")


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


# -- every builtin on every transport, thread mode ----------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(bh.BUILTINS))
def test_builtin_threading(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir) as (ctx, options):
        if transport in STREAM:
            handler = bh.stream_handler(name, options)
        else:
            handler = bh.datagram_handler(name, options)
        with running(transport, handler, sock_dir) as server:
            CHECKS[name](ctx, server.server_address)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(bh.BUILTINS))
def test_builtin_forking(name: str, transport: str, sock_dir: str) -> None:
    if name == "stdio" and transport not in STREAM:
        pytest.skip("stdin is not forwarded to datagram clients in fork mode (documented)")
    with make_ctx(name, transport, sock_dir, forked=True) as (ctx, options):
        make = bh.stream_handler if transport in STREAM else bh.datagram_handler
        with running(transport, make(name, options), sock_dir, classes=FORKING) as server:
            CHECKS[name](ctx, server.server_address)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("name", ["echo", "upper", "reply", "chargen", "time"])
def test_builtin_sync(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir) as (ctx, options):
        make = bh.stream_handler if transport in STREAM else bh.datagram_handler
        handler = make(name, options)
        classes = {"tcp": ss.TCPServer, "udp": ss.UDPServer}
        with running(transport, handler, sock_dir, classes=classes) as server:
            CHECKS[name](ctx, server.server_address)


# -- datagram sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_empty_and_largest_datagrams(transport: str, sock_dir: str) -> None:
    observer = RecordingObserver()
    largest = 65507 if transport == "udp" else 65536
    big = bytes(range(256)) * (largest // 256) + b"\xff" * (largest % 256)
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    ctx = Ctx(transport, sock_dir, observer)
    with running(transport, handler, sock_dir) as server, dgram_client(ctx) as sock:
        if transport == "unix-dgram":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.sendto(b"", server.server_address)
        assert sock.recv(65536) == b""
        sock.sendto(big, server.server_address)
        assert sock.recv(70000) == big
    # each thread records after it replied: the two records may arrive in either order
    assert sorted(r[1:] for r in observer.wait_records(2)) == [(0, 0), (largest, largest)]


def test_empty_datagram_writes_nothing(sock_dir: str) -> None:
    observer = RecordingObserver()
    out = io.BytesIO()  # no file descriptor: the writer uses write() and flush()
    handler = bh.datagram_handler("stdout", bh.HandlerOptions(output=out, observer=observer))
    ctx = Ctx("udp", sock_dir, observer)
    with running("udp", handler, sock_dir) as server, dgram_client(ctx) as sock:
        sock.sendto(b"", server.server_address)
        sock.sendto(b"abc", server.server_address)
        assert_no_datagram(sock, observer, 2)
    assert out.getvalue() == b"abc"
    assert sorted(r[1:] for r in observer.records) == [(0, 0), (3, 0)]  # threads: any order


def test_unbound_unix_datagram_client_gets_no_reply_and_no_error(sock_dir: str) -> None:
    observer = RecordingObserver()
    errors: list[Any] = []
    handler = bh.datagram_handler("echo", bh.HandlerOptions(observer=observer))
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info())}
    with running("unix-dgram", handler, sock_dir, **attrs) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"anyone?", server.server_address)
            observer.wait_records(1)
    assert not errors
    assert observer.records[0][1:] == (7, 0)


# -- observers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_observer_sees_chunks_when_it_wants_data(transport: str, sock_dir: str) -> None:
    observer = RecordingObserver(wants_data=True)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    if transport in STREAM:
        handler = bh.stream_handler("upper", options)
        with running(transport, handler, sock_dir) as server:
            assert stream_exchange(ctx, server.server_address, b"abc") == b"ABC"
    else:
        handler = bh.datagram_handler("upper", options)
        with running(transport, handler, sock_dir) as server:
            assert dgram_exchange(ctx, server.server_address, b"abc") == b"ABC"
    observer.wait_records(1)
    assert observer.chunks == [("in", b"abc"), ("out", b"ABC")]


@pytest.mark.parametrize("name", ["echo", "upper"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_observer_that_wants_no_counts_gets_no_records(
    transport: str, name: str, sock_dir: str
) -> None:
    """-q shows no record and no summary: the builtins then never call `record`."""
    observer = RecordingObserver(wants_counts=False)
    options = bh.HandlerOptions(observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    expected = b"ABC" if name == "upper" else b"abc"
    if transport in STREAM:
        handler = bh.stream_handler(name, options)
        with running(transport, handler, sock_dir) as server:  # joins the handler threads
            assert stream_exchange(ctx, server.server_address, b"abc") == expected
    else:
        handler = bh.datagram_handler(name, options)
        with running(transport, handler, sock_dir) as server:
            assert dgram_exchange(ctx, server.server_address, b"abc") == expected

        def check(address: Any) -> None:  # event mode: checked once the loop is closed
            assert dgram_exchange(ctx, address, b"abc") == expected

        asyncio.run(_serve_event(name, transport, options, sock_dir, check))
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
    monkeypatch.setattr(bh, "_USE_SPLICE", splice and bh._USE_SPLICE)
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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reply_file(transport: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "reply.http")
    body = b"HTTP/1.0 200 OK\r\n\r\n" + os.urandom(1000) * (300 if transport in STREAM else 10)
    with open(path, "wb") as f:
        f.write(body)
    observer = RecordingObserver()
    options = bh.HandlerOptions(reply_file=path, observer=observer)
    ctx = Ctx(transport, sock_dir, observer)
    if transport in STREAM:
        handler = bh.stream_handler("reply", options)
        with running(transport, handler, sock_dir) as server:
            # a request bigger than one read: the rest is read and dropped, no reset
            request = b"POST / HTTP/1.0\r\n\r\n" + b"b" * 300000
            assert stream_exchange(ctx, server.server_address, request) == body
        assert observer.wait_records(1)[0][1:] == (len(request), len(body))
    else:
        handler = bh.datagram_handler("reply", options)
        with running(transport, handler, sock_dir) as server:
            assert dgram_exchange(ctx, server.server_address, b"GET") == body


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
        with running("tcp", handler, sock_dir, classes=classes) as server:
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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stdout_raises_output_closed(transport: str, sock_dir: str) -> None:
    r, w = os.pipe()
    os.close(r)  # nobody reads: writes fail with EPIPE
    errors: list[Any] = []
    attrs = {"handle_error": lambda self, req, addr: errors.append(sys.exc_info()[1])}
    output = os.fdopen(w, "wb")
    options = bh.HandlerOptions(output=output)
    ctx = Ctx(transport, sock_dir, RecordingObserver())
    try:
        if transport in STREAM:
            handler = bh.stream_handler("stdout", options)
            with running(transport, handler, sock_dir, **attrs) as server:
                with contextlib.suppress(OSError):
                    stream_exchange(ctx, server.server_address, b"data")
        else:
            handler = bh.datagram_handler("stdout", options)
            with running(transport, handler, sock_dir, **attrs) as server:
                with dgram_client(ctx) as sock:
                    sock.sendto(b"data", server.server_address)
                    deadline = time.monotonic() + TIMEOUT
                    while not errors and time.monotonic() < deadline:
                        time.sleep(0.01)
    finally:
        with contextlib.suppress(OSError):
            output.close()
    assert len(errors) == 1 and isinstance(errors[0], bh.OutputClosed)


def test_output_closed_without_file_descriptor() -> None:
    out = io.BytesIO()
    out.close()
    writer = bh._OutputWriter(out)
    with pytest.raises(bh.OutputClosed):
        writer.write(b"x")


# -- stdio ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def stdio_server(transport: str, tmpdir: str) -> Iterator[tuple[Any, int, io.BytesIO, Any]]:
    """A stdio server fed by a pipe; yields (server, stdin write end, output, observer).

    The write end is closed (stdin EOF) before the server stops, so no handler waits on it.
    """
    observer = RecordingObserver()
    r, w = os.pipe()
    out = io.BytesIO()
    with contextlib.ExitStack() as stack:
        stdin = stack.enter_context(os.fdopen(r, "rb", buffering=0))
        options = bh.HandlerOptions(output=out, input=stdin, observer=observer)
        handler = bh.stream_handler("stdio", options)
        server = stack.enter_context(running(transport, handler, tmpdir))
        stack.callback(close_quietly, w)
        yield server, w, out, observer


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def wait_output(out: io.BytesIO, size: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(out.getvalue()) < size:
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.005)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_stdio_sends_stdin_to_every_connected_client(transport: str, sock_dir: str) -> None:
    with stdio_server(transport, sock_dir) as (server, w, out, observer):
        with contextlib.ExitStack() as clients:
            a = clients.enter_context(connect(transport, server.server_address))
            b = clients.enter_context(connect(transport, server.server_address))
            a.sendall(b"from a")
            b.sendall(b"from b")
            wait_output(out, 12)  # both connections are attached by now
            os.write(w, b"hello all")
            assert recv_exactly(a, 9) == b"hello all"
            assert recv_exactly(b, 9) == b"hello all"
            a.shutdown(socket.SHUT_WR)  # a has finished sending, and still gets stdin
            os.write(w, b"more")
            assert recv_exactly(a, 4) == b"more"
            assert recv_exactly(b, 4) == b"more"
            os.close(w)  # stdin EOF: every write side is shut
            assert recv_all(a) == b""
            assert recv_all(b) == b""
            with connect(transport, server.server_address) as c:
                assert recv_all(c) == b""  # later clients see EOF at once
        records = observer.wait_records(3)
    assert sorted(out.getvalue()) == sorted(b"from afrom b")
    assert sorted(r[1:] for r in records) == [(0, 0), (6, 13), (6, 13)]
    assert not [t for t in threading.enumerate() if t.name == "sockserve-stdin"]


def test_stdio_notices_a_closed_unix_client_at_once(sock_dir: str) -> None:
    with stdio_server("unix", sock_dir) as (server, w, out, observer):
        for i in range(3):
            with connect("unix", server.server_address) as sock:
                sock.sendall(b"bye")
            observer.wait_records(i + 1)  # stdin stays silent: the reader stops each time
            assert not [t for t in threading.enumerate() if t.name == "sockserve-stdin"]
        os.write(w, b"kept")
        with connect("unix", server.server_address) as sock:
            assert recv_exactly(sock, 4) == b"kept"  # read while nobody was connected
    assert out.getvalue() == b"byebyebye"


def test_stdio_drops_a_client_that_went_away(sock_dir: str) -> None:
    with stdio_server("tcp", sock_dir) as (server, w, out, observer):
        with connect("tcp", server.server_address) as b:
            with connect("tcp", server.server_address) as a:
                a.sendall(b"a")
                b.sendall(b"b")
                wait_output(out, 2)
            # a is closed; stdin data makes the server notice (TCP cannot tell it sooner)
            deadline = time.monotonic() + TIMEOUT
            while len(observer.records) < 1 and time.monotonic() < deadline:
                os.write(w, b".")
                assert recv_exactly(b, 1) == b"."
            assert len(observer.wait_records(1)) == 1


def test_stdio_datagrams_reader_stops_with_the_server(sock_dir: str) -> None:
    observer = RecordingObserver()
    r, w = os.pipe()
    stdin = os.fdopen(r, "rb", buffering=0)
    out = io.BytesIO()
    options = bh.HandlerOptions(output=out, input=stdin, observer=observer)
    handler = bh.datagram_handler("stdio", options)
    ctx = Ctx("udp", sock_dir, observer)
    try:
        with running("udp", handler, sock_dir) as server:
            with dgram_client(ctx) as first, dgram_client(ctx) as second:
                first.sendto(b"1", server.server_address)
                observer.wait_records(1)
                second.sendto(b"2", server.server_address)
                observer.wait_records(2)
                os.write(w, b"to second")
                assert second.recv(100) == b"to second"
        # server closed, handler released: the stdin thread is gone
        assert not [t for t in threading.enumerate() if t.name == "sockserve-stdin"]
    finally:
        os.close(w)
        stdin.close()
    assert out.getvalue() == b"12"


# -- event mode -----------------------------------------------------------------------------------


async def _serve_event(
    name: str, transport: str, options: bh.HandlerOptions, tmpdir: str, check: Any
) -> None:
    loop = asyncio.get_running_loop()
    socktype = "stream" if transport in STREAM else "dgram"
    factory = bh.protocol_factory(name, socktype, options)  # type: ignore[arg-type]
    path = os.path.join(tmpdir, "ev.sock")
    if transport == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
    elif transport == "unix":
        server = await loop.create_unix_server(factory, path)
        address = path
    elif transport == "udp":
        endpoint, _ = await loop.create_datagram_endpoint(factory, local_addr=("127.0.0.1", 0))
        address = endpoint.get_extra_info("sockname")
    else:
        endpoint, _ = await loop.create_datagram_endpoint(
            factory, local_addr=path, family=socket.AF_UNIX
        )
        address = path
    try:
        await asyncio.wait_for(asyncio.to_thread(check, address), TIMEOUT * 3)
    finally:
        if transport in STREAM:
            server.close()
            await server.wait_closed()
        else:
            endpoint.close()
            await asyncio.sleep(0)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(bh.BUILTINS))
def test_builtin_event(name: str, transport: str, sock_dir: str) -> None:
    with make_ctx(name, transport, sock_dir) as (ctx, options):
        asyncio.run(
            _serve_event(name, transport, options, sock_dir, lambda a: CHECKS[name](ctx, a))
        )


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_event_protocols_are_asyncio_protocols(transport: str) -> None:
    for name in bh.BUILTINS:
        proto = bh.protocol_factory(name, "stream", bh.HandlerOptions())()
        assert isinstance(proto, asyncio.Protocol)
        dproto = bh.protocol_factory(name, "dgram", bh.HandlerOptions())()
        assert isinstance(dproto, asyncio.DatagramProtocol)


@pytest.mark.parametrize("watched", [False, True])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_event_echo_with_and_without_a_watcher(
    transport: str, watched: bool, sock_dir: str
) -> None:
    """Unwatched, echo takes its lean protocol (write back, count); watched (-vv), the one
    that shows each chunk. Both echo and count alike."""
    observer = RecordingObserver(wants_data=watched)
    options = bh.HandlerOptions(observer=observer)
    proto = bh.protocol_factory("echo", "stream", options)()
    assert isinstance(proto, bpr._EventEcho) is not watched

    def check(address: Any) -> None:
        ctx = Ctx(transport, sock_dir, observer)
        assert stream_exchange(ctx, address, b"abc" * 1000) == b"abc" * 1000

    asyncio.run(_serve_event("echo", transport, options, sock_dir, check))
    observer.wait_records(1)
    assert observer.records[0][1:] == (3000, 3000)
    seen = {d: b"".join(c for dd, c in observer.chunks if dd == d) for d in ("in", "out")}
    assert seen == (
        {"in": b"abc" * 1000, "out": b"abc" * 1000} if watched else {"in": b"", "out": b""}
    )


def test_event_bulk_echo_and_reply_file(sock_dir: str) -> None:
    payload = os.urandom(1 << 20) * 4
    path = os.path.join(sock_dir, "reply")
    with open(path, "wb") as f:
        f.write(payload)
    for name, options, expected in [
        ("echo", bh.HandlerOptions(), payload),
        ("reply", bh.HandlerOptions(reply_file=path), payload),
    ]:

        def check(address: Any, name: str = name, expected: bytes = expected) -> None:
            ctx = Ctx("tcp", sock_dir, RecordingObserver())
            request = payload if name == "echo" else b"GET"
            assert stream_exchange(ctx, address, request) == expected

        asyncio.run(_serve_event(name, "tcp", options, sock_dir, check))


def test_event_stdio_regular_file_stdin(sock_dir: str) -> None:
    """stdin from a file (no selector can watch it) is read from the loop in chunks."""
    path = os.path.join(sock_dir, "in")
    with open(path, "wb") as f:
        f.write(b"file contents " * 10000)
    observer = RecordingObserver()
    out = io.BytesIO()
    with open(path, "rb") as stdin:
        options = bh.HandlerOptions(output=out, input=stdin, observer=observer)
        ctx = Ctx("unix", sock_dir, observer)

        def check(address: Any) -> None:
            with connect("unix", address) as sock:
                sock.sendall(b"hi")
                assert recv_all(sock) == b"file contents " * 10000
            observer.wait_records(1)

        asyncio.run(_serve_event("stdio", "unix", options, sock_dir, check))
    assert out.getvalue() == b"hi"
    assert ctx.observer.records[0][1:] == (2, 140000)


def test_event_chargen_stops_when_the_client_leaves(sock_dir: str) -> None:
    observer = RecordingObserver()
    ctx = Ctx("tcp", sock_dir, observer)

    def check(address: Any) -> None:
        for _ in range(2):
            with connect("tcp", address) as sock:
                assert recv_exactly(sock, 50000) == bh.chargen_pattern(0, 50000)
        observer.wait_records(2)

    options = bh.HandlerOptions(observer=observer)
    asyncio.run(_serve_event("chargen", "tcp", options, sock_dir, check))
    assert ctx.observer.records[0][2] >= 50000
