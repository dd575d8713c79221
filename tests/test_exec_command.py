"""exec_command: --exec split like argv, --sh-exec, the start-up check of the program."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockserve.config import build_config
from sockserve.errors import UsageError
from sockserve.exec_command import exec_argv, find_program


def test_exec_is_split_like_argv_without_a_shell() -> None:
    assert exec_argv("tr 'a-z' \"A-Z\"", None) == ("tr", "a-z", "A-Z")
    assert exec_argv("echo $HOME;", None) == ("echo", "$HOME;")  # no expansion, no ';'
    assert exec_argv(None, "echo $HOME; exit 3") == ("/bin/sh", "-c", "echo $HOME; exit 3")


@pytest.mark.parametrize(
    ("exec_", "sh_exec", "reason"),
    [
        ("", None, "--exec needs a program"),
        ("  ", None, "--exec needs a program"),
        ("cat 'x", None, "no closing quotation"),
        (None, "", "--sh-exec needs a shell line"),
    ],
)
def test_bad_commands(exec_: str | None, sh_exec: str | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        exec_argv(exec_, sh_exec)


def test_find_program(tmp_path: Path) -> None:
    assert find_program("cat") is None
    assert find_program("sh") is None
    assert find_program("no-such-program-x") == "no-such-program-x is not found in PATH"
    script = tmp_path / "prog"
    assert find_program(str(script)) == f"{script} does not exist"
    script.write_text("#!/bin/sh\n")
    assert find_program(str(script)) == f"{script} is not executable"
    script.chmod(0o755)
    assert find_program(str(script)) is None
    assert find_program(str(tmp_path)) == f"{tmp_path} is a directory"


def test_config_keywords_and_spec() -> None:
    config = build_config(proto="udp", address=":0", exec="tr a-z A-Z", exec_stderr="discard")
    assert config.handler.builtin == "exec"
    spec = config.exec_spec()
    assert spec.argv == ("tr", "a-z", "A-Z")
    assert (spec.transport, spec.stderr, spec.reply_limit, spec.forked) == (
        "udp",
        "discard",
        65507,
        False,
    )
    spec = build_config(
        proto="tcp", address="[::1]:0", sh_exec="cat", concurrency="fork"
    ).exec_spec()
    assert (spec.argv, spec.stderr, spec.reply_limit, spec.forked) == (
        ("/bin/sh", "-c", "cat"),
        "pass",
        65527,
        True,
    )
    assert build_config(proto="tcp", address=":0", handler="exec", exec="cat").exec == "cat"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"exec": "cat", "handler": "upper"}, "cannot be combined with -H upper"),
        ({"exec": "cat", "sh_exec": "cat"}, "--exec and --sh-exec cannot be combined"),
        ({"handler": "exec"}, "-H exec needs --exec"),
        ({"exec_stderr": "pass"}, "--exec-stderr only applies"),
        ({"exec": "cat", "exec_stderr": "loud"}, "unknown --exec-stderr 'loud'"),
        ({"exec": "cat", "concurrency": "event"}, "--concurrency event does not run it"),
        ({"sh_exec": "cat", "timeout": 1.0}, "with --sh-exec the program reads it"),
        ({"exec": "nope-not-here"}, "--exec: nope-not-here is not found in PATH"),
        ({"exec": "cat", "reply": b"x"}, "--reply/--reply-file only apply to -H reply"),
    ],
)
def test_refused_combinations(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        build_config(proto="tcp", address=":0", **options)  # type: ignore[arg-type]
