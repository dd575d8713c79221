"""Start-up: the quick command-line path (entry) and what a server loads before it listens.

- The quick parser gives the same ServeConfig as the click command, or leaves the command
  line to click.
- The real command (`python -m sockserve`, the console script) serves without loading click,
  rich, logging, dataclasses, typing or inspect, nor what only other modes or builtins need.
- Errors are still click's: message, usage and exit status.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from sockserve import addresses, cli, config, entry
from sockserve.config import config_from_options
from sockserve.errors import OptionError

#: Modules the quick path must not load, up to the first echoed byte.
HEAVY = ("click", "rich", "logging", "dataclasses", "typing", "inspect", "json", "ipaddress")
#: Modules only other modes, other builtins or failures need. `signal` wraps `_signal` in enum
#: classes (~0.8 ms to import); `_queue` serves only threads that wait for a handed-over request;
#: `loading` resolves only a handler of the user's.
NOT_ON_THE_QUICK_PATH = (
    "sockserve.builtin_protocols",
    "sockserve.builtin_stdin",
    "sockserve.loading",
    "sockserve.workers",
    "asyncio",
    "signal",
    "_queue",
    "re",
)
#: What `python -m` (runpy) loads anyway, and the console script does not.
NOT_IN_THE_CONSOLE_SCRIPT = ("contextlib", "importlib")

#: Command lines the quick parser reads itself.
QUICK = [
    ["tcp", "127.0.0.1:0"],
    ["tcp", ":0", "-H", "echo", "-c", "thread", "-q"],
    ["tcp", "127.0.0.1:9999", "--print-address", "-q"],
    ["udp", ":0", "-H", "upper"],
    ["udp", "0.0.0.0:7", "-c", "thread", "--max-threads", "4"],
    ["tcp", ":0", "--pin", "--max-threads", "8"],
    ["tcp", ":0", "-c", "fork", "--no-pin"],
    ["tcp", "[::1]:0", "--json"],
    ["tcp", "*:0", "--family", "inet6"],
    ["tcp", "localhost:8080", "--type", "stream"],
    ["tcp", "9999", "-v"],
    ["tcp", ":0", "-vv", "--no-color"],
    ["tcp", ":0", "-qv", "--color"],
    ["tcp", ":0", "-v", "--verbose", "-v"],
    ["tcp", ":0", "--once", "-H", "discard"],
    ["tcp", ":0", "--max-requests", "3", "--grace", "0"],
    ["tcp", ":0", "--timeout", "1.5", "--grace", "2."],
    ["tcp", ":0", "--timeout", ".25", "--backlog", "0"],
    ["tcp", ":0", "-c", "fork", "--max-children", "8"],
    ["tcp", ":0", "-c", "sync", "--workers", "2", "--reuse-port"],
    ["tcp", ":0", "--daemon-threads", "--no-block-on-close", "--no-reuse-address"],
    ["tcp", ":0", "--no-daemon-threads", "--block-on-close", "--reuse-address", "--traceback"],
    ["tcp", ":0", "--reply", "HTTP/1.0 200 OK\\r\\n\\r\\nhi\\n"],
    ["tcp", ":0", "-H", "reply", "--reply=ok"],
    ["tcp", ":0", "--handler=chargen", "--concurrency=event"],
    ["tcp", ":0", "-Hupper", "-cthread"],
    ["tcp", ":0", "-qHdaytime"],
    ["-q", "tcp", "-H", "time", ":0"],
    ["tcp", ":0", "-H", "upper", "-H", "echo"],
    ["tcp", ":0", "--"],
    ["--", "tcp", ":0"],
    ["unix", "/tmp/sockserve-startup.sock", "--mode", "600"],
    ["unix", "/tmp/sockserve-startup.sock", "--mode", "0o660", "-c", "sync"],
    ["unix-dgram", "@sockserve-startup", "-H", "upper"],
    ["udp", "127.0.0.1:0", "-H", "stdout", "-c", "event"],
]

#: Command lines left to click: help, completion, unusual spellings, values and errors.
TO_CLICK = [
    ["--help"],
    ["-h"],
    ["-V"],
    ["--version"],
    ["--completion", "bash"],
    ["tcp", ":0", "--help"],
    ["tcp"],
    [],
    ["tcp", ":0", "extra"],
    ["tcp", ":0", "--bogus"],
    ["tcp", ":0", "-x"],
    ["tcp", ":0", "--once=yes"],
    ["tcp", ":0", "--max-threads", "0"],
    ["tcp", ":0", "--max-threads", "+4"],
    ["tcp", ":0", "--backlog", "1_000"],
    ["tcp", ":0", "--timeout", "0"],
    ["tcp", ":0", "--timeout", "1e3"],
    ["tcp", ":0", "--grace", "-1"],
    ["tcp", ":0", "--mode", "999"],
    ["tcp", ":0", "-c", "threads"],
    ["tcp", ":0", "-H"],
    ["tcp", ":0", "--reply", "-x"],
    ["TCP", ":0"],
    ["sctp", ":0"],
    ["tcp", ":0", "--reply-file", "/nonexistent/reply.txt"],
    ["tcp", ":0", "--reply-file", "/tmp"],
]

#: Parsed by the quick parser, then refused by the shared rules (click reports them).
REFUSED = [
    ["tcp", "127.0.0.1:99999"],
    ["tcp", "no port"],
    ["tcp", ""],
    ["tcp", "/tmp/a.sock"],
    ["unix", "127.0.0.1:80"],
    ["tcp", ":0", "-H", "nope"],
    ["tcp", ":0", "-H", "reply"],
    ["tcp", ":0", "-H", "upper", "--reply", "x"],
    ["tcp", ":0", "--reply", "\\x4"],
    ["tcp", ":0", "--once", "--max-requests", "2"],
    ["tcp", ":0", "--max-children", "2"],
    ["udp", ":0", "--max-threads", "2"],
    ["tcp", ":0", "--mode", "600"],
    ["tcp", ":0", "--family", "unix"],
    ["unix", "/tmp/x.sock", "--type", "dgram"],
    ["tcp", ":0", "--workers", "2", "--once"],
]


def click_config(args: list[str]) -> Any:
    """The click command's ServeConfig for `args` (its parser and build_config, no serving)."""
    ctx = cli.main.make_context("sockserve", list(args))
    with ctx:
        return cli.build_config(ctx.params)


