"""Our output for stdout and stdio: whole chunks, one writer at a time, even across forks.

Each chunk is written and flushed before the next one, under one lock shared by the threads,
in one `os.write`. In a process other than the one that built the writer (a forked request
child, or a `--workers` process) writing to a pipe, chunks are read at most `select.PIPE_BUF`
bytes at a time (`chunk_limit`), because only writes of that size are atomic on a pipe shared
between processes; a larger datagram is written in `PIPE_BUF` pieces, which then stay whole.
With line framing (`write_lines`, see `framing`) such a process cuts its writes at newlines
instead, so each line of at most PIPE_BUF bytes stays whole. Bulk data may arrive through
`splice_from` (the stream adapter's splice fast path, --raw only). A closed
output (EPIPE, e.g. `| head -c 10`) raises `OutputClosed`; an output that fails otherwise (a
full disk, an I/O error) raises `OutputFailed`: the data is lost.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import threading
import weakref
from typing import Any, BinaryIO

from .framing import line_pieces

#: The splice fast path exists here (Linux); switchable for tests.
USE_SPLICE = hasattr(os, "splice")

_OUTPUT_GONE_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.EBADF}


class OutputClosed(Exception):
    """Raised by stdout and stdio when our output is gone (EPIPE: the reader exited)."""


class OutputFailed(Exception):
    """Raised by stdout and stdio when writing fails otherwise (ENOSPC, EIO): data was lost.

    `message` and `hint` are worded for the user; `errno` is the write's.
    """

    def __init__(self, exc: OSError) -> None:
        reason = (exc.strerror or str(exc)).lower()
        super().__init__(f"cannot write to stdout: {reason}")
        self.message = str(self)
        self.errno = exc.errno
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            self.hint = "free some space where stdout goes, or redirect it elsewhere"
        else:
            self.hint = "check the file or device stdout goes to"


def _output_error(exc: OSError) -> Exception:
    """OutputClosed when the reader is gone, else OutputFailed."""
    if exc.errno in _OUTPUT_GONE_ERRNOS:
        return OutputClosed(f"output closed: {exc.strerror}")
    return OutputFailed(exc)


def fileno(stream: Any) -> int | None:
    """The descriptor under `stream`, or None for a file object without one."""
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


_WRITERS: weakref.WeakSet[OutputWriter] = weakref.WeakSet()


class OutputWriter:
    """Writes chunks to the output under one lock; one `os.write` per chunk when it has an fd."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.fd = fileno(stream)
        self.lock = threading.Lock()
        self.creator_pid = os.getpid()
        self.is_pipe = False
        #: `splice_from` may splice into the output: a pipe or a regular file (not a terminal).
        self.can_splice = False
        if self.fd is not None:
            try:
                stream.flush()  # what was buffered before us goes first
            except (OSError, ValueError):
                pass
            try:
                mode = os.fstat(self.fd).st_mode
            except OSError:
                pass
            else:
                self.is_pipe = stat.S_ISFIFO(mode)
                self.can_splice = USE_SPLICE and (self.is_pipe or stat.S_ISREG(mode))
        _WRITERS.add(self)

    def chunk_limit(self, chunk_size: int) -> int:
        """How much to read per chunk so that a chunk reaches the output in one atomic write."""
        if self.is_pipe and os.getpid() != self.creator_pid:
            return min(chunk_size, select.PIPE_BUF)
        return chunk_size

    def write(self, data: Any) -> None:
        """Write all of `data`; raise OutputClosed when the output is gone, OutputFailed when
        it fails otherwise."""
        try:
            with self.lock:
                if self.fd is None:
                    self.stream.write(data)
                    self.stream.flush()
                elif os.getpid() != self.creator_pid and self.is_pipe:
                    self._write_pieces(data, select.PIPE_BUF)
                else:
                    self._write_pieces(data, len(data) or 1)
        except OSError as exc:
            raise _output_error(exc) from exc
        except ValueError as exc:  # the stream object itself was closed
            raise OutputClosed("output closed") from exc

    def write_lines(self, data: Any) -> None:
        """Write `data`, whole lines (or the piece of a line over the line limit), as `write`
        does; in another process writing to a pipe, in pieces that end at a newline."""
        if self.fd is None or not self.is_pipe or os.getpid() == self.creator_pid:
            self.write(data)
            return
        try:
            with self.lock:
                for piece in line_pieces(data, select.PIPE_BUF):
                    self._write_pieces(piece, select.PIPE_BUF)
        except OSError as exc:
            raise _output_error(exc) from exc

    def splice_from(self, pipe: int, n: int) -> None:
        """Move the `n` bytes waiting in `pipe` (the caller's) to the output as one chunk.

        No copy through Python; raise OutputClosed or OutputFailed as `write` does. An output that
        refuses splice (EINVAL: a file opened for appending, on some kernels) gets them
        copied, and every chunk after them.
        """
        try:
            with self.lock:
                fd = self.fd
                assert fd is not None
                while n:
                    if not self.can_splice:
                        data = os.read(pipe, n)
                        if not data:  # cannot be: the caller put n bytes in the pipe
                            break
                        self._write_pieces(data, len(data))
                        n -= len(data)
                        continue
                    try:
                        n -= os.splice(pipe, fd, n, flags=os.SPLICE_F_MOVE)
                    except BlockingIOError:  # an output left non-blocking by someone else
                        select.select([], [fd], [])
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        self.can_splice = False
        except OSError as exc:
            raise _output_error(exc) from exc

    def _write_pieces(self, data: Any, piece: int) -> None:
        fd = self.fd
        assert fd is not None
        with memoryview(data) as view:
            view = view.cast("B")
            while view:
                try:
                    n = os.write(fd, view[:piece])
                except BlockingIOError:  # an output left non-blocking by someone else
                    select.select([], [fd], [])
                    continue
                view = view[n:]


def _reset_locks_in_child() -> None:
    for writer in list(_WRITERS):
        writer.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)
