"""Connection ids: every --json event about one connection (or datagram) carries its `conn`,
the same from `connect` to `close`, in every mode and transport, and with --workers.

Through the real command (`jsonrun.JsonRun`); clients on unix sockets under a temp dir or
on 127.0.0.1 port 0.
"""

from __future__ import annotations

import io
import json
import os
import socket
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from jsonrun import Event, JsonRun

from sockserve.console import PlainReporter
from sockserve.events import Client

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets")

TIMEOUT = 10
MODES = ["sync", "thread", "fork", "event"]


def unix_path(tmp_path: Path) -> str:
    """A short socket path (AF_UNIX paths are limited to about 108 bytes)."""
    path = tmp_path / "s"
    return str(path) if len(str(path)) < 100 else f"/tmp/sockserve-ids-{os.getpid()}"


def by_conn(events: list[Event], *names: str) -> dict[int, list[Event]]:
    """The events named `names`, grouped by their `conn`."""
    groups: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        if event["event"] in names:
            groups[event["conn"]].append(event)
    return groups


def unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


@pytest.mark.parametrize("mode", MODES)
def test_two_concurrent_unix_clients_are_told_apart(tmp_path: Path, mode: str) -> None:
    """Both clients are "unix client"; their ids tell their events apart."""
    path = unix_path(tmp_path)
    with JsonRun(["unix", path, "-c", mode, "-vv"]) as run:
        run.listening_url()
        first, second = unix_client(path), unix_client(path)
        with first, second:
            first.sendall(b"a")
            assert first.recv(10) == b"a"
            first.close()  # sync mode serves the second one after the first ends
            second.sendall(b"bb")
            assert second.recv(10) == b"bb"
        run.wait_count("close", 2)
        assert run.stop() == 0
        events = run.events
    connects = [e for e in events if e["event"] == "connect"]
    assert len(connects) == 2
    assert {e["client"] for e in connects} == {"unix client"}
    ids = [e["conn"] for e in connects]
    assert len(set(ids)) == 2 and all(isinstance(n, int) for n in ids)
    groups = by_conn(events, "connect", "data", "close")
    assert set(groups) == set(ids)  # no event of theirs without one of the two ids
    payloads = {}
    for conn, group in groups.items():
        kinds = [e["event"] for e in group]
        assert kinds[0] == "connect" and kinds[-1] == "close" and kinds.count("close") == 1
        hexes = {e["hex"] for e in group if e["event"] == "data"}
        assert len(hexes) == 1  # what came in went out, and nothing of the other client
        payloads[conn] = bytes.fromhex(hexes.pop())
        assert group[-1]["bytes_in"] == group[-1]["bytes_out"] == len(payloads[conn])
    assert sorted(payloads.values()) == [b"a", b"bb"]


FAILING_HANDLER = textwrap.dedent(
    """
    import socketserver

    class Failing(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(self.request.recv(100))
            raise ValueError("boom")
    """
)


def test_a_forked_childs_events_carry_the_id_of_its_connect(tmp_path: Path) -> None:
    """A user's handler in fork mode: its error and close travel from the child on a pipe."""
    handler = tmp_path / "failing.py"
    handler.write_text(FAILING_HANDLER)
    path = unix_path(tmp_path)
    with JsonRun(["unix", path, "-c", "fork", "-H", str(handler)]) as run:
        run.listening_url()
        for payload in (b"x", b"yy"):
            with unix_client(path) as client:
                client.sendall(payload)
                assert client.recv(10) == payload
        run.wait_count("close", 2)
        run.wait_count("error", 2)
        assert run.stop() == 0
        events = run.events
    groups = by_conn(events, "connect", "error", "close")
    assert sorted(groups) == [1, 2]
    for group in groups.values():
        assert sorted(e["event"] for e in group) == ["close", "connect", "error"]
        assert [e["message"] for e in group if e["event"] == "error"] == ["boom"]
    assert [groups[n][-1]["bytes_in"] for n in (1, 2)] == [1, 2]  # in order of acceptance


def test_ids_are_unique_across_workers() -> None:
    """--workers 2: worker k numbers k, k+2...; no id is given twice."""
    with JsonRun(["tcp", "127.0.0.1:0", "--workers", "2", "-c", "sync"]) as run:
        host, port = run.listening_url().removeprefix("tcp://").rsplit(":", 1)
        clients = 24
        for i in range(clients):
            with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
                sock.sendall(b"%d" % i)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(10) == b"%d" % i
        run.wait_count("close", clients)
        assert run.stop() == 0
        events = run.events
    connects = {e["client"]: e["conn"] for e in events if e["event"] == "connect"}
    closes = {e["client"]: e["conn"] for e in events if e["event"] == "close"}
    assert connects == closes  # each connection's close has its connect's id
    ids = list(connects.values())
    assert len(ids) == len(set(ids)) == clients


