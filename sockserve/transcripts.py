"""Transcripts: the JSON lines `--record DIR` writes and `-H replay --transcript FILE` reads.

One file per connection (per peer for datagrams), UTF-8, one JSON object per line:

- the header: ``{"sockserve-transcript": 1, "transport": "tcp", "client": "127.0.0.1:5000",
  "server": "127.0.0.1:9999", "start": "2026-12-07T23:59:00.123456Z"}`` (the format version,
  the transport, the peer and the server address as sockserve shows them, the wall-clock
  start in UTC);
- a line per chunk: ``{"t": 0.000412, "dir": "in", "text": "hello\\n"}``: seconds since the
  start, "in" (client to server) or "out" (server to client), and the bytes as "text" when
  they are valid UTF-8, else as "hex" (``{"t": 0.5, "dir": "out", "hex": "00ff"}``);
- the close line: ``{"t": 0.9, "close": {"in_chunks": 1, "in_bytes": 6, "out_chunks": 1,
  "out_bytes": 6}}``: when the server ended the connection (for datagrams: the run), and its
  counts. A file cut short (the server was killed) has none.

`read_transcript` checks a file and tells the first line that is wrong; `Transcript.steps`
turns it into what replay sends and what it waits for before each send.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UsageError

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "Chunk",
    "Match",
    "Step",
    "Timing",
    "Transcript",
    "check_recording",
    "chunk_line",
    "close_line",
    "header_line",
    "read_transcript",
]

#: The header's key, and the version of the format this sockserve writes and reads.
FORMAT_KEY = "sockserve-transcript"
FORMAT_VERSION = 1
TRANSPORTS = ("tcp", "udp", "unix", "unix-dgram")
HINT = "a transcript is a file --record DIR wrote (see README, Recording and replaying)"

Dir = Literal["in", "out"]
#: -H replay's --timing and --match.
Timing = Literal["recorded", "asap"]
Match = Literal["length", "content"]


def _dumps(obj: dict[str, Any]) -> bytes:
    import json  # only runs that write or read transcripts load it

    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def header_line(transport: str, client: str, server: str, start: str) -> bytes:
    """The first line of a transcript."""
    return _dumps(
        {
            FORMAT_KEY: FORMAT_VERSION,
            "transport": transport,
            "client": client,
            "server": server,
            "start": start,
        }
    )


def _timed(t: float, obj: dict[str, Any]) -> bytes:
    """A line that starts with "t", in seconds with 6 decimals (never an exponent)."""
    return f'{{"t": {max(t, 0.0):.6f}, '.encode() + _dumps(obj)[1:]


def chunk_line(t: float, direction: Dir, data: bytes) -> bytes:
    """The line of one chunk: its bytes as "text" when valid UTF-8, else as "hex"."""
    obj: dict[str, Any] = {"dir": direction}
    try:
        obj["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        obj["hex"] = data.hex()
    return _timed(t, obj)


def close_line(t: float, counts: dict[str, int]) -> bytes:
    """The last line: when the connection ended, and its counts."""
    return _timed(t, {"close": counts})


@dataclass(frozen=True)
class Chunk:
    """One chunk of a transcript."""

    t: float
    dir: Dir
    data: bytes
    text: bool  # recorded as "text"


@dataclass(frozen=True)
class Step:
    """What replay does once: wait for `expect` (the client's bytes the recording had since
    the previous step), wait `delay` seconds, send `send` (empty for the final step)."""

    expect: bytes
    expect_text: bool
    delay: float
    send: bytes


@dataclass(frozen=True)
class Transcript:
    """A transcript read and checked (`read_transcript`)."""

    path: str
    transport: str
    chunks: tuple[Chunk, ...]
    closed_at: float | None = None  # the close line's time; None: the file has none
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def socktype(self) -> str:
        """stream or dgram."""
        return "dgram" if self.transport in ("udp", "unix-dgram") else "stream"

    def steps(self) -> list[Step]:
        """The server's side as steps: each "out" chunk after the "in" chunks before it.

        A step's delay is the recorded time from the later of the last "in" chunk before
        it and the previous "out" chunk (the connection's start for the first) to its own.
        The last step, with nothing to send, waits for the "in" chunks recorded after the
        last "out" and for the time to the close line.
        """
        steps: list[Step] = []
        expect = bytearray()
        texts: list[bool] = []
        since = 0.0
        for chunk in self.chunks:
            if chunk.dir == "in":
                expect += chunk.data
                texts.append(chunk.text)
                since = chunk.t
                continue
            steps.append(Step(bytes(expect), _all_text(texts), chunk.t - since, chunk.data))
            expect.clear()
            texts = []
            since = chunk.t
        end = since if self.closed_at is None else max(self.closed_at, since)
        steps.append(Step(bytes(expect), _all_text(texts), end - since, b""))
        return steps

    def exchanges(self) -> list[tuple[bytes, list[bytes]]]:
        """Datagrams: each "in" chunk with the "out" chunks recorded after it, until the next
        (what replay answers the n-th datagram of a peer with)."""
        answers: list[tuple[bytes, list[bytes]]] = []
        for chunk in self.chunks:
            if chunk.dir == "in":
                answers.append((chunk.data, []))
            elif answers:
                answers[-1][1].append(chunk.data)
        return answers

    def leading_out(self) -> bool:
        """True if the server spoke before any datagram came in (replay cannot)."""
        return bool(self.chunks) and self.chunks[0].dir == "out"


def _all_text(texts: list[bool]) -> bool:
    return bool(texts) and all(texts)


class _Bad(Exception):
    """A line that is not what a transcript has there."""


def read_transcript(path: str) -> Transcript:
    """Read and check the transcript at `path`.

    Raises UsageError naming the file and the first line that is wrong (``FILE:LINE: ...``),
    or the reason the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read --transcript {path}: {exc.strerror or exc}", hint="check the path"
        ) from None
    lines = list(_lines(raw))
    if not lines:
        raise UsageError(f"{path}:1: empty file, not a transcript", hint=HINT)
    number, header = lines[0]
    try:
        transport = _check_header(header)
    except _Bad as exc:
        raise UsageError(f"{path}:{number}: {exc}", hint=HINT) from None
    chunks: list[Chunk] = []
    closed_at: float | None = None
    last = 0.0
    for number, obj in lines[1:]:
        try:
            if closed_at is not None:
                raise _Bad("a line after the close line")
            if obj is None or not isinstance(obj, dict):
                raise _Bad("not a JSON object")
            t = _time(obj, last)
            if "close" in obj:
                if not isinstance(obj["close"], dict):
                    raise _Bad('"close" is not an object of counts')
                closed_at = t
                continue
            chunks.append(_chunk(obj, t))
            last = t
        except _Bad as exc:
            raise UsageError(f"{path}:{number}: {exc}", hint=HINT) from None
    return Transcript(path, transport, tuple(chunks), closed_at, header)


