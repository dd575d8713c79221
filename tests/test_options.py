"""options: each ParamType's convert, good values and bad ones (with the exact message)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from sockserve import cli
from sockserve.addresses import Address
from sockserve.loading import LoadedHandler
from sockserve.options import (
    ADDRESS,
    CONCURRENCY,
    ESCAPED_TEXT,
    HANDLER,
    OCTAL,
    POSITIVE_SECONDS,
    PROTO,
    SECONDS,
    decode_escapes,
)


def context(**params: Any) -> click.Context:
    """A context of the command whose already converted parameters are `params`."""
    ctx = click.Context(cli.main, info_name="sockserve")
    ctx.params.update(params)
    return ctx


def failure(param_type: click.ParamType, value: Any, ctx: click.Context | None = None) -> str:
    """The message `convert` fails with."""
    with pytest.raises(click.BadParameter) as info:
        param_type.convert(value, None, ctx)
    return info.value.message


# -- PROTO and CONCURRENCY ---------------------------------------------------------------------


def test_proto_takes_the_four_transports_and_describes_them() -> None:
    for name in ("tcp", "udp", "unix", "unix-dgram"):
        assert PROTO.convert(name, None, None) == name
    assert "'sctp' is not one of" in failure(PROTO, "sctp")
    items = PROTO.shell_complete(context(), None, "u")  # type: ignore[arg-type]
    assert [(i.value, bool(i.help)) for i in items] == [
        ("udp", True),
        ("unix", True),
        ("unix-dgram", True),
    ]


def test_concurrency_takes_the_four_modes() -> None:
    assert [CONCURRENCY.convert(m, None, None) for m in ("sync", "thread", "fork", "event")] == [
        "sync",
        "thread",
        "fork",
        "event",
    ]
    assert "'threads' is not one of" in failure(CONCURRENCY, "threads")


# -- ADDRESS -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "params", "expected"),
    [
        (":9999", {"proto": "tcp"}, Address("inet", "127.0.0.1", 9999)),
        ("[::1]:0", {"proto": "udp"}, Address("inet6", "::1", 0)),
        (":0", {"proto": "tcp", "family": "inet6"}, Address("inet6", "::1", 0)),
        ("*:7", {"proto": "tcp", "family": "inet6"}, Address("inet6", "::", 7)),
        ("/tmp/a.sock", {"proto": "unix"}, Address("unix", path="/tmp/a.sock")),
        ("@app", {"proto": "unix-dgram"}, Address("unix", path="app", abstract=True)),
        (":5", {}, Address("inet", "127.0.0.1", 5)),  # no PROTO yet: either inet family
    ],
)
def test_address_parses_for_the_family_proto_and_family_give(
    text: str, params: dict[str, Any], expected: Address
) -> None:
    assert ADDRESS.convert(text, None, context(**params)) == expected


def test_address_errors_are_one_line_with_the_hint() -> None:
    ctx = context(proto="tcp")
    assert failure(ADDRESS, "127.0.0.1:99999", ctx) == (
        "port 99999 is out of range; a port is 0 to 65535, and 0 lets the OS pick"
    )
    assert failure(ADDRESS, "/tmp/a.sock", ctx) == (
        "'/tmp/a.sock' looks like a path, but tcp/udp take HOST:PORT; "
        "use unix or unix-dgram for a socket file"
    )
    assert failure(ADDRESS, "127.0.0.1:80", context(proto="unix")) == (
        "'127.0.0.1:80' is an internet address, but unix sockets take a path; "
        "give a path such as /tmp/app.sock, or use tcp/udp"
    )


def test_address_is_left_as_text_when_proto_and_family_contradict() -> None:
    # The config reports the contradiction itself (test_config), before the address.
    assert ADDRESS.convert(":0", None, context(proto="tcp", family="unix")) == ":0"
    assert ADDRESS.convert("/x", None, context(proto="unix", type="dgram")) == "/x"


def test_address_already_parsed_passes_through() -> None:
    address = Address("inet", "127.0.0.1", 1)
    assert ADDRESS.convert(address, None, context(proto="tcp")) is address


# -- HANDLER -----------------------------------------------------------------------------------


def test_handler_builtin_names_resolve_without_importing() -> None:
    assert HANDLER.convert("upper", None, None) == LoadedHandler(name="upper", builtin="upper")
    loaded = LoadedHandler(name="echo", builtin="echo")
    assert HANDLER.convert(loaded, None, None) is loaded


def test_handler_file_resolves_to_its_class(tmp_path: Path) -> None:
    handler = tmp_path / "opt_lines.py"
    handler.write_text("import sockserve\nclass Lines(sockserve.StreamRequestHandler):\n    pass\n")
    loaded = HANDLER.convert(f"{handler}:Lines", None, None)
    assert isinstance(loaded, LoadedHandler)
    assert (loaded.builtin, loaded.cls.__name__, loaded.kind) == (None, "Lines", "stream")


def test_handler_errors_echo_the_spec_and_the_forms() -> None:
    assert failure(HANDLER, "nope") == (
        "unknown handler 'nope': not a builtin, and no :Class given; use a builtin "
        "(echo, upper, discard, stdout, stdio, chargen, daytime, time, reply, broadcast, chat, "
        "script, forward), "
        "module:Class, file.py:Class or file.py"
    )
    assert failure(HANDLER, "/no/such/file.py") == (
        "handler file /no/such/file.py does not exist; check the path"
    )


def test_handler_completion_imports_nothing(tmp_path: Path) -> None:
    """While the shell completes, a handler on the line is not imported."""
    handler = tmp_path / "opt_explodes.py"
    handler.write_text("raise SystemExit('imported during completion')\n")
    ctx = context(proto="tcp")
    ctx.resilient_parsing = True
    assert HANDLER.convert(str(handler), None, ctx) == str(handler)
    assert not [m for m in sys.modules if "opt_explodes" in m]


# -- OCTAL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode"),
    [("600", 0o600), ("0o660", 0o660), ("0777", 0o777), (" 0 ", 0), (0o640, 0o640)],
)
def test_octal_mode(text: Any, mode: int) -> None:
    assert OCTAL.convert(text, None, None) == mode


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9", "'9' is not an octal mode such as 600 or 660"),
        ("rw", "'rw' is not an octal mode such as 600 or 660"),
        ("1000", "'1000' is outside 000..777"),
        ("-1", "'-1' is outside 000..777"),
    ],
)
def test_octal_mode_errors(text: str, message: str) -> None:
    assert failure(OCTAL, text) == message


# -- SECONDS -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2.5", 2.5),
        ("200ms", 0.2),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("30", 30.0),
        (" 10s ", 10.0),
        ("0", 0.0),
        (5.0, 5.0),  # a default, already a number
    ],
)
def test_seconds(text: Any, seconds: float) -> None:
    assert SECONDS.convert(text, None, None) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["abc", "", "-1", "1e3", "inf", "nan", "2 m", "1.5x", "1,5", "²", "ms", "1..2"]
)
def test_seconds_errors(text: str) -> None:
    assert failure(SECONDS, text) == f"{text!r}: expected seconds, e.g. 2.5 or 200ms"


@pytest.mark.parametrize("text", ["0", "0ms", "0.0s"])
def test_positive_seconds_refuse_zero(text: str) -> None:
    assert SECONDS.convert(text, None, None) == 0
    assert failure(POSITIVE_SECONDS, text) == (
        f"{text!r}: expected more than 0 seconds, e.g. 2.5 or 200ms"
    )
    assert POSITIVE_SECONDS.convert("1ms", None, None) == pytest.approx(0.001)


# -- ESCAPED_TEXT (--reply) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("hi\\r\\n", b"hi\r\n"),
        ("HTTP/1.0 200 OK\\r\\n\\r\\nhi\\n", b"HTTP/1.0 200 OK\r\n\r\nhi\n"),
        ("\\x00\\xff\\x7F", b"\x00\xff\x7f"),
        ("\\t\\\\\\'\\\"", b"\t\\'\""),
        ("\\0\\101\\377", b"\x00A\xff"),
        ("\\a\\b\\f\\v", b"\a\b\f\v"),
        ("\\q stays", b"\\q stays"),
        ("é", "é".encode()),
        ("\\u00e9", "é".encode()),
        ("\\u20ac", "€".encode()),
        ("\\U0001F600", "😀".encode()),
        ("\\N{EURO SIGN}", "€".encode()),
        ("a\\\nb", b"ab"),
        ("\udcff", b"\xff"),  # an undecodable byte of the command line is that byte
        ("", b""),
    ],
)
def test_escaped_text(text: str, data: bytes) -> None:
    assert ESCAPED_TEXT.convert(text, None, None) == data


@pytest.mark.parametrize(
    "text", ["plain", "a\\nb\\r\\n", "\\x41\\x42", "\\\\n", "tab\\there", "\\0", "é\\n"]
)
def test_escapes_decode_as_before_for_bytes_and_ascii_escapes(text: str) -> None:
    """Without \\u escapes, the bytes are what Python's unicode_escape codec made of them."""
    assert decode_escapes(text) == text.encode().decode("unicode_escape").encode("latin-1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\\x4", "invalid escape sequence (use \\n, \\r, \\t, \\\\, \\xNN or \\uNNNN)"),
        ("ends with \\", "invalid escape sequence (use \\n, \\r, \\t, \\\\, \\xNN or \\uNNNN)"),
        ("\\u12", "invalid escape sequence (use \\n, \\r, \\t, \\\\, \\xNN or \\uNNNN)"),
        ("\\N{EURO", "invalid escape sequence (use \\n, \\r, \\t, \\\\, \\xNN or \\uNNNN)"),
        ("\\ud800", "\\ud800 names no character that UTF-8 can encode"),
        ("\\U00110000", "\\U00110000 names no character that UTF-8 can encode"),
        ("\\N{NO SUCH THING}", "\\N{NO SUCH THING} names no character that UTF-8 can encode"),
        ("\\777", "octal escape \\777 is above \\377 (one byte)"),
        ("\ud800", "the text has a character UTF-8 cannot encode"),
    ],
)
def test_escaped_text_errors(text: str, message: str) -> None:
    assert failure(ESCAPED_TEXT, text) == message


