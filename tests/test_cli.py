"""cli: help text, option → ServeConfig mapping (serve mocked), usage errors and exit codes."""

from __future__ import annotations

import inspect
import signal
import threading
from typing import Any

import pytest
from click.testing import CliRunner

from sockserve import cli, config, runner
from sockserve.errors import EnvironmentProblem, ExitStatus


def run(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def test_help_has_sections_examples_and_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for heading in ("Address:", "Handler:", "Concurrency:", "Lifecycle:", "Output:"):
        assert heading in result.output
    assert "Examples:" in result.output
    assert "sockserve tcp :9999" in result.output
    assert "Exit status:" in result.output
    assert "130" in result.output
    assert run("-h").output == result.output


def test_defaults_map_to_config(captured: list[Any]) -> None:
    result = run("tcp", ":9999")
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert config.transport == "tcp"
    assert config.family == "inet"
    assert config.address.host == "127.0.0.1"
    assert config.address.port == 9999
    assert config.concurrency == "thread"
    assert config.handler.builtin == "echo"
    assert config.reuse_address is True
    assert config.backlog == 2048
    assert config.grace == 5.0


def test_udp_defaults_to_sync(captured: list[Any]) -> None:
    assert run("udp", ":0", "-H", "upper").exit_code == 0
    assert captured[0].concurrency == "sync"
    assert captured[0].socktype == "dgram"


def test_every_option_maps(captured: list[Any], tmp_path: Any) -> None:
    result = run(
        "unix",
        str(tmp_path / "s"),
        "-c",
        "fork",
        "--max-children",
        "8",
        "--backlog",
        "7",
        "--no-reuse-address",
        "--timeout",
        "2.5",
        "--mode",
        "660",
        "--max-requests",
        "3",
        "--grace",
        "1",
        "--print-address",
        "--json",
        "-vv",
        "-H",
        "upper",
    )
    assert result.exit_code == 0, result.output
    c = captured[0]
    assert (c.family, c.socktype, c.concurrency) == ("unix", "stream", "fork")
    assert c.max_children == 8
    assert c.backlog == 7
    assert c.reuse_address is False
    assert c.timeout == 2.5
    assert c.mode == 0o660
    assert c.max_requests == 3
    assert c.request_limit == 3
    assert c.grace == 1
    assert c.print_address is True
    assert c.output == "json"
    assert c.verbosity == 2


def test_inet6_address(captured: list[Any]) -> None:
    assert run("tcp", "[::1]:0").exit_code == 0
    assert captured[0].family == "inet6"


def test_reply_implies_reply_handler(captured: list[Any]) -> None:
    assert run("tcp", ":0", "--reply", "hi\\r\\n").exit_code == 0
    assert captured[0].handler.builtin == "reply"
    assert captured[0].reply == b"hi\r\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tcp", "127.0.0.1:99999"], "Invalid value for 'ADDRESS'"),
        (["ftp", ":1"], "Invalid value for 'PROTO'"),
        (["tcp", ":0", "-H", "nosuchbuiltin"], "nosuchbuiltin"),
        (["tcp", ":0", "--max-children", "3"], "--max-children only applies"),
        (["tcp", ":0", "-c", "fork", "--max-threads", "3"], "--max-threads only applies"),
        (["tcp", ":0", "-c", "event", "--pin"], "--pin only applies"),
        (["tcp", ":0", "--pin", "--workers", "2"], "not with --workers"),
        (["tcp", ":0", "--family", "unix"], "--family"),
        (["udp", ":0", "--type", "stream"], "--type"),
        (["tcp", ":0", "--mode", "600"], "--mode only applies"),
        (["tcp", ":0", "--mode", "9"], "octal"),
        (["tcp", ":0", "-H", "reply"], "--reply"),
        (["tcp", ":0", "-H", "upper", "--reply", "x"], "only apply to -H reply"),
        (["tcp", ":0", "--once", "--max-requests", "2"], "cannot combine"),
        (["tcp", ":0", "--workers", "2", "--once"], "--workers"),
        (["tcp", ":0", "--timeout", "0"], "--timeout"),
        (["tcp", "127.0.0.1:9999", "--family", "inet6"], "is IPv4 but --family is inet6"),
        (["--family", "inet6", "udp", "127.0.0.1:0"], "is IPv4 but --family is inet6"),
        (["unix", "/tmp/x.sock", "--print-host-port"], "a unix socket has a path instead"),
        # Options that would do nothing (issue 15 item 14): refused, with the reason.
        (["udp", ":0", "--timeout", "1"], "--timeout closes idle connections: a datagram"),
        (["unix-dgram", "@x", "--timeout", "1"], "--timeout closes idle connections"),
        (["udp", ":0", "--backlog", "5"], "--backlog is the listen queue of a stream socket"),
        (["udp", ":0", "--backlog", "2048"], "a datagram socket does not listen"),
        (["tcp", ":0", "-c", "fork", "--daemon-threads"], "--daemon-threads only applies"),
        (["tcp", ":0", "-c", "sync", "--daemon-threads"], "--concurrency thread"),
        (["tcp", ":0", "-c", "event", "--daemon-threads"], "--daemon-threads only applies"),
        (["tcp", ":0", "-q", "-v"], "-q/--quiet and -v/--verbose cannot be combined"),
        (["tcp", ":0", "-qvv"], "give only one of them"),
    ],
)
def test_usage_errors_exit_2(captured: list[Any], args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert captured == []


def test_environment_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(config: Any, reporter: Any) -> ExitStatus:
        raise EnvironmentProblem("address 127.0.0.1:1 is already in use", hint="try :0")

    monkeypatch.setattr(runner, "serve", failing)
    result = CliRunner().invoke(cli.main, ["tcp", ":1"])
    assert result.exit_code == 1
    assert (
        result.output == "sockserve: error: address 127.0.0.1:1 is already in use\nhint: try :0\n"
    )


def test_traceback_flag_reraises(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(config: Any, reporter: Any) -> ExitStatus:
        raise EnvironmentProblem("boom")

    monkeypatch.setattr(runner, "serve", failing)
    result = CliRunner().invoke(cli.main, ["tcp", ":1", "--traceback"])
    assert isinstance(result.exception, EnvironmentProblem)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.startswith("sockserve 0.")
    assert "Python 3." in result.output


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script(shell: str) -> None:
    result = run("--completion", shell)
    assert result.exit_code == 0
    assert "_SOCKSERVE_COMPLETE" in result.output


def test_completion_of_handler_and_proto(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.shell_completion import ShellComplete

    comp = ShellComplete(cli.main, {}, "sockserve", "_SOCKSERVE_COMPLETE")
    assert [c.value for c in comp.get_completions([], "t")] == ["tcp"]
    assert [c.value for c in comp.get_completions([], "u")] == ["udp", "unix", "unix-dgram"]
    values = [c.value for c in comp.get_completions(["tcp", ":0", "-H"], "e")]
    assert values == ["echo"]
    values = [c.value for c in comp.get_completions(["tcp", ":0", "--concurrency"], "")]
    assert values == ["sync", "thread", "fork", "event"]
    items = comp.get_completions(["unix"], "/tm")
    assert items and items[0].type == "file"


def test_every_option_is_a_build_config_keyword() -> None:
    """The command passes its options on by name: `--max-threads` is `max_threads=`."""
    exposed = {p.name for p in cli.main.params if p.expose_value} - {"quiet"}  # the reporter's
    assert exposed == set(inspect.signature(config.build_config).parameters)


#: Command lines that serve (the usual ones, and click's spellings of them).
ACCEPTED = [
    ["tcp", "127.0.0.1:0"],
    ["tcp", ":0", "-H", "echo", "-c", "thread", "-q"],
    ["udp", "0.0.0.0:7", "-c", "thread", "--max-threads", "4"],
    ["tcp", ":0", "--pin", "--max-threads", "8"],
    ["tcp", "[::1]:0", "--json"],
    ["tcp", "*:0", "--family", "inet6"],
    ["--family", "inet6", "tcp", ":0"],
    ["tcp", "localhost:8080", "--type", "stream"],
    ["tcp", "9999", "-v"],
    ["tcp", ":0", "-q", "--color"],
    # Refused only when given: their defaults apply to every transport and mode.
    ["udp", ":0", "-q"],
    ["udp", ":0", "-vv", "-c", "thread", "--daemon-threads"],
    ["tcp", ":0", "-c", "fork", "--no-daemon-threads", "--backlog", "5", "--timeout", "1"],
    ["unix-dgram", "@sockserve-cli", "-c", "sync"],
    ["tcp", ":0", "--max-requests", "3", "--grace", "0"],
    ["tcp", ":0", "--timeout", "1.5", "--grace", "2."],
    ["tcp", ":0", "-c", "sync", "--workers", "2", "--reuse-port"],
    ["tcp", ":0", "--daemon-threads", "--no-block-on-close", "--no-reuse-address"],
    ["tcp", ":0", "-H", "reply", "--reply=ok"],
    ["tcp", ":0", "--handler=chargen", "--concurrency=event"],
    ["tcp", ":0", "-Hupper", "-cthread"],
    ["-q", "tcp", "-H", "time", ":0"],
    ["tcp", ":0", "-H", "upper", "-H", "echo"],
    ["--", "tcp", ":0"],
    ["unix", "/tmp/sockserve-cli.sock", "--mode", "0o660", "-c", "sync"],
    ["unix-dgram", "@sockserve-cli", "-H", "upper"],
    ["udp", "127.0.0.1:0", "-H", "stdout", "-c", "event"],
]


@pytest.mark.parametrize("args", ACCEPTED, ids=" ".join)
def test_accepted_command_lines(captured: list[Any], args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert len(captured) == 1


#: Command lines refused with a usage error.
REFUSED = [
    ["tcp", "no port"],
    ["tcp", ""],
    ["tcp", ":0", "extra"],
    ["tcp", ":0", "--once=yes"],
    ["tcp", ":0", "--max-threads", "+0"],
    ["tcp", ":0", "--backlog", "-1"],
    ["tcp", ":0", "--grace", "-1"],
    ["tcp", ":0", "-H"],
    ["TCP", ":0"],
    ["tcp", ":0", "--reply", "\\x4"],
    ["tcp", ":0", "-H", "echo", "--reply", "x"],
    ["tcp", ":0", "--reply-file", "/nonexistent/reply.txt"],
    ["tcp", ":0", "--reply-file", "/tmp"],
    ["unix", "/tmp/x.sock", "--type", "dgram"],
]


@pytest.mark.parametrize("args", REFUSED, ids=" ".join)
def test_refused_command_lines(captured: list[Any], args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert captured == []


def test_a_handler_that_cannot_serve_is_the_handler_options_error(tmp_path: Any) -> None:
    (tmp_path / "cli_lines.py").write_text(
        "import sockserve\nclass Lines(sockserve.StreamRequestHandler):\n    pass\n"
    )
    result = run("udp", ":0", "-H", str(tmp_path / "cli_lines.py"))
    assert result.exit_code == 2
    assert "Error: Invalid value for '-H' / '--handler': " in result.output
    assert "is a stream handler and cannot serve udp/unix-dgram (dgram); use it with tcp" in (
        result.output
    )


def test_called_from_python_the_command_leaves_the_process_alone(captured: list[Any]) -> None:
    """Only the program itself ignores Ctrl-C at its exit and leaves past a hung thread."""
    release = threading.Event()
    hung = threading.Thread(target=release.wait, args=(10,))  # non-daemon, as a handler's
    hung.start()
    try:
        before = signal.getsignal(signal.SIGINT)
        assert run("tcp", ":0").exit_code == 0  # SystemExit(0): no os._exit under pytest
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        release.set()
        hung.join()
    assert len(captured) == 1
