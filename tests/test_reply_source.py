"""UDP on 0.0.0.0 or [::] replies from the address each datagram arrived on (issue 15, item 5).

Every client here is connected (connect()), as `nc -u` and `socat UDP:` are: the kernel drops
a reply from any other source, so a reply from the wrong address is a timeout. The servers
bind the unspecified address; every client sends to a loopback address (127.0.0.2, 127.0.0.3,
::1).
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from clitools import finish, inet_address, spawn, wait_listening

from sockserve.arrival import IP_PKTINFO, replies_from_arrival, reply_ancillary

needs_pktinfo = pytest.mark.skipif(
    not replies_from_arrival(socket.AF_INET),
    reason="this platform does not tell a datagram's destination (no IP_PKTINFO)",
)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6_pktinfo = pytest.mark.skipif(
    not _has_ipv6() or not replies_from_arrival(socket.AF_INET6),
    reason="no IPv6 loopback, or no IPV6_RECVPKTINFO here",
)

USER_PROTOCOL = (
    "import asyncio\n"
    "class Rev(asyncio.DatagramProtocol):\n"
    "    def connection_made(self, transport):\n"
    "        self.transport = transport\n"
    "    def datagram_received(self, data, addr):\n"
    "        self.transport.sendto(data[::-1], addr)\n"
)
USER_HANDLERS = {
    "sendto": (
        "import socketserver\n"
        "class Rev(socketserver.DatagramRequestHandler):\n"
        "    def handle(self):\n"
        "        self.socket.sendto(self.packet[::-1], self.client_address)\n"
        "    def finish(self):\n"
        "        pass\n"
    ),
    "wfile": (
        "import sockserve\n"
        "class Rev(sockserve.DatagramRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(self.rfile.read()[::-1])\n"
    ),
}


def _ask(host: str, port: int, payload: bytes) -> bytes:
    """Send `payload` from a socket connected to (host, port); return the reply."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind((host, 0))
        s.connect((host, port))
        s.send(payload)
        return s.recv(100)


def _serve(args: list[str], hosts: list[str], answer, cwd: str | None = None) -> str:
    """Run `sockserve udp ARGS` for one datagram per host; check each connected client gets
    `answer(payload)`; return what the command printed."""
    child = spawn(["udp", *args, "--max-requests", str(len(hosts))], cwd=cwd)
    port = inet_address(wait_listening(child))[1]
    try:
        for i, host in enumerate(hosts):
            payload = b"to %s #%d" % (host.encode(), i)
            assert _ask(host, port, payload) == answer(payload), host
    except BaseException:
        child.terminate(force=True)
        raise
    status, out = finish(child)
    assert status == 0, out
    return out


@needs_pktinfo
@pytest.mark.parametrize("mode", ["sync", "thread", "fork", "event"])
@pytest.mark.parametrize("handler", ["echo", "upper"])
def test_builtins_reply_from_the_address_each_datagram_arrived_on(mode: str, handler: str) -> None:
    answer = bytes.upper if handler == "upper" else bytes
    out = _serve(
        ["0.0.0.0:0", "-H", handler, "-c", mode], ["127.0.0.2", "127.0.0.3", "127.0.0.1"], answer
    )
    assert "3 datagrams" in out


@needs_pktinfo
@pytest.mark.parametrize("mode", ["sync", "event"])
def test_a_watched_builtin_replies_from_the_arrival_address_too(mode: str) -> None:
    args = ["0.0.0.0:0", "-H", "upper", "-vv", "-c", mode]
    out = _serve(args, ["127.0.0.2", "127.0.0.3"], bytes.upper)
    assert "TO 127.0.0.2 #0" in out  # the hex dump's text column


@needs_pktinfo
def test_reply_text_comes_from_the_arrival_address() -> None:
    _serve(["0.0.0.0:0", "--reply", "pong"], ["127.0.0.2"], lambda _: b"pong")


