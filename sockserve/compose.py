"""Build the server for a ServeConfig: the parts it needs, composed with type(), bound.

`server_class(family, socktype, concurrency, parts)` composes a framework class at run
time: ``(*parts, ConcurrencyMixIn, BaseServerClass)``. `make_server` picks the parts (see
`sockserve.parts`) from the configuration, sets their settings as class attributes, and
binds the server.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

from . import socketserver as ss
from .config import MAX_DATAGRAM, ServeConfig
from .errors import EnvironmentProblem, UsageError
from .events import Events
from .parts.acceptors import AcceptingThreadsPart
from .parts.backoff import AcceptBackoffPart, DispatchRefusalPart
from .parts.client_ids import ClientIdsPart
from .parts.listener import ChildClosesListenerPart, NodelayListenerPart
from .parts.pinning import PinningPart, gil_enabled
from .parts.reporting import ReportingPart
from .parts.requests import RequestsPart
from .watch import Dresser

__all__ = [
    "INLINE_DATAGRAM_BUILTINS",
    "make_server",
    "resolve_sockaddr",
    "server_class",
    "translate_bind_error",
]

_BASES: dict[tuple[str, str], type[ss.TCPServer]] = {
    ("inet", "stream"): ss.TCPServer,
    ("inet6", "stream"): ss.TCPServer,
    ("inet", "dgram"): ss.UDPServer,
    ("inet6", "dgram"): ss.UDPServer,
}
if hasattr(socket, "AF_UNIX"):
    _BASES[("unix", "stream")] = ss.UnixStreamServer
    _BASES[("unix", "dgram")] = ss.UnixDatagramServer
_MIXINS: dict[str, type | None] = {
    "sync": None,
    "thread": ss.ThreadingMixIn,
    "fork": getattr(ss, "ForkingMixIn", None),
    "event": None,  # the event loop runs on the socket this class binds
}
#: Every part by name, in the order of the bases: the first sees a step first (see
#: `sockserve.parts`). The parts of a capability (faults, TLS, access rules, --record,
#: inherited sockets), of an option (--banner, --timeout), of datagrams, of a unix socket
#: file, and those only some handlers and modes take (the watch, the accept batch) are
#: imported only by a run that needs them.
PART_ORDER: tuple[str, ...] = (
    "FaultPart",
    "ReportingPart",
    "PinningPart",
    "AcceptingThreadsPart",
    "LeanDatagramPart",
    "AcceptBatchPart",
    "ChildClosesListenerPart",
    "NodelayListenerPart",
    "TlsPart",
    "BannerPart",
    "DispatchRefusalPart",
    "ProgramGroupsPart",
    "RequestsPart",
    "AccessPart",
    "IdleTimeoutPart",
    "WatchPart",
    "RecordPart",
    "TlsWrapPart",
    "ClientIdsPart",
    "ReplySourcePart",
    "WholeDatagramPart",
    "AcceptBackoffPart",
    "UnixFilePart",
    "InheritedSocketPart",
    "InetdPart",
)
#: The parts that serve a socket sockserve did not create (no unix socket file of its own).
_NOT_OUR_FILE = {"InheritedSocketPart", "InetdPart"}
#: Datagram builtins whose answer never waits (no stdin, no stdout that a reader may stall):
#: in thread mode they are answered on the loop thread (`LeanDatagramPart`).
INLINE_DATAGRAM_BUILTINS = frozenset(
    {"echo", "upper", "discard", "chargen", "daytime", "time", "reply", "forward"}
)


def server_class(
    family: str, socktype: str, concurrency: str, parts: Sequence[type] = ()
) -> type[RequestsPart]:
    """Compose the framework server class for family × type × concurrency with `parts`.

    Every class gets the parts every server of the command has (`RequestsPart`,
    `AcceptBackoffPart`, and `UnixFilePart` for unix paths); `parts` adds others.
    """
    base = _BASES[(family, socktype)]
    mixin = _MIXINS[concurrency]
    if concurrency == "fork" and mixin is None:  # pragma: no cover - platforms without fork
        raise UsageError("--concurrency fork needs fork(), which this platform lacks")
    chosen = {RequestsPart, AcceptBackoffPart, *parts}
    if family == "unix" and not {part.__name__ for part in chosen} & _NOT_OUR_FILE:
        from .parts.unix_file import UnixFilePart

        chosen.add(UnixFilePart)
    ordered = sorted(chosen, key=lambda part: PART_ORDER.index(part.__name__))
    bases: tuple[type, ...] = (*ordered, base) if mixin is None else (*ordered, mixin, base)
    prefix = {"thread": "Threading", "fork": "Forking"}.get(concurrency, "")
    attrs: dict[str, Any] = {"__module__": __name__, "max_packet_size": MAX_DATAGRAM}
    if family == "inet6":
        attrs["address_family"] = socket.AF_INET6
    return type(f"{prefix}{base.__name__}", bases, attrs)


def choose_parts(
    config: ServeConfig, concurrency: str, monitor: Events | None
) -> tuple[list[type], dict[str, Any]]:
    """The parts `config` needs beyond those of every server, and their settings."""
    builtin = config.handler.builtin
    stream = config.socktype == "stream"
    if builtin == "exec" and stream:  # its program has the socket: served as a user's handler
        builtin = None
    parts: list[type] = []
    settings: dict[str, Any] = {"monitor": monitor}
    if monitor is not None:
        parts.append(ReportingPart)
        ids = getattr(monitor, "client_ids", None)  # the run's monitor numbers connections
        if ids is not None:
            parts.append(ClientIdsPart)
            settings["client_ids"] = ids  # LeanDatagramPart's too
    if concurrency in ("thread", "fork"):
        parts.append(DispatchRefusalPart)
        settings["builtin_handler"] = builtin is not None
    # Builtins' threads accept for themselves, in one process (workers share one listener:
    # its shutdown would stop them all), on a socket of our own (an inherited one is shared).
    threads_accept = concurrency == "thread" and stream and builtin is not None
    threads_accept = threads_accept and config.workers == 1 and config.fd is None
    if threads_accept:
        parts.append(AcceptingThreadsPart)
    elif concurrency in ("thread", "fork") and stream:
        from .parts.accept_batch import AcceptBatchPart

        parts.append(AcceptBatchPart)
    if config.pin is None:  # the builtins' threads, while they take turns under a GIL
        pin = threads_accept and gil_enabled()
    else:  # ServeConfig refuses --pin outside thread mode and with --workers
        pin = config.pin
    if pin:
        parts.append(PinningPart)
    # -vv: every handler's socket goes through a watch that reports each chunk. Otherwise
    # a user's handler is counted by the part; the builtins count for themselves.
    watching = monitor is not None and monitor.wants_data
    counting = builtin is None and monitor is not None and monitor.wants_counts
    if config.access:
        from .parts.access import AccessPart

        parts.append(AccessPart)
        settings["access_rules"] = config.access
    # Datagrams answered on the loop thread skip verify_request: not with access rules. A
    # --delay does not hold the loop thread there: its `SendSchedule` sends them later.
    if not stream and builtin is not None and not config.access:
        if concurrency == "sync" or (
            concurrency == "thread" and builtin in INLINE_DATAGRAM_BUILTINS
        ):
            from .parts.datagrams import LeanDatagramPart

            parts.append(LeanDatagramPart)
    dressers = watch_dressers(config)
    if dressers:
        settings["watch_dressers"] = dressers  # WatchPart's, and LeanDatagramPart's
    if config.record is not None:  # the recorder learns the bound address, closes with the server
        from .parts.recording import Recorder, RecordPart

        parts.append(RecordPart)
        settings["recorder"] = next(d for d in dressers if isinstance(d, Recorder))
    if config.faults is not None:
        from .faults import FaultDresser
        from .parts.faults import FaultPart

        parts.append(FaultPart)
        settings["fault_dresser"] = next(d for d in dressers if isinstance(d, FaultDresser))
    if watching or counting or dressers:
        from .parts.watching import WatchPart

        parts.append(WatchPart)
        settings["watch_data"] = watching
        settings["record_counts"] = counting
    if replies_need_source(config):
        from .parts.reply_source import ReplySourcePart

        parts.append(ReplySourcePart)
        settings["reply_from_arrival"] = True  # LeanDatagramPart receives as the part does
    if config.tls:  # ServeConfig refuses TLS on datagrams
        from .parts.tls import TlsPart, TlsWrapPart

        parts += [TlsPart, TlsWrapPart]
        settings["tls_records_failures"] = builtin is not None  # they record their own
    if config.family == "unix" and not stream:  # past UDP's 64 KiB: read each one whole
        from .parts.whole_datagrams import WholeDatagramPart

        parts.append(WholeDatagramPart)  # LeanDatagramPart peeks as the part says
    if stream and config.timeout is not None:
        from .parts.idle import IdleTimeoutPart

        parts.append(IdleTimeoutPart)
        settings["idle_timeout"] = config.timeout
    if stream and builtin is not None and config.family != "unix":
        parts.append(NodelayListenerPart)
    if stream and concurrency == "fork":
        parts.append(ChildClosesListenerPart)
    if config.handler.builtin == "exec" and concurrency == "fork":
        from .parts.program_groups import ProgramGroupsPart

        parts.append(ProgramGroupsPart)
    # ServeConfig refuses a banner on datagrams; the event loop sends its own (`event.py`).
    banner = config.banner_bytes() if stream and config.concurrency != "event" else b""
    if banner:
        from .parts.banner import BannerPart

        parts.append(BannerPart)
        settings["banner"] = banner
    if config.fd is not None:  # --fd, --activated: served as it is
        from .parts.inherited import InheritedSocketPart

        parts.append(InheritedSocketPart)
        settings["inherited_fd"] = config.fd
    if config.inetd:  # the one connection on stdin and stdout
        from .parts.inherited import InetdPart

        parts.append(InetdPart)
    return parts, settings


def watch_dressers(config: ServeConfig) -> tuple[Dresser, ...]:
    """What adds the stages `config` asks for (faults, a transcript) to each watch; with
    any, every request goes through a watch."""
    dressers: list[Dresser] = []
    if config.faults is not None:
        from .faults import FaultDresser

        loop = config.concurrency == "event"
        datagram = config.socktype == "dgram"
        schedule = None
        if datagram and config.concurrency in ("sync", "thread") and config.faults.delay:
            from .send_schedule import SendSchedule  # delayed datagrams: side by side

            schedule = SendSchedule()
        if config.forward is not None:  # a relay: each side as --faults-to says
            from .relay_faults import relay_dresser

            sides = config.faults_to or "both"
            dressers.append(relay_dresser(config.faults, datagram, loop, sides, schedule))
        else:
            dressers.append(FaultDresser(config.faults, datagram, loop, schedule))
    if config.record is not None:  # after the faults: a transcript has what went on the wire
        from .parts.recording import Recorder

        dressers.append(Recorder(config.record, config.transport))
    return tuple(dressers)


def replies_need_source(config: ServeConfig) -> bool:
    """True for a UDP socket bound to 0.0.0.0 or [::] where the platform tells each
    datagram's destination: its replies must leave from it (`ReplySourcePart`)."""
    if config.socktype != "dgram" or not config.address.all_interfaces:
        return False
    family = socket.AF_INET6 if config.family == "inet6" else socket.AF_INET
    from .arrival import replies_from_arrival

    return replies_from_arrival(family)


