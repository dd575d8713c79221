"""loading: --handler specs → LoadedHandler, and the handler/socket-type/concurrency checks."""

from __future__ import annotations

import re
import socketserver as stdlib_ss
import sys
import textwrap
from pathlib import Path

import pytest

import sockserve
from sockserve.errors import HandlerLoadError
from sockserve.loading import BUILTIN_NAMES, check_compatible, handler_kind, load_handler


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_builtins_load_without_importing_anything() -> None:
    for name in BUILTIN_NAMES:
        loaded = load_handler(name)
        assert (loaded.builtin, loaded.name, loaded.cls, loaded.kind) == (
            name,
            name,
            None,
            "builtin",
        )
        for socktype in ("stream", "dgram"):
            for concurrency in ("sync", "thread", "fork", "event"):
                check_compatible(loaded, socktype, concurrency)


def test_file_with_class(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "h1.py",
        """
        import sockserve
        class Up(sockserve.StreamRequestHandler):
            def handle(self):
                self.wfile.write(self.rfile.readline().upper())
        class Other(sockserve.BaseRequestHandler):
            pass
        """,
    )
    loaded = load_handler(f"{path}:Up")
    assert loaded.cls.__name__ == "Up"
    assert loaded.kind == "stream"
    assert loaded.name.endswith("h1.py:Up")


def test_file_alone_with_one_handler_class(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "h2.py",
        """
        import socketserver
        from sockserve import StreamRequestHandler  # imported: not a candidate
        class Echo(socketserver.DatagramRequestHandler):
            pass
        """,
    )
    loaded = load_handler(str(path))
    assert loaded.cls.__name__ == "Echo"
    assert loaded.kind == "dgram"  # a stdlib subclass is recognised


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("X = 1\n", "defines no handler class"),
        (
            "import sockserve\n"
            "class A(sockserve.BaseRequestHandler): pass\n"
            "class B(sockserve.BaseRequestHandler): pass\n",
            r"several handler classes \(A, B\).*:A",
        ),
    ],
)
def test_file_alone_needs_exactly_one(tmp_path: Path, source: str, message: str) -> None:
    path = write(tmp_path, "h3.py", source)
    with pytest.raises(HandlerLoadError) as info:
        load_handler(str(path))
    assert re.search(message, f"{info.value}; {info.value.hint}")


def test_module_colon_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mypkg_for_sockserve"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(
        pkg,
        "proto.py",
        """
        import sockserve
        class Handler(sockserve.BaseRequestHandler):
            class Inner(sockserve.BaseRequestHandler):
                pass
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        loaded = load_handler("mypkg_for_sockserve.proto:Handler")
        assert loaded.kind == "any"
        assert load_handler("mypkg_for_sockserve.proto:Handler.Inner").cls.__name__ == "Inner"
        with pytest.raises(HandlerLoadError, match=r"no attribute 'Nope'.*Handler"):
            load_handler("mypkg_for_sockserve.proto:Nope")
    finally:
        for name in [m for m in sys.modules if m.startswith("mypkg_for_sockserve")]:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuch", "unknown handler 'nosuch'"),
        ("no_such_module_abc:X", "no module named 'no_such_module_abc'"),
        (":X", "bad handler"),
        ("socketserver:", "no name after ':'"),
        ("socketserver:TCPServer", "not a handler class"),
        ("socketserver:__doc__", "not a handler class"),
        ("/nonexistent/dir/h.py:X", "does not exist"),
    ],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(HandlerLoadError, match=message) as info:
        load_handler(spec)
    assert "\n" not in info.value.message


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.py", "x = 1\ndef f(:\n")
    with pytest.raises(HandlerLoadError, match=r"syntax error in .*bad.py, line 2"):
        load_handler(f"{path}:X")


def test_error_inside_user_module_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "boom.py", "import os\nraise RuntimeError('no config')\n")
    with pytest.raises(
        HandlerLoadError, match=r"RuntimeError: no config \(.*boom.py, line 2\)"
    ) as info:
        load_handler(f"{path}:X")
    assert "importing" in info.value.message
    # a missing import inside the user's module is not "no module named <the user's module>"
    path = write(tmp_path, "imp.py", "import no_such_dependency_xyz\n")
    with pytest.raises(HandlerLoadError, match="ModuleNotFoundError.*no_such_dependency_xyz"):
        load_handler(f"{path}:X")


def test_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "pkg.py"
    d.mkdir()
    with pytest.raises(HandlerLoadError, match="is a directory"):
        load_handler(str(d))


def test_nothing_imported_unless_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray .py file in the working directory is never run by loading a builtin."""
    marker = tmp_path / "ran"
    write(tmp_path, "echo.py", f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    assert load_handler("echo").builtin == "echo"
    assert not marker.exists()


class StreamH(sockserve.StreamRequestHandler):
    pass


class DgramH(stdlib_ss.DatagramRequestHandler):
    pass


class AnyH(stdlib_ss.BaseRequestHandler):
    pass


def test_handler_kind() -> None:
    import asyncio

    assert handler_kind(StreamH) == "stream"
    assert handler_kind(DgramH) == "dgram"
    assert handler_kind(AnyH) == "any"
    assert handler_kind(type("P", (asyncio.Protocol,), {})) == "protocol"
    assert handler_kind(type("D", (asyncio.DatagramProtocol,), {})) == "datagram-protocol"
    assert handler_kind(int) is None
    assert handler_kind(3) is None


def _loaded(cls: type) -> object:
    from sockserve.loading import LoadedHandler

    return LoadedHandler(name=cls.__name__, cls=cls, kind=handler_kind(cls))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "socktype", "concurrency", "message"),
    [
        (StreamH, "dgram", "thread", "stream handler and cannot serve udp/unix-dgram"),
        (DgramH, "stream", "sync", "dgram handler and cannot serve tcp/unix"),
        (AnyH, "stream", "event", "asyncio protocols"),
    ],
)
def test_incompatible(cls: type, socktype: str, concurrency: str, message: str) -> None:
    with pytest.raises(HandlerLoadError, match=message):
        check_compatible(_loaded(cls), socktype, concurrency)  # type: ignore[arg-type]


def test_protocols_only_in_event_mode() -> None:
    import asyncio

    proto = type("P", (asyncio.Protocol,), {})
    dproto = type("D", (asyncio.DatagramProtocol,), {})
    check_compatible(_loaded(proto), "stream", "event")  # type: ignore[arg-type]
    check_compatible(_loaded(dproto), "dgram", "event")  # type: ignore[arg-type]
    with pytest.raises(HandlerLoadError, match="only with --concurrency event"):
        check_compatible(_loaded(proto), "stream", "thread")  # type: ignore[arg-type]
    with pytest.raises(HandlerLoadError, match="cannot serve udp") as info:
        check_compatible(_loaded(proto), "dgram", "event")  # type: ignore[arg-type]
    assert info.value.hint == "subclass asyncio.DatagramProtocol for it"
    for cls in (StreamH, AnyH):
        check_compatible(_loaded(cls), "stream", "fork")  # type: ignore[arg-type]


def test_builtin_names_match_the_builtin_handlers() -> None:
    """loading keeps its own list (so resolving -H imports no handler code); it must agree."""
    from sockserve.builtins import BUILTINS

    assert tuple(BUILTINS) == BUILTIN_NAMES
