"""console: formatting helpers and the three reporters (each implements events.Events)."""

from __future__ import annotations

import io
import json
import logging

from sockserve.console import (
    JsonReporter,
    PlainReporter,
    Stats,
    format_bytes,
    format_client,
    format_user_traceback,
    hexdump,
    make_reporter,
    summary_text,
)
from sockserve.logs import setup_logging


def test_format_client() -> None:
    assert format_client(("127.0.0.1", 5000)) == "127.0.0.1:5000"
    assert format_client(("::1", 5000, 0, 0)) == "[::1]:5000"
    assert format_client(("::ffff:127.0.0.1", 5000, 0, 0)) == "127.0.0.1:5000"
    assert format_client("") == "unix client"
    assert format_client("/tmp/c.sock") == "/tmp/c.sock"
    assert format_client(b"\0abstract") == "@abstract"
    assert format_client(None) == "unix client"


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"


def test_hexdump_shows_offsets_hex_and_ascii() -> None:
    lines = hexdump(b"hello\x00\xffworld, more than sixteen")
    assert lines[0].startswith("  00000000  68 65 6c 6c 6f 00 ff")
    assert lines[0].endswith("|hello..world, mo|")
    assert lines[1].startswith("  00000010  ")


def test_summary_counts_connections_or_datagrams() -> None:
    stats = Stats()
    stats.add_connection()
    stats.add_request(10, 20)
    assert "1 connection, 10 B in, 20 B out, 0 errors" in summary_text(stats, "stream")
    stats.add_error()
    assert "1 datagram," in summary_text(stats, "dgram")
    stats.add_connection()
    assert "2 connections," in summary_text(stats, "stream")
    assert summary_text(stats, "dgram").endswith("1 error")


def test_plain_reporter_lines_and_verbosity() -> None:
    out = io.StringIO()
    rep = PlainReporter(out, verbosity=0)
    rep.listening("tcp://127.0.0.1:1", {"concurrency": "thread", "handler": "echo"})
    rep.connected(("127.0.0.1", 2))
    rep.record(("127.0.0.1", 2), 3, 4)
    rep.socktype = "dgram"
    rep.record(("127.0.0.1", 2), 3, 4)  # datagrams only at -v
    lines = out.getvalue().splitlines()
    assert lines == [
        "listening on tcp://127.0.0.1:1 (thread, handler=echo)",
        "connect 127.0.0.1:2",
        "close 127.0.0.1:2",
    ]
    out = io.StringIO()
    rep = PlainReporter(out, verbosity=1)
    rep.record(("127.0.0.1", 2), 3, 4)
    assert out.getvalue() == "close 127.0.0.1:2 (3 B in, 4 B out)\n"


def test_quiet_keeps_errors_only() -> None:
    out = io.StringIO()
    rep = PlainReporter(out, quiet=True)
    rep.listening("tcp://x", {"concurrency": "sync"})
    rep.connected(("h", 1))
    rep.summary(Stats(), "stream", None)
    assert out.getvalue() == ""
    try:
        raise ValueError("bad")
    except ValueError as exc:
        rep.handler_error(("h", 1), exc)
    assert "error handling h:1: ValueError: bad" in out.getvalue()
    assert "Traceback" in out.getvalue()


def test_json_reporter_emits_one_object_per_line() -> None:
    out = io.StringIO()
    rep = JsonReporter(out)
    rep.listening("tcp://127.0.0.1:1", {"concurrency": "thread", "handler": "echo"})
    rep.connected(("127.0.0.1", 2))
    rep.record(("127.0.0.1", 2), 3, 4)
    rep.data(("127.0.0.1", 2), "in", b"\x00ab")
    rep.summary(Stats(), "stream", "SIGINT received")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["listening", "connect", "close", "data", "shutdown"]
    assert events[2]["bytes_in"] == 3
    assert events[3]["hex"] == "006162"
    assert events[4]["reason"] == "SIGINT received"
    assert all(isinstance(e["time"], float) for e in events)


def test_make_reporter_is_plain_when_not_a_tty() -> None:
    rep = make_reporter("rich", 0, False, None)
    assert type(rep) is PlainReporter  # pytest captures stderr: not a terminal
    assert isinstance(make_reporter("json"), JsonReporter)


def test_logging_goes_to_the_reporter() -> None:
    root = logging.getLogger("sockserve")
    saved = (list(root.handlers), root.propagate, root.level)
    out = io.StringIO()
    try:
        setup_logging(PlainReporter(out), 0)
        logging.getLogger("sockserve.socketserver").warning("careful")
    finally:
        root.handlers[:], root.propagate, root.level = saved
    assert out.getvalue() == "warning: careful\n"


def test_user_traceback_starts_at_the_users_frame() -> None:
    from sockserve.socketserver import BaseRequestHandler

    class Handler(BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("in handle")

    try:
        Handler(None, None, None)
    except ValueError as exc:
        assert exc.__traceback__ is not None
        exc.__traceback__ = exc.__traceback__.tb_next  # caught in the framework, as a server does
        lines = format_user_traceback(exc).splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith(f'  File "{__file__}", line ') and lines[1].endswith(", in handle")
    assert lines[-1] == "ValueError: in handle" and "socketserver" not in "".join(lines)


def test_user_traceback_without_a_user_frame() -> None:
    from sockserve.addresses import parse_address
    from sockserve.errors import UsageError

    try:
        parse_address("127.0.0.1:x", None)
    except UsageError as exc:
        assert exc.__traceback__ is not None
        exc.__traceback__ = exc.__traceback__.tb_next  # sockserve's frames only
        whole = format_user_traceback(exc)
        bare = format_user_traceback(exc, keep_all=False)
    assert "sockserve/addresses.py" in whole  # an error in sockserve itself: all of it
    assert bare == "sockserve.errors.UsageError: bad port 'x' in '127.0.0.1:x'\n"
