"""--forward-tls end to end: client → `sockserve --forward ... --forward-tls` → a real TLS
upstream (another `sockserve --tls`, its CA from the `listening` event), in every mode, over
TCP and unix streams; verification failures, half-close, TLS on both sides, and both
directions flowing at once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_cli_tls import MODES, Served, serve, short_unix_path

from sockserve import cli

__all__ = ["serve"]  # the fixture, shared with test_cli_tls


def plain_client(address: Any) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def assert_reset(address: Any) -> None:
    """A client of `address` is reset: at its connect already, when the proxy was quick (a
    busy machine runs the client late), or at its send or read."""
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        with plain_client(address) as sock:
            sock.sendall(b"hello\n")
            sock.recv(100)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def forward(
    serve: Callable[..., Served], upstream: Served, *extra: str, mode: str = "thread"
) -> Served:
    """A forwarder to `upstream` over TLS, trusting its CA."""
    target = upstream.address
    text = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
    return serve(
        "tcp", ":0", "-c", mode, "--forward", text, "--forward-tls", "--forward-ca",
        upstream.ca, *extra,
    )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_a_tls_upstream_in_every_mode(serve: Callable[..., Served], mode: str) -> None:
    upstream = serve("tcp", "127.0.0.1:0", "--tls", "-H", "upper")
    proxy = forward(serve, upstream, mode=mode)
    with plain_client(proxy.address) as sock:
        sock.sendall(b"hello tls\n")
        got = b""
        while len(got) < 10:
            got += sock.recv(100)
        assert got == b"HELLO TLS\n"
    event = proxy.wait_for("upstream")
    assert event["error"] is None
    assert event["tls"]["version"] in ("TLSv1.2", "TLSv1.3") and event["tls"]["cipher"]
    assert upstream.wait_for("tls")["sni"] is None  # an IP address is checked, not sent
    assert proxy.stop()[0] == 0 and upstream.stop()[0] == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
@pytest.mark.parametrize("mode", ["thread", "event"])
def test_openssl_s_server_as_the_upstream(
    serve: Callable[..., Served], tmp_path: Path, mode: str
) -> None:
    """Another TLS implementation upstream: `openssl s_server -rev` (each line reversed)."""
    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "s.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    with socket.socket() as probe:  # a free port for s_server, which cannot tell its own
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["openssl", "s_server", "-rev", "-naccept", "1", "-accept", f"127.0.0.1:{port}",
         "-cert", str(tmp_path / "s.pem")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        while (line := server.stdout.readline()) and line.strip() != b"ACCEPT":
            pass
        assert line, "openssl s_server did not start"
        proxy = serve(
            "tcp", ":0", "-c", mode, "--forward", f"127.0.0.1:{port}", "--forward-tls",
            "--forward-ca", str(tmp_path / "ca.pem"),
        )  # fmt: skip
        with plain_client(proxy.address) as sock:
            sock.sendall(b"hello\n")
            sock.shutdown(socket.SHUT_WR)  # close_notify: s_server ends the connection
            assert read_to_end(sock) == b"olleh\n"
        assert proxy.wait_for("upstream")["tls"]["version"] == "TLSv1.3"
        assert server.wait(10) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


@pytest.mark.parametrize("mode", MODES)
def test_half_close_reaches_the_tls_upstream_and_its_end_comes_back(
    serve: Callable[..., Served], mode: str
) -> None:
    """The client's EOF becomes close_notify + FIN to the upstream, and what the upstream
    sends after it still arrives: echo answers all, then ends, so the client reads to EOF."""
    upstream = serve("tcp", "127.0.0.1:0", "--tls", "-H", "echo")
    proxy = forward(serve, upstream, mode=mode)
    body = bytes(range(256)) * 4096  # 1 MiB: much of the echo is on its way at the EOF
    with plain_client(proxy.address) as sock:
        reader = Reader(sock)
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        assert reader.result() == body  # all of it, then the end
    closed = upstream.wait_for("close")
    assert closed["bytes_in"] == len(body) == closed["bytes_out"]
    assert proxy.stop()[0] == 0 and upstream.stop()[0] == 0


class Reader:
    """Read `sock` to its end (or `size` bytes) in a thread, while the test sends."""

    def __init__(self, sock: socket.socket, size: int | None = None) -> None:
        self.sock = sock
        self.size = size  # None: to the EOF
        self.data = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.size is None:
                self.data = read_to_end(self.sock)
                return
            got = bytearray()
            while len(got) < self.size and (chunk := self.sock.recv(65536)):
                got += chunk
            self.data = bytes(got)
        except BaseException as exc:  # noqa: B036 - handed to the test
            self.error = exc

    def result(self) -> bytes:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the reply never ended"
        if self.error is not None:
            raise self.error
        return self.data


@pytest.mark.parametrize("mode", ["thread", "fork", "event"])
def test_tls_on_both_sides_both_directions_at_once(serve: Callable[..., Served], mode: str) -> None:
    """--tls and --forward-tls: a client sends 4 MiB while the echo upstream streams it back
    through the proxy. A relay that blocks one direction while it writes the other would
    stall here (each side's buffers fill); a relay that used one SSL object from two threads
    at once would corrupt the stream or fail."""
    upstream = serve("tcp", "127.0.0.1:0", "--tls", "-H", "echo")
    proxy = forward(serve, upstream, "--tls", mode=mode)
    body = hashlib.sha256(b"seed").digest() * (4 * 1024 * 1024 // 32)
    # event mode: the client's side is asyncio's TLS (--tls), which takes a close_notify for
    # the end of the whole connection; there the echo is read by count
    got = tls_client_exchange(proxy.address, proxy.ca, body, half_close=mode != "event")
    assert len(got) == len(body) and hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert proxy.stop()[0] == 0 and upstream.stop()[0] == 0


def tls_client_exchange(
    address: Any, ca: str, body: bytes, half_close: bool, expect: int | None = None
) -> bytes:
    """Send `body` over TLS while reading what comes back, in one thread (an SSLObject over
    memory BIOs, the socket polled); with `half_close`, close_notify and a FIN after it and
    read to the end, else read `expect` (default len(body)) bytes."""
    expect = len(body) if expect is None else expect
    context = ssl.create_default_context(cafile=ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    raw = plain_client(address)
    raw.setblocking(False)
    got = bytearray()
    wire = bytearray()  # records to send
    sent = 0
    ready = ended = shut = False
    deadline = time.monotonic() + 60
    with raw:
        while not ended and (half_close or len(got) < expect or sent < len(body) or wire):
            assert time.monotonic() < deadline, "the exchange stalled"
            if not ready:
                try:
                    tls.do_handshake()
                    ready = True
                except ssl.SSLWantReadError:
                    pass
            if ready:
                try:
                    while chunk := tls.read(65536):
                        got += chunk
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    ended = True
                if sent < len(body) and len(wire) < 262144:
                    sent += tls.write(body[sent : sent + 65536])
                elif sent == len(body) and half_close and not shut:
                    try:  # every whole record was read above: SSL_shutdown finds none
                        tls.unwrap()
                    except ssl.SSLWantReadError:
                        pass
                    shut = True
            wire += outgoing.read()
            if shut and not wire and raw.fileno() != -1:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_WR)
            poller = select.poll()
            poller.register(raw, select.POLLIN | (select.POLLOUT if wire else 0))
            for _, flags in poller.poll(1000):
                if flags & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    data = raw.recv(262144)
                    if data:
                        incoming.write(data)
                    else:
                        incoming.write_eof()
                if flags & select.POLLOUT and wire:
                    with contextlib.suppress(BlockingIOError):
                        del wire[: raw.send(wire)]
    return bytes(got)


@pytest.mark.parametrize(
    ("case", "mode"),
    [
        ("system CAs", "thread"),
        ("another CA", "event"),
        ("wrong name", "fork"),
        ("plain upstream", "sync"),
        ("plain upstream", "event"),
    ],
)
def test_a_failed_handshake_resets_the_client_and_the_server_goes_on(
    serve: Callable[..., Served], tmp_path: Path, case: str, mode: str
) -> None:
    tls = [] if case == "plain upstream" else ["--tls"]
    upstream = serve("tcp", "127.0.0.1:0", *tls, "-H", "upper")
    host, port = upstream.address
    trust: list[str] = []
    if case == "another CA":
        other = serve("tcp", "127.0.0.1:0", "--tls")
        trust = ["--forward-ca", other.ca]
    elif case == "wrong name":
        trust = ["--forward-ca", upstream.ca, "--forward-sni", "elsewhere.example"]
    elif case == "plain upstream":
        trust = ["--forward-ca", serve("tcp", "127.0.0.1:0", "--tls").ca]
    proxy = serve("tcp", ":0", "-c", mode, "--forward", f"{host}:{port}", "--forward-tls", *trust)
    expected = {
        "system CAs": "TLS certificate not trusted: unable to get local issuer certificate",
        "another CA": "TLS certificate not trusted: unable to get local issuer certificate",
        "wrong name": "Hostname mismatch",
        "plain upstream": "TLS",
    }[case]
    for count in (1, 2):  # the server goes on: the second client meets the same
        assert_reset(proxy.address)
        event = proxy.wait_for("upstream", count)
        assert expected in event["error"], event
        warning = proxy.wait_for("warning", count)["message"]
        assert expected in warning and "reset the client's connection" in warning
    status, text = proxy.stop()
    assert status == 0 and "Traceback" not in text
    assert len(proxy.events("warning")) == 2  # one per connection


def test_a_unix_upstream_with_a_named_certificate(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    path = short_unix_path(tmp_path)
    try:
        upstream = serve("unix", path, "--tls", "-H", "upper")
        proxy = forward(serve, upstream, "--forward-sni", "localhost")
        with plain_client(proxy.address) as sock:
            sock.sendall(b"over unix\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_to_end(sock) == b"OVER UNIX\n"
        assert proxy.wait_for("upstream")["upstream"] == f"unix://{path}"
        assert upstream.wait_for("tls")["sni"] == "localhost"
        assert proxy.stop()[0] == 0 and upstream.stop()[0] == 0
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_a_client_certificate_for_an_mtls_upstream(
    serve: Callable[..., Served], tmp_path: Path, mode: str
) -> None:
    keys = tmp_path / "client"
    upstream = serve("tcp", "127.0.0.1:0", "--tls", "--tls-client-cert-out", str(keys))
    without = forward(serve, upstream, mode=mode)
    assert_reset(without.address)
    # TLS 1.3: the handshake ends before the upstream checks; its refusal is the first read
    # (event mode may meet the upstream's reset before its alert: then it says so)
    warning = without.wait_for("warning")["message"]
    assert "certificate required" in warning or "want a client certificate" in warning
    with_cert = forward(
        serve, upstream, "--forward-cert", str(keys / "client.pem"),
        "--forward-key", str(keys / "client.key"), mode=mode,
    )  # fmt: skip
    with plain_client(with_cert.address) as sock:
        sock.sendall(b"mtls\n")
        assert sock.recv(10) == b"mtls\n"
    assert "client_subject" in upstream.wait_for("tls", 2)


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_faults_toward_a_tls_upstream_act_on_its_plaintext(
    serve: Callable[..., Served], mode: str
) -> None:
    """--faults-to upstream --delay: what goes to the TLS upstream leaves 200ms late (the
    plaintext is delayed, then encrypted); the fault event names the upstream's side."""
    upstream = serve("tcp", "127.0.0.1:0", "--tls", "-H", "upper")
    proxy = forward(serve, upstream, "--delay", "200ms", "--faults-to", "upstream", mode=mode)
    with plain_client(proxy.address) as sock:
        sent = time.monotonic()
        sock.sendall(b"slow\n")
        assert sock.recv(10) == b"SLOW\n"
        assert time.monotonic() - sent >= 0.18
    fault = proxy.wait_for("fault")
    assert (fault["kind"], fault["side"]) == ("delay", "upstream")
    assert proxy.stop()[0] == 0 and upstream.stop()[0] == 0


#: Command lines --forward-tls refuses, and a word of each one's line.
REFUSED = {
    "no --forward-tls": (
        ["tcp", ":0", "--forward", ":9", "--forward-ca", "x.pem"],
        "--forward-tls",
    ),
    "no --forward": (["tcp", ":0", "--forward-tls"], "needs --forward"),
    "datagrams": (["udp", ":0", "--forward", ":9", "--forward-tls"], "DTLS"),
    "unix, no name": (["tcp", ":0", "--forward", "/tmp/u.sock", "--forward-tls"], "--forward-sni"),
    "key, no cert": (
        ["tcp", ":0", "--forward", ":9", "--forward-tls", "--forward-key", "k"],
        "cert",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_are_one_line_and_exit_2(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args, word = REFUSED[case]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and word in errors[0], result.output
    assert "Traceback" not in result.output


def test_the_forward_tls_keywords_reach_their_fields() -> None:
    from sockserve.config import build_config
    from sockserve.tls_config import ForwardTls

    given = {
        "forward_tls": True,
        "forward_ca": "ca.pem",
        "forward_sni": "example.test",
        "forward_cert": "me.pem",
        "forward_key": "me.key",
    }
    config = build_config(proto="tcp", address=":0", forward="127.0.0.1:9", **given)
    assert config.forward_tls == ForwardTls("ca.pem", "example.test", "me.pem", "me.key")
    insecure = build_config(
        proto="unix", address="/tmp/x.sock", forward="/tmp/up.sock", forward_tls=True,
        forward_no_verify=True,
    )  # fmt: skip
    assert insecure.forward_tls and insecure.forward_tls.no_verify  # no name to check


def test_the_upstream_line_tells_the_tls_version_at_v() -> None:
    import io

    from sockserve.console import PlainReporter

    out = io.StringIO()
    reporter = PlainReporter(verbosity=1, stream=out)
    tls = {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}
    reporter.upstream(("127.0.0.1", 5), "tcp://127.0.0.1:9", None, tls=tls)
    assert "-> tcp://127.0.0.1:9, TLSv1.3, TLS_AES_128_GCM_SHA256" in out.getvalue()


def test_a_ca_file_that_is_not_pem_is_one_line_and_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    done = subprocess.run(
        [sys.executable, "-m", "sockserve", "tcp", "127.0.0.1:0", "--forward", "127.0.0.1:9",
         "--forward-tls", "--forward-ca", str(junk)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "cannot use --forward-ca" in lines[0] and len(lines) <= 2, lines
    assert "Traceback" not in done.stderr
