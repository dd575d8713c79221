"""sockserve.tls: the run's SSLContext, its throwaway certificates and files, what a
handshake tells; and sockserve.tls_asyncio: event mode's handshakes, on every loop."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from servertools import EventsRecorder

from sockserve.config import build_config
from sockserve.event import EventServer
from sockserve.tls import TlsSetup, failure_info, prepare_tls, server_names

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    pass
else:
    LOOPS["uvloop"] = uvloop.new_event_loop


@pytest.fixture
def setups() -> Iterator[Callable[..., TlsSetup]]:
    made: list[TlsSetup] = []

    def make(**options: Any) -> TlsSetup:
        options.setdefault("proto", "tcp")
        options.setdefault("address", "127.0.0.1:0")
        setup = prepare_tls(build_config(tls=True, **options))
        made.append(setup)
        return setup

    yield make
    for setup in made:
        setup.close()


def handshake(setup: TlsSetup, hostname: str, cafile: str) -> ssl.SSLSocket:
    """A verified client handshake with `setup`'s context over a socket pair; the client."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server = setup.context.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    done = threading.Thread(target=server.do_handshake)
    done.start()
    try:
        client = ssl.create_default_context(cafile=cafile).wrap_socket(b, server_hostname=hostname)
    finally:
        done.join(10)
        server.close()
    return client


def test_the_throwaway_certificate(setups: Callable[..., TlsSetup]) -> None:
    setup = setups(tls_name=("svc.test", "10.1.2.3"))
    assert setup.ca_path is not None
    with handshake(setup, "svc.test", setup.ca_path) as client:
        der = client.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"svc.test", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    addresses = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert addresses == {"127.0.0.1", "::1", "10.1.2.3"}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=8)


def test_server_names() -> None:
    config = build_config(proto="tcp", address="192.0.2.7:0", tls=True, tls_name=("a.test",))
    assert server_names(config) == ["192.0.2.7", "localhost", "127.0.0.1", "::1", "a.test"]
    config = build_config(proto="tcp", address="0.0.0.0:0", tls=True)
    assert server_names(config)[0] == socket.gethostname()
    config = build_config(proto="unix", address="/tmp/x.sock", tls=True)
    assert server_names(config) == ["localhost", "127.0.0.1", "::1"]


def test_the_ca_file_is_private_and_temporary(setups: Callable[..., TlsSetup]) -> None:
    setup = setups()
    assert setup.ca_path is not None and setup.temp_dir is not None
    assert stat.S_IMODE(os.stat(setup.ca_path).st_mode) == 0o600
    assert os.listdir(setup.temp_dir) == ["ca.pem"]  # no key beside it
    assert "PRIVATE KEY" not in Path(setup.ca_path).read_text()
    assert setup.details() == {"tls_ca": setup.ca_path}
    setup.close()
    assert not os.path.exists(setup.temp_dir or os.path.dirname(setup.ca_path))


def test_ca_out_and_client_cert_out_are_written_with_mode_600(
    setups: Callable[..., TlsSetup], tmp_path: Path
) -> None:
    ca_out = tmp_path / "ca.pem"
    ca_out.write_text("old")
    os.chmod(ca_out, 0o644)
    setup = setups(tls_ca_out=str(ca_out), tls_client_cert_out=str(tmp_path / "c"))
    assert setup.ca_path == str(ca_out) and setup.temp_dir is None
    for path in (ca_out, tmp_path / "c" / "client.pem", tmp_path / "c" / "client.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "BEGIN CERTIFICATE" in ca_out.read_text()
    assert setup.context.verify_mode == ssl.CERT_REQUIRED
    setup.close()
    assert ca_out.exists()


def test_alpn_and_minimum_version(setups: Callable[..., TlsSetup]) -> None:
    setup = setups(alpn="h2, http/1.1", tls_min="1.3", tls_handshake_timeout=2.5)
    assert setup.context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert setup.handshake_timeout == 2.5


def test_failure_reasons() -> None:
    assert failure_info(TimeoutError("timed out"), 2) == {"error": "no handshake within 2s"}
    gone = failure_info(ConnectionResetError(104, "reset"), 2)["error"]
    assert gone == "the client closed the connection during the handshake"
    other = failure_info(ValueError("odd"), 2)["error"]
    assert other == "ValueError: odd"


# -- event mode -------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Tagged(EventsRecorder):
    wants_counts = True


@pytest.mark.parametrize("loop", list(LOOPS))
def test_event_mode_handshakes_on_every_loop(setups: Callable[..., TlsSetup], loop: str) -> None:
    setup = setups()
    assert setup.ca_path is not None
    listener = socket.create_server(("127.0.0.1", 0))
    events = Tagged()
    server = EventServer(listener, Echo, events=events, tls=setup, loop_factory=LOOPS[loop])
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        address = listener.getsockname()
        context = ssl.create_default_context(cafile=setup.ca_path)
        for _ in range(2):
            raw = socket.create_connection(address, timeout=10)
            with context.wrap_socket(raw, server_hostname="localhost") as client:
                client.sendall(b"ping")
                assert client.recv(10) == b"ping"
        with socket.create_connection(address, timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                assert plain.recv(10) == b""
            except ConnectionResetError:
                pass
        with events.changed:
            assert events.changed.wait_for(lambda: len(events.named("record")) == 3, 10)
    finally:
        server.request_stop()
        thread.join(10)
        server.close_connections(0)
    handshakes = [info for _, info in events.named("tls")]
    assert [info.get("sni") for info in handshakes[:2]] == ["localhost", "localhost"]
    assert "not TLS" in handshakes[2]["error"]
    assert len(events.named("connected")) == 3
    assert sorted(counts for _, *counts in events.named("record")) == [[0, 0], [4, 4], [4, 4]]
    assert not events.named("handler_error")


class Small(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.got = b""
        self.buffer = bytearray(3)
        self.eof = False

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.got += bytes(self.buffer[:nbytes])

    def eof_received(self) -> bool:
        self.eof = True
        return False


class FakeTransport:
    def __init__(self) -> None:
        self.protocol: Any = None
        self.closed = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_what_came_before_the_protocol_took_over_is_handed_to_it() -> None:
    from sockserve.tls_asyncio import _Gate

    class Conn:
        protocol = Small()

    gate = _Gate(Conn())
    gate.data_received(b"early ")
    gate.data_received(b"bytes")
    assert gate.eof_received() is True  # the connection stays until the protocol decides
    transport = FakeTransport()
    gate.hand_over(transport)
    assert transport.protocol is Conn.protocol
    assert (Conn.protocol.got, Conn.protocol.eof) == (b"early bytes", True)
    assert transport.closed  # its eof_received said False: closed, as asyncio would
