"""Sockets sockserve did not create: `--fd N` and systemd's socket activation (`--activated`).

`activated_fd` reads what systemd passes (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES; the
descriptors start at 3), chooses one and unsets the variables, as sd_listen_fds(unset=1)
does. `inspect_socket` checks a descriptor is a socket (listening, for streams) and tells its
family, type and address. Such a socket is served as it is: sockserve never binds it again,
never unlinks its file, and closes only its own descriptor.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping

from .addresses import Address, Family, SockType
from .errors import UsageError

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
_FAMILIES: dict[int, Family] = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
if hasattr(socket, "AF_UNIX"):
    _FAMILIES[socket.AF_UNIX] = "unix"
_ACTIVATION_HINT = (
    "run it under systemd (a .socket unit) or systemd-socket-activate, or give ADDRESS"
)


def activated_fd(name: str | None, environ: MutableMapping[str, str] | None = None) -> int:
    """The descriptor systemd passed (the one named `name`, with several); LISTEN_* unset.

    Raises UsageError when nothing was passed, the sockets are another process's, or the
    choice is unclear.
    """
    env = os.environ if environ is None else environ
    pid, fds, names = (env.pop(key, None) for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if fds is None:
        raise UsageError(
            "--activated: LISTEN_FDS is not set: no socket was passed", _ACTIVATION_HINT
        )
    if pid is None or not pid.strip().isdigit() or int(pid) != os.getpid():
        raise UsageError(
            f"--activated: LISTEN_PID={pid} is not this process ({os.getpid()}): the sockets "
            "were passed to another one",
            _ACTIVATION_HINT,
        )
    try:
        count = int(fds)
    except ValueError:
        count = 0
    if count < 1:
        raise UsageError(f"--activated: LISTEN_FDS={fds} passes no socket", _ACTIVATION_HINT)
    labels = names.split(":") if names else []
    listed = ", ".join(f"{label} (fd {LISTEN_FDS_START + i})" for i, label in enumerate(labels))
    if name is not None:
        if name not in labels[:count]:
            raise UsageError(
                f"--fd-name {name}: no passed socket has that name ({listed or 'none named'})",
                hint="check the FileDescriptorName= of the socket unit",
            )
        return LISTEN_FDS_START + labels.index(name)
    if count > 1:
        raise UsageError(
            f"--activated: {count} sockets were passed ({listed or 'unnamed'}): which one?",
            hint="choose one with --fd-name NAME (or --fd N)",
        )
    return LISTEN_FDS_START


def inspect_socket(fd: int, option: str) -> tuple[Family, SockType, Address]:
    """The family, type and bound address of the socket on descriptor `fd`.

    Raises UsageError when it is not open, not a socket, of a family sockserve does not
    serve, or a stream socket that is not listening.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise UsageError(f"{option}: descriptor {fd} is not open", hint="pass a socket") from None
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{option}: descriptor {fd} is not a socket", hint="pass a socket")
    with socket.socket(fileno=os.dup(fd)) as sock:
        family = _FAMILIES.get(sock.family)
        if family is None or sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise UsageError(
                f"{option}: descriptor {fd} is a {sock.family.name} {sock.type.name} socket",
                hint="pass a TCP, UDP or unix socket",
            )
        socktype: SockType = "stream" if sock.type == socket.SOCK_STREAM else "dgram"
        if socktype == "stream" and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise UsageError(
                f"{option}: the stream socket on descriptor {fd} is not listening",
                hint="pass a listening socket (inetd-style connections are not served)",
            )
        name = sock.getsockname()
    if family == "unix":
        if isinstance(name, bytes):
            name = name.decode(errors="surrogateescape")
        abstract = name.startswith("\0")
        return (
            family,
            socktype,
            Address("unix", path=name[1:] if abstract else name, abstract=abstract),
        )
    return family, socktype, Address(family, host=name[0], port=name[1])


