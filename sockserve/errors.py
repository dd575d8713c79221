"""Errors the tool raises, and the exit codes it returns.

Deep code raises a `SockserveError` (message plus an optional hint); only `cli` catches it,
prints it in one line and exits with the error's `exit_status`. The subclasses say whose fault
an error is: the user's input, the environment, or the handler's code.
"""

from __future__ import annotations

import enum

#: What a handler (or an asyncio protocol) may raise that the command reports as the handler's
#: error, counts, and survives: any Exception, and SystemExit or KeyboardInterrupt too (the
#: command's rule: a handler cannot stop the server). The framework lets those two through, as
#: the stdlib's socketserver does; the tool's server parts and the event loop's watch catch them.
HANDLER_EXITS: tuple[type[BaseException], ...] = (SystemExit, KeyboardInterrupt)
HANDLER_ERRORS: tuple[type[BaseException], ...] = (Exception, *HANDLER_EXITS)


class ExitStatus(enum.IntEnum):
    """Exit codes of the `sockserve` command."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130


class SockserveError(Exception):
    """An error to show the user in one line, with a hint on how to fix it."""

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the hint in one line, as a usage error shows them."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(SockserveError):
    """The user's input is wrong (bad address, contradicting options): exit 2."""

    exit_status = ExitStatus.USAGE


class HandlerLoadError(UsageError):
    """The handler spec cannot be resolved to a usable handler class."""


class EnvironmentProblem(SockserveError):
    """The machine refuses (address in use, permission denied, path not a socket): exit 1."""
