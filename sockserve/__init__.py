"""sockserve: a socket server for the command line, on its own socketserver framework.

`import sockserve as socketserver` gives the same public names as the stdlib module; this
module imports nothing but the framework. The package, from the command line down (each
layer imports only the ones below it; ARCHITECTURE.md is the map):

- `cli` (click), `options` (its parameter types), `helptext` (help, man page),
  `completion` (the shell completion scripts)
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
- `api`: `sockserve.serve(...)`, a server in a thread of this process; `pytest_plugin` its
  fixtures. `serve`, `serve_async` and the errors (`sockserve.UsageError`...) are loaded from
  here on first use, outside `__all__`: `import sockserve` stays the framework alone.
"""

from __future__ import annotations

from .socketserver import *  # noqa: F403
from .socketserver import __all__ as _framework_all

__version__ = "0.1.0"

__all__ = [*_framework_all]

#: Names loaded on first use (module `__getattr__`), outside `__all__`: the tool's API.
_LAZY = {
    "serve": "api",
    "serve_async": "api",
    "Server": "api",
    "SockserveError": "errors",
    "UsageError": "errors",
    "HandlerLoadError": "errors",
    "EnvironmentProblem": "errors",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
