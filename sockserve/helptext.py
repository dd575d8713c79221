"""What the command says about itself: `--help` (plain or rich), and the data the man page uses.

One description of the interface feeds every output. SECTIONS groups click's options, EXAMPLES
and EXIT_CODES close the help; `man/generate.py` builds the man page's OPTIONS from the same
data. The shell completion scripts are `completion`'s (loaded only to complete or to print
them).

`--help` is drawn by rich only when stdout is a terminal. Piped or redirected it is click's plain
layout and rich is never imported, so `sockserve --help | grep` stays fast.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click

# Which help section each option belongs to, in order. "help" is click's help option.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Address": (
        "family",
        "type",
        "reuse_address",
        "reuse_port",
        "backlog",
        "mode",
        "fd",
        "activated",
        "fd_name",
        "inetd",
    ),
    "Handler": (
        "handler",
        "reply",
        "reply_file",
        "banner",
        "banner_file",
        "timeout",
        "to_all",
        "slow_client",
        "script",
    ),
    "Framing": ("raw",),
    "Concurrency": (
        "concurrency",
        "max_threads",
        "pin",
        "max_children",
        "workers",
        "daemon_threads",
        "block_on_close",
    ),
    "Forward": (
        "forward",
        "forward_tls",
        "forward_ca",
        "forward_sni",
        "forward_cert",
        "forward_key",
        "forward_no_verify",
    ),
    "Lifecycle": ("once", "max_requests", "grace"),
    "Access": ("allow", "deny", "allow_file", "deny_file", "allow_uid", "allow_gid"),
    "Recording and replay": ("record", "transcript", "timing", "match"),
    "TLS": (
        "tls",
        "cert",
        "key",
        "tls_name",
        "tls_ca_out",
        "client_ca",
        "tls_client_cert_out",
        "alpn",
        "tls_min",
        "tls_handshake_timeout",
    ),
    "Faults": (
        "delay",
        "delay_accept",
        "throttle",
        "chunk",
        "close_after",
        "reset_after",
        "stall",
        "stall_after",
        "fail_first",
        "fail_mode",
        "drop",
        "duplicate",
        "reorder",
        "fault_rate",
        "seed",
        "faults_to",
    ),
    "A program per connection": ("exec", "sh_exec", "exec_stderr"),
    "Output": (
        "print_address",
        "print_host_port",
        "json",
        "quiet",
        "verbose",
        "color",
        "traceback",
    ),
    "Other": ("completion", "version", "help"),
}

PROTO_HELP = "tcp, udp, unix or unix-dgram: the transport (family + socket type)."
ADDRESS_HELP = (
    ":PORT (127.0.0.1), HOST:PORT, [V6]:PORT, *:PORT or 0.0.0.0:PORT (all interfaces), "
    "port 0 to let the OS pick; for unix: a path, or @name (Linux abstract namespace). "
    "Omitted with --fd or --activated."
)

#: (command line, what it does); shown at the end of --help and in the man page.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("sockserve tcp :9999", "echo on 127.0.0.1:9999"),
    ("sockserve tcp :9999 -H upper", "upper-case what clients send"),
    ("sockserve udp :5140 -H stdout | grep ERR", "each datagram received as a line on stdout"),
    ("sockserve tcp :0 --print-address --once", "let the OS pick a port, print it, serve one"),
    ("sockserve tcp '[::1]:8080' -H reply --reply-file response.http", "a canned HTTP reply"),
    ("sockserve unix /tmp/app.sock -c fork --max-children 8 -H app.py", "a handler file, forked"),
    ("sockserve tcp :7000 -H mypkg.proto:Lines --json 2>events.jsonl", "JSON event log"),
)

#: (exit status, meaning); the values are errors.ExitStatus.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "stopped cleanly (Ctrl-C, SIGTERM, SIGHUP, --once, --max-requests, stdout closed)"),
    (1, "runtime failure (address in use, permission denied, ...)"),
    (2, "usage error (bad option, address or handler)"),
    (130, "forced stop by a second Ctrl-C/SIGTERM/SIGHUP"),
)

_EXAMPLE_COLUMN = 43  # where the plain layout starts an example's description


def section_params(command: click.Command, ctx: click.Context) -> list[tuple[str, click.Parameter]]:
    """Every option of `command` with the title of its help section, in help order.

    Options missing from SECTIONS land in "Other", so a new option is never hidden.
    """
    params = {p.name: p for p in command.get_params(ctx) if isinstance(p, click.Option)}
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        params.pop(help_option.name, None)
        params["help"] = help_option
    placed: list[tuple[str, click.Parameter]] = []
    for title, names in SECTIONS.items():
        placed.extend((title, params.pop(name)) for name in names if name in params)
    placed.extend(("Other", p) for p in params.values())
    order = list(SECTIONS)
    placed.sort(key=lambda item: order.index(item[0]))
    return placed


def argument_rows(command: click.Command) -> list[tuple[str, str]]:
    """(name, help) of the positional arguments."""
    helps = {"proto": PROTO_HELP, "address": ADDRESS_HELP}
    return [
        (p.human_readable_name, helps.get(p.name or "", ""))
        for p in command.params
        if isinstance(p, click.Argument)
    ]


def plain_examples() -> str:
    lines = []
    for command, what in EXAMPLES:
        if len(command) < _EXAMPLE_COLUMN - 3:
            lines.append(f"  {command:<{_EXAMPLE_COLUMN - 2}}{what}")
        else:
            lines.append(f"  {command}")
            lines.append(" " * _EXAMPLE_COLUMN + what)
    return "\n".join(lines)


def plain_exit_codes() -> str:
    return "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)


def _rich_wanted() -> bool:
    """Rich help on a terminal only; never for a pipe, a file or TERM=dumb."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


