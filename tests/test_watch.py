"""watch: every chunk through a connection's chain of stages, counted and (-vv) reported.

Unit tests on socket pairs with a recording events interface; then the real command with a
user's handlers and -vv --json, whose data events now show both directions.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from typing import Any

import pytest
from servertools import EventsRecorder

from sockserve.watch import (
    Stage,
    Watch,
    WatchedDatagramSocket,
    WatchedSocket,
    is_watched,
)

pytestmark = pytest.mark.leakcheck


class DataRecorder(EventsRecorder):
    """An events interface that wants every chunk (-vv)."""

    wants_data = True


def watched_pair(
    reports: bool = True, client: Any = "peer"
) -> tuple[WatchedSocket, socket.socket, DataRecorder]:
    """(a watched end, the plain other end, the events the watch reports to)."""
    a, b = socket.socketpair()
    events = DataRecorder()
    sock = WatchedSocket.adopt(a, Watch(events, client, reports))
    sock.settimeout(5)
    b.settimeout(5)
    return sock, b, events


# -- the chain -------------------------------------------------------------------------------


def test_a_stage_hands_each_chunk_to_the_next_and_the_last_to_the_sink() -> None:
    seen: list[bytes] = []

    class Recorder(Stage):
        def pass_on(self, chunk: memoryview, sink: Any) -> int:
            seen.append(bytes(chunk))
            return super().pass_on(chunk, sink)

    first = Recorder(Recorder())
    with memoryview(b"abc") as chunk:
        assert first.pass_on(chunk, lambda c: len(c) - 1) == 2  # what the sink took
    assert seen == [b"abc", b"abc"]


def test_a_stage_after_the_tally_shapes_what_is_sent() -> None:
    """What a fault will be: a stage put after the first one (here, one byte per send)."""
    sizes: list[int] = []

    class OneByteAtATime(Stage):
        def pass_on(self, chunk: memoryview, sink: Any) -> int:
            for i in range(len(chunk)):
                sizes.append(super().pass_on(chunk[i : i + 1], sink))
            return len(chunk)

    sock, other, events = watched_pair()
    with sock, other:
        sock.watch.outbound.next = OneByteAtATime()
        sock.sendall(b"hello")
        assert other.recv(10, socket.MSG_WAITALL) == b"hello"
    assert sizes == [1] * 5
    assert events.named("data") == [("peer", "out", b"hello")]  # the handler's chunk, once
    assert sock.watch.sent == 5


# -- the stream socket ---------------------------------------------------------------------


def test_every_call_is_counted() -> None:
    """recv, recv_into, send and sendall, whatever kind of buffer (as the counting wrapper
    of unix connections counted them before)."""
    sock, b, events = watched_pair(reports=False)
    with sock, b:
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
        assert (sock.watch.received, sock.watch.sent) == (9, 2 + 3 + 2 + 3 + 8)
        assert b.recv(100) == b"abcdefghij" + bytes(range(8))
    assert events.named("data") == []  # counted only: nothing reported


def test_every_chunk_is_reported_in_order_with_its_client() -> None:
    sock, b, events = watched_pair(client=("127.0.0.1", 4242))
    with sock, b:
        b.sendall(b"ping")
        buf = bytearray(16)
        n = sock.recv_into(memoryview(buf).cast("I"))  # a buffer of 4-byte items
        assert n == 4
        sock.sendall(b"pong")
        sock.send(b"!")
        b.sendall(b"x")
        assert sock.recv(10) == b"x"
        assert b.recv(10, socket.MSG_WAITALL) == b"pong!"
    assert events.named("data") == [
        (("127.0.0.1", 4242), "in", b"ping"),
        (("127.0.0.1", 4242), "out", b"pong"),
        (("127.0.0.1", 4242), "out", b"!"),
        (("127.0.0.1", 4242), "in", b"x"),
    ]


def test_eof_and_peeks_are_not_chunks() -> None:
    sock, b, events = watched_pair()
    with sock, b:
        b.sendall(b"abc")
        assert sock.recv(10, socket.MSG_PEEK) == b"abc"
        assert sock.recv_into(bytearray(10), 0, socket.MSG_PEEK) == 3
        assert sock.recv(10) == b"abc"
        b.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
        assert sock.recv_into(bytearray(10)) == 0
    assert events.named("data") == [("peer", "in", b"abc")]
    assert sock.watch.received == 3


def test_an_empty_send_is_shown_on_a_stream() -> None:
    sock, b, events = watched_pair()
    with sock, b:
        sock.sendall(b"")
    assert events.named("data") == [("peer", "out", b"")]


def test_rfile_and_wfile_go_through_the_watch() -> None:
    """A StreamRequestHandler reads with makefile (recv_into) and writes with sendall."""
    sock, b, events = watched_pair()
    with sock, b:
        b.sendall(b"line one\nline two\n")
        with sock.makefile("rb") as rfile, sock.makefile("wb", buffering=0) as wfile:
            assert rfile.readline() == b"line one\n"
            assert rfile.readline() == b"line two\n"
            wfile.write(b"ok\n")
        assert b.recv(10) == b"ok\n"
    assert events.named("data") == [
        ("peer", "in", b"line one\nline two\n"),
        ("peer", "out", b"ok\n"),
    ]


def test_a_bytearray_sent_can_be_resized_afterwards() -> None:
    """The watch keeps no view of a handler's buffer after the call."""
    sock, b, _ = watched_pair()
    with sock, b:
        data = bytearray(b"abc")
        sock.sendall(data)
        sock.send(data)
        data.clear()
        buf = bytearray(b"xxx")
        b.sendall(b"hi")
        assert sock.recv_into(buf) == 2
        buf.extend(b"more")
        assert b.recv(10, socket.MSG_WAITALL) == b"abcabc"


