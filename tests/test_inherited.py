"""Sockets sockserve did not create: --fd N and socket activation (--activated, --fd-name)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sockserve.errors import UsageError
from sockserve.inherited import activated_fd, inspect_socket

SOCKSERVE = [sys.executable, "-m", "sockserve"]


def start(
    args: list[str],
    socks: list[socket.socket],
    env: dict[str, str] | None = None,
    set_pid: bool = True,
) -> subprocess.Popen[str]:
    """Start sockserve with `socks` on descriptors 3, 4... and LISTEN_PID its pid (bash moves
    the descriptors, then execs it), as systemd passes them."""
    fds = [s.fileno() for s in socks]
    staged = [f"{100 + i}<&{fd}" for i, fd in enumerate(fds)]  # out of the way of 3, 4...
    moves = [f"{3 + i}<&{100 + i} {100 + i}<&-" for i in range(len(fds))]
    line = f"exec {' '.join(staged)}; exec {' '.join(moves)}; " if fds else ""
    return subprocess.Popen(
        ["bash", "-c", line + ("LISTEN_PID=$$ " if set_pid else "") + 'exec "$@"', "bash", *args],
        pass_fds=fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err


def tcp_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def exchange(address: object, family: int = socket.AF_INET, payload: bytes = b"hi") -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(address)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


# -- the pieces -----------------------------------------------------------------------------------


def test_activated_fd_reads_and_unsets_the_variables() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"}
    assert activated_fd("admin", env) == 4
    assert env == {}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    assert activated_fd(None, env) == 3


@pytest.mark.parametrize(
    ("env", "name", "message"),
    [
        ({}, None, "LISTEN_FDS is not set"),
        ({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, None, "LISTEN_PID=1 is not this process"),
        ({"LISTEN_FDS": "1"}, None, "LISTEN_PID=None is not this process"),
        ({"LISTEN_FDS": "0"}, None, "LISTEN_FDS=0 passes no socket"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, None, r"2 sockets were passed \(a \(fd 3\)"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, "c", "--fd-name c: no passed socket"),
    ],
)
def test_activated_fd_refuses(env: dict[str, str], name: str | None, message: str) -> None:
    env = {"LISTEN_PID": str(os.getpid()), **env} if "LISTEN_PID" not in env else env
    if message.startswith("LISTEN_PID=None"):
        env.pop("LISTEN_PID")
    with pytest.raises(UsageError, match=message):
        activated_fd(name, env)


def test_inspect_socket(tmp_path: Path) -> None:
    with tcp_listener() as sock:
        family, socktype, address = inspect_socket(sock.fileno(), "--fd")
        assert (family, socktype, address.port) == ("inet", "stream", sock.getsockname()[1])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "d.sock"))
        assert inspect_socket(sock.fileno(), "--fd")[:2] == ("unix", "dgram")
        assert inspect_socket(sock.fileno(), "--fd")[2].path == str(tmp_path / "d.sock")
    with socket.socket() as sock:
        with pytest.raises(UsageError, match="is not listening"):
            inspect_socket(sock.fileno(), "--fd 7")
    r, w = os.pipe()
    try:
        with pytest.raises(UsageError, match=f"descriptor {r} is not a socket"):
            inspect_socket(r, "--fd")
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(UsageError, match="descriptor 999 is not open"):
        inspect_socket(999, "--fd")


# -- through the command --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["thread", "fork", "event"])
def test_fd_serves_the_inherited_socket(mode: str) -> None:
    with tcp_listener() as sock:
        port = sock.getsockname()[1]
        proc = start(
            [*SOCKSERVE, "tcp", "--fd", "3", "-H", "upper", "-c", mode, "--print-address"], [sock]
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"127.0.0.1:{port}"
        assert exchange(("127.0.0.1", port)) == b"HI"
        status, err = stop(proc)
        assert status == 0, err
        assert f"listening on tcp://127.0.0.1:{port}" in err
        # Our own descriptor is still open and listening: sockserve closed only its copy.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


def test_activated_unix_socket_file_stays(tmp_path: Path) -> None:
    path = str(tmp_path / "act.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen()
        proc = start(
            [*SOCKSERVE, "unix", "--activated", "--print-address", "--exec", "env"],
            [sock],
            env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == path
        seen = exchange(path, socket.AF_UNIX).decode()
        status, err = stop(proc)
        assert status == 0, err
    assert f"UNIXLOCALPATH={path}" in seen
    assert "LISTEN_FDS" not in seen and "LISTEN_PID" not in seen  # unset once read
    assert os.path.exists(path)  # not sockserve's file: never unlinked


def test_activated_chooses_by_name() -> None:
    with tcp_listener() as first, tcp_listener() as second:
        proc = start(
            [
                *SOCKSERVE,
                "tcp",
                "--activated",
                "--fd-name",
                "admin",
                "--print-address",
            ],
            [first, second],
            env={"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"127.0.0.1:{second.getsockname()[1]}"
        status, err = stop(proc)
    assert status == 0, err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["tcp"],
            {},
            "give exactly one of ADDRESS, --fd N, --activated and --inetd (none of them given)",
        ),
        (["tcp", ":0", "--fd", "3"], {}, "(ADDRESS and --fd given)"),
        (["tcp", "--fd", "3", "--activated"], {}, "(--fd and --activated given)"),
        (["tcp", "--fd-name", "x", "--fd", "3"], {}, "--fd-name only applies with --activated"),
        (["tcp", "--fd", "99"], {}, "--fd 99: descriptor 99 is not open"),
        (["tcp", "--fd", "0"], {}, "--fd 0: descriptor 0 is not a socket"),
        (["udp", "--fd", "3"], {}, "--fd 3: the socket is inet stream (127.0.0.1:"),
        (["tcp", "--fd", "3", "--backlog", "5"], {}, "--backlog does not apply"),
        (["tcp", "--activated"], {}, "LISTEN_FDS is not set"),
        (["tcp", "--activated"], {"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "LISTEN_PID=1 is not"),
    ],
)
def test_bad_input(args: list[str], env: dict[str, str], message: str) -> None:
    with tcp_listener() as sock:
        proc = start([*SOCKSERVE, *args], [sock], env=env, set_pid="LISTEN_PID" not in env)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert message in err
    assert "Traceback" not in err


def test_reuse_port_and_mode_are_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "m.sock"))
        sock.listen()
        proc = start([*SOCKSERVE, "unix", "--fd", "3", "--mode", "600"], [sock])
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--mode does not apply to a socket sockserve did not create" in err


def wait_activator_listening(proc: subprocess.Popen[str], path: str) -> None:
    """Wait for systemd-socket-activate's "Listening on PATH" line: the socket is bound and
    listening (the file alone appears at bind, before listen)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(f"Listening on {path}"):
            return
    raise AssertionError("systemd-socket-activate ended before it listened")


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
def test_systemd_socket_activate(tmp_path: Path) -> None:
    """systemd's own tool passes the socket (at the first connection), as a unit would."""
    path = str(tmp_path / "sd.sock")
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", path, "--fdname=web", *SOCKSERVE, "unix"]
        + ["--activated", "--fd-name", "web", "-H", "upper"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_activator_listening(proc, path)
        assert exchange(path, socket.AF_UNIX, b"activated") == b"ACTIVATED"
        assert exchange(path, socket.AF_UNIX, b"again") == b"AGAIN"
    finally:
        status, err = stop(proc)
    assert status == 0, err
    assert f"listening on unix://{path}" in err


# -- --inetd: the connection on stdin and stdout --------------------------------------------------


def connected_pair() -> tuple[socket.socket, socket.socket]:
    with tcp_listener() as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        served, _ = listener.accept()
    return client, served


@pytest.mark.parametrize("args", [["-H", "upper"], ["--exec", "tr a-z A-Z"]])
def test_inetd_serves_the_connection_then_exits(args: list[str]) -> None:
    client, served = connected_pair()
    with client, served:
        proc = subprocess.Popen(
            [*SOCKSERVE, "tcp", "--inetd", "-v", *args],
            stdin=served,
            stdout=served,
            stderr=subprocess.PIPE,
            text=True,
        )
        served.close()  # the server's copy is sockserve's now
        port = client.getsockname()[1]
        client.sendall(b"over inetd")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b"OVER INETD"
        assert client.recv(100) == b""
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"connect 127.0.0.1:{port}" in err
    assert f"close 127.0.0.1:{port} (10 B in, 10 B out)" in err
    assert "(the connection was served)" in err


def test_inetd_refuses_what_does_not_apply() -> None:
    client, served = connected_pair()
    with client, served:
        for args, message in [
            (["-c", "thread"], "--concurrency thread has nothing to overlap"),
            (["-H", "stdout"], "stdout is the connection"),
            (["--once"], "--once does not apply to --inetd"),
            (["--workers", "2"], "--workers does not apply to --inetd"),
        ]:
            result = subprocess.run(
                [*SOCKSERVE, "tcp", "--inetd", *args],
                stdin=served,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 2 and message in result.stderr, result.stderr
    result = subprocess.run(
        [*SOCKSERVE, "tcp", "--inetd"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--inetd: stdin is not a socket" in result.stderr
    with tcp_listener() as listener:
        result = subprocess.run(
            [*SOCKSERVE, "tcp", "--inetd"],
            stdin=listener,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2 and "no connection (a listening socket?)" in result.stderr


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
def test_systemd_socket_activate_inetd(tmp_path: Path) -> None:
    """Accept=yes: a sockserve per connection, the connection on its stdin and stdout."""
    path = str(tmp_path / "inetd.sock")
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", path, "--inetd", "-a", *SOCKSERVE, "unix", "--inetd"]
        + ["-H", "upper", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_activator_listening(proc, path)
        assert exchange(path, socket.AF_UNIX, b"one") == b"ONE"
        assert exchange(path, socket.AF_UNIX, b"two") == b"TWO"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert "Traceback" not in err


def test_inetd_logs_nothing_when_stderr_is_the_connection() -> None:
    client, served = connected_pair()
    with client, served:
        proc = subprocess.Popen(
            [*SOCKSERVE, "tcp", "--inetd", "-v", "-H", "upper"],
            stdin=served,
            stdout=served,
            stderr=served,
        )
        served.close()
        client.sendall(b"quiet")
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(100):
            received += chunk
        assert proc.wait(15) == 0
    assert received == b"QUIET"  # no "listening on", no "close" line mixed in
