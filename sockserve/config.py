"""ServeConfig: the validated values one `sockserve` run needs. No sockets, no printing."""

from __future__ import annotations

from .errors import UsageError
from .records import Factory, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    from .addresses import Address, Family, SockType
    from .loading import LoadedHandler

    Concurrency = Literal["sync", "thread", "fork", "event"]
    OutputMode = Literal["rich", "json"]

CONCURRENCIES: tuple[Concurrency, ...] = ("sync", "thread", "fork", "event")

#: The largest datagram the tool reads: 64 KiB, so no UDP or unix datagram is ever truncated.
MAX_DATAGRAM = 65536


def default_concurrency(socktype: SockType) -> Concurrency:
    """Threads for streams (clients overlap); sync for datagrams (a thread per packet costs
    more than the work of a typical datagram handler)."""
    return "thread" if socktype == "stream" else "sync"


class ServeConfig(Record):
    """Everything a run needs, validated; built by the CLI, read by the runner and factory."""

    family: Family
    socktype: SockType
    address: Address
    handler: LoadedHandler
    concurrency: Concurrency = "thread"
    max_children: int | None = None
    max_threads: int | None = None
    daemon_threads: bool = False
    block_on_close: bool = True
    backlog: int = 128
    reuse_address: bool = True
    reuse_port: bool = False
    timeout: float | None = None
    mode: int | None = None
    reply: bytes | None = None
    reply_file: str | None = None
    once: bool = False
    max_requests: int | None = None
    grace: float = 5.0
    workers: int = 1
    print_address: bool = False
    output: OutputMode = "rich"
    verbosity: int = 0
    color: bool | None = None
    traceback: bool = False
    extra: dict[str, str] = Factory(dict)

    def __post_init__(self) -> None:
        if self.max_children is not None and self.concurrency != "fork":
            raise UsageError(
                "--max-children only applies to --concurrency fork",
                hint="add --concurrency fork, or use --max-threads with threads",
            )
        if self.max_threads is not None and self.concurrency != "thread":
            raise UsageError(
                "--max-threads only applies to --concurrency thread",
                hint="add --concurrency thread, or use --max-children with fork",
            )
        if self.mode is not None and self.family != "unix":
            raise UsageError("--mode only applies to unix sockets", hint="drop --mode")
        if self.mode is not None and self.address.abstract:
            raise UsageError(
                "--mode does not apply to an abstract unix socket (@name): it has no file",
                hint="use a filesystem path, or drop --mode",
            )
        if self.workers < 1:
            raise UsageError("--workers must be at least 1", hint="use --workers 1 or more")
        if self.workers > 1 and (self.once or self.max_requests is not None):
            raise UsageError(
                "--once and --max-requests count requests in one process: not with --workers",
                hint="drop --workers, or stop the server with a signal",
            )
        if self.reply is not None and self.reply_file is not None:
            raise UsageError(
                "--reply and --reply-file cannot be combined", hint="give only one of them"
            )

    @property
    def transport(self) -> str:
        """tcp, udp, unix or unix-dgram."""
        if self.family == "unix":
            return "unix" if self.socktype == "stream" else "unix-dgram"
        return "tcp" if self.socktype == "stream" else "udp"

    @property
    def request_limit(self) -> int | None:
        """How many requests to serve before stopping (--once is 1), or None."""
        if self.once:
            return 1
        return self.max_requests
