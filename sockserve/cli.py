"""The `sockserve` command: the one module that knows click.

`main` is the command; the `sockserve` program and `python -m sockserve` both run it. The
ParamTypes of `options` parse each value, then `config.build_config` checks them together: a
UsageError there is shown as click's usage error (exit 2). `runner.serve` runs the server; a
SockserveError from the run is printed as `sockserve: error: …` plus a hint, and the command
exits with the error's status (`--traceback` raises it instead).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from . import __version__, config, runner
from .config import ServeConfig
from .console import PlainReporter, format_user_traceback, make_reporter, open_closed_streams
from .errors import EnvironmentProblem, ExitStatus, HandlerLoadError, SockserveError, UsageError
from .helptext import SockserveCommand, completion_source
from .options import (
    ADDRESS,
    CONCURRENCY,
    ESCAPED_TEXT,
    HANDLER,
    OCTAL,
    POSITIVE_SECONDS,
    PROTO,
    SECONDS,
)

VERSION_MESSAGE = (
    f"sockserve {__version__} (Python {sys.version.split()[0]}, {sys.implementation.name})"
)


class Invocation:
    """How the command was started (its context's `obj`)."""

    def __init__(self, *, as_program: bool, closed: frozenset[str] = frozenset()) -> None:
        self.as_program = as_program  # the process's own program (sys.argv), not other code
        self.closed = closed  # the standard streams the shell left closed (now on /dev/null)


class Command(SockserveCommand):
    """The sockserve command; run without `args` (the program, reading sys.argv), it owns the
    process's exit (see `exit_command`) and its standard streams (see
    `console.open_closed_streams`)."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        if "obj" not in extra:
            as_program = args is None
            closed = open_closed_streams() if as_program else frozenset()
            extra["obj"] = Invocation(as_program=as_program, closed=closed)
        return super().main(args, *rest, **extra)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse; with --traceback (an eager flag: known before -H is loaded), a handler
        module that failed to import shows its traceback, from the user's frames on."""
        try:
            return super().parse_args(ctx, args)
        except click.BadParameter as exc:
            load_error = exc.__context__
            cause = load_error.__cause__ if isinstance(load_error, HandlerLoadError) else None
            if cause is not None and ctx.params.get("traceback"):
                click.echo(format_user_traceback(cause, keep_all=False).rstrip(), err=True)
            raise


def _print_completion(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    click.echo(completion_source(main, value), nl=False)
    ctx.exit(0)


@click.command(
    cls=Command,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=" ",
)
@click.argument("proto", type=PROTO, metavar="PROTO")
@click.argument("address", type=ADDRESS)
@click.option(
    "--family",
    type=click.Choice(["inet", "inet6", "unix"]),
    help="Address family; implied by PROTO and ADDRESS.",
)
@click.option(
    "--type",
    type=click.Choice(["stream", "dgram"]),
    help="Socket type; implied by PROTO.",
)
@click.option(
    "-H",
    "--handler",
    type=HANDLER,
    default="echo",
    show_default=True,
    help="Builtin name (echo upper discard stdout stdio chargen daytime time reply), "
    "module:Class, or file.py[:Class].",
)
@click.option(
    "--reply",
    type=ESCAPED_TEXT,
    metavar="TEXT",
    help="Bytes the reply handler answers with (implies -H reply); \\n, \\r\\n, \\xNN "
    "(a byte) and \\uNNNN (a character, as UTF-8) escapes are decoded. A stream client gets it "
    "once it has sent something (or closed its side), then the connection closes (to speak "
    "first, use --banner); each datagram gets it as its answer.",
)
@click.option(
    "--reply-file",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    help="File the reply handler answers with (implies -H reply), sent as --reply's TEXT.",
)
@click.option(
    "--banner",
    type=ESCAPED_TEXT,
    metavar="TEXT",
    help="Bytes sent to each stream client as soon as it connects, before the handler runs "
    "(an SMTP, FTP or POP3 greeting: '220 ready\\r\\n'); escapes as --reply. tcp and unix only.",
)
@click.option(
    "--banner-file",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    help="File sent to each stream client as soon as it connects, as --banner's TEXT.",
)
@click.option(
    "-c",
    "--concurrency",
    type=CONCURRENCY,
    help="How requests overlap. [default: thread for streams, sync for datagrams]",
)
@click.option(
    "--max-threads",
    type=click.IntRange(min=1),
    metavar="N",
    help="Thread mode: at most N handler threads; accept waits when all are busy.  "
    "[default: no limit]",
)
@click.option(
    "--pin/--no-pin",
    default=None,
    help="Thread mode: keep the handler threads on one CPU. Faster while they run Python "
    "(they take turns under the GIL anyway); slower for a handler that computes outside the "
    "GIL. The banner names the CPU (pinned_cpu=N).  [default: --pin for the builtins]",
)
@click.option(
    "--max-children",
    type=click.IntRange(min=1),
    metavar="N",
    help="Fork mode: at most N live children; new requests wait for one to exit.  [default: 40]",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Processes serving the same socket: bound once, inherited by each forked worker.",
)
@click.option(
    "--daemon-threads/--no-daemon-threads",
    default=False,
    show_default=True,
    help="Thread mode: on stop, do not wait for the handler threads: requests still running "
    "end with the process.",
)
@click.option(
    "--block-on-close/--no-block-on-close",
    default=True,
    show_default=True,
    help="On stop, wait (up to --grace) for in-flight requests.",
)
@click.option(
    "--backlog",
    type=click.IntRange(min=0),
    metavar="N",
    help="Streams: listen queue length (request_queue_size); the kernel caps it at "
    "net.core.somaxconn.  [default: 2048]",
)
@click.option(
    "--reuse-address/--no-reuse-address",
    default=True,
    show_default=True,
    help="TCP: set SO_REUSEADDR, so a restart does not wait for TIME_WAIT (a port another "
    "server listens on is still refused). Never on datagram sockets, where it would let a "
    "second server take the port.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    default=False,
    help="Set SO_REUSEPORT: share the port with other servers that set it too (the kernel "
    "spreads the traffic among them). Without it a port in use is an error (exit 1).",
)
@click.option(
    "--timeout",
    type=POSITIVE_SECONDS,
    metavar="SECONDS",
    help="Streams: close a connection idle for this long (2.5, 200ms, 1.5s, 2m); with "
    "--forward on datagrams, how long a client's association lasts unused.  [default: never]",
)
@click.option(
    "--mode",
    type=OCTAL,
    help="Unix socket file permissions, e.g. 600.  [default: as the umask leaves them]",
)
@click.option("--once", is_flag=True, help="Serve one connection (or datagram), then exit.")
@click.option(
    "--max-requests",
    type=click.IntRange(min=1),
    metavar="N",
    help="Serve N connections (or datagrams), then exit.  [default: no limit]",
)
@click.option(
    "--grace",
    type=SECONDS,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="On stop, how long in-flight requests may take to finish (2.5, 200ms, 1.5s, 2m).",
)
@click.option(
    "--forward",
    metavar="UPSTREAM",
    help="Relay each connection to UPSTREAM and back (implies -H forward): HOST:PORT, "
    "[V6]:PORT, :PORT, a unix path or @name, optionally tcp://, udp://, unix:// or "
    "unix-dgram:// first; the listener's socket type (a stream listener cannot forward to a "
    "datagram upstream). Half-closes pass on as half-closes, resets as resets; an upstream "
    "that cannot be reached resets the client. Streams: sync, thread, fork and event mode. "
    "Datagrams: one upstream socket per client, expiring after --timeout (default 60s); "
    "sync, thread and event mode (thread mode forwards on the loop thread), not fork.",
)
@click.option(
    "--print-address",
    is_flag=True,
    help="Print the bound address (e.g. 127.0.0.1:43125) on stdout once listening.",
)
@click.option(
    "--print-host-port",
    is_flag=True,
    help="Print the bound host and port as two words (e.g. ::1 43125: no brackets) on stdout "
    "once listening, for `read -r host port`.",
)
@click.option(
    "--json",
    is_flag=True,
    help="Log events as JSON lines on stderr (listening, connect, close, ...).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("-v", "--verbose", count=True, help="-v: byte counts; -vv: hex dump of traffic.")
@click.option("--color/--no-color", default=None, help="Force colours on or off. [default: auto]")
@click.option(
    "--traceback",
    is_flag=True,
    is_eager=True,  # known before -H loads the handler: a failed import shows its traceback
    help="Show the full traceback of a fatal error.",
)
@click.option(
    "--completion",
    type=click.Choice(["bash", "zsh", "fish"]),
    expose_value=False,
    is_eager=True,
    callback=_print_completion,
    help="Print the shell completion script.",
)
@click.version_option(__version__, "-V", "--version", message=VERSION_MESSAGE)
def main(**params: Any) -> None:
    """Serve PROTO on ADDRESS with a handler: a real socket server in one line.

    Listens on loopback unless ADDRESS names another interface. Ctrl-C or SIGTERM stops it
    gracefully and prints a summary; a second Ctrl-C forces the exit.
    """
    exit_command(_serve(build_config(params), params["quiet"]))


def build_config(params: dict[str, Any]) -> ServeConfig:
    """The ServeConfig of the command's parsed parameters (`ctx.params`), checked by
    `config.build_config`; a rule they break is click's usage error (exit 2)."""
    ctx = click.get_current_context()
    if params["quiet"] and params["verbose"]:
        raise click.UsageError(
            "-q/--quiet and -v/--verbose cannot be combined (one shows less, the other more); "
            "give only one of them",
            ctx,
        )
    options = {name: value for name, value in params.items() if name != "quiet"}
    if ctx.get_parameter_source("handler") is ParameterSource.DEFAULT:
        options["handler"] = None  # echo, or reply when --reply or --reply-file is given
    try:
        return config.build_config(**options)
    except HandlerLoadError as exc:
        handler = next(p for p in ctx.command.params if p.name == "handler")
        raise click.BadParameter(exc.one_line(), ctx, handler) from None
    except UsageError as exc:
        raise click.UsageError(exc.one_line(), ctx) from None


def _serve(config: ServeConfig, quiet: bool) -> int:
    """Run the server; return the exit status, or exit with a SockserveError's."""
    try:
        reporter = _reporter(config, quiet)
        if config.concurrency == "event":
            from .logs import setup_logging  # only the event loop logs: the rest never loads it

            setup_logging(reporter, config.verbosity)
        _check_closed_stdout(config, reporter)
        return runner.serve(config, reporter)
    except KeyboardInterrupt:
        # Ctrl-C after the run restored the default handler (while the summary is printed):
        # the user wants out, and has had the summary or is about to lose only that.
        return ExitStatus.INTERRUPTED
    except SockserveError as exc:
        if config.traceback:
            raise
        _reporter(config, quiet).fatal(exc.message, exc.hint)
        sys.exit(int(exc.exit_status))


def _check_closed_stdout(config: ServeConfig, reporter: PlainReporter) -> None:
    """A closed stdout (`>&-`): refuse the handlers that write to it; --print-address and
    --print-host-port run, with a warning (the address is in the listening line too)."""
    invocation = click.get_current_context().find_object(Invocation)
    if invocation is None or "stdout" not in invocation.closed:
        return
    if config.handler.builtin in ("stdout", "stdio"):
        raise EnvironmentProblem(
            f"-H {config.handler.builtin} writes what clients send to stdout, but stdout is closed",
            hint="redirect stdout (>/dev/null drops the data), or use -H discard",
        )
    printing = {
        "--print-address": config.print_address,
        "--print-host-port": config.print_host_port,
    }
    for option in (name for name, given in printing.items() if given):
        reporter.warning(f"stdout is closed: {option} has nowhere to print the address")


def _reporter(config: ServeConfig, quiet: bool) -> PlainReporter:
    return make_reporter(config.output, config.verbosity, quiet, config.color)


def exit_command(status: int) -> NoReturn:
    """Exit with `status`.

    As the program (see `Command`), the command owns the process: Ctrl-C is ignored from
    here on (the run is over, and a KeyboardInterrupt in the interpreter's exit, joining
    threads, would only print a traceback), and if a hung non-daemon handler thread would
    hold the process, it leaves at once. Called from other code, it raises SystemExit only.
    """
    invocation = click.get_current_context().find_object(Invocation)
    if invocation is None or not invocation.as_program:
        sys.exit(int(status))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))
    sys.exit(int(status))
