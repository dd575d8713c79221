"""Datagrams through the real command: nothing cut, nothing silently lost (issue 15, item 4).

unix datagrams past 64 KiB are read whole (`parts.whole_datagrams`); `-H stdio` over a
datagram transport refuses fork mode; what stdio sends from stdin counts in the bytes out.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.clitools import track

TIMEOUT = 10
MODES = ["sync", "thread", "fork", "event"]
BIG = 200_000  # past UDP's 64 KiB, within a unix datagram socket's default send buffer


def sockserve(*args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    track(proc)
    return proc


def ended(proc: subprocess.Popen[bytes]) -> tuple[bytes, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    return out, err.decode()


def unix_client(sock_dir: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.settimeout(TIMEOUT)
    client.bind(os.path.join(sock_dir, "client"))
    return client


def big_datagram() -> bytes:
    return os.urandom(BIG - 1) + b"."  # no newline at the end


@pytest.mark.parametrize("mode", MODES)
def test_a_unix_datagram_past_64_kib_is_echoed_whole(sock_dir: str, mode: str) -> None:
    path = os.path.join(sock_dir, "s")
    proc = sockserve("unix-dgram", path, "-c", mode, "--max-requests", "1", "--print-address")
    assert proc.stdout is not None
    proc.stdout.readline()
    payload = big_datagram()
    with unix_client(sock_dir) as client:
        client.sendto(payload, path)
        assert client.recv(BIG + 1) == payload
    _, err = ended(proc)
    assert "1 datagram, 195.3 KiB in, 195.3 KiB out" in err


@pytest.mark.parametrize("mode", MODES)
def test_a_unix_datagram_past_64_kib_is_written_whole(sock_dir: str, mode: str) -> None:
    path = os.path.join(sock_dir, "s")
    args = ["unix-dgram", path, "-H", "stdout", "-c", mode, "--max-requests", "2"]
    proc = sockserve(*args, "--json")
    assert proc.stderr is not None
    assert b'"listening"' in proc.stderr.readline()
    payload = big_datagram()
    with unix_client(sock_dir) as client:
        client.sendto(payload, path)
        client.sendto(b"small", path)
    out, _ = ended(proc)
    # One line per datagram. Forked children share the pipe: "small" may come first, or
    # (fork) between two of the big datagram's lines, never inside one.
    at = out.index(b"small\n")
    assert at == 0 or out[at - 1 : at] == b"\n"
    assert mode == "fork" or at in (0, BIG + 1)
    assert out[:at] + out[at + 6 :] == payload + b"\n"


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_stdio_over_datagrams_refuses_fork_mode(sock_dir: str, transport: str) -> None:
    address = "127.0.0.1:0" if transport == "udp" else os.path.join(sock_dir, "s")
    proc = sockserve(transport, address, "-H", "stdio", "-c", "fork")
    _, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 2, err
    error = [line for line in err.decode().splitlines() if line.startswith("Error:")]
    assert error == [
        f"Error: -H stdio over {transport} cannot fork: a child per datagram cannot share stdin "
        "with the next one; use -c sync (the default for datagrams), thread or event"
    ]
    assert not os.listdir(sock_dir)


@pytest.mark.parametrize("mode", ["sync", "thread", "event"])
def test_udp_stdio_counts_what_it_sends_from_stdin(mode: str) -> None:
    """The client's first datagram makes it stdin's destination; stdin's line goes to it and
    counts in the summary's bytes out, as a `sent` event in --json."""
    r, w = os.pipe()
    args = ["udp", "127.0.0.1:0", "-H", "stdio", "-c", mode, "--max-requests", "2", "--json"]
    proc = sockserve(*args, stdin=r)
    os.close(r)
    assert proc.stderr is not None
    listening = json.loads(proc.stderr.readline())
    host, port = listening["url"].removeprefix("udp://").rsplit(":", 1)
    with os.fdopen(w, "wb") as stdin, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"hello\n", (host, int(port)))
        stdin.write(b"from stdin\n")
        stdin.flush()
        assert client.recv(100) == b"from stdin\n"
        client.sendto(b"bye\n", (host, int(port)))
        out, err = ended(proc)
    assert out == b"hello\nbye\n"
    events = [json.loads(line) for line in err.splitlines()]
    sent = [e for e in events if e["event"] == "sent"]
    assert [(e["client"].split(":")[0], e["bytes_out"]) for e in sent] == [("127.0.0.1", 11)]
    shutdown = events[-1]
    assert (shutdown["requests"], shutdown["bytes_in"], shutdown["bytes_out"]) == (2, 10, 11)


def test_udp_stdio_summary_says_the_bytes_out() -> None:
    r, w = os.pipe()
    proc = sockserve("udp", "127.0.0.1:0", "-H", "stdio", "--max-requests", "2", "-v", stdin=r)
    os.close(r)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    host, port = line.split("udp://")[1].split()[0].rsplit(":", 1)
    with os.fdopen(w, "wb") as stdin, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"hello\n", (host, int(port)))
        stdin.write(b"from stdin\n")
        stdin.flush()
        assert client.recv(100) == b"from stdin\n"
        client.sendto(b"bye\n", (host, int(port)))
        _, err = ended(proc)
    assert "stdin to 127.0.0.1:" in err and ": 11 B out" in err
    assert "2 datagrams, 10 B in, 11 B out" in err