@pytest.mark.parametrize("verbose", [["-vv"], []], ids=["vv", "counts"])
@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
@pytest.mark.parametrize("mode", MODES)
def test_each_datagram_has_an_id_its_data_events_share(
    tmp_path: Path, transport: str, mode: str, verbose: list[str]
) -> None:
    if transport == "udp":
        address = "127.0.0.1:0"
        family = socket.AF_INET
    else:
        address = unix_path(tmp_path)
        family = socket.AF_UNIX
    with JsonRun([transport, address, "-c", mode, *verbose]) as run:
        url = run.listening_url()
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            if transport == "udp":
                host, port = url.removeprefix("udp://").rsplit(":", 1)
                target: Any = (host, int(port))
            else:
                sock.bind(str(tmp_path / "c"))  # a named client gets its answer
                target = address
            for payload in (b"1", b"22", b"333"):
                sock.sendto(payload, target)
                assert sock.recv(10) == payload  # one at a time
        run.wait_count("request", 3)
        assert run.stop() == 0
        events = run.events
    requests = [e for e in events if e["event"] == "request"]
    # ids in the order the datagrams came (fork mode reports them as its children end)
    assert {e["conn"]: e["bytes_in"] for e in requests} == {1: 1, 2: 2, 3: 3}
    if not verbose:
        return
    groups = by_conn(events, "data", "request")
    for n, size in zip((1, 2, 3), (1, 2, 3), strict=True):
        kinds = [(e["event"], e.get("direction")) for e in groups[n]]
        assert kinds == [("data", "in"), ("data", "out"), ("request", None)]
        assert {bytes.fromhex(e["hex"]) for e in groups[n][:2]} == {str(n).encode() * size}


EVENT_PROTOCOLS = textwrap.dedent(
    """
    import asyncio

    class Failing(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)
            if data == b"bb":
                raise ValueError("boom")

    class Answer(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)
            if data == b"bb":
                raise ValueError("boom")
    """
)


def test_event_mode_user_protocols_report_their_ids(tmp_path: Path) -> None:
    """A user's protocol is watched by the event server: its events carry the id too."""
    handler = tmp_path / "protocols.py"
    handler.write_text(EVENT_PROTOCOLS)
    path = unix_path(tmp_path)
    with JsonRun(["unix", path, "-c", "event", "-vv", "-H", f"{handler}:Failing"]) as run:
        run.listening_url()
        with unix_client(path) as first, unix_client(path) as second:
            for sock, payload in ((first, b"a"), (second, b"bb")):
                sock.sendall(payload)
                assert sock.recv(10) == payload
        run.wait_count("close", 2)
        assert run.stop() == 0
        events = run.events
    groups = by_conn(events, "connect", "data", "error", "close")
    assert sorted(groups) == [1, 2]
    assert [e["event"] for e in groups[1]] == ["connect", "data", "data", "close"]
    assert [e["event"] for e in groups[2]] == ["connect", "data", "data", "error", "close"]

    with JsonRun(["udp", "127.0.0.1:0", "-c", "event", "-vv", "-H", f"{handler}:Answer"]) as run:
        host, port = run.listening_url().removeprefix("udp://").rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            for payload in (b"a", b"bb"):
                sock.sendto(payload, (host, int(port)))
                assert sock.recv(10) == payload
        run.wait_count("request", 2)
        assert run.stop() == 0
        events = run.events
    groups = by_conn(events, "data", "error", "request")
    assert [e["event"] for e in groups[1]] == ["data", "data", "request"]
    assert [e["event"] for e in groups[2]] == ["data", "data", "error", "request"]


def test_plain_output_names_the_id_of_a_unix_client_only() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.connected(Client("", 3))
    reporter.connected(Client(("127.0.0.1", 5000), 4))
    reporter.record(Client(b"\0peer", 5), 1, 1)
    assert out.getvalue().splitlines() == [
        "connect unix client #3",
        "connect 127.0.0.1:5000",
        "close @peer #5",
    ]


def test_plain_output_of_two_unix_clients(tmp_path: Path) -> None:
    path = unix_path(tmp_path)
    with JsonRun(["unix", path, "-c", "thread"], json_output=False) as run:
        run.listening_url()
        with unix_client(path) as first, unix_client(path) as second:
            for sock in (first, second):
                sock.sendall(b"z")
                assert sock.recv(1) == b"z"
        run.wait_line(lambda line: line.startswith("close unix client #2"))
        assert run.stop() == 0
        lines = run.lines
    assert "connect unix client #1" in lines and "connect unix client #2" in lines


def test_a_client_crosses_the_child_pipe_with_its_id() -> None:
    from sockserve.monitor import _from_json, _jsonable

    for address in (("127.0.0.1", 5), "", "/tmp/c"):
        line = json.loads(json.dumps(_jsonable(Client(address, 7))))
        back = _from_json(line)
        assert type(back) is Client and (back.address, back.id) == (address, 7)
    assert _from_json(json.loads(json.dumps(_jsonable(("h", 1))))) == ("h", 1)
