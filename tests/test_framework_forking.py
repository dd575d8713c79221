"""ForkingMixIn: a child per request, max_children, reaping, exit statuses, block_on_close.

Children report to the test on pipes. Most tests drive the server with handle_request() from
the test's only thread, so nothing forks a multi-threaded process; the two that need a running
serve_forever loop silence Python 3.12's warning about exactly that.
"""

from __future__ import annotations

import _thread
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Transport

pytestmark = pytest.mark.leakcheck
forks_from_threads = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")


@pytest.fixture
def pipe() -> Iterator[Callable[[], tuple[int, int]]]:
    """Make pipes (read end, write end) that are closed after the test."""
    fds: list[int] = []

    def make() -> tuple[int, int]:
        r, w = os.pipe()
        fds.extend((r, w))
        return r, w

    yield make
    for fd in fds:
        os.close(fd)


def read_exactly(fd: int, size: int, timeout: float = 5) -> bytes:
    """Read `size` bytes from a pipe, or fewer if `timeout` passes first."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data += os.read(fd, size - len(data))
    return data


def wait_exited(pid: int, timeout: float = 5) -> bool:
    """Wait until child `pid` has exited, without reaping it."""
    pidfd = os.pidfd_open(pid)
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def is_zombie(pid: int) -> bool:
    """True if `pid` has exited and is still waiting to be reaped."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def pidfds_open() -> int:
    """How many pidfds this process holds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "pidfd" in os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass  # the listing's own descriptor
    return count


def test_handler_runs_in_a_child(transport: Transport) -> None:
    class Pid(transport.Handler):
        def handle(self) -> None:
            self.read()
            self.reply(b"%d" % os.getpid())

    with transport.make(Pid, "forking") as server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        pid = int(transport.receive(client))
        assert pid != os.getpid()
        assert server.active_children == {pid} or not server.active_children


def test_requests_overlap(transport: Transport, pipe: Callable[[], tuple[int, int]]) -> None:
    """Two children each wait until both have started: they ran at the same time."""
    arrived_r, arrived_w = pipe()
    gate_r, gate_w = pipe()

    class Meet(transport.Handler):
        def handle(self) -> None:
            self.read()
            os.write(arrived_w, b"S")
            ready, _, _ = select.select([gate_r], [], [], 5)
            self.reply(os.read(gate_r, 1) if ready else b"alone")

    with transport.make(Meet, "forking") as server:
        with transport.client(server) as first, transport.client(server) as second:
            first.sendall(b"1")
            second.sendall(b"2")
            start = time.monotonic()
            server.handle_request()
            server.handle_request()
            assert read_exactly(arrived_r, 2) == b"SS", "the second child did not start"
            os.write(gate_w, b"++")
            replies = transport.receive(first), transport.receive(second)
            elapsed = time.monotonic() - start
    assert replies == (b"+", b"+")
    assert elapsed < 2.5, f"two overlapping requests took {elapsed:.3f}s"


@forks_from_threads
@pytest.mark.parametrize("limit", [1, 2])
def test_max_children_is_never_exceeded(
    transport: Transport,
    run_server: Callable[..., Any],
    pipe: Callable[[], tuple[int, int]],
    limit: int,
) -> None:
    """5N clients at once: at most N children at any time, and every client is served."""
    clients = 5 * limit
    events_r, events_w = pipe()
    gate_r, gate_w = pipe()
    alive: list[int] = []

    class Counted(transport.Handler):
        def handle(self) -> None:
            data = self.read()
            os.write(events_w, b"S")
            if select.select([gate_r], [], [], 10)[0]:
                os.read(gate_r, 1)
            os.write(events_w, b"E")
            self.reply(data)

    class Server(transport.server_class("forking", max_children=limit)):
        request_queue_size = clients  # the clients wait in the backlog, not in connect()

        def process_request(self, request: Any, client_address: Any) -> None:
            super().process_request(request, client_address)
            alive.append(len(self.active_children or ()))

    server = Server(transport.address(), Counted)
    run_server(server)
    socks = [transport.client(server) for _ in range(clients)]
    try:
        for n, sock in enumerate(socks):
            sock.sendall(b"%d" % n)
        assert read_exactly(events_r, limit) == b"S" * limit
        # Unbounded, the next child would start at once; the loop is waiting instead.
        assert read_exactly(events_r, 1, timeout=0.1) == b"", "a child too many started"
        os.write(gate_w, b"+" * clients)
        events = b"S" * limit + read_exactly(events_r, 2 * clients - limit)
        replies = [transport.receive(sock) for sock in socks]
    finally:
        os.write(gate_w, b"+" * clients)
        for sock in socks:
            sock.close()
    running = peak = 0
    for event in events:
        running += 1 if event == ord("S") else -1
        peak = max(peak, running)
    assert events.count(b"S") == events.count(b"E") == clients
    assert peak == limit
    assert max(alive) == limit
    assert replies == [b"%d" % n for n in range(clients)]


@pytest.mark.parametrize("reaper", ["service_actions", "handle_timeout"])
def test_zombies_are_reaped(transport: Transport, reaper: str) -> None:
    class Echo(transport.Handler):
        def handle(self) -> None:
            self.reply(self.read())

    with transport.make(Echo, "forking", timeout=0.01) as server:
        with transport.client(server) as client:
            client.sendall(b"x")
            server.handle_request()
            assert transport.receive(client) == b"x"
        (pid,) = server.active_children
        assert wait_exited(pid)
        assert is_zombie(pid)
        if reaper == "service_actions":
            server.service_actions()
        else:
            server.handle_request()  # nothing comes: handle_timeout runs
        assert server.active_children == set()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@forks_from_threads
def test_serve_forever_reaps(transport: Transport, run_server: Callable[..., Any]) -> None:
    reaped = threading.Event()
    pids: list[int] = []

    class Echo(transport.Handler):
        def handle(self) -> None:
            self.reply(self.read())

    class Server(transport.server_class("forking")):
        def process_request(self, request: Any, client_address: Any) -> None:
            super().process_request(request, client_address)
            pids.extend(self.active_children or ())

        def service_actions(self) -> None:
            super().service_actions()
            if pids and not self.active_children:
                reaped.set()

    server = Server(transport.address(), Echo)
    run_server(server)
    assert transport.request(server, b"x") == b"x"
    assert reaped.wait(5), "serve_forever left the child unreaped"
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)


@pytest.mark.parametrize(
    ("outcome", "status", "reported"),
    [
        ("return", 0, False),
        ("ValueError", 1, True),
        ("SystemExit", 1, False),
        ("KeyboardInterrupt", 1, False),
    ],
)
def test_child_exit_status(
    transport: Transport,
    pipe: Callable[[], tuple[int, int]],
    outcome: str,
    status: int,
    reported: bool,
) -> None:
    """A child exits 0 when the handler returns, 1 when it raises; handle_error in the child."""
    errors_r, errors_w = pipe()
    parent = os.getpid()

    class Ends(transport.Handler):
        def handle(self) -> None:
            self.read()
            if outcome != "return":
                raise {"ValueError": ValueError, "SystemExit": SystemExit}.get(
                    outcome, KeyboardInterrupt
                )()

    class Server(transport.server_class("forking")):
        def handle_error(self, request: Any, client_address: Any) -> None:
            os.write(errors_w, b"E" if os.getpid() != parent else b"P")

    with Server(transport.address(), Ends) as server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        (pid,) = server.active_children
        assert wait_exited(pid)
        _, raw = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(raw) == status
        if transport.stream:
            assert transport.receive(client) == b"", "the child shut the connection down"
        server.collect_children()  # the server copes with a child reaped by someone else
        assert server.active_children == set()
    assert read_exactly(errors_r, 1, timeout=0.01 if not reported else 5) == (
        b"E" if reported else b""
    )


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "waitpid"])
def test_waiting_for_a_free_slot_does_not_spin(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, pidfds: bool
) -> None:
    """With max_children busy, the next request waits for a child to exit, using no CPU."""
    if not pidfds:
        monkeypatch.delattr(os, "pidfd_open")

    class Slow(transport.Handler):
        def handle(self) -> None:
            data = self.read()
            self.reply(data)
            if data == b"1":
                time.sleep(0.2)  # the work that keeps the only slot busy

    with transport.make(Slow, "forking", max_children=1) as server:
        with transport.client(server) as first, transport.client(server) as second:
            first.sendall(b"1")
            second.sendall(b"2")
            server.handle_request()
            (first_pid,) = server.active_children
            cpu, wall = time.process_time(), time.monotonic()
            server.handle_request()  # waits for the first child, then forks the second
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            assert first_pid not in server.active_children
            assert len(server.active_children) == 1
            assert transport.receive(first) == b"1"
            assert transport.receive(second) == b"2"
    assert cpu < 0.05, f"{cpu:.3f}s of CPU in {wall:.3f}s of waiting"


@pytest.mark.parametrize("block_on_close", [True, False])
def test_block_on_close(
    transport: Transport, pipe: Callable[[], tuple[int, int]], block_on_close: bool
) -> None:
    gate_r, gate_w = pipe()

    class Parked(transport.Handler):
        def handle(self) -> None:
            self.read()
            select.select([gate_r], [], [], 10)

    pidfds = pidfds_open()
    server = transport.make(Parked, "forking", block_on_close=block_on_close)
    with server, transport.client(server) as client:
        client.sendall(b"?")
        server.handle_request()
        (pid,) = server.active_children
        opened: list[float] = []

        def let_go() -> None:
            opened.append(time.monotonic())
            os.write(gate_w, b"+")

        opener = threading.Timer(0.1, let_go)  # lets a waiting close return
        if block_on_close:
            opener.start()
        server.server_close()
        closed = time.monotonic()
        if block_on_close:
            opener.join()
            assert opened and opened[0] <= closed, "server_close did not wait for the child"
            assert server.active_children == set()
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        else:
            assert not is_zombie(pid), "server_close waited for the child"
            assert server.active_children == {pid}
            assert pidfds_open() == pidfds, "server_close left a pidfd open"
            let_go()
            assert wait_exited(pid)
            server.collect_children()  # what is left is reaped later, on request
            assert server.active_children == set()


class Interrupted(Exception):
    """What the tests' SIGUSR1 handler raises."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted


