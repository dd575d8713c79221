"""--record DIR and -H replay --transcript FILE through the real `sockserve` command."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.clitools import track

NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-(tcp|udp|unix|unix-dgram)-[A-Za-z0-9._-]+-\d+-\d+\.jsonl$")
CHUNK_LINE = re.compile(r'^\{"t": \d+\.\d{6}, "dir": "(in|out)", "(text|hex)": .*\}$')
CLOSE_LINE = re.compile(r'^\{"t": \d+\.\d{6}, "close": \{.*\}\}$')

#: A handler that greets, answers a line after 0.4 s, then closes: the recorded delay.
SLOW_HANDLER = """
import time
import socketserver

class Slow(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"hi\\n")
        line = self.rfile.readline()
        time.sleep(0.4)
        self.wfile.write(b"bye " + line)
"""


#: The servers the running test started (`no_server_left` ends what a failing test left).
class Server:
    """`sockserve ARGS --print-address` started in a subprocess; stderr on a pipe."""

    def __init__(self, *args: str, limit_file_size: int | None = None) -> None:
        env = dict(os.environ, NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")

        def preexec() -> None:
            if limit_file_size is not None:  # a real write error: EFBIG past this size
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", *args, "--print-address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=preexec,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"no address: {err.decode()}")
        track(self.proc)
        self.text = line
        if line.startswith("["):
            host, port = line[1:].rsplit("]:", 1)
            self.address: Any = (host, int(port))
        elif re.match(r"^[\d.]+:\d+$", line):
            host, port = line.rsplit(":", 1)
            self.address = (host, int(port))
        else:
            self.address = line

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the run to end (--max-requests); return (status, stderr)."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"server did not stop: {err.decode()}") from None
        return self.proc.returncode, err.decode()


def run_fails(*args: str) -> tuple[int, str]:
    """Run a command that must fail before serving."""
    done = subprocess.run(
        [sys.executable, "-m", "sockserve", *args],
        capture_output=True,
        timeout=20,
        env=dict(os.environ, NO_COLOR="1"),
    )
    return done.returncode, done.stderr.decode()


def converse(address: tuple[str, int]) -> tuple[int, bytes]:
    """The test conversation with -H upper: a line of text, then two bytes that are not
    UTF-8; each answer read before the next; then close. Returns (client port, answers)."""
    with socket.create_connection(address, timeout=10) as s:
        got = b""
        s.sendall(b"hello\n")
        while len(got) < 6:
            got += s.recv(100)
        s.sendall(b"\xff\x00")
        while len(got) < 8:
            got += s.recv(100)
        return s.getsockname()[1], got


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_text(encoding="utf-8").splitlines()
    for line in raw[1:-1]:
        assert CHUNK_LINE.match(line), line
    assert CLOSE_LINE.match(raw[-1]), raw[-1]
    return [json.loads(line) for line in raw]


def only_file(directory: Path) -> Path:
    files = sorted(directory.iterdir())
    assert len(files) == 1, files
    return files[0]


def check_upper_transcript(path: Path, transport: str, client: str, server: str) -> None:
    assert NAME.match(path.name), path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = read_lines(path)
    header = lines[0]
    start = header.pop("start")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", start)
    assert header == {
        "sockserve-transcript": 1,
        "transport": transport,
        "client": client,
        "server": server,
    }
    times = [line.pop("t") for line in lines[1:]]
    assert times == sorted(times) and times[-1] < 10
    assert lines[1:] == [
        {"dir": "in", "text": "hello\n"},
        {"dir": "out", "text": "HELLO\n"},
        {"dir": "in", "hex": "ff00"},
        {"dir": "out", "hex": "ff00"},
        {"close": {"in_chunks": 2, "in_bytes": 8, "out_chunks": 2, "out_bytes": 8}},
    ]


@pytest.mark.parametrize("concurrency", ["thread", "fork", "event", "sync"])
def test_record_upper_writes_one_exact_transcript(tmp_path: Path, concurrency: str) -> None:
    record = tmp_path / "rec"  # made by the command
    server = Server(
        "tcp", ":0", "-H", "upper", "-c", concurrency, "--record", str(record), "--once"
    )
    port, answers = converse(server.address)
    status, err = server.finish()
    assert status == 0, err
    assert answers == b"HELLO\n\xff\x00"
    assert stat.S_IMODE(record.stat().st_mode) == 0o700
    check_upper_transcript(only_file(record), "tcp", f"127.0.0.1:{port}", server.text)


def test_record_a_users_handler_and_replay_it_with_recorded_and_asap_timing(
    tmp_path: Path,
) -> None:
    handler = tmp_path / "slow.py"
    handler.write_text(SLOW_HANDLER)
    record = tmp_path / "rec"

    def talk(address: tuple[str, int]) -> tuple[bytes, float]:
        """Read the greeting, send a line, read until EOF: (everything, seconds waited
        for the answer)."""
        with socket.create_connection(address, timeout=10) as s:
            got = b""
            while not got.endswith(b"\n"):
                got += s.recv(100)
            sent_at = time.monotonic()
            s.sendall(b"world\n")
            while chunk := s.recv(100):
                got += chunk
            return got, time.monotonic() - sent_at

    server = Server("tcp", ":0", "-H", str(handler), "--record", str(record), "--once")
    recorded_output, waited = talk(server.address)
    status, err = server.finish()
    assert status == 0, err
    assert recorded_output == b"hi\nbye world\n" and waited >= 0.4
    transcript = only_file(record)
    lines = read_lines(transcript)
    assert [(line.get("dir"), line.get("text")) for line in lines[1:-1]] == [
        ("out", "hi\n"),
        ("in", "world\n"),
        ("out", "bye world\n"),
    ]
    assert lines[3]["t"] - lines[2]["t"] >= 0.4

    for timing, least, most in (("recorded", 0.35, 5.0), ("asap", 0.0, 0.3)):
        replay = Server("tcp", ":0", "--transcript", str(transcript), "--timing", timing, "--once")
        output, waited = talk(replay.address)
        status, err = replay.finish()
        assert status == 0, err
        assert output == recorded_output, timing  # byte for byte
        assert least <= waited < most, (timing, waited)
        assert "replay" in err  # the handler's name in the banner


@pytest.mark.parametrize("concurrency", ["thread", "fork", "event"])
def test_replay_gives_the_recorded_server_output(tmp_path: Path, concurrency: str) -> None:
    record = tmp_path / "rec"
    server = Server("tcp", ":0", "-H", "upper", "--record", str(record), "--once")
    _, answers = converse(server.address)
    assert server.finish()[0] == 0
    transcript = only_file(record)

    replay = Server("unix", str(tmp_path / "r.sock"), "-c", concurrency, "--transcript",
                    str(transcript), "--once")  # fmt: skip
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(replay.address)
        got = b""
        s.sendall(b"hello\n")
        while len(got) < 6:
            got += s.recv(100)
        s.sendall(b"\xff\x00")
        while chunk := s.recv(100):
            got += chunk
    status, err = replay.finish()
    assert status == 0, err
    assert got == answers == b"HELLO\n\xff\x00"


def test_replay_by_content_waits_for_the_recorded_text(tmp_path: Path) -> None:
    """--match content: a client that sends the text in pieces, with more before it, gets the
    answer once the text is in; by length it would have had it after 6 bytes."""
    record = tmp_path / "rec"
    server = Server("tcp", ":0", "-H", "upper", "--record", str(record), "--once")
    converse(server.address)
    assert server.finish()[0] == 0
    transcript = only_file(record)
    replay = Server("tcp", ":0", "--transcript", str(transcript), "--match", "content", "--once")
    with socket.create_connection(replay.address, timeout=10) as s:
        s.sendall(b"noise hel")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)  # 9 bytes, more than the 6 recorded, but not the text
        s.settimeout(10)
        s.sendall(b"lo\n")
        got = b""
        while len(got) < 6:
            got += s.recv(100)
        assert got == b"HELLO\n"
        s.sendall(b"\xff\x00")  # bytes: by length
        while chunk := s.recv(100):
            got += chunk
    assert replay.finish()[0] == 0
    assert got == b"HELLO\n\xff\x00"


@pytest.mark.parametrize("concurrency", ["sync", "thread", "event"])
def test_record_udp_one_file_per_peer_and_replay_it(tmp_path: Path, concurrency: str) -> None:
    record = tmp_path / "rec"
    server = Server(
        "udp", ":0", "-H", "upper", "-c", concurrency, "--record", str(record),
        "--max-requests", "3",
    )  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            for sock, data in ((a, b"hello\n"), (b, b"other"), (a, b"\xff\x00")):
                sock.settimeout(10)
                sock.sendto(data, server.address)
                assert sock.recv(100) == data.upper()
            ports = {a.getsockname()[1]: "a", b.getsockname()[1]: "b"}
    status, err = server.finish()
    assert status == 0, err
    assert "3 datagrams, 13 B in, 13 B out" in err  # each counted once, recorded or not
    files = sorted(record.iterdir())
    assert len(files) == 2
    by_peer = {}
    for path in files:
        assert NAME.match(path.name) and stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = read_lines(path)
        port = int(lines[0]["client"].rsplit(":", 1)[1])
        assert lines[0]["transport"] == "udp" and lines[0]["server"] == server.text
        by_peer[ports[port]] = (path, [{k: v for k, v in x.items() if k != "t"} for x in lines[1:]])
    path_a, lines_a = by_peer["a"]
    assert lines_a == [
        {"dir": "in", "text": "hello\n"},
        {"dir": "out", "text": "HELLO\n"},
        {"dir": "in", "hex": "ff00"},
        {"dir": "out", "hex": "ff00"},
        {"close": {"in_chunks": 2, "in_bytes": 8, "out_chunks": 2, "out_bytes": 8}},
    ]
    assert by_peer["b"][1][:2] == [{"dir": "in", "text": "other"}, {"dir": "out", "text": "OTHER"}]

    replay = Server(
        "udp", ":0", "-c", concurrency, "--transcript", str(path_a), "--max-requests", "3"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(10)
        answers = []
        for data in (b"one", b"two"):
            c.sendto(data, replay.address)
            answers.append(c.recv(100))
        c.sendto(b"three", replay.address)  # the recording is over: no answer
        # The third request ends the run: once it has ended, an answer would be here.
        assert replay.finish()[0] == 0
        c.settimeout(0.02)
        with pytest.raises(TimeoutError):
            c.recv(100)
    assert answers == [b"HELLO\n", b"\xff\x00"]


def test_file_names_never_leave_the_directory(tmp_path: Path) -> None:
    """A unix client bound to an abstract name full of path tricks: its file is in DIR."""
    record = tmp_path / "deep" / "rec"
    server = Server("unix", str(tmp_path / "s.sock"), "--record", str(record), "--once")
    odd = b"\0../../../etc/x\n/..\\\xff name"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.bind(odd)
        s.connect(server.address)
        s.sendall(b"hi")
        assert s.recv(10) == b"hi"
    assert server.finish()[0] == 0
    path = only_file(record)
    assert path.parent == record and NAME.match(path.name), path.name
    assert "-unix-_.._.._.._etc_x__.._" in path.name
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["rec"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # the socket file is gone
    assert read_lines(path)[0]["client"] == "@../../../etc/x\n/..\\\ufffd name"


@pytest.mark.parametrize("concurrency", ["thread", "fork"])
def test_a_write_error_is_one_warning_and_the_server_goes_on(
    tmp_path: Path, concurrency: str
) -> None:
    """Files may not grow past 300 bytes (RLIMIT_FSIZE: writes fail with EFBIG, as on a
    full disk): each connection's transcript fails, the run warns once, clients are served."""
    record = tmp_path / "rec"
    server = Server(
        "tcp", ":0", "-H", "upper", "-c", concurrency, "--record", str(record),
        "--max-requests", "3", limit_file_size=300,
    )  # fmt: skip
    for _ in range(3):
        with socket.create_connection(server.address, timeout=10) as s:
            for i in range(10):
                line = f"line {i} of a conversation\n".encode()
                s.sendall(line)
                got = b""
                while len(got) < len(line):
                    got += s.recv(100)
                assert got == line.upper()
    status, err = server.finish()
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "cannot write a transcript" in line]
    assert len(warnings) == 1, err
    assert "File too large" in warnings[0]
    assert "Traceback" not in err
    assert len(list(record.iterdir())) == 3  # each began, and was cut short


