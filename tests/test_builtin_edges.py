"""The builtins off the main path, through the real command (issue 15, the smaller items).

An empty datagram is answered by echo and upper in every mode; TCP chargen reads and drops
what its client sends (RFC 864); `-H stdio` on a terminal keeps the text typed between two
clients for the next one, also when the server has not read the first one's EOF yet.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from typing import IO

import pytest

from tests.clitools import finish, inet_address, spawn, track, wait_listening
from tests.servertools import wait_until

TIMEOUT = 10
MODES = ["sync", "thread", "fork", "event"]
#: tcpi_state of a socket whose FIN its peer acknowledged (Linux's TCP_FIN_WAIT2).
TCP_FIN_WAIT2 = 5


def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """`sockserve ARGS --print-address`; the address it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", *args, "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    track(proc)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


def ended(proc: subprocess.Popen[bytes]) -> str:
    try:
        _, err = proc.communicate(timeout=TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    return err.decode()


def host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


# -- an empty datagram gets an empty answer ----------------------------------------------------


@pytest.mark.parametrize("handler", ["echo", "upper"])
@pytest.mark.parametrize("mode", MODES)
def test_an_empty_udp_datagram_is_answered_in_every_mode(mode: str, handler: str) -> None:
    proc, address = start("udp", "127.0.0.1:0", "-H", handler, "-c", mode, "--max-requests", "2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"", host_port(address))
        assert client.recvfrom(10) == (b"", host_port(address))
        client.sendto(b"x", host_port(address))
        assert client.recv(10) == (b"x" if handler == "echo" else b"X")
    assert "2 datagrams, 1 B in, 1 B out" in ended(proc)


@pytest.mark.parametrize("extra", [[], ["-vv"]])
def test_an_empty_unix_datagram_is_answered_in_event_mode(sock_dir: str, extra: list[str]) -> None:
    path = os.path.join(sock_dir, "s")
    proc, _ = start("unix-dgram", path, "-c", "event", "--max-requests", "1", *extra)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.bind(os.path.join(sock_dir, "c"))
        client.sendto(b"", path)
        assert client.recv(10) == b""
    ended(proc)


# -- chargen drains its input ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tcp_chargen_reads_what_its_client_sends(mode: str) -> None:
    """A client that sends 8 MB while it reads the pattern is not blocked after the ~2.8 MB
    that fill the socket buffers: the server reads and drops its input (RFC 864)."""
    proc, address = start("tcp", "127.0.0.1:0", "-H", "chargen", "-c", mode, "--max-requests", "1")
    total = 8 << 20
    sent = 0
    with socket.create_connection(host_port(address), timeout=TIMEOUT) as client:

        def send() -> None:
            nonlocal sent
            block = b"x" * 65536
            while sent < total:
                client.sendall(block)
                sent += len(block)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = 0
        while sender.is_alive() or got < 1 << 20:
            got += len(client.recv(1 << 16))
            sender.join(0)
        sender.join()
    assert sent == total  # never blocked: the server read it all, or the send would wait
    assert "1 connection, " in ended(proc)  # (what it counts in depends on when our close came)


# -- stdio on a terminal: text typed between clients ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_text_typed_between_clients_goes_to_the_next_one(mode: str) -> None:
    """As text typed before the first client waits for it, text typed after a client closed
    waits for the next one (TCP tells a closed client only once it answers data with a
    reset: that text then goes to the next client).

    No pause before each send: the text comes right after the close, and may be read before
    the server has read the EOF (lost 9 times in 60 under load in sync, thread and fork mode
    until the EOF counted from its arrival)."""
    child = spawn(["tcp", "127.0.0.1:0", "-H", "stdio", "-c", mode])
    child.delaybeforesend = None
    addr = inet_address(wait_listening(child))
    child.sendline("typed before")
    with socket.create_connection(addr, timeout=TIMEOUT) as first:
        assert first.recv(100) == b"typed before\n"
        first.sendall(b"hi from the first\n")
        child.expect("hi from the first")
    child.sendline("typed between")  # the first client has closed
    child.expect(r"close 127\.0\.0\.1:\d+")
    with socket.create_connection(addr, timeout=TIMEOUT) as second:
        assert second.recv(100) == b"typed between\n"
        child.sendline("typed for the second")
        assert second.recv(100) == b"typed for the second\n"
        second.shutdown(socket.SHUT_WR)
        child.sendeof()  # stdin's end: the server shuts its side, the connection ends
        assert second.recv(100) == b""
    child.expect(r"close 127\.0\.0\.1:\d+")
    child.sendintr()
    status, out = finish(child)
    assert status == 0, out
    assert "Traceback" not in out


def client_eof_arrived(sock: socket.socket) -> bool:
    """Whether the server acknowledged the FIN of `sock` (TCP_INFO's state is FIN_WAIT2)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_FIN_WAIT2


def unread(fd: int) -> int:
    """Bytes in the pipe `fd` (either end) that nobody has read yet."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def wait_line(stream: IO[bytes], text: bytes) -> None:
    """Read `stream` (stderr) until a line holds `text`; at most TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    seen = b""
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], seen
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, seen
        seen += chunk


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="an EOF not read yet is told by POLLRDHUP; TCP_INFO and FIONREAD on a pipe: Linux's",
)
@pytest.mark.parametrize("mode", MODES)
def test_stdin_read_before_the_server_read_a_client_eof_goes_to_the_next_one(mode: str) -> None:
    """The first client's EOF has arrived, but the server has not read up to it: it is still
    writing what came before to an output that is full. Text read from stdin meanwhile is
    sent to a client that had closed (the reset says so) and goes to the next client.

    The next client connects once the first connection has ended: in fork mode the child
    that served it hands the text on to the children started after that."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", "tcp", "127.0.0.1:0", "-H", "stdio", "-c", mode]
        + ["--print-address"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    track(proc)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    addr = host_port(proc.stdout.readline().decode().strip())
    out = proc.stdout.fileno()
    # More than the output pipe holds: the server blocks writing it, with the EOF not read.
    lines = b"x" * 63 + b"\n"
    data = lines * (fcntl.fcntl(out, fcntl.F_GETPIPE_SZ) // len(lines) + 256)
    with socket.create_connection(addr, timeout=TIMEOUT) as first:
        first.sendall(data)
        first.shutdown(socket.SHUT_WR)
        first_port = first.getsockname()[1]
        assert wait_until(lambda: client_eof_arrived(first)), (
            "the server's kernel never took the EOF"
        )
    stdin = proc.stdin.fileno()
    os.write(stdin, b"between\n")
    if mode != "event":  # (the event loop itself is blocked on the output: it reads later)
        assert wait_until(lambda: unread(stdin) == 0), "stdin was not read"
    got = bytearray()
    while len(got) < len(data) and (chunk := os.read(out, 1 << 16)):
        got += chunk
    assert got == data
    wait_line(proc.stderr, b"close 127.0.0.1:%d\n" % first_port)
    with socket.create_connection(addr, timeout=TIMEOUT) as second:
        assert second.recv(100) == b"between\n"
    proc.send_signal(signal.SIGTERM)
    assert ": 2 connections, " in (err := ended(proc))
    assert ", 8 B out, " in err  # "between", once: the first client never got it