def quick_config(args: list[str]) -> Any:
    """The quick path's ServeConfig, or None when it leaves `args` to click."""
    parsed = entry.parse_args(list(args))
    if parsed is None:
        return None
    params, handler_given = parsed
    return config_from_options(params, handler_given=handler_given)


@pytest.mark.parametrize("args", QUICK, ids=" ".join)
def test_quick_parser_builds_the_config_click_builds(args: list[str]) -> None:
    assert entry.parse_args(list(args)) is not None, "expected the quick path"
    assert quick_config(args) == click_config(args)


@pytest.mark.parametrize("args", TO_CLICK, ids=" ".join)
def test_quick_parser_leaves_the_rest_to_click(args: list[str]) -> None:
    assert entry.parse_args(list(args)) is None


@pytest.mark.parametrize("args", REFUSED, ids=" ".join)
def test_refused_values_raise_option_error_where_click_has_a_usage_error(
    args: list[str],
) -> None:
    with pytest.raises(OptionError):
        quick_config(args)
    with pytest.raises(click.UsageError):
        click_config(args)


def test_reply_file_and_handler_files_take_the_quick_path(tmp_path: Path) -> None:
    reply = tmp_path / "reply.txt"
    reply.write_bytes(b"hello\n")
    handler = tmp_path / "h_quick.py"
    handler.write_text(
        "import sockserve\n"
        "class Upper(sockserve.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(self.rfile.read().upper())\n"
    )
    for args in (
        ["tcp", ":0", "--reply-file", str(reply)],
        ["tcp", ":0", "-H", "reply", "--reply-file", str(reply), "--timeout", "3"],
        ["tcp", ":0", "-H", str(handler)],
        ["tcp", ":0", "-H", f"{handler}:Upper", "-c", "fork"],
    ):
        assert entry.parse_args(args) is not None, args
        assert quick_config(args) == click_config(args), args