def test_a_bad_record_directory_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    status, err = run_fails("tcp", ":0", "--record", str(a_file))
    assert status == 2 and f"--record {a_file}: not a directory" in err
    status, err = run_fails("tcp", ":0", "--record", str(a_file / "sub"))
    assert status == 2 and "cannot write in this directory (Not a directory)" in err
    assert "Traceback" not in err


def test_a_file_that_is_not_a_transcript_is_refused_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    status, err = run_fails("tcp", ":0", "--transcript", str(bad))
    assert status == 2, err
    assert f"{bad}:1: not a transcript" in err
    header = '{"sockserve-transcript": 1, "transport": "tcp", "client": "", "server": ""}\n'
    bad.write_text(header + '{"t": 0.1, "dir": "in", "text": "a"}\n\n{"t": 0.2, "dir": "up"}\n')
    status, err = run_fails("tcp", ":0", "-H", "replay", "--transcript", str(bad))
    assert status == 2 and f'{bad}:4: "dir" is not "in" or "out"' in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("proto", "args", "message"),
    [
        ("tcp", ["-H", "upper", "--transcript", "{t}"], "--transcript implies -H replay"),
        ("tcp", ["-H", "replay"], "-H replay needs --transcript FILE"),
        ("tcp", ["--timing", "asap"], "--timing only applies to -H replay"),
        ("tcp", ["--match", "content"], "--match only applies to -H replay"),
        ("udp", ["--transcript", "{t}"], "is a tcp transcript: replay it on tcp or unix"),
    ],
)
def test_replay_options_are_checked(
    tmp_path: Path, proto: str, args: list[str], message: str
) -> None:
    transcript = tmp_path / "t.jsonl"
    transcript.write_text('{"sockserve-transcript": 1, "transport": "tcp"}\n')
    args = [a.replace("{t}", str(transcript)) for a in args]
    status, err = run_fails(proto, ":0", *args)
    assert status == 2, err
    assert message in err


