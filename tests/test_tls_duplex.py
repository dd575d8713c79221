"""tls_duplex: one TLS connection read by one thread while another writes, over real loopback
TLS connections; half-close without losing or breaking what is still coming."""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from test_cli_tls import Served, serve

from sockserve import tls_duplex
from sockserve.tls_duplex import BioTls, SocketTls, wait_for
from sockserve.upstream_tls import HandshakeFailed, UpstreamTls

__all__ = ["serve"]  # the fixture, shared with test_cli_tls


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pair(ca: trustme.CA) -> Iterator[Callable[[], tuple[ssl.SSLSocket, ssl.SSLSocket]]]:
    """Make (server side, client side) TLS connections over loopback, handshakes done."""
    made: list[socket.socket] = []

    def make() -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            raw = socket.create_connection(listener.getsockname(), timeout=10)
            accepted, _ = listener.accept()
        accepted.settimeout(10)
        done: list[ssl.SSLSocket] = []
        shake = threading.Thread(
            target=lambda: done.append(server_ctx.wrap_socket(accepted, server_side=True))
        )
        shake.start()
        client = client_ctx.wrap_socket(raw, server_hostname="localhost")
        shake.join(10)
        made.extend([done[0], client])
        return done[0], client

    yield make
    for sock in made:
        sock.close()


