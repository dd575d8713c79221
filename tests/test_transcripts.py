"""The transcript format: the lines written, and read_transcript's checks with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sockserve.errors import UsageError
from sockserve.transcripts import (
    Step,
    chunk_line,
    close_line,
    header_line,
    read_transcript,
)

HEADER = header_line("tcp", "127.0.0.1:5000", "127.0.0.1:9999", "2026-01-01T00:00:00.000000Z")


def test_lines_are_exact_json_with_text_or_hex() -> None:
    assert HEADER == (
        b'{"sockserve-transcript": 1, "transport": "tcp", "client": "127.0.0.1:5000", '
        b'"server": "127.0.0.1:9999", "start": "2026-01-01T00:00:00.000000Z"}\n'
    )
    assert (
        chunk_line(0.0000123, "in", b"hi\n") == b'{"t": 0.000012, "dir": "in", "text": "hi\\n"}\n'
    )
    assert chunk_line(2, "out", "é\0".encode()) == (
        '{"t": 2.000000, "dir": "out", "text": "é\\u0000"}\n'.encode()
    )
    assert chunk_line(1.5, "out", b"\xff\x00") == b'{"t": 1.500000, "dir": "out", "hex": "ff00"}\n'
    assert close_line(3.25, {"in_chunks": 1}) == b'{"t": 3.250000, "close": {"in_chunks": 1}}\n'


@pytest.mark.parametrize(
    "data", [b"", b"plain", bytes(range(256)), "héllo wörld ✓".encode(), b"\xed\xa0\x80"]
)
def test_every_byte_string_reads_back_exactly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(HEADER + chunk_line(0.1, "in", data) + close_line(0.2, {}))
    transcript = read_transcript(str(path))
    assert [c.data for c in transcript.chunks] == [data]
    assert transcript.closed_at == 0.2 and transcript.transport == "tcp"


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


H = HEADER.decode().strip()


@pytest.mark.parametrize(
    ("lines", "where", "what"),
    [
        ([], 1, "empty file"),
        (["GET / HTTP/1.1"], 1, "not a transcript"),
        (['{"sockserve-transcript": 2, "transport": "tcp"}'], 1, "format 2 is not"),
        (['{"sockserve-transcript": 1, "transport": "sctp"}'], 1, "unknown transport 'sctp'"),
        ([H, "{oops"], 2, "not a JSON object"),
        ([H, "[1]"], 2, "not a JSON object"),
        ([H, '{"dir": "in", "text": "a"}'], 2, '"t" is not a number'),
        ([H, '{"t": -1, "dir": "in", "text": "a"}'], 2, '"t" is not a number'),
        ([H, '{"t": true, "dir": "in", "text": "a"}'], 2, '"t" is not a number'),
        (
            [H, '{"t": 2, "dir": "in", "text": "a"}', '{"t": 1, "dir": "in", "text": "b"}'],
            3,
            '"t" goes back in time',
        ),  # fmt: skip
        ([H, '{"t": 1, "dir": "sideways", "text": "a"}'], 2, '"dir" is not "in" or "out"'),
        ([H, '{"t": 1, "dir": "in"}'], 2, 'one of "text" or "hex"'),
        ([H, '{"t": 1, "dir": "in", "text": "a", "hex": "00"}'], 2, 'one of "text" or "hex"'),
        ([H, '{"t": 1, "dir": "in", "text": 5}'], 2, '"text" is not a string'),
        ([H, '{"t": 1, "dir": "in", "text": "\\ud800"}'], 2, '"text" is not valid Unicode'),
        ([H, '{"t": 1, "dir": "in", "hex": "zz"}'], 2, '"hex" is not hexadecimal'),
        ([H, '{"t": 1, "close": 3}'], 2, '"close" is not an object'),
        (
            [H, '{"t": 1, "close": {}}', "", '{"t": 2, "dir": "in", "text": "a"}'],
            4,
            "a line after the close line",
        ),  # fmt: skip
    ],
)
def test_bad_files_name_their_line(tmp_path: Path, lines: list[str], where: int, what: str) -> None:
    path = write(tmp_path, *lines)
    with pytest.raises(UsageError) as caught:
        read_transcript(path)
    message = caught.value.message
    assert message.startswith(f"{path}:{where}: ") and what in message, message
    assert "\n" not in message


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read --transcript .*: No such file"):
        read_transcript(str(tmp_path / "missing"))


def test_steps_wait_for_the_input_before_each_output(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        H,
        '{"t": 0.5, "dir": "out", "text": "220 hi\\r\\n"}',
        '{"t": 1.0, "dir": "in", "text": "HELO "}',
        '{"t": 1.25, "dir": "in", "text": "x\\r\\n"}',
        '{"t": 2.0, "dir": "out", "text": "250 ok\\r\\n"}',
        '{"t": 2.5, "dir": "out", "hex": "ff"}',
        '{"t": 3.0, "dir": "in", "hex": "00"}',
        '{"t": 4.0, "close": {}}',
    )
    assert read_transcript(path).steps() == [
        Step(b"", False, 0.5, b"220 hi\r\n"),
        Step(b"HELO x\r\n", True, 0.75, b"250 ok\r\n"),
        Step(b"", False, 0.5, b"\xff"),
        Step(b"\x00", False, 1.0, b""),  # the end: the input after the last output, the close
    ]


def test_exchanges_pair_each_datagram_with_the_replies_after_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        H.replace('"tcp"', '"udp"'),
        '{"t": 0, "dir": "in", "text": "a"}',
        '{"t": 0, "dir": "out", "text": "A"}',
        '{"t": 0, "dir": "out", "text": "AA"}',
        '{"t": 1, "dir": "in", "text": "b"}',
        '{"t": 2, "dir": "in", "text": "c"}',
        '{"t": 2, "dir": "out", "text": "C"}',
    )
    transcript = read_transcript(path)
    assert transcript.socktype == "dgram" and transcript.closed_at is None
    assert transcript.exchanges() == [(b"a", [b"A", b"AA"]), (b"b", []), (b"c", [b"C"])]
    assert json.loads(H)["transport"] == "tcp"