def test_datagram_fork_is_refused_for_record_and_replay(tmp_path: Path) -> None:
    status, err = run_fails("udp", ":0", "-c", "fork", "--record", str(tmp_path))
    assert status == 2 and "--record keeps a transcript per datagram peer" in err
    transcript = tmp_path / "t.jsonl"
    transcript.write_text('{"sockserve-transcript": 1, "transport": "udp"}\n')
    status, err = run_fails("udp", ":0", "-c", "fork", "--transcript", str(transcript))
    assert status == 2 and "-H replay on datagrams keeps each peer's place" in err
    status, err = run_fails("udp", ":0", "--transcript", str(transcript), "--timing", "asap")
    assert status == 2 and "--timing applies to stream transcripts" in err


def test_event_workers_close_their_datagram_peers_files(tmp_path: Path) -> None:
    """--workers in event mode: each worker's loop closes its peers' files as it stops."""
    record = tmp_path / "rec"
    server = Server("udp", ":0", "-c", "event", "--workers", "2", "--record", str(record))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(10)
        c.sendto(b"x", server.address)
        assert c.recv(10) == b"x"
    server.proc.send_signal(signal.SIGINT)
    status, err = server.finish()
    assert status == 0, err
    lines = read_lines(only_file(record))
    assert lines[-1]["close"] == {"in_chunks": 1, "in_bytes": 1, "out_chunks": 1, "out_bytes": 1}


