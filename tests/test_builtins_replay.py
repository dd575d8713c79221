"""-H replay's pieces without sockets: how input is awaited, how datagram peers advance."""

from __future__ import annotations

from pathlib import Path

from sockserve.builtins import replay
from sockserve.builtins.replay import InputMatcher, content_wanted, replay_handler
from sockserve.builtins.shared import HandlerOptions
from sockserve.transcripts import Step, chunk_line, header_line, read_transcript


def step(expect: bytes, text: bool = True) -> Step:
    return Step(expect, text, 0.0, b"answer")


def test_by_length_what_a_step_does_not_use_counts_for_the_next() -> None:
    matcher = InputMatcher()
    matcher.feed(b"abc")
    assert not matcher.take(step(b"12345"), by_content=False)
    matcher.feed(b"defgh")  # 8 bytes: 5 for this step, 3 left
    assert matcher.take(step(b"12345"), by_content=False)
    assert not matcher.take(step(b"1234"), by_content=False)
    matcher.feed(b"i")
    assert matcher.take(step(b"1234"), by_content=False)
    assert matcher.available == 0 and matcher.window == b""
    assert matcher.take(step(b""), by_content=False)  # nothing to wait for


def test_by_content_the_text_may_come_in_pieces_after_other_bytes() -> None:
    matcher = InputMatcher()
    matcher.feed(b"noise noise HE")
    assert not matcher.take(step(b"HELO\r\n"), by_content=True)
    assert len(matcher.window) <= 5  # only what may still begin the text is kept
    matcher.feed(b"LO\r\nrest")
    assert matcher.take(step(b"HELO\r\n"), by_content=True)
    assert (matcher.available, bytes(matcher.window)) == (4, b"rest")
    assert matcher.take(step(b"rest"), by_content=False)


def test_memory_stays_bounded_while_the_text_does_not_come() -> None:
    matcher = InputMatcher()
    for _ in range(1000):
        matcher.feed(b"x" * 1000)
        assert not matcher.take(step(b"needle"), by_content=True)
    assert len(matcher.window) < 10 and matcher.available == 1_000_000
    assert matcher.take(step(b"needle"), by_content=False)  # by length, after the wait


def test_content_applies_to_text_steps_only() -> None:
    assert content_wanted(step(b"GET /"), "content")
    assert not content_wanted(step(b"GET /"), "length")
    assert not content_wanted(step(b"\xff", text=False), "content")
    assert not content_wanted(step(b""), "content")


def test_each_datagram_peer_moves_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        header_line("udp", "", "", "")
        + chunk_line(0, "in", b"a")
        + chunk_line(0, "out", b"A")
        + chunk_line(1, "in", b"b")
        + chunk_line(1, "out", b"B1")
        + chunk_line(1, "out", b"B2")
    )
    handler = replay_handler(
        read_transcript(str(path)), "dgram", "sync", "recorded", "length", HandlerOptions()
    )
    one, two = ("127.0.0.1", 1), ("127.0.0.1", 2)
    assert handler.answers_for(one) == [b"A"]
    assert handler.answers_for(two) == [b"A"]
    assert handler.answers_for(one) == [b"B1", b"B2"]
    assert handler.answers_for(one) == []  # the recording is over
    assert handler.answers_for(two) == [b"B1", b"B2"]


def test_datagram_peers_kept_are_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(replay, "MAX_PEERS", 3)
    path = tmp_path / "t.jsonl"
    path.write_bytes(header_line("udp", "", "", "") + chunk_line(0, "in", b"a"))
    handler = replay_handler(
        read_transcript(str(path)), "dgram", "sync", "recorded", "length", HandlerOptions()
    )
    for port in range(10):
        handler.answers_for(("127.0.0.1", port))
    assert list(handler.places) == [("127.0.0.1", p) for p in (7, 8, 9)]
