"""Parsers under fuzzing: every input gives a value or a one-line error, never a traceback.

The address parser, the transport resolver and the handler-spec loader are fed arbitrary text
(hypothesis, derandomized so that every run tries the same inputs) and hostile pieces: unicode
digits, lone surrogates, NUL, newlines, brackets, colons. Through click, the same inputs exit
0 or 2 with one "Error:" line and no traceback.

Loading a handler imports code, so the fuzzer never names a module that is not imported yet
(except its own files in a temporary directory): `antigravity:x` would open a browser.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from sockserve import cli, runner
from sockserve.addresses import Address, parse_address, resolve_transport
from sockserve.errors import ExitStatus, HandlerLoadError, UsageError
from sockserve.loading import LoadedHandler, load_handler

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Pieces that parsers trip on, glued together by the strategies below.
ADDRESS_PIECES = [
    *"0123456789:[]@/.%*-_ abcfx",
    "::",
    "0.0.0.0",
    "127.0.0.1",
    "65535",
    "65536",
    "99999",
    "ffff",
    "localhost",
    "²",  # isdigit() but not int()
    "١٢",  # Arabic-Indic digits
    "\udcff",  # what an undecodable byte in argv becomes
    "\ud800",  # a lone surrogate no codec takes
    "\0",
    "\n",
    "\u2028",
    "é",
]
SPEC_PIECES = [
    *":./_ -",
    "os",
    "sys",
    "path",
    "echo",
    "x.py",
    "..",
    "sockserve",
    "sockserve.cli",
    "main",
    "socketserver",
    "BaseRequestHandler",
    "__class__",
    "__init__",
    "ssfz_good",
    "ssfz_good.py",
    "ssfz_two.py",
    "ssfz_none.py",
    "ssfz_syntax.py",
    "ssfz_raises.py",
    "ssfz_junk.py",
    "ssfz_dir",
    "Handler",
    "Other",
    "X",
    "\udcff",
    "\0",
    "\n",
    "\t",
]


def pieces(alphabet: list[str], max_size: int = 10) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(alphabet), max_size=max_size).map("".join)


def texts(alphabet: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=40), pieces(alphabet))


def assert_one_line(exc: UsageError) -> None:
    assert exc.message and "\n" not in exc.message and "\r" not in exc.message, repr(exc.message)
    assert exc.hint is None or ("\n" not in exc.hint and "\r" not in exc.hint), repr(exc.hint)


# -- addresses ---------------------------------------------------------------------------------


@FUZZ
@given(text=texts(ADDRESS_PIECES), family=st.sampled_from([None, "inet", "inet6", "unix"]))
@example(text="²", family=None)
@example(text=":١٢", family=None)
@example(text="@\udcff", family="unix")
@example(text="/tmp/\ud800", family="unix")
@example(text="/tmp/a\0b", family="unix")
@example(text="[::ffff:0.0.0.0]:0", family=None)
def test_parse_address_gives_a_value_or_a_one_line_usage_error(text: str, family: Any) -> None:
    try:
        address = parse_address(text, family)
    except UsageError as exc:
        assert_one_line(exc)
        return
    assert isinstance(address, Address)
    str(address)
    address.sockaddr()
    assert isinstance(address.all_interfaces, bool)
    if address.family == "unix":
        assert "\0" not in (address.path or "")
        os.fsencode(address.path or "")  # bind() will be able to encode it
    else:
        assert address.port is not None and 0 <= address.port <= 65535


@pytest.mark.parametrize("proto", ["tcp", "udp", "unix", "unix-dgram"])
@pytest.mark.parametrize("family", [None, "inet", "inet6", "unix"])
@pytest.mark.parametrize("socktype", [None, "stream", "dgram"])
def test_resolve_transport_every_combination(proto: str, family: Any, socktype: Any) -> None:
    try:
        fam, typ = resolve_transport(proto, family, socktype)
    except UsageError as exc:
        assert_one_line(exc)
        return
    assert typ in ("stream", "dgram")
    assert fam in (None, "inet", "inet6", "unix")


# -- handler specs -----------------------------------------------------------------------------

HANDLER_FILES = {
    "ssfz_good.py": "import sockserve\nclass Handler(sockserve.BaseRequestHandler):\n    pass\n",
    "ssfz_two.py": (
        "import sockserve\n"
        "class Handler(sockserve.BaseRequestHandler):\n    pass\n"
        "class Other(sockserve.StreamRequestHandler):\n    pass\n"
        "X = 3\n"
    ),
    "ssfz_none.py": "X = 1\n",
    "ssfz_syntax.py": "def broken(:\n",
    "ssfz_raises.py": "raise ValueError('at import\\nwith a newline')\n",
}


@pytest.fixture
def handler_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, source in HANDLER_FILES.items():
        (tmp_path / name).write_text(source)
    (tmp_path / "ssfz_junk.py").write_bytes(b"\xff\xfe\x00junk\x80\n")
    (tmp_path / "ssfz_dir").mkdir()
    monkeypatch.chdir(tmp_path)
    saved_path = list(sys.path)
    yield tmp_path
    sys.path[:] = saved_path
    for name in [m for m in sys.modules if m.startswith(("ssfz_", "sockserve_handler_ssfz"))]:
        del sys.modules[name]


def imports_nothing_new(spec: str) -> bool:
    """False when loading `spec` could import a module not yet imported (other than ours)."""
    spec = spec.strip()
    target = spec.rpartition(":")[0] if ":" in spec else spec
    if target.endswith(".py") or os.sep in target or not target:
        return True  # a file: only our temporary files exist under these names
    top = target.split(".")[0]
    if top in sys.modules or top.startswith("ssfz_"):
        return True
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return True


@FUZZ
@given(spec=texts(SPEC_PIECES))
@example(spec="\0sys\nx.py")
@example(spec="ssfz_raises.py")
@example(spec="os:path")
@example(spec="sockserve.cli:main")
@example(spec="ssfz_two.py")
@example(spec="ssfz_good:Handler")
def test_load_handler_gives_a_handler_or_a_one_line_error(handler_dir: Any, spec: str) -> None:
    assume(imports_nothing_new(spec))
    try:
        loaded = load_handler(spec)
    except HandlerLoadError as exc:
        assert_one_line(exc)
        return
    assert isinstance(loaded, LoadedHandler)
    assert loaded.builtin is not None or isinstance(loaded.cls, type)


# -- the same through click: exit 0 or 2, one error line, no traceback ---------------------------


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse only: serve() is replaced."""
    monkeypatch.setattr(runner, "serve", lambda config, reporter: ExitStatus.OK)


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli.main, args, catch_exceptions=True)


def assert_clean_exit(result: Any) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output
        assert result.output.rstrip().endswith(errors[0]), result.output  # nothing after it


@FUZZ
@given(
    proto=st.sampled_from(["tcp", "udp", "unix", "unix-dgram"]),
    address=texts(ADDRESS_PIECES),
)
def test_cli_address_fuzz_exits_0_or_2(no_serving: None, proto: str, address: str) -> None:
    assume(not address.startswith("-"))  # an option, not an address
    assert_clean_exit(invoke([proto, address]))


@FUZZ
@given(spec=texts(SPEC_PIECES), proto=st.sampled_from(["tcp", "udp"]))
def test_cli_handler_fuzz_exits_0_or_2(
    no_serving: None, handler_dir: Any, spec: str, proto: str
) -> None:
    assume(imports_nothing_new(spec) and not spec.startswith("-"))
    assert_clean_exit(invoke([proto, ":0", "-H", spec]))