@pytest.mark.parametrize("verbose", [[], ["-vv"]])
@pytest.mark.parametrize("concurrency", ["thread", "event"])
def test_the_banner_is_recorded_and_counted_once(
    tmp_path: Path, concurrency: str, verbose: list[str]
) -> None:
    record = tmp_path / "rec"
    server = Server(
        "tcp", ":0", "-c", concurrency, "--banner", "hi\\n", "--record", str(record), "--once",
        *verbose,
    )  # fmt: skip
    with socket.create_connection(server.address, timeout=10) as s:
        got = b""
        while len(got) < 3:
            got += s.recv(10)
        s.sendall(b"x")
        while len(got) < 4:
            got += s.recv(10)
        port = s.getsockname()[1]
    status, err = server.finish()
    assert status == 0, err
    assert got == b"hi\nx"
    assert "1 connection, 1 B in, 4 B out" in err
    lines = read_lines(only_file(record))
    assert lines[0]["client"] == f"127.0.0.1:{port}"
    assert [(x.get("dir"), x.get("text")) for x in lines[1:-1]] == [
        ("out", "hi\n"),
        ("in", "x"),
        ("out", "x"),
    ]


def test_unix_datagram_peers_named_or_not(tmp_path: Path) -> None:
    """A bound unix datagram client gets its file (and answers); unbound ones, which cannot
    be answered, share the "unnamed" file."""
    record = tmp_path / "rec"
    server = Server(
        "unix-dgram", str(tmp_path / "s.sock"), "-H", "upper", "--record", str(record),
        "--max-requests", "2",
    )  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.settimeout(10)
        bound.bind(str(tmp_path / "c.sock"))
        bound.sendto(b"abc", server.address)
        assert bound.recv(10) == b"ABC"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        unbound.sendto(b"zz", server.address)
    status, err = server.finish()
    assert status == 0, err
    files = {read_lines(p)[0]["client"]: (p, read_lines(p)) for p in record.iterdir()}
    assert sorted(files) == sorted([str(tmp_path / "c.sock"), "unix client"])
    path, lines = files["unix client"]
    assert "-unix-dgram-unnamed-" in path.name
    assert [(x.get("dir"), x.get("text")) for x in lines[1:-1]] == [("in", "zz")]
    path, lines = files[str(tmp_path / "c.sock")]
    assert [(x.get("dir"), x.get("text")) for x in lines[1:-1]] == [("in", "abc"), ("out", "ABC")]


