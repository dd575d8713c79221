"""TLS for the benchmarks: the certificate every TLS server uses, a plain uvloop TLS echo
server, and the TLS load (benchmarks/loadgen.c speaks no TLS).

    python benchmarks/tls_tools.py certs DIR                       # ca.pem, cert.pem, key.pem
    python benchmarks/tls_tools.py echo ADDRESS DIR                # uvloop TLS echo, the plain way
    python benchmarks/tls_tools.py load MODE ADDRESS CA CONNS SECONDS BYTES

MODE is connect (a new connection per request: TLS 1.3 handshake, 1 byte echoed, close; CONNS
client processes), pingpong (64 B ping-pong on CONNS connections, on uvloop) or bulk-echo
(BYTES through one connection and back). `load` prints one JSON line in loadgen's shape.
Every address is loopback; the certificate is for localhost, ECDSA P-256 (trustme).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import ssl
import sys
import time
from pathlib import Path

MSG = 64


def make_certs(folder: str) -> None:
    """Write ca.pem, cert.pem and key.pem (mode 600) into `folder`."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    path = Path(folder)
    ca.cert_pem.write_to_path(str(path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(path / "key.pem"))
    for name in ("ca.pem", "cert.pem", "key.pem"):
        os.chmod(path / name, 0o600)


def loopback(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"refusing {address}: loopback only")
    return "127.0.0.1", int(port)


def serve_echo(address: str, folder: str) -> None:
    """A TLS echo server written the plain way: uvloop, create_server(ssl=...), a Protocol."""
    import uvloop

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{folder}/cert.pem", f"{folder}/key.pem")

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        host, port = loopback(address)
        server = await asyncio.get_running_loop().create_server(
            Echo, host, port, ssl=context, backlog=2048
        )
        bound = server.sockets[0].getsockname()
        print(f"{bound[0]}:{bound[1]}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def client_context(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def load_connect(address: tuple[str, int], cafile: str, conns: int, seconds: float) -> dict:
    """CONNS processes, each a new TLS connection per request until the time is up."""
    readers = []
    for _ in range(conns):
        r, w = os.pipe()
        if os.fork() == 0:  # a client process: counts, then writes its count
            os.close(r)
            done = 0
            try:
                context = client_context(cafile)
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    raw = socket.create_connection(address, timeout=10)
                    with context.wrap_socket(raw, server_hostname="localhost") as sock:
                        sock.sendall(b"x")
                        if sock.recv(1) == b"x":
                            done += 1
            finally:
                os.write(w, str(done).encode())
                os._exit(0)
        os.close(w)
        readers.append(r)
    start = time.monotonic()
    ops = 0
    for r in readers:
        with os.fdopen(r) as f:
            ops += int(f.read() or 0)
    secs = time.monotonic() - start
    for _ in readers:
        os.wait()
    return {"mode": "tls-connect", "ops": ops, "secs": secs, "rate": ops / secs}


def load_pingpong(address: tuple[str, int], cafile: str, conns: int, seconds: float) -> dict:
    """CONNS connections, each 64 B out and back until the time is up (one uvloop thread)."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    context = client_context(cafile)
    payload = b"p" * MSG

    async def one(deadline: float) -> int:
        reader, writer = await asyncio.open_connection(
            *address, ssl=context, server_hostname="localhost"
        )
        done = 0
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            writer.write(payload)
            await reader.readexactly(MSG)
            done += 1
        writer.close()
        return done

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        counts = await asyncio.gather(*(one(start + seconds) for _ in range(conns)))
        return sum(counts), loop.time() - start

    ops, secs = run(main())
    return {"mode": "tls-pingpong", "ops": ops, "secs": secs, "rate": ops / secs}


def load_bulk(address: tuple[str, int], cafile: str, size: int) -> dict:
    """`size` bytes through one TLS connection and back, sent and read at once on one event
    loop (one SSL object used from two threads is not safe: OpenSSL's objects are not)."""
    return asyncio.run(_bulk(address, cafile, size))


async def _bulk(address: tuple[str, int], cafile: str, size: int) -> dict:
    context = client_context(cafile)
    reader, writer = await asyncio.open_connection(
        *address, ssl=context, server_hostname="localhost", limit=1 << 20
    )
    block = b"b" * 65536
    start = time.monotonic()

    async def send() -> None:
        left = size
        while left > 0:
            n = min(left, len(block))
            writer.write(block[:n])
            await writer.drain()
            left -= n

    sender = asyncio.create_task(send())
    got = 0
    while got < size:
        chunk = await reader.read(262144)
        if not chunk:
            break
        got += len(chunk)
    secs = time.monotonic() - start
    await sender
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return {
        "mode": "tls-bulk-echo",
        "mb_per_s": got / secs / 1e6,
        "secs": secs,
        "complete": got == size,
    }


def main(argv: list[str]) -> None:
    if argv[:1] == ["certs"]:
        make_certs(argv[1])
    elif argv[:1] == ["echo"]:
        serve_echo(argv[1], argv[2])
    elif argv[:1] == ["load"]:
        mode, address, cafile, conns, seconds, size = argv[1:7]
        where = loopback(address)
        before = resource.getrusage(resource.RUSAGE_SELF)
        if mode == "connect":
            result = load_connect(where, cafile, int(conns), float(seconds))
        elif mode == "pingpong":
            result = load_pingpong(where, cafile, int(conns), float(seconds))
        else:
            result = load_bulk(where, cafile, int(size))
        after = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        result["cpu_s"] = cpu + children.ru_utime + children.ru_stime
        result.setdefault("p50_us", None)
        result.setdefault("p99_us", None)
        print(json.dumps(result))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