@pytest.mark.parametrize(("offset", "count"), [(0, None), (3, None), (2, 4)])
def test_sendfile_is_read_and_sent_through_the_watch(
    tmp_path: Any, offset: int, count: int | None
) -> None:
    body = os.urandom(200_000)
    path = tmp_path / "body"
    path.write_bytes(body)
    sock, b, events = watched_pair()
    expected = body[offset:] if count is None else body[offset : offset + count]
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(_read(b, len(expected))))
    reader.start()
    with sock, b, open(path, "rb") as f:
        assert sock.sendfile(f, offset, count) == len(expected)
        assert f.tell() == offset + len(expected)  # where socket.sendfile leaves it
        reader.join(5)
    assert bytes(got) == expected
    assert b"".join(d[2] for d in events.named("data")) == expected
    assert sock.watch.sent == len(expected)


def _read(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size and (chunk := sock.recv(65536)):
        data.extend(chunk)
    return bytes(data)


def test_sendfile_wants_a_binary_file(tmp_path: Any) -> None:
    path = tmp_path / "text"
    path.write_text("text")
    sock, b, _ = watched_pair()
    with sock, b, open(path) as f, pytest.raises(ValueError, match="binary"):
        sock.sendfile(f)


def test_adopt_keeps_the_timeout_and_dup_keeps_the_watch() -> None:
    a, b = socket.socketpair()
    a.settimeout(2.5)
    watch = Watch(None, "peer")
    with WatchedSocket.adopt(a, watch) as sock, b:
        assert a.fileno() == -1  # detached: the watched socket owns the descriptor
        assert sock.gettimeout() == 2.5
        with sock.dup() as copy:
            assert isinstance(copy, WatchedSocket) and copy.watch is watch
            copy.sendall(b"hi")
        assert b.recv(10) == b"hi"
    assert watch.sent == 2
    assert is_watched(sock) and not is_watched(b)


# -- the datagram socket ---------------------------------------------------------------------


def test_a_datagram_sent_through_the_watch() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)
        here = client.getsockname()
        events = DataRecorder()
        watch = Watch(events, here, reports=True, shows_empty_out=False)
        assert watch.incoming(b"question") == 8
        sock = WatchedDatagramSocket(server, watch)
        assert is_watched(sock)
        assert sock.fileno() == server.fileno() and sock.family == socket.AF_INET
        assert sock.sendto(b"answer", here) == 6
        assert sock.sendto(b"", 0, here) == 0  # empty: counted as nothing, not shown
        assert client.recv(100) == b"answer"
        assert client.recv(100) == b""
    assert events.named("data") == [(here, "in", b"question"), (here, "out", b"answer")]
    assert (watch.received, watch.sent) == (8, 6)


