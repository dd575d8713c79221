"""--tls end to end: the real `sockserve` command, real TLS clients (Python's ssl with default
verification, openssl s_client, curl), in every mode, over TCP and unix streams."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import wait_process

MODES = ("thread", "fork", "sync", "event")


class Served:
    """`python -m sockserve ARGS --json` running; its events read as they come."""

    def __init__(self, *args: str, stdin: Any = subprocess.DEVNULL, cwd: str | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", *args, "--json"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.listening = self.wait_for("listening")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # the end
            self.changed.notify_all()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self.changed:
            lines = list(self.lines)
        found = []
        for line in lines:
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event["event"] == name:
                    found.append(event)
        return found

    def wait_for(self, name: str, count: int = 1, timeout: float = 15) -> dict[str, Any]:
        """The `count`th event called `name`, once it came."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = self.events(name)
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == "" and len(self.lines) > 1):
                    raise AssertionError(f"no {name} event in:\n" + "\n".join(self.lines))
                self.changed.wait(left)

    @property
    def ca(self) -> str:
        return str(self.listening["tls_ca"])

    @property
    def address(self) -> Any:
        url = str(self.listening["url"])
        if url.startswith("unix://"):
            return url[len("unix://") :]
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        return host.strip("[]"), int(port)

    def raw(self) -> socket.socket:
        address = self.address
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(address)
        return sock

    def client(self, hostname: str = "localhost", cert: Path | None = None) -> ssl.SSLSocket:
        """A TLS client with default verification, trusting the run's CA."""
        context = ssl.create_default_context(cafile=self.ca)
        if cert is not None:
            context.load_cert_chain(cert / "client.pem", cert / "client.key")
        return context.wrap_socket(self.raw(), server_hostname=hostname)

    def stop(self) -> tuple[int, str]:
        """SIGTERM; return the exit status and everything it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = wait_process(self.proc, 20)
        self.reader.join(10)
        return status, "\n".join(self.lines)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, **kwargs: Any) -> Served:
        served = Served(*args, **kwargs)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(10)


def exchange(sock: ssl.SSLSocket, data: bytes) -> bytes:
    with sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def short_unix_path(tmp_path: Path) -> str:
    folder = Path(f"/tmp/sstls-{os.getpid()}-{time.monotonic_ns()}")
    folder.mkdir()
    return str(folder / "s.sock")


@pytest.mark.parametrize("mode", MODES)
def test_python_verifies_the_throwaway_certificate_in_every_mode(
    serve: Callable[..., Served], mode: str
) -> None:
    served = serve("tcp", ":0", "--tls", "-c", mode)
    ca = Path(served.ca)
    assert stat.S_IMODE(ca.stat().st_mode) == 0o600
    assert exchange(served.client(), b"hello\n") == b"hello\n"
    assert exchange(served.client("127.0.0.1"), b"by address\n") == b"by address\n"
    served.wait_for("tls", 2)
    handshakes = served.events("tls")
    assert {e["sni"] for e in handshakes} == {"localhost", None}  # no SNI for an IP address
    for event in handshakes:
        assert event["version"] in ("TLSv1.2", "TLSv1.3") and event["cipher"]
        # The connect event comes at accept, before the tls event (from a forked child,
        # the tls event comes through the parent's pipe: later, never sooner).
        kinds = [e["event"] for e in served.events() if e.get("client") == event["client"]]
        assert kinds.index("connect") < kinds.index("tls")
    status, out = served.stop()
    assert status == 0 and "Traceback" not in out
    assert not ca.exists()  # the temporary CA file goes at exit
    assert served.events("shutdown")[0]["bytes_in"] == 17


@pytest.mark.parametrize("mode", MODES)
def test_unix_streams_serve_tls_in_every_mode(
    serve: Callable[..., Served], mode: str, tmp_path: Path
) -> None:
    path = short_unix_path(tmp_path)
    try:
        served = serve("unix", path, "--tls", "-c", mode, "-H", "upper")
        assert exchange(served.client(), b"over unix\n") == b"OVER UNIX\n"
        assert served.wait_for("tls")["sni"] == "localhost"
        status, out = served.stop()
        assert status == 0 and "Traceback" not in out
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_plain_text_to_a_tls_port_is_one_line_and_the_server_goes_on(
    serve: Callable[..., Served], mode: str
) -> None:
    served = serve("tcp", ":0", "--tls", "-c", mode)
    with served.raw() as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert plain.recv(100) == b""  # closed, with no answer
        except ConnectionResetError:
            pass
    failed = served.wait_for("tls")
    assert "not TLS" in failed["error"]
    assert set(failed) == {"event", "time", "client", "conn", "error"}  # conn: its connect's
    assert exchange(served.client(), b"still here\n") == b"still here\n"
    status, out = served.stop()
    assert status == 0 and "Traceback" not in out
    shutdown = served.events("shutdown")[0]
    assert shutdown["tls_failures"] == 1 and shutdown["errors"] == 0


def ca_path(proc: subprocess.Popen[str]) -> str:
    """The CA file the banner of a running `proc` named (its first line on stderr)."""
    assert proc.stderr is not None
    banner = proc.stderr.readline()
    match = re.search(r"tls_ca=([^,)]+)", banner)
    assert match, banner
    return match.group(1)


def test_plain_output_a_failed_handshake_is_one_line_counted_in_the_summary() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockserve",
            "tcp",
            "127.0.0.1:0",
            "--tls",
            "--print-host-port",
            "-v",
            "--alpn",
            "h2",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().split()
        ca = ca_path(proc)  # the banner: read before the rest, which communicate() reads
        with socket.create_connection((host, int(port)), timeout=10) as plain:
            plain.sendall(b"hello there, plain text\n")
            try:
                while plain.recv(100):
                    pass
            except ConnectionResetError:
                pass
        context = ssl.create_default_context(cafile=ca)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, int(port)), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    lines = [line for line in err.splitlines() if "tls" in line.lower()]
    assert len(lines) == 3, err  # the failure, a handshake at -v, the summary
    assert re.fullmatch(
        r"tls 127\.0\.0\.1:\d+: TLSv1\.3, TLS_\w+, alpn h2, sni localhost", lines[1]
    )
    lines.pop(1)
    assert lines[0].startswith("tls handshake failed with 127.0.0.1:")
    assert "not TLS: plain text to a TLS port?" in lines[0]
    assert lines[1].endswith("0 errors, 1 TLS handshake failed (SIGTERM received)")
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize("mode", ["thread", "fork", "event"])
def test_a_silent_client_times_out_without_holding_up_others(
    serve: Callable[..., Served], mode: str
) -> None:
    served = serve("tcp", ":0", "--tls", "-c", mode, "--tls-handshake-timeout", "200ms")
    with served.raw():
        served.wait_for("connect")
        # The silent client's handshake waits in its own thread, child or task.
        assert exchange(served.client(), b"meanwhile\n") == b"meanwhile\n"
        failed = [e for e in (served.wait_for("tls", 2), served.events("tls")[0]) if "error" in e]
        assert failed and failed[0]["error"] == "no handshake within 0.2s"
    status, out = served.stop()
    assert status == 0 and "Traceback" not in out


def test_every_stream_builtin_over_tls(serve: Callable[..., Served]) -> None:
    """Every stream builtin serves over TLS. The nine servers start at once (a start is
    mostly CPU: the interpreter's and the throwaway certificate's), then each is checked."""
    replies = {
        "echo": b"abc\n",
        "upper": b"ABC\n",
        "reply": b"canned\n",
    }
    extra = {"reply": ["--reply", "canned\\n"], "discard": ["-v"]}
    fed = ("stdout", "stdio")  # stdin on a pipe; a grace period for stdio's stdin thread
    names = [*replies, "daytime", "time", "chargen", "discard", *fed]

    def start(name: str) -> Served:
        if name in fed:
            return serve(
                "tcp", ":0", "--tls", "-H", name, "--grace", "200ms", stdin=subprocess.PIPE
            )
        return serve("tcp", ":0", "--tls", "-H", name, *extra.get(name, []))

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        servers = dict(zip(names, pool.map(start, names), strict=True))
    for name, expected in replies.items():
        served = servers[name]
        assert exchange(served.client(), b"abc\n") == expected, name
        assert served.stop()[0] == 0
    for name in ("daytime", "time", "chargen"):
        served = servers[name]
        with served.client() as sock:
            assert sock.recv(100), name
        assert served.stop()[0] == 0
    served = servers["discard"]
    with served.client() as sock:
        sock.sendall(b"x" * 100_000)
        sock.unwrap()  # close_notify: the server sees the end of the data
    assert served.wait_for("close")["bytes_in"] == 100_000
    assert served.stop()[0] == 0
    for name in fed:
        served = servers[name]
        assert served.proc.stdin is not None
        with served.client() as sock:
            sock.sendall(b"to stdout\n")
            if name == "stdio":
                served.proc.stdin.write(b"from stdin\n")
                served.proc.stdin.flush()
                assert sock.recv(100) == b"from stdin\n"
            else:
                sock.unwrap()  # (stdio would go on sending stdin: it ends at the stop)
                served.wait_for("close")
        status, _ = served.stop()
        assert served.proc.stdout is not None
        assert served.proc.stdout.read() == b"to stdout\n", name
        assert status == 0


HANDLER = """
import asyncio
import sockserve


