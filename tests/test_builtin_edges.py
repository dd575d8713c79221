"""The builtins off the main path, through the real command (issue 15, the smaller items).

An empty datagram is answered by echo and upper in every mode; TCP chargen reads and drops
what its client sends (RFC 864); `-H stdio` on a terminal keeps the text typed between two
clients for the next one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.clitools import finish, inet_address, spawn, track, wait_listening

TIMEOUT = 10
MODES = ["sync", "thread", "fork", "event"]


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
    reset: that text then goes to the next client)."""
    child = spawn(["tcp", "127.0.0.1:0", "-H", "stdio", "-c", mode])
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
