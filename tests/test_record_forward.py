"""The workflow of issue 17, end to end through the real command: record a real service
through `forward`, stop the service, replay the transcript; the client gets what the service
answered."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from clitools import serving


def ask(address: str, lines: list[bytes]) -> bytes:
    """Send each line (waiting for its answer line), shut the write side, read to the end."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        answers = sock.makefile("rb")
        got = b""
        for line in lines:
            sock.sendall(line)
            got += answers.readline()
        sock.shutdown(socket.SHUT_WR)
        return got + answers.read()


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_record_a_service_through_forward_then_replay_it_without_the_service(
    tmp_path: Path, mode: str
) -> None:
    record = tmp_path / "rec"
    dialogue = [b"hello\n", b"how are you\n"]
    with serving("tcp", "127.0.0.1:0", "-H", "upper") as service:
        with serving(
            "tcp", "127.0.0.1:0", "--forward", service, "--record", str(record), "-c", mode
        ) as proxy:
            live = ask(proxy, dialogue)
    assert live == b"HELLO\nHOW ARE YOU\n"
    (transcript,) = record.glob("*.jsonl")
    chunks = [json.loads(line) for line in transcript.read_text().splitlines()[1:-1]]
    assert "".join(c["text"] for c in chunks if c["dir"] == "in") == "hello\nhow are you\n"
    assert "".join(c["text"] for c in chunks if c["dir"] == "out") == "HELLO\nHOW ARE YOU\n"
    # The service is gone: the replay answers as it did, for any number of clients.
    with serving("tcp", "127.0.0.1:0", "--transcript", str(transcript), "-c", mode) as replay:
        assert ask(replay, dialogue) == live
        assert ask(replay, dialogue) == live
