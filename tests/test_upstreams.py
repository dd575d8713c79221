"""sockserve/upstreams.py: --forward's UPSTREAM, parsed as ADDRESS is, and the self check."""

from __future__ import annotations

import pytest

from sockserve.addresses import Address
from sockserve.config import build_config
from sockserve.errors import UsageError
from sockserve.upstreams import check_not_self, parse_upstream, upstream_url


@pytest.mark.parametrize(
    ("text", "socktype", "expected"),
    [
        ("127.0.0.1:8080", "stream", Address("inet", host="127.0.0.1", port=8080)),
        (":8080", "stream", Address("inet", host="127.0.0.1", port=8080)),
        ("[::1]:53", "dgram", Address("inet6", host="::1", port=53)),
        ("localhost:80", "stream", Address("inet", host="localhost", port=80)),
        ("/tmp/app.sock", "stream", Address("unix", path="/tmp/app.sock")),
        ("./app.sock", "stream", Address("unix", path="./app.sock")),
        ("@app", "dgram", Address("unix", path="app", abstract=True)),
        ("tcp://127.0.0.1:80", "stream", Address("inet", host="127.0.0.1", port=80)),
        ("udp://[::1]:53", "dgram", Address("inet6", host="::1", port=53)),
        ("unix:///tmp/a", "stream", Address("unix", path="/tmp/a")),
        ("unix-dgram://@log", "dgram", Address("unix", path="log", abstract=True)),
    ],
)
def test_upstream_forms(text: str, socktype: str, expected: Address) -> None:
    assert parse_upstream(text, socktype) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "socktype", "says"),
    [
        ("udp://127.0.0.1:53", "stream", "a stream listener cannot forward to a datagram"),
        ("unix:///tmp/a", "dgram", "a datagram listener cannot forward to a stream"),
        ("http://x:80", "stream", "unknown transport 'http'"),
        ("app.sock", "stream", "no port"),
        ("127.0.0.1:0", "stream", "port 0 names no server"),
        ("127.0.0.1:70000", "stream", "out of range"),
        ("", "stream", "needs an address"),
        ("tcp://", "stream", "needs an address"),
    ],
)
def test_bad_upstreams_are_one_line_usage_errors(text: str, socktype: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as info:
        parse_upstream(text, socktype)  # type: ignore[arg-type]
    assert "\n" not in info.value.one_line()


def test_upstream_url() -> None:
    assert upstream_url(Address("inet6", host="::1", port=5), "dgram") == "udp://[::1]:5"
    assert upstream_url(Address("unix", path="/a"), "stream") == "unix:///a"


@pytest.mark.parametrize(
    ("upstream", "family", "bound", "all_interfaces"),
    [
        (Address("inet", host="127.0.0.1", port=4000), "inet", ("127.0.0.1", 4000), False),
        (Address("inet", host="localhost", port=4000), "inet", ("127.0.0.1", 4000), False),
        (Address("inet", host="127.0.0.1", port=4000), "inet", ("0.0.0.0", 4000), True),
        (Address("inet6", host="::1", port=4000), "inet6", ("::", 4000, 0, 0), True),
        (Address("unix", path="/tmp/x/../s"), "unix", "/tmp/s", False),
        (Address("unix", path="s", abstract=True), "unix", b"\0s", False),
    ],
)
def test_own_address_is_refused(
    upstream: Address, family: str, bound: object, all_interfaces: bool
) -> None:
    with pytest.raises(UsageError, match="this server's own address"):
        check_not_self(upstream, family, bound, all_interfaces)


@pytest.mark.parametrize(
    ("upstream", "family", "bound"),
    [
        (Address("inet", host="127.0.0.1", port=4001), "inet", ("127.0.0.1", 4000)),
        (Address("inet", host="127.0.0.2", port=4000), "inet", ("127.0.0.1", 4000)),
        (Address("unix", path="/tmp/t"), "unix", "/tmp/s"),
        (Address("unix", path="/tmp/s"), "inet", ("127.0.0.1", 4000)),
    ],
)
def test_other_addresses_pass(upstream: Address, family: str, bound: object) -> None:
    check_not_self(upstream, family, bound, False)


def test_forward_implies_the_handler_and_refuses_another() -> None:
    config = build_config(proto="tcp", address=":0", forward="127.0.0.1:9")
    assert config.handler.builtin == "forward" and config.forward is not None
    assert build_config(proto="unix", address="/tmp/p", handler="forward", forward=":9").forward
    with pytest.raises(UsageError, match="cannot be combined with -H upper"):
        build_config(proto="tcp", address=":0", handler="upper", forward=":9")
    with pytest.raises(UsageError, match="-H forward needs --forward"):
        build_config(proto="tcp", address=":0", handler="forward")


def test_forward_on_datagrams() -> None:
    config = build_config(proto="udp", address=":0", forward=":53", timeout=2.0)
    assert config.timeout == 2.0  # the association's idle time
    with pytest.raises(UsageError, match="--timeout closes idle connections"):
        build_config(proto="udp", address=":0", timeout=2.0)  # other handlers: still refused
    with pytest.raises(UsageError, match="cannot run with -c fork"):
        build_config(proto="udp", address=":0", forward=":53", concurrency="fork")
    with pytest.raises(UsageError, match="not with --workers"):
        build_config(proto="unix-dgram", address="/tmp/d", forward=":53", workers=2)
    assert build_config(proto="tcp", address=":0", forward=":53", concurrency="fork").forward
