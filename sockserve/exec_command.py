"""What --exec and --sh-exec run: the command split into argv, checked at start-up.

The exec builtin (`sockserve.builtins.program`) runs an `ExecSpec` per connection or datagram.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from .errors import UsageError

StderrMode = Literal["pass", "client", "discard"]
#: Where a program's stderr goes: sockserve's stderr, line by line; the client; nowhere.
EXEC_STDERR_MODES: tuple[StderrMode, ...] = ("pass", "client", "discard")


@dataclass(frozen=True)
class ExecSpec:
    """What to run for each connection or datagram, and how.

    `argv` is the program and its arguments (`--sh-exec`: /bin/sh -c LINE); `command` is
    what the user typed, for messages. `transport` is tcp, udp, unix or unix-dgram.
    `reply_limit`: the largest reply one datagram carries. `forked`: each request runs in a
    forked child (its programs die with it).
    """

    argv: tuple[str, ...]
    command: str
    transport: str = "tcp"
    stderr: StderrMode = "pass"
    reply_limit: int = 65507
    forked: bool = False
    #: The program's path, found once in PATH (None: looked up at each start).
    executable: str | None = None


def exec_argv(exec_: str | None, sh_exec: str | None) -> tuple[str, ...]:
    """The argv of `--exec` (split as a shell would, without running one) or `--sh-exec`.

    Raises ValueError with a reason for an empty or badly quoted command.
    """
    if sh_exec is not None:
        if not sh_exec.strip():
            raise ValueError("--sh-exec needs a shell line")
        return ("/bin/sh", "-c", sh_exec)
    import shlex

    try:
        argv = tuple(shlex.split(exec_ or ""))
    except ValueError as exc:  # "No closing quotation"
        raise ValueError(f"--exec {exec_!r}: {str(exc).lower()}") from None
    if not argv:
        raise ValueError("--exec needs a program")
    return argv


def find_program(program: str) -> str | None:
    """Why `program` cannot be run (not found, not executable, a directory), or None."""
    if os.sep in program:
        if not os.path.exists(program):
            return f"{program} does not exist"
        if os.path.isdir(program):
            return f"{program} is a directory"
        if not os.access(program, os.X_OK):
            return f"{program} is not executable"
        return None
    import shutil  # --exec only: the command's other runs never load it

    if shutil.which(program) is None:
        return f"{program} is not found in PATH"
    return None


def exec_handler(handler: Any, exec_: str | None, sh_exec: str | None) -> Any:
    """The handler --exec or --sh-exec implies ("exec"), refusing another explicit -H
    (`handler`: the -H given, as text or loaded; None when not given)."""
    given = [
        name for name, value in (("--exec", exec_), ("--sh-exec", sh_exec)) if value is not None
    ]
    if len(given) > 1:
        raise UsageError("--exec and --sh-exec cannot be combined", hint="give only one of them")
    if not given:
        return handler
    name = handler if isinstance(handler, str) or handler is None else str(handler.name)
    if name is not None and name.strip() != "exec":
        raise UsageError(
            f"{given[0]} runs a program as the handler (-H exec): it cannot be combined with "
            f"-H {name}",
            hint=f"drop -H {name}, or drop {given[0]}",
        )
    return "exec"


def check_exec(
    builtin: str | None, exec_: str | None, sh_exec: str | None, exec_stderr: str | None
) -> None:
    """The rules of --exec, --sh-exec and --exec-stderr; the program is looked for now.

    Raises UsageError.
    """
    running = exec_ is not None or sh_exec is not None
    if builtin == "exec" and not running:
        raise UsageError("-H exec needs --exec PROGRAM or --sh-exec LINE")
    if not running:
        if exec_stderr is not None:
            raise UsageError(
                "--exec-stderr only applies with --exec or --sh-exec", hint="drop --exec-stderr"
            )
        return
    option = "--exec" if exec_ is not None else "--sh-exec"
    if exec_stderr is not None and exec_stderr not in EXEC_STDERR_MODES:
        raise UsageError(
            f"unknown --exec-stderr {exec_stderr!r}", hint="use pass, client or discard"
        )
    try:
        argv = exec_argv(exec_, sh_exec)
    except ValueError as exc:
        raise UsageError(str(exc), hint=f"e.g. {option} 'cat -u'") from None
    problem = find_program(argv[0])
    if problem is not None:
        raise UsageError(f"{option}: {problem}", hint="check the program's name or path")


def check_exec_mode(
    exec_: str | None, sh_exec: str | None, concurrency: str, timeout: float | None
) -> None:
    """Refuse what a program per connection cannot run with: event mode, --timeout."""
    if exec_ is None and sh_exec is None:
        return
    option = "--exec" if exec_ is not None else "--sh-exec"
    if concurrency == "event":
        raise UsageError(
            f"{option} waits for a program per connection: --concurrency event does not run it",
            hint="use -c thread (the default for streams), fork or sync",
        )
    if timeout is not None:
        raise UsageError(
            f"--timeout watches a connection the handler reads: with {option} the program reads it",
            hint="drop --timeout (the program may time out by itself)",
        )
