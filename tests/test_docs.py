"""The documentation tells the truth: README commands, the man page, and --help.

README: every fenced block carries a `<!-- test: KIND -->` comment saying how it is checked:

- `session`: groups of lines separated by blank lines; in each, the first command is a server
  (run in the background until it says "listening") and the rest is a bash script of clients.
  A `# → TEXT` comment says what the command before it prints (`…` matches anything on the
  line): for the server, its stdout and stderr; for clients, their stdout, in order. After the
  clients, the server gets SIGINT (as from Ctrl-C) and must exit 0.
- `script`: the block is a bash script (`bash -e`), checked by its `# → TEXT` comments.
- `file PATH`: the block is the file PATH, verbatim.
- `mirror TEST`: the test function TEST in this module exercises the block.

Blocks run on loopback: port 9999 becomes a free port and `/tmp/` a fresh directory, with
`sockserve` (this checkout) first on PATH and HOME in a temporary directory. The clients use
`nc` as OpenBSD netcat; where `nc` is another netcat (ncat, busybox, the traditional one) or
none, a small stand-in with the same flags (-N, -u, -U, -w) comes first on PATH instead, so
the README's sockserve commands are still run. A block that needs a GNU tool the machine lacks
(`install -D`, `od --endian`, `date -d`, as on macOS) is skipped with the reason.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pexpect
import pytest
from click.testing import CliRunner
from clitools import wait_process, write_sockserve_wrapper

from sockserve import __version__, cli
from sockserve.builtins import BUILTINS
from sockserve.console import JsonReporter
from sockserve.events import Stats
from sockserve.helptext import EXAMPLES, EXIT_CODES, SECTIONS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAN = ROOT / "man" / "sockserve.1"
ANSI_COLOR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m")


# -- helpers ---------------------------------------------------------------------------------------


def all_option_names() -> list[str]:
    """Every option string of the command, --help included."""
    ctx = click.Context(cli.main, info_name="sockserve", **cli.main.context_settings)
    names: list[str] = []
    for param in cli.main.get_params(ctx):
        if isinstance(param, click.Option):
            names += [*param.opts, *param.secondary_opts]
    return names


def _load_script(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"gen_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sockserve_args(command: str) -> list[str]:
    """The arguments of the sockserve command in a shell line (before a pipe or redirection)."""
    words = shlex.split(command, comments=True)
    start = words.index("sockserve") + 1
    args = []
    for word in words[start:]:
        if word in ("|", "&&", ";") or word.startswith((">", "<", "2>")):
            break
        args.append(word)
    return args


def _example_files(directory: Path) -> None:
    """The files the help's and the man page's examples name, so their commands parse."""
    (directory / "response.http").write_text("HTTP/1.0 200 OK\r\n\r\n")
    (directory / "reply.http").write_text("HTTP/1.0 200 OK\r\n\r\n")
    handler = "import sockserve\n\nclass H(sockserve.StreamRequestHandler):\n    pass\n"
    (directory / "app.py").write_text(handler)
    (directory / "handler.py").write_text(handler)
    (directory / "mypkg").mkdir()
    (directory / "mypkg" / "__init__.py").write_text("")
    (directory / "mypkg" / "proto.py").write_text(handler.replace("class H", "class Lines"))


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# -- man page --------------------------------------------------------------------------------------


def test_man_page_is_what_the_generator_writes() -> None:
    generate = _load_script(ROOT / "man" / "generate.py")
    current = MAN.read_text()
    assert generate.render(current) == current, "man page is stale: run python man/generate.py"
    assert generate.main(["--check"]) == 0


def test_man_page_lists_every_option_builtin_and_exit_status() -> None:
    page = MAN.read_text()
    for name in all_option_names():
        assert f"\\fB{name.replace('-', chr(92) + '-')}\\fR" in page, f"{name} not in the man page"
    for name in BUILTINS:
        assert f".B {name}\n" in page
    for code, _ in EXIT_CODES:
        assert f".B {code}\n" in page
    assert f'"sockserve {__version__}"' in page


def test_man_page_fails_for_an_option_missing_from_it() -> None:
    # The check above is not vacuous: a new option is missing until the page is regenerated.
    extra = click.Option(["--brand-new-flag"], is_flag=True, help="New.")
    cli.main.params.append(extra)
    try:
        assert "--brand-new-flag" in all_option_names()
        generate = _load_script(ROOT / "man" / "generate.py")
        current = MAN.read_text()
        assert generate.render(current) != current
        assert "\\fB\\-\\-brand\\-new\\-flag\\fR" in generate.render(current)
    finally:
        cli.main.params.remove(extra)


def test_man_page_has_the_sections_a_reader_expects() -> None:
    page = MAN.read_text()
    sections = re.findall(r"^\.SH (.+)$", page, flags=re.M)
    assert sections == [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ADDRESSES",
        "OPTIONS",
        "HANDLERS",
        "EXAMPLES",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ]
    subsections = re.findall(r"^\.SS (.+)$", page, flags=re.M)
    assert [s for s in SECTIONS if s in subsections] == list(SECTIONS)
    assert {"Writing a handler", "Event mode"} <= set(subsections)
    for ref in ("nc", "ncat", "socat"):
        assert f".BR {ref} (1)" in page
    assert ".BR inetd (8)" in page
    for variable in ("NO_COLOR", "COLUMNS", "TERM", "PYTHONPATH"):
        assert f".B {variable}\n" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_renders_without_warnings_groff() -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
def test_man_page_passes_mandoc_lint() -> None:
    result = subprocess.run(["mandoc", "-Tlint", str(MAN)], capture_output=True, text=True)
    assert result.stdout + result.stderr == ""
    assert result.returncode == 0


def test_man_examples_are_valid_commands(tmp_path: Path, captured: list[Any]) -> None:
    page = MAN.read_text()
    examples = page[page.index(".SH EXAMPLES") : page.index(".SH EXIT STATUS")]
    lines = []
    for block in re.findall(r"^\.EX\n(.*?)^\.EE", examples, flags=re.M | re.S):
        text = block.replace("\\-", "-").replace("\\(aq", "'").replace("\\e", "\\")
        lines += [line for line in text.splitlines() if "sockserve " in line]
    assert len(lines) >= 8
    _example_files(tmp_path)
    with _chdir(tmp_path):
        for line in lines:
            line = line.replace("/tmp/", f"{tmp_path}/")
            args = _sockserve_args(line.split("<(", 1)[-1].rstrip(")"))
            result = CliRunner().invoke(cli.main, args)
            assert result.exit_code == 0, (line, result.output)


# -- --help ----------------------------------------------------------------------------------------


def test_help_examples_are_valid_commands(tmp_path: Path, captured: list[Any]) -> None:
    _example_files(tmp_path)
    with _chdir(tmp_path):
        for command, _ in EXAMPLES:
            result = CliRunner().invoke(cli.main, _sockserve_args(command))
            assert result.exit_code == 0, (command, result.output)
    assert len(captured) == len(EXAMPLES)


def test_piped_help_is_plain_complete_and_does_not_import_rich() -> None:
    env = dict(os.environ, COLUMNS="100")
    env.pop("NO_COLOR", None)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sockserve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0
    out = result.stdout
    assert "\x1b[" not in out
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m == "rich" or m.startswith("rich.")}
    for title in ("Arguments", *SECTIONS, "Examples", "Exit status"):
        assert f"\n{title}:\n" in out
    for name in all_option_names():
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), name
    for code, meaning in EXIT_CODES:
        assert f"  {code:<4} {meaning}" in out
    assert out.index("Examples:") > out.index("Other:")
    assert out.index("Exit status:") > out.index("Examples:")


def test_options_appear_in_their_help_sections() -> None:
    out = CliRunner().invoke(cli.main, ["--help"], terminal_width=100).output
    for section, following in zip(SECTIONS, [*list(SECTIONS)[1:], "Examples"], strict=True):
        body = out[out.index(f"\n{section}:\n") : out.index(f"\n{following}:\n")]
        if section == "Concurrency":
            assert "--max-threads" in body and "--workers" in body and "--pin" in body
        if section == "Other":
            assert "-h, --help" in body and "--completion" in body


def _help_in_pty(extra_env: dict[str, str]) -> str:
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100")
    env.pop("NO_COLOR", None)
    env.update(extra_env)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "sockserve", "--help"],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 100),
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return child.before or ""


def test_help_on_a_terminal_is_drawn_by_rich() -> None:
    out = _help_in_pty({})
    assert ANSI_COLOR.search(out), "no colours on a terminal"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    for title in ("Arguments", *SECTIONS, "Examples", "Exit status"):
        assert f"╭─ {title} " in plain, title
    assert "sockserve tcp :0 --print-address --once" in plain
    assert "130  forced stop" in plain
    for name in ("--reuse-address", "--no-reuse-address", "-h, --help", "--completion"):
        assert name in plain
    assert max(len(line) for line in plain.splitlines()) <= 100


def test_help_on_a_terminal_honours_no_color() -> None:
    out = _help_in_pty({"NO_COLOR": "1"})
    assert "╭─ Address " in re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert not ANSI_COLOR.search(out)


def test_help_with_term_dumb_is_plain() -> None:
    out = _help_in_pty({"TERM": "dumb"})
    assert "\x1b[" not in out
    assert "\r\nAddress:\r\n" in out


# -- README ----------------------------------------------------------------------------------------


@dataclass
class Block:
    kind: str
    arg: str
    lang: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.kind})"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    annotation: tuple[str, str] | None = None
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = re.fullmatch(r"<!-- test: (\S+) ?(.*?) -->", line.strip())
        if match:
            annotation = (match.group(1), match.group(2))
        elif line.startswith("```"):
            lang = line[3:].strip()
            end = lines.index("```", i + 1)
            kind, arg = annotation or ("none", "")
            if not blocks and annotation is None:
                kind = "setup"
            blocks.append(Block(kind, arg, lang, "\n".join(lines[i + 1 : end]), i + 1))
            annotation = None
            i = end
        elif line.strip():
            annotation = None  # the comment must come right before its block
        i += 1
    return blocks


BLOCKS = readme_blocks()


def _blocks(kind: str) -> list[Block]:
    return [b for b in BLOCKS if b.kind == kind]


def test_every_readme_block_says_how_it_is_tested() -> None:
    assert BLOCKS[0].kind == "setup"
    for block in BLOCKS:
        assert block.kind in ("setup", "session", "script", "file", "mirror"), str(block)
    for block in _blocks("mirror"):
        assert callable(globals().get(block.arg)), f"{block}: no test named {block.arg}"
    for block in _blocks("file"):
        assert block.lang == "python", str(block)


def test_readme_examples_use_only_loopback_and_tmp() -> None:
    text = README.read_text()
    for block in BLOCKS:
        for addr in re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", block.text):
            assert addr.startswith("127."), f"{block}: {addr}"  # loopback: 127.0.0.0/8
        for path in re.findall(r"(?<![\w.~])/[\w.-]+/[\w./-]*", block.text):
            assert path.startswith("/tmp/") or path == "/dev/null", f"{block}: {path}"
    assert "0.0.0.0:9999" in text  # named in prose only, as what not to type by accident


def test_readme_lists_every_json_event() -> None:
    """The README's table of `--json` events names each event the JSON reporter writes."""
    out = io.StringIO()
    reporter = JsonReporter(out, verbosity=2)
    client = ("127.0.0.1", 5)
    reporter.listening("tcp://127.0.0.1:5", {"concurrency": "thread"})
    reporter.connected(client)
    reporter.data(client, "in", b"x")
    reporter.record(client, 1, 1)
    reporter.socktype = "dgram"
    reporter.record(client, 1, 1)
    reporter.handler_error(client, ValueError("x"))
    reporter.warning("w")
    reporter.info("i")
    reporter.refused(client, "r")
    reporter.fault(client, "delay", "50ms")
    reporter.exec_exit(client, -15, 0.5)
    reporter.exec_stderr(client, b"oops")
    reporter.upstream(client, "tcp://127.0.0.1:6", None)
    reporter.fatal("f", None)
    reporter.sent(client, 1)
    reporter.summary(Stats(), "stream", None)
    reporter.tls(client, {"version": "TLSv1.3"})
    written = {json.loads(line)["event"] for line in out.getvalue().splitlines()}
    text = README.read_text()
    section = text[text.index("### JSON logs") :]
    section = section[: section.index("\n## ")]
    header, *rows = re.findall(r"^\| `([\w-]+)` \|", section, flags=re.M)
    listed = set(rows)
    assert header == "event"
    assert written == listed
    assert len(written) == 17


