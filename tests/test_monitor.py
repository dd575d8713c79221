"""monitor: RunMonitor counts the run's events, passes them on, forwards them from children."""

from __future__ import annotations

import errno
import io
import json
import os
from typing import Any

import pytest

from sockserve.addresses import parse_address
from sockserve.builtins import OutputClosed
from sockserve.builtins.output import OutputFailed
from sockserve.config import ServeConfig
from sockserve.console import JsonReporter, PlainReporter
from sockserve.events import Events, RemoteError
from sockserve.loading import load_handler
from sockserve.monitor import RunMonitor

CLIENT = ("127.0.0.1", 4000)


def make_config(concurrency: str = "thread", socktype: str = "stream", verbosity: int = 1) -> Any:
    return ServeConfig(
        family="inet",
        socktype=socktype,
        address=parse_address("127.0.0.1:0", "inet"),
        handler=load_handler("echo"),
        concurrency=concurrency,  # type: ignore[arg-type]  # a str from the parametrization
        verbosity=verbosity,
    )


def make_monitor(
    concurrency: str = "thread", socktype: str = "stream", json_output: bool = False
) -> tuple[RunMonitor, io.StringIO]:
    out = io.StringIO()
    reporter = JsonReporter(out, 1) if json_output else PlainReporter(out, verbosity=1)
    return RunMonitor(reporter, make_config(concurrency, socktype)), out


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_the_monitor_and_the_reporters_are_events() -> None:
    monitor, _ = make_monitor()
    implementations: list[Events] = [monitor, monitor.reporter]  # checked by mypy
    for events in implementations:
        for name in ("connected", "record", "data", "handler_error", "warning", "info"):
            assert callable(getattr(events, name))
        assert isinstance(events.wants_data, bool) and isinstance(events.wants_counts, bool)


def test_events_are_counted_and_passed_on_unchanged() -> None:
    monitor, out = make_monitor()
    monitor.connected(CLIENT)
    monitor.data(CLIENT, "in", b"ab")
    monitor.record(CLIENT, 2, 3)
    monitor.warning("careful")
    monitor.info("note")
    monitor.handler_error(CLIENT, raised(ValueError("bad")))
    stats = monitor.stats
    assert (stats.connections, stats.requests, stats.bytes_in, stats.bytes_out) == (1, 1, 2, 3)
    assert stats.errors == 1
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["connect 127.0.0.1:4000", "< 127.0.0.1:4000 2 B"]
    assert lines[3:6] == ["close 127.0.0.1:4000 (2 B in, 3 B out)", "warning: careful", "note"]
    assert lines[6] == "error handling 127.0.0.1:4000: ValueError: bad"
    assert lines[7] == "Traceback (most recent call last):"


def test_the_reporter_learns_the_socket_type() -> None:
    monitor, out = make_monitor("thread", "dgram")
    assert monitor.reporter.socktype == "dgram"
    monitor.record(CLIENT, 4, 8)
    assert out.getvalue() == "datagram 127.0.0.1:4000: 4 B in, 8 B out\n"


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (TimeoutError("idle"), "closed idle connection 127.0.0.1:4000"),
        (ConnectionResetError(104, "Connection reset by peer"), "went away: Connection reset"),
        (BrokenPipeError(32, "Broken pipe"), "client 127.0.0.1:4000 went away: Broken pipe"),
    ],
)
def test_what_is_not_the_handlers_fault_is_one_line_of_info(exc: Exception, line: str) -> None:
    monitor, out = make_monitor()
    monitor.handler_error(CLIENT, exc)
    assert line in out.getvalue() and "error" not in out.getvalue()
    assert monitor.stats.errors == 0


def test_output_closed_stops_the_run_once() -> None:
    monitor, out = make_monitor()
    reasons: list[str] = []
    monitor.on_stop = reasons.append
    monitor.handler_error(CLIENT, OutputClosed())
    monitor.handler_error(CLIENT, OutputClosed())
    assert (monitor.output_closed, monitor.stop_reason, reasons) == (
        True,
        "stdout closed",
        ["stdout closed"],
    )
    assert out.getvalue() == ""