class Lines(sockserve.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(b"got " + line)


class Shout(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data.upper())


class Buffered(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(4)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buffer[:nbytes]).upper())
"""


@pytest.mark.parametrize("mode", ["thread", "fork", "sync"])
def test_a_users_stream_handler_gets_the_tls_socket(
    serve: Callable[..., Served], mode: str, tmp_path: Path
) -> None:
    (tmp_path / "tls_handlers.py").write_text(HANDLER)
    served = serve(
        "tcp", ":0", "--tls", "-c", mode, "-H", "tls_handlers.py:Lines", "-v", cwd=str(tmp_path)
    )
    assert exchange(served.client(), b"one line\n") == b"got one line\n"
    assert served.wait_for("close")["bytes_in"] == 9  # the plaintext, not the records
    assert served.stop()[0] == 0


@pytest.mark.parametrize("name", ["Shout", "Buffered"])
def test_a_users_protocol_in_event_mode(
    serve: Callable[..., Served], tmp_path: Path, name: str
) -> None:
    (tmp_path / "tls_handlers.py").write_text(HANDLER)
    served = serve(
        "tcp", ":0", "--tls", "-c", "event", "-H", f"tls_handlers.py:{name}", cwd=str(tmp_path)
    )
    assert exchange(served.client(), b"quiet\n") == b"QUIET\n"
    status, out = served.stop()
    assert status == 0 and "Traceback" not in out


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_the_hex_dump_shows_the_plaintext(serve: Callable[..., Served], mode: str) -> None:
    served = serve("tcp", ":0", "--tls", "-vv", "-c", mode)
    assert exchange(served.client(), b"secret\n") == b"secret\n"
    served.wait_for("close")
    data = served.events("data")
    assert [bytes.fromhex(e["hex"]) for e in data] == [b"secret\n", b"secret\n"]
    assert served.stop()[0] == 0


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_mtls_round_trip(serve: Callable[..., Served], mode: str, tmp_path: Path) -> None:
    certs = tmp_path / "client"
    served = serve("tcp", ":0", "--tls", "-c", mode, "--tls-client-cert-out", str(certs))
    for name in ("client.pem", "client.key"):
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o600
    assert served.listening["tls_client_cert"] == str(certs / "client.pem")
    assert exchange(served.client(cert=certs), b"with a cert\n") == b"with a cert\n"
    assert "commonName=sockserve client" in served.wait_for("tls")["client_subject"]
    with served.client() as anonymous:  # TLS 1.3: the server refuses after the client's Finished
        try:
            anonymous.sendall(b"no cert\n")
            assert anonymous.recv(100) == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
    assert "client certificate" in served.wait_for("tls", 2)["error"]
    status, out = served.stop()
    assert status == 0 and "Traceback" not in out


def test_client_ca_trusts_the_given_ca_only(serve: Callable[..., Served], tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ours, theirs = trustme.CA(), trustme.CA()
    ours.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    for name, ca in (("good", ours), ("bad", theirs)):
        folder = tmp_path / name
        folder.mkdir()
        leaf = ca.issue_cert("someone")
        leaf.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
        leaf.private_key_pem.write_to_path(str(folder / "client.key"))
    served = serve("tcp", ":0", "--tls", "--client-ca", str(tmp_path / "clients.pem"))
    assert exchange(served.client(cert=tmp_path / "good"), b"ok\n") == b"ok\n"
    with served.client(cert=tmp_path / "bad") as rejected:
        try:
            rejected.sendall(b"x\n")
            rejected.recv(10)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
    assert "client certificate rejected" in served.wait_for("tls", 2)["error"]
    assert served.stop()[0] == 0


def test_own_certificate_alpn_and_tls_min(serve: Callable[..., Served], tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    served = serve(
        "tcp", ":0", "--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"),
        "--alpn", "h2,http/1.1", "--tls-min", "1.3",
    )  # fmt: skip
    assert "tls_ca" not in served.listening
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.set_alpn_protocols(["http/1.1"])
    with context.wrap_socket(served.raw(), server_hostname="localhost") as sock:
        assert sock.version() == "TLSv1.3" and sock.selected_alpn_protocol() == "http/1.1"
    old = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        old.wrap_socket(served.raw(), server_hostname="localhost")
    served.wait_for("tls", 2)
    done, refused = sorted(served.events("tls"), key=lambda e: "error" in e)
    assert done["alpn"] == "http/1.1" and "error" in refused
    assert served.stop()[0] == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_verifies(serve: Callable[..., Served], tmp_path: Path) -> None:
    ca_out = tmp_path / "ca.pem"
    served = serve("tcp", ":0", "--tls", "--tls-ca-out", str(ca_out), "--alpn", "h2",
                   "-H", "reply", "--reply", "pong\\n")  # fmt: skip
    assert served.ca == str(ca_out) and stat.S_IMODE(ca_out.stat().st_mode) == 0o600
    host, port = served.address
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile", str(ca_out),
         "-servername", "localhost", "-verify_return_error", "-brief", "-ign_eof",
         "-alpn", "h2"],
        input=b"ping\n", capture_output=True, timeout=20,
    )  # fmt: skip
    out = (done.stdout + done.stderr).decode()
    assert "Verification: OK" in out and "pong" in out, out
    assert served.wait_for("tls")["alpn"] == "h2"
    assert served.stop()[0] == 0
    assert ca_out.exists()  # --tls-ca-out is kept


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("mode", ["thread", "event"])
def test_curl_with_cacert(serve: Callable[..., Served], mode: str) -> None:
    served = serve("tcp", ":0", "--tls", "-c", mode, "--reply", "HTTP/1.0 200 OK\\r\\n\\r\\nhi")
    host, port = served.address
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "15", "--cacert", served.ca,
         f"https://localhost:{port}/"],
        capture_output=True, timeout=20,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hi", b"")
    assert served.stop()[0] == 0


def _bad_files(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    trustme = pytest.importorskip("trustme")
    import datetime

    ca = trustme.CA()
    good = ca.issue_cert("localhost")
    other = ca.issue_cert("elsewhere")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = ca.issue_cert("localhost", not_before=past, not_after=past)
    good.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    expired.cert_chain_pems[0].write_to_path(str(tmp_path / "expired.pem"))
    expired.private_key_pem.write_to_path(str(tmp_path / "expired.key"))
    (tmp_path / "junk.txt").write_text("not a certificate\n")
    cert, junk = str(tmp_path / "cert.pem"), str(tmp_path / "junk.txt")
    return {
        "mismatch": (["--cert", cert, "--key", str(tmp_path / "other.key")], "does not match"),
        "not PEM": (["--cert", junk], "is not a PEM certificate"),
        "key not PEM": (["--cert", cert, "--key", junk], "holds no PEM private key"),
        "expired": (
            ["--cert", str(tmp_path / "expired.pem"), "--key", str(tmp_path / "expired.key")],
            "expired on 2020-01-01",
        ),
        "missing": (["--cert", str(tmp_path / "nope.pem")], "cannot read --cert"),
        "missing key": (["--cert", cert, "--key", str(tmp_path / "no.key")], "cannot read --key"),
        "client CA": (["--tls", "--client-ca", junk], "cannot use --client-ca"),
    }


@pytest.mark.parametrize(
    "case",
    ["mismatch", "not PEM", "key not PEM", "expired", "missing", "missing key", "client CA"],
)
def test_bad_certificate_files_are_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    args, message = _bad_files(tmp_path)[case]
    path = short_unix_path(tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sockserve", "unix", path, *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[0].startswith("sockserve: error: ") and message in lines[0], lines
        assert len(lines) <= 2 and "Traceback" not in done.stderr  # the error and a hint
        assert not os.path.exists(path)  # refused before binding
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_a_plain_run_loads_no_tls_code() -> None:
    code = (
        "import sys\n"
        "from sockserve import config, runner, compose\n"
        "from sockserve.console import PlainReporter\n"
        "c = config.build_config(proto='tcp', address='127.0.0.1:0')\n"
        "m = runner.RunMonitor(PlainReporter(), c)\n"
        "s = compose.make_server(c, runner.build_handler(c, m), m)\n"
        "s.server_close()\n"
        "print(sorted(n for n in ('ssl', 'trustme', 'cryptography', 'sockserve.tls')"
        " if n in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_the_banner_goes_out_after_the_handshake(serve: Callable[..., Served], mode: str) -> None:
    served = serve("tcp", ":0", "--tls", "-c", mode, "--banner", "220 ready\\r\\n")
    with served.client() as sock:
        assert sock.recv(100) == b"220 ready\r\n"
        sock.sendall(b"hi\n")
        assert sock.recv(100) == b"hi\n"
    assert served.stop()[0] == 0


def test_workers_share_the_context(serve: Callable[..., Served]) -> None:
    served = serve("tcp", ":0", "--tls", "--workers", "2")
    for n in range(4):
        assert exchange(served.client(), b"%d\n" % n) == b"%d\n" % n
    status, out = served.stop()
    assert status == 0 and "Traceback" not in out
    assert not os.path.exists(served.ca)  # removed once, by the supervisor
