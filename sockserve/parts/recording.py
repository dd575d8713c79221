"""--record DIR: a transcript (`sockserve.transcripts`) of every connection, by a watch stage.

`Recorder` is the configuration's `watch.Dresser`: each new watch gets a `RecordingStage` at
the end of each direction's chain, writing each chunk to the connection's `TranscriptFile`
(one per stream connection; one per peer for datagrams, kept for the whole run). `RecordPart`
tells the recorder the server's address once bound, and closes the peers' files when the
server closes.

Safety: a file's name is made of the start time, the transport, the peer with every
character but letters, digits, '.' and '-' replaced by '_', the recording process's id and
a counter: it never names another directory, whatever the peer's address. Files are created
with O_EXCL and O_NOFOLLOW, mode 600. A write that fails (a full disk) ends that file; the
first failure of the run is one warning (shared with forked children through a byte of
shared memory), the server goes on.

Processes: a stream connection's file is opened by the process that serves it (the child,
in fork mode) at its first chunk, or when it ends without one; the counter is taken where
the watch is made (the parent), so two children never pick one name.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import re
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from ..addresses import format_plain
from ..console import format_client
from ..events import address_of
from ..socketserver import TCPServer
from ..transcripts import Dir, chunk_line, close_line, header_line
from ..watch import Sink, Stage, Watch

__all__ = ["RecordPart", "Recorder", "RecordingStage", "TranscriptFile", "safe_peer"]

#: Datagram peers whose files the recorder keeps track of, at most (the oldest is closed).
MAX_PEERS = 4096
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


def safe_peer(client: Any) -> str:
    """The peer as it may appear in a file name: [A-Za-z0-9._-], at most 60 characters."""
    text = format_client(address_of(client))
    if text == "unix client":
        return "unnamed"
    return _UNSAFE.sub("_", text)[:60] or "unnamed"


class TranscriptFile:
    """The transcript of one connection (or datagram peer): opened at its first line.

    `keep_open`: the descriptor stays open until `close` (a stream connection); otherwise
    each line is appended by opening the file again (datagram peers: no descriptor per
    peer is held). Thread-safe.
    """

    def __init__(self, recorder: Recorder, watch: Watch | None, client: Any, keep_open: bool):
        self.recorder = recorder
        self.watch = watch  # the stream's: its client is known once connected (event mode)
        self.client = client
        self.keep_open = keep_open
        self.number = next(recorder.counter)
        self.pid = os.getpid()
        self.start = time.monotonic()
        self.wall = datetime.now(UTC)
        self.path: str | None = None
        self.fd: int | None = None
        self.failed = False
        self.closed = False
        self.counts = {"in_chunks": 0, "in_bytes": 0, "out_chunks": 0, "out_bytes": 0}
        self.lock = threading.Lock()
        self.last = self.start  # the time of the last line written

    def chunk(self, direction: Dir, data: bytes, at: float) -> None:
        """Write one chunk's line. Lines keep their order in time: a chunk timed just
        before another direction's, but written after it (each direction has its thread),
        takes that one's time."""
        with self.lock:
            if self.failed or self.closed:
                return
            at = self.last = max(at, self.last)
            self.counts[f"{direction}_chunks"] += 1
            self.counts[f"{direction}_bytes"] += len(data)
            self._write(chunk_line(at - self.start, direction, data))

    def close(self) -> None:
        """Write the close line (and the header, for a connection without a chunk); once."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if not self.failed:
                self._write(close_line(time.monotonic() - self.start, dict(self.counts)))
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def _write(self, line: bytes) -> None:
        try:
            if self.path is None:
                self._create()
            if self.fd is None:
                assert self.path is not None
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
            else:
                fd = self.fd
            try:
                _write_all(fd, line)
            finally:
                if not self.keep_open:
                    os.close(fd)
        except OSError as exc:
            self.failed = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.recorder.failed(self.watch, exc)

    def _create(self) -> None:
        """Create the file (O_EXCL: never one that exists) and write the header."""
        recorder = self.recorder
        client = self.watch.client if self.watch is not None else self.client
        stamp = self.wall.strftime("%Y%m%dT%H%M%S.%fZ")
        base = f"{stamp}-{recorder.transport}-{safe_peer(client)}-{self.pid}-{self.number}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        for attempt in itertools.count(1):
            name = base + (f"-{attempt}" if attempt > 1 else "") + ".jsonl"
            path = os.path.join(recorder.directory, name)
            try:
                fd = os.open(path, flags, 0o600)
                break
            except FileExistsError:
                if attempt >= 100:
                    raise
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            start = self.wall.isoformat(timespec="microseconds").replace("+00:00", "Z")
            _write_all(
                fd,
                header_line(
                    recorder.transport, format_client(address_of(client)), recorder.server, start
                ),
            )
        except OSError:
            os.close(fd)
            self.path = path
            raise
        self.path = path
        if self.keep_open:
            self.fd = fd
        else:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - write(2) returns an error instead
            raise OSError(errno.EIO, "short write")
        view = view[n:]


class RecordingStage(Stage):
    """Write each chunk of one direction to its transcript: what the handler received
    ("in"), what the socket took ("out")."""

    def __init__(
        self, recorder: Recorder, watch: Watch, direction: Dir, file: TranscriptFile | None
    ):
        super().__init__()
        self.recorder = recorder
        self.watch = watch
        self.direction: Dir = direction
        self.file = file  # None: a datagram socket's, the peer's file is found per chunk

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        at = time.monotonic()
        if self.direction == "in":
            self._record(bytes(chunk), at)
            return super().pass_on(chunk, sink)
        n = super().pass_on(chunk, sink)
        if n:
            self._record(bytes(chunk[:n]), at)
        return n

    def _record(self, data: bytes, at: float) -> None:
        file = self.file or self.recorder.peer(self.watch, at)
        if file is not None:
            file.chunk(self.direction, data, at)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Recorder:
    """The dresser of --record DIR: a transcript per connection, or per datagram peer.

    `server` is the bound address shown in each header (`RecordPart` sets it); `close`
    writes the close lines of the datagram peers' files, once the server stops.
    """

    def __init__(self, directory: str, transport: str) -> None:
        self.directory = directory
        self.transport = transport
        self.stream = transport in ("tcp", "unix")
        self.server = ""
        self.counter = itertools.count(1)
        self._peers: dict[str, TranscriptFile] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._warned = mmap.mmap(-1, 1)  # shared with forked children: one warning per run

    def __call__(self, watch: Watch) -> None:
        file = TranscriptFile(self, watch, None, keep_open=True) if self.stream else None
        watch.append("in", RecordingStage(self, watch, "in", file))
        watch.append("out", RecordingStage(self, watch, "out", file))

    def peer(self, watch: Watch, at: float) -> TranscriptFile | None:
        """The file of the datagram peer `watch.client` is, started `at` if new (None once
        the recorder is closed)."""
        client = watch.client
        key = format_client(address_of(client))
        with self._lock:
            if self._closed:
                return None
            file = self._peers.get(key)
            if file is None:
                if len(self._peers) >= MAX_PEERS:
                    oldest = next(iter(self._peers))
                    self._peers.pop(oldest).close()
                file = self._peers[key] = TranscriptFile(self, None, client, keep_open=False)
                file.start = at
            return file

    def failed(self, watch: Watch | None, exc: OSError) -> None:
        """A write failed: warn once per run (forked children included)."""
        if self._warned[0]:
            return
        self._warned[0] = 1
        events = watch.events if watch is not None else None
        if events is None:
            events = self.events
        if events is not None:
            events.warning(
                f"--record {self.directory}: cannot write a transcript "
                f"({exc.strerror or exc}); the server goes on, transcripts may be missing or "
                "cut short (said once)"
            )

    #: Who hears the warning when no watch tells (a datagram peer's file): `RecordPart` sets it.
    events: Any = None

    def close(self) -> None:
        """Close the datagram peers' files; later chunks are not recorded. Idempotent."""
        with self._lock:
            self._closed = True
            peers = list(self._peers.values())
            self._peers.clear()
        for file in peers:
            file.close()


class RecordPart(TCPServer):
    """Tell the `recorder` the server's address once bound; close it when the server
    closes (after the threads or children the server waits for).

    Extends server_activate and server_close.
    """

    recorder: Recorder | None = None
    monitor: Any = None

    def server_activate(self) -> None:
        super().server_activate()
        recorder = self.recorder
        if recorder is not None:
            family = "unix" if self.address_family == getattr(socket, "AF_UNIX", None) else "inet"
            recorder.server = format_plain(family, "", self.server_address)
            recorder.events = self.monitor

    def server_close(self) -> None:
        try:
            super().server_close()
        finally:
            if self.recorder is not None:
                self.recorder.close()
