"""Start-up: the real command, as the `sockserve` program and as `python -m sockserve`.

- Both serve; the program is the `[project.scripts]` entry point `sockserve.cli:main`.
- `--version` prints one line, and exits 1 quietly into a closed pipe (as click does).
- What a run sets up: the collector on while serving, CPU pinning, logging to the reporter.
- Errors: usage errors are click's (same output as the click command, exit 2), a failing
  handler module is imported once, environment errors are the command's (exit 1); shell
  completion is answered by the program itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sockserve import cli

# -- the real command -----------------------------------------------------------------------------


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


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_one_line_with_the_python_version(flag: str) -> None:
    """The program prints what the click command prints."""
    out = subprocess.run(
        [sys.executable, "-m", "sockserve", flag], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout == CliRunner().invoke(cli.main, [flag]).output
    (version,) = out.stdout.splitlines()
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
    # A pip-generated entry point: it calls the same function as `python -m sockserve`.
    assert "from sockserve.cli import main" in script.read_text()


#: What a plain run (`sockserve tcp ADDRESS`, a builtin in thread mode) never needs: the
#: completion code, what only some specs, escapes, modes, families or socket types use.
NOT_FOR_A_PLAIN_RUN = {
    "click.shell_completion",
    "sockserve.completion",
    "unicodedata",
    "queue",
    "sockserve.parts.accept_batch",
    "sockserve.parts.unix_file",
    "sockserve.parts.watching",
    "sockserve.builtins.datagram",
    "sockserve.inherited",
    "sockserve.upstreams",
}


def test_a_plain_run_imports_only_what_it_uses() -> None:
    """The real command, serving one connection: none of NOT_FOR_A_PLAIN_RUN is imported."""
    command = [sys.executable, "-X", "importtime", "-m", "sockserve", *SERVE_ARGS, "-c", "thread"]
    lines, err = _serve_once(command, reply=b"ping")
    assert lines == []
    imported = {line.split("|")[-1].strip() for line in err.splitlines() if "|" in line}
    assert "sockserve.runner" in imported  # the report lists what the run imported
    assert imported & NOT_FOR_A_PLAIN_RUN == set()


GC_STATE_HANDLER = """
import gc
import sockserve as socketserver

class GcState(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(100)
        self.request.sendall(f"enabled={gc.isenabled()}".encode())
"""


@pytest.mark.parametrize("options", [["-c", "thread"], ["-c", "fork"], ["--workers", "2"]])
@pytest.mark.parametrize("how", ["command", "python -m"])
def test_the_collector_is_back_on_while_serving(
    tmp_path: Path, how: str, options: list[str]
) -> None:
    """Requests run with the cyclic garbage collector on, in every mode."""
    script = Path(sys.executable).with_name("sockserve")
    if how == "command" and not script.exists():
        pytest.skip("the console script is not installed next to this Python")
    (tmp_path / "gcstate.py").write_text(GC_STATE_HANDLER)
    command = [str(script)] if how == "command" else [sys.executable, "-m", "sockserve"]
    workers = "--workers" in options  # --once counts in one process: a signal stops them
    serve_args = [a for a in SERVE_ARGS if a != "--once"] if workers else SERVE_ARGS
    args = [*serve_args, *options, "-H", f"{tmp_path / 'gcstate.py'}:GcState"]
    lines, err = _serve_once([*command, *args], reply=b"enabled=True", stop=workers)
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


def test_logging_goes_to_the_reporter() -> None:
    """The `sockserve` loggers reach the reporter: warnings shown, debug only with -vv."""
    code = textwrap.dedent(
        """
        import io, logging
        from sockserve.console import PlainReporter
        from sockserve.logs import setup_logging
        out = io.StringIO()
        setup_logging(PlainReporter(out), 0)
        logging.getLogger("sockserve.factory").warning("careful")
        logging.getLogger("sockserve.socketserver").debug("not shown without -vv")
        print(repr(out.getvalue()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert (out.stdout.strip(), out.stderr) == ("'warning: careful\\n'", "")


# -- errors ---------------------------------------------------------------------------------------

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
    """The module runs once: its failure is reported, not retried."""
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


def test_the_program_answers_completion_requests() -> None:
    """The shell scripts run the program with click's completion variables set."""
    env = dict(os.environ, _SOCKSERVE_COMPLETE="bash_complete", COMP_WORDS="sockserve u")
    env["COMP_CWORD"] = "1"
    script = Path(sys.executable).with_name("sockserve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sockserve"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == ["plain,udp", "plain,unix", "plain,unix-dgram"]
