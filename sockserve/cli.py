"""The `sockserve` command: click options → ServeConfig → runner.serve.

Parsing errors go through click (usage, one "Invalid value" line, exit 2); a SockserveError
from deeper down is printed as `sockserve: error: …` plus a hint, with its own exit status.
The executable starts in `entry`, which reads the usual command lines without click and
hands the others to `command` here.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from . import __version__, config as _config, entry
from .errors import OptionError
from .helptext import SockserveCommand

PROTOCOLS = {
    "tcp": "TCP stream server (IPv4 or IPv6)",
    "udp": "UDP datagram server (IPv4 or IPv6)",
    "unix": "unix domain stream socket (a path, or @name)",
    "unix-dgram": "unix domain datagram socket (a path, or @name)",
}


CONCURRENCIES = {
    "sync": "one request at a time",
    "thread": "a thread per request (default for streams)",
    "fork": "a child process per request",
    "event": "one event loop, asyncio protocol handlers",
}


class DescribedChoice(click.Choice):
    """A click.Choice whose completions carry a description (zsh and fish show it)."""

    def __init__(self, choices: dict[str, str]) -> None:
        super().__init__(list(choices))
        self.descriptions = choices

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [
            CompletionItem(name, help=text)
            for name, text in self.descriptions.items()
            if name.startswith(incomplete)
        ]


class HandlerSpecType(click.ParamType):
    """A builtin name, `module:Class`, `file.py:Class` or `file.py`; completes names and files.

    Completion offers the builtins (with their descriptions) and, through the shell, `*.py`
    files and directories: all of them for an empty word, files only when no builtin matches
    or the word looks like a path (so `-H e<TAB>` is `echo` even beside `examples/`), and
    nothing once a `:Class` part is being typed.
    """

    name = "HANDLER"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        if ":" in incomplete:
            return []
        from .builtins import BUILTINS

        items = [
            CompletionItem(name, help=BUILTINS.get(name))
            for name in _config.BUILTIN_NAMES
            if name.startswith(incomplete)
        ]
        if not incomplete or not items or "/" in incomplete or incomplete.startswith((".", "~")):
            items.append(CompletionItem(incomplete, type="pyfile"))
        return items


class AddressType(click.ParamType):
    """The address argument; completes paths for unix sockets, a few forms for inet."""

    name = "ADDRESS"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        proto = ctx.params.get("proto")
        if proto in ("unix", "unix-dgram"):
            return [CompletionItem(incomplete, type="file")]
        if not incomplete:
            return [
                CompletionItem(":0", help="127.0.0.1, a port the OS picks"),
                CompletionItem(":9999", help="127.0.0.1 port 9999"),
                CompletionItem("[::1]:0", help="IPv6 loopback, a port the OS picks"),
            ]
        return []


class ModeType(click.ParamType):
    """Octal permission bits such as 600 or 0o660."""

    name = "OCTAL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return _config.parse_mode(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _print_completion(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from .helptext import completion_source

    click.echo(completion_source(main, value), nl=False)
    ctx.exit(0)


@click.command(
    cls=SockserveCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=" ",
)
@click.argument("proto", type=DescribedChoice(PROTOCOLS), metavar="PROTO")
@click.argument("address", type=AddressType())
@click.option(
    "--family",
    type=click.Choice(["inet", "inet6", "unix"]),
    help="Address family; implied by PROTO and ADDRESS.",
)
@click.option(
    "--type",
    "socktype",
    type=click.Choice(["stream", "dgram"]),
    help="Socket type; implied by PROTO.",
)
@click.option(
    "-H",
    "--handler",
    type=HandlerSpecType(),
    default="echo",
    show_default=True,
    help="Builtin name (echo upper discard stdout stdio chargen daytime time reply), "
    "module:Class, or file.py[:Class].",
)
@click.option(
    "--reply",
    metavar="TEXT",
    help="Bytes the reply handler answers with (implies -H reply); \\n, \\r\\n, \\xNN "
    "escapes are decoded.",
)
@click.option(
    "--reply-file",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    help="File the reply handler answers with (implies -H reply).",
)
@click.option(
    "-c",
    "--concurrency",
    type=DescribedChoice(CONCURRENCIES),
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
    help="Processes serving the same socket (SO_REUSEPORT / shared listener).",
)
@click.option(
    "--daemon-threads/--no-daemon-threads",
    default=False,
    show_default=True,
    help="Thread mode: handler threads do not hold up the exit.",
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
    default=128,
    show_default=True,
    metavar="N",
    help="Listen queue length (request_queue_size).",
)
@click.option(
    "--reuse-address/--no-reuse-address",
    default=True,
    show_default=True,
    help="Set SO_REUSEADDR, so a restart does not wait for TIME_WAIT.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    default=False,
    help="Set SO_REUSEPORT, so several servers can share the port.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Close a connection idle for this long.  [default: never]",
)
@click.option(
    "--mode",
    type=ModeType(),
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
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="On stop, how long in-flight requests may take to finish.",
)
@click.option(
    "--print-address",
    is_flag=True,
    help="Print the bound address (e.g. 127.0.0.1:43125) on stdout once listening.",
)
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Log events as JSON lines on stderr (listening, connect, close, ...).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("-v", "--verbose", count=True, help="-v: byte counts; -vv: hex dump of traffic.")
@click.option("--color/--no-color", default=None, help="Force colours on or off. [default: auto]")
@click.option("--traceback", is_flag=True, help="Show the full traceback of a fatal error.")
@click.option(
    "--completion",
    type=click.Choice(["bash", "zsh", "fish"]),
    expose_value=False,
    is_eager=True,
    callback=_print_completion,
    help="Print the shell completion script.",
)
@click.version_option(__version__, "-V", "--version", message=entry.version_message())
def main(**params: Any) -> None:
    """Serve PROTO on ADDRESS with a handler: a real socket server in one line.

    Listens on loopback unless ADDRESS names another interface. Ctrl-C or SIGTERM stops it
    gracefully and prints a summary; a second Ctrl-C forces the exit.
    """
    entry.serve_command(params, lambda: build_config(params), _exit)


_as_command = False


def command(loads: Any = None) -> None:
    """`main` as a whole process (the executable, when `entry` hands a command line over).

    `loads`, from `entry`, replays handler loads that already failed (see build_config).
    """
    global _as_command
    _as_command = True
    main(obj=loads)


def _exit(status: Any) -> None:
    """Exit as the command does (see entry.exit_command)."""
    entry.exit_command(status, as_command=_as_command)


def build_config(params: dict[str, Any]) -> Any:
    """Validate the parsed options into a ServeConfig; raises click.BadParameter/UsageError.

    The rules are `config.config_from_options`'s, shared with `entry`'s quick parser.
    """
    ctx = click.get_current_context()
    handler_given = ctx.get_parameter_source("handler") != click.core.ParameterSource.DEFAULT
    try:
        return _config.config_from_options(
            params,
            handler_given=handler_given,
            load=getattr(ctx.obj, "load_handler", None),
        )
    except OptionError as exc:
        if exc.param is None:
            raise click.UsageError(exc.message) from None
        raise click.BadParameter(exc.message, param_hint=exc.param) from None
