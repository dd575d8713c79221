"""addresses: PROTO/--family/--type resolution, ADDRESS parsing and formatting (no sockets)."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import pytest

from sockserve import addresses
from sockserve.addresses import (
    Address,
    format_bound,
    format_host_port,
    format_plain,
    parse_address,
    resolve_transport,
)
from sockserve.errors import UsageError


@pytest.mark.parametrize(
    ("proto", "family", "socktype", "expected"),
    [
        ("tcp", None, None, (None, "stream")),
        ("udp", None, None, (None, "dgram")),
        ("unix", None, None, ("unix", "stream")),
        ("unix-dgram", None, None, ("unix", "dgram")),
        ("tcp", "inet6", "stream", ("inet6", "stream")),
        ("udp", "inet", "dgram", ("inet", "dgram")),
        ("unix", "unix", "stream", ("unix", "stream")),
    ],
)
def test_resolve_transport(proto: str, family: str | None, socktype: str | None, expected) -> None:
    assert resolve_transport(proto, family, socktype) == expected


@pytest.mark.parametrize(
    ("proto", "family", "socktype", "message"),
    [
        ("tcp", "unix", None, "--family unix contradicts tcp"),
        ("unix", "inet", None, "--family inet contradicts unix"),
        ("udp", None, "stream", "--type stream contradicts udp"),
        ("unix", None, "dgram", "--type dgram contradicts unix"),
    ],
)
def test_resolve_transport_contradictions(
    proto: str, family: str | None, socktype: str | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        resolve_transport(proto, family, socktype)
    assert info.value.hint


@pytest.mark.parametrize(
    ("text", "family", "expected"),
    [
        (":9999", None, Address("inet", "127.0.0.1", 9999)),
        ("9999", None, Address("inet", "127.0.0.1", 9999)),
        (":0", "inet6", Address("inet6", "::1", 0)),
        ("127.0.0.2:80", None, Address("inet", "127.0.0.2", 80)),
        ("localhost:8080", None, Address("inet", "localhost", 8080)),
        ("[::1]:5", None, Address("inet6", "::1", 5)),
        ("[::]:5", None, Address("inet6", "::", 5)),
        ("0.0.0.0:7", None, Address("inet", "0.0.0.0", 7)),
        ("*:7", None, Address("inet", "0.0.0.0", 7)),
        ("*:7", "inet6", Address("inet6", "::", 7)),
        (" :1 ", None, Address("inet", "127.0.0.1", 1)),
        ("/tmp/a.sock", "unix", Address("unix", path="/tmp/a.sock")),
        ("rel.sock", "unix", Address("unix", path="rel.sock")),
        ("@app", "unix", Address("unix", path="app", abstract=True)),
    ],
)
def test_parse_address(text: str, family: str | None, expected: Address) -> None:
    assert parse_address(text, family) == expected  # type: ignore[arg-type]


def test_all_interfaces_and_sockaddr() -> None:
    assert not parse_address(":1", None).all_interfaces
    assert parse_address("0.0.0.0:1", None).all_interfaces
    assert parse_address("[::]:1", None).all_interfaces
    assert parse_address("@x", "unix").sockaddr() == "\0x"
    assert parse_address("/tmp/s", "unix").sockaddr() == "/tmp/s"
    assert parse_address("[::1]:3", None).sockaddr() == ("::1", 3)
    assert str(parse_address("[::1]:3", None)) == "[::1]:3"
    assert str(parse_address(":3", None)) == "127.0.0.1:3"
    assert str(parse_address("@x", "unix")) == "@x"


@pytest.mark.parametrize(
    ("text", "family", "message"),
    [
        ("", None, "empty"),
        ("127.0.0.1:99999", None, "port 99999 is out of range"),
        ("127.0.0.1:http", None, "bad port"),
        ("127.0.0.1", None, "no port"),
        ("::1:80", None, "brackets"),
        ("[::1]80", None, r"\[::1\]:PORT"),
        ("[zz]:80", None, "not an IPv6 address"),
        ("[::1]:80", "inet", "--family is inet"),
        ("127.0.0.1:80", "inet6", r"'127\.0\.0\.1:80' is IPv4 but --family is inet6"),
        ("10.0.0.1:80", "inet6", r"an IPv6 address such as \[::1\]:80"),
        ("bad_host!:80", None, "neither an IPv4 address nor a host name"),
        ("/tmp/x.sock", None, "looks like a path"),
        ("127.0.0.1:80", "unix", "internet address"),
        ("/tmp/" + "x" * 200, "unix", "limit is 107"),
        ("@", "unix", "needs a name"),
        ("/tmp/dir/", "unix", "directory"),
    ],
)
def test_parse_address_errors(text: str, family: str | None, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_address(text, family)  # type: ignore[arg-type]
    assert re.search(message, f"{info.value}; {info.value.hint}")
    assert "\n" not in str(info.value)


def test_formatting() -> None:
    assert format_bound("inet", "stream", ("127.0.0.1", 4)) == "tcp://127.0.0.1:4"
    assert format_bound("inet6", "dgram", ("::1", 4, 0, 0)) == "udp://[::1]:4"
    assert format_bound("unix", "stream", "/tmp/a") == "unix:///tmp/a"
    assert format_bound("unix", "dgram", b"\0name") == "unix-dgram://@name"
    assert format_plain("inet", "stream", ("127.0.0.1", 4)) == "127.0.0.1:4"
    assert format_plain("inet6", "stream", ("::1", 4, 0, 0)) == "[::1]:4"
    assert format_host_port(("::1", 4, 0, 0)) == "::1 4"  # no brackets: `read -r host port`
    assert format_host_port(("127.0.0.1", 4)) == "127.0.0.1 4"
    assert format_plain("unix", "stream", b"/tmp/b") == "/tmp/b"


def test_plain_output_parses_back() -> None:
    """What --print-address prints is itself a valid ADDRESS."""
    for family, sockaddr in [("inet", ("127.0.0.1", 9)), ("inet6", ("::1", 9, 0, 0))]:
        text = format_plain(family, "stream", sockaddr)
        assert parse_address(text, None).sockaddr()[:2] == sockaddr[:2]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "0.0.0.0", "255.255.255.255", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1",
     "1.2.3.4 ", "١.2.3.4", "a.b.c.d", "", "1..2.3", "00.0.0.0", "0.0.0.00", "1.2.3.-4", "\0",
     "\udcff", "1.2.3.4%eth0"],
)  # fmt: skip
def test_an_ipv4_host_is_what_ipaddress_accepts(host: str) -> None:
    assert addresses._is_ipv4(host) is _accepted(ipaddress.IPv4Address, host)


@pytest.mark.parametrize(
    "host",
    ["::", "::1", "fe80::1%eth0", "0:0:0:0:0:0:0:0", "::ffff:0.0.0.0", "::ffff:1.2.3.4", "1::",
     "::ffff:01.2.3.4", ":::", "1:2:3:4:5:6:7:8:9", "g::1", "1.2.3.4", "", "::1\0"],
)  # fmt: skip
def test_an_ipv6_host_is_what_ipaddress_accepts(host: str) -> None:
    packed = addresses._packed(socket.AF_INET6, host)
    assert (packed is not None) is _accepted(ipaddress.IPv6Address, host.split("%")[0])


@pytest.mark.parametrize(
    ("host", "unspecified"),
    [("0.0.0.0", True), ("0", True), ("0x0", True), ("000.0.0.0", True), ("::", True),
     ("::0", True), ("0:0::0", True), ("::ffff:0.0.0.0", True), ("127.0.0.1", False),
     ("::1", False), ("localhost", False), ("::ffff:127.0.0.1", False), ("0.0.0.1", False)],
)  # fmt: skip
def test_all_interfaces_in_any_spelling(host: str, unspecified: bool) -> None:
    assert addresses._is_unspecified(host) is unspecified


def _accepted(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True