class SockserveCommand(click.Command):
    """A click command whose help groups options by section and ends with examples."""

    def get_help(self, ctx: click.Context) -> str:
        if _rich_wanted():
            return render_rich_help(self, ctx)
        return super().get_help(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Arguments"):
            formatter.write_dl(argument_rows(self))
        rows: dict[str, list[tuple[str, str]]] = {}
        for title, param in section_params(self, ctx):
            record = param.get_help_record(ctx)
            if record:
                rows.setdefault(title, []).append(record)
        for title, records in rows.items():
            with formatter.section(title):
                formatter.write_dl(records)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text("Examples:")
        formatter.write(plain_examples() + "\n")
        formatter.write_paragraph()
        formatter.write_text("Exit status:")
        formatter.write(plain_exit_codes() + "\n")


def option_metavar(param: click.Parameter, ctx: click.Context) -> str:
    """The value placeholder click shows after an option's names ("" for flags)."""
    if not isinstance(param, click.Option) or param.is_flag or param.count:
        return ""
    try:
        return param.make_metavar(ctx)
    except TypeError:  # click < 8.2: make_metavar() takes no context
        return param.make_metavar()  # type: ignore[call-arg]  # click < 8.2 takes no ctx


_RICH_NAME_WIDTH = 28


def render_rich_help(command: click.Command, ctx: click.Context, width: int | None = None) -> str:
    """The help as rich draws it for this terminal (ANSI styles included), as a string."""
    from rich import box
    from rich.console import Console, Group
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, emoji=False, markup=False)
    console.width = min(width or console.width, ctx.max_content_width or 100)

    def panel(title: str, body: Any) -> Panel:
        return Panel(
            body,
            title=title,
            title_align="left",
            box=box.ROUNDED,
            border_style="dim",
            padding=(0, 1),
        )

    def option_cell(param: click.Parameter) -> Text:
        text = Text(", ".join(param.opts), style="bold cyan")
        if param.secondary_opts:
            text.append("\n" + ", ".join(param.secondary_opts), style="bold cyan")
        metavar = option_metavar(param, ctx)
        if metavar:
            wrap = len(text.plain) + 1 + len(metavar) > _RICH_NAME_WIDTH
            text.append(("\n" if wrap else " ") + metavar, style="yellow")
        return text

    def styled_help(help_text: str) -> Text:
        text = Text()
        for part in re.split(r"(\s*\[[^\]]*\])", help_text):
            text.append(part, style="dim" if part.strip().startswith("[") else "")
        return text

    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    pad = (1, 1, 0, 1)
    parts: list[Any] = [Padding(Text.assemble(("Usage: ", "bold"), usage), pad, expand=False)]
    if command.help:
        for paragraph in click.unstyle(command.help).strip().split("\n\n"):
            parts.append(Padding(Text(" ".join(paragraph.split())), pad, expand=False))
    parts.append(Text(""))

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold yellow", no_wrap=True)
    table.add_column()
    for name, help_text in argument_rows(command):
        table.add_row(name, help_text)
    parts.append(panel("Arguments", table))

    grids: dict[str, Table] = {}
    for title, param in section_params(command, ctx):
        record = param.get_help_record(ctx)
        if not record:
            continue
        if title not in grids:
            grids[title] = Table.grid(padding=(0, 2))
            grids[title].add_column(no_wrap=True)
            grids[title].add_column()
        grids[title].add_row(option_cell(param), styled_help(record[1]))
    parts.extend(panel(title, grid) for title, grid in grids.items())

    examples = Table.grid(padding=(0, 0))
    examples.add_column()
    for i, (line, what) in enumerate(EXAMPLES):
        examples.add_row(Text(f"# {what}", style="dim"))
        examples.add_row(Text(line, style="green"))
        if i < len(EXAMPLES) - 1:
            examples.add_row("")
    parts.append(panel("Examples", examples))

    codes = Table.grid(padding=(0, 2))
    codes.add_column(style="bold", justify="right")
    codes.add_column()
    for code, meaning in EXIT_CODES:
        codes.add_row(str(code), meaning)
    parts.append(panel("Exit status", codes))

    with console.capture() as capture:
        console.print(Group(*parts))
    return "\n".join(line.rstrip() for line in capture.get().rstrip("\n").split("\n"))
