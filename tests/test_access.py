"""Access rules: the rules alone (`sockserve.access`), then the real command serving some
peers and refusing others (clients bound to 127.0.0.2 and 127.0.0.3, ::1, unix peers)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockserve.access import AccessRules, build_rules, parse_networks
from sockserve.errors import UsageError

COMMAND = [sys.executable, "-m", "sockserve"]


# -- the rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "deny", "peer", "served"),
    [
        ((), (), "10.1.2.3", True),
        (("127.0.0.2",), (), "127.0.0.2", True),
        (("127.0.0.2",), (), "127.0.0.3", False),  # an allow refuses what matches no rule
        ((), ("127.0.0.3",), "127.0.0.2", True),  # deny only: the rest is served
        ((), ("127.0.0.3",), "127.0.0.3", False),
        (("127.0.0.0/8",), ("127.0.0.0/24",), "127.0.0.9", False),  # the more specific deny
        (("127.0.0.9",), ("127.0.0.0/24",), "127.0.0.9", True),  # the more specific allow
        (("127.0.0.0/24",), ("127.0.0.0/24",), "127.0.0.1", False),  # a tie: deny wins
        (("::1",), (), "::1", True),
        (("127.0.0.1",), (), "::1", False),  # an IPv4 rule does not match an IPv6 peer
        (("127.0.0.2",), (), "::ffff:127.0.0.2", True),  # an IPv4 client of a dual-stack socket
        (("[::1]",), (), "::1", True),
        (("fe80::/10",), (), "fe80::1%lo", True),
    ],
)
def test_the_most_specific_rule_decides(allow, deny, peer, served):
    rules = build_rules(allow, deny)
    reason = rules.decide((peer, 5000))
    assert (reason is None) is served, reason


def test_a_refusal_names_the_rule_or_the_missing_allow():
    rules = build_rules(["127.0.0.0/8"], ["127.0.0.3"])
    assert rules.decide(("127.0.0.3", 1)) == "denied by --deny 127.0.0.3"
    assert rules.decide(("10.0.0.1", 1)) == "matches no --allow rule"


def test_a_host_name_is_resolved_once_to_its_addresses():
    networks = parse_networks("localhost")
    assert ipaddress_strings(networks) >= {"127.0.0.1/32"} or "::1/128" in ipaddress_strings(
        networks
    )
    rules = build_rules(["localhost"])
    assert rules.decide(("127.0.0.1", 1)) is None or rules.decide(("::1", 1)) is None


def ipaddress_strings(networks) -> set[str]:
    return {str(n) for n in networks}


@pytest.mark.parametrize(
    "text", ["10.0.0.0/33", "1.2.3.4/x", "not a host", "", "no-such-host.invalid"]
)
def test_a_rule_that_is_no_network_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--allow"):
        build_rules([text])


def test_rule_files_skip_comments_and_blank_lines(tmp_path):
    allow = tmp_path / "allow"
    allow.write_text("# loopback peers\n127.0.0.0/8   # all of it\n\n::1\n")
    deny = tmp_path / "deny"
    deny.write_text("127.0.0.3\n")
    rules = build_rules(allow_file=str(allow), deny_file=str(deny))
    assert rules.decide(("127.0.0.2", 1)) is None
    assert rules.decide(("::1", 1)) is None
    assert rules.decide(("127.0.0.3", 1)) is not None
    assert rules.decide(("10.0.0.1", 1)) == "matches no --allow rule"
    bad = tmp_path / "bad"
    bad.write_text("127.0.0.1\nfrobnicate here\n")
    with pytest.raises(UsageError, match=f"--allow-file {bad}"):
        build_rules(allow_file=str(bad))


def test_no_rules_serve_everyone_and_are_false():
    assert not AccessRules()
    assert AccessRules().decide(("10.0.0.1", 1)) is None
    assert build_rules(allow_uid=[0])


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
def test_credentials_of_a_unix_peer_decide_with_allow_uid_and_gid():
    a, b = socket.socketpair()
    with a, b:
        assert build_rules(allow_uid=[os.getuid()]).decide_credentials(a) is None
        assert build_rules(allow_gid=[os.getgid()]).decide_credentials(a) is None
        reason = build_rules(allow_uid=[os.getuid() + 1]).decide_credentials(a)
        assert reason is not None and f"uid {os.getuid()}" in reason


def test_the_monitor_counts_every_refusal_and_tells_of_a_peer_once_a_second(monkeypatch):
    from servertools import EventsRecorder

    from sockserve import monitor
    from sockserve.config import build_config

    clock = [100.0]
    monkeypatch.setattr(monitor.time, "monotonic", lambda: clock[0])
    reporter = EventsRecorder()
    run = monitor.RunMonitor(reporter, build_config(proto="tcp", address=":0"))
    for peer, at in [
        ("127.0.0.3", 100.0),
        ("127.0.0.3", 100.5),
        ("127.0.0.4", 100.6),
        ("127.0.0.3", 101.0),
        ("127.0.0.3", 101.2),
    ]:
        clock[0] = at
        run.refused((peer, 1), "no")
    assert [call[0][0] for call in reporter.named("refused")] == [
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.3",
    ]
    assert run.stats.refused == 5


# -- the real command -----------------------------------------------------------------------


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[tuple[str, list[dict]]]:
    """Run `sockserve ARGS --json --print-address`; yield its address and, once the block
    ends (SIGTERM, exit 0), the events it wrote."""
    err = tmp_path / f"events-{len(list(tmp_path.iterdir()))}.jsonl"
    events: list[dict] = []
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [*COMMAND, *args, "--json", "--print-address"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address, err.read_text()
        yield address, events
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()
    events += [json.loads(line) for line in err.read_text().splitlines()]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def exchange_from(source: str, address: tuple[str, int], payload: bytes = b"hi\n") -> bytes:
    """Connect from `source`, send, and read until the server closes: b"" when refused."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(address)
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:  # the server's close may come first, as a reset
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
            return b""
        return b"".join(chunks)


