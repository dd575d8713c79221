"""ServeConfig: the validated values one `sockserve` run needs. No printing.

`build_config` is the one way in: its keywords are the command's long options with dashes as
underscores (`--max-threads` → `max_threads=`), so the command line and Python callers build
the same ServeConfig. Every rule a value breaks raises `errors.UsageError(message, hint)`,
worded for the user; this module knows nothing of click. It opens no socket, but one: a
unix datagram pair, to learn how big a datagram the system sends (`unix_datagram_limit`).

The rules of each capability live with it (access rules in `access`, faults in `faultplan`,
--exec in `exec_command`, --script in `script_model`, --record and replay in `transcripts`,
--forward in `upstreams`, TLS in `tls_config`, inherited sockets and --inetd in `inherited`);
a capability's module is imported only when one of its options is given (or, for the forward
and inherited rules, the -H forward or the missing ADDRESS they are about), so a plain run
never loads it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .addresses import TRANSPORTS, Address, Family, SockType, parse_address, resolve_transport
from .errors import UsageError
from .loading import (
    ROOM_BUILTINS,
    SLOW_CLIENT_POLICIES,
    LoadedHandler,
    SlowClient,
    check_compatible,
    load_handler,
)

if TYPE_CHECKING:  # each capability's module is loaded when a run gives its options
    from .access import AccessRules
    from .exec_command import ExecSpec
    from .faultplan import FailMode, FaultPlan, FaultsTo
    from .script_model import Script
    from .tls_config import ForwardTls, TlsSettings
    from .transcripts import Match, Timing, Transcript

Concurrency = Literal["sync", "thread", "fork", "event"]
OutputMode = Literal["rich", "json"]

CONCURRENCIES: tuple[Concurrency, ...] = ("sync", "thread", "fork", "event")

#: The listen queue of a stream socket, as uvicorn's and gunicorn's (the kernel caps it at
#: net.core.somaxconn): a burst of connects waits there, not for a SYN retry a second later.
DEFAULT_BACKLOG = 2048
#: The largest datagram the tool reads: 64 KiB, so no UDP or unix datagram is ever truncated.
MAX_DATAGRAM = 65536
#: The largest UDP payload: 65535 bytes less the headers (IPv4: 20 + 8; IPv6: the UDP 8).
MAX_UDP_PAYLOAD = {"inet": 65507, "inet6": 65527}


def default_concurrency(socktype: SockType) -> Concurrency:
    """Threads for streams (clients overlap); sync for datagrams (a thread per packet costs
    more than the work of a typical datagram handler)."""
    return "thread" if socktype == "stream" else "sync"


@dataclass(frozen=True, eq=False, repr=False)
class ServeConfig:
    """Everything a run needs, validated; built by `build_config`, read by the runner.

    A run's settings are compared by identity (`eq=False`) and not shown whole (`repr=False`):
    nothing uses a field-by-field `__eq__`, `__hash__` or `__repr__`, and generating them at
    import, for this many fields, is a visible share of start-up.
    """

    family: Family
    socktype: SockType
    address: Address
    handler: LoadedHandler
    concurrency: Concurrency = "thread"
    max_children: int | None = None
    max_threads: int | None = None
    pin: bool | None = None  # thread mode: threads on one CPU; None: for the builtins only
    daemon_threads: bool = False
    block_on_close: bool = True
    backlog: int = DEFAULT_BACKLOG
    reuse_address: bool = True
    reuse_port: bool = False
    timeout: float | None = None
    mode: int | None = None
    reply: bytes | None = None
    reply_file: str | None = None
    banner: bytes | None = None
    banner_file: str | None = None
    once: bool = False
    max_requests: int | None = None
    grace: float = 5.0
    workers: int = 1
    print_address: bool = False
    print_host_port: bool = False
    output: OutputMode = "rich"
    verbosity: int = 0
    color: bool | None = None
    traceback: bool = False
    access: AccessRules | None = None  # --allow, --deny...: None, every peer is served
    to_all: bool = False
    slow_client: SlowClient = "disconnect"
    record: str | None = None  # --record DIR, absolute, checked writable
    transcript: Transcript | None = None  # --transcript FILE, read and checked
    timing: Timing = "recorded"
    match: Match = "length"
    tls: TlsSettings | None = None  # --tls, --cert...: None, no TLS
    faults: FaultPlan | None = None  # --delay, --drop...: None, no faults
    faults_to: FaultsTo | None = None  # -H forward: the side the faults break (None: both)
    raw: bool = False
    exec: str | None = None  # --exec: a program per connection, split like argv
    sh_exec: str | None = None  # --sh-exec: a shell line per connection
    exec_stderr: str | None = None  # pass (None), client or discard
    fd: int | None = None  # an inherited listening socket (--fd, or --activated's)
    activated: bool = False  # --activated: systemd passed the socket
    fd_name: str | None = None  # --fd-name: which of systemd's sockets
    inetd: bool = False  # --inetd: serve the one connection on stdin and stdout
    script: Script | None = None
    forward: Address | None = None  # -H forward's upstream
    forward_tls: ForwardTls | None = None  # --forward-tls...: None, plain TCP to the upstream
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
        if self.concurrency not in CONCURRENCIES:
            raise UsageError(
                f"unknown concurrency {self.concurrency!r}", hint="use " + ", ".join(CONCURRENCIES)
            )
        for name, least in (("max_threads", 1), ("max_children", 1), ("max_requests", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                option = "--" + name.replace("_", "-")
                raise UsageError(f"{option} must be at least {least}", hint=f"use {option} N")
        if self.backlog < 0:
            raise UsageError("--backlog cannot be negative", hint="use --backlog 0 or more")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1", hint="use --workers 1 or more")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError("--timeout must be more than 0 seconds", hint="e.g. --timeout 2.5")
        if not self.grace >= 0:
            raise UsageError("--grace cannot be negative", hint="e.g. --grace 0 or --grace 5")
        if self.mode is not None and not 0 <= self.mode <= 0o777:
            raise UsageError(f"--mode {self.mode:o} is outside 000..777", hint="e.g. --mode 600")

    def _check_combinations(self) -> None:
        self._check_room()
        if self.access is not None:
            self.access.check(self.family, self.transport)
        self._check_output_framing()
        self._check_exec()
        if self.fd is not None:
            from .inherited import check_inherited

            check_inherited(self.fd, mode=self.mode, reuse_port=self.reuse_port)
        if self.inetd:
            from .inherited import check_inetd

            refused = {
                "--workers": self.workers > 1,
                "--once": self.once,
                "--max-requests": self.max_requests is not None,
                "--print-address": self.print_address,
                "--print-host-port": self.print_host_port,
                "--mode": self.mode is not None,
                "--reuse-port": self.reuse_port,
            }
            check_inetd(self.inetd, self.concurrency, self.handler.builtin, refused)
        if self.forward is not None:
            from .upstreams import check_forward

            check_forward(
                self.forward, self.socktype, self.transport, self.concurrency, self.workers
            )
        if self.forward_tls is not None:
            from .tls_config import check_forward_tls

            check_forward_tls(self.forward_tls, self.forward, self.socktype, self.transport)
        if self.max_children is not None and self.concurrency != "fork":
            raise UsageError(
                "--max-children only applies to --concurrency fork",
                hint="add --concurrency fork, or use --max-threads with threads",
            )
        if self.max_threads is not None and self.concurrency != "thread":
            raise UsageError(
                "--max-threads only applies to --concurrency thread",
                hint="add --concurrency thread, or use --max-children with fork",
            )
        if self.pin and self.concurrency != "thread":
            raise UsageError(
                "--pin only applies to --concurrency thread",
                hint="add --concurrency thread, or drop --pin",
            )
        if self.pin and self.workers > 1:
            raise UsageError(
                "--pin keeps one process's threads on one CPU: not with --workers",
                hint="drop --pin, or --workers",
            )
        if self.daemon_threads and self.concurrency != "thread":
            raise UsageError(
                "--daemon-threads only applies to --concurrency thread",
                hint="add --concurrency thread, or drop --daemon-threads",
            )
        if self.timeout is not None and self.socktype == "dgram" and self.forward is None:
            raise UsageError(
                "--timeout closes idle connections: a datagram socket has none",
                hint="drop --timeout",
            )
        if self.print_host_port and self.family == "unix":
            raise UsageError(
                "--print-host-port prints HOST PORT: a unix socket has a path instead",
                hint="use --print-address, which prints the path",
            )
        if self.mode is not None and self.family != "unix":
            raise UsageError("--mode only applies to unix sockets", hint="drop --mode")
        if self.mode is not None and self.address.abstract:
            raise UsageError(
                "--mode does not apply to an abstract unix socket (@name): it has no file",
                hint="use a filesystem path, or drop --mode",
            )
        if self.workers > 1 and (self.once or self.max_requests is not None):
            raise UsageError(
                "--once and --max-requests count requests in one process: not with --workers",
                hint="drop --workers, or stop the server with a signal",
            )
        if self.reply is not None and self.reply_file is not None:
            raise UsageError(
                "--reply and --reply-file cannot be combined", hint="give only one of them"
            )
        if self.banner is not None and self.banner_file is not None:
            raise UsageError(
                "--banner and --banner-file cannot be combined", hint="give only one of them"
            )
        _check_faults_to(self)
        if self.socktype == "dgram" and (self.banner is not None or self.banner_file is not None):
            option = "--banner" if self.banner is not None else "--banner-file"
            raise UsageError(
                f"{option} only applies to tcp and unix: a {self.transport} server cannot "
                "speak first",
                hint=f"drop {option}",
            )
        if self.tls is not None:
            from .tls_config import check_tls_transport

            check_tls_transport(self.socktype, self.transport)

    def _check_exec(self) -> None:
        """--exec, --sh-exec and --exec-stderr (and -H exec, which needs one of them)."""
        running = self.exec is not None or self.sh_exec is not None
        if not running and self.exec_stderr is None and self.handler.builtin != "exec":
            return
        from .exec_command import check_exec, check_exec_mode

        check_exec(self.handler.builtin, self.exec, self.sh_exec, self.exec_stderr)
        check_exec_mode(self.exec, self.sh_exec, self.concurrency, self.timeout)

    def _check_room(self) -> None:
        """broadcast and chat: streams, and one process that sees every client."""
        name = self.handler.builtin
        if name not in ROOM_BUILTINS:
            if self.to_all:
                raise UsageError("--to-all only applies to -H broadcast", hint="drop --to-all")
            if self.slow_client != "disconnect":
                raise UsageError(
                    "--slow-client only applies to -H broadcast and -H chat",
                    hint="drop --slow-client",
                )
            return
        if self.slow_client not in SLOW_CLIENT_POLICIES:
            raise UsageError(
                f"unknown --slow-client {self.slow_client!r}",
                hint="use " + ", ".join(SLOW_CLIENT_POLICIES),
            )
        if self.to_all and name != "broadcast":
            raise UsageError(
                "--to-all only applies to -H broadcast (chat never echoes a line to its sender)",
                hint="drop --to-all",
            )
        if self.socktype == "dgram":
            raise UsageError(
                f"-H {name} relays between connected clients: {self.transport} has none",
                hint="serve it over tcp or unix",
            )
        if self.concurrency in ("fork", "sync") or self.workers > 1:
            why = "--workers" if self.workers > 1 else f"--concurrency {self.concurrency}"
            raise UsageError(
                f"-H {name} needs one process that sees every client at once: not with {why}",
                hint="use -c thread (the default) or -c event, in one process",
            )

    def _check_output_framing(self) -> None:
        """--raw applies to the handlers that write to stdout; stdio's stdin cannot be shared
        by a forked child per datagram."""
        builtin = self.handler.builtin
        if self.raw and builtin not in ("stdout", "stdio"):
            raise UsageError(
                f"--raw changes what -H stdout and -H stdio write, not -H {self.handler.name}",
                hint="drop --raw, or use -H stdout or -H stdio",
            )
        if builtin == "stdio" and self.socktype == "dgram" and self.concurrency == "fork":
            raise UsageError(
                f"-H stdio over {self.transport} cannot fork: a child per datagram cannot "
                "share stdin with the next one",
                hint="use -c sync (the default for datagrams), thread or event",
            )

    @property
    def fault_sides(self) -> tuple[str, ...]:
        """The sides the faults break: ("client",) on a server; a relay's as --faults-to
        says (both by default)."""
        if self.forward is None or self.faults_to == "client":
            return ("client",)
        if self.faults_to == "upstream":
            return ("upstream",)
        return ("client", "upstream")

    @property
    def transport(self) -> str:
        """tcp, udp, unix or unix-dgram."""
        if self.family == "unix":
            return "unix" if self.socktype == "stream" else "unix-dgram"
        return "tcp" if self.socktype == "stream" else "udp"

    def banner_bytes(self) -> bytes:
        """What each stream client is sent on connect: --banner, or --banner-file read now
        (b"": nothing). Raises UsageError when the file cannot be read."""
        if self.banner_file is None:
            return self.banner or b""
        try:
            with open(self.banner_file, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(
                f"cannot read --banner-file {self.banner_file}: {exc.strerror}",
                hint="check the path",
            ) from None

    def exec_spec(self) -> ExecSpec:
        """What the exec builtin runs (--exec or --sh-exec), for this transport and mode."""
        from .exec_command import ExecSpec, exec_argv

        if self.family == "unix":
            limit = MAX_DATAGRAM
        else:
            ipv4 = self.family == "inet" or self.address.all_interfaces
            limit = MAX_UDP_PAYLOAD["inet" if ipv4 else "inet6"]
        return ExecSpec(
            argv=exec_argv(self.exec, self.sh_exec),
            command=self.exec if self.exec is not None else f"sh -c {self.sh_exec!r}",
            transport=self.transport,
            stderr=self.exec_stderr or "pass",  # type: ignore[arg-type]  # checked: a mode
            reply_limit=limit,
            forked=self.concurrency == "fork",
        )

    @property
    def request_limit(self) -> int | None:
        """How many requests to serve before stopping (--once is 1), or None."""
        if self.once:
            return 1
        return self.max_requests


def build_config(
    *,
    proto: str,
    address: str | Address | None = None,
    handler: str | LoadedHandler | None = None,
    reply: bytes | None = None,
    reply_file: str | None = None,
    banner: bytes | None = None,
    banner_file: str | None = None,
    family: Family | None = None,
    type: SockType | None = None,  # --type: shadows the builtin in this function only
    concurrency: Concurrency | None = None,
    max_threads: int | None = None,
    pin: bool | None = None,
    max_children: int | None = None,
    workers: int = 1,
    daemon_threads: bool = False,
    block_on_close: bool = True,
    backlog: int | None = None,
    reuse_address: bool = True,
    reuse_port: bool = False,
    timeout: float | None = None,
    mode: int | None = None,
    once: bool = False,
    max_requests: int | None = None,
    grace: float = 5.0,
    print_address: bool = False,
    print_host_port: bool = False,
    json: bool = False,
    verbose: int = 0,
    color: bool | None = None,
    traceback: bool = False,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    allow_file: str | None = None,
    deny_file: str | None = None,
    allow_uid: Sequence[int] = (),
    allow_gid: Sequence[int] = (),
    to_all: bool = False,
    slow_client: SlowClient = "disconnect",
    record: str | None = None,
    transcript: str | None = None,
    timing: Timing | None = None,
    match: Match | None = None,
    tls: bool = False,
    cert: str | None = None,
    key: str | None = None,
    tls_name: tuple[str, ...] = (),
    tls_ca_out: str | None = None,
    client_ca: str | None = None,
    tls_client_cert_out: str | None = None,
    alpn: str | tuple[str, ...] | None = None,
    tls_min: str | None = None,
    tls_handshake_timeout: float | None = None,
    delay: float | tuple[float, float] | None = None,
    delay_accept: float | None = None,
    throttle: int | None = None,
    chunk: int | tuple[int, float] | None = None,
    close_after: int | None = None,
    reset_after: int | None = None,
    stall: bool = False,
    stall_after: int | None = None,
    fail_first: int | None = None,
    fail_mode: FailMode | None = None,
    drop: float | None = None,
    duplicate: float | None = None,
    reorder: float | None = None,
    fault_rate: float | None = None,
    seed: int | None = None,
    faults_to: FaultsTo | None = None,
    raw: bool = False,
    exec: str | None = None,
    sh_exec: str | None = None,
    exec_stderr: str | None = None,
    fd: int | None = None,
    activated: bool = False,
    fd_name: str | None = None,
    inetd: bool = False,
    script: Script | None = None,
    forward: str | Address | None = None,
    forward_tls: bool = False,
    forward_ca: str | None = None,
    forward_sni: str | None = None,
    forward_cert: str | None = None,
    forward_key: str | None = None,
    forward_no_verify: bool = False,
) -> ServeConfig:
    """Check the options of one run and combine them into a ServeConfig.

    `address` and `handler` are the command line's text or their parsed forms (an Address,
    a LoadedHandler). `handler` None is echo, or reply when `reply` or `reply_file` is given;
    `backlog` None is `DEFAULT_BACKLOG` (a number given is refused for datagrams).
    Raises UsageError (HandlerLoadError for the handler) naming the option to change.
    """
    if proto not in TRANSPORTS:
        raise UsageError(f"unknown protocol {proto!r}", hint="use " + ", ".join(TRANSPORTS))
    wanted_family, socktype = resolve_transport(proto, family, type)
    if address is None or fd is not None or activated or fd_name is not None or inetd:
        from .inherited import inherited_fd  # its rules: exactly one of ADDRESS, --fd...

        fd = inherited_fd(address, fd, activated, fd_name, inetd)
    if fd is not None:  # a socket sockserve did not create: its own family and type
        from .inherited import inherited_address

        address = inherited_address(fd, activated, proto, wanted_family, socktype, backlog)
    elif inetd:  # the connection on stdin
        if socktype != "stream" or backlog is not None:
            raise UsageError(
                "--inetd serves a stream connection: no datagram PROTO, no --backlog",
                hint="use tcp or unix, without --backlog",
            )
        from .inherited import inetd_address

        address = inetd_address(proto, wanted_family)
    else:
        assert address is not None
        address = _address(address, wanted_family, proto)
    concurrency = concurrency or ("sync" if inetd else default_concurrency(socktype))

    replies = reply is not None or reply_file is not None
    if handler is None and transcript is not None:
        handler = "replay"  # --transcript implies -H replay
    if exec is not None or sh_exec is not None:
        from .exec_command import exec_handler

        handler = exec_handler(handler, exec, sh_exec)
    upstream: Address | None = None
    if forward is not None or _handler_name(handler) == "forward":
        from .upstreams import forward_handler

        handler, upstream = forward_handler(handler, forward, socktype)
    if handler is None:
        handler = "reply" if replies else "script" if script is not None else "echo"
    loaded = load_handler(handler) if isinstance(handler, str) else handler
    if loaded.builtin == "reply" and not replies:
        raise UsageError("-H reply needs --reply TEXT or --reply-file PATH")
    if loaded.builtin != "reply" and replies:
        raise UsageError(f"--reply/--reply-file only apply to -H reply, not -H {loaded.name}")
    if script is not None or loaded.builtin == "script":
        from .script_model import check_script

        check_script(loaded.builtin, loaded.name, script, socktype, proto)
    check_compatible(loaded, socktype, concurrency)
    if socktype == "dgram" and loaded.builtin == "reply":
        _check_reply_fits(reply, reply_file, address)
    if backlog is not None and socktype == "dgram":
        raise UsageError(
            "--backlog is the listen queue of a stream socket: a datagram socket does not listen",
            hint="drop --backlog",
        )
    if once and max_requests:
        raise UsageError("cannot combine --once and --max-requests (--once is --max-requests 1)")
    transcript_read = None
    if any(value is not None for value in (record, transcript, timing, match)) or (
        loaded.builtin == "replay"
    ):
        from .transcripts import check_recording

        record, transcript_read = check_recording(
            loaded.builtin, loaded.name, socktype, concurrency, record, transcript, timing, match
        )

    return ServeConfig(
        family=address.family,
        socktype=socktype,
        address=address,
        handler=loaded,
        concurrency=concurrency,
        max_children=max_children,
        max_threads=max_threads,
        pin=pin,
        daemon_threads=daemon_threads,
        block_on_close=block_on_close,
        backlog=DEFAULT_BACKLOG if backlog is None else backlog,
        reuse_address=reuse_address,
        reuse_port=reuse_port,
        timeout=timeout,
        mode=mode,
        reply=reply,
        reply_file=reply_file,
        banner=banner,
        banner_file=banner_file,
        once=once,
        max_requests=max_requests,
        grace=grace,
        workers=workers,
        print_address=print_address,
        print_host_port=print_host_port,
        output="json" if json else "rich",
        verbosity=verbose,
        color=color,
        traceback=traceback,
        access=_access_rules(allow, deny, allow_file, deny_file, allow_uid, allow_gid),
        to_all=to_all,
        slow_client=slow_client,
        record=record,
        transcript=transcript_read,
        timing=timing or "recorded",
        match=match or "length",
        tls=_tls_settings(
            tls=tls,
            cert=cert,
            key=key,
            tls_name=tls_name,
            tls_ca_out=tls_ca_out,
            client_ca=client_ca,
            tls_client_cert_out=tls_client_cert_out,
            alpn=alpn,
            tls_min=tls_min,
            tls_handshake_timeout=tls_handshake_timeout,
        ),
        faults=_fault_plan(
            delay=delay,
            delay_accept=delay_accept,
            throttle=throttle,
            chunk=chunk,
            close_after=close_after,
            reset_after=reset_after,
            stall=stall,
            stall_after=stall_after,
            fail_first=fail_first,
            fail_mode=fail_mode,
            drop=drop,
            duplicate=duplicate,
            reorder=reorder,
            fault_rate=fault_rate,
            seed=seed,
        ),
        faults_to=faults_to,
        raw=raw,
        exec=exec,
        sh_exec=sh_exec,
        exec_stderr=exec_stderr,
        fd=fd,
        activated=activated,
        fd_name=fd_name,
        inetd=inetd,
        script=script,
        forward=upstream,
        forward_tls=_forward_tls(
            forward_tls=forward_tls,
            forward_ca=forward_ca,
            forward_sni=forward_sni,
            forward_cert=forward_cert,
            forward_key=forward_key,
            forward_no_verify=forward_no_verify,
        ),
    )


def _access_rules(
    allow: Sequence[str],
    deny: Sequence[str],
    allow_file: str | None,
    deny_file: str | None,
    allow_uid: Sequence[int],
    allow_gid: Sequence[int],
) -> AccessRules | None:
    """The access rules of the options (`sockserve.access`), or None when none is given."""
    if not (allow or deny or allow_uid or allow_gid) and allow_file is None and deny_file is None:
        return None
    from .access import build_rules

    return build_rules(allow, deny, allow_file, deny_file, allow_uid, allow_gid)


def _tls_settings(**options: Any) -> TlsSettings | None:
    """The TLS of the options (`sockserve.tls_config`), or None when none is given."""
    if all(value is None or value is False or value == () for value in options.values()):
        return None
    from .tls_config import tls_settings

    return tls_settings(**options)


def _handler_name(handler: str | LoadedHandler | None) -> str | None:
    """The handler `handler` names: -H's text, or the name of the handler it was loaded as."""
    if isinstance(handler, LoadedHandler):
        return handler.name
    return handler.strip() if handler is not None else None