def _lines(raw: bytes) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or None when it is not JSON) for each non-blank line."""
    import json  # only runs that write or read transcripts load it

    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError:
            yield number, None


def _check_header(obj: Any) -> str:
    if not isinstance(obj, dict) or FORMAT_KEY not in obj:
        raise _Bad(f'not a transcript (its first line has no "{FORMAT_KEY}" header)')
    version = obj[FORMAT_KEY]
    if version != FORMAT_VERSION:
        raise _Bad(
            f"transcript format {version!r} is not one this sockserve reads ({FORMAT_VERSION})"
        )
    transport = obj.get("transport")
    if transport not in TRANSPORTS:
        raise _Bad(f"unknown transport {transport!r} (one of {', '.join(TRANSPORTS)})")
    return str(transport)


def _time(obj: dict[str, Any], last: float) -> float:
    t = obj.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise _Bad('"t" is not a number of seconds (0 or more)')
    if t < last:
        raise _Bad(f'"t" goes back in time ({t} after {last})')
    return float(t)


def _chunk(obj: dict[str, Any], t: float) -> Chunk:
    direction = obj.get("dir")
    if direction not in ("in", "out"):
        raise _Bad('"dir" is not "in" or "out"')
    has_text, has_hex = "text" in obj, "hex" in obj
    if has_text == has_hex:
        raise _Bad('a chunk has one of "text" or "hex"')
    if has_text:
        if not isinstance(obj["text"], str):
            raise _Bad('"text" is not a string')
        try:
            data = obj["text"].encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad('"text" is not valid Unicode') from None
        return Chunk(t, direction, data, True)
    try:
        data = bytes.fromhex(obj["hex"])
    except (TypeError, ValueError):
        raise _Bad('"hex" is not hexadecimal digits') from None
    return Chunk(t, direction, data, False)


def check_recording(
    builtin: str | None,
    name: str,
    socktype: str,
    concurrency: str,
    record: str | None,
    transcript: str | None,
    timing: Timing | None,
    match: Match | None,
) -> tuple[str | None, Transcript | None]:
    """Check --record and -H replay's options (`builtin` and `name`: the handler's): (the
    record directory, absolute and writable, made if missing; the transcript read). Raises
    UsageError."""
    if record is not None:
        record = _record_directory(record)
        if socktype == "dgram" and concurrency == "fork":
            raise UsageError(
                "--record keeps a transcript per datagram peer in one process: not with "
                "--concurrency fork, where each datagram has a child of its own",
                hint="use -c sync, thread or event",
            )
    replay = builtin == "replay"
    if transcript is not None and not replay:
        raise UsageError(
            f"--transcript implies -H replay: it cannot be combined with -H {name}",
            hint="drop -H, or --transcript",
        )
    if replay and transcript is None:
        raise UsageError("-H replay needs --transcript FILE (a file --record wrote)")
    for option, value in (("--timing", timing), ("--match", match)):
        if value is not None and not replay:
            raise UsageError(f"{option} only applies to -H replay", hint=f"drop {option}")
    if transcript is None:
        return record, None
    script = read_transcript(transcript)
    if script.socktype != socktype:
        kinds = "tcp or unix" if script.socktype == "stream" else "udp or unix-dgram"
        raise UsageError(
            f"--transcript {transcript} is a {script.transport} transcript: replay it on {kinds}"
        )
    if socktype == "dgram":
        if concurrency == "fork":
            raise UsageError(
                "-H replay on datagrams keeps each peer's place in the transcript in one "
                "process: not with --concurrency fork",
                hint="use -c sync, thread or event",
            )
        for option, value in (("--timing", timing), ("--match", match)):
            if value is not None:
                raise UsageError(
                    f"{option} applies to stream transcripts: datagram replay answers the "
                    "n-th datagram of a peer with the datagrams recorded after the n-th, at once",
                    hint=f"drop {option}",
                )
    return record, script


def _record_directory(path: str) -> str:
    """The absolute path of --record's directory, made (mode 700) if missing; raise
    UsageError unless a file can be created in it."""
    import tempfile

    where = os.path.abspath(path)
    if os.path.exists(where) and not os.path.isdir(where):
        raise UsageError(f"--record {path}: not a directory", hint="name a directory")
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sockserve-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"--record {path}: cannot write in this directory ({exc.strerror or exc})",
            hint="name a directory you may write to",
        ) from None
    return where
