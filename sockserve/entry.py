"""The `sockserve` program (`scripts/sockserve` and `python -m sockserve`), quick to start.

click costs about 18 ms to import, more than the rest of a start-up. `main` therefore reads
the usual command lines itself: PROTO ADDRESS with the options scripts use, in the spellings
click accepts. It builds the config through `config.config_from_options`, as the click
command does. Anything else goes to the click command in `cli`, which parses the command line
from scratch, so usage, messages and exit codes stay click's: --help, completion,
an option or form this parser does not read, a value it cannot check exactly as click does,
and any usage error. `--version` (or `-V`) alone is printed here, in the words click would
print.
"""

from __future__ import annotations

import os
import sys
import threading

from .addresses import TRANSPORTS
from .config import CONCURRENCIES, config_from_options, parse_mode
from .errors import ExitStatus, HandlerLoadError, OptionError, SockserveError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .config import LoadedHandler, ServeConfig
    from .console import PlainReporter


class _Decline(Exception):
    """The quick parser leaves this command line to click."""


def _text(value: str) -> str:
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in choices:
            raise _Decline
        return value

    return convert


def _int(minimum: int) -> Callable[[str], int]:
    """click.IntRange(min=minimum), for plain decimal digits only."""

    def convert(value: str) -> int:
        if not (value.isascii() and value.isdigit()) or int(value) < minimum:
            raise _Decline
        return int(value)

    return convert


def _seconds(*, zero_ok: bool) -> Callable[[str], float]:
    """click.FloatRange(min=0) (min_open unless `zero_ok`), for 5, 0.5, .5 and 5. only."""

    def convert(value: str) -> float:
        whole, _, part = value.partition(".")
        digits = whole + part
        if not (digits.isascii() and digits.isdigit()):
            raise _Decline
        seconds = float(value)
        if seconds < 0 or (seconds == 0 and not zero_ok):
            raise _Decline
        return seconds

    return convert


def _mode(value: str) -> int:
    try:
        return parse_mode(value)
    except ValueError:
        raise _Decline from None


def _readable_file(value: str) -> str:
    """click.Path(exists=True, dir_okay=False, readable=True), for regular files only."""
    if not (os.path.isfile(value) and os.access(value, os.R_OK)):
        raise _Decline
    return value


#: The protocols of the PROTO argument (addresses.TRANSPORTS has the same keys).
_PROTOCOLS = tuple(TRANSPORTS)

#: Flags: option string -> (parameter, value it sets).
FLAGS: dict[str, tuple[str, bool]] = {
    "--once": ("once", True),
    "--print-address": ("print_address", True),
    "--json": ("json_output", True),
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "--reuse-port": ("reuse_port", True),
    "--traceback": ("traceback", True),
    "--pin": ("pin", True),
    "--no-pin": ("pin", False),
    "--daemon-threads": ("daemon_threads", True),
    "--no-daemon-threads": ("daemon_threads", False),
    "--block-on-close": ("block_on_close", True),
    "--no-block-on-close": ("block_on_close", False),
    "--reuse-address": ("reuse_address", True),
    "--no-reuse-address": ("reuse_address", False),
    "--color": ("color", True),
    "--no-color": ("color", False),
}

#: Options with a value: option string -> (parameter, conversion; _Decline when in doubt).
VALUED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "-H": ("handler", _text),
    "--handler": ("handler", _text),
    "-c": ("concurrency", _choice(*CONCURRENCIES)),
    "--concurrency": ("concurrency", _choice(*CONCURRENCIES)),
    "--family": ("family", _choice("inet", "inet6", "unix")),
    "--type": ("socktype", _choice("stream", "dgram")),
    "--reply": ("reply", _text),
    "--reply-file": ("reply_file", _readable_file),
    "--max-threads": ("max_threads", _int(1)),
    "--max-children": ("max_children", _int(1)),
    "--workers": ("workers", _int(1)),
    "--backlog": ("backlog", _int(0)),
    "--timeout": ("timeout", _seconds(zero_ok=False)),
    "--mode": ("mode", _mode),
    "--max-requests": ("max_requests", _int(1)),
    "--grace": ("grace", _seconds(zero_ok=True)),
}

#: -v / --verbose counts.
COUNTED = {"-v": "verbose", "--verbose": "verbose"}

#: What click gives a parameter that is not on the command line.
DEFAULTS: dict[str, Any] = {
    "family": None,
    "socktype": None,
    "handler": "echo",
    "reply": None,
    "reply_file": None,
    "concurrency": None,
    "max_threads": None,
    "max_children": None,
    "pin": None,
    "workers": 1,
    "daemon_threads": False,
    "block_on_close": True,
    "backlog": 128,
    "reuse_address": True,
    "reuse_port": False,
    "timeout": None,
    "mode": None,
    "once": False,
    "max_requests": None,
    "grace": 5.0,
    "print_address": False,
    "json_output": False,
    "quiet": False,
    "verbose": 0,
    "color": None,
    "traceback": False,
}


def parse_args(args: list[str]) -> tuple[dict[str, Any], bool] | None:
    """The click command's parameters for `args`, and whether -H was given; None leaves the
    command line to click (see the module docstring)."""
    try:
        return _parse(args)
    except _Decline:
        return None


