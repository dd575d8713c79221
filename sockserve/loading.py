"""Resolve `--handler` to a handler: a builtin name, `module:Class`, `file.py:Class`, `file.py`.

A handler is a request handler class (a subclass of sockserve's or the stdlib's
`BaseRequestHandler`) for sync/thread/fork, or an asyncio protocol class for `--concurrency
event`; `load_handler` returns it as a LoadedHandler. Every failure is a HandlerLoadError with
one line to show the user; an exception raised while the user's module runs is reported with
its file and line, not re-raised (it is the HandlerLoadError's `__cause__`: `--traceback`
shows it).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import socketserver as ours
from .errors import HandlerLoadError

#: What sockets a handler serves: a builtin (any), a request handler class for streams,
#: datagrams or both, or an asyncio protocol class for event mode.
Kind = Literal["builtin", "stream", "dgram", "any", "protocol", "datagram-protocol"]

#: The builtin handlers' names.
BUILTIN_NAMES = (
    "echo",
    "upper",
    "discard",
    "stdout",
    "stdio",
    "chargen",
    "daytime",
    "time",
    "reply",
    "broadcast",
    "chat",
    "exec",
    "script",
    "forward",
)
#: The builtins that put their clients in one room (`builtins.rooms`).
ROOM_BUILTINS = frozenset({"broadcast", "chat"})
#: What broadcast and chat do with a client that falls behind (`builtins.rooms`).
SlowClient = Literal["disconnect", "drop", "block"]
SLOW_CLIENT_POLICIES: tuple[SlowClient, ...] = ("disconnect", "drop", "block")
#: Builtins that run only with an option naming what they serve (-H replay --transcript
#: FILE): loaded as the others, but not in BUILTIN_NAMES, whose builtins need nothing more.
OPTION_BUILTIN_NAMES = ("replay",)


@dataclass(frozen=True)
class LoadedHandler:
    """A resolved handler: `builtin` names a builtin, else `cls` is the user's class."""

    name: str
    builtin: str | None = None
    cls: Any = None
    kind: Kind = "builtin"


def builtin_handler(spec: str) -> LoadedHandler | None:
    """The LoadedHandler of a builtin's name; None for any other spec."""
    name = spec.strip()
    known = name in BUILTIN_NAMES or name in OPTION_BUILTIN_NAMES
    return LoadedHandler(name=name, builtin=name) if known else None


#: What -H takes (exec is what --exec and --sh-exec imply: not named here).
FORMS = (
    "a builtin ("
    + ", ".join(name for name in BUILTIN_NAMES if name != "exec")
    + "), module:Class, file.py:Class or file.py"
)


def load_handler(spec: str) -> LoadedHandler:
    """Resolve `spec`; raise HandlerLoadError with a one-line reason."""
    builtin = builtin_handler(spec)
    if builtin is not None:
        return builtin
    import unicodedata  # a spec of the user's, or an error: a builtin's name never loads it

    spec = spec.strip()
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in spec):
        raise HandlerLoadError(f"bad handler {spec!r}: control characters", hint=f"use {FORMS}")
    target, sep, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not sep:
        target, attr = spec, ""
    if not target:
        raise HandlerLoadError(f"bad handler {spec!r}", hint=f"use {FORMS}")
    if target.endswith(".py") or os.sep in target:
        module = _import_file(target)
    elif not sep:
        raise HandlerLoadError(
            f"unknown handler {spec!r}: not a builtin, and no :Class given", hint=f"use {FORMS}"
        )
    else:
        module = _import_module(target)
    if sep and not attr:
        raise HandlerLoadError(f"bad handler {spec!r}: no name after ':'", hint=f"use {FORMS}")
    if not attr:
        cls = _only_handler_in(module, target)
    else:
        cls = _lookup(module, attr, target)
    kind = handler_kind(cls)
    if kind is None:
        what = type(cls).__name__ if not isinstance(cls, type) else f"class {cls.__name__}"
        raise HandlerLoadError(
            f"{target}:{attr} is not a handler class (it is a {what})",
            hint="subclass socketserver.BaseRequestHandler (or asyncio.Protocol for -c event)",
        )
    return LoadedHandler(name=f"{target}:{cls.__qualname__}", cls=cls, kind=kind)


def _searched_first(folder: str, load: Callable[[Any], Any], arg: Any) -> Any:
    """Return `load(arg)`, run with `folder` first on sys.path, which then stays last.

    While the named module runs, its folder comes first, as when running it as a script. Then
    the folder moves to the end: sibling modules the handler imports later are still found,
    but no stray file there (json.py, signal.py...) shadows a module imported afterwards.
    """
    if "" in sys.path or folder in sys.path:
        return load(arg)
    sys.path.insert(0, folder)
    try:
        return load(arg)
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.append(folder)


