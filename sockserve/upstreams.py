"""The `--forward` upstream: parsed as ADDRESS is, checked against the listener. No network.

UPSTREAM is an ADDRESS (`addresses.parse_address`) whose family it tells itself: a text with
a slash or starting with ``@`` is a unix socket (a path, an abstract name), anything else
HOST:PORT, [V6]:PORT or :PORT (loopback). A ``PROTO://`` prefix (as the listening line
prints addresses: ``tcp://``, ``udp://``, ``unix://``, ``unix-dgram://``) may name the
transport; it must then have the listener's socket type. The upstream always has the
listener's socket type: a stream listener cannot forward to a datagram upstream.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .addresses import TRANSPORTS, Address, SockType, parse_address
from .errors import UsageError
from .loading import LoadedHandler

__all__ = [
    "check_forward",
    "check_not_self",
    "forward_handler",
    "parse_upstream",
    "upstream_url",
]

_KIND = {"stream": "stream", "dgram": "datagram"}


def parse_upstream(text: str, socktype: SockType) -> Address:
    """The upstream `text` names, for a listener of `socktype`; UsageError when it cannot be."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme not in TRANSPORTS:
            raise UsageError(
                f"--forward {text}: unknown transport {scheme!r}",
                hint="use " + ", ".join(f"{name}://" for name in TRANSPORTS) + " or no prefix",
            )
        family, wanted = TRANSPORTS[scheme]
        if wanted != socktype:
            raise UsageError(
                f"--forward {text}: a {_KIND[socktype]} listener cannot forward to a "
                f"{_KIND[wanted]} upstream",
                hint="forward streams (tcp, unix) to streams and datagrams (udp, unix-dgram) "
                "to datagrams",
            )
        text = rest
    else:
        family = "unix" if text.startswith(("@", "/", ".")) or "/" in text else None
    if not text:
        raise UsageError("--forward needs an address", hint="e.g. --forward 127.0.0.1:8080")
    try:
        upstream = parse_address(text, family)
    except UsageError as exc:
        hint = exc.hint
        if family is None and "no port" in exc.message:
            hint = "give HOST:PORT, or ./NAME for a unix socket in this directory"
        raise UsageError(f"--forward: {exc.message}", hint=hint) from None
    if upstream.port == 0:
        raise UsageError(
            f"--forward {upstream}: port 0 names no server to connect to",
            hint="give the upstream's port",
        )
    return upstream


def upstream_url(upstream: Address, socktype: SockType) -> str:
    """The upstream as the listening line writes addresses: tcp://127.0.0.1:80, unix:///a."""
    if upstream.family == "unix":
        scheme = "unix" if socktype == "stream" else "unix-dgram"
    else:
        scheme = "tcp" if socktype == "stream" else "udp"
    return f"{scheme}://{upstream}"


def _same_host(upstream_host: str, bound_host: str, bound_all: bool) -> bool:
    """True when a connection to `upstream_host` reaches a listener bound to `bound_host`."""
    try:
        infos = socket.getaddrinfo(upstream_host, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for *_, sockaddr in infos:
        host = str(sockaddr[0]).split("%")[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        if host == bound_host.split("%")[0]:
            return True
        if bound_all and (_is_loopback(host) or host in ("0.0.0.0", "::") or _is_local(host)):
            return True
    return False


def _is_loopback(host: str) -> bool:
    return host == "::1" or host.startswith("127.")


def _is_local(host: str) -> bool:
    """True if `host` is an address of this machine (it can be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
        return True
    except OSError:
        return False


def check_not_self(upstream: Address, family: str, bound: Any, all_interfaces: bool) -> None:
    """Refuse an upstream that is the listener itself (`bound`, as bound: the port that port
    0 became), which would relay each connection to itself without end."""
    if upstream.family == "unix" or family == "unix":
        if upstream.family != family:
            return
        ours = bound.decode(errors="surrogateescape") if isinstance(bound, bytes) else str(bound)
        theirs = upstream.sockaddr()
        if ours.startswith("\0") or theirs.startswith("\0"):
            same = ours == theirs
        else:
            same = os.path.abspath(ours) == os.path.abspath(theirs)
    else:
        same = upstream.port == bound[1] and _same_host(
            upstream.host or "", str(bound[0]), all_interfaces
        )
    if same:
        raise UsageError(
            f"--forward {upstream} is this server's own address: each connection would be "
            "relayed to itself",
            hint="forward to another server's address",
        )


def forward_handler(
    handler: str | LoadedHandler | None, forward: str | Address | None, socktype: SockType
) -> tuple[str | LoadedHandler | None, Address | None]:
    """The handler and upstream of --forward: it implies -H forward, which needs it."""
    name = handler if isinstance(handler, str) else handler.name if handler else None
    if forward is None:
        if name is not None and name.strip() == "forward":
            raise UsageError(
                "-H forward needs --forward UPSTREAM", hint="e.g. --forward 127.0.0.1:8080"
            )
        return handler, None
    if name is not None and name.strip() != "forward":
        raise UsageError(
            f"--forward implies -H forward: it cannot be combined with -H {name}",
            hint="drop -H, or --forward",
        )
    upstream = parse_upstream(forward, socktype) if isinstance(forward, str) else forward
    return "forward", upstream


def check_forward(
    forward: Address | None, socktype: str, transport: str, concurrency: str, workers: int
) -> None:
    """What -H forward cannot do: datagrams with -c fork or --workers."""
    if forward is None:
        return
    if socktype == "dgram" and concurrency == "fork":
        raise UsageError(
            f"{transport} forwarding cannot run with -c fork: each child sees one "
            "datagram, and the upstream's replies would come back to a child that is gone",
            hint="use -c sync (the default), thread or event",
        )
    if socktype == "dgram" and workers > 1:
        raise UsageError(
            f"{transport} forwarding keeps one association per client in one process: "
            "not with --workers",
            hint="drop --workers",
        )
