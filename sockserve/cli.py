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
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from . import __version__, config, runner
from .config import ServeConfig
from .console import (
    PlainReporter,
    format_user_traceback,
    make_reporter,
    open_closed_streams,
    silence,
)
from .errors import EnvironmentProblem, ExitStatus, HandlerLoadError, SockserveError, UsageError
from .helptext import SockserveCommand
from .options import (
    ADDRESS,
    CHUNK,
    CONCURRENCY,
    DELAY,
    ESCAPED_TEXT,
    FILE_PATH,
    HANDLER,
    NETWORK,
    OCTAL,
    PCT,
    POSITIVE_SECONDS,
    PROTO,
    RATE,
    READABLE_FILE,
    SECONDS,
    SIZE,
)

if TYPE_CHECKING:  # completion only: loaded when the shell asks (see `Command`)
    from click.shell_completion import CompletionItem

VERSION_MESSAGE = (
    f"sockserve {__version__} (Python {sys.version.split()[0]}, {sys.implementation.name})"
)


class ScriptFileType(click.ParamType):
    """A script FILE → Script, checked whole (`script_file.read_script`, loaded when
    --script is given); completes file names."""

    name = "FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .script_file import read_script

        try:
            return read_script(value)
        except UsageError as exc:
            self.fail(exc.one_line(), param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="file")]


SCRIPT_FILE = ScriptFileType()


class Invocation:
    """How the command was started (its context's `obj`)."""

    def __init__(self, *, as_program: bool, closed: frozenset[str] = frozenset()) -> None:
        self.as_program = as_program  # the process's own program (sys.argv), not other code
        self.closed = closed  # the standard streams the shell left closed (now on /dev/null)