@forks_from_threads
@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "waitpid"])
def test_a_signal_pending_as_server_close_waits_is_handled_promptly(
    transport: Transport,
    pipe: Callable[[], tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
    pidfds: bool,
) -> None:
    """A signal that arrives just before server_close starts to wait does not interrupt that
    wait; `_thread.interrupt_main` makes that case (the flag set, no EINTR). The wait wakes
    every `_SIGNAL_CHECK` seconds, so the handler still runs at once, not when the child
    exits (sockserve's addition: a second Ctrl-C during a graceful stop relies on it)."""
    if not pidfds:
        monkeypatch.delattr(os, "pidfd_open")
    gate_r, gate_w = pipe()

    class Parked(transport.Handler):
        def handle(self) -> None:
            self.read()
            select.select([gate_r], [], [], 10)

    server = transport.make(Parked, "forking")
    old = signal.signal(signal.SIGUSR1, _raise_interrupted)
    try:
        with transport.client(server) as client:
            client.sendall(b"?")
            server.handle_request()
            (pid,) = server.active_children
            timer = threading.Timer(0.2, _thread.interrupt_main, args=(signal.SIGUSR1,))
            timer.start()
            start = time.monotonic()
            with pytest.raises(Interrupted):
                server.server_close()
            took = time.monotonic() - start
            timer.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
        os.write(gate_w, b"+")
        monkeypatch.undo()  # wait_exited needs pidfd_open
    assert wait_exited(pid)
    server.collect_children()
    server.server_close()
    assert server.active_children == set()
    assert took < 2, f"the handler ran only after {took:.2f}s"


@forks_from_threads
def test_shutdown_interrupts_the_wait_for_a_child(
    transport: Transport,
    run_server: Callable[..., Any],
    pipe: Callable[[], tuple[int, int]],
) -> None:
    """All slots busy and poll_interval=5: shutdown() still returns at once."""
    events_r, events_w = pipe()
    gate_r, gate_w = pipe()

    class Parked(transport.Handler):
        def handle(self) -> None:
            self.read()
            os.write(events_w, b"S")
            select.select([gate_r], [], [], 10)

    server = transport.make(Parked, "forking", max_children=1)
    loop = run_server(server, poll_interval=5)
    with transport.client(server) as first, transport.client(server) as second:
        first.sendall(b"1")
        second.sendall(b"2")
        assert read_exactly(events_r, 1) == b"S"
        start = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - start
        loop.join(5)
        os.write(gate_w, b"+")
        server.server_close()
    assert elapsed < 0.5, f"shutdown took {elapsed:.3f}s"
    assert read_exactly(events_r, 1, timeout=0.01) == b"", "a second child was forked"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds")
def test_no_pidfd_is_kept_for_reaped_children(transport: Transport) -> None:
    class Echo(transport.Handler):
        def handle(self) -> None:
            self.reply(self.read())

    before = pidfds_open()
    with transport.make(Echo, "forking") as server:
        for n in range(3):
            with transport.client(server) as client:
                client.sendall(b"%d" % n)
                server.handle_request()
                assert transport.receive(client) == b"%d" % n
        for pid in list(server.active_children):
            assert wait_exited(pid)
        server.service_actions()
        assert server.active_children == set()
        assert pidfds_open() == before


def test_a_child_without_pidfd_still_frees_its_slot(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, pipe: Callable[[], tuple[int, int]]
) -> None:
    """If pidfd_open fails for one child, its exit still lets the next request in."""
    gate_r, gate_w = pipe()

    class Echo(transport.Handler):
        def handle(self) -> None:
            data = self.read()
            if data == b"long":
                select.select([gate_r], [], [], 3)
            self.reply(data)

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(24, "Too many open files")

    with transport.make(Echo, "forking", max_children=2) as server:
        with (
            transport.client(server) as long,
            transport.client(server) as short,
            transport.client(server) as third,
        ):
            for sock, data in ((long, b"long"), (short, b"short"), (third, b"third")):
                sock.sendall(data)
            server.handle_request()  # the long child, with a pidfd
            (long_pid,) = server.active_children
            with monkeypatch.context() as patch:
                patch.setattr(os, "pidfd_open", no_pidfd)
                server.handle_request()  # the short child, without one
            assert transport.receive(short) == b"short"
            server.handle_request()  # waits for the short child only
            assert transport.receive(third) == b"third"
            assert not is_zombie(long_pid) and long_pid in server.active_children
            os.write(gate_w, b"+")
            assert transport.receive(long) == b"long"