def test_quick_tables_match_the_click_command() -> None:
    """Every option the quick parser knows is the click option of the same name, with the
    same parameter, default and choices."""
    params = {p.name: p for p in cli.main.params}
    by_opt = {opt: p for p in cli.main.params for opt in (*p.opts, *p.secondary_opts)}
    for opt, (dest, value) in entry.FLAGS.items():
        assert by_opt[opt].name == dest
        assert value is (opt in by_opt[opt].opts)
    for opt, (dest, _) in entry.VALUED.items():
        assert by_opt[opt].name == dest
        assert not getattr(by_opt[opt], "is_flag", False)
    for opt, dest in entry.COUNTED.items():
        assert by_opt[opt].name == dest and by_opt[opt].count
    with cli.main.make_context("sockserve", ["tcp", ":0"]) as ctx:
        given = dict(ctx.params)
    assert {"proto": "tcp", "address": ":0", **entry.DEFAULTS} == given
    assert list(params["proto"].type.choices) == list(entry._PROTOCOLS)
    assert list(entry._PROTOCOLS) == list(addresses.TRANSPORTS)
    for opt in ("--concurrency", "--family", "--type"):
        convert = entry.VALUED[opt][1]
        for choice in by_opt[opt].type.choices:
            assert convert(choice) == choice


#: The ServeConfig fields config_from_options sets from computed values, not as given.
SET_EXPLICITLY = {
    "family",
    "socktype",
    "address",
    "handler",
    "concurrency",
    "reply",
    "reply_file",
    "output",
    "verbosity",
}


def test_config_from_options_sets_every_field() -> None:
    """Each ServeConfig field (but `extra`, which no option fills) is either passed as given
    or set explicitly by config_from_options, never both: a new field left out of both
    would silently keep its default."""
    given = config._PASSED_AS_GIVEN
    assert len(set(given)) == len(given)
    assert not set(given) & SET_EXPLICITLY
    assert set(given) | SET_EXPLICITLY == set(config.ServeConfig._fields) - {"extra"}


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "0.0.0.0", "255.255.255.255", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1",
     "1.2.3.4 ", "١.2.3.4", "a.b.c.d", "", "1..2.3", "00.0.0.0", "0.0.0.00", "1.2.3.-4"],
)  # fmt: skip
def test_dotted_quad_is_what_ipaddress_accepts(host: str) -> None:
    try:
        ipaddress.IPv4Address(host)
        accepted = True
    except ValueError:
        accepted = False
    assert addresses._is_dotted_quad(host) is accepted


# -- the real command ---------------------------------------------------------------------------

DUMP_MODULES = """
import atexit, sys
atexit.register(lambda: print(sorted(sys.modules), flush=True))
sys.argv[1:] = {args!r}
"""


def _serve_once(
    command: list[str], *, cwd: str | None = None, reply: bytes = b"ping", stop: bool = False
) -> tuple[list[str], str]:
    """Run a server command with --print-address --once; send it one message, expect `reply`.

    `stop`: a server without --once, stopped by SIGTERM after the reply. Returns its stdout
    lines after the address, and its stderr.
    """
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        host, _, port = line.rpartition(":")
        assert port.isdigit(), (line, proc.stderr.read() if proc.stderr else "")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == reply
        if stop:
            proc.terminate()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out.splitlines(), err


SERVE_ARGS = ["tcp", "127.0.0.1:0", "--print-address", "-q", "--once"]


