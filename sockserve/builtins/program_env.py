"""The environment of a program run by the exec builtin: who it serves, under UCSPI's names."""

from __future__ import annotations

import os
import socket
from typing import Any


def _ip(host: str) -> str:
    """An IPv4 client of a dual-stack socket shown as IPv4, as tcpserver shows it."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _path(address: Any) -> str:
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
        if address.startswith("\0"):
            return "@" + address[1:]
    return str(address or "")


def program_env(
    transport: str, local: Any, remote: Any, client_text: str, sock: socket.socket | None
) -> dict[str, str]:
    """The environment of one run: ours, plus who it serves under UCSPI's names.

    tcp/udp: PROTO=TCP or UDP and {PROTO}REMOTEIP, REMOTEPORT, LOCALIP, LOCALPORT (tcpserver's
    names). unix: PROTO=UNIX, UNIXLOCALPATH, UNIXREMOTEPATH (a client bound to a path) and, on
    a stream with SO_PEERCRED, UNIXREMOTEPID, UNIXREMOTEEUID, UNIXREMOTEEGID (ucspi-unix's
    names). Always SOCKSERVE_TRANSPORT, SOCKSERVE_CLIENT and SOCKSERVE_PID.
    """
    env = dict(os.environ)
    env["SOCKSERVE_TRANSPORT"] = transport
    env["SOCKSERVE_CLIENT"] = client_text
    env["SOCKSERVE_PID"] = str(os.getpid())
    if transport in ("tcp", "udp"):
        proto = transport.upper()
        env["PROTO"] = proto
        if isinstance(remote, tuple):
            env[f"{proto}REMOTEIP"] = _ip(str(remote[0]))
            env[f"{proto}REMOTEPORT"] = str(remote[1])
        if isinstance(local, tuple):
            env[f"{proto}LOCALIP"] = _ip(str(local[0]))
            env[f"{proto}LOCALPORT"] = str(local[1])
        return env
    env["PROTO"] = "UNIX"
    env["UNIXLOCALPATH"] = _path(local)
    if _path(remote):
        env["UNIXREMOTEPATH"] = _path(remote)
    if sock is not None and hasattr(socket, "SO_PEERCRED"):
        import struct

        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
        except OSError:
            return env
        env["UNIXREMOTEPID"], env["UNIXREMOTEEUID"], env["UNIXREMOTEEGID"] = (
            str(pid),
            str(uid),
            str(gid),
        )
    return env
