"""The line framing of stdout and stdio, without sockets (`sockserve.builtins.framing`)."""

from __future__ import annotations

import pytest

from sockserve.builtins.framing import LineBuffer, datagram_line, line_pieces


@pytest.mark.parametrize(
    ("datagram", "line"),
    [(b"", b""), (b"x", b"x\n"), (b"x\n", b"x\n"), (b"a\nb", b"a\nb\n"), (b"\n", b"\n")],
)
def test_a_datagram_is_one_line(datagram: bytes, line: bytes) -> None:
    assert bytes(datagram_line(datagram)) == line


def feed_all(buffer: LineBuffer, chunks: list[bytes]) -> list[bytes]:
    return [bytes(out) for c in chunks if (out := buffer.feed(bytearray(c))) is not None]


def test_whole_lines_out_partial_line_held() -> None:
    buffer = LineBuffer()
    assert feed_all(buffer, [b"ab", b"c\nde", b"f\ng\nh", b"i"]) == [b"abc\n", b"def\ng\n"]
    assert buffer.take() == b"hi"
    assert buffer.take() == b""


def test_only_the_first_n_bytes_count() -> None:
    buffer = LineBuffer()
    assert bytes(buffer.feed(bytearray(b"one\ntwo\nJUNK"), 8)) == b"one\ntwo\n"
    assert buffer.take() == b""


def test_a_line_over_the_limit_goes_out_in_pieces() -> None:
    buffer = LineBuffer(limit=10)
    assert feed_all(buffer, [b"12345", b"67890ab", b"cd\n"]) == [b"1234567890ab", b"cd\n"]
    assert buffer.take() == b""


def test_a_returned_view_is_not_kept_in_the_buffer() -> None:
    buffer = LineBuffer()
    data = bytearray(b"line\nrest")
    out = bytes(buffer.feed(data))
    data[:] = b"XXXXXXXXX"  # the caller reuses its buffer
    assert out == b"line\n"
    assert buffer.take() == b"rest"


def test_pieces_end_at_newlines_within_the_limit() -> None:
    data = b"aaaa\nbbbb\ncccccccccccc\nd\n"
    pieces = [bytes(p) for p in line_pieces(data, 10)]
    assert pieces == [b"aaaa\nbbbb\n", b"cccccccccc", b"cc\nd\n"]
    assert b"".join(pieces) == data
    assert [bytes(p) for p in line_pieces(b"short\n", 10)] == [b"short\n"]