@pytest.mark.parametrize(
    "entry_code",
    [
        "import runpy; runpy.run_module('sockserve', run_name='__main__', alter_sys=True)",
        "from sockserve.entry import main; sys.exit(main())",  # what the console script runs
    ],
    ids=["python -m sockserve", "console script"],
)
@pytest.mark.parametrize("concurrency", ["thread", "sync", "fork"])
def test_quick_path_serves_without_heavy_modules(entry_code: str, concurrency: str) -> None:
    code = DUMP_MODULES.format(args=[*SERVE_ARGS, "-c", concurrency]) + entry_code
    lines, err = _serve_once([sys.executable, "-c", code])
    assert err == ""
    loaded = set(eval(lines[-1]))  # the atexit line: sorted(sys.modules)
    assert "sockserve.runner" in loaded and "sockserve.cli" not in loaded
    allowed = {"json", "re"} if concurrency == "fork" else set()  # children forward JSON
    unwanted = (*HEAVY, *NOT_ON_THE_QUICK_PATH)
    if "runpy" not in entry_code:
        unwanted += NOT_IN_THE_CONSOLE_SCRIPT
    heavy = [m for m in unwanted if m in loaded or any(n.startswith(m + ".") for n in loaded)]
    assert set(heavy) <= allowed, heavy


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_alone_is_printed_without_click(flag: str) -> None:
    """The same line as the click command's --version, without importing click."""
    code = DUMP_MODULES.format(args=[flag]) + "from sockserve.entry import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == ""
    version, modules = out.stdout.splitlines()
    assert "click" not in eval(modules)
    assert version + "\n" == CliRunner().invoke(cli.main, [flag]).output
    assert version.startswith("sockserve ") and sys.version.split()[0] in version


def test_version_into_a_closed_pipe_exits_1_quietly() -> None:
    """As click's standalone mode: status 1, nothing on stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "sockserve", "--version"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=30,
        )
    finally:
        os.close(write)
    assert (out.returncode, out.stderr) == (1, b"")


def test_python_m_sockserve_and_console_script_serve() -> None:
    lines, err = _serve_once([sys.executable, "-m", "sockserve", *SERVE_ARGS])
    assert (lines, err) == ([], "")
    script = Path(sys.executable).with_name("sockserve")
    if not script.exists():
        pytest.skip("the console script is not installed next to this Python")
    lines, err = _serve_once([str(script), *SERVE_ARGS])
    assert (lines, err) == ([], "")
    # The installed command is our script (scripts/sockserve): unlike a pip-generated entry
    # point's, its first line is not `import re`, so nothing loads re before the first echo.
    lines, err = _serve_once([sys.executable, "-X", "importtime", str(script), *SERVE_ARGS])
    loaded = {line.rpartition("|")[2].strip() for line in err.splitlines() if "|" in line}
    assert "sockserve.entry" in loaded and "re" not in loaded


GC_STATE_HANDLER = """
import gc
import sockserve as socketserver

class GcState(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(100)
        frozen = gc.get_freeze_count() > 0
        self.request.sendall(f"enabled={gc.isenabled()} frozen={frozen}".encode())
"""


@pytest.mark.parametrize("options", [["-c", "thread"], ["-c", "fork"], ["--workers", "2"]])
@pytest.mark.parametrize("how", ["command", "python -m"])
def test_the_collector_is_back_on_while_serving(
    tmp_path: Path, how: str, options: list[str]
) -> None:
    """The command pauses the cyclic GC for start-up; requests run with it on again, and
    what start-up made is frozen (never scanned again)."""
    script = Path(sys.executable).with_name("sockserve")
    if how == "command" and not script.exists():
        pytest.skip("the console script is not installed next to this Python")
    (tmp_path / "gcstate.py").write_text(GC_STATE_HANDLER)
    command = [str(script)] if how == "command" else [sys.executable, "-m", "sockserve"]
    workers = "--workers" in options  # --once counts in one process: a signal stops them
    serve_args = [a for a in SERVE_ARGS if a != "--once"] if workers else SERVE_ARGS
    args = [*serve_args, *options, "-H", f"{tmp_path / 'gcstate.py'}:GcState"]
    lines, err = _serve_once([*command, *args], reply=b"enabled=True frozen=True", stop=workers)
    assert (lines, err) == ([], "")


CPUS_HANDLER = """
import os
import socketserver

class Cpus(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(100)
        self.request.sendall(b"%d" % len(os.sched_getaffinity(0)))
"""


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU affinity needs Linux and two CPUs allowed",
)
@pytest.mark.parametrize("pin", [[], ["--pin"]])
def test_pin_reaches_a_user_handler_through_the_command(tmp_path: Path, pin: list[str]) -> None:
    """A stdlib handler of the user's, in thread mode: every CPU by default, one with --pin."""
    (tmp_path / "cpus.py").write_text(CPUS_HANDLER)
    expected = b"1" if pin else b"%d" % len(os.sched_getaffinity(0))
    args = [*SERVE_ARGS, "-c", "thread", *pin, "-H", f"{tmp_path / 'cpus.py'}:Cpus"]
    lines, err = _serve_once([sys.executable, "-m", "sockserve", *args], reply=expected)
    assert (lines, err) == ([], "")


CPU_SET_HANDLER = """
import os
import socketserver

class CpuSet(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(100)
        self.request.sendall(b",".join(b"%d" % c for c in sorted(os.sched_getaffinity(0))))
"""


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU affinity needs Linux and two CPUs allowed",
)
@pytest.mark.parametrize("pin", [[], ["--pin"]])
def test_the_banner_names_the_cpu_the_threads_are_pinned_to(tmp_path: Path, pin: list[str]) -> None:
    """--json banner: `pinned_cpu` is the one CPU the handler's thread runs on; no key when
    nothing is pinned (a handler of the user's, by default)."""
    (tmp_path / "cpuset.py").write_text(CPU_SET_HANDLER)
    args = [a for a in SERVE_ARGS if a != "-q"]
    args += ["--json", "-c", "thread", *pin, "-H", f"{tmp_path / 'cpuset.py'}:CpuSet"]
    allowed = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        banner = json.loads(proc.stderr.readline())
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"cpus?")
            reply = client.recv(100).decode()
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert banner["event"] == "listening" and proc.returncode == 0
    if pin:
        assert reply == str(banner["pinned_cpu"])
    else:
        assert "pinned_cpu" not in banner and reply == allowed


