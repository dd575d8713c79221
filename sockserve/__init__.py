"""sockserve: a socket server for the command line, on its own socketserver framework.

`import sockserve as socketserver` gives the same public names as the stdlib module; this
module imports nothing but the framework. The package, from the command line down (each
layer imports only the ones below it; ARCHITECTURE.md is the map):

- `cli` (click), `options` (its parameter types), `helptext` (help, man page, completions)
- `config`: the validated ServeConfig; `addresses`, `loading` parse ADDRESS and HANDLER
- `runner`: one run; `lifecycle` (signals, stop, drain), `monitor` (counts, children's
  events), `workers` (--workers)
- `compose`: a server from the parts a config needs (`parts/`: one concern each)
- `builtins/`: the builtin handlers, a pure core each; `event`: the asyncio event mode
- `watch`, `watch_asyncio`: the watched connection every handler's socket or transport can
  go through (-vv, later faults)
- `events` (the one events interface), `console` (its reporters), `errors`; `logs` sends
  the event loop's log records to the reporter (nothing else in a run logs)
- `arrival`, `arrival_asyncio`: replies from a datagram's arrival address (0.0.0.0, [::])
- `socketserver/`: the framework, a drop-in for the stdlib's
"""

from __future__ import annotations

from .socketserver import *  # noqa: F403
from .socketserver import __all__ as _framework_all

__version__ = "0.1.0"

__all__ = [*_framework_all]
