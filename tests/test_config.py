"""config: build_config and ServeConfig, without click: values, defaults, every rule's error."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sockserve.access import AccessRules
from sockserve.addresses import Address
from sockserve.config import ServeConfig, build_config
from sockserve.errors import ExitStatus, HandlerLoadError, UsageError
from sockserve.faultplan import FaultPlan
from sockserve.loading import LoadedHandler, load_handler
from sockserve.tls_config import TlsSettings


def usage_error(**options: Any) -> tuple[str, str | None]:
    """(message, hint) of the UsageError build_config raises for `options`."""
    with pytest.raises(UsageError) as info:
        build_config(**options)
    return info.value.message, info.value.hint


# -- values and defaults -----------------------------------------------------------------------


def test_defaults() -> None:
    config = build_config(proto="tcp", address=":9999")
    assert (config.family, config.socktype, config.transport) == ("inet", "stream", "tcp")
    assert config.address == Address("inet", "127.0.0.1", 9999)
    assert config.handler == LoadedHandler(name="echo", builtin="echo")
    assert config.concurrency == "thread"
    assert (config.reuse_address, config.backlog, config.grace) == (True, 2048, 5.0)
    assert (config.output, config.verbosity, config.request_limit) == ("rich", 0, None)


@pytest.mark.parametrize(
    ("proto", "address", "family", "socktype", "concurrency"),
    [
        ("tcp", "[::1]:0", "inet6", "stream", "thread"),
        ("udp", ":0", "inet", "dgram", "sync"),
        ("unix", "/tmp/c.sock", "unix", "stream", "thread"),
        ("unix-dgram", "@c", "unix", "dgram", "sync"),
    ],
)
def test_proto_and_address_give_family_type_and_default_concurrency(
    proto: str, address: str, family: str, socktype: str, concurrency: str
) -> None:
    config = build_config(proto=proto, address=address)
    assert (config.family, config.socktype, config.concurrency) == (family, socktype, concurrency)
    assert config.transport == proto


def test_family_applies_to_the_address_text() -> None:
    assert build_config(proto="tcp", address=":0", family="inet6").address == Address(
        "inet6", "::1", 0
    )
    assert build_config(proto="tcp", address="*:0", family="inet6").address.host == "::"


def test_a_parsed_address_is_taken_as_it_is() -> None:
    address = Address("inet6", "::1", 0)
    assert build_config(proto="tcp", address=address).address is address
    assert build_config(proto="tcp", address=address, family="inet6").address is address


def test_reply_implies_the_reply_handler() -> None:
    config = build_config(proto="tcp", address=":0", reply=b"hi\r\n")
    assert (config.handler.builtin, config.reply) == ("reply", b"hi\r\n")
    config = build_config(proto="tcp", address=":0", reply_file="reply.txt")
    assert (config.handler.builtin, config.reply_file) == ("reply", "reply.txt")


def test_handler_by_name_or_loaded(tmp_path: Path) -> None:
    assert build_config(proto="udp", address=":0", handler="upper").handler.builtin == "upper"
    (tmp_path / "cfg_lines.py").write_text(
        "import sockserve\nclass Lines(sockserve.StreamRequestHandler):\n    pass\n"
    )
    loaded = load_handler(f"{tmp_path / 'cfg_lines.py'}:Lines")
    config = build_config(proto="tcp", address=":0", handler=loaded, concurrency="fork")
    assert config.handler is loaded
    by_spec = build_config(proto="tcp", address=":0", handler=f"{tmp_path / 'cfg_lines.py'}")
    assert by_spec.handler.cls is loaded.cls


#: A value for each keyword of build_config that differs from its default, and the field of
#: ServeConfig it must reach with the value there.
NOT_DEFAULT: dict[str, tuple[Any, str, Any]] = {
    "proto": ("unix", "socktype", "stream"),
    "address": ("/tmp/n.sock", "address", Address("unix", path="/tmp/n.sock")),
    "handler": ("upper", "handler", LoadedHandler(name="upper", builtin="upper")),
    "reply": (None, "reply", None),  # reply only with -H reply: see the test below
    "reply_file": (None, "reply_file", None),
    "banner": (b"220 hi\r\n", "banner", b"220 hi\r\n"),
    "banner_file": (None, "banner_file", None),  # not with --banner: see tests/test_banner.py
    "family": ("unix", "family", "unix"),
    "type": ("stream", "socktype", "stream"),
    "concurrency": ("fork", "concurrency", "fork"),
    "max_threads": (None, "max_threads", None),  # thread mode only: see the test below
    "pin": (False, "pin", False),
    "max_children": (3, "max_children", 3),
    "workers": (1, "workers", 1),  # not with --once: see the test below
    "daemon_threads": (False, "daemon_threads", False),  # thread mode only: see the test below
    "block_on_close": (False, "block_on_close", False),
    "backlog": (7, "backlog", 7),
    "reuse_address": (False, "reuse_address", False),
    "reuse_port": (True, "reuse_port", True),
    "timeout": (2.5, "timeout", 2.5),
    "mode": (0o600, "mode", 0o600),
    "once": (True, "once", True),
    "max_requests": (None, "max_requests", None),  # not with --once
    "grace": (0.5, "grace", 0.5),
    "print_address": (True, "print_address", True),
    "print_host_port": (False, "print_host_port", False),  # not for unix: see the test below
    "json": (True, "output", "json"),
    "verbose": (2, "verbosity", 2),
    "color": (False, "color", False),
    "traceback": (True, "traceback", True),
    # family unix: credentials apply, networks do not (see tests/test_access.py)
    "allow": ((), "access", AccessRules(uids=[1000])),
    "deny": ((), "access", AccessRules(uids=[1000])),
    "allow_file": (None, "access", AccessRules(uids=[1000])),
    "deny_file": (None, "access", AccessRules(uids=[1000])),
    "allow_uid": ((1000,), "access", AccessRules(uids=[1000])),
    "allow_gid": ((), "access", AccessRules(uids=[1000])),
    "to_all": (False, "to_all", False),  # -H broadcast only: see tests/test_builtins_rooms.py
    "slow_client": ("disconnect", "slow_client", "disconnect"),  # likewise
    "record": ("/tmp", "record", "/tmp"),
    "transcript": (None, "transcript", None),  # -H replay only: see tests/test_cli_record.py
    "timing": (None, "timing", "recorded"),  # -H replay only
    "match": (None, "match", "length"),  # -H replay only
    "raw": (False, "raw", False),  # -H stdout and stdio only: see tests/test_framing.py
    "exec": (None, "exec", None),  # not with -H upper: see tests/test_exec_command.py
    "sh_exec": (None, "sh_exec", None),
    "exec_stderr": (None, "exec_stderr", None),  # only with --exec
    "fd": (None, "fd", None),  # not with ADDRESS: see tests/test_inherited.py
    "activated": (False, "activated", False),
    "fd_name": (None, "fd_name", None),
    "inetd": (False, "inetd", False),
    "script": (None, "script", None),  # -H script only: see tests/test_builtins_script.py
    "forward": (None, "forward", None),  # only with -H forward: see tests/test_upstreams.py
}
#: The fault options all reach one field, `faults` (a unix stream: no datagram faults, no reset).
FAULTS = FaultPlan(
    delay=0.05,
    jitter=0.01,
    delay_accept=0.1,
    throttle=1000,
    chunk=3,
    chunk_gap=0.002,
    close_after=10,
    stall_after=5,
    fail_first=2,
    fail_mode="close",
    fault_rate=50.0,
    seed=1,
)
NOT_DEFAULT.update(
    {
        "delay": ((0.05, 0.01), "faults", FAULTS),
        "delay_accept": (0.1, "faults", FAULTS),
        "throttle": (1000, "faults", FAULTS),
        "chunk": ((3, 0.002), "faults", FAULTS),
        "close_after": (10, "faults", FAULTS),
        "reset_after": (None, "faults", FAULTS),  # TCP only, not with --close-after
        "stall": (False, "faults", FAULTS),  # not with --stall-after
        "stall_after": (5, "faults", FAULTS),
        "fail_first": (2, "faults", FAULTS),
        "fail_mode": ("close", "faults", FAULTS),
        "drop": (None, "faults", FAULTS),  # datagrams only: see tests/test_faultplan.py
        "duplicate": (None, "faults", FAULTS),
        "reorder": (None, "faults", FAULTS),
        "fault_rate": (50.0, "faults", FAULTS),
        "seed": (1, "faults", FAULTS),
        "faults_to": (None, "faults_to", None),  # -H forward only: see tests/test_faults_to.py
    }
)
#: The TLS options all reach one field, `tls` (--cert, --key: not with --tls-name, see
#: tests/test_tls_config.py).
TLS = TlsSettings(
    names=("a.test",),
    ca_out="ca.pem",
    client_ca="clients.pem",
    client_cert_out="certs",
    alpn=("h2", "http/1.1"),
    min_version="1.3",
    handshake_timeout=2.0,
)
NOT_DEFAULT.update(
    {
        "tls": (True, "tls", TLS),
        "cert": (None, "tls", TLS),
        "key": (None, "tls", TLS),
        "tls_name": (("a.test",), "tls", TLS),
        "tls_ca_out": ("ca.pem", "tls", TLS),
        "client_ca": ("clients.pem", "tls", TLS),
        "tls_client_cert_out": ("certs", "tls", TLS),
        "alpn": ("h2,http/1.1", "tls", TLS),
        "tls_min": ("1.3", "tls", TLS),
        "tls_handshake_timeout": (2.0, "tls", TLS),
    }
)
#: Only with --forward (see tests/test_forward_tls.py): `forward_tls` stays None.
NOT_DEFAULT.update(
    {
        name: (default, "forward_tls", None)
        for name, default in (
            ("forward_tls", False),
            ("forward_ca", None),
            ("forward_sni", None),
            ("forward_cert", None),
            ("forward_key", None),
            ("forward_no_verify", False),
        )
    }
)


def test_every_keyword_reaches_its_field() -> None:
    keywords = list(inspect.signature(build_config).parameters)
    assert sorted(keywords) == sorted(NOT_DEFAULT)
    config = build_config(**{name: value for name, (value, _, _) in NOT_DEFAULT.items()})
    for name, (_, field, expected) in NOT_DEFAULT.items():
        assert getattr(config, field) == expected, name
    others = build_config(
        proto="tcp", address=":0", reply=b"x", max_threads=4, max_requests=9, daemon_threads=True
    )
    assert (others.reply, others.max_threads, others.daemon_threads) == (b"x", 4, True)
    assert (others.max_requests, others.request_limit) == (9, 9)
    assert build_config(proto="tcp", address=":0", workers=2).workers == 2
    assert build_config(proto="tcp", address=":0", print_host_port=True).print_host_port
    assert build_config(proto="tcp", address=":0", reply_file="r").reply_file == "r"
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    assert fields - {field for _, field, _ in NOT_DEFAULT.values()} == {"extra"}


def test_config_is_frozen() -> None:
    config = build_config(proto="tcp", address=":0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backlog = 1  # type: ignore[misc]


def test_config_knows_nothing_of_click() -> None:
    code = "import sys, sockserve.config; print('click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (out.stdout, out.stderr) == ("False\n", "")


# -- every rule: UsageError(message, hint), exit status 2 ----------------------------------------


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (
            {"proto": "sctp", "address": ":0"},
            "unknown protocol 'sctp'",
            "use tcp, udp, unix, unix-dgram",
        ),
        (
            {"proto": "tcp", "address": ":0", "family": "unix"},
            "--family unix contradicts tcp, an internet protocol",
            "use unix PATH instead",
        ),
        (
            {"proto": "unix", "address": "/tmp/x.sock", "type": "dgram"},
            "--type dgram contradicts unix, which is a stream protocol",
            "drop --type, or use unix-dgram",
        ),
        (
            {"proto": "tcp", "address": "127.0.0.1:99999"},
            "port 99999 is out of range",
            "a port is 0 to 65535, and 0 lets the OS pick",
        ),
        (
            {"proto": "tcp", "address": Address("unix", path="/tmp/x.sock")},
            "/tmp/x.sock is a unix path, but tcp takes an internet address",
            "check PROTO, --family and ADDRESS",
        ),
        (
            {"proto": "tcp", "address": Address("inet", "127.0.0.1", 0), "family": "inet6"},
            "127.0.0.1:0 is an IPv4 address, but --family inet6 takes an IPv6 address",
            "check PROTO, --family and ADDRESS",
        ),
        (
            {"proto": "unix", "address": Address("inet", "127.0.0.1", 0)},
            "127.0.0.1:0 is an IPv4 address, but unix takes a unix path",
            "check PROTO, --family and ADDRESS",
        ),
        (
            {"proto": "tcp", "address": ":0", "handler": "reply"},
            "-H reply needs --reply TEXT or --reply-file PATH",
            None,
        ),
        (
            {"proto": "tcp", "address": ":0", "handler": "upper", "reply": b"x"},
            "--reply/--reply-file only apply to -H reply, not -H upper",
            None,
        ),
        (
            {"proto": "tcp", "address": ":0", "reply": b"x", "reply_file": "r"},
            "--reply and --reply-file cannot be combined",
            "give only one of them",
        ),
        (
            {"proto": "tcp", "address": ":0", "once": True, "max_requests": 2},
            "cannot combine --once and --max-requests (--once is --max-requests 1)",
            None,
        ),
        (
            {"proto": "tcp", "address": ":0", "max_children": 2},
            "--max-children only applies to --concurrency fork",
            "add --concurrency fork, or use --max-threads with threads",
        ),
        (
            {"proto": "udp", "address": ":0", "max_threads": 2},
            "--max-threads only applies to --concurrency thread",
            "add --concurrency thread, or use --max-children with fork",
        ),
        (
            {"proto": "tcp", "address": ":0", "concurrency": "event", "pin": True},
            "--pin only applies to --concurrency thread",
            "add --concurrency thread, or drop --pin",
        ),
        (
            {"proto": "tcp", "address": ":0", "pin": True, "workers": 2},
            "--pin keeps one process's threads on one CPU: not with --workers",
            "drop --pin, or --workers",
        ),
        (
            {"proto": "tcp", "address": ":0", "mode": 0o600},
            "--mode only applies to unix sockets",
            "drop --mode",
        ),
        (
            {"proto": "unix", "address": "@abstract", "mode": 0o600},
            "--mode does not apply to an abstract unix socket (@name): it has no file",
            "use a filesystem path, or drop --mode",
        ),
        (
            {"proto": "tcp", "address": ":0", "workers": 2, "once": True},
            "--once and --max-requests count requests in one process: not with --workers",
            "drop --workers, or stop the server with a signal",
        ),
        (
            {"proto": "tcp", "address": ":0", "workers": 0},
            "--workers must be at least 1",
            "use --workers 1 or more",
        ),
        (
            {"proto": "tcp", "address": ":0", "max_threads": 0},
            "--max-threads must be at least 1",
            "use --max-threads N",
        ),
        (
            {"proto": "tcp", "address": ":0", "backlog": -1},
            "--backlog cannot be negative",
            "use --backlog 0 or more",
        ),
        (
            {"proto": "udp", "address": ":0", "backlog": 128},
            "--backlog is the listen queue of a stream socket: a datagram socket does not listen",
            "drop --backlog",
        ),
        (
            {"proto": "udp", "address": ":0", "timeout": 1.0},
            "--timeout closes idle connections: a datagram socket has none",
            "drop --timeout",
        ),
        (
            {"proto": "tcp", "address": ":0", "concurrency": "fork", "daemon_threads": True},
            "--daemon-threads only applies to --concurrency thread",
            "add --concurrency thread, or drop --daemon-threads",
        ),
        (
            {"proto": "tcp", "address": ":0", "timeout": 0},
            "--timeout must be more than 0 seconds",
            "e.g. --timeout 2.5",
        ),
        (
            {"proto": "tcp", "address": ":0", "grace": -1},
            "--grace cannot be negative",
            "e.g. --grace 0 or --grace 5",
        ),
        (
            {"proto": "unix", "address": "/tmp/m.sock", "mode": 0o1000},
            "--mode 1000 is outside 000..777",
            "e.g. --mode 600",
        ),
        (
            {"proto": "tcp", "address": ":0", "concurrency": "threads"},
            "unknown concurrency 'threads'",
            "use sync, thread, fork, event",
        ),
    ],
)
def test_rules(options: dict[str, Any], message: str, hint: str | None) -> None:
    assert usage_error(**options) == (message, hint)


def test_usage_errors_exit_2() -> None:
    with pytest.raises(UsageError) as info:
        build_config(proto="tcp", address=":0", workers=0)
    assert info.value.exit_status == ExitStatus.USAGE == 2


def test_handler_errors_are_handler_load_errors(tmp_path: Path) -> None:
    with pytest.raises(HandlerLoadError, match="unknown handler 'nope'"):
        build_config(proto="tcp", address=":0", handler="nope")
    (tmp_path / "cfg_stream.py").write_text(
        "import sockserve\nclass Lines(sockserve.StreamRequestHandler):\n    pass\n"
    )
    with pytest.raises(HandlerLoadError) as info:
        build_config(proto="udp", address=":0", handler=f"{tmp_path / 'cfg_stream.py'}")
    assert "is a stream handler and cannot serve udp/unix-dgram (dgram)" in info.value.message
    assert info.value.hint == "use it with tcp or unix"


@pytest.mark.parametrize(
    ("address", "size", "limit", "carrier"),
    [
        ("127.0.0.1:0", 65508, 65507, "UDP datagram over IPv4"),
        ("[::1]:0", 65528, 65527, "UDP datagram over IPv6"),
        ("[::]:0", 65508, 65507, "UDP datagram over IPv4"),  # dual stack: IPv4 clients too
    ],
)
def test_a_udp_reply_over_one_datagram_is_refused(
    tmp_path: Path, address: str, size: int, limit: int, carrier: str
) -> None:
    reply = tmp_path / "reply.bin"
    reply.write_bytes(bytes(size - 1))
    build_config(proto="udp", address=address, reply_file=str(reply))  # it fits, just
    build_config(proto="tcp", address=address, reply=bytes(size))  # streams have no limit
    reply.write_bytes(bytes(size))
    message, hint = usage_error(proto="udp", address=address, reply_file=str(reply))
    assert message == (
        f"--reply-file {reply} is {size} bytes: more than one {carrier} carries "
        f"(at most {limit} bytes)"
    )
    assert hint == "use a smaller reply, or serve it over tcp or unix (streams have no limit)"
    message, _ = usage_error(proto="udp", address=address, reply=bytes(size))
    assert message.startswith(f"--reply is {size} bytes: more than one {carrier}")


def test_unix_datagram_limit_is_what_one_send_carries() -> None:
    import socket

    from sockserve.config import unix_datagram_limit

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        big = 2 * probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + 1
    limit = unix_datagram_limit(big)
    assert limit is not None and 0 < limit < big
    assert unix_datagram_limit(limit) is None and unix_datagram_limit(limit + 1) == limit


def test_serve_config_checks_itself() -> None:
    """ServeConfig's own rules hold for a config made without build_config, too."""
    echo = LoadedHandler(name="echo", builtin="echo")
    address = Address("inet", "127.0.0.1", 0)
    with pytest.raises(UsageError, match="--max-children only applies"):
        ServeConfig("inet", "stream", address, echo, concurrency="thread", max_children=2)
    config = ServeConfig("inet", "stream", address, echo)
    assert (config.concurrency, config.extra) == ("thread", {})
