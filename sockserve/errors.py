"""Errors the tool raises, and the exit codes it returns.

Deep code raises a `SockserveError` (message plus an optional hint); only `cli` catches it,
prints it in one line and exits with the error's `exit_status`. The subclasses say whose fault
an error is: the user's input, the environment, or the handler's code.
"""

from __future__ import annotations


class ExitStatus:
    """Exit codes of the `sockserve` command: plain ints, named (an IntEnum would add about
    0.15 ms to every start)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130


class SockserveError(Exception):
    """An error to show the user in one line, with a hint on how to fix it."""

    exit_status: int = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(SockserveError):
    """The user's input is wrong (bad address, contradicting options): exit 2."""

    exit_status = ExitStatus.USAGE


class HandlerLoadError(UsageError):
    """The handler spec cannot be resolved to a usable handler class."""


class EnvironmentProblem(SockserveError):
    """The machine refuses (address in use, permission denied, path not a socket): exit 1."""


class OptionError(Exception):
    """A command-line value the click command rejects with a usage error (exit 2).

    `param` names the parameter for click's "Invalid value for PARAM" line ('ADDRESS',
    "'-H' / '--handler'", '--reply'); None gives a plain usage error.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