def test_logging_set_up_before_the_first_record_when_it_comes() -> None:
    """The reporter gets the first record even though logging was not loaded at setup."""
    code = textwrap.dedent(
        """
        import io, sys
        from sockserve.console import PlainReporter, setup_logging
        from sockserve.socketserver._log import LazyLogger
        out = io.StringIO()
        setup_logging(PlainReporter(out), 0)
        assert "logging" not in sys.modules
        LazyLogger("sockserve.factory").warning("careful")
        LazyLogger("sockserve.socketserver").debug("not shown without -vv")
        print(repr(out.getvalue()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert (out.stdout.strip(), out.stderr) == ("'warning: careful\\n'", "")


# -- errors stay click's ------------------------------------------------------------------------

PROG = "python -m sockserve"


@pytest.mark.parametrize(
    "args",
    [
        ["tcp", "127.0.0.1:99999"],
        ["tcp", ":0", "--bogus"],
        ["tcp", ":0", "-H", "nope"],
        ["tcp", ":0", "--once", "--max-requests", "2"],
        ["tcp", ":0", "--max-threads", "0"],
        ["tcp", ":0", "-H", "upper", "--reply", "x"],
        ["sctp", ":0"],
        ["tcp"],
    ],
    ids=" ".join,
)
def test_errors_are_clicks(args: list[str]) -> None:
    expected = CliRunner().invoke(cli.main, args, prog_name=PROG)
    assert expected.exit_code == 2
    out = subprocess.run(
        [sys.executable, "-m", "sockserve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (out.returncode, out.stdout, out.stderr) == (2, "", expected.stderr)


def test_a_failing_handler_module_runs_once(tmp_path: Path) -> None:
    """The quick path tried the handler; click reports the failure without a second import."""
    handler = tmp_path / "broken_once.py"
    handler.write_text("print('imported', flush=True)\nraise RuntimeError('boom')\n")
    out = subprocess.run(
        [sys.executable, "-m", "sockserve", "tcp", ":0", "-H", str(handler)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=str(tmp_path),
    )
    assert out.returncode == 2
    assert out.stdout == "imported\n"
    assert "Error: Invalid value for '-H' / '--handler': importing" in out.stderr
    assert "RuntimeError: boom" in out.stderr


def test_environment_errors_are_the_commands() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "sockserve", "tcp", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert out.returncode == 1
    assert out.stderr.startswith(f"sockserve: error: address 127.0.0.1:{port} is already in use")
    assert "Traceback" not in out.stderr


def test_completion_requests_go_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_SOCKSERVE_COMPLETE", "bash_complete")
    assert entry._completing()
    monkeypatch.delenv("_SOCKSERVE_COMPLETE")
    assert not entry._completing()
