"""Addresses: PROTO → (family, type), the ADDRESS argument → Address, bound sockaddr → text.

Accepted ADDRESS forms:

- ``:PORT`` — loopback (127.0.0.1, or ::1 with ``--family inet6``): the safe default;
- ``HOST:PORT`` — an IPv4 address or a host name; ``[V6]:PORT`` — an IPv6 address;
- ``0.0.0.0:PORT``, ``*:PORT``, ``[::]:PORT`` — all interfaces (``[::]`` is dual-stack);
- a bare ``PORT`` — the same as ``:PORT``;
- for unix: a filesystem path, or ``@name`` for Linux's abstract namespace.

Port 0 lets the OS pick a free port. No function here touches the network.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

from .errors import UsageError

Family = Literal["inet", "inet6", "unix"]
SockType = Literal["stream", "dgram"]

#: PROTO → (family or None when the address decides, socket type).
TRANSPORTS: dict[str, tuple[Family | None, SockType]] = {
    "tcp": (None, "stream"),
    "udp": (None, "dgram"),
    "unix": ("unix", "stream"),
    "unix-dgram": ("unix", "dgram"),
}

#: sun_path holds 108 bytes on Linux, the terminating NUL included.
UNIX_PATH_MAX = 107
_ALL_V4 = ("0.0.0.0", "*")


@dataclass(frozen=True)
class Address:
    """A parsed ADDRESS: host and port for inet/inet6, a path (or abstract name) for unix."""

    family: Family
    host: str | None = None
    port: int | None = None
    path: str | None = None
    abstract: bool = False

    @property
    def all_interfaces(self) -> bool:
        """True when the address listens beyond this machine: 0.0.0.0 or ::, however spelt."""
        return self.family != "unix" and self.host is not None and _is_unspecified(self.host)

    def sockaddr(self) -> Any:
        """The address in the form socket.bind takes."""
        if self.family == "unix":
            assert self.path is not None
            return "\0" + self.path if self.abstract else self.path
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.family == "unix":
            return f"@{self.path}" if self.abstract else str(self.path)
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def resolve_transport(
    proto: str, family: str | None, socktype: str | None
) -> tuple[Family | None, SockType]:
    """Combine PROTO with --family/--type; raise UsageError when they contradict."""
    implied_family, implied_type = TRANSPORTS[proto]
    if socktype is not None and socktype != implied_type:
        raise UsageError(
            f"--type {socktype} contradicts {proto}, which is a {implied_type} protocol",
            hint=f"drop --type, or use {_proto_for(implied_family, socktype)}",
        )
    if family is None:
        return implied_family, implied_type
    if family == "unix":
        if implied_family is None:
            unix = "unix" if implied_type == "stream" else "unix-dgram"
            raise UsageError(
                f"--family unix contradicts {proto}, an internet protocol",
                hint=f"use {unix} PATH instead",
            )
        return "unix", implied_type
    if family not in ("inet", "inet6"):
        raise UsageError(f"unknown address family {family!r}", hint="use inet, inet6 or unix")
    if implied_family == "unix":
        raise UsageError(
            f"--family {family} contradicts {proto}, which uses unix sockets",
            hint="drop --family, or use tcp/udp",
        )
    return ("inet" if family == "inet" else "inet6"), implied_type


def _proto_for(family: Family | None, socktype: str) -> str:
    if family == "unix":
        return "unix" if socktype == "stream" else "unix-dgram"
    return "tcp" if socktype == "stream" else "udp"


def parse_address(text: str, family: Family | None) -> Address:
    """Parse ADDRESS for `family` (None: inet or inet6, as the address says)."""
    text = text.strip()
    if not text:
        raise UsageError("the address is empty", hint="give :PORT, HOST:PORT or a unix path")
    if family == "unix":
        return _parse_unix(text)
    return _parse_inet(text, family)


def _parse_unix(text: str) -> Address:
    if "\0" in text:
        raise UsageError(
            f"{text!r} contains a NUL character", hint="give a path such as /tmp/a.sock"
        )
    if text.startswith("@"):
        name = text[1:]
        if not name:
            raise UsageError("an abstract socket needs a name after @", hint="e.g. @myapp")
        if _encoded_size(name) > UNIX_PATH_MAX - 1:
            raise UsageError(f"abstract name {text!r} is too long (at most 106 bytes)")
        return Address("unix", path=name, abstract=True)
    if _looks_inet(text):
        raise UsageError(
            f"{text!r} is an internet address, but unix sockets take a path",
            hint="give a path such as /tmp/app.sock, or use tcp/udp",
        )
    size = _encoded_size(text)
    if size > UNIX_PATH_MAX:
        raise UsageError(
            f"unix socket path is {size} bytes long; the limit is {UNIX_PATH_MAX}",
            hint="use a shorter path, e.g. under /tmp",
        )
    if text.endswith("/"):
        raise UsageError(f"{text!r} names a directory", hint="give a file name in it")
    return Address("unix", path=text)


def _encoded_size(text: str) -> int:
    """The length of `text` as the bytes of a file name."""
    try:
        return len(os.fsencode(text))
    except UnicodeEncodeError:
        raise UsageError(
            f"{text!r} cannot be encoded as a file name", hint="use another name"
        ) from None


#: :: and ::ffff:0.0.0.0, packed.
_UNSPECIFIED_V6 = (bytes(16), bytes(10) + b"\xff\xff" + bytes(4))


def _packed(family: socket.AddressFamily, host: str) -> bytes | None:
    """`host` as inet_pton packs a numeric address of `family` (a %scope is left out), or None."""
    try:
        return socket.inet_pton(family, host.split("%")[0])
    except (OSError, ValueError):
        return None


def _is_unspecified(host: str) -> bool:
    """True for 0.0.0.0 and :: in any spelling: [::0], [::ffff:0.0.0.0], 0, 0x0, 000.0.0.0...

    Numeric IPv4 forms are read as inet_aton reads them, as getaddrinfo does when binding.
    """
    v6 = _packed(socket.AF_INET6, host)
    if v6 is not None:
        return v6 in _UNSPECIFIED_V6
    try:
        return socket.inet_aton(host) == bytes(4)
    except (OSError, ValueError):
        return False


def _is_ipv4(host: str) -> bool:
    """True for an IPv4 address in dotted-quad form, such as 127.0.0.1."""
    return "%" not in host and _packed(socket.AF_INET, host) is not None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone accepts "²" and "١"


def _looks_inet(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep) and port.isdigit() and "/" not in text


def _parse_inet(text: str, family: Family | None) -> Address:
    if "/" in text:
        raise UsageError(
            f"{text!r} looks like a path, but tcp/udp take HOST:PORT",
            hint="use unix or unix-dgram for a socket file",
        )
    if _is_port(text):
        host, port_text = "", text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise UsageError(f"bad address {text!r}", hint="write IPv6 as [::1]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
        if _packed(socket.AF_INET6, host) is None:
            raise UsageError(f"{host!r} is not an IPv6 address", hint="e.g. [::1]:8080")
        if family == "inet":
            raise UsageError(f"{text!r} is IPv6 but --family is inet", hint="drop --family")
        family = "inet6"
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise UsageError(
                f"bad address {text!r}: no port",
                hint="give :PORT, HOST:PORT or [V6]:PORT; port 0 lets the OS pick",
            )
        if ":" in host:
            raise UsageError(f"bad address {text!r}", hint="write IPv6 in brackets: [::1]:PORT")
        if family == "inet6" and _is_ipv4(host):
            raise UsageError(
                f"{text!r} is IPv4 but --family is inet6",
                hint=f"drop --family, or give an IPv6 address such as [::1]:{port_text}",
            )
    port = _parse_port(port_text, text)
    if host in _ALL_V4:
        host = "::" if family == "inet6" else "0.0.0.0"
    elif not host:
        host = "::1" if family == "inet6" else "127.0.0.1"
    elif family != "inet6" and not _is_ipv4(host) and not _valid_hostname(host):
        raise UsageError(
            f"{host!r} is neither an IPv4 address nor a host name",
            hint="e.g. 127.0.0.1:8080, localhost:8080 or [::1]:8080",
        )
    if family is None:
        family = "inet"
    return Address(family, host=host, port=port)


def _parse_port(port_text: str, text: str) -> int:
    if not _is_port(port_text):
        raise UsageError(
            f"bad port {port_text!r} in {text!r}",
            hint="a port is a number from 0 to 65535, and 0 lets the OS pick",
        )
    port = int(port_text)
    if port > 65535:
        raise UsageError(
            f"port {port} is out of range", hint="a port is 0 to 65535, and 0 lets the OS pick"
        )
    return port


def _valid_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )


def _scheme(family: str, socktype: str) -> str:
    if family == "unix":
        return "unix" if socktype == "stream" else "unix-dgram"
    return "tcp" if socktype == "stream" else "udp"


def format_plain(family: str, socktype: str, sockaddr: Any) -> str:
    """The bound address as a script wants it: 127.0.0.1:43125, [::1]:43125, a path, @name."""
    if family == "unix":
        if isinstance(sockaddr, bytes):
            if sockaddr.startswith(b"\0"):
                return "@" + sockaddr[1:].decode(errors="replace")
            return os.fsdecode(sockaddr)
        return str(sockaddr)
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_host_port(sockaddr: Any) -> str:
    """The bound internet address as two words, HOST PORT (no brackets): ::1 43125."""
    return f"{sockaddr[0]} {sockaddr[1]}"


def format_bound(family: str, socktype: str, sockaddr: Any) -> str:
    """The bound address as a URL: tcp://127.0.0.1:43125, unix:///tmp/a.sock, unix://@name."""
    return f"{_scheme(family, socktype)}://{format_plain(family, socktype, sockaddr)}"