def named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == name]


@pytest.mark.parametrize("mode", ["sync", "thread", "fork", "event"])
def test_tcp_serves_allowed_peers_and_closes_the_others_at_once(tmp_path, mode):
    with serving(tmp_path, "tcp", "127.0.0.1:0", "-c", mode, "--allow", "127.0.0.2") as (
        address,
        events,
    ):
        target = host_port(address)
        assert exchange_from("127.0.0.3", target) == b""
        assert exchange_from("127.0.0.3", target) == b""
        assert exchange_from("127.0.0.2", target) == b"hi\n"
    refusals = named(events, "refused")  # told once a second per peer: see the monitor's test
    assert {(e["client"].rpartition(":")[0], e["reason"]) for e in refusals} == {
        ("127.0.0.3", "matches no --allow rule")
    }
    assert [e["client"].rpartition(":")[0] for e in named(events, "connect")] == ["127.0.0.2"]
    (summary,) = named(events, "shutdown")
    assert (summary["connections"], summary["refused"]) == (1, 2)


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_the_plain_summary_counts_refusals(tmp_path, extra):
    proc = subprocess.Popen(
        [*COMMAND, "tcp", "127.0.0.1:0", "--deny", "127.0.0.3", "--print-address", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    target = host_port(proc.stdout.readline().strip())
    assert exchange_from("127.0.0.3", target) == b""
    assert exchange_from("127.0.0.4", target) == b"hi\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "refused 127.0.0.3:" in err and "denied by --deny 127.0.0.3" in err
    assert "1 connection," in err and ", 1 refused" in err
    assert "Traceback" not in err


def test_ipv6_peers_are_matched_too(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with serving(tmp_path, "tcp", "[::1]:0", "--deny", "::1") as (address, events):
        assert exchange_from("::1", host_port(address)) == b""
    assert [e["reason"] for e in named(events, "refused")] == ["denied by --deny ::1"]
    assert named(events, "connect") == []


@pytest.mark.parametrize("mode", ["sync", "thread", "event"])
def test_a_refused_datagram_is_dropped_unanswered(tmp_path, mode):
    with serving(tmp_path, "udp", "127.0.0.1:0", "-c", mode, "--deny", "127.0.0.3") as (
        address,
        events,
    ):
        target = host_port(address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as refused:
            refused.bind(("127.0.0.3", 0))
            refused.sendto(b"nope", target)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as served:
            served.settimeout(10)
            served.bind(("127.0.0.2", 0))
            served.sendto(b"yes", target)
            # Served in order: once this reply is back, the refused datagram was dropped.
            assert served.recvfrom(100)[0] == b"yes"
    (summary,) = named(events, "shutdown")
    assert (summary["requests"], summary["refused"]) == (1, 1)
    assert [e["client"].rpartition(":")[0] for e in named(events, "refused")] == ["127.0.0.3"]


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
@pytest.mark.parametrize("mode", ["thread", "event"])
def test_unix_peers_are_served_by_their_user(tmp_path, mode):
    path = str(tmp_path / "s.sock")
    other = str(os.getuid() + 1)
    for uid, expected in ((str(os.getuid()), b"hi"), (other, b"")):
        with serving(tmp_path, "unix", path, "-c", mode, "--allow-uid", uid) as (_, events):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(path)
                try:
                    sock.sendall(b"hi")
                    sock.shutdown(socket.SHUT_WR)
                    got = sock.recv(100)
                except OSError as exc:  # the server's close may come first, as a reset
                    if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                        raise
                    got = b""
            assert got == expected
        refusals = named(events, "refused")
        if expected:
            assert refusals == []
        else:
            assert len(refusals) == 1 and f"uid {os.getuid()}" in refusals[0]["reason"]
        assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tcp", ":0", "--allow", "10.0.0.0/33"], "is not an address or network"),
        (["tcp", ":0", "--deny", "no-such-host.invalid"], "not an address, a network or a host"),
        (["unix", "/tmp/sockserve-never.sock", "--allow", "127.0.0.1"], "a unix socket's peers"),
        (["tcp", ":0", "--allow-uid", "0"], "a tcp peer has none"),
        (["unix-dgram", "/tmp/sockserve-never.sock", "--allow-uid", "0"], "unix-dgram peer"),
        (["tcp", ":0", "--allow-uid", "-1"], "--allow-uid"),
    ],
)
def test_bad_rules_are_one_line_and_exit_2(args, message):
    proc = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_rule_file_with_a_bad_line_is_refused(tmp_path):
    rules = tmp_path / "allow.txt"
    rules.write_text("127.0.0.1\n300.1.1.1/8\n")
    proc = subprocess.run(
        [*COMMAND, "tcp", ":0", "--allow-file", str(rules)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert f"--allow-file {rules}: '300.1.1.1/8'" in proc.stderr
