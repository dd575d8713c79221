"""What the builtins' tests share: observers, a server in a thread, one check per builtin.

Each builtin has one client-side check (`check_<name>`) that talks to a server at an address.
The same checks run against the framework's servers (`test_builtins_stream`,
`test_builtins_datagram`) and against asyncio servers built from `protocol_factory`
(`test_builtins_protocols`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sockserve import builtins as bh, socketserver as ss
from sockserve.loading import ROOM_BUILTINS
from sockserve.parts.watching import WatchPart

TRANSPORTS = ["tcp", "udp", "unix", "unix-dgram"]
#: The builtins that answer each connection or datagram on their own, on every transport
#: (broadcast and chat join clients together: tests/test_builtins_rooms.py; exec runs a
#: program: tests/test_exec.py; script holds the conversation of its --script, on streams
#: only: tests/test_builtins_script.py; forward needs an upstream:
#: tests/test_builtins_forward.py).
SOLO = [
    name
    for name in bh.BUILTINS
    if name not in ROOM_BUILTINS and name not in ("exec", "script", "forward")
]
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


def watched(classes: dict[str, type]) -> dict[str, type]:
    """The same server classes with `WatchPart`: every request goes through a watch, which
    reports each chunk to the `monitor` attribute (give it, `watch_data=True` and
    `record_counts=False` to `running`)."""
    return {t: type(f"Watched{c.__name__}", (WatchPart, c), {}) for t, c in classes.items()}


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
    """After the server recorded datagram n (its reply, if any, is sent by then): none came.

    A datagram sent on this machine is in our socket's queue when the send returns: the
    short timeout only spares a scheduler's hiccup, the outcome is decided already.
    """
    observer.wait_records(n)
    sock.settimeout(0.02)
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


# -- event mode -----------------------------------------------------------------------------------


async def serve_event(
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