def resolve_sockaddr(config: ServeConfig) -> tuple[str, Any]:
    """Return (family, sockaddr) to bind, resolving a host name once."""
    address = config.address
    if config.family == "unix" or config.fd is not None or config.inetd:  # nothing to resolve
        return config.family, address.sockaddr()
    family = config.family
    host = address.host or ""
    try:
        socket.inet_pton(socket.AF_INET6 if family == "inet6" else socket.AF_INET, host)
        return family, address.sockaddr()
    except OSError:
        pass
    want = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    sock_type = socket.SOCK_STREAM if config.socktype == "stream" else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(host, address.port, want, sock_type, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"cannot resolve host {host!r}: {exc.strerror}",
            hint="use an IP address such as 127.0.0.1 or [::1]",
        ) from None
    fam, _, _, _, sockaddr = infos[0]
    return ("inet6" if fam == socket.AF_INET6 else "inet"), sockaddr


def make_server(
    config: ServeConfig, handler: Any, monitor: Events | None = None, tls: Any = None
) -> RequestsPart:
    """Create, bind and activate the server for `config`, with `handler` as its handler class
    (and `tls`, the run's `sockserve.tls.TlsSetup`, when it serves TLS).

    Raises EnvironmentProblem (address in use, permission denied, ...) with a hint.
    """
    family, sockaddr = resolve_sockaddr(config)
    concurrency = "sync" if config.concurrency == "event" else config.concurrency  # event binds
    parts, settings = choose_parts(config, concurrency, monitor)
    cls = server_class(family, config.socktype, concurrency, parts)
    if "banner" in settings and config.handler.builtin is not None:
        from .parts.banner import counting_banner

        handler = counting_banner(handler, len(settings["banner"]))  # they count their own
    settings.update(
        request_limit=config.request_limit,
        request_queue_size=config.backlog,
        # SO_REUSEADDR lets a TCP listener restart over TIME_WAIT; on a datagram socket it
        # lets a second server bind the same port and take its traffic (the stdlib's
        # UDPServer leaves it off). --workers share the one listener they inherit, so only
        # --reuse-port lets another process join the port.
        allow_reuse_address=config.reuse_address and config.socktype == "stream",
        allow_reuse_port=config.reuse_port,
        dualstack_ipv6=family == "inet6" and config.address.all_interfaces,
    )
    if family == "unix":
        settings["unix_mode"] = config.mode
    if tls is not None:
        from .parts.watching import WatchPart
        from .tls import WatchedTlsSocket  # ssl: only a run that serves TLS loads it

        settings["tls_context"] = tls.context
        settings["tls_handshake_timeout"] = tls.handshake_timeout
        if WatchPart in parts:  # the watch sees the plaintext
            tls.context.sslsocket_class = WatchedTlsSocket
    # The concurrency mixin's settings (kept on every server, as the runner reads them).
    settings.update(
        daemon_threads=config.daemon_threads,
        # Our builtins keep nothing in threading.local: their threads can take the next request.
        reuse_threads=config.handler.builtin is not None,
        block_on_close=config.block_on_close,
    )
    if config.max_threads is not None:
        settings["max_threads"] = config.max_threads
    if config.max_children is not None:
        settings["max_children"] = config.max_children
    cls = type(cls.__name__, (cls,), settings)
    try:
        return cls(sockaddr, handler)
    except OSError as exc:
        raise translate_bind_error(exc, config) from None


