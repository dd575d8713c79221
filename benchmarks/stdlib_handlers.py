"""The stdlib socketserver handlers of the benchmark peers, as a module of their own.

`peers.py stdlib` serves them on the stdlib's servers; the benchmark also hands the stream ones
to sockserve (`-H benchmarks/stdlib_handlers.py:EchoStream`), to measure how a user's own handler
fares in sockserve's thread mode next to the builtins. They read into one preallocated buffer,
send back with sendall, set TCP_NODELAY, and end quietly when the client resets.
"""

import socket
import socketserver

CHUNK = 65536
PEER_GONE = (ConnectionResetError, BrokenPipeError)


class EchoStream(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while n := sock.recv_into(buf):
                sock.sendall(view[:n])
        except PEER_GONE:
            pass


class DiscardStream(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buf = bytearray(CHUNK)
        try:
            while self.request.recv_into(buf):
                pass
        except PEER_GONE:
            pass


class EchoDatagram(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        if self.client_address:  # an unbound unix client cannot be answered
            try:
                sock.sendto(data, socket.MSG_DONTWAIT, self.client_address)
            except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
                pass


class DiscardDatagram(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass
