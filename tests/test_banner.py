"""--banner and --banner-file: stream clients are greeted on connect, before the handler runs
(issue 15, item 13), so a server-speaks-first protocol (SMTP, FTP, POP3) can be mocked."""

from __future__ import annotations

import os
import socket

import pytest
from clitools import finish, inet_address, spawn, wait_listening

BANNER = b"220 mock ready \xe2\x82\xac\r\n"  # as --banner '220 mock ready \u20ac\r\n' gives it

USER_STREAM_HANDLER = (
    "import sockserve\n"
    "class Rev(sockserve.StreamRequestHandler):\n"
    "    def handle(self):\n"
    "        self.wfile.write(self.rfile.readline().strip()[::-1] + b'\\n')\n"
)
USER_PROTOCOL = (
    "import asyncio\n"
    "class Rev(asyncio.Protocol):\n"
    "    def connection_made(self, transport):\n"
    "        self.transport = transport\n"
    "    def data_received(self, data):\n"
    "        self.transport.write(data.strip()[::-1] + b'\\n')\n"
    "        self.transport.close()\n"
)


def _greeted(address: tuple[str, int] | str, request: bytes, banner: bytes = BANNER) -> bytes:
    """Connect; read the banner before sending anything; send `request`, half-close and
    return the rest until EOF."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)
        got = b""
        while len(got) < len(banner):
            chunk = s.recv(len(banner) - len(got))
            assert chunk, f"closed after {got!r}"
            got += chunk
        assert got == banner  # the server spoke first
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := s.recv(4096):
            rest += chunk
        return rest


def _run(args: list[str], request: bytes, cwd: str | None = None) -> tuple[bytes, str]:
    """`sockserve tcp :0 ARGS --once` with one greeted client: (what followed the banner,
    what the command printed)."""
    child = spawn(["tcp", ":0", *args, "--once", "-v"], cwd=cwd)
    address = inet_address(wait_listening(child))
    try:
        answer = _greeted(address, request)
    except BaseException:
        child.terminate(force=True)
        raise
    status, out = finish(child)
    assert status == 0, out
    return answer, out


BANNER_ARG = "220 mock ready \\u20ac\\r\\n"


@pytest.mark.parametrize("mode", ["sync", "thread", "fork", "event"])
def test_builtin_echo_greets_before_the_client_speaks(mode: str) -> None:
    answer, out = _run(["-H", "echo", "-c", mode, "--banner", BANNER_ARG], b"HELO x\r\n")
    assert answer == b"HELO x\r\n"
    assert f"1 connection, 8 B in, {len(BANNER) + 8} B out" in out  # the banner is counted


@pytest.mark.parametrize("mode", ["sync", "thread", "fork", "event"])
def test_reply_follows_the_banner(mode: str) -> None:
    args = ["-c", mode, "--banner", BANNER_ARG, "--reply", "250 ok\\r\\n"]
    answer, out = _run(args, b"MAIL FROM:<a@b>\r\n")
    assert answer == b"250 ok\r\n"
    assert f"{len(BANNER) + 8} B out" in out


@pytest.mark.parametrize("mode", ["sync", "thread", "fork"])
def test_user_stream_handler_runs_after_the_banner(sock_dir: str, mode: str) -> None:
    path = os.path.join(sock_dir, "rev_stream.py")
    with open(path, "w") as f:
        f.write(USER_STREAM_HANDLER)
    answer, out = _run(["-H", path, "-c", mode, "--banner", BANNER_ARG], b"abc\n")
    assert answer == b"cba\n"
    assert f"1 connection, 4 B in, {len(BANNER) + 4} B out" in out


def test_user_protocol_in_event_mode_runs_after_the_banner(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rev_protocol.py")
    with open(path, "w") as f:
        f.write(USER_PROTOCOL)
    answer, out = _run(["-H", path, "-c", "event", "--banner", BANNER_ARG], b"abc\n")
    assert answer == b"cba\n"
    assert f"1 connection, 4 B in, {len(BANNER) + 4} B out" in out


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_banner_file_is_sent_as_it_is_and_shown_with_vv(sock_dir: str, mode: str) -> None:
    path = os.path.join(sock_dir, "greeting.txt")
    with open(path, "wb") as f:
        f.write(BANNER)
    answer, out = _run(["-c", mode, "--banner-file", path, "-vv"], b"x")
    assert answer == b"x"
    assert "220 mock ready" in out  # the hex dump's text column shows the banner going out


def test_unix_stream_clients_are_greeted(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "b.sock")
    child = spawn(["unix", path, "--banner", BANNER_ARG, "-H", "upper", "--once"])
    wait_listening(child)
    assert _greeted(path, b"quit\r\n") == b"QUIT\r\n"
    assert finish(child)[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["udp", ":0", "--banner", "hi"], "--banner only applies to tcp and unix"),
        (["unix-dgram", "{dir}/x.sock", "--banner-file", __file__], "--banner-file only applies"),
        (["tcp", ":0", "--banner", "hi", "--banner-file", __file__], "cannot be combined"),
    ],
)
def test_banner_is_refused_where_it_cannot_apply(
    sock_dir: str, args: list[str], message: str
) -> None:
    child = spawn([arg.format(dir=sock_dir) for arg in args])
    status, out = finish(child)
    assert status == 2
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], out
    assert os.listdir(sock_dir) == []  # refused before any bind