def _forward_tls(**options: Any) -> ForwardTls | None:
    """The upstream's TLS of the options (`sockserve.tls_config`), or None when none is given."""
    if all(value is None or value is False for value in options.values()):
        return None
    from .tls_config import forward_tls_settings

    return forward_tls_settings(**options)


def _fault_plan(**options: Any) -> FaultPlan | None:
    """The plan of the fault options (`sockserve.faultplan`), or None when none is given."""
    if all(value is None or value is False for value in options.values()):
        return None
    from .faultplan import fault_plan

    return fault_plan(**options)


def _check_faults_to(config: ServeConfig) -> None:
    """The fault options against the transport and mode, on the sides they break: a
    server's connections, or a relay's client and upstream (--faults-to)."""
    plan = config.faults
    if config.faults_to is not None and config.forward is None:
        raise UsageError(
            "--faults-to chooses a side of -H forward: a server has only its clients",
            hint="add --forward UPSTREAM, or drop --faults-to",
        )
    if plan is None:
        if config.faults_to is not None:
            raise UsageError(
                "--faults-to tells where faults apply, but no fault is given",
                hint="add a fault such as --delay 50ms or --drop 10, or drop --faults-to",
            )
        return
    sides = config.fault_sides
    if sides == ("upstream",) and (plan.fail_first or plan.delay_accept):
        option = "--fail-first" if plan.fail_first else "--delay-accept"
        raise UsageError(
            f"{option} acts on the client's connection as the proxy accepts it: not with "
            "--faults-to upstream",
            hint="use --faults-to client or both",
        )
    if "client" in sides:
        plan.check(config.socktype, config.family, config.concurrency)
    if "upstream" in sides:
        assert config.forward is not None  # the accept's faults are the client's
        upstream = dataclasses.replace(plan, fail_first=0, fail_mode="reset", delay_accept=0.0)
        upstream.check(config.socktype, config.forward.family, config.concurrency)


