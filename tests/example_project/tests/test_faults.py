"""The client against misbehaving servers: sockserve's faults and TLS, as keywords."""

import ssl
import time

import pytest
from lineclient import ClientError, LineClient, udp_request


def test_retries_a_server_that_resets_the_first_connections(sockserve_server):
    server = sockserve_server("tcp", handler="upper", fail_first=2)
    client = LineClient(server.address, retries=2)
    assert client.request(b"third time lucky") == b"THIRD TIME LUCKY"
    assert client.attempts == 3
    assert len(server.wait_for_connections(3)) == 3


def test_times_out_on_a_server_that_never_answers(sockserve_server):
    server = sockserve_server("tcp", stall=True)
    client = LineClient(server.address, timeout=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(ClientError, match="timed out"):
        client.request(b"hello?")
    assert time.monotonic() - started < 2  # two attempts of 0.2 s, not the default 2 s each


def test_reads_a_reply_split_into_pieces(sockserve_server):
    server = sockserve_server("tcp", handler="upper", chunk=1)  # replies in 1-byte writes
    assert LineClient(server.address).request(b"in pieces") == b"IN PIECES"


def test_verifies_the_servers_certificate(sockserve_server):
    server = sockserve_server("tcp", handler="upper", tls=True)
    context = ssl.create_default_context(cafile=server.ca_file)
    assert LineClient(server.address, tls=context).request(b"secret") == b"SECRET"
    with pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
        LineClient(server.address, tls=ssl.create_default_context(), retries=0).request(b"x")


def test_udp_gives_up_when_every_datagram_is_lost(sockserve_server):
    server = sockserve_server("udp", drop=100)
    with pytest.raises(ClientError, match="no answer after 3 datagrams"):
        udp_request(server.address, b"lost", timeout=0.1, retries=2)
