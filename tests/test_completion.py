"""Shell completion: the checked-in scripts, what each argument completes to, and real shells.

The scripts under completions/ must be what `sockserve --completion SHELL` prints today. The
shell tests drive bash, zsh and fish in a pty: type a line, press TAB, then turn the line into
`printf '<%s>' ...` (Ctrl-A, Ctrl-E) and read back the words the shell ended up with. zsh and
fish tests skip when the shell is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pexpect
import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner
from clitools import write_sockserve_wrapper

from sockserve import cli
from sockserve.completion import COMPLETION_CLASSES

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
SHELLS = ("bash", "zsh", "fish")
WORDS = re.compile(r"<([^<>]*)>")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "completions_generate", COMPLETIONS / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the checked-in scripts ------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_checked_in_script_is_what_the_cli_prints(shell: str) -> None:
    result = CliRunner().invoke(cli.main, ["--completion", shell])
    assert result.exit_code == 0, result.output
    committed = (COMPLETIONS / f"sockserve.{shell}").read_bytes()
    assert result.stdout_bytes == committed, (
        f"completions/sockserve.{shell} is stale: run python completions/generate.py"
    )


def test_generator_finds_nothing_to_rewrite() -> None:
    generate = _generator()
    rendered = generate.render()
    assert sorted(p.name for p in rendered) == sorted(f"sockserve.{s}" for s in SHELLS)
    for path, text in rendered.items():
        assert path.read_text() == text, path
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_clicks_own_source_instruction_gives_the_same_script(shell: str) -> None:
    # `_SOCKSERVE_COMPLETE=bash_source sockserve`, click's documented way, must agree.
    result = CliRunner().invoke(
        cli.main, [], prog_name="sockserve", env={"_SOCKSERVE_COMPLETE": f"{shell}_source"}
    )
    assert result.stdout_bytes == (COMPLETIONS / f"sockserve.{shell}").read_bytes()


def test_every_shell_has_a_script_and_no_more() -> None:
    assert set(COMPLETION_CLASSES) == set(SHELLS)
    assert sorted(p.name for p in COMPLETIONS.glob("sockserve.*")) == sorted(
        f"sockserve.{s}" for s in SHELLS
    )


# -- what each argument completes to (click's protocol, no shell) ---------------------------


def _complete(args: list[str], incomplete: str) -> list[tuple[str, str, str | None]]:
    comp = ShellComplete(cli.main, {}, "sockserve", "_SOCKSERVE_COMPLETE")
    return [(c.type, c.value, c.help) for c in comp.get_completions(args, incomplete)]


def test_proto_completes_the_four_transports_with_descriptions() -> None:
    items = _complete([], "")
    assert [v for _, v, _ in items] == ["tcp", "udp", "unix", "unix-dgram"]
    assert all(t == "plain" and h for t, _, h in items)
    assert [v for _, v, _ in _complete([], "u")] == ["udp", "unix", "unix-dgram"]


def test_handler_completes_builtins_then_python_files() -> None:
    items = _complete(["tcp", ":0", "--handler"], "")
    names = [v for t, v, _ in items if t == "plain"]
    assert names == ["echo", "upper", "discard", "stdout", "stdio"] + [
        "chargen",
        "daytime",
        "time",
        "reply",
        "broadcast",
        "chat",
        "script",
        "forward",
    ]
    assert ("pyfile", "", None) in items  # the shell adds *.py files and directories
    assert [(t, v) for t, v, _ in _complete(["tcp", ":0", "-H"], "e")] == [("plain", "echo")]
    assert [(t, v) for t, v, _ in _complete(["tcp", ":0", "-H"], "han")] == [("pyfile", "han")]
    assert [(t, v) for t, v, _ in _complete(["tcp", ":0", "-H"], "./e")] == [("pyfile", "./e")]
    assert _complete(["tcp", ":0", "-H"], "mod.py:") == []


def test_choices_complete_with_descriptions() -> None:
    items = _complete(["tcp", ":0", "-c"], "")
    assert [v for _, v, _ in items] == ["sync", "thread", "fork", "event"]
    assert all(h for _, _, h in items)
    assert [v for _, v, _ in _complete(["tcp", ":0", "--family"], "i")] == ["inet", "inet6"]
    assert [v for _, v, _ in _complete(["tcp", ":0", "--completion"], "")] == list(SHELLS)


def test_unix_addresses_and_reply_files_complete_paths() -> None:
    assert _complete(["unix"], "/tm") == [("file", "/tm", None)]
    assert _complete(["unix-dgram"], "") == [("file", "", None)]
    assert _complete(["tcp", ":0", "--reply-file"], "x")[0][0] == "file"


def test_inet_addresses_suggest_loopback_forms() -> None:
    values = [v for _, v, _ in _complete(["tcp"], "")]
    assert ":0" in values and "[::1]:0" in values
    assert _complete(["tcp"], "127.") == []


def test_options_complete_after_a_dash() -> None:
    values = [v for _, v, _ in _complete(["tcp", ":0"], "--max")]
    assert values == ["--max-threads", "--max-children", "--max-requests"]


def test_every_option_completes() -> None:
    # The scripts ask the CLI itself, so a new option completes without regenerating them.
    ctx = click.Context(cli.main, info_name="sockserve", **cli.main.context_settings)
    names = {
        name
        for p in cli.main.get_params(ctx)
        if isinstance(p, click.Option)
        for name in (*p.opts, *p.secondary_opts)
    }
    items = _complete(["tcp", ":0"], "-")
    assert {v for _, v, _ in items} == names
    assert all(h for _, _, h in items)  # each with its help, for zsh and fish


# -- real shells in a pty --------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a handler file, a text file and a subdirectory; `sockserve` on PATH."""
    base = tmp_path_factory.mktemp("compl")
    (base / "myhandler.py").write_text("")
    (base / "notes.txt").write_text("")
    (base / "subdir").mkdir()
    (base / "home").mkdir()
    bin_dir = base / "bin"
    bin_dir.mkdir()
    write_sockserve_wrapper(bin_dir)
    return base


