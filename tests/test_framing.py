"""What -H stdout and -H stdio write, through the real command (issue 15, item 3).

Datagrams are one line each (a newline added where one lacks), streams whole lines per client
(a partial line waits for its end, or for the client's close), `--raw` the bytes as they come.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pexpect
import pytest

from tests.clitools import finish, inet_address, track, wait_listening

TIMEOUT = 10
MODES = ["sync", "thread", "fork", "event"]


def start(*args: str) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """`sockserve ARGS --print-address`, stdout and stderr piped; the address it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", *args, "--print-address"],
        stdin=subprocess.DEVNULL,  # stdio: stdin at its end, so connections end with the client
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    track(proc)
    assert proc.stdout is not None
    host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
    return proc, (host, int(port))


def ended(proc: subprocess.Popen[bytes]) -> tuple[bytes, str]:
    """Wait for the end of a run that stops by itself; its stdout (data) and stderr."""
    try:
        out, err = proc.communicate(timeout=TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    return out, err.decode()


def connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- datagrams: one line each -----------------------------------------------------------------

SYSLOG = [
    b"<13>Dec  7 23:00:00 web app[1]: ok started",
    b"<11>Dec  7 23:00:01 web app[1]: ERR disk full",
    b"",  # served (counted), writes nothing
    b"<13>Dec  7 23:00:02 web app[1]: ok\n",  # ends with a newline: none added
    b"<11>Dec  7 23:00:03 web app[1]: ERR again",
]


@pytest.mark.parametrize("mode", MODES)
def test_datagrams_are_one_line_each_through_a_pipe_to_grep(tmp_path: Path, mode: str) -> None:
    """`sockserve udp :PORT -H stdout | grep ERR`: syslog-like datagrams without newlines
    come out as lines, which grep sees one by one."""
    out_file = tmp_path / "errs.txt"
    cmd = (
        f"{sys.executable} -m sockserve udp 127.0.0.1:0 -H stdout -c {mode} "
        f"--max-requests {len(SYSLOG)} | grep ERR > {out_file}; echo status=${{PIPESTATUS[0]}}"
    )
    child = pexpect.spawn("bash", ["-c", cmd], timeout=TIMEOUT, env=dict(os.environ, NO_COLOR="1"))
    addr = inet_address(wait_listening(child))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for datagram in SYSLOG:
            client.sendto(datagram, addr)
    _, out = finish(child)
    assert "status=0" in out, out
    assert "5 datagrams" in out, out
    lines = out_file.read_bytes().splitlines(keepends=True)
    assert sorted(lines) == [SYSLOG[1] + b"\n", SYSLOG[4] + b"\n"]  # fork: any order


@pytest.mark.skipif(shutil.which("logger") is None, reason="needs logger (util-linux)")
def test_logger_messages_are_lines() -> None:
    """util-linux's `logger -d -n 127.0.0.1 -P PORT` sends datagrams with no newline."""
    proc, (host, port) = start("udp", "127.0.0.1:0", "-H", "stdout", "--max-requests", "2")
    try:
        for message in ("ERR first", "ERR second"):
            subprocess.run(
                ["logger", "-d", "-n", host, "-P", str(port), "--rfc3164", message],
                check=True,
                timeout=TIMEOUT,
            )
    finally:
        out, _ = ended(proc)
    lines = out.splitlines(keepends=True)
    assert len(lines) == 2, out
    assert lines[0].endswith(b"ERR first\n") and lines[1].endswith(b"ERR second\n"), out


@pytest.mark.parametrize("mode", ["sync", "event"])
def test_raw_datagrams_are_written_as_they_come(mode: str) -> None:
    proc, addr = start(
        "udp", "127.0.0.1:0", "-H", "stdout", "--raw", "-c", mode, "--max-requests", "3"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for datagram in (b"one", b"", b"two"):
            client.sendto(datagram, addr)
    out, _ = ended(proc)
    assert out == b"onetwo"


# -- streams: whole lines per client ------------------------------------------------------------

LINES_PER_CLIENT = 2000


def line(who: str, i: int) -> bytes:
    """A 100-byte line."""
    return f"{who}{i:05d} ".encode().ljust(99, who.encode()) + b"\n"


@pytest.mark.parametrize(
    ("handler", "mode"),
    [("stdout", "thread"), ("stdout", "fork"), ("stdout", "event"), ("stdio", "thread")],
)
def test_two_clients_sending_lines_in_pieces_never_mix_inside_a_line(
    handler: str, mode: str
) -> None:
    """Two clients send 100-byte lines in two pieces each, turn by turn (a's first half,
    b's first half, a's second half...): every line comes out whole, each client's in order."""
    proc, addr = start("tcp", "127.0.0.1:0", "-H", handler, "-c", mode, "--max-requests", "2")
    a, b = connect(addr), connect(addr)
    with a, b:
        for i in range(LINES_PER_CLIENT):
            la, lb = line("a", i), line("b", i)
            a.sendall(la[:50])
            b.sendall(lb[:50])
            a.sendall(la[50:])
            b.sendall(lb[50:])
    out, _ = ended(proc)
    lines = out.splitlines(keepends=True)
    assert [x for x in lines if x.startswith(b"a")] == [
        line("a", i) for i in range(LINES_PER_CLIENT)
    ]
    assert [x for x in lines if x.startswith(b"b")] == [
        line("b", i) for i in range(LINES_PER_CLIENT)
    ]
    assert len(lines) == 2 * LINES_PER_CLIENT


@pytest.mark.parametrize(
    ("handler", "mode"), [*(("stdout", mode) for mode in MODES), ("stdio", "event")]
)
def test_partial_last_line_and_long_lines_come_out_whole(handler: str, mode: str) -> None:
    """A line over the 64 KiB buffer goes out (in pieces); the partial last line when the
    client closes, with no newline added."""
    long_line = os.urandom(100_000).replace(b"\n", b"-") + b"\n"
    proc, addr = start("tcp", "127.0.0.1:0", "-H", handler, "-c", mode, "--max-requests", "1")
    with connect(addr) as client:
        client.sendall(b"first\nsec")
        client.sendall(b"ond\n" + long_line + b"no newline at the end")
    out, err = ended(proc)
    assert out == b"first\nsecond\n" + long_line + b"no newline at the end"
    assert "1 connection, 97.7 KiB in" in err


@pytest.mark.parametrize("mode", ["thread", "fork", "event"])
def test_closed_output_while_a_line_is_held_stops_with_exit_0(mode: str) -> None:
    """`| head -n 1`: head has its line and exits while another client's partial line is
    held; that line's write at the client's close finds the pipe closed: exit 0, as today."""
    cmd = (
        f"{sys.executable} -m sockserve tcp 127.0.0.1:0 -H stdout -c {mode} | head -n 1; "
        "echo status=${PIPESTATUS[0]}"
    )
    child = pexpect.spawn("bash", ["-c", cmd], timeout=TIMEOUT, env=dict(os.environ, NO_COLOR="1"))
    addr = inet_address(wait_listening(child))
    holder = connect(addr)
    holder.sendall(b"held, with no newline yet")
    with connect(addr) as writer:
        writer.sendall(b"the line head prints\n")
    child.expect("the line head prints")
    holder.close()  # its partial line goes out now, into a closed pipe
    status, out = finish(child)
    assert "status=0" in out, out
    assert "stdout closed" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("handler", ["echo", "discard", "reply --reply x"])
def test_raw_is_refused_for_handlers_that_write_nothing_to_stdout(handler: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sockserve", "tcp", "127.0.0.1:0", "--raw", "-H", *handler.split()],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    name = handler.split()[0]
    assert (
        f"Error: --raw changes what -H stdout and -H stdio write, not -H {name}; drop --raw, "
        "or use -H stdout or -H stdio"
    ) in out.stderr
    assert "Traceback" not in out.stderr


# -- --raw keeps today's fast path -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize(("raw", "spliced"), [(True, True), (False, False)])
def test_splice_moves_bulk_data_with_raw_only(tmp_path: Path, raw: bool, spliced: bool) -> None:
    """Raw, bulk data into a pipe moves with splice; with line framing every byte is read."""
    trace = tmp_path / "trace"
    args = ["tcp", "127.0.0.1:0", "-H", "stdout", "--max-requests", "1", "--print-address"]
    if raw:
        args.append("--raw")
    strace = ["strace", "-f", "-qq", "-e", "trace=splice", "-o", str(trace)]
    proc = subprocess.Popen(
        [*strace, sys.executable, "-m", "sockserve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
    payload = b"0123456789abcdef\n" * 300_000  # 5 MiB of lines

    def send() -> None:
        with connect((host, int(port))) as client:
            client.sendall(payload)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        out, err = proc.communicate(timeout=TIMEOUT * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sender.join(TIMEOUT)
    assert proc.returncode == 0, err
    assert out == payload
    splices = [x for x in trace.read_text().splitlines() if "splice(" in x]
    assert bool(splices) is spliced, splices[:3]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("mode", ["thread", "event"])
def test_a_held_line_that_cannot_be_written_is_a_fatal_error(mode: str) -> None:
    """The partial line written at the client's close finds a full disk: exit 1, as for any
    write that loses data."""
    cmd = f"{sys.executable} -m sockserve tcp 127.0.0.1:0 -H stdout -c {mode} >/dev/full"
    child = pexpect.spawn("bash", ["-c", cmd], timeout=TIMEOUT, env=dict(os.environ, NO_COLOR="1"))
    addr = inet_address(wait_listening(child))
    with connect(addr) as client:
        client.sendall(b"a partial line, held until the client closes")
    status, out = finish(child)
    assert status == 1, out
    assert "sockserve: error: cannot write to stdout: no space left on device" in out
    assert "Traceback" not in out