def test_replay_by_content_falls_back_to_length_after_its_wait(tmp_path: Path) -> None:
    """Other text of the recorded length: answered once MATCH_WAIT (2 s) is over, in thread
    and in event mode. The two servers wait at once: each answer is timed from its own send,
    as it comes (select), so the test takes one wait, not two."""
    transcript = tmp_path / "t.jsonl"
    transcript.write_text(
        '{"sockserve-transcript": 1, "transport": "tcp"}\n'
        '{"t": 0, "dir": "in", "text": "hello\\n"}\n'
        '{"t": 0, "dir": "out", "text": "HELLO\\n"}\n'
    )
    args = ("--transcript", str(transcript), "--match", "content", "--once")
    replays = {mode: Server("tcp", ":0", "-c", mode, *args) for mode in ("thread", "event")}
    clients = {
        socket.create_connection(replay.address, timeout=10): mode
        for mode, replay in replays.items()
    }
    sent_at: dict[str, float] = {}
    waited: dict[str, float] = {}
    try:
        for sock, mode in clients.items():
            sent_at[mode] = time.monotonic()
            sock.sendall(b"howdy\n")
        waiting = set(clients)
        while waiting:
            ready, _, _ = select.select(list(waiting), [], [], 10)
            assert ready, f"no answer within 10 s: {waited}"
            for sock in ready:
                mode = clients[sock]
                waited[mode] = time.monotonic() - sent_at[mode]
                assert sock.recv(100) == b"HELLO\n", mode
                waiting.discard(sock)
    finally:
        for sock in clients:
            sock.close()
    for mode, replay in replays.items():
        assert replay.finish()[0] == 0, mode
    assert all(1.8 <= w < 6 for w in waited.values()), waited
