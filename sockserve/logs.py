"""The `sockserve` loggers to the reporter: what the event loop (`event.py`) logs.

Nothing else in a run logs (the framework prints as the stdlib's does, the server parts tell
the run's monitor), so only event mode sets this up, and other runs never load `logging`.
"""

from __future__ import annotations

import logging

from .console import PlainReporter

__all__ = ["ReporterLogHandler", "setup_logging"]


class ReporterLogHandler(logging.Handler):
    """Route log records to the reporter as error, warning or info."""

    def __init__(self, reporter: PlainReporter) -> None:
        super().__init__()
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        """Pass the record on as the reporter's event."""
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                self.reporter.handler_error(None, record.exc_info[1])
            elif record.levelno >= logging.WARNING:
                self.reporter.warning(message)
            else:
                self.reporter.info(message)
        except Exception:  # pragma: no cover - never let logging break serving
            self.handleError(record)


def setup_logging(reporter: PlainReporter, verbosity: int) -> None:
    """Send the `sockserve` loggers to the reporter; -vv shows debug records."""
    root = logging.getLogger("sockserve")
    for handler in list(root.handlers):
        if isinstance(handler, ReporterLogHandler):
            root.removeHandler(handler)
    root.addHandler(ReporterLogHandler(reporter))
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    root.propagate = False