def _import_module(name: str) -> Any:
    try:  # like `python -m`, modules in the cwd are found
        return _searched_first(os.getcwd(), importlib.import_module, name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise HandlerLoadError(
                f"no module named {exc.name!r}",
                hint="check the spelling, install the package, or run from its directory",
            ) from None
        raise _raised_by_user_code(name, exc) from exc
    except Exception as exc:
        raise _raised_by_user_code(name, exc) from exc


def _import_file(path: str) -> Any:
    if not os.path.exists(path):
        raise HandlerLoadError(f"handler file {path} does not exist", hint="check the path")
    if os.path.isdir(path):
        raise HandlerLoadError(f"{path} is a directory", hint="name a .py file in it")
    real = os.path.realpath(path)
    stem = os.path.splitext(os.path.basename(real))[0]
    modname = f"sockserve_handler_{stem}_{abs(hash(real)):x}"
    if modname in sys.modules:
        return sys.modules[modname]
    import importlib.util  # a handler file only: a builtin or module:Class never loads it

    spec = importlib.util.spec_from_file_location(modname, real)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot load {path} as Python", hint="name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:  # sibling modules import, as in a script
        _searched_first(os.path.dirname(real), spec.loader.exec_module, module)
    except BaseException as exc:
        del sys.modules[modname]
        if not isinstance(exc, Exception):
            raise
        raise _raised_by_user_code(path, exc) from exc
    return module


def _raised_by_user_code(where: str, exc: BaseException) -> HandlerLoadError:
    """One line for an exception raised while importing the user's code: where and what."""
    if isinstance(exc, SyntaxError):
        place = f"{exc.filename}, line {exc.lineno}"
        return HandlerLoadError(
            _one_line(f"syntax error in {place}: {exc.msg}"),
            hint="fix the handler file and try again",
        )
    import traceback  # a failing import of the user's code only

    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "importlib" not in f.filename]
    location = f" ({user[-1].filename}, line {user[-1].lineno})" if user else ""
    return HandlerLoadError(
        _one_line(f"importing {where} failed: {type(exc).__name__}: {exc}{location}"),
        hint="fix the error in the handler's code (--traceback shows where it was raised)",
    )


def _one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped, as repr() shows them."""
    import unicodedata

    return "".join(
        repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text
    )


def _lookup(module: Any, attr: str, target: str) -> Any:
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = ", ".join(sorted(_handlers_in(module))) or "none"
            raise HandlerLoadError(
                f"{target} has no attribute {attr!r} (handler classes there: {found})",
                hint="check the name after ':'",
            ) from None
    return obj


def _handlers_in(module: Any) -> dict[str, type]:
    """The handler classes defined in `module` itself (not imported into it)."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and getattr(obj, "__module__", None) == module.__name__
        and handler_kind(obj) is not None
    }


def _only_handler_in(module: Any, target: str) -> type:
    found = _handlers_in(module)
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise HandlerLoadError(
            f"{target} defines no handler class",
            hint="define a subclass of socketserver.BaseRequestHandler in it",
        )
    names = ", ".join(sorted(found))
    raise HandlerLoadError(
        f"{target} defines several handler classes ({names})",
        hint=f"pick one with {target}:{sorted(found)[0]}",
    )


def _handler_bases() -> dict[str, tuple[type, ...]]:
    """Our framework's handler classes and, when a module imported it, the stdlib's."""
    bases: dict[str, tuple[type, ...]] = {
        "base": (ours.BaseRequestHandler,),
        "stream": (ours.StreamRequestHandler,),
        "dgram": (ours.DatagramRequestHandler,),
    }
    stdlib = sys.modules.get("socketserver")
    if stdlib is not None:
        bases["base"] += (stdlib.BaseRequestHandler,)
        bases["stream"] += (stdlib.StreamRequestHandler,)
        bases["dgram"] += (stdlib.DatagramRequestHandler,)
    return bases


def handler_kind(obj: Any) -> Kind | None:
    """What sockets a class can serve, or None when it is no handler class."""
    if not isinstance(obj, type):
        return None
    bases = _handler_bases()
    if issubclass(obj, bases["stream"]):
        return "stream"
    if issubclass(obj, bases["dgram"]):
        return "dgram"
    if issubclass(obj, bases["base"]):
        return "any"
    asyncio = sys.modules.get("asyncio")  # a protocol class means its module imported asyncio
    if asyncio is not None:
        if issubclass(obj, asyncio.DatagramProtocol):
            return "datagram-protocol"
        if issubclass(obj, (asyncio.Protocol, asyncio.BufferedProtocol)):
            return "protocol"
    return None


def check_compatible(handler: LoadedHandler, socktype: str, concurrency: str) -> None:
    """Refuse a handler that cannot serve `socktype` sockets in `concurrency` mode."""
    kind = handler.kind
    if kind == "builtin" or (kind == "any" and concurrency != "event"):
        return
    proto = "tcp/unix" if socktype == "stream" else "udp/unix-dgram"
    if kind in ("stream", "dgram", "any"):
        if concurrency == "event":
            raise HandlerLoadError(
                f"{handler.name} is a request handler class; --concurrency event runs asyncio "
                "protocols",
                hint="use -c thread/fork/sync, or write an asyncio.Protocol subclass",
            )
        if kind != socktype:
            other = "udp or unix-dgram" if kind == "dgram" else "tcp or unix"
            raise HandlerLoadError(
                f"{handler.name} is a {kind} handler and cannot serve {proto} ({socktype})",
                hint=f"use it with {other}",
            )
        return
    if concurrency != "event":
        raise HandlerLoadError(
            f"{handler.name} is an asyncio protocol: it runs only with --concurrency event",
            hint="add -c event",
        )
    wanted = "protocol" if socktype == "stream" else "datagram-protocol"
    if kind != wanted:
        base = "asyncio.Protocol" if socktype == "stream" else "asyncio.DatagramProtocol"
        raise HandlerLoadError(
            f"{handler.name} cannot serve {proto} ({socktype})", hint=f"subclass {base} for it"
        )