class Command(SockserveCommand):
    """The sockserve command; run without `args` (the program, reading sys.argv), it owns the
    process's exit (see `exit_command`) and its standard streams (see
    `console.open_closed_streams`). Our completion classes (`completion`) are loaded only when
    the shell asks for completions."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        if "obj" not in extra:
            as_program = args is None
            closed = open_closed_streams() if as_program else frozenset()
            extra["obj"] = Invocation(as_program=as_program, closed=closed)
        if any(name.startswith("_") and name.endswith("_COMPLETE") for name in os.environ):
            # A shell asks for completions (click's `_<PROG>_COMPLETE` variable, whatever the
            # program's name): our shells' classes are registered with click first.
            from . import completion  # noqa: F401
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
    from .completion import completion_source

    click.echo(completion_source(main, value), nl=False)
    ctx.exit(0)


@click.command(
    cls=Command,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=" ",
)
@click.argument("proto", type=PROTO, metavar="PROTO")
@click.argument("address", type=ADDRESS, required=False, metavar="ADDRESS")
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
    help="Builtin name (echo upper discard stdout stdio chargen daytime time reply broadcast "
    "chat; forward, script and replay with their option), "
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
    type=READABLE_FILE,
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
    type=READABLE_FILE,
    help="File sent to each stream client as soon as it connects, as --banner's TEXT.",
)
@click.option(
    "--to-all",
    is_flag=True,
    help="-H broadcast: send what a client sends back to it too, not only to the others.",
)
@click.option(
    "--slow-client",
    type=click.Choice(["disconnect", "drop", "block"]),
    default="disconnect",
    show_default=True,
    help="-H broadcast and chat: a client more than 256 KiB behind is disconnected, misses "
    "what does not fit (drop), or makes every sender wait for it (block).",
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
    help="Processes serving the same socket: bound once, inherited by each forked worker; "
    "one that dies while serving is started again (5 deaths in 10s stop the server).",
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
    "--allow",
    type=NETWORK,
    multiple=True,
    metavar="CIDR|HOST",
    help="Serve peers in this network (127.0.0.0/8, ::1, a host name); repeatable. Once any "
    "--allow is given, peers that match no rule are refused. The most specific rule wins; "
    "--deny wins a tie.",
)
@click.option(
    "--deny",
    type=NETWORK,
    multiple=True,
    metavar="CIDR|HOST",
    help="Refuse peers in this network; repeatable. A refused connection is closed at once, a "
    "refused datagram dropped; each is counted, and shown at most once a second per peer.",
)
@click.option(
    "--allow-file",
    type=READABLE_FILE,
    help="Read --allow rules from a file: one per line, # comments.",
)
@click.option(
    "--deny-file",
    type=READABLE_FILE,
    help="Read --deny rules from a file: one per line, # comments.",
)
@click.option(
    "--allow-uid",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="UID",
    help="unix: serve only peers running as this user (or a --allow-gid group); repeatable.",
)
@click.option(
    "--allow-gid",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="GID",
    help="unix: serve only peers running in this group (or as a --allow-uid user); repeatable.",
)
@click.option(
    "--record",
    type=click.Path(file_okay=True, dir_okay=True),
    metavar="DIR",
    help="Write a transcript of every connection (every datagram peer) to a file of its own "
    "in DIR (made if missing): each chunk with its time and direction, as JSON lines; any "
    "handler, any mode (not fork on datagrams). Files are mode 600.  [default: no transcripts]",
)
@click.option(
    "--transcript",
    type=READABLE_FILE,
    metavar="FILE",
    help="Replay a transcript --record wrote (implies -H replay): each client gets the "
    "server's side of it, each chunk once the client has sent what the recording had before "
    "it; then the connection closes. Datagrams: a peer's n-th datagram gets the replies "
    "recorded to the n-th.  [default: none]",
)
@click.option(
    "--timing",
    type=click.Choice(["recorded", "asap"]),
    help="-H replay on streams: keep the recorded delay before each chunk, or send at once.  "
    "[default: recorded]",
)
@click.option(
    "--match",
    type=click.Choice(["length", "content"]),
    help="-H replay on streams: wait for as many bytes as recorded, or (content) for the "
    "recorded text itself, for at most 2s, then by length.  [default: length]",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve TLS (tcp, unix): a throwaway CA signs a server certificate for the bound host, "
    "localhost, 127.0.0.1, ::1 and each --tls-name, in memory; the CA certificate goes to the "
    "file the banner names (tls_ca=PATH), for clients to trust.",
)
@click.option(
    "--cert",
    type=FILE_PATH,
    metavar="FILE",
    help="Serve TLS with this PEM certificate (chain) instead of a throwaway one; implies --tls.  "
    "[default: a throwaway certificate]",
)
@click.option(
    "--key",
    type=FILE_PATH,
    metavar="FILE",
    help="The PEM private key of --cert.  [default: in the --cert file]",
)
@click.option(
    "--tls-name",
    multiple=True,
    metavar="NAME",
    help="Another name (DNS or IP) for the throwaway server certificate; repeatable.  "
    "[default: none]",
)
@click.option(
    "--tls-ca-out",
    type=FILE_PATH,
    metavar="PATH",
    help="Write the throwaway CA certificate here (mode 600; kept).  "
    "[default: a temporary file, removed at exit]",
)
@click.option(
    "--client-ca",
    type=FILE_PATH,
    metavar="FILE",
    help="Require client certificates (mTLS) signed by a CA of this PEM file.  "
    "[default: none asked]",
)
@click.option(
    "--tls-client-cert-out",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Write client.pem and client.key (mode 600), signed by a throwaway CA, into DIR, and "
    "require client certificates (mTLS): that one or, with --client-ca, one of those CAs'.  "
    "[default: none]",
)
@click.option(
    "--alpn",
    metavar="LIST",
    help="ALPN protocols offered, by preference, comma-separated (e.g. h2,http/1.1).  "
    "[default: none]",
)
@click.option(
    "--tls-min",
    type=click.Choice(["1.2", "1.3"]),
    help="Lowest TLS version accepted.  [default: 1.2]",
)
@click.option(
    "--tls-handshake-timeout",
    type=POSITIVE_SECONDS,
    metavar="SECONDS",
    help="Close a connection whose TLS handshake takes longer (2.5, 200ms, 1.5s, 2m).  "
    "[default: 10s]",
)
@click.option(
    "--delay",
    type=DELAY,
    help="Send each chunk (each datagram's reply) this much later, in order; JITTER "
    "adds up to ± that much at random (50ms, 50ms:10ms).  [default: none]",
)
@click.option(
    "--delay-accept",
    type=SECONDS,
    metavar="DURATION",
    help="Streams: wait this long before serving each new connection.  [default: none]",
)
@click.option(
    "--throttle",
    type=RATE,
    help="Streams: at most RATE bytes per second each way, per connection (100K, "
    "1Mi).  [default: none]",
)
@click.option(
    "--chunk",
    type=CHUNK,
    help="Streams: send in writes of at most N bytes, DURATION apart (3, 512:5ms).  "
    "[default: none]",
)
@click.option(
    "--close-after",
    type=SIZE,
    help="Streams: close the connection (FIN) once SIZE bytes passed, both ways "
    "together (1500, 64K, 1Mi).  [default: never]",
)
@click.option(
    "--reset-after",
    type=SIZE,
    help="TCP: reset the connection (RST, SO_LINGER 0) once SIZE bytes passed, both "
    "ways together.  [default: never]",
)
@click.option(
    "--stall",
    is_flag=True,
    help="Streams: accept and read, never answer (what is sent is swallowed).",
)
@click.option(
    "--stall-after",
    type=SIZE,
    help="Streams: answer SIZE bytes, then stall as --stall.  [default: never]",
)
@click.option(
    "--fail-first",
    type=click.IntRange(min=1),
    metavar="N",
    help="Streams: reset (or close: --fail-mode) the first N connections right after "
    "accepting them, then serve normally: a client's retry test.  [default: none]",
)
@click.option(
    "--fail-mode",
    type=click.Choice(["reset", "close"]),
    help="How --fail-first ends a connection: reset (RST) or close (FIN).  [default: reset]",
)
@click.option(
    "--drop",
    type=PCT,
    help="Datagrams: lose PCT % of the datagrams, each way (received ones are never "
    "served).  [default: 0]",
)
@click.option(
    "--duplicate",
    type=PCT,
    help="Datagrams: send PCT % of replies twice.  [default: 0]",
)
@click.option(
    "--reorder",
    type=PCT,
    help="Datagrams: hold PCT % of replies back until the next reply has left (not "
    "with -c fork).  [default: 0]",
)
@click.option(
    "--fault-rate",
    type=PCT,
    help="Apply the faults to PCT % of connections (or datagrams), chosen at random; 0: "
    "none fires.  [default: 100]",
)
@click.option(
    "--seed",
    type=int,
    metavar="N",
    help="Seed every random choice (jitter, which connections and datagrams), so a run "
    "repeats; per process: each --workers worker draws the same sequence.  [default: random]",
)
@click.option(
    "--faults-to",
    type=click.Choice(["client", "upstream", "both"]),
    help="-H forward: the side the faults break. client: what the proxy sends the client is "
    "delayed, throttled, chunked, dropped..., and close, reset and stall act on the client's "
    "connection; upstream: the same toward the upstream; both: each side. A cut passes on as "
    "that side's own (a close as an orderly end, a reset as a reset). --fail-first and "
    "--delay-accept act on the client's connection as it is accepted (not with upstream "
    "alone).  [default: both]",
)
@click.option(
    "--raw",
    is_flag=True,
    help="-H stdout and -H stdio: write the bytes as they come, with no framing.  [default: "
    "whole lines per client (a partial line waits for its end), one line per datagram (a "
    "newline added where it lacks one)]",
)
@click.option(
    "--exec",
    "exec",
    metavar="'PROG ARGS'",
    help="Run PROG for each connection, the connection as its stdin and stdout (implies "
    "-H exec); split like argv, no shell. A datagram: one run, the datagram on stdin, its "
    "stdout the reply. The environment names the client (TCPREMOTEIP, TCPREMOTEPORT, ...).",
)
@click.option(
    "--sh-exec",
    metavar="LINE",
    help="As --exec, but run the shell line LINE with /bin/sh -c.",
)
@click.option(
    "--exec-stderr",
    type=click.Choice(["pass", "client", "discard"]),
    help="Where the program's stderr goes: sockserve's stderr, a line at a time, prefixed "
    "by the client (pass); the client, with its stdout (client); nowhere (discard).  "
    "[default: pass]",
)
@click.option(
    "--fd",
    type=click.IntRange(min=0),
    metavar="N",
    help="Serve the listening socket inherited on descriptor N (ADDRESS omitted); its family "
    "and type must fit PROTO. sockserve never unlinks its file.",
)
@click.option(
    "--activated",
    is_flag=True,
    help="Serve the socket systemd passed (socket activation: LISTEN_FDS, LISTEN_PID; ADDRESS "
    "omitted); the LISTEN_* variables are unset once read.",
)
@click.option(
    "--inetd",
    is_flag=True,
    help="Serve the one connection on stdin and stdout, then exit (inetd's nowait, systemd's "
    "Accept=yes; ADDRESS omitted; sync mode). When stderr is that connection too, nothing is "
    "logged.",
)
@click.option(
    "--fd-name",
    metavar="NAME",
    help="With --activated and several sockets: the one named NAME (LISTEN_FDNAMES, the "
    "unit's FileDescriptorName=).",
)
@click.option(
    "--script",
    type=SCRIPT_FILE,
    help="Hold the conversation that FILE describes (implies -H script): a banner, "
    "expect/send steps, and rules where the first match answers each line (the format: README, "
    "man page). Checked whole at start-up; tcp and unix only.",
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
    "--forward-tls",
    is_flag=True,
    help="Speak TLS to the --forward upstream (streams), verifying its certificate against the "
    "system's CAs (or --forward-ca) for its host name (or --forward-sni), which is also sent "
    "as SNI. A handshake that fails resets the client, as an unreachable upstream does.",
)
@click.option(
    "--forward-ca",
    type=FILE_PATH,
    metavar="FILE",
    help="Trust only the CAs of this PEM file for the upstream's certificate (e.g. the tls_ca "
    "file another sockserve --tls names).  [default: the system's CAs]",
)
@click.option(
    "--forward-sni",
    metavar="NAME",
    help="The name the upstream's certificate must carry, also sent as SNI; needed for a unix "
    "upstream.  [default: the upstream's host]",
)
@click.option(
    "--forward-cert",
    type=FILE_PATH,
    metavar="FILE",
    help="Present this PEM client certificate to the upstream (mTLS).  [default: none]",
)
@click.option(
    "--forward-key",
    type=FILE_PATH,
    metavar="FILE",
    help="The PEM private key of --forward-cert.  [default: in the --forward-cert file]",
)
@click.option(
    "--forward-no-verify",
    is_flag=True,
    help="Do not verify the upstream's certificate (as curl -k): anyone in between can read "
    "the traffic.",
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
        options["handler"] = None  # echo, or reply/script when --reply/--script is given
    try:
        return config.build_config(**options)
    except HandlerLoadError as exc:
        handler = next(p for p in ctx.command.params if p.name == "handler")
        raise click.BadParameter(exc.one_line(), ctx, handler) from None
    except UsageError as exc:
        raise click.UsageError(exc.one_line(), ctx) from None


def _serve(config: ServeConfig, quiet: bool) -> int:
    """Run the server; return the exit status, or exit with a SockserveError's."""
    if config.inetd:
        from .inherited import stderr_is_stdin

        if stderr_is_stdin():  # stderr is the connection: log nothing into it
            silence(sys.stderr)
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
