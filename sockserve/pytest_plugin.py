"""pytest fixtures for testing network clients against sockserve servers.

Registered through the `pytest11` entry point: installing sockserve gives every pytest run
`sockserve_server` (a factory: `sockserve_server("tcp", handler="upper")` starts a server with
`sockserve.serve` and returns it, running) and `sockserve_echo` (a TCP echo server on
127.0.0.1). Their servers stop at the test's teardown. A handler that raised fails the test,
with its traceback; a test that expects such an error takes it with `server.take_errors()`.

Loaded in every pytest run where sockserve is installed: this module imports only pytest;
the API is imported by the first fixture that starts a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .api import Server

__all__ = ["ServerFactory", "sockserve_echo", "sockserve_server"]


class ServerFactory:
    """Start servers for one test (`__call__` takes `sockserve.serve`'s arguments); stop
    them all at its end."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.reported = 0  # errors already failed the test with

    def __call__(self, proto: str = "tcp", address: str | None = None, **options: Any) -> Server:
        """Start a server (see `sockserve.serve`) that stops at the end of the test."""
        from .api import serve

        server = serve(proto, address, **options)
        self.servers.append(server)
        return server

    def failures(self) -> str | None:
        """A message naming every handler error not reported yet, or None."""
        lines = []
        errors = [(server, error) for server in self.servers for error in server.errors]
        for server, error in errors[self.reported :]:
            lines.append(f"sockserve server {server.url}: a handler raised\n{error}")
        self.reported = len(errors)
        if not lines:
            return None
        lines.append("(a test that expects handler errors takes them: server.take_errors())")
        return "\n\n".join(lines)

    def stop_all(self) -> None:
        """Stop every server, the last started first; raise the first failure, if any."""
        failure: BaseException | None = None
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


_FACTORY = pytest.StashKey[ServerFactory]()


@pytest.fixture
def sockserve_server(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """A factory of sockserve servers, stopped at teardown; a handler error fails the test."""
    factory = ServerFactory()
    request.node.stash[_FACTORY] = factory
    try:
        yield factory
    finally:
        factory.stop_all()
    failures = factory.failures()  # raised while the servers stopped
    if failures:
        pytest.fail(failures, pytrace=False)


@pytest.fixture
def sockserve_echo(sockserve_server: ServerFactory) -> Server:
    """A TCP echo server on 127.0.0.1, port 0: connect to `sockserve_echo.address`."""
    return sockserve_server("tcp")


@pytest.hookimpl(trylast=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """After a test body that passed: fail it if a handler of its servers raised."""
    factory = item.stash.get(_FACTORY, None)
    if factory is not None:
        failures = factory.failures()
        if failures:
            pytest.fail(failures, pytrace=False)