def translate_bind_error(exc: OSError, config: ServeConfig) -> EnvironmentProblem:
    """Turn the usual OSErrors of bind/listen into one-line errors with a hint."""
    where = str(config.address)
    if exc.errno == errno.EADDRINUSE:
        if config.family == "unix":
            return EnvironmentProblem(
                f"{where} is already in use", hint="stop the other server or choose another name"
            )
        return EnvironmentProblem(
            f"address {where} is already in use",
            hint="choose another port, or use port 0 (e.g. :0) to let the OS pick a free one",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        if config.family != "unix" and config.address.port and config.address.port < 1024:
            return EnvironmentProblem(
                f"permission denied binding to {where}: ports below 1024 are privileged",
                hint="use a port of 1024 or above (e.g. :8080), or port 0",
            )
        return EnvironmentProblem(
            f"permission denied binding to {where}",
            hint="choose a path or address you may write to",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return EnvironmentProblem(
            f"cannot bind to {where}: no such address on this machine",
            hint="use 127.0.0.1, [::1], or an address of one of this machine's interfaces",
        )
    if exc.errno == errno.ENOENT and config.family == "unix":
        return EnvironmentProblem(
            f"cannot create {where}: its directory does not exist",
            hint="create the directory first, or choose another path",
        )
    if exc.errno == errno.EAFNOSUPPORT:
        return EnvironmentProblem(
            f"cannot bind to {where}: address family not supported here",
            hint="IPv6 may be disabled; use an IPv4 address such as 127.0.0.1",
        )
    return EnvironmentProblem(f"cannot listen on {where}: {exc.strerror or exc}")
