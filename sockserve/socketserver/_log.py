"""Loggers on first use: `logging` (about 10 ms to import) is loaded only when a record is.

`LazyLogger(name)` stands in for `logging.getLogger(name)` as a module-level `logger`.
`when_logging(key, setup)` defers a configuration until logging is loaded (or runs it at once
if it already is); it is applied once, before the first record, from whichever thread logs
first. The latest setup under a key replaces an earlier pending one.
"""

from __future__ import annotations

import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from types import ModuleType

_lock = threading.RLock()
_pending: dict[str, Callable[[ModuleType], None]] = {}
_loaded: ModuleType | None = None


def load_logging() -> ModuleType:
    """Import logging, apply the pending setups, and return the module."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            import logging

            while _pending:
                _pending.pop(next(iter(_pending)))(logging)
            _loaded = logging
    return _loaded


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)`, loading logging (and the pending setups) first."""
    return load_logging().getLogger(name)


def when_logging(key: str, setup: Callable[[ModuleType], None]) -> None:
    """Run `setup(logging)` now if logging is loaded, else just before the first record."""
    with _lock:
        if _loaded is None and "logging" not in sys.modules:
            _pending[key] = setup
            return
        _pending.pop(key, None)
    setup(load_logging())


class LazyLogger:
    """A module's logger, resolved at the first call (`logger.error(...)` and so on)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> object:
        return getattr(get_logger(self.name), attr)

    def __repr__(self) -> str:
        return f"<LazyLogger {self.name}>"