@pytest.mark.parametrize("block", _blocks("file"), ids=str)
def test_readme_handler_listing_is_the_example_file(block: Block) -> None:
    assert block.text + "\n" == (ROOT / block.arg).read_text()


# Running blocks --------------------------------------------------------------------------------


_PORTS_LOCK = threading.Lock()
_PORTS_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1, never given twice in this run."""
    with _PORTS_LOCK:
        while True:
            with (
                socket.socket() as tcp,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            ):
                tcp.bind(("127.0.0.1", 0))
                port = tcp.getsockname()[1]
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return port


NC_STANDIN = '''\
"""Stand-in for OpenBSD nc in the README tests: -N, -u, -U, -w SECONDS, HOST PORT or PATH."""
import os, socket, sys, tempfile

udp = unix = False
wait = 1.0
rest = []
args = iter(sys.argv[1:])
for arg in args:
    if arg.startswith("-") and len(arg) > 1:
        flags = arg[1:]
        while flags:
            flag, flags = flags[0], flags[1:]
            udp |= flag == "u"
            unix |= flag == "U"
            if flag in "wq":
                wait, flags = float(flags or next(args)), ""
    else:
        rest.append(arg)
if unix:
    family, address = socket.AF_UNIX, rest[0]
else:
    family = socket.AF_INET6 if ":" in rest[0] else socket.AF_INET
    address = (rest[0], int(rest[1]))
sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
here = None
if udp and unix:  # bind, so that the server can answer
    here = tempfile.mkdtemp(prefix="nc", dir="/tmp")
    sock.bind(os.path.join(here, "s"))
sock.connect(address)
data = sys.stdin.buffer.read()
out = sys.stdout.buffer
try:
    if udp:
        sock.send(data)
        sock.settimeout(wait)
        while True:
            try:
                out.write(sock.recv(65536))
                out.flush()
            except TimeoutError:
                break
    else:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            out.write(chunk)
            out.flush()
except BrokenPipeError:
    pass
finally:
    if here:
        os.unlink(os.path.join(here, "s"))
        os.rmdir(here)
'''


#: What `nc -h` prints first, for each netcat: OpenBSD's is the one the README's clients use.
NC_FLAVOURS = {
    "OpenBSD netcat": "openbsd",
    "Ncat": "ncat",
    "BusyBox": "busybox",
    "[v1.": "traditional",
}


def nc_flavour(path: str) -> str:
    """Which netcat `nc` is on `path`: openbsd, ncat, busybox, traditional, unknown or none."""
    nc = shutil.which("nc", path=path)
    if nc is None:
        return "none"
    try:
        result = subprocess.run(
            [nc, "-h"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    said = (result.stdout + result.stderr).decode(errors="replace")
    for line in said.splitlines():
        for start, flavour in NC_FLAVOURS.items():
            if line.startswith(start) or (flavour == "traditional" and start in line):
                return flavour
    return "unknown"


def make_shell_env(base: Path, path: str) -> dict[str, str]:
    """The environment of the README's commands: before `path`, this checkout's sockserve
    (and the nc stand-in unless `path` has OpenBSD's nc); HOME in `base`."""
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True)
    write_sockserve_wrapper(bin_dir)
    if nc_flavour(path) != "openbsd":
        standin = bin_dir / "nc"
        standin.write_text(f"#!{sys.executable}\n{NC_STANDIN}")
        standin.chmod(0o755)
    (base / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BASH_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{path}",
        HOME=str(base / "home"),
        NO_COLOR="1",
        TERM="dumb",
        LC_ALL="C.UTF-8",
        MANPAGER="cat",
        PAGER="cat",
    )
    return env


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH with this checkout's sockserve (and nc, or its stand-in); HOME in a temp dir."""
    base = tmp_path_factory.mktemp("readme")
    return make_shell_env(base, os.environ.get("PATH", "/usr/bin:/bin"))


