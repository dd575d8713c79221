"""The layout of `sockserve --help`: option sections, examples and exit codes."""

from __future__ import annotations

import click

# Which help section each option belongs to, in order.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Address": ("family", "socktype", "reuse_address", "reuse_port", "backlog", "mode"),
    "Handler": ("handler", "reply", "reply_file", "timeout"),
    "Concurrency": (
        "concurrency",
        "max_threads",
        "max_children",
        "workers",
        "daemon_threads",
        "block_on_close",
    ),
    "Lifecycle": ("once", "max_requests", "grace"),
    "Output": ("print_address", "json_output", "quiet", "verbose", "color", "traceback"),
    "Other": ("completion", "version", "help"),
}

EXAMPLES = """\
  sockserve tcp :9999                        echo on 127.0.0.1:9999
  sockserve tcp :9999 -H upper               upper-case what clients send
  sockserve udp :5140 -H stdout | grep ERR   print received datagrams on stdout
  sockserve tcp :0 --print-address --once    let the OS pick a port, print it, serve one client
  sockserve tcp '[::]:8080' -H reply --reply-file response.http
                                             a canned HTTP reply on all interfaces (v4 and v6)
  sockserve unix /tmp/app.sock -c fork --max-children 8 -H mypkg.proto:Handler
  sockserve tcp :7000 -H ./handler.py:Lines --json 2>events.jsonl"""

EXIT_CODES = """\
  0    stopped cleanly (Ctrl-C, SIGTERM, --once, --max-requests, stdout closed)
  1    runtime failure (address in use, permission denied, ...)
  2    usage error (bad option, address or handler)
  130  forced stop by a second Ctrl-C/SIGTERM"""


class SockserveCommand(click.Command):
    """A click command whose help groups options by section and ends with examples."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        by_name = {p.name: p for p in self.get_params(ctx)}
        args = [
            (p.human_readable_name, PROTO_HELP if p.name == "proto" else ADDRESS_HELP)
            for p in self.params
            if isinstance(p, click.Argument)
        ]
        with formatter.section("Arguments"):
            formatter.write_dl(args)
        for title, names in SECTIONS.items():
            rows = []
            for name in names:
                param = by_name.get(name)
                if param is None:
                    continue
                record = param.get_help_record(ctx)
                if record:
                    rows.append(record)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text("Examples:")
        formatter.write(EXAMPLES + "\n")
        formatter.write_paragraph()
        formatter.write_text("Exit status:")
        formatter.write(EXIT_CODES + "\n")


PROTO_HELP = "tcp, udp, unix or unix-dgram: the transport (family + socket type)."
ADDRESS_HELP = (
    ":PORT (127.0.0.1), HOST:PORT, [V6]:PORT, *:PORT or 0.0.0.0:PORT (all interfaces), "
    "port 0 to let the OS pick; for unix: a path, or @name (Linux abstract namespace)."
)
