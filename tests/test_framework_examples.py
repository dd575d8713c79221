"""`import sockserve as socketserver` runs stdlib programs unchanged: the seed's examples.

The four examples of the socketserver page, retold against sockserve on port 0, plus handlers
written for the stdlib's classes running on sockserve's servers (and the other way round).
"""

from __future__ import annotations

import signal
import socket
import socketserver as stdlib_socketserver
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import sockserve as socketserver

if TYPE_CHECKING:
    from conftest import Transport

pytestmark = pytest.mark.leakcheck

EXAMPLES = Path(__file__).parent / "seed_examples"


class UpperOnceHandler(socketserver.BaseRequestHandler):
    """The TCP example's handler: one recv(), print what came, send it back upper-cased."""

    def handle(self) -> None:
        self.data = self.request.recv(1024).strip()
        print(f"Received from {self.client_address[0]}:")
        print(self.data)
        self.request.sendall(self.data.upper())


class UpperLineHandler(socketserver.StreamRequestHandler):
    """The StreamRequestHandler variant: readline() on rfile, write() on wfile."""

    def handle(self) -> None:
        self.data = self.rfile.readline().strip()
        print(f"{self.client_address[0]} wrote:")
        print(self.data)
        self.wfile.write(self.data.upper())


class UpperDatagramHandler(socketserver.BaseRequestHandler):
    """The UDP example's handler: request is (data, socket); reply with sendto()."""

    def handle(self) -> None:
        data = self.request[0].strip()
        sock = self.request[1]
        print(f"{self.client_address[0]} wrote:")
        print(data)
        sock.sendto(data.upper(), self.client_address)


def tcp_client(address: tuple[str, int], text: str) -> str:
    """The example client: connect, send a line, return one recv() of the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        sock.sendall(bytes(text + "\n", "utf-8"))
        return str(sock.recv(1024), "utf-8")


def udp_client(address: tuple[str, int], text: str) -> str:
    """The example UDP client: no connect(), sendto() then recv()."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(bytes(text + "\n", "utf-8"), address)
        return str(sock.recv(1024), "utf-8")


@pytest.mark.parametrize(
    ("server_class", "handler", "client"),
    [
        (socketserver.TCPServer, UpperOnceHandler, tcp_client),
        (socketserver.TCPServer, UpperLineHandler, tcp_client),
        (socketserver.UDPServer, UpperDatagramHandler, udp_client),
    ],
    ids=["tcp", "tcp-stream-handler", "udp"],
)
def test_upper_case_examples(
    server_class: type[Any],
    handler: type[Any],
    client: Callable[[tuple[str, int], str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with server_class(("127.0.0.1", 0), handler) as server:
        loop = threading.Thread(target=server.serve_forever, daemon=True)
        loop.start()
        try:
            assert client(server.server_address, "hello world with TCP") == "HELLO WORLD WITH TCP"
            assert client(server.server_address, "python is nice") == "PYTHON IS NICE"
        finally:
            server.shutdown()
            loop.join()
    printed = capsys.readouterr().out.splitlines()
    assert printed[1::2] == ["b'hello world with TCP'", "b'python is nice'"]
    assert all("127.0.0.1" in line for line in printed[::2]), printed


class ThreadedEchoNameHandler(socketserver.BaseRequestHandler):
    """The ThreadingMixIn example's handler: answer with the thread's name and the message."""

    def handle(self) -> None:
        data = str(self.request.recv(1024), "ascii")
        name = threading.current_thread().name
        self.request.sendall(bytes(f"{name}: {data}", "ascii"))


class ThreadedTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    pass


def test_threading_mixin_example() -> None:
    server = ThreadedTCPServer(("127.0.0.1", 0), ThreadedEchoNameHandler)
    with server:
        ip, port = server.server_address
        loop = threading.Thread(target=server.serve_forever, daemon=True)
        loop.start()
        answers = []
        for n in (1, 2, 3):
            with socket.create_connection((ip, port), timeout=5) as sock:
                sock.sendall(bytes(f"Hello World {n}", "ascii"))
                answers.append(str(sock.recv(1024), "ascii"))
        server.shutdown()
        loop.join()
    names = [answer.partition(": ")[0] for answer in answers]
    assert [answer.partition(": ")[2] for answer in answers] == [
        "Hello World 1",
        "Hello World 2",
        "Hello World 3",
    ]
    assert len(set(names)) == 3, "each request gets its own thread"
    assert loop.name not in names and threading.current_thread().name not in names


def test_whole_program_runs_and_stops_on_ctrl_c() -> None:
    """The TCP example as a program: serves until SIGINT, which the `with` block survives."""
    program = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "upper_server.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert program.stdout is not None
        port = int(program.stdout.readline().split()[1])
        assert tcp_client(("127.0.0.1", port), "hello world with TCP") == "HELLO WORLD WITH TCP"
        assert program.stdout.readline() == "127.0.0.1 wrote: b'hello world with TCP'\n"
        program.send_signal(signal.SIGINT)
        out, err = program.communicate(timeout=10)
    finally:
        if program.poll() is None:
            program.kill()
            program.communicate()
    assert out == "closing\n"
    assert "KeyboardInterrupt" in err
    assert program.returncode == -signal.SIGINT


# -- handlers written for the stdlib's classes ------------------------------------------------


class StdlibStreamUpper(stdlib_socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class StdlibDatagramUpper(stdlib_socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


class OurStreamUpper(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class OurDatagramUpper(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


@pytest.mark.parametrize("concurrency", ["sync", "threading", "forking"])
def test_stdlib_handlers_on_our_servers(transport: Transport, concurrency: str) -> None:
    handler = StdlibStreamUpper if transport.stream else StdlibDatagramUpper
    with transport.make(handler, concurrency) as server:
        with transport.client(server) as client:
            client.sendall(b"from the stdlib\n")
            server.handle_request()
            assert transport.receive(client) == b"FROM THE STDLIB\n"


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_our_handlers_on_stdlib_servers(kind: str) -> None:
    if kind == "tcp":
        server_class, handler = stdlib_socketserver.TCPServer, OurStreamUpper
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        server_class, handler = stdlib_socketserver.UDPServer, OurDatagramUpper
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server_class(("127.0.0.1", 0), handler) as server, sock:
        sock.settimeout(5)
        sock.connect(server.server_address)
        sock.sendall(b"from sockserve\n")
        server.handle_request()
        assert sock.recv(1024) == b"FROM SOCKSERVE\n"