def _env(workdir: Path) -> dict[str, str]:
    home = workdir / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASH_", "ZDOTDIR", "XDG_"))}
    env.update(
        PATH=f"{workdir / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        INPUTRC="/dev/null",
        TERM="xterm",
        LC_ALL="C.UTF-8",
    )
    return env


def _tab_complete(argv: list[str], setup: str, lines: list[str], workdir: Path) -> list[list[str]]:
    """Type each line, press TAB, and return the words of the resulting command line."""
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        env=_env(workdir),
        cwd=str(workdir),
        encoding="utf-8",
        timeout=15,
        dimensions=(40, 200),
    )
    child.delaybeforesend = None  # each line waits for the previous one's output instead
    try:
        child.sendline(setup)
        results = []
        for line in lines:
            # TAB completes; Ctrl-A / Ctrl-E wrap the line into a printf that shows each word.
            child.send(line + "\t\x01printf '<%s>' \x05; echo .\r")
            child.expect(r"(<sockserve>[^\r\n]*)\.\r\n")
            results.append(WORDS.findall(child.match.group(1))[1:])
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return results


LINES = [
    "sockserve t",
    "sockserve tcp :0 --handler e",
    "sockserve tcp :0 -H myh",
    "sockserve tcp :0 -H notes",
    "sockserve tcp :0 -c f",
    "sockserve tcp :0 --max-c",
    "sockserve unix-dgram sub",
]
EXPECTED = [
    ["tcp"],
    ["tcp", ":0", "--handler", "echo"],
    ["tcp", ":0", "-H", "myhandler.py"],
    ["tcp", ":0", "-H", "notes"],  # not a Python file: nothing to complete
    ["tcp", ":0", "-c", "fork"],
    ["tcp", ":0", "--max-children"],
]


def _check(words: list[list[str]]) -> None:
    assert words[: len(EXPECTED)] == EXPECTED
    assert words[-1][0] == "unix-dgram" and words[-1][1].rstrip("/") == "subdir"


def test_bash_completes_in_a_pty(workdir: Path) -> None:
    script = COMPLETIONS / "sockserve.bash"
    setup = f"source '{script}'"
    _check(_tab_complete(["bash", "--norc", "--noprofile", "-i"], setup, LINES, workdir))


def test_bash_lists_builtins_python_files_and_directories(workdir: Path) -> None:
    script = COMPLETIONS / "sockserve.bash"
    code = (
        f"source '{script}'; COMP_WORDS=(sockserve tcp :0 -H ''); COMP_CWORD=4; "
        "_sockserve_completion sockserve; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", code],
        env=_env(workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=15,
    ).stdout.split()
    assert out[:3] == ["echo", "upper", "discard"]
    assert "reply" in out and "myhandler.py" in out and "subdir" in out
    assert "notes.txt" not in out


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_in_a_pty(workdir: Path) -> None:
    script = COMPLETIONS / "sockserve.zsh"
    setup = f"autoload -Uz compinit && compinit -u -D && source '{script}'"
    _check(_tab_complete(["zsh", "-f", "-i"], setup, LINES, workdir))


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_in_a_pty(workdir: Path) -> None:
    script = COMPLETIONS / "sockserve.fish"
    setup = f"source '{script}'"
    _check(_tab_complete(["fish", "--no-config", "-i"], setup, LINES, workdir))


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_lists_descriptions_and_only_python_files(workdir: Path) -> None:
    script = COMPLETIONS / "sockserve.fish"
    code = f"source '{script}'; complete -C'sockserve tcp :0 -H '"
    out = subprocess.run(
        ["fish", "--no-config", "-c", code],
        env=_env(workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=15,
    ).stdout.splitlines()
    values = [line.split("\t")[0] for line in out]
    assert "echo\tsend back every byte received" in out
    assert "myhandler.py" in values and "subdir/" in values
    assert "notes.txt" not in values
