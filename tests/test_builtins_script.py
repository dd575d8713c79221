"""--script through the real command: smtplib against examples/smtp.script, the redis
package against examples/redis.script, examples/device.script over a raw socket, in thread,
fork and event mode (device.script in sync mode too), with timeouts, waits, resets, and the
start-up errors (exit 2, one FILE:LINE line)."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COMMAND = [sys.executable, "-m", "sockserve"]
MODES = ["thread", "fork", "event"]


class Server:
    """A running `sockserve`: its address and the stderr lines so far."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = threading.Condition()
        assert proc.stdout is not None
        printed = proc.stdout.readline().strip()
        assert printed, "the server did not start"
        host, _, port = printed.rpartition(":")
        self.address: tuple[str, int] | str = (host, int(port)) if port.isdigit() else printed
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """The first stderr line containing `text`, once it is there."""
        with self.changed:
            self.changed.wait_for(lambda: any(text in x for x in self.lines), timeout)
            found = [x for x in self.lines if text in x]
        assert found, f"no {text!r} in {self.lines}"
        return found[0]

    def connect(self) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(15)
        sock.connect(self.address)
        return sock


@contextlib.contextmanager
def serving(*args: str) -> Iterator[Server]:
    """Run `sockserve ARGS --print-address`; stop it with SIGTERM (exit 0) at the end."""
    proc = subprocess.Popen(
        [*COMMAND, *args, "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server = Server(proc)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    server.reader.join(10)
    assert proc.returncode == 0, server.lines
    assert not any("Traceback" in line for line in server.lines), server.lines


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("mode", MODES)
def test_smtplib_sends_one_message(mode):
    with serving("tcp", ":0", "-c", mode, "--script", str(EXAMPLES / "smtp.script")) as server:
        host, port = server.address
        with smtplib.SMTP(host, port, timeout=15) as client:
            assert client.ehlo("client.test") == (250, b"hello client.test")
            refused = client.sendmail(
                "alice@example.org",
                ["bob@example.org"],
                "Subject: hello there\r\n\r\nfirst line\r\n.leading dot\r\n",
            )
            assert refused == {}
            assert client.mail("carol@example.org") == (452, b"one message per connection")
            code, _ = client.docmd("DATA")
            assert code == 452
        assert client.sock is None  # QUIT answered 221 and closed (smtplib raises otherwise)
        line = server.wait_for("accepted a message")
        assert line.endswith(
            ": accepted a message from <alice@example.org> to <bob@example.org>, "
            "subject hello there"
        )
        assert line.startswith("script 127.0.0.1:")
        server.wait_for("close 127.0.0.1:")


@pytest.mark.parametrize("mode", MODES)
def test_redis_client_ping_set_get_del(mode):
    redis = pytest.importorskip("redis", reason="the redis package (the test extra) is missing")
    script = str(EXAMPLES / "redis.script")
    with serving("tcp", ":0", "-c", mode, "--script", script) as server:
        host, port = server.address
        client = redis.Redis(host=host, port=port, protocol=2, socket_timeout=15)
        try:
            assert client.ping() is True
            assert client.set("greeting", "hello world") is True
            assert client.get("greeting") == b"hello world"
            assert client.get("missing") is None
            assert client.exists("greeting") == 1
            assert client.echo("two words") == b"two words"
            with pytest.raises(redis.ResponseError, match="unknown command 'FLUSHALL'"):
                client.execute_command("FLUSHALL")
            if mode != "fork":  # one process: the store is the server's, seen by a new client
                other = redis.Redis(host=host, port=port, protocol=2, socket_timeout=15)
                assert other.get("greeting") == b"hello world"
                other.close()
            assert client.delete("greeting") == 1
            assert client.get("greeting") is None
        finally:
            client.close()


@pytest.mark.parametrize("mode", ["sync", *MODES, "thread -vv", "event -vv"])
def test_device_example_over_a_raw_socket(mode):
    mode, *watched = mode.split()  # -vv: the socket (transport) is watched, each chunk shown
    device = str(EXAMPLES / "device.script")
    with serving("tcp", ":0", "-c", mode, "--script", device, *watched) as server:
        with server.connect() as sock:
            sock.sendall(b"*IDN?\nVOLT 3.5\r\nVOLT?\nbogus\n")
            assert read_line(sock) == b"SOCKSERVE,MOCK-1,0001,1.0\n"
            assert read_line(sock) == b"OK\n"
            assert read_line(sock) == b"3.5\n"
            assert read_line(sock) == b"ERR unknown command 'bogus'\n"
            started = time.monotonic()
            sock.sendall(b"MEAS?\n")
            assert read_line(sock) == b"3.5\n"
            assert time.monotonic() - started >= 0.19  # `wait 200ms`
            sock.sendall(b"BYE\n")
            assert sock.recv(10) == b""
        if watched:
            server.wait_for("> 127.0.0.1:")  # a chunk out, in the hex dump's heading


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_expect_timeout_closes_with_one_log_line(mode, tmp_path):
    script = tmp_path / "hello.script"
    script.write_text("banner hi\\n\nexpect /^HELLO/ within 300ms\nsend welcome\\n\n")
    with serving("tcp", ":0", "-c", mode, "--script", str(script)) as server:
        with server.connect() as sock:
            started = time.monotonic()
            assert read_line(sock) == b"hi\n"
            assert sock.recv(10) == b""  # closed by the script, not by the client
            assert 0.25 <= time.monotonic() - started < 5
        line = server.wait_for("no line within")
        assert line.endswith("no line within 0.3s (expect /^HELLO/): closing")
        with server.connect() as sock:
            sock.sendall(b"HELLO\n")
            assert read_line(sock) == b"hi\n" and read_line(sock) == b"welcome\n"
        assert len([x for x in server.lines if "no line within" in x]) == 1


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_on_timeout_and_reset(mode, tmp_path):
    script = tmp_path / "keepalive.script"
    script.write_text(
        "timeout 200ms\n"
        'on "ping"  send pong\\n\n'
        'on "crash" reset\n'
        "on timeout send still there?\\n\n"
    )
    with serving("tcp", ":0", "-c", mode, "--script", str(script)) as server:
        with server.connect() as sock:
            assert read_line(sock) == b"still there?\n"
            sock.sendall(b"ping\n")
            assert read_line(sock) == b"pong\n"
            assert read_line(sock) == b"still there?\n"
            sock.sendall(b"crash\n")
            with pytest.raises(ConnectionResetError):
                while sock.recv(100):
                    pass


def test_unix_socket_and_event_mode(tmp_path):
    path = str(tmp_path / "s")
    with serving("unix", path, "-c", "event", "--script", str(EXAMPLES / "device.script")) as srv:
        with srv.connect() as sock:
            sock.sendall(b"*RST\nVOLT?\nQUIT\n")
            assert read_line(sock) == b"OK\n" and read_line(sock) == b"0\n"
            assert sock.recv(10) == b""


def test_the_python_api_takes_a_script_path():
    import sockserve

    with sockserve.serve("tcp", script=EXAMPLES / "device.script") as server:
        with socket.create_connection(server.address, timeout=15) as sock:
            sock.sendall(b"*IDN?\n")
            assert read_line(sock) == b"SOCKSERVE,MOCK-1,0001,1.0\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-H", "upper"], "--script runs its own handler (-H script): not with -H upper"),
        (["-c", "event", "--reply", "x"], "--script and --reply/--reply-file cannot be combined"),
    ],
)
def test_script_conflicts_with_another_handler(args, message):
    script = str(EXAMPLES / "device.script")
    proc = subprocess.run(
        [*COMMAND, "tcp", ":0", "--script", script, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["udp", ":0", "--script", "{script}"], "--script holds a conversation on a connection"),
        (["tcp", ":0", "-H", "script"], "-H script needs --script FILE"),
        (["tcp", ":0", "--script", "{bad}"], "{bad}:3: bad regex /(x/: missing ), unterminated"),
        (["tcp", ":0", "--script", "{missing}"], "cannot read --script {missing}"),
    ],
)
def test_start_up_errors_are_one_line_and_exit_2(args, message, tmp_path):
    bad = tmp_path / "bad.script"
    bad.write_text("# a comment\nbanner hi\\n\non /(x/ send y\n")
    names = {
        "script": str(EXAMPLES / "device.script"),
        "bad": str(bad),
        "missing": str(tmp_path / "missing.script"),
    }
    args = [a.format(**names) for a in args]
    proc = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message.format(**names) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1, proc.stderr
