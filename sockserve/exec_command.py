"""What --exec and --sh-exec run: the command split into argv, checked at start-up.

The exec builtin (`sockserve.builtins.program`) runs an `ExecSpec` per connection or datagram.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Literal

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
    if shutil.which(program) is None:
        return f"{program} is not found in PATH"
    return None
