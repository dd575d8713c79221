"""The recording stage (--record): files of each watch, safe names, one warning per run."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from servertools import EventsRecorder

from sockserve.parts import recording
from sockserve.parts.recording import Recorder, safe_peer
from sockserve.watch import Watch


def lines(path: Path) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in path.read_text().splitlines()]
    for line in out[1:]:
        line.pop("t")
    return out


def taken(chunk: memoryview) -> int:
    return len(chunk)


@pytest.mark.parametrize(
    ("client", "name"),
    [
        (("127.0.0.1", 5000), "127.0.0.1_5000"),
        (("::1", 5000, 0, 0), "___1__5000"),
        ("/tmp/../etc/passwd", "_tmp_.._etc_passwd"),
        (b"\0../x/\n", "_.._x__"),
        (b"", "unnamed"),
        (None, "unnamed"),
        ("..", ".."),  # only ever part of a longer name: never a path of its own
        ("é" * 100, "_" * 60),
    ],
)
def test_safe_peer_keeps_only_harmless_characters(client: Any, name: str) -> None:
    assert safe_peer(client) == name


def test_a_stream_watch_writes_its_file_and_closes_it_once(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path), "tcp")
    recorder.server = "127.0.0.1:9"
    events = EventsRecorder()
    watch = Watch(events, ("127.0.0.1", 5000), dressers=[recorder])
    assert list(tmp_path.iterdir()) == []  # opened at the first chunk, not before
    watch.incoming(b"ping")
    assert watch.outgoing(b"PONG!", lambda chunk: 4) == 4  # the socket took 4: 4 recorded
    watch.close()
    watch.close()
    (path,) = tmp_path.iterdir()
    assert path.name.endswith(f"-tcp-127.0.0.1_5000-{os.getpid()}-1.jsonl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    header, *rest = lines(path)
    assert (header["client"], header["server"], header["transport"]) == (
        "127.0.0.1:5000",
        "127.0.0.1:9",
        "tcp",
    )
    assert rest == [
        {"dir": "in", "text": "ping"},
        {"dir": "out", "text": "PONG"},
        {"close": {"in_chunks": 1, "in_bytes": 4, "out_chunks": 1, "out_bytes": 4}},
    ]
    assert events.named("warning") == []


def test_a_connection_without_data_still_gets_its_file(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path), "unix")
    Watch(None, b"", dressers=[recorder]).close()
    (path,) = tmp_path.iterdir()
    assert "-unix-unnamed-" in path.name
    assert lines(path)[1:] == [
        {"close": {"in_chunks": 0, "in_bytes": 0, "out_chunks": 0, "out_bytes": 0}}
    ]


def test_datagrams_share_their_peers_file_until_the_recorder_closes(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path), "udp")
    for client, data in (("a", b"1"), ("b", b"2"), ("a", b"3")):
        watch = Watch(None, ("127.0.0.1", 1 if client == "a" else 2), dressers=[recorder])
        watch.incoming(data)
        watch.outgoing(data * 2, taken)
        watch.close()  # a datagram's request: the peer's file stays
    assert all(len(lines(p)) == 5 or len(lines(p)) == 3 for p in tmp_path.iterdir())
    recorder.close()
    recorder.close()
    late = Watch(None, ("127.0.0.1", 1), dressers=[recorder])
    late.incoming(b"after")  # not recorded: the run is over
    files = {lines(p)[0]["client"]: lines(p)[1:] for p in tmp_path.iterdir()}
    assert files["127.0.0.1:1"] == [
        {"dir": "in", "text": "1"},
        {"dir": "out", "text": "11"},
        {"dir": "in", "text": "3"},
        {"dir": "out", "text": "33"},
        {"close": {"in_chunks": 2, "in_bytes": 2, "out_chunks": 2, "out_bytes": 4}},
    ]
    assert files["127.0.0.1:2"][-1]["close"]["in_chunks"] == 1


@pytest.mark.parametrize("fail_after", [0, 1])
def test_a_full_disk_is_one_warning_and_the_traffic_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int
) -> None:
    """Writes fail with ENOSPC from the first (the header) or the second write on: every
    connection goes on, its chunks reach the handler and the socket, one warning in all."""
    writes = 0
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        nonlocal writes
        writes += 1
        if writes > fail_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(recording.os, "write", full)
    recorder = Recorder(str(tmp_path), "tcp")
    events = EventsRecorder()
    sent = []
    for port in range(3):
        watch = Watch(events, ("127.0.0.1", port), dressers=[recorder])
        assert watch.incoming(b"x" * 10) == 10
        assert watch.outgoing(b"y" * 10, lambda chunk: sent.append(bytes(chunk)) or 10) == 10
        watch.close()
    assert sent == [b"y" * 10] * 3
    (warning,) = events.named("warning")
    assert "cannot write a transcript (No space left on device)" in warning[0]
    assert "the server goes on" in warning[0]
    assert len(list(tmp_path.iterdir())) == 3  # created, then cut short


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    recorder = Recorder(str(tmp_path), "tcp")
    for _ in range(5):
        watch = Watch(None, ("127.0.0.1", 1), dressers=[recorder])
        watch.incoming(b"a")
        watch.close()
    udp = Recorder(str(tmp_path), "udp")
    watch = Watch(None, ("127.0.0.1", 2), dressers=[udp])
    watch.incoming(b"a")
    udp.close()
    assert set(os.listdir("/proc/self/fd")) == before