def inspect_connection(fd: int) -> tuple[Family, Address]:
    """The family and local address of the connected stream socket on `fd` (--inetd).

    Raises UsageError when it is not a connected stream socket.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISSOCK(mode):
        raise UsageError(
            "--inetd: stdin is not a socket", hint="run it from inetd or a systemd Accept=yes unit"
        )
    with socket.socket(fileno=os.dup(fd)) as sock:
        family = _FAMILIES.get(sock.family)
        if family is None or sock.type != socket.SOCK_STREAM:
            raise UsageError(
                f"--inetd: stdin is a {sock.family.name} {sock.type.name} socket; a stream "
                "connection is served (datagram services that wait are not)",
                hint="serve the datagram socket with --activated or --fd instead",
            )
        try:
            sock.getpeername()
        except OSError:
            raise UsageError(
                "--inetd: stdin is a socket but no connection (a listening socket?)",
                hint="serve a listening socket with --fd 0 instead",
            ) from None
        name = sock.getsockname()
    if family == "unix":
        if isinstance(name, bytes):
            name = name.decode(errors="surrogateescape")
        return family, Address("unix", path=name.lstrip("\0"), abstract=name.startswith("\0"))
    return family, Address(family, host=name[0], port=name[1])


def inherited_fd(
    address: str | Address | None,
    fd: int | None,
    activated: bool,
    fd_name: str | None,
    inetd: bool = False,
) -> int | None:
    """The descriptor of the listening socket to serve that sockserve did not create, or
    None (bind ADDRESS, or --inetd); exactly one of ADDRESS, --fd, --activated and --inetd
    is given."""
    choices = (
        ("ADDRESS", address),
        ("--fd", fd),
        ("--activated", activated or None),
        ("--inetd", inetd or None),
    )
    given = [name for name, value in choices if value is not None]
    if len(given) != 1:
        what = " and ".join(given) if given else "none of them"
        raise UsageError(
            f"give exactly one of ADDRESS, --fd N, --activated and --inetd ({what} given)",
            hint="e.g. sockserve tcp :9999",
        )
    if fd_name is not None and not activated:
        raise UsageError("--fd-name only applies with --activated", hint="add --activated")
    if activated:
        return activated_fd(fd_name)
    return fd


def stderr_is_stdin() -> bool:
    """True when descriptors 2 and 0 are the same file (inetd: stderr is the connection)."""
    try:
        err, inp = os.fstat(2), os.fstat(0)
    except OSError:
        return False
    return (err.st_dev, err.st_ino) == (inp.st_dev, inp.st_ino)


def inetd_address(proto: str, family: Family | None) -> Address:
    """The local address of the connection on stdin (--inetd), checked against PROTO."""
    has_family, address = inspect_connection(0)
    fits = has_family == family if family else has_family in ("inet", "inet6")
    if not fits:
        raise UsageError(
            f"--inetd: the connection is {has_family} ({address}), which {proto} does not serve",
            hint="choose the PROTO of the connection (tcp or unix)",
        )
    return address


def check_inetd(
    inetd: bool, concurrency: str, builtin: str | None, refused: dict[str, bool]
) -> None:
    """What cannot apply to the one connection --inetd serves; `refused`: option -> given."""
    if not inetd:
        return
    if concurrency != "sync":
        raise UsageError(
            f"--inetd serves one connection: --concurrency {concurrency} has nothing to overlap",
            hint="drop --concurrency",
        )
    if builtin in ("stdout", "stdio"):
        raise UsageError(
            f"--inetd: stdout is the connection, -H {builtin} cannot write to it",
            hint="choose another handler",
        )
    for option, given in refused.items():
        if given:
            raise UsageError(
                f"{option} does not apply to --inetd (one connection, on stdin and stdout)",
                hint=f"drop {option}",
            )


def inherited_address(
    fd: int,
    activated: bool,
    proto: str,
    family: Family | None,
    socktype: SockType,
    backlog: int | None,
) -> Address:
    """The address of the inherited socket on `fd`, checked against PROTO (and --family,
    --type)."""
    option = "--activated" if activated else f"--fd {fd}"
    has_family, has_type, address = inspect_socket(fd, option)
    fits = has_family == family if family else has_family in ("inet", "inet6")
    if not fits or has_type != socktype:
        kind = f"{has_family} {has_type}"
        raise UsageError(
            f"{option}: the socket is {kind} ({address}), which {proto} does not serve",
            hint="choose the PROTO of the socket (tcp, udp, unix or unix-dgram)",
        )
    if backlog is not None:
        raise UsageError(
            f"{option}: the socket is listening already: --backlog does not apply",
            hint="drop --backlog (the socket's creator chose it)",
        )
    return address


def check_inherited(fd: int | None, *, mode: int | None, reuse_port: bool) -> None:
    """What cannot apply to a socket sockserve did not create."""
    if fd is None:
        return
    for option, given in (("--mode", mode is not None), ("--reuse-port", reuse_port)):
        if given:
            raise UsageError(
                f"{option} does not apply to a socket sockserve did not create",
                hint=f"drop {option} (set it where the socket is made)",
            )
