"""InheritedSocketPart: a framework server on a socket it did not create."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from sockserve import socketserver as ss
from sockserve.compose import server_class
from sockserve.parts.inherited import InheritedSocketPart
from sockserve.parts.unix_file import UnixFilePart


class Upper(ss.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


def test_serves_the_inherited_unix_socket_and_leaves_its_file(tmp_path: Path) -> None:
    path = str(tmp_path / "in.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    cls = server_class("unix", "stream", "thread", [InheritedSocketPart])
    assert UnixFilePart not in cls.__mro__  # the file is not the server's to check or remove
    cls = type("Inherited", (cls,), {"inherited_fd": os.dup(listener.fileno())})
    server = cls(path, Upper)
    assert server.server_address == path
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(path)
            client.sendall(b"hello\n")
            assert client.recv(100) == b"HELLO\n"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert os.path.exists(path)
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)  # ours: still listening
    listener.close()


def test_inetd_part_serves_the_one_connection_then_stops() -> None:
    from sockserve.parts.inherited import InetdPart
    from sockserve.parts.requests import RequestsPart

    a, b = socket.socketpair()
    with a, b:
        base = server_class("unix", "stream", "sync", [InetdPart])
        assert UnixFilePart not in base.__mro__ and RequestsPart in base.__mro__
        cls = type("Inetd", (base,), {"connection_fd": b.fileno()})
        server = cls("", Upper)
        a.settimeout(5)
        a.sendall(b"one\n")
        server.serve_forever()  # handles the connection, then returns
        assert server.stop_reason == "the connection was served"
        server.server_close()
        assert a.recv(100) == b"ONE\n"
        assert a.recv(100) == b""  # shut down for writing once served
