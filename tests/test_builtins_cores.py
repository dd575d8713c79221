"""The builtins' pure cores: bytes in, bytes (or nothing) out, and the one-answer machine."""

from __future__ import annotations

import struct
import time

import pytest
from builtin_checks import JUNK, parse_daytime

from sockserve import builtins as bh
from sockserve.builtins import cores
from sockserve.builtins.cores import OneAnswer, Phase

SAMPLES = [b"", b"x", b"Hello, World!\r\n", bytes(range(256)), "héllo".encode() * 50]


def test_builtin_names() -> None:
    assert list(bh.BUILTINS) == [
        "echo",
        "upper",
        "discard",
        "stdout",
        "stdio",
        "chargen",
        "daytime",
        "time",
        "reply",
        "broadcast",
        "chat",
        "exec",
        "script",
        "forward",
    ]
    assert all(desc and "\n" not in desc for desc in bh.BUILTINS.values())


def test_transform_chunk() -> None:
    assert bh.transform_chunk("echo", JUNK) == JUNK
    assert bh.transform_chunk("upper", b"abc xyz \xc3\xa9 \xff") == b"ABC XYZ \xc3\xa9 \xff"
    assert bh.transform_chunk("upper", memoryview(JUNK)) == JUNK.upper()
    for name in ("discard", "stdout", "stdio"):
        assert bh.transform_chunk(name, JUNK) is None
    with pytest.raises(ValueError):
        bh.transform_chunk("chargen", b"")


def test_chargen_pattern() -> None:
    period = bh.CHARGEN_PERIOD
    lines = period.split(b"\r\n")[:-1]
    assert len(lines) == 95 and len(period) == 95 * 74
    assert lines[0] == b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh"
    assert lines[1] == lines[0][1:] + b"i"
    assert all(len(line) == 72 and line.isascii() for line in lines)
    assert bh.chargen_pattern(0, 3 * len(period)) == period * 3
    assert bh.chargen_pattern(len(period) - 5, 10) == period[-5:] + period[:5]
    assert bh.chargen_pattern(0, 0) == b""


def test_chargen_datagram_length_follows_the_request() -> None:
    assert bh.chargen_datagram(b"") == b""
    assert bh.chargen_datagram(b"x" * 10) == bh.CHARGEN_PERIOD[:10]
    assert bh.chargen_datagram(b"x" * 512) == bh.CHARGEN_PERIOD[:512]
    assert bh.chargen_datagram(b"x" * 9000) == bh.CHARGEN_PERIOD[:512]


def test_daytime_and_time_formats() -> None:
    assert bh.daytime_line(0) == b"Thursday, January 01, 1970 00:00:00-UTC\r\n"
    assert bh.daytime_line(383247463) == b"Monday, February 22, 1982 17:37:43-UTC\r\n"
    assert abs(parse_daytime(bh.daytime_line()) - time.time()) <= 2
    assert bh.time_bytes(0) == struct.pack("!I", 2208988800)
    assert bh.time_bytes(-2208988800) == b"\0\0\0\0"
    assert bh.time_bytes(2**32 - 2208988800 + 5) == struct.pack("!I", 5)  # wraps in 2036
    (value,) = struct.unpack("!I", bh.time_bytes())
    assert abs(value - 2208988800 - time.time()) <= 2
    assert bh.greeting("time", 0) == bh.time_bytes(0)
    with pytest.raises(ValueError):
        bh.greeting("echo")


def test_respond_datagram() -> None:
    assert bh.respond_datagram("echo", b"") == b""
    assert bh.respond_datagram("echo", JUNK) == JUNK
    assert bh.respond_datagram("upper", JUNK) == JUNK.upper()
    for name in ("discard", "stdout", "stdio"):
        assert bh.respond_datagram(name, JUNK) is None
    assert bh.respond_datagram("chargen", b"ab") == b'!"'
    assert bh.respond_datagram("daytime", JUNK, now=0) == bh.daytime_line(0)
    assert bh.respond_datagram("time", b"", now=0) == bh.time_bytes(0)
    assert bh.respond_datagram("reply", JUNK, reply=b"r") == b"r"
    assert bh.respond_datagram("reply", JUNK) == b""
    with pytest.raises(ValueError, match="unknown builtin handler 'nope'"):
        bh.respond_datagram("nope", b"")


@pytest.mark.parametrize("name", ["echo", "upper", "chargen", "reply", "discard", "daytime"])
@pytest.mark.parametrize("data", SAMPLES)
def test_datagram_answer_matches_respond_datagram(name: str, data: bytes) -> None:
    answer = cores.datagram_answer(name, b"canned\n")
    expected = bh.respond_datagram(name, data, reply=b"canned\n")
    if answer is None:  # answered through respond_datagram itself
        assert name in ("discard", "daytime")
        return
    assert answer(data) == expected
    assert answer(memoryview(data)) == expected


def test_chargen_block_is_whole_periods() -> None:
    period = bh.CHARGEN_PERIOD
    assert cores.chargen_block(1) == period
    assert cores.chargen_block(65536) == period * (65536 // len(period))
    block = cores.chargen_block(20000)
    assert block * 3 == bh.chargen_pattern(0, 3 * len(block))  # each block goes on from the last


def test_one_answer_reply_waits_then_lingers_until_eof() -> None:
    conn = OneAnswer(waits_for_request=True)
    assert conn.phase is Phase.WAITING
    conn.receive(b"GET /")
    assert conn.phase is Phase.SENDING
    conn.receive(b" more")  # still sending: what comes meanwhile changes nothing
    assert conn.phase is Phase.SENDING
    conn.answer_sent()
    assert conn.phase is Phase.LINGERING
    conn.receive(b"late bytes")
    assert conn.phase is Phase.LINGERING
    conn.receive(b"")
    assert conn.phase is Phase.CLOSED


def test_one_answer_client_eof_first_skips_lingering() -> None:
    conn = OneAnswer(waits_for_request=True)
    conn.receive(memoryview(b""))  # the client sent nothing, only its EOF: answer it anyway
    assert conn.phase is Phase.SENDING and conn.client_eof
    conn.answer_sent()
    assert conn.phase is Phase.CLOSED


def test_one_answer_greeting_sends_at_once_and_lingers_until_time_is_up() -> None:
    conn = OneAnswer(waits_for_request=False)
    assert conn.phase is Phase.SENDING
    conn.answer_sent()
    assert conn.phase is Phase.LINGERING
    conn.linger_over()
    assert conn.phase is Phase.CLOSED


def test_chunk_transform_is_transform_chunk_chosen_once() -> None:
    assert cores.chunk_transform("echo") is None  # the chunk goes back as it came
    upper = cores.chunk_transform("upper")
    assert upper is not None and upper(memoryview(JUNK)) == bh.transform_chunk("upper", JUNK)
    with pytest.raises(ValueError):
        cores.chunk_transform("stdout")