def echo_peer(sock: ssl.SSLSocket) -> threading.Thread:
    """Echo in one thread (blocking reads and writes), until the end of data."""

    def run() -> None:
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.unwrap()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def both_ways_at_once(conn: Any, size: int) -> bytes:
    """Send `size` bytes from one thread while another reads as many back; what came back."""
    body = hashlib.sha256(b"x").digest() * (size // 32)
    got = bytearray()

    def read() -> None:
        buf = bytearray(65536)
        while len(got) < len(body) and (n := conn.recv_into(buf)):
            got.extend(buf[:n])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    conn.sendall(body)
    reader.join(30)
    assert not reader.is_alive(), "the echo stalled"
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    return bytes(got)


def test_socket_tls_reads_and_writes_from_two_threads(
    pair: Callable[[], tuple[ssl.SSLSocket, ssl.SSLSocket]],
) -> None:
    served, peer = pair()
    echo = echo_peer(peer)
    conn = SocketTls(served)
    both_ways_at_once(conn, 4 * 1024 * 1024)
    conn.shutdown(socket.SHUT_WR)  # close_notify: the echo's read ends, it answers with its own
    assert conn.recv(10) == b""
    echo.join(10)
    conn.release()
    assert served.gettimeout() == 10  # given back


def test_socket_tls_half_close_waits_for_what_came_in(
    pair: Callable[[], tuple[ssl.SSLSocket, ssl.SSLSocket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data waits to be read when the write side closes: close_notify waits for the reader
    (CPython's unwrap would read that record and break the connection); the data, and what
    the peer sends after our end, arrive whole."""
    monkeypatch.setattr(tls_duplex, "CLOSE_NOTIFY_WAIT", 30.0)  # a busy machine's reader
    served, peer = pair()
    conn = SocketTls(served)
    peer.sendall(b"first")
    wait_for(served, select.POLLIN, 10)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(conn.recv(100)))
    closer = threading.Thread(target=conn.shutdown, args=(socket.SHUT_WR,))
    closer.start()
    reader.start()
    closer.join(10)
    reader.join(10)
    assert got == [b"first"]
    assert peer.recv(10) == b""  # our end of data, a clean one
    peer.sendall(b"after our end")
    assert conn.recv(100) == b"after our end"


def test_socket_tls_half_close_with_no_reader_is_a_bare_fin(
    pair: Callable[[], tuple[ssl.SSLSocket, ssl.SSLSocket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_duplex, "CLOSE_NOTIFY_WAIT", 0.05)
    served, peer = pair()
    conn = SocketTls(served)
    peer.sendall(b"unread")
    wait_for(served, select.POLLIN, 10)
    conn.shutdown(socket.SHUT_WR)  # nobody reads: no close_notify, the record stays whole
    assert conn.recv(100) == b"unread"
    peer.suppress_ragged_eofs = False
    with pytest.raises(ssl.SSLEOFError):
        peer.recv(10)  # a FIN without close_notify (OpenSSL 3 peers then stop sending too)


def test_bio_tls_half_close_is_exact(ca: trustme.CA) -> None:
    """BioTls (the upstream side): records already in when our end goes out are decrypted
    first; close_notify and a FIN go out; what the server sends after still arrives."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    heard: list[bytes] = []

    def server() -> None:
        accepted, _ = listener.accept()
        with server_ctx.wrap_socket(accepted, server_side=True) as tls:
            tls.settimeout(10)
            tls.sendall(b"A" * 1000)
            while data := tls.recv(65536):
                heard.append(data)
            tls.sendall(b"after")
            tls.unwrap()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    with listener:
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        conn = UpstreamTls(client_ctx, "localhost").secure(raw, 10)
        assert isinstance(conn, BioTls)
        conn.sendall(b"request")
        wait_for(raw, select.POLLIN, 10)  # the server's A's are in
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        thread.join(10)
        conn.close()
    assert got == b"A" * 1000 + b"after"
    assert b"".join(heard) == b"request"


def test_bio_tls_reads_and_writes_from_two_threads(ca: trustme.CA) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        accepted, _ = listener.accept()
    accepted.settimeout(10)
    result: list[ssl.SSLSocket] = []
    shake = threading.Thread(
        target=lambda: result.append(server_ctx.wrap_socket(accepted, server_side=True))
    )
    shake.start()
    conn = UpstreamTls(client_ctx, "localhost").secure(raw, 10)
    shake.join(10)
    echo = echo_peer(result[0])
    both_ways_at_once(conn, 4 * 1024 * 1024)
    conn.shutdown(socket.SHUT_WR)
    assert conn.recv(10) == b""
    echo.join(10)
    conn.close()
    result[0].close()


def test_a_certificate_for_another_name_fails_in_words(ca: trustme.CA) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        accepted, _ = listener.accept()

    def shake() -> None:
        try:
            server_ctx.wrap_socket(accepted, server_side=True)
        except (OSError, ssl.SSLError):
            accepted.close()

    thread = threading.Thread(target=shake, daemon=True)
    thread.start()
    with pytest.raises(HandshakeFailed, match="Hostname mismatch"):
        UpstreamTls(client_ctx, "elsewhere.example").secure(raw, 10)
    assert raw.fileno() == -1  # closed
    thread.join(10)


def test_stdio_over_tls_sends_stdin_while_it_reads_the_client(
    serve: Callable[..., Served],
) -> None:
    """-H stdio --tls: the stdin thread writes the connection while the handler reads it;
    both ways at once, 2 MiB each, whole and in order."""
    from test_forward_tls import tls_client_exchange

    served = serve("tcp", ":0", "--tls", "-H", "stdio", "--raw", stdin=subprocess.PIPE)
    to_client = hashlib.sha256(b"stdin").digest() * (2 * 1024 * 1024 // 32)
    from_client = hashlib.sha256(b"client").digest() * (2 * 1024 * 1024 // 32)
    stdin = served.proc.stdin
    assert stdin is not None
    feeder = threading.Thread(target=lambda: (stdin.write(to_client), stdin.flush()))
    feeder.start()
    stdout = served.proc.stdout
    assert stdout is not None
    out: list[bytes] = []
    drain = threading.Thread(target=lambda: out.append(stdout.read()), daemon=True)
    drain.start()  # a full stdout pipe would stop the handler's reading
    got = tls_client_exchange(served.address, served.ca, from_client, half_close=False,
                              expect=len(to_client))  # fmt: skip
    feeder.join(30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(to_client).digest()
    stdin.close()  # stdin's end ends the connection (the client may still read: half-close)
    served.wait_for("close")
    status, _ = served.stop()
    drain.join(10)
    assert status == 0 and hashlib.sha256(out[0]).digest() == hashlib.sha256(from_client).digest()
