"""forward_loop (sockserve/builtins/forward_loop.py): the polled relay, on its own thread and
on the loop thread mode's connections share, over real socket pairs."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servertools import wait_until

from sockserve.builtins import forward_loop
from sockserve.builtins.forward_loop import Relay, relay_here, relay_shared

pytestmark = [
    pytest.mark.leakcheck,
    pytest.mark.skipif(not forward_loop.SPLICE_FLAGS, reason="needs os.splice (Linux)"),
]
TIMEOUT = 5.0
LOOP_NAME = "forward relay loop"


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_NAME]


@contextlib.contextmanager
def relayed(
    run: Callable[[Relay], None], relay_class: type[Relay] = Relay
) -> Iterator[tuple[socket.socket, socket.socket, Relay, dict[str, BaseException]]]:
    """(the client's end, the upstream's end, the relay, what the run raised) of a relay
    between two socket pairs, run by `run` in a thread until both directions ended."""
    client, client_side = socket.socketpair()
    upstream_side, upstream = socket.socketpair()
    with client, client_side, upstream_side, upstream:
        for sock in (client, upstream):
            sock.settimeout(TIMEOUT)
        relay = relay_class(client_side, upstream_side)
        raised: dict[str, BaseException] = {}

        def target() -> None:
            try:
                run(relay)
            except BaseException as exc:
                raised["error"] = exc

        runner = threading.Thread(target=target)
        runner.start()
        try:
            yield client, upstream, relay, raised
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            runner.join(TIMEOUT)
            assert not runner.is_alive()


@pytest.mark.parametrize("run", [relay_here, relay_shared], ids=["here", "shared"])
def test_bulk_is_spliced_small_chunks_copied_and_both_arrive_whole(
    run: Callable[[Relay], None],
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: fills the buffer, so the rest is spliced
    with relayed(run) as (client, upstream, relay, raised):
        writer = threading.Thread(target=client.sendall, args=(data,))
        writer.start()
        got = bytearray()
        while len(got) < len(data):
            got += upstream.recv(65536)
        writer.join(TIMEOUT)
        assert got == data
        upstream.sendall(b"ok")  # the other way: small, copied
        upstream.shutdown(socket.SHUT_WR)
        assert client.recv(10) == b"ok"
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(upstream) == b""  # the EOF passed on as a half-close
        assert read_to_eof(client) == b""
        assert relay.done.wait(TIMEOUT)
    assert relay.moved == (len(data), 2) and not raised
    assert relay.flows[0].pipe is not None and relay.flows[1].pipe is None
    assert relay.failed == [False, False]


def test_connections_share_one_loop_thread_which_ends_with_the_last() -> None:
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(relayed(relay_shared)) for _ in range(20)]
        for round_trip in range(3):
            for i, (client, _, _, _) in enumerate(pairs):
                client.sendall(b"%d:%d" % (i, round_trip))
            for i, (client, upstream, _, _) in enumerate(pairs):
                assert upstream.recv(100) == b"%d:%d" % (i, round_trip)
                upstream.sendall(b"back")
                assert client.recv(100) == b"back"
        assert len(loop_threads()) == 1
        for client, upstream, _, _ in pairs:
            client.shutdown(socket.SHUT_WR)
            upstream.shutdown(socket.SHUT_WR)
        assert all(relay.done.wait(TIMEOUT) for _, _, relay, _ in pairs)
    assert wait_until(lambda: not loop_threads())
    with relayed(relay_shared) as (client, upstream, relay, _):  # the next starts another
        client.sendall(b"again")
        assert upstream.recv(10) == b"again"
        assert len(loop_threads()) == 1


class Broken(Relay):
    def on_ready(self, side: int, events: int) -> None:
        raise RuntimeError("a bug in the relay")


def test_a_bug_ends_its_relay_with_the_error_and_the_loop_goes_on() -> None:
    with relayed(relay_shared) as (client, upstream, healthy, _):
        with relayed(relay_shared, Broken) as (bad_client, _, broken, raised):
            bad_client.sendall(b"boom")
            assert broken.done.wait(TIMEOUT)
            assert wait_until(lambda: raised)
            assert str(raised["error"]) == "a bug in the relay"
        client.sendall(b"still relayed")
        assert upstream.recv(100) == b"still relayed"
        assert not healthy.done.is_set()


def test_a_bug_in_the_loop_itself_ends_its_relays_and_the_next_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_step(*args: Any) -> None:
        raise RuntimeError("a bug in the loop")

    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    with monkeypatch.context() as patch:
        patch.setattr(forward_loop.SharedLoop, "step", broken_step)
        with relayed(relay_shared) as (_, _, relay, raised):
            assert relay.done.wait(TIMEOUT)
            assert wait_until(lambda: raised)
    assert str(raised["error"]) == "the forward relay loop failed"
    assert wait_until(lambda: not loop_threads())
    assert [str(exc) for exc in seen] == ["a bug in the loop"]
    with relayed(relay_shared) as (client, upstream, _, _):
        client.sendall(b"again")
        assert upstream.recv(10) == b"again"