def _parse(args: list[str]) -> tuple[dict[str, Any], bool]:
    params = dict(DEFAULTS)
    positional: list[str] = []
    handler_given = False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            positional += rest
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        if arg.startswith("--"):
            name, eq, attached = arg.partition("=")
            pairs = [(name, attached if eq else None)]
        else:  # -q, -vv, -H NAME, -Hupper, -qc thread: as click reads short options
            pairs = []
            for i, ch in enumerate(arg[1:], 2):
                if f"-{ch}" in VALUED:
                    pairs.append((f"-{ch}", arg[i:] or None))
                    break
                pairs.append((f"-{ch}", None))
        for name, value in pairs:
            if name in FLAGS and value is None:
                dest, flag = FLAGS[name]
                params[dest] = flag
            elif name in COUNTED and value is None:
                params["verbose"] += 1
            elif name in VALUED:
                if value is None:
                    if not rest:
                        raise _Decline
                    value = rest.pop(0)
                if value.startswith("-"):
                    raise _Decline  # click would take it; an unusual command line either way
                dest, convert = VALUED[name]
                params[dest] = convert(value)
                handler_given = handler_given or dest == "handler"
            else:  # --help, --version, --completion, unknown, `--once=x`: click's to answer
                raise _Decline
    if len(positional) != 2 or positional[0] not in _PROTOCOLS:
        raise _Decline
    params["proto"], params["address"] = positional
    return params, handler_given


def _completing() -> bool:
    """True when a shell asks for completions (click's _SOCKSERVE_COMPLETE and the like)."""
    return any(k.startswith("_") and k.endswith("_COMPLETE") and v for k, v in os.environ.items())


class _RememberedLoads:
    """load_handler remembering each failure, so that the click command, when it takes over,
    reports it without running the user's failing module a second time."""

    def __init__(self) -> None:
        self.failures: dict[str, HandlerLoadError] = {}

    def load_handler(self, spec: str) -> LoadedHandler:
        from .loading import load_handler

        if spec in self.failures:
            raise self.failures[spec]
        try:
            return load_handler(spec)
        except HandlerLoadError as exc:
            self.failures[spec] = exc
            raise


def version_message() -> str:
    """What --version prints (the click command prints the same)."""
    from . import __version__

    return f"sockserve {__version__} (Python {sys.version.split()[0]}, {sys.implementation.name})"


def _print_version() -> None:
    """--version or -V alone: no need for click (about 35 ms of imports) to print a line."""
    try:
        sys.stdout.write(version_message() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `sockserve --version | true`: as click's standalone mode does
        from .console import silence

        silence(sys.stdout, sys.stderr)
        sys.exit(1)


def main() -> None:
    """Run the `sockserve` command: quickly for the usual command lines, else through click."""
    if sys.argv[1:] in (["--version"], ["-V"]) and not _completing():
        return _print_version()
    parsed = None if _completing() else parse_args(sys.argv[1:])
    if parsed is None:
        return _with_click()
    params, handler_given = parsed
    loads = _RememberedLoads()

    def build() -> ServeConfig:
        return config_from_options(params, handler_given=handler_given, load=loads.load_handler)

    try:
        serve_command(params, build, lambda status: exit_command(status, as_command=True))
    except OptionError:
        _with_click(loads)  # raised before anything else was done: click reports it
    except OSError as exc:  # as click's standalone mode does
        import errno

        if exc.errno != errno.EPIPE:
            raise
        from .console import silence

        silence(sys.stdout, sys.stderr)
        sys.exit(1)
    except (EOFError, KeyboardInterrupt):  # as click's standalone mode does
        sys.stderr.write("\nAborted!\n")
        sys.exit(1)


def _with_click(loads: _RememberedLoads | None = None) -> None:
    from .cli import command

    command(loads)


def serve_command(
    params: dict[str, Any],
    build: Callable[[], ServeConfig],
    finish: Callable[[int], None],
) -> None:
    """The command itself, after parsing: build the config, serve, `finish(status)`.

    A SockserveError is printed as `sockserve: error: ...` plus its hint (`--traceback`
    raises it instead); anything else `build` raises is the caller's to report.
    """
    try:
        config = build()
        reporter = _reporter(params)
        from .console import setup_logging
        from .runner import serve

        setup_logging(reporter, params["verbose"])
        status = serve(config, reporter)
    except KeyboardInterrupt:
        # Ctrl-C after the run restored the default handler (while the summary is printed):
        # the user wants out, and has had the summary or is about to lose only that.
        finish(ExitStatus.INTERRUPTED)
    except SockserveError as exc:
        if params["traceback"]:
            raise
        _reporter(params).fatal(exc.message, exc.hint)
        sys.exit(int(exc.exit_status))
    finish(status)


def _reporter(params: dict[str, Any]) -> PlainReporter:
    from .console import make_reporter

    return make_reporter(
        "json" if params["json_output"] else "rich",
        params["verbose"],
        params["quiet"],
        params["color"],
    )


def exit_command(status: int, *, as_command: bool) -> None:
    """Exit; if a hung non-daemon handler thread would hold the process, leave at once.

    Ctrl-C is ignored from here on (in the command, not when called as a function): the run
    is over, and a KeyboardInterrupt in the interpreter's exit (joining threads) would only
    print a traceback.
    """
    if as_command:
        import _signal  # signal's C module: `signal` adds enum classes (~0.8 ms to import)

        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))
    sys.exit(int(status))
