"""sockserve: a socket server for the command line, on its own socketserver framework.

`import sockserve as socketserver` gives the same public names as the stdlib module. This
module imports nothing but the framework (no click, no rich), so it stays fast to import.
"""

from __future__ import annotations

from .socketserver import *  # noqa: F403
from .socketserver import __all__ as _framework_all

__version__ = "0.1.0"

__all__ = [*_framework_all]
