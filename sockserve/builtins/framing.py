"""Line framing of what stdout and stdio write (the default; `--raw` turns it off).

- A datagram is one line: a newline is added when it does not end with one
  (`datagram_line`). An empty datagram writes nothing.
- A stream connection is written in whole lines (`LineBuffer`, one per connection): a
  partial last line waits for the rest of it, so lines of concurrent clients never mix. A
  line longer than `LINE_LIMIT` is written as it is, in pieces; what is held when the client
  closes is written then, without a newline added.
- `line_pieces` cuts what one write carries into pieces that end at a newline, for a writer
  whose writes are atomic only up to a size (a pipe shared by forked processes: PIPE_BUF).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: The most a connection's line buffer holds: a longer line is written in pieces.
LINE_LIMIT = 64 * 1024


def datagram_line(data: Any) -> Any:
    """`data` as one line: with a newline added when it does not end with one (b"": b"")."""
    if not data or data[-1:] == b"\n":
        return data
    return b"".join((data, b"\n"))


class LineBuffer:
    """Whole lines out of a stream's chunks; holds the partial last line (bounded)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self.held = bytearray()
        self.limit = limit

    def feed(self, data: bytes | bytearray, n: int | None = None) -> Any:
        """Take the first `n` bytes of `data` (all by default); return what to write now
        (whole lines, or the pieces of a line over the limit), or None.

        A view into `data` may be returned: write it before `data` changes.
        """
        if n is None:
            n = len(data)
        end = data.rfind(b"\n", 0, n) + 1
        held = self.held
        if not end:  # no newline: all of it is the partial line
            held += memoryview(data)[:n]
            if len(held) < self.limit:
                return None
            self.held = bytearray()
            return held
        if held:
            held += memoryview(data)[:end]
            out: Any = held
            self.held = bytearray(memoryview(data)[end:n])
            return out
        if end < n:
            held += memoryview(data)[end:n]
        return memoryview(data)[:end]

    def take(self) -> bytearray:
        """What is held (a partial line), now owned by the caller; the buffer is empty after."""
        held, self.held = self.held, bytearray()
        return held


def line_pieces(data: Any, limit: int) -> Iterator[memoryview]:
    """`data` in pieces of at most `limit` bytes that end at a newline where one is within
    reach; a line longer than `limit` is cut at `limit`."""
    view = memoryview(data).cast("B")
    start, size = 0, len(view)
    while size - start > limit:
        end = bytes(view[start : start + limit]).rfind(b"\n") + 1
        if not end:
            end = limit
        yield view[start : start + end]
        start += end
    if start < size:
        yield view[start:]