# -- through the command: usage, one "Invalid value" line, exit 2 --------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["tcp", ":0", "--timeout", "soon"],
            "Error: Invalid value for '--timeout': 'soon': expected seconds, e.g. 2.5 or 200ms",
        ),
        (
            ["tcp", ":0", "--grace", "-1"],
            "Error: Invalid value for '--grace': '-1': expected seconds, e.g. 2.5 or 200ms",
        ),
        (
            ["unix", "/tmp/x.sock", "--mode", "9"],
            "Error: Invalid value for '--mode': '9' is not an octal mode such as 600 or 660",
        ),
        (
            ["tcp", ":0", "--reply", "\\x4"],
            "Error: Invalid value for '--reply': invalid escape sequence "
            "(use \\n, \\r, \\t, \\\\, \\xNN or \\uNNNN)",
        ),
        (
            ["tcp", ":0", "-H", "nope:X"],
            "Error: Invalid value for '-H' / '--handler': no module named 'nope'; "
            "check the spelling, install the package, or run from its directory",
        ),
        (
            ["tcp", ":99999"],
            "Error: Invalid value for 'ADDRESS': port 99999 is out of range; "
            "a port is 0 to 65535, and 0 lets the OS pick",
        ),
    ],
)
def test_a_bad_value_is_a_usage_error(captured: list[Any], args: list[str], line: str) -> None:
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    assert result.output.startswith("Usage: ")
    assert result.output.rstrip("\n").splitlines()[-1] == line
    assert "Traceback" not in result.output and captured == []


