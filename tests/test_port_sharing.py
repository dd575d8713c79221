"""A busy port: a second server refuses it, unless both asked to share with --reuse-port.

The real command, twice on one loopback port (the first on port 0): UDP never sets
SO_REUSEADDR (two binds would both succeed and the newer take every datagram), TCP keeps it
(a restart does not wait for TIME_WAIT), and --workers share the listener they inherit, so
they cannot join a port another process serves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import clitools
import pytest

COMMAND = [sys.executable, "-m", "sockserve"]


@contextlib.contextmanager
def serving(*args: str) -> Iterator[int]:
    """`clitools.serving`, yielding the port."""
    with clitools.serving(*args) as address:
        yield int(address.rpartition(":")[2])


def refused(*args: str) -> str:
    """Run `sockserve ARGS`, which must stop at once with exit 1; return its stderr."""
    proc = subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a server that started after all goes, workers and all
    )
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"sockserve {' '.join(args)} started on a busy port:\n{err}")
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    return err


def udp_ask(port: int, payload: bytes) -> bytes:
    """Send one datagram to 127.0.0.1:port and return the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(payload, ("127.0.0.1", port))
        return client.recv(100)


def tcp_ask(port: int, payload: bytes) -> bytes:
    """Send `payload` to 127.0.0.1:port, half-close, and read the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: client.recv(100), b""))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (["udp"], ["udp"]),
        (["tcp"], ["tcp"]),
        (["tcp", "--workers", "2"], ["tcp", "--workers", "2"]),
        (["udp", "--workers", "2"], ["udp", "--workers", "2"]),
        (["tcp", "--workers", "2"], ["tcp"]),
        (["tcp"], ["tcp", "--workers", "2"]),
    ],
    ids=["udp", "tcp", "tcp-workers", "udp-workers", "workers-then-tcp", "tcp-then-workers"],
)
def test_a_second_server_on_a_busy_port_is_refused(first: list[str], second: list[str]) -> None:
    """The existing one-line error, exit 1; the first server still gets the traffic."""
    ask = udp_ask if first[0] == "udp" else tcp_ask
    with serving(first[0], "127.0.0.1:0", "-H", "echo", *first[1:]) as port:
        err = refused(second[0], f"127.0.0.1:{port}", "-H", "upper", *second[1:])
        assert err.startswith(f"sockserve: error: address 127.0.0.1:{port} is already in use\n")
        assert ask(port, b"mine") == b"mine"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_all_interfaces_beside_loopback_is_refused(transport: str) -> None:
    """0.0.0.0 overlaps 127.0.0.1 on the same port: not a second server beside it."""
    ask = udp_ask if transport == "udp" else tcp_ask
    with serving(transport, "127.0.0.1:0", "-H", "echo") as port:
        err = refused(transport, f"0.0.0.0:{port}", "-H", "upper")
        assert f"address 0.0.0.0:{port} is already in use" in err
        assert ask(port, b"mine") == b"mine"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_reuse_port_on_both_shares_the_port(transport: str) -> None:
    """Asked for on both sides, --reuse-port lets the second server bind and serve too."""
    ask = udp_ask if transport == "udp" else tcp_ask
    with serving(transport, "127.0.0.1:0", "-H", "echo", "--reuse-port") as port:
        with serving(transport, f"127.0.0.1:{port}", "-H", "echo", "--reuse-port") as again:
            assert again == port
            assert ask(port, b"shared") == b"shared"


def test_reuse_port_on_one_side_only_is_refused() -> None:
    """The server already there did not agree to share."""
    with serving("tcp", "127.0.0.1:0", "-H", "echo") as port:
        err = refused("tcp", f"127.0.0.1:{port}", "--reuse-port")
        assert "already in use" in err


def test_tcp_restarts_over_time_wait() -> None:
    """The server closes first (daytime), so its side waits in TIME_WAIT: a new server on
    the port starts at once, and only --no-reuse-address waits for it."""
    with serving("tcp", "127.0.0.1:0", "-H", "daytime") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert b"".join(iter(lambda: client.recv(100), b""))  # to the server's FIN
    err = refused("tcp", f"127.0.0.1:{port}", "--no-reuse-address")
    assert "already in use" in err
    with serving("tcp", f"127.0.0.1:{port}", "-H", "echo") as again:
        assert again == port
        assert tcp_ask(port, b"back") == b"back"
