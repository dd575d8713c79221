"""The client against real servers: sockserve's fixtures start them, on port 0."""

import pytest
from lineclient import ClientError, LineClient, udp_request


def test_request_gets_the_reply_line(sockserve_server):
    server = sockserve_server("tcp", handler="upper")
    client = LineClient(server.address)
    assert client.request(b"hello") == b"HELLO"
    assert server.wait_for_data(b"hello\n").data_in == b"hello\n"


def test_echo_in_one_line(sockserve_echo):
    assert LineClient(sockserve_echo.address).request(b"ping") == b"ping"


def test_unix_socket(sockserve_server):
    server = sockserve_server("unix", handler="upper")  # a socket in a temporary directory
    assert LineClient(server.path).request(b"over unix") == b"OVER UNIX"


def test_one_connection_per_request(sockserve_echo):
    client = LineClient(sockserve_echo.address)
    for word in (b"a", b"b", b"c"):
        assert client.request(word) == word
    connections = sockserve_echo.wait_for_connections(3)
    assert [c.data_in for c in connections] == [b"a\n", b"b\n", b"c\n"]


def test_gives_up_when_nobody_listens(sockserve_server):
    server = sockserve_server("tcp")
    server.stop()  # the port is free again: connecting is refused
    client = LineClient(server.address, retries=2)
    with pytest.raises(ClientError, match="no answer after 3 attempts"):
        client.request(b"anyone?")
    assert client.attempts == 3


def test_udp_request(sockserve_server):
    server = sockserve_server("udp", handler="upper")
    assert udp_request(server.address, b"datagram") == b"DATAGRAM"