@needs_pktinfo
@pytest.mark.parametrize("mode", ["sync", "thread", "fork"])
@pytest.mark.parametrize("how", sorted(USER_HANDLERS))
def test_user_datagram_handler_replies_from_the_arrival_address(
    sock_dir: str, mode: str, how: str
) -> None:
    path = os.path.join(sock_dir, "rev_handler.py")
    with open(path, "w") as f:
        f.write(USER_HANDLERS[how])
    out = _serve(
        ["0.0.0.0:0", "-H", path, "-c", mode, "-v"],
        ["127.0.0.2", "127.0.0.3"],
        lambda payload: payload[::-1],
    )
    assert "2 datagrams" in out


@needs_ipv6_pktinfo
@pytest.mark.parametrize("mode", ["sync", "thread", "fork", "event"])
def test_dual_stack_replies_from_the_arrival_address(mode: str) -> None:
    _serve(["[::]:0", "-H", "echo", "-c", mode], ["::1", "127.0.0.2", "127.0.0.3"], bytes)


@needs_pktinfo
@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
def test_user_protocol_in_event_mode_replies_from_the_arrival_address(
    sock_dir: str, address: str
) -> None:
    if address.startswith("[") and not replies_from_arrival(socket.AF_INET6):
        pytest.skip("no IPV6_RECVPKTINFO here")
    path = os.path.join(sock_dir, "rev_protocol.py")
    with open(path, "w") as f:
        f.write(USER_PROTOCOL)
    out = _serve(
        [address, "-H", path, "-c", "event", "-v"],
        ["127.0.0.2", "127.0.0.3"],
        lambda payload: payload[::-1],
    )
    assert "2 datagrams" in out


@needs_ipv6_pktinfo
def test_ipv6_user_handler_replies_to_a_connected_client(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rev_handler.py")
    with open(path, "w") as f:
        f.write(USER_HANDLERS["sendto"])
    _serve(["[::]:0", "-H", path], ["::1", "127.0.0.2"], lambda payload: payload[::-1])


@pytest.mark.parametrize(
    ("args", "chosen"),
    [
        (["udp", "0.0.0.0:0", "-H", "echo"], True),
        (["udp", "127.0.0.1:0", "-H", "echo"], False),  # the kernel's choice is the address
        (["udp", ":0", "-H", "echo", "-c", "thread"], False),
        (["tcp", "0.0.0.0:0", "-H", "echo"], False),  # a connection has one local address
    ],
)
def test_the_part_is_chosen_only_for_a_datagram_socket_on_all_interfaces(
    args: list[str], chosen: bool, captured: list
) -> None:
    from servertools import config_for

    from sockserve.compose import choose_parts
    from sockserve.parts.reply_source import ReplySourcePart

    config = config_for(captured, *args)
    parts, _ = choose_parts(config, config.concurrency, None)
    assert (ReplySourcePart in parts) is (chosen and replies_from_arrival(socket.AF_INET))


@needs_pktinfo
def test_reply_source_is_the_local_address_of_an_ipv4_datagram() -> None:
    # ipi_spec_dst (the local address) is the source, also for a datagram sent to a
    # broadcast address (ipi_addr); any interface (0) may carry the reply.
    got = struct.pack(
        "I4s4s", 1, socket.inet_aton("127.0.0.2"), socket.inet_aton("127.255.255.255")
    )
    local = socket.inet_aton("127.0.0.2")
    assert reply_ancillary([(socket.IPPROTO_IP, IP_PKTINFO, got)]) == [
        (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("I4s4s", 0, local, local))
    ]


def test_no_reply_source_from_an_ipv6_multicast_group_or_without_pktinfo() -> None:
    group = socket.inet_pton(socket.AF_INET6, "ff02::1") + struct.pack("I", 1)
    assert reply_ancillary([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, group)]) == []
    assert reply_ancillary([]) == []  # the kernel picks the source, as before
