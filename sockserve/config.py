"""ServeConfig: the validated values one `sockserve` run needs. No sockets, no printing.

`config_from_options` turns the command's options (as click names them) into a ServeConfig;
both command-line parsers, click's (`cli`) and the quick one (`entry`), go through it.
"""

from __future__ import annotations

from .errors import OptionError, UsageError
from .records import Factory, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Literal

    from .addresses import Address, Family, SockType

    Concurrency = Literal["sync", "thread", "fork", "event"]
    OutputMode = Literal["rich", "json"]
    Kind = Literal["builtin", "stream", "dgram", "any", "protocol", "datagram-protocol"]

CONCURRENCIES: tuple[Concurrency, ...] = ("sync", "thread", "fork", "event")

#: The largest datagram the tool reads: 64 KiB, so no UDP or unix datagram is ever truncated.
MAX_DATAGRAM = 65536


#: The builtin handlers' names. Here rather than in `loading`, which a builtin never needs.
BUILTIN_NAMES = (
    "echo",
    "upper",
    "discard",
    "stdout",
    "stdio",
    "chargen",
    "daytime",
    "time",
    "reply",
)


class LoadedHandler(Record):
    """A resolved handler: `builtin` names a builtin, else `cls` is the user's class."""

    name: str
    builtin: str | None = None
    cls: Any = None
    kind: Kind = "builtin"


def builtin_handler(spec: str) -> LoadedHandler | None:
    """The LoadedHandler of a builtin's name; None for any other spec (`loading` resolves it)."""
    name = spec.strip()
    return LoadedHandler(name=name, builtin=name) if name in BUILTIN_NAMES else None


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
    pin: bool | None = None  # thread mode: threads on one CPU; None: for the builtins only
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


def parse_mode(value: Any) -> int:
    """`--mode` text (600, 0o660) → permission bits; ValueError says what is wrong."""
    text = str(value).strip().lower().removeprefix("0o")
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal mode such as 600 or 660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is outside 000..777")
    return mode


def decode_escapes(text: str) -> bytes:
    """Turn `--reply` text into bytes, decoding \\n, \\r, \\t, \\\\ and \\xNN escapes."""
    try:
        return text.encode("utf-8").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise OptionError(
            "invalid escape sequence (use \\n, \\r, \\t, \\\\ or \\xNN)", param="--reply"
        ) from None


def config_from_options(
    options: Mapping[str, Any],
    *,
    handler_given: bool,
    load: Callable[[str], LoadedHandler] | None = None,
) -> ServeConfig:
    """Validate the command's options (click's parameter names) into a ServeConfig.

    `handler_given` tells whether -H was on the command line (else --reply implies -H
    reply); `load` resolves a spec that is not a builtin (default: `loading.load_handler`). Raises
    OptionError, which the click command shows as its usage error.
    """
    from .addresses import parse_address, resolve_transport

    try:
        family, socktype = resolve_transport(
            options["proto"], options["family"], options["socktype"]
        )
    except UsageError as exc:
        raise OptionError(_with_hint(exc)) from None
    try:
        address = parse_address(options["address"], family)
    except UsageError as exc:
        raise OptionError(_with_hint(exc), param="'ADDRESS'") from None
    family = address.family
    concurrency = options["concurrency"] or default_concurrency(socktype)

    spec = options["handler"]
    reply = decode_escapes(options["reply"]) if options["reply"] is not None else None
    reply_file = options["reply_file"]
    if (reply is not None or reply_file is not None) and not handler_given:
        spec = "reply"
    if spec == "reply" and reply is None and reply_file is None:
        raise OptionError("-H reply needs --reply TEXT or --reply-file PATH")
    if spec != "reply" and (reply is not None or reply_file is not None):
        raise OptionError(f"--reply/--reply-file only apply to -H reply, not -H {spec}")
    handler = builtin_handler(spec)
    if handler is None:  # a handler of the user's: only now import what resolves it
        from .loading import check_compatible, load_handler

        try:
            handler = (load or load_handler)(spec)
            check_compatible(handler, socktype, concurrency)
        except UsageError as exc:
            raise OptionError(_with_hint(exc), param="'-H' / '--handler'") from None

    if options["once"] and options["max_requests"]:
        raise OptionError("cannot combine --once and --max-requests (--once is --max-requests 1)")
    try:
        return ServeConfig(
            family=family,
            socktype=socktype,
            address=address,
            handler=handler,
            concurrency=concurrency,
            reply=reply,
            reply_file=reply_file,
            output="json" if options["json_output"] else "rich",
            verbosity=options["verbose"],
            **{name: options[name] for name in _PASSED_AS_GIVEN},
        )
    except UsageError as exc:
        raise OptionError(_with_hint(exc)) from None


#: Options that become the ServeConfig field of the same name unchanged.
_PASSED_AS_GIVEN = (
    "max_children",
    "max_threads",
    "pin",
    "daemon_threads",
    "block_on_close",
    "backlog",
    "reuse_address",
    "reuse_port",
    "timeout",
    "mode",
    "once",
    "max_requests",
    "grace",
    "workers",
    "print_address",
    "color",
    "traceback",
)


def _with_hint(exc: UsageError) -> str:
    return f"{exc.message}; {exc.hint}" if exc.hint else exc.message
