"""ServeConfig: the validated values one `sockserve` run needs. No printing.

`build_config` is the one way in: its keywords are the command's long options with dashes as
underscores (`--max-threads` → `max_threads=`), so the command line and Python callers build
the same ServeConfig. Every rule a value breaks raises `errors.UsageError(message, hint)`,
worded for the user; this module knows nothing of click. It opens no socket, but one: a
unix datagram pair, to learn how big a datagram the system sends (`unix_datagram_limit`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Literal

from .addresses import TRANSPORTS, Address, Family, SockType, parse_address, resolve_transport
from .errors import UsageError
from .loading import LoadedHandler, check_compatible, load_handler
from .upstreams import parse_upstream

Concurrency = Literal["sync", "thread", "fork", "event"]
OutputMode = Literal["rich", "json"]

CONCURRENCIES: tuple[Concurrency, ...] = ("sync", "thread", "fork", "event")

#: The listen queue of a stream socket, as uvicorn's and gunicorn's (the kernel caps it at
#: net.core.somaxconn): a burst of connects waits there, not for a SYN retry a second later.
DEFAULT_BACKLOG = 2048
#: The largest datagram the tool reads: 64 KiB, so no UDP or unix datagram is ever truncated.
MAX_DATAGRAM = 65536
#: The largest UDP payload: 65535 bytes less the headers (IPv4: 20 + 8; IPv6: the UDP 8).
MAX_UDP_PAYLOAD = {"inet": 65507, "inet6": 65527}


def default_concurrency(socktype: SockType) -> Concurrency:
    """Threads for streams (clients overlap); sync for datagrams (a thread per packet costs
    more than the work of a typical datagram handler)."""
    return "thread" if socktype == "stream" else "sync"


@dataclass(frozen=True)
class ServeConfig:
    """Everything a run needs, validated; built by `build_config`, read by the runner."""

    family: Family
    socktype: SockType
    address: Address
    handler: LoadedHandler
    concurrency: Concurrency = "thread"
    max_children: int | None = None
    max_threads: int | None = None
    pin: bool | None = None  # thread mode: threads on one CPU; None: for the builtins only
    daemon_threads: bool = False
    block_on_close: bool = True
    backlog: int = DEFAULT_BACKLOG
    reuse_address: bool = True
    reuse_port: bool = False
    timeout: float | None = None
    mode: int | None = None
    reply: bytes | None = None
    reply_file: str | None = None
    banner: bytes | None = None
    banner_file: str | None = None
    once: bool = False
    max_requests: int | None = None
    grace: float = 5.0
    workers: int = 1
    print_address: bool = False
    print_host_port: bool = False
    output: OutputMode = "rich"
    verbosity: int = 0
    color: bool | None = None
    traceback: bool = False
    forward: Address | None = None  # -H forward's upstream
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
        if self.concurrency not in CONCURRENCIES:
            raise UsageError(
                f"unknown concurrency {self.concurrency!r}", hint="use " + ", ".join(CONCURRENCIES)
            )
        for name, least in (("max_threads", 1), ("max_children", 1), ("max_requests", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                option = "--" + name.replace("_", "-")
                raise UsageError(f"{option} must be at least {least}", hint=f"use {option} N")
        if self.backlog < 0:
            raise UsageError("--backlog cannot be negative", hint="use --backlog 0 or more")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1", hint="use --workers 1 or more")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError("--timeout must be more than 0 seconds", hint="e.g. --timeout 2.5")
        if not self.grace >= 0:
            raise UsageError("--grace cannot be negative", hint="e.g. --grace 0 or --grace 5")
        if self.mode is not None and not 0 <= self.mode <= 0o777:
            raise UsageError(f"--mode {self.mode:o} is outside 000..777", hint="e.g. --mode 600")

    def _check_combinations(self) -> None:
        _check_forward(self)
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
        if self.pin and self.concurrency != "thread":
            raise UsageError(
                "--pin only applies to --concurrency thread",
                hint="add --concurrency thread, or drop --pin",
            )
        if self.pin and self.workers > 1:
            raise UsageError(
                "--pin keeps one process's threads on one CPU: not with --workers",
                hint="drop --pin, or --workers",
            )
        if self.daemon_threads and self.concurrency != "thread":
            raise UsageError(
                "--daemon-threads only applies to --concurrency thread",
                hint="add --concurrency thread, or drop --daemon-threads",
            )
        if self.timeout is not None and self.socktype == "dgram" and self.forward is None:
            raise UsageError(
                "--timeout closes idle connections: a datagram socket has none",
                hint="drop --timeout",
            )
        if self.print_host_port and self.family == "unix":
            raise UsageError(
                "--print-host-port prints HOST PORT: a unix socket has a path instead",
                hint="use --print-address, which prints the path",
            )
        if self.mode is not None and self.family != "unix":
            raise UsageError("--mode only applies to unix sockets", hint="drop --mode")
        if self.mode is not None and self.address.abstract:
            raise UsageError(
                "--mode does not apply to an abstract unix socket (@name): it has no file",
                hint="use a filesystem path, or drop --mode",
            )
        if self.workers > 1 and (self.once or self.max_requests is not None):
            raise UsageError(
                "--once and --max-requests count requests in one process: not with --workers",
                hint="drop --workers, or stop the server with a signal",
            )
        if self.reply is not None and self.reply_file is not None:
            raise UsageError(
                "--reply and --reply-file cannot be combined", hint="give only one of them"
            )
        if self.banner is not None and self.banner_file is not None:
            raise UsageError(
                "--banner and --banner-file cannot be combined", hint="give only one of them"
            )
        if self.socktype == "dgram" and (self.banner is not None or self.banner_file is not None):
            option = "--banner" if self.banner is not None else "--banner-file"
            raise UsageError(
                f"{option} only applies to tcp and unix: a {self.transport} server cannot "
                "speak first",
                hint=f"drop {option}",
            )

    @property
    def transport(self) -> str:
        """tcp, udp, unix or unix-dgram."""
        if self.family == "unix":
            return "unix" if self.socktype == "stream" else "unix-dgram"
        return "tcp" if self.socktype == "stream" else "udp"

    def banner_bytes(self) -> bytes:
        """What each stream client is sent on connect: --banner, or --banner-file read now
        (b"": nothing). Raises UsageError when the file cannot be read."""
        if self.banner_file is None:
            return self.banner or b""
        try:
            with open(self.banner_file, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(
                f"cannot read --banner-file {self.banner_file}: {exc.strerror}",
                hint="check the path",
            ) from None

    @property
    def request_limit(self) -> int | None:
        """How many requests to serve before stopping (--once is 1), or None."""
        if self.once:
            return 1
        return self.max_requests


def build_config(
    *,
    proto: str,
    address: str | Address,
    handler: str | LoadedHandler | None = None,
    reply: bytes | None = None,
    reply_file: str | None = None,
    banner: bytes | None = None,
    banner_file: str | None = None,
    family: Family | None = None,
    type: SockType | None = None,  # --type: shadows the builtin in this function only
    concurrency: Concurrency | None = None,
    max_threads: int | None = None,
    pin: bool | None = None,
    max_children: int | None = None,
    workers: int = 1,
    daemon_threads: bool = False,
    block_on_close: bool = True,
    backlog: int | None = None,
    reuse_address: bool = True,
    reuse_port: bool = False,
    timeout: float | None = None,
    mode: int | None = None,
    once: bool = False,
    max_requests: int | None = None,
    grace: float = 5.0,
    print_address: bool = False,
    print_host_port: bool = False,
    json: bool = False,
    verbose: int = 0,
    color: bool | None = None,
    traceback: bool = False,
    forward: str | Address | None = None,
) -> ServeConfig:
    """Check the options of one run and combine them into a ServeConfig.

    `address` and `handler` are the command line's text or their parsed forms (an Address,
    a LoadedHandler). `handler` None is echo, or reply when `reply` or `reply_file` is given;
    `backlog` None is `DEFAULT_BACKLOG` (a number given is refused for datagrams).
    Raises UsageError (HandlerLoadError for the handler) naming the option to change.
    """
    if proto not in TRANSPORTS:
        raise UsageError(f"unknown protocol {proto!r}", hint="use " + ", ".join(TRANSPORTS))
    wanted_family, socktype = resolve_transport(proto, family, type)
    address = _address(address, wanted_family, proto)
    concurrency = concurrency or default_concurrency(socktype)

    replies = reply is not None or reply_file is not None
    handler, upstream = _forward_handler(handler, forward, socktype)
    if handler is None:
        handler = "reply" if replies else "echo"
    loaded = load_handler(handler) if isinstance(handler, str) else handler
    if loaded.builtin == "reply" and not replies:
        raise UsageError("-H reply needs --reply TEXT or --reply-file PATH")
    if loaded.builtin != "reply" and replies:
        raise UsageError(f"--reply/--reply-file only apply to -H reply, not -H {loaded.name}")
    check_compatible(loaded, socktype, concurrency)
    if socktype == "dgram" and loaded.builtin == "reply":
        _check_reply_fits(reply, reply_file, address)
    if backlog is not None and socktype == "dgram":
        raise UsageError(
            "--backlog is the listen queue of a stream socket: a datagram socket does not listen",
            hint="drop --backlog",
        )
    if once and max_requests:
        raise UsageError("cannot combine --once and --max-requests (--once is --max-requests 1)")

    return ServeConfig(
        family=address.family,
        socktype=socktype,
        address=address,
        handler=loaded,
        concurrency=concurrency,
        max_children=max_children,
        max_threads=max_threads,
        pin=pin,
        daemon_threads=daemon_threads,
        block_on_close=block_on_close,
        backlog=DEFAULT_BACKLOG if backlog is None else backlog,
        reuse_address=reuse_address,
        reuse_port=reuse_port,
        timeout=timeout,
        mode=mode,
        reply=reply,
        reply_file=reply_file,
        banner=banner,
        banner_file=banner_file,
        once=once,
        max_requests=max_requests,
        grace=grace,
        workers=workers,
        print_address=print_address,
        print_host_port=print_host_port,
        output="json" if json else "rich",
        verbosity=verbose,
        color=color,
        traceback=traceback,
        forward=upstream,
    )


def _forward_handler(
    handler: str | LoadedHandler | None, forward: str | Address | None, socktype: SockType
) -> tuple[str | LoadedHandler | None, Address | None]:
    """The handler and upstream of --forward: it implies -H forward, which needs it."""
    name = handler if isinstance(handler, str) else handler.name if handler else None
    if forward is None:
        if name is not None and name.strip() == "forward":
            raise UsageError(
                "-H forward needs --forward UPSTREAM", hint="e.g. --forward 127.0.0.1:8080"
            )
        return handler, None
    if name is not None and name.strip() != "forward":
        raise UsageError(
            f"--forward implies -H forward: it cannot be combined with -H {name}",
            hint="drop -H, or --forward",
        )
    upstream = parse_upstream(forward, socktype) if isinstance(forward, str) else forward
    return "forward", upstream


def _check_forward(config: ServeConfig) -> None:
    """What -H forward cannot do: datagrams with -c fork or --workers."""
    if config.forward is None:
        return
    if config.socktype == "dgram" and config.concurrency == "fork":
        raise UsageError(
            f"{config.transport} forwarding cannot run with -c fork: each child sees one "
            "datagram, and the upstream's replies would come back to a child that is gone",
            hint="use -c sync (the default), thread or event",
        )
    if config.socktype == "dgram" and config.workers > 1:
        raise UsageError(
            f"{config.transport} forwarding keeps one association per client in one process: "
            "not with --workers",
            hint="drop --workers",
        )


#: How an error names an address of each family.
_FAMILY_ADDRESS = {"inet": "an IPv4 address", "inet6": "an IPv6 address", "unix": "a unix path"}


def _address(address: str | Address, family: Family | None, proto: str) -> Address:
    """Parse ADDRESS for `family`; an Address already parsed must be of that family.

    `family` None (tcp, udp without --family) takes either internet family.
    """
    if isinstance(address, str):
        return parse_address(address, family)
    fits = address.family == family if family else address.family in ("inet", "inet6")
    if not fits:
        taker = f"--family {family}" if family and proto in ("tcp", "udp") else proto
        wanted = _FAMILY_ADDRESS[family] if family else "an internet address"
        raise UsageError(
            f"{address} is {_FAMILY_ADDRESS[address.family]}, but {taker} takes {wanted}",
            hint="check PROTO, --family and ADDRESS",
        )
    return address


def unix_datagram_limit(size: int) -> int | None:
    """None if a unix datagram of `size` bytes can be sent here, else the largest that can.

    The socket's send buffer (SO_SNDBUF, its system default) decides, less what the kernel
    keeps of it: measured on a socket pair, which the server's socket is like.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:

        def fits(n: int) -> bool:
            try:
                a.send(bytes(n), socket.MSG_DONTWAIT)
            except OSError:  # EMSGSIZE, or ENOBUFS on some systems
                return False
            b.recv(n or 1)
            return True

        if fits(size):
            return None
        low, high = 0, size  # low fits, high does not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def _check_reply_fits(reply: bytes | None, reply_file: str | None, address: Address) -> None:
    """Refuse a reply that no one datagram of the transport carries (it would fail each time)."""
    if reply_file is not None:
        try:
            size = os.stat(reply_file).st_size
        except OSError as exc:
            raise UsageError(
                f"cannot read --reply-file {reply_file}: {exc.strerror}", hint="check the path"
            ) from None
        what = f"--reply-file {reply_file} is {size} bytes"
    else:
        size = len(reply or b"")
        what = f"--reply is {size} bytes"
    if address.family == "unix":
        limit = unix_datagram_limit(size)
        if limit is None:
            return
        carrier, why = "unix datagram here", ": the socket's send buffer, SO_SNDBUF, decides"
    else:
        # A dual-stack socket ([::]) answers IPv4 clients too: the IPv4 limit holds.
        ipv4 = address.family == "inet" or address.all_interfaces
        limit = MAX_UDP_PAYLOAD["inet" if ipv4 else "inet6"]
        if size <= limit:
            return
        carrier, why = f"UDP datagram over {'IPv4' if ipv4 else 'IPv6'}", ""
    raise UsageError(
        f"{what}: more than one {carrier} carries (at most {limit} bytes{why})",
        hint="use a smaller reply, or serve it over tcp or unix (streams have no limit)",
    )
