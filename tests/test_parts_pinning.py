"""PinningPart: the loop's thread and the threads it starts kept on one CPU."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from servertools import (
    USER_HANDLER,
    accept_threads,
    accepting_server,
    config_for,
    echo_hi,
    make_accepting_server,
    needs_two_cpus,
    stop_serving,
)

from sockserve.parts.acceptors import AcceptingThreadsPart

pytestmark = pytest.mark.leakcheck


@needs_two_cpus
def test_accepting_threads_stay_on_one_cpu(captured: list) -> None:
    """The builtins' threads run on the CPU the loop started on; the loop's thread gets its
    CPUs back when serve_forever returns."""
    before = os.sched_getaffinity(0)
    server = make_accepting_server(captured)
    seen: dict[str, set[int]] = {}

    def serve() -> None:
        seen["loop before"] = os.sched_getaffinity(0)
        server.serve_forever(0.05)
        seen["loop after"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"  # a thread has served it; another waits in accept
            cpus = {frozenset(os.sched_getaffinity(t.native_id)) for t in accept_threads()}
    finally:
        stop_serving(server, thread)
    assert len(cpus) == 1, cpus  # every accepting thread, the same CPU
    (cpu_set,) = cpus
    assert len(cpu_set) == 1 and cpu_set <= before
    assert seen == {"loop before": before, "loop after": before}
    assert os.sched_getaffinity(0) == before  # this thread was never touched


@needs_two_cpus
def test_a_thread_on_one_cpu_already_is_left_alone() -> None:
    from sockserve.parts.pinning import restore_cpus, stay_on_this_cpu

    results: list[object] = []

    def pinned() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        results.append(stay_on_this_cpu())

    def free() -> None:
        cpus = os.sched_getaffinity(0)
        results.append(stay_on_this_cpu() == cpus and len(os.sched_getaffinity(0)) == 1)
        restore_cpus(cpus)
        results.append(os.sched_getaffinity(0) == cpus)

    for target in (pinned, free):
        t = threading.Thread(target=target)
        t.start()
        t.join(5)
    assert results == [None, True, True]


def _cpus_a_user_handler_sees(captured: list, *extra: str) -> tuple[set[int], set[int]]:
    """Serve one connection with a handler of the user's in thread mode; return the CPUs its
    thread had, and those of the loop's thread after serve_forever."""
    from sockserve.compose import make_server

    config = config_for(captured, "tcp", "127.0.0.1:0", "-H", USER_HANDLER, *extra)
    server = make_server(config, config.handler.cls)
    assert not isinstance(server, AcceptingThreadsPart)
    affinity: list[set[int]] = []
    after: list[set[int]] = []
    orig = server.RequestHandlerClass

    class Probe(orig):  # type: ignore[misc, valid-type]
        def handle(self) -> None:
            affinity.append(os.sched_getaffinity(0))
            super().handle()

    def serve() -> None:
        server.serve_forever(0.05)
        after.append(os.sched_getaffinity(0))

    server.RequestHandlerClass = Probe
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"hi\n")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100)
    finally:
        stop_serving(server, thread)
    assert len(affinity) == 1
    return affinity[0], after[0]


@needs_two_cpus
def test_user_handler_threads_keep_every_cpu(captured: list) -> None:
    """A handler of your own may run code that leaves the GIL (hashing, compression): by
    default its threads keep the CPUs they had."""
    assert _cpus_a_user_handler_sees(captured) == (os.sched_getaffinity(0),) * 2


@needs_two_cpus
def test_pin_keeps_user_handler_threads_on_one_cpu(captured: list) -> None:
    """--pin: the handler's thread runs on one CPU; the loop's thread has its CPUs back."""
    cpus = os.sched_getaffinity(0)
    seen, after = _cpus_a_user_handler_sees(captured, "--pin")
    assert len(seen) == 1 and seen <= cpus
    assert after == cpus


@needs_two_cpus
def test_no_pin_leaves_the_builtins_threads_every_cpu(captured: list) -> None:
    cpus = os.sched_getaffinity(0)
    server, thread = accepting_server(captured, "--no-pin")
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            seen = {frozenset(os.sched_getaffinity(t.native_id)) for t in accept_threads()}
    finally:
        stop_serving(server, thread)
    assert seen == {frozenset(cpus)}


@needs_two_cpus
def test_the_banner_pins_before_the_loop_and_names_the_cpu(captured: list) -> None:
    """`pin_loop_thread` (the banner calls it in the loop's thread, just before serve_forever)
    pins once and names the CPU the threads then run on; serve_forever gives the CPUs back."""
    server = make_accepting_server(captured)
    cpus = os.sched_getaffinity(0)
    seen: dict[str, object] = {}

    def serve() -> None:
        cpu = server.pin_loop_thread()
        seen["cpu"] = cpu
        seen["again"] = server.pin_loop_thread()
        seen["during"] = os.sched_getaffinity(0)
        server.serve_forever(0.05)
        seen["after"] = os.sched_getaffinity(0)
        seen["pinned after"] = server.pinned_cpu

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        echo_hi(server)
    finally:
        stop_serving(server, thread)
    cpu = seen["cpu"]
    assert isinstance(cpu, int) and cpu in cpus
    assert seen["again"] == cpu and seen["during"] == {cpu}
    assert seen["after"] == cpus and seen["pinned after"] is None


def test_an_unpinned_server_names_no_cpu(captured: list) -> None:
    server = make_accepting_server(captured, "--no-pin")
    try:
        before = os.sched_getaffinity(0)
        assert server.pin_loop_thread() is None and os.sched_getaffinity(0) == before
    finally:
        server.server_close()
