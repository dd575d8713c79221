"""stdin for stdio in thread mode: to every connected stream client, or the last sender."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from builtin_checks import (
    TIMEOUT,
    Ctx,
    RecordingObserver,
    connect,
    dgram_client,
    no_leaked_threads,  # noqa: F401 - an autouse fixture
    recv_all,
    recv_exactly,
    running,
)

from sockserve import builtins as bh


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
