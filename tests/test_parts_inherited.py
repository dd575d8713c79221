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