def test_failed_output_stops_the_run_with_one_fatal_error() -> None:
    """A full disk: the run stops, and ends with the first failure's error (exit 1)."""
    monitor, out = make_monitor()
    reasons: list[str] = []
    monitor.on_stop = reasons.append
    full = OSError(errno.ENOSPC, "No space left on device")
    monitor.handler_error(CLIENT, OutputFailed(full))
    monitor.handler_error(CLIENT, OutputFailed(OSError(errno.EIO, "Input/output error")))
    assert monitor.fatal is not None and monitor.output_closed
    assert monitor.fatal.message == "cannot write to stdout: no space left on device"
    assert monitor.fatal.hint == "free some space where stdout goes, or redirect it elsewhere"
    assert (monitor.stop_reason, reasons, monitor.stats.errors) == (
        "stdout failed",
        ["stdout failed"],
        1,
    )
    assert out.getvalue() == ""  # the command prints the error, once


def in_a_child(monitor: RunMonitor, *events: tuple[str, Any]) -> None:
    """Fork; the child calls the monitor's methods, then leaves; the parent polls."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            for method, args in events:
                getattr(monitor, method)(*args)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    monitor.poll()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
@pytest.mark.parametrize("json_output", [False, True])
def test_a_childs_error_reaches_the_reporter_with_its_traceback(json_output: bool) -> None:
    monitor, out = make_monitor("fork", json_output=json_output)
    try:
        in_a_child(monitor, ("handler_error", (CLIENT, raised(KeyError("k")))))
    finally:
        monitor.close()
    assert monitor.stats.errors == 1
    if json_output:
        (event,) = [json.loads(line) for line in out.getvalue().splitlines()]
        assert (event["event"], event["error"], event["message"]) == ("error", "KeyError", "'k'")
        assert event["traceback"].startswith("Traceback (most recent call last):")
    else:
        lines = out.getvalue().splitlines()
        assert lines[0] == "error handling 127.0.0.1:4000: KeyError: 'k'"
        assert lines[1] == "Traceback (most recent call last):"
        assert lines[-1] == "KeyError: 'k'"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_childs_info_and_closed_output_reach_the_parent() -> None:
    monitor, out = make_monitor("fork")
    reasons: list[str] = []
    monitor.on_stop = reasons.append
    try:
        in_a_child(
            monitor,
            ("handler_error", (CLIENT, TimeoutError("idle"))),
            ("handler_error", (CLIENT, OutputClosed())),
        )
    finally:
        monitor.close()
    assert out.getvalue() == "closed idle connection 127.0.0.1:4000\n"
    assert reasons == ["stdout closed"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_childs_failed_output_reaches_the_parent() -> None:
    monitor, _ = make_monitor("fork")
    full = OutputFailed(OSError(errno.ENOSPC, "No space left on device"))
    try:
        in_a_child(monitor, ("handler_error", (CLIENT, full)))
    finally:
        monitor.close()
    assert monitor.fatal is not None and monitor.stop_reason == "stdout failed"
    assert (monitor.fatal.message, monitor.fatal.hint) == (full.message, full.hint)


def test_a_remote_error_bears_the_childs_type_name() -> None:
    from sockserve.events import remote_error

    exc = remote_error("KeyError", "'k'", "Traceback ...")
    assert isinstance(exc, RemoteError) and type(exc).__name__ == "KeyError"
    assert (str(exc), exc.tb) == ("'k'", "Traceback ...")
    assert type(remote_error("not a name", "m", None)) is RemoteError
    assert type(remote_error("KeyError", "other", None)) is type(exc)  # one class per name


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_childs_upstream_event_reaches_the_parent() -> None:
    monitor, out = make_monitor("fork", json_output=True)
    try:
        in_a_child(
            monitor,
            ("upstream", (CLIENT, "tcp://127.0.0.1:5", None)),
            ("upstream", (CLIENT, "unix:///tmp/u", "Connection refused")),
        )
    finally:
        monitor.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["client"], e["upstream"], e["error"]) for e in events] == [
        ("upstream", "127.0.0.1:4000", "tcp://127.0.0.1:5", None),
        ("upstream", "127.0.0.1:4000", "unix:///tmp/u", "Connection refused"),
    ]
    monitor, out = make_monitor()
    monitor.upstream(CLIENT, "tcp://127.0.0.1:5", None)  # -v: one line
    monitor.upstream(CLIENT, "tcp://127.0.0.1:5", "Connection refused")  # the warning's
    assert out.getvalue() == "upstream 127.0.0.1:4000 -> tcp://127.0.0.1:5\n"