def test_durations_reach_the_config(captured: list[Any]) -> None:
    result = CliRunner().invoke(cli.main, ["tcp", ":0", "--timeout", "200ms", "--grace", "2m"])
    assert result.exit_code == 0, result.output
    assert (captured[0].timeout, captured[0].grace) == (pytest.approx(0.2), 120.0)


# -- the fault options' types ------------------------------------------------------------------


def test_size_takes_powers_of_1000_and_1024() -> None:
    from sockserve.options import SIZE

    assert [SIZE.convert(v, None, None) for v in ("1500", "64K", "1.5M", "1Mi", "2Ki", "3KiB")] == [
        1500,
        64000,
        1500000,
        1048576,
        2048,
        3072,
    ]
    with pytest.raises(click.BadParameter, match="'1x': expected a size in bytes, e.g. 1500"):
        SIZE.convert("1x", None, None)


def test_rate_needs_digits_and_more_than_zero() -> None:
    from sockserve.options import RATE

    assert RATE.convert("100K", None, None) == 100000
    assert RATE.convert("1Mi/s", None, None) == 1048576
    for bad in ("K", "0", "fast"):
        with pytest.raises(click.BadParameter, match="expected bytes per second above 0"):
            RATE.convert(bad, None, None)


def test_percent_is_from_0_to_100() -> None:
    from sockserve.options import PCT

    assert PCT.convert("12.5%", None, None) == 12.5
    assert PCT.convert("0", None, None) == 0
    for bad in ("101", "-1", "lots"):
        with pytest.raises(click.BadParameter, match="expected a percentage from 0 to 100"):
            PCT.convert(bad, None, None)


def test_delay_and_chunk_pairs() -> None:
    from sockserve.options import CHUNK, DELAY

    assert DELAY.convert("50ms", None, None) == (0.05, 0.0)
    assert DELAY.convert("50ms:10ms", None, None) == (0.05, 0.01)
    assert CHUNK.convert("3", None, None) == (3, 0.0)
    assert CHUNK.convert("1K:5ms", None, None) == (1000, 0.005)
    with pytest.raises(click.BadParameter, match="expected seconds"):
        DELAY.convert("-50ms", None, None)
    with pytest.raises(click.BadParameter, match="expected writes of 1 byte or more"):
        CHUNK.convert("0", None, None)