#: How an error names an address of each family.
_FAMILY_ADDRESS = {"inet": "an IPv4 address", "inet6": "an IPv6 address", "unix": "a unix path"}


def _address(address: str | Address, family: Family | None, proto: str) -> Address:
    """Parse ADDRESS for `family`; an Address already parsed must be of that family.

    `family` None (tcp, udp without --family) takes either internet family.
    """
    if isinstance(address, str):
        return parse_address(address, family)
    fits = address.family == family if family else address.family in ("inet", "inet6")
    if not fits:
        taker = f"--family {family}" if family and proto in ("tcp", "udp") else proto
        wanted = _FAMILY_ADDRESS[family] if family else "an internet address"
        raise UsageError(
            f"{address} is {_FAMILY_ADDRESS[address.family]}, but {taker} takes {wanted}",
            hint="check PROTO, --family and ADDRESS",
        )
    return address


def unix_datagram_limit(size: int) -> int | None:
    """None if a unix datagram of `size` bytes can be sent here, else the largest that can.

    The socket's send buffer (SO_SNDBUF, its system default) decides, less what the kernel
    keeps of it: measured on a socket pair, which the server's socket is like.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:

        def fits(n: int) -> bool:
            try:
                a.send(bytes(n), socket.MSG_DONTWAIT)
            except OSError:  # EMSGSIZE, or ENOBUFS on some systems
                return False
            b.recv(n or 1)
            return True

        if fits(size):
            return None
        low, high = 0, size  # low fits, high does not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def _check_reply_fits(reply: bytes | None, reply_file: str | None, address: Address) -> None:
    """Refuse a reply that no one datagram of the transport carries (it would fail each time)."""
    if reply_file is not None:
        try:
            size = os.stat(reply_file).st_size
        except OSError as exc:
            raise UsageError(
                f"cannot read --reply-file {reply_file}: {exc.strerror}", hint="check the path"
            ) from None
        what = f"--reply-file {reply_file} is {size} bytes"
    else:
        size = len(reply or b"")
        what = f"--reply is {size} bytes"
    if address.family == "unix":
        limit = unix_datagram_limit(size)
        if limit is None:
            return
        carrier, why = "unix datagram here", ": the socket's send buffer, SO_SNDBUF, decides"
    else:
        # A dual-stack socket ([::]) answers IPv4 clients too: the IPv4 limit holds.
        ipv4 = address.family == "inet" or address.all_interfaces
        limit = MAX_UDP_PAYLOAD["inet" if ipv4 else "inet6"]
        if size <= limit:
            return
        carrier, why = f"UDP datagram over {'IPv4' if ipv4 else 'IPv6'}", ""
    raise UsageError(
        f"{what}: more than one {carrier} carries (at most {limit} bytes{why})",
        hint="use a smaller reply, or serve it over tcp or unix (streams have no limit)",
    )