#: GNU tools' options some README blocks use: (the tool and option, a pattern that finds it
#: in a block, a bash script that prints "ok" where the machine's tool has it).
GNU_ONLY = (
    (
        "install -D",
        r"\binstall -D",
        'install -Dm644 /dev/null "$tmp/a/b" && test -f "$tmp/a/b" && echo ok',
    ),
    (
        "od --endian",
        r"\bod [^|]*--endian",
        "printf '\\0\\0\\0\\1' | od -An -tu4 --endian=big | grep -qx ' *1' && echo ok",
    ),
    ("date -d", r"\bdate [^|]*-d\b", 'test "$(date -u -d @0 +%Y)" = 1970 && echo ok'),
)
_GNU_CHECKED: dict[tuple[str, str], bool] = {}


def missing_gnu_tools(text: str, env: dict[str, str]) -> list[str]:
    """The GNU-only options in `text` that the tools on env's PATH do not have."""
    missing = []
    for name, pattern, check in GNU_ONLY:
        if not re.search(pattern, text):
            continue
        key = (name, env["PATH"])
        if key not in _GNU_CHECKED:
            with tempfile.TemporaryDirectory() as tmp:
                result = subprocess.run(
                    ["bash", "-c", check],
                    env=dict(env, tmp=tmp),
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
            _GNU_CHECKED[key] = result.stdout.strip() == "ok"
        if not _GNU_CHECKED[key]:
            missing.append(name)
    return missing


def skip_without_gnu_tools(text: str, env: dict[str, str]) -> None:
    """Skip the test, with the reason, when `text` needs GNU tools the machine lacks."""
    missing = missing_gnu_tools(text, env)
    if missing:
        pytest.skip(f"needs GNU tools ({', '.join(missing)}), as on Linux")


MARKER = re.compile(r"(?:^|\s)# → (.*)$")


@dataclass
class Command:
    text: str
    expected: list[str]


def parse_commands(text: str) -> list[Command]:
    """Shell commands (with continuation lines joined) and the `# → ...` lines after each."""
    commands: list[Command] = []
    pending = ""
    for line in text.splitlines():
        marker = MARKER.search(line)
        code = line[: marker.start()] if marker else line
        if not code.strip() and marker and commands:
            commands[-1].expected.append(marker.group(1))
            continue
        if not code.strip():
            continue
        if code.rstrip().endswith("\\"):
            pending += code.rstrip()[:-1] + " "
            continue
        commands.append(Command(pending + code.rstrip(), [marker.group(1)] if marker else []))
        pending = ""
    return commands


def assert_prints(output: str, expected: list[str], where: str) -> None:
    """Each expected line appears in `output`, in order; `…` matches anything on a line."""
    pos = 0
    for text in expected:
        pattern = "[^\n]*?".join(re.escape(part) for part in text.split("…"))
        match = re.compile(pattern).search(output, pos)
        assert match, f"{where}: expected {text!r} in:\n{output}"
        pos = match.end()


def substitute(text: str, port: int, tmp: str) -> str:
    return text.replace("9999", str(port)).replace("/tmp/", tmp + "/")


class Server:
    """A README server line running in its own process group, its output collected."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        self.chunks: list[bytes] = []
        self.listening = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.chunks.append(chunk)
            if b"listening" in b"".join(self.chunks):
                self.listening.set()
        self.listening.set()

    @property
    def output(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def stop(self, finishes: bool) -> int | None:
        """Ctrl-C (SIGINT to the group) unless it exits by itself; return its status.

        A server that `finishes` (--once, --max-requests) is first given time to exit, as a
        user would wait for it.
        """
        if finishes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                wait_process(self.proc, 10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
        try:
            wait_process(self.proc, 15)
        finally:
            self.kill()
        self.reader.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)


def run_session(group: str, env: dict[str, str], where: str) -> None:
    """Start the group's server, run its clients, stop the server; check what each printed."""
    tmp = tempfile.mkdtemp(prefix="ssr", dir="/tmp")
    try:
        text = substitute(group, _free_port(), tmp)
        server_cmd, *clients = parse_commands(text)
        server = Server(server_cmd.text, env)
        try:
            assert server.listening.wait(15), f"{where}: server did not start:\n{server.output}"
            assert server.proc.poll() is None or server.proc.returncode == 0, server.output
            script = "\n".join(c.text for c in clients)
            result = subprocess.run(
                ["bash", "-e", "-c", script],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, f"{where}: clients failed:\n{result.stderr}"
            assert_prints(result.stdout, [e for c in clients for e in c.expected], where)
            finishes = "--once" in server_cmd.text or "--max-requests" in server_cmd.text
            status = server.stop(finishes)
        finally:
            server.kill()
        out = server.output
        assert status == 0, f"{where}: server exited with {status}:\n{out}"
        assert "Traceback" not in out, out
        assert_prints(out, server_cmd.expected, where + " (server)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_script(text: str, env: dict[str, str], where: str) -> str:
    """Run a README script block with bash -e; check its `# → ...` lines; return its stdout."""
    tmp = tempfile.mkdtemp(prefix="ssr", dir="/tmp")
    try:
        text = substitute(text, _free_port(), tmp)
        proc = subprocess.Popen(
            ["bash", "-e", "-c", text],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == 0, f"{where}: exit {proc.returncode}:\n{out}\n{err}"
        assert "Traceback" not in err, err
        assert_prints(out, [e for c in parse_commands(text) for e in c.expected], where)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _groups(block: Block) -> list[tuple[str, str]]:
    groups = [g for g in re.split(r"\n\s*\n", block.text) if g.strip()]
    return [(g, f"{block} group {i + 1}") for i, g in enumerate(groups)]


SESSION_GROUPS = [group for block in _blocks("session") for group in _groups(block)]


@pytest.fixture(scope="module")
def session_outcomes(shell_env: dict[str, str]) -> dict[str, BaseException | None]:
    """Run every README session group at once (each on its own port and directory)."""

    def outcome(group: str, where: str) -> BaseException | None:
        if missing_gnu_tools(group, shell_env):  # its test skips
            return None
        try:
            run_session(group, shell_env, where)
        except BaseException as exc:  # re-raised by the group's own test
            return exc
        return None

    # The groups whose clients wait (`nc -u -w1` waits a second for each reply) start first,
    # so that the others run meanwhile rather than after them.
    slowest_first = sorted(SESSION_GROUPS, key=lambda item: -item[0].count(" -w"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {where: pool.submit(outcome, group, where) for group, where in slowest_first}
        return {where: future.result() for where, future in futures.items()}


@pytest.mark.parametrize("where", [w for _, w in SESSION_GROUPS])
def test_readme_session(
    where: str, session_outcomes: dict[str, BaseException | None], shell_env: dict[str, str]
) -> None:
    skip_without_gnu_tools(dict((w, g) for g, w in SESSION_GROUPS)[where], shell_env)
    exc = session_outcomes[where]
    if exc is not None:
        raise exc


@pytest.mark.parametrize("block", _blocks("script"), ids=str)
def test_readme_script(block: Block, shell_env: dict[str, str]) -> None:
    skip_without_gnu_tools(block.text, shell_env)
    run_script(block.text, shell_env, str(block))
    if "install -Dm644" in block.text:
        _check_installed(Path(shell_env["HOME"]), shell_env)


def _check_installed(home: Path, env: dict[str, str]) -> None:
    """The install block put each file where the README says its consumer finds it."""
    share = home / ".local" / "share"
    assert (share / "man/man1/sockserve.1").read_text() == MAN.read_text()
    completions = ROOT / "completions"
    assert (share / "bash-completion/completions/sockserve").read_text() == (
        completions / "sockserve.bash"
    ).read_text()
    assert (share / "zsh/site-functions/_sockserve").exists()
    fish_file = share / "fish/vendor_completions.d/sockserve.fish"
    assert fish_file.read_text() == (completions / "sockserve.fish").read_text()
    if shutil.which("fish"):  # fish finds it there by itself
        result = subprocess.run(
            ["fish", "-c", "complete -C'sockserve t'"],  # with its default paths: no --no-config
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert result.stdout.startswith("tcp\t"), result.stdout + result.stderr


# The helpers above, on machines unlike this one --------------------------------------------


def _tool(directory: Path, name: str, script: str) -> None:
    tool = directory / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


#: A fake ncat (Fedora's nc): it says what it is and refuses OpenBSD's -N, as ncat does.
FAKE_NCAT = """\
case "$1" in -h) echo 'Ncat 7.93 ( https://nmap.org/ncat )'; exit 0;; esac
echo "ncat: invalid option -- 'N'" >&2
exit 2
"""


@pytest.mark.parametrize(
    ("first_line", "flavour"),
    [
        ("OpenBSD netcat (Debian patchlevel 1.219-1)", "openbsd"),
        ("Ncat 7.93 ( https://nmap.org/ncat )", "ncat"),
        ("BusyBox v1.35.0 (Debian 1:1.35.0-4) multi-call binary.", "busybox"),
        ("[v1.10-47]", "traditional"),
        ("usage: nc [-46AacCDdFhklMnOortUuvz] [-K tc] [-b boundif]", "unknown"),
    ],
)
def test_nc_flavour_tells_the_netcats_apart(tmp_path: Path, first_line: str, flavour: str) -> None:
    _tool(tmp_path, "nc", f"echo '{first_line}' >&2\necho 'usage: nc ...' >&2\nexit 1\n")
    assert nc_flavour(str(tmp_path)) == flavour
    assert nc_flavour(str(tmp_path / "empty")) == "none"


@pytest.mark.parametrize("nc", ["ncat", "none", "this machine's"])
def test_readme_clients_run_whatever_the_nc(tmp_path: Path, nc: str) -> None:
    """With ncat as nc, or no nc at all, the README's `nc -N` clients still run (the stand-in
    comes first on PATH); OpenBSD's nc is used as it is."""
    tools = tmp_path / "tools"
    tools.mkdir()
    if nc == "ncat":
        _tool(tools, "nc", FAKE_NCAT)
        path = f"{tools}{os.pathsep}{os.environ['PATH']}"
    elif nc == "none":  # only bash: the stand-in and the sockserve wrapper name their programs
        (tools / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
        path = str(tools)
    else:
        path = os.environ["PATH"]
    flavour = nc_flavour(path)
    assert flavour == {"ncat": "ncat", "none": "none"}.get(nc, flavour)
    env = make_shell_env(tmp_path / "env", path)
    assert (tmp_path / "env" / "bin" / "nc").exists() == (flavour != "openbsd")
    groups = (
        "sockserve tcp :9999 -H upper\necho hello | nc -N 127.0.0.1 9999  # → HELLO",
        "sockserve udp :9999 -H upper\necho hello | nc -u -w1 127.0.0.1 9999  # → HELLO",
        "sockserve unix /tmp/u.sock -H upper\necho hello | nc -N -U /tmp/u.sock  # → HELLO",
    )
    # At once, as the README's sessions are (each has its own port and directory): the udp
    # client's -w1 second then costs the test no more than itself.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups)) as pool:
        runs = [
            pool.submit(run_session, group, env, f"{nc} nc: {group.splitlines()[1]}")
            for group in groups
        ]
        for run in runs:
            run.result()


def test_gnu_only_blocks_skip_where_the_tools_are_not_gnu(tmp_path: Path) -> None:
    """BSD tools (macOS) refuse the GNU options: their blocks are named, to be skipped."""
    for name in ("install", "od", "date"):
        _tool(tmp_path, name, f"echo '{name}: illegal option' >&2\nexit 64\n")
    (tmp_path / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
    texts = [b.text for b in _blocks("script")] + [g for g, _ in SESSION_GROUPS]
    names = [name for name, _, _ in GNU_ONLY]
    needing = [t for t in texts if any(re.search(pattern, t) for _, pattern, _ in GNU_ONLY)]
    assert len(needing) == 2  # the install block; the RFC 868 time group
    bsd = {"PATH": str(tmp_path)}
    assert sorted(name for t in needing for name in missing_gnu_tools(t, bsd)) == sorted(names)
    if platform.libc_ver()[0] == "glibc":  # GNU coreutils: nothing is skipped
        gnu = {"PATH": "/usr/bin:/bin"}
        assert [name for t in needing for name in missing_gnu_tools(t, gnu)] == []


def test_readme_setup_block(shell_env: dict[str, str]) -> None:
    # The first block: step 1 installs (as .ci/run does) and starts a server; step 2 is the
    # test suite itself. Run the server part, and check CI still follows both steps.
    setup = BLOCKS[0]
    assert setup.text.splitlines() == [
        "pip install -e '.[test]' && sockserve tcp :9999 --handler upper",
        "pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]'" in ci and "-m pytest" in ci
    server = setup.text.splitlines()[0].split("&& ", 1)[1]
    run_session(f"{server}\necho hello | nc -N 127.0.0.1 9999  # → HELLO", shell_env, str(setup))


def test_readme_chat() -> None:
    # Mirrors the chat block: the server command, then two clients; bob gets alice's line.
    (block,) = [b for b in _blocks("mirror") if b.arg == "test_readme_chat"]
    server = block.text.splitlines()[0].split("#")[0].removeprefix("$ ").split()
    assert server == ["sockserve", "tcp", ":9999", "-H", "chat"]
    proc = subprocess.Popen(
        [sys.executable, "-m", *server[:2], ":0", *server[3:], "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        with (
            socket.create_connection((host, int(port)), timeout=10) as alice,
            alice.makefile("rb") as alice_file,  # closed too: a makefile keeps the fd open
        ):
            while "joined the room" not in (line := proc.stderr.readline()):  # alice is in
                assert line, "the server stopped"
            with (
                socket.create_connection((host, int(port)), timeout=10) as bob,
                bob.makefile("rb") as bob_file,
            ):
                bob_name = "{}:{}".format(*bob.getsockname())
                assert alice_file.readline() == f"* {bob_name} joined\n".encode()
                alice.sendall(b"hello, bob\n")
                alice_name = "{}:{}".format(*alice.getsockname())
                assert bob_file.readline() == f"[{alice_name}] hello, bob\n".encode()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode == 0
    shown = block.text.splitlines()
    assert shown[2].startswith("* 127.0.0.1:") and shown[2].endswith(" joined")
    assert shown[5].startswith("[127.0.0.1:") and shown[5].endswith("] hello, bob")


def test_readme_development_commands() -> None:
    # Mirrors the "Tests and benchmarks" block, one line each.
    (block,) = [b for b in _blocks("mirror") if b.arg == "test_readme_development_commands"]
    commands = [c.text for c in parse_commands(block.text)]
    assert commands[0].startswith("pytest")  # this very run
    assert "pytest" in sys.modules
    # ruff check . && ruff format --check .: the same commands CI runs.
    assert commands[1].startswith("ruff check . && ruff format --check .")
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'ruff" check .' in ci and 'ruff" format --check .' in ci
    version = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True)
    assert version.returncode == 0
    # mypy && lint-imports: CI runs both, configured in pyproject.toml.
    assert commands[2].startswith("mypy && lint-imports")
    assert '"$venv/bin/mypy"' in ci and '"$venv/bin/lint-imports"' in ci
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "[tool.mypy]" in pyproject and "[tool.importlinter]" in pyproject
    # .ci/run: exists and is executable.
    assert commands[3].startswith(".ci/run")
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    # python benchmarks/run.py: the script runs (--list is its quick mode) and writes RESULTS.md.
    assert commands[4].startswith("python benchmarks/run.py")
    bench = ROOT / "benchmarks" / "run.py"
    listing = subprocess.run(
        [sys.executable, str(bench), "--list"], capture_output=True, text=True, timeout=30
    )
    assert listing.returncode == 0 and "tcp" in listing.stdout, listing.stderr
    assert "benchmarks/RESULTS.md" in bench.read_text()


def test_readme_script_files() -> None:
    """Each --script example in the README is its file under examples/, verbatim (the file
    named in its `--script` comment line); tests/test_builtins_script.py runs them."""
    blocks = [b for b in _blocks("mirror") if b.arg == "test_readme_script_files"]
    assert len(blocks) == 2
    for block in blocks:
        named = re.search(r"--script (examples/\S+\.script)", block.text)
        assert named, block
        assert block.text + "\n" == (ROOT / named[1]).read_text(), block
