"""The Python peers sockserve is measured against: stdlib socketserver and asyncio servers.

    python benchmarks/peers.py stdlib TRANSPORT ADDRESS HANDLER MODE
    python benchmarks/peers.py asyncio TRANSPORT ADDRESS HANDLER [uvloop]
    python benchmarks/peers.py proxy tcp ADDRESS UPSTREAM [uvloop]

TRANSPORT is tcp, udp, unix or unix-dgram; ADDRESS is HOST:PORT (port 0 picks one) or a path;
HANDLER is echo or discard; MODE is sync, thread or fork (the stdlib's TCPServer,
ThreadingTCPServer, ForkingTCPServer and their UDP and unix equivalents).

The proxy is a TCP proxy written the plain way on asyncio (uvloop): two protocols relaying to
each other, each pausing the other's reading while its write buffer is full.

Each prints its bound address on stdout once listening and serves until SIGTERM. The handlers
do what sockserve's builtins do, the way a careful stdlib user would write them: read into one
preallocated buffer, send back with sendall, set TCP_NODELAY, end quietly when the client
resets; the listen backlog is sockserve's default (2048). Only loopback addresses are accepted.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from typing import Any

BACKLOG = 2048
CHUNK = 65536


def parse(transport: str, text: str) -> tuple[int, Any]:
    """(family, sockaddr) for TRANSPORT and ADDRESS; refuse anything but loopback."""
    if transport.startswith("unix"):
        return socket.AF_UNIX, text
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing {text}: loopback addresses only")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port))


def show(family: int, sockaddr: Any) -> None:
    if family == socket.AF_UNIX:
        text = sockaddr if isinstance(sockaddr, str) else sockaddr.decode()
    elif family == socket.AF_INET6:
        text = f"[{sockaddr[0]}]:{sockaddr[1]}"
    else:
        text = f"{sockaddr[0]}:{sockaddr[1]}"
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_stdlib(transport: str, address: str, handler: str, mode: str) -> None:
    import socketserver as ss

    from stdlib_handlers import DiscardDatagram, DiscardStream, EchoDatagram, EchoStream

    family, sockaddr = parse(transport, address)
    stream = transport in ("tcp", "unix")

    if stream:
        handler_cls: type = EchoStream if handler == "echo" else DiscardStream
        base: type = ss.UnixStreamServer if family == socket.AF_UNIX else ss.TCPServer
    else:
        handler_cls = EchoDatagram if handler == "echo" else DiscardDatagram
        base = ss.UnixDatagramServer if family == socket.AF_UNIX else ss.UDPServer
    mixin = {"sync": None, "thread": ss.ThreadingMixIn, "fork": ss.ForkingMixIn}[mode]
    bases = (base,) if mixin is None else (mixin, base)
    attrs = {
        "address_family": family,
        "request_queue_size": BACKLOG,
        "allow_reuse_address": True,
        "max_packet_size": CHUNK,
        "daemon_threads": True,
    }
    server_cls = type("PeerServer", bases, attrs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server_cls(sockaddr, handler_cls) as server:
        show(family, server.server_address)
        server.serve_forever()


def run_asyncio(transport: str, address: str, handler: str, loop_name: str) -> None:
    import asyncio

    if loop_name == "uvloop":
        import uvloop

        uvloop.install()
    family, sockaddr = parse(transport, address)

    class EchoProtocol(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    class DiscardProtocol(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    class EchoDatagramProtocol(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if addr:
                self.transport.sendto(data, addr)

        def error_received(self, exc: Exception) -> None:
            pass

    class DiscardDatagramProtocol(asyncio.DatagramProtocol):
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        if transport == "tcp":
            proto = EchoProtocol if handler == "echo" else DiscardProtocol
            server = await loop.create_server(
                proto, sockaddr[0], sockaddr[1], family=family, backlog=BACKLOG
            )
            show(family, server.sockets[0].getsockname())
        elif transport == "unix":
            proto = EchoProtocol if handler == "echo" else DiscardProtocol
            server = await loop.create_unix_server(proto, sockaddr, backlog=BACKLOG)
            show(family, sockaddr)
        else:
            dproto = EchoDatagramProtocol if handler == "echo" else DiscardDatagramProtocol
            if family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(sockaddr)
            else:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.bind(sockaddr)
            sock.setblocking(False)
            transport_, _ = await loop.create_datagram_endpoint(dproto, sock=sock)
            show(family, sock.getsockname())
            server = None
        await stop
        if server is not None:
            server.close()

    asyncio.run(main())


def run_proxy(address: str, upstream: str, loop_name: str) -> None:
    """A TCP proxy the plain way: a protocol per side, each writing what the other receives."""
    import asyncio

    if loop_name == "uvloop":
        import uvloop

        uvloop.install()
    family, sockaddr = parse("tcp", address)
    _, target = parse("tcp", upstream)

    class Side(asyncio.Protocol):
        peer: Any = None
        transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.peer.transport.write(data)

        def eof_received(self) -> bool:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.write_eof()
            return True

        def pause_writing(self) -> None:
            self.peer.transport.pause_reading()

        def resume_writing(self) -> None:
            self.peer.transport.resume_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.close()

    class Client(Side):
        early: list[bytes]

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.early = []
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self.connect())

        def data_received(self, data: bytes) -> None:
            if self.peer is None:  # uvloop may read once before the pause takes
                self.early.append(data)
                return
            self.peer.transport.write(data)

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            up = Side()
            up.peer = self
            try:
                await loop.create_connection(lambda: up, target[0], target[1])
            except OSError:
                self.transport.close()
                return
            self.peer = up
            up.transport.writelines(self.early)
            self.transport.resume_reading()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(
            Client, sockaddr[0], sockaddr[1], family=family, backlog=BACKLOG
        )
        show(family, server.sockets[0].getsockname())
        await stop
        server.close()

    asyncio.run(main())


def main(argv: list[str]) -> None:
    if len(argv) >= 4 and argv[0] == "proxy" and argv[1] == "tcp":
        run_proxy(argv[2], argv[3], argv[4] if len(argv) > 4 else "asyncio")
        return
    if len(argv) < 4 or argv[0] not in ("stdlib", "asyncio"):
        raise SystemExit(__doc__)
    kind, transport, address, handler, *rest = argv
    if transport not in ("tcp", "udp", "unix", "unix-dgram") or handler not in ("echo", "discard"):
        raise SystemExit(__doc__)
    if kind == "stdlib":
        run_stdlib(transport, address, handler, rest[0] if rest else "thread")
    else:
        run_asyncio(transport, address, handler, rest[0] if rest else "asyncio")


if __name__ == "__main__":
    main(sys.argv[1:])