# -- the real command: a user's handlers, -vv --json -----------------------------------------

USER_HANDLERS = """\
import socketserver


class Lines(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline().upper())


class Raw(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(100)
        self.request.sendall(data[::-1])


class Shout(socketserver.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read().upper())
"""


@pytest.mark.parametrize("mode", ["sync", "thread", "fork"])
@pytest.mark.parametrize(
    ("transport", "name", "payload", "reply"),
    [
        ("tcp", "Lines", b"hey\n", b"HEY\n"),  # rfile (recv_into) and wfile (sendall)
        ("tcp", "Raw", b"hello\x00\xff", b"\xff\x00olleh"),  # recv and sendall
        ("udp", "Shout", b"dgram\x01", b"DGRAM\x01"),  # the datagram, and sendto
    ],
)
def test_a_user_handler_shows_both_directions_with_vv(
    tmp_path: Any, mode: str, transport: str, name: str, payload: bytes, reply: bytes
) -> None:
    from clitools import finish, spawn, tcp_exchange

    module = tmp_path / "handlers.py"
    module.write_text(USER_HANDLERS)
    args = [transport, "127.0.0.1:0", "-H", f"{module}:{name}", "-c", mode]
    child = spawn([*args, "--json", "-vv"])
    seen = io.BytesIO()
    child.logfile_read = seen
    child.expect(rb'"url": "\w+://127\.0\.0\.1:(\d+)"')
    address = ("127.0.0.1", int(child.match.group(1)))
    if transport == "tcp":
        assert tcp_exchange(address, payload) == reply
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(payload, address)
            assert client.recv(100) == reply
    child.expect(rb'"event": "(close|request)"')  # the handler is done: stop the server
    child.sendintr()
    status, _ = finish(child)
    out = seen.getvalue().decode()
    assert status == 0, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    data = [(e["direction"], e["hex"]) for e in events if e["event"] == "data"]
    assert data == [("in", payload.hex()), ("out", reply.hex())]
    [end] = [e for e in events if e["event"] in ("close", "request")]
    assert end["event"] == ("close" if transport == "tcp" else "request")
    assert (end["bytes_in"], end["bytes_out"]) == (len(payload), len(reply))
    assert len({e["client"] for e in events if "client" in e}) == 1  # one client throughout


def test_dressers_append_stages_after_the_tally_in_order():
    seen: list[tuple[str, bytes]] = []

    class Note(Stage):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def pass_on(self, chunk, sink):
            seen.append((self.name, bytes(chunk)))
            return super().pass_on(chunk, sink)

    def dress(watch: Watch) -> None:
        watch.append("out", Note("first"))
        watch.append("out", Note("second"))
        watch.append("in", Note("in"))

    watch = Watch(None, ("127.0.0.1", 1), dressers=[dress])
    sent: list[bytes] = []
    assert watch.outgoing(b"ab", lambda chunk: sent.append(bytes(chunk)) or len(chunk)) == 2
    assert watch.incoming(b"xyz") == 3
    assert seen == [("first", b"ab"), ("second", b"ab"), ("in", b"xyz")]
    assert sent == [b"ab"]
    assert (watch.received, watch.sent) == (3, 2)
