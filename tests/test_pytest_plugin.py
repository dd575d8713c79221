"""pytest_plugin: the fixtures a user's pytest run gets by installing sockserve, run as a user
runs them (a pytest of its own, in a subprocess, the plugin found by its entry point)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

USER_TESTS = """
import socket

import pytest

import sockserve


def ask(address, data):
    with socket.create_connection(address, timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(100)
        except OSError:  # the server closed (a reset) before the client was done
            return b""


def test_echo(sockserve_echo):
    assert ask(sockserve_echo.address, b"hi") == b"hi"
    assert sockserve_echo.wait_for_data(b"hi", timeout=5).data_in == b"hi"


def test_factory(sockserve_server):
    upper = sockserve_server("tcp", handler="upper")
    udp = sockserve_server("udp")
    assert ask(upper.address, b"hi") == b"HI"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"dgram", udp.address)
        assert sock.recv(100) == b"dgram"
    pytest.servers = [upper, udp]


def test_stopped_at_teardown():
    assert not any(server.running for server in pytest.servers)


class Broken(sockserve.StreamRequestHandler):
    def handle(self):
        raise RuntimeError("the handler broke")


def test_handler_error_fails_the_test(sockserve_server):
    server = sockserve_server("tcp", handler=Broken)
    assert ask(server.address, b"x") == b""
    server.wait_for_connections(1, timeout=5)


def test_expected_handler_error_is_taken(sockserve_server):
    server = sockserve_server("tcp", handler=Broken)
    assert ask(server.address, b"x") == b""
    (error,) = server.take_errors()
    assert isinstance(error.exception, RuntimeError)


def test_bad_option_is_the_commands_error(sockserve_server):
    with pytest.raises(sockserve.UsageError, match="--max-threads only applies"):
        sockserve_server("tcp", concurrency="sync", max_threads=2)
"""


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    folder = tmp_path_factory.mktemp("user")
    (folder / "test_user.py").write_text(USER_TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rf", "-v", "test_user.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def outcome(run: subprocess.CompletedProcess[str], test: str) -> str:
    line = next(line for line in run.stdout.splitlines() if f"::{test} " in line)
    return line.split()[1]


@pytest.mark.parametrize(
    "test",
    [
        "test_echo",
        "test_factory",
        "test_stopped_at_teardown",
        "test_expected_handler_error_is_taken",
        "test_bad_option_is_the_commands_error",
    ],
)
def test_the_fixtures_work_in_a_users_run(user_run: subprocess.CompletedProcess[str], test: str):
    assert outcome(user_run, test) == "PASSED", user_run.stdout


def test_a_handler_error_fails_the_users_test_with_its_traceback(
    user_run: subprocess.CompletedProcess[str],
) -> None:
    assert outcome(user_run, "test_handler_error_fails_the_test") == "FAILED"
    out = user_run.stdout
    report = out[out.index("_ test_handler_error_fails_the_test _") :]
    assert "sockserve server tcp://127.0.0.1:" in report
    assert "a handler raised" in report and "RuntimeError: the handler broke" in report
    assert 'raise RuntimeError("the handler broke")' in report  # the traceback, from the user's
    assert "server.take_errors()" in report
    assert user_run.returncode == 1


def test_the_plugin_is_registered_by_the_entry_point() -> None:
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="pytest11") if e.name == "sockserve"]
    assert entry.value == "sockserve.pytest_plugin"
    assert Path(entry.load().__file__).name == "pytest_plugin.py"
