"""Benchmark sockserve against its peers, side by side, in one run.

    python benchmarks/run.py                  # every scenario, every peer (a few minutes)
    python benchmarks/run.py --quick          # the peers the targets name, short runs (< ~1 min)
    python benchmarks/run.py --only tcp-pp10  # one scenario (comma-separated for several)
    python benchmarks/run.py --list           # the scenarios and their servers

Every server is started fresh for each scenario as a subprocess on loopback (127.0.0.1 port 0,
or a unix socket in a temporary directory under /tmp) and stopped by its pid at the end. The
load comes from benchmarks/loadgen.c, the native reference server is benchmarks/echo_epoll.c;
both are compiled with gcc into benchmarks/bin/ at run time. Within a scenario, each round runs
every server once (in rotating order), so a burst of load from elsewhere on the machine hits
all of them alike; the tables show the median of the rounds. A full run writes
benchmarks/RESULTS.md; --quick and --only write benchmarks/bin/RESULTS-partial.md unless
--output says otherwise. See benchmarks/README.md for what each scenario means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = HERE / "bin"
PY = sys.executable
LOADGEN = BIN / "loadgen"
ECHO_C = BIN / "echo_epoll"
MSG = 64

# -- servers ------------------------------------------------------------------------------------

Argv = Callable[[str, str, str], list[str]]  # (transport, address, handler) -> argv


@dataclass
class Server:
    """One server under test: how to start it, and whether it prints its own address."""

    key: str
    group: str  # sockserve | stdlib | asyncio | native | proxy
    mode: str  # sync thread fork event workers uvloop asyncio socat c
    argv: Argv
    prints_address: bool = True
    needs_port: bool = False  # socat: cannot bind port 0 and tell us, so we pick a free port
    unavailable: str | None = None  # why it cannot run here (checked once)


def sockserve(concurrency: str | None, workers: int = 1, max_threads: int | None = None) -> Argv:
    def argv(transport: str, address: str, handler: str) -> list[str]:
        cmd = [PY, "-m", "sockserve", transport, address, "-H", handler, "-q", "--print-address"]
        if concurrency is not None:
            cmd += ["-c", concurrency]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        if max_threads is not None:
            cmd += ["--max-threads", str(max_threads)]
        return cmd

    return argv


def sockserve_own_handler(concurrency: str, *extra: str) -> Argv:
    """sockserve serving the stdlib peers' stream handler class, as a user's own
    `-H file.py:Class` (the row is in stream scenarios only)."""

    def argv(transport: str, address: str, handler: str) -> list[str]:
        spec = f"{HERE / 'stdlib_handlers.py'}:{handler.capitalize()}Stream"
        return [*sockserve(concurrency)(transport, address, spec), *extra]

    return argv


def sockserve_faults_off(concurrency: str) -> Argv:
    """sockserve with faults configured that never fire (--fault-rate 0): what the fault
    machinery costs a server whose connections it does not break."""

    def argv(transport: str, address: str, handler: str) -> list[str]:
        extra = ["--delay", "50ms", "--fault-rate", "0"]
        if transport in ("udp", "unix-dgram"):
            extra = ["--drop", "50", "--fault-rate", "0"]
        return [*sockserve(concurrency)(transport, address, handler), *extra]

    return argv


def stdlib(mode: str) -> Argv:
    return lambda t, a, h: [PY, str(HERE / "peers.py"), "stdlib", t, a, h, mode]


def aio(loop: str) -> Argv:
    return lambda t, a, h: [PY, str(HERE / "peers.py"), "asyncio", t, a, h, loop]


def native(t: str, a: str, h: str) -> list[str]:
    return [str(ECHO_C), t, a, h]


def socat(t: str, a: str, h: str) -> list[str]:
    if t == "unix-dgram":
        raise Unavailable("socat has no persistent unix datagram echo")
    if t == "udp":  # UDP4-LISTEN,fork PIPE runs, but answers 10 queued datagrams with one
        raise Unavailable("socat's PIPE merges queued datagrams into one reply")
    if t == "unix":
        listen = f"UNIX-LISTEN:{a},fork,backlog=128"
    else:
        host, _, port = a.rpartition(":")
        kind = "TCP4" if t == "tcp" else "UDP4"
        listen = f"{kind}-LISTEN:{port},bind={host},reuseaddr,fork,backlog=128"
    if h == "discard":
        return ["socat", "-u", listen, "OPEN:/dev/null"]
    return ["socat", listen, "PIPE"]


def sockserve_exec(concurrency: str) -> Argv:
    """sockserve running `cat` per connection (--exec), the connection as its stdin/stdout."""

    def argv(transport: str, address: str, handler: str) -> list[str]:
        cmd = [PY, "-m", "sockserve", transport, address, "--exec", "cat", "-q"]
        return [*cmd, "--print-address", "-c", concurrency]

    return argv


def ncat_exec(t: str, a: str, h: str) -> list[str]:
    """ncat keeping to listen (-k), a /bin/cat per connection."""
    if t != "tcp":
        raise Unavailable("the --exec scenario is TCP only")
    host, _, port = a.rpartition(":")
    return ["ncat", "-l", "-k", "-m", "1000", host, port, "--exec", "/bin/cat"]


def socat_exec(t: str, a: str, h: str) -> list[str]:
    """socat forking per connection, each running cat (EXEC:cat)."""
    if t != "tcp":
        raise Unavailable("the --exec scenario is TCP only")
    host, _, port = a.rpartition(":")
    return ["socat", f"TCP4-LISTEN:{port},bind={host},reuseaddr,fork,backlog=128", "EXEC:cat"]


class Unavailable(Exception):
    """A server that cannot run in this scenario or on this machine."""


_TLS_DIR: list[Path] = []  # made once per run (tls_files), removed at exit


def tls_files() -> Path:
    """The directory of ca.pem, cert.pem and key.pem, shared by every TLS server of the run."""
    if not _TLS_DIR:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix="ssb-tls-", dir="/tmp"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        subprocess.run([PY, str(HERE / "tls_tools.py"), "certs", str(folder)], check=True)
        _TLS_DIR.append(folder)
    return _TLS_DIR[0]


def sockserve_tls(concurrency: str) -> Argv:
    """sockserve serving the run's certificate (--cert/--key: the peers' own, ECDSA P-256)."""

    def argv(transport: str, address: str, handler: str) -> list[str]:
        tls = tls_files()
        cert, key = str(tls / "cert.pem"), str(tls / "key.pem")
        return [*sockserve(concurrency)(transport, address, handler), "--cert", cert, "--key", key]

    return argv


# -- proxies (forward scenarios): `handler` is then the upstream's address ------------------------


def sockserve_forward(concurrency: str) -> Argv:
    def argv(transport: str, address: str, upstream: str) -> list[str]:
        return [PY, "-m", "sockserve", transport, address, "--forward", upstream, "-q"] + [
            "--print-address",
            "-c",
            concurrency,
        ]

    return argv


def socat_tls(t: str, a: str, h: str) -> list[str]:
    tls = tls_files()
    host, _, port = a.rpartition(":")
    listen = (
        f"OPENSSL-LISTEN:{port},bind={host},reuseaddr,fork,backlog=128,"
        f"cert={tls / 'cert.pem'},key={tls / 'key.pem'},verify=0"
    )
    return ["socat", listen, "PIPE"]


def ncat_tls(t: str, a: str, h: str) -> list[str]:
    if shutil.which("ncat") is None:
        raise Unavailable("ncat not installed (apt-get install ncat)")
    tls = tls_files()
    host, _, port = a.rpartition(":")
    return ["ncat", "-l", "-k", "--ssl", "--ssl-cert", str(tls / "cert.pem"),
            "--ssl-key", str(tls / "key.pem"), host, port, "--exec", "/bin/cat"]  # fmt: skip


def uvloop_tls(t: str, a: str, h: str) -> list[str]:
    return [PY, str(HERE / "tls_tools.py"), "echo", a, str(tls_files())]


def socat_forward(t: str, a: str, upstream: str) -> list[str]:
    host, _, port = a.rpartition(":")
    if t == "udp":  # a child per datagram, which relays the upstream's answer back
        return [
            "socat",
            f"UDP4-RECVFROM:{port},bind={host},reuseaddr,fork",
            f"UDP4-SENDTO:{upstream}",
        ]
    listen = f"TCP4-LISTEN:{port},bind={host},reuseaddr,fork,backlog=128"
    return ["socat", listen, f"TCP4:{upstream}"]


def haproxy(t: str, a: str, upstream: str) -> list[str]:
    if t != "tcp":
        raise Unavailable("haproxy proxies streams only")
    config = BIN / f"haproxy-{a.rpartition(':')[2]}.cfg"
    config.write_text(
        "global\n  maxconn 4000\n  nbthread 1\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n"
        "  timeout server 120s\n"
        f"frontend front\n  bind {a}\n  default_backend back\n"
        f"backend back\n  server up {upstream}\n"
    )
    return ["haproxy", "-db", "-f", str(config)]


def uvloop_proxy(t: str, a: str, upstream: str) -> list[str]:
    if t != "tcp":
        raise Unavailable("the plain uvloop proxy relays TCP only")
    return [PY, str(HERE / "peers.py"), "proxy", "tcp", a, upstream, "uvloop"]


OWN = "sockserve thread (own handler)"  # a user's handler (the stdlib peer's) in thread mode
OWN_PIN = "sockserve thread (own handler, --pin)"  # the same, its threads kept on one CPU
BOUNDED = "sockserve thread max=128"  # the bounded pool: --max-threads 128
TLS_THREAD = "sockserve thread tls"  # --cert/--key: the certificate the TLS peers serve
TLS_EVENT = "sockserve event tls"
FAULTS_OFF_THREAD = "sockserve thread faults off"  # --delay 50ms --fault-rate 0
FAULTS_OFF_EVENT = "sockserve event faults off"
EXEC_THREAD = "sockserve exec thread"  # --exec cat: a program per connection
NCAT_EXEC = "ncat --exec /bin/cat -k"
SOCAT_EXEC = "socat EXEC:cat,fork"
SERVERS: dict[str, Server] = {
    s.key: s
    for s in [
        Server("sockserve sync", "sockserve", "sync", sockserve("sync")),
        Server("sockserve thread", "sockserve", "thread", sockserve("thread")),
        Server(OWN, "sockserve", "thread", sockserve_own_handler("thread")),
        Server(OWN_PIN, "sockserve", "thread", sockserve_own_handler("thread", "--pin")),
        Server(BOUNDED, "sockserve", "thread", sockserve("thread", max_threads=128)),
        Server("sockserve fork", "sockserve", "fork", sockserve("fork")),
        Server("sockserve event", "sockserve", "event", sockserve("event")),
        Server("sockserve workers=2", "sockserve", "workers", sockserve(None, 2)),
        Server("sockserve event workers=2", "sockserve", "workers", sockserve("event", 2)),
        Server(FAULTS_OFF_THREAD, "sockserve", "thread", sockserve_faults_off("thread")),
        Server(FAULTS_OFF_EVENT, "sockserve", "event", sockserve_faults_off("event")),
        Server("stdlib sync", "stdlib", "sync", stdlib("sync")),
        Server("stdlib thread", "stdlib", "thread", stdlib("thread")),
        Server("stdlib fork", "stdlib", "fork", stdlib("fork")),
        Server("asyncio", "asyncio", "asyncio", aio("asyncio")),
        Server("uvloop", "asyncio", "uvloop", aio("uvloop")),
        Server("socat", "native", "socat", socat, prints_address=False, needs_port=True),
        Server("C epoll", "native", "c", native),
        Server(TLS_THREAD, "sockserve", "thread", sockserve_tls("thread")),
        Server(TLS_EVENT, "sockserve", "event", sockserve_tls("event")),
        Server("uvloop tls", "asyncio", "uvloop", uvloop_tls),
        Server("socat tls", "native", "socat", socat_tls, prints_address=False, needs_port=True),
        Server("ncat tls", "native", "ncat", ncat_tls, prints_address=False, needs_port=True),
        Server(EXEC_THREAD, "sockserve", "thread", sockserve_exec("thread")),
        Server("sockserve exec fork", "sockserve", "fork", sockserve_exec("fork")),
        Server(NCAT_EXEC, "native", "ncat", ncat_exec, prints_address=False, needs_port=True),
        Server(SOCAT_EXEC, "native", "socat", socat_exec, prints_address=False, needs_port=True),
        Server("sockserve forward sync", "proxy", "sync", sockserve_forward("sync")),
        Server("sockserve forward thread", "proxy", "thread", sockserve_forward("thread")),
        Server("sockserve forward fork", "proxy", "fork", sockserve_forward("fork")),
        Server("sockserve forward event", "proxy", "event", sockserve_forward("event")),
        Server("socat forward", "proxy", "socat", socat_forward, False, needs_port=True),
        Server("haproxy", "proxy", "haproxy", haproxy, prints_address=False, needs_port=True),
        Server("uvloop proxy", "proxy", "uvloop", uvloop_proxy),
    ]
}

# -- scenarios ----------------------------------------------------------------------------------


@dataclass
class Scenario:
    key: str
    title: str
    kind: str  # pingpong connect bulk-echo bulk-discard dgram
    transport: str
    conns: int
    servers: list[str]
    quick: list[str]
    unit: str
    #: The servers are proxies in front of the C echo server (started for the scenario).
    upstream: bool = False

    def __post_init__(self) -> None:
        order = list(SERVERS)
        self.servers = sorted(self.servers, key=order.index)
        self.quick = sorted(self.quick, key=order.index)

    @property
    def handler(self) -> str:
        return "discard" if self.kind == "bulk-discard" else "echo"

    @property
    def bulk(self) -> bool:
        return self.kind.startswith("bulk")


ALL_THREAD = ["sockserve thread", "sockserve event", "sockserve workers=2"]
PEERS = ["stdlib thread", "asyncio", "uvloop", "socat", "C epoll"]
QUICK_CORE = ["sockserve thread", "sockserve event", "stdlib thread", "uvloop", "C epoll"]

SCENARIOS: list[Scenario] = [
    Scenario(
        "tcp-pp1",
        "TCP ping-pong 64 B, 1 connection",
        "pingpong",
        "tcp",
        1,
        ["sockserve sync", *ALL_THREAD[:2], "stdlib sync", *PEERS],
        ["sockserve sync", "sockserve thread", "stdlib sync", "stdlib thread", "C epoll"],
        "req/s",
    ),
    Scenario(
        "tcp-pp10",
        "TCP ping-pong 64 B, 10 connections",
        "pingpong",
        "tcp",
        10,
        [
            *ALL_THREAD,
            OWN,
            OWN_PIN,
            BOUNDED,
            "sockserve event workers=2",
            "sockserve fork",
            "stdlib fork",
        ]
        + PEERS,
        QUICK_CORE,
        "req/s",
    ),
    Scenario(
        "tcp-pp100",
        "TCP ping-pong 64 B, 100 connections",
        "pingpong",
        "tcp",
        100,
        [*ALL_THREAD, OWN, OWN_PIN, BOUNDED, "sockserve event workers=2", *PEERS],
        QUICK_CORE,
        "req/s",
    ),
    Scenario(
        "tcp-connect",
        "TCP new connection per request, 10 workers",
        "connect",
        "tcp",
        10,
        [
            "sockserve sync",
            *ALL_THREAD,
            OWN,
            OWN_PIN,
            BOUNDED,
            "sockserve fork",
            "stdlib sync",
            "stdlib fork",
            *PEERS,
        ],
        QUICK_CORE,
        "conn/s",
    ),
    Scenario(
        "tcp-bulk-echo",
        "TCP bulk echo, 1 connection",
        "bulk-echo",
        "tcp",
        1,
        ["sockserve sync", "sockserve thread", "sockserve event", *PEERS],
        ["sockserve thread", "sockserve event", "stdlib thread", "uvloop", "C epoll"],
        "MB/s",
    ),
    Scenario(
        "tcp-bulk-discard",
        "TCP bulk discard, 1 connection",
        "bulk-discard",
        "tcp",
        1,
        ["sockserve sync", "sockserve thread", "sockserve event", *PEERS],
        ["sockserve thread", "stdlib thread", "C epoll"],
        "MB/s",
    ),
    Scenario(
        "udp",
        "UDP 64 B request/response, 10 outstanding",
        "dgram",
        "udp",
        10,
        [
            "sockserve sync",
            "sockserve thread",
            "sockserve event",
            "sockserve workers=2",
            "stdlib sync",
            *PEERS,
        ],
        ["sockserve sync", "sockserve thread", "sockserve event", "stdlib sync"]
        + ["stdlib thread", "uvloop", "C epoll"],
        "dgram/s",
    ),
    Scenario(
        "unix-pp10",
        "unix stream ping-pong 64 B, 10 connections",
        "pingpong",
        "unix",
        10,
        ["sockserve thread", OWN, OWN_PIN, BOUNDED, "sockserve event", *PEERS],
        QUICK_CORE,
        "req/s",
    ),
    Scenario(
        "unix-dgram",
        "unix datagram 64 B request/response, 10 outstanding",
        "dgram",
        "unix-dgram",
        10,
        ["sockserve sync", "sockserve thread", "sockserve event", "stdlib sync", *PEERS],
        ["sockserve sync", "sockserve event", "stdlib sync", "uvloop", "C epoll"],
        "dgram/s",
    ),
    Scenario(
        "tls-connect",
        "TLS 1.3 new connection per request (handshake, 1 B echoed), 10 clients",
        "tls-connect",
        "tcp",
        10,
        [TLS_THREAD, TLS_EVENT, "socat tls", "ncat tls"],
        [TLS_THREAD, "socat tls", "ncat tls"],
        "conn/s",
    ),
    Scenario(
        "tls-bulk-echo",
        "TLS bulk echo, 1 connection",
        "bulk-tls-echo",
        "tcp",
        1,
        [TLS_THREAD, TLS_EVENT, "socat tls"],
        [TLS_THREAD, "socat tls"],
        "MB/s",
    ),
    Scenario(
        "tls-pp10",
        "TLS ping-pong 64 B, 10 connections",
        "tls-pingpong",
        "tcp",
        10,
        [TLS_THREAD, TLS_EVENT, "uvloop tls"],
        [TLS_EVENT, "uvloop tls"],
        "req/s",
    ),
    Scenario(
        "tcp-exec",
        "TCP --exec cat: a program per connection, new connection per request, 10 workers",
        "connect",
        "tcp",
        10,
        [EXEC_THREAD, "sockserve exec fork", NCAT_EXEC, SOCAT_EXEC],
        [EXEC_THREAD, NCAT_EXEC, SOCAT_EXEC],
        "conn/s",
    ),
]
SCENARIOS.append(
    Scenario(
        "tcp-faults-off",
        "TCP ping-pong 64 B, 10 connections: faults configured, none firing (--fault-rate 0)",
        "pingpong",
        "tcp",
        10,
        ["sockserve thread", FAULTS_OFF_THREAD, "sockserve event", FAULTS_OFF_EVENT],
        ["sockserve thread", FAULTS_OFF_THREAD, "sockserve event", FAULTS_OFF_EVENT],
        "req/s",
    )
)
FORWARD_TCP = ["sockserve forward thread", "sockserve forward event", "socat forward"]
FORWARD_FORK = "sockserve forward fork"
SCENARIOS += [
    Scenario(
        "fwd-tcp-bulk",
        "forward: TCP bulk echo through the proxy to the C echo, 1 connection",
        "bulk-echo",
        "tcp",
        1,
        [*FORWARD_TCP, FORWARD_FORK, "haproxy", "uvloop proxy"],
        [*FORWARD_TCP, "haproxy"],
        "MB/s",
        upstream=True,
    ),
    *(
        Scenario(
            f"fwd-tcp-pp{conns}",
            f"forward: TCP ping-pong 64 B through the proxy, {conns} connections",
            "pingpong",
            "tcp",
            conns,
            [*FORWARD_TCP, FORWARD_FORK, "haproxy", "uvloop proxy"],
            [*FORWARD_TCP, "uvloop proxy"],
            "req/s",
            upstream=True,
        )
        for conns in (10, 100)
    ),
    Scenario(
        "fwd-udp",
        "forward: UDP 64 B through the proxy, 10 outstanding",
        "dgram",
        "udp",
        10,
        ["sockserve forward sync", "sockserve forward event", "socat forward"],
        ["sockserve forward sync", "sockserve forward event", "socat forward"],
        "dgram/s",
        upstream=True,
    ),
]
SCENARIO_KEYS = [s.key for s in SCENARIOS] + ["startup"]

# -- running servers ----------------------------------------------------------------------------


def python_env() -> dict[str, str]:
    """Environment for Python servers: bytecode cached (as after `pip install`), in bin/."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(BIN / "pycache")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
    return found


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds used by pid, its live descendants and the children it has reaped."""
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


class Running:
    """A started server: its process, address and log."""

    def __init__(
        self, server: Server, scenario: Scenario, workdir: Path, upstream: str | None = None
    ) -> None:
        self.server = server
        self.upstream = upstream  # a proxy's: passed as the handler
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.error: str | None = None
        self.name = "".join(c if c.isalnum() else "_" for c in server.key)  # unique per server
        self.log = workdir / (self.name + ".log")
        self._start(scenario, workdir)

    def _start(self, scenario: Scenario, workdir: Path) -> None:
        server, transport = self.server, scenario.transport
        if server.unavailable:
            self.error = server.unavailable
            return
        if transport.startswith("unix"):
            address = str(workdir / (self.name + ".sock"))
        elif server.needs_port:
            address = f"127.0.0.1:{free_port()}"
        else:
            address = "127.0.0.1:0"
        try:
            argv = server.argv(transport, address, self.upstream or scenario.handler)
        except Unavailable as exc:
            self.error = str(exc)
            return
        env = python_env() if argv[0] == PY else None
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
                env=env,
            )
        try:
            if server.prints_address:
                self.address = self._read_address(10.0)
            else:
                self.address = address
                self._wait_ready(transport, 10.0)
        except Unavailable as exc:
            self.error = str(exc)
            self.stop()

    def _read_address(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable("did not print its address within 10 s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise Unavailable(self._why_exited())
                data += chunk
        return data.split(b"\n", 1)[0].decode().strip()

    def _why_exited(self) -> str:
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        return f"exited ({self.proc.returncode}): {last[:140]}"

    def _wait_ready(self, transport: str, timeout: float) -> None:
        """For servers that print nothing: probe until they answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise Unavailable(self._why_exited())
            with contextlib.suppress(OSError):
                if transport == "udp":
                    host, _, port = self.address.rpartition(":")
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.settimeout(0.05)
                        s.sendto(b"probe", (host, int(port)))
                        s.recvfrom(64)
                    return
                family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(1)
                    if family == socket.AF_UNIX:
                        s.connect(self.address)
                    else:
                        host, _, port = self.address.rpartition(":")
                        s.connect((host, int(port)))
                    return
            time.sleep(0.01)
        raise Unavailable("not accepting within 10 s")

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; then any descendant it left, by its pid."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        tree = proc_tree(proc.pid)[1:]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
        for pid in tree:  # forked workers/children that outlived the parent
            with contextlib.suppress(OSError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        if proc.stdout is not None:
            proc.stdout.close()


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Sample:
    rate: float
    p50: float | None = None
    p99: float | None = None
    server_cpu: float = 0.0  # seconds, during the run
    ops: int = 0
    secs: float = 0.0
    loadgen_cpu: float = 0.0
    loss: float | None = None
    errors: int = 0
    bad: int = 0

    def value(self, metric: str) -> float | None:
        """What a target compares: the rate, or ("cpu") server CPU µs per operation."""
        if metric == "cpu":
            return self.server_cpu / self.ops * 1e6 if self.ops else None
        if metric in ("p50", "p99"):
            return getattr(self, metric)
        return self.rate


@dataclass
class Result:
    scenario: str
    server: str
    samples: list[Sample] = field(default_factory=list)
    note: str | None = None

    def median(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else None

    @property
    def rate(self) -> float | None:
        return self.median("rate")

    @property
    def cpu_per_op_us(self) -> float | None:
        values = [v for s in self.samples if (v := s.value("cpu")) is not None]
        return statistics.median(values) if values else None

    @property
    def loadgen_pct(self) -> float | None:
        values = [s.loadgen_cpu / s.secs * 100 for s in self.samples if s.secs]
        return statistics.median(values) if values else None

    @property
    def server_pct(self) -> float | None:
        values = [s.server_cpu / s.secs * 100 for s in self.samples if s.secs]
        return statistics.median(values) if values else None


#: Before each round: wait (up to QUIET_WAIT_MAX s) until the machine's CPUs are at most
#: QUIET_BUSY busy over QUIET_SAMPLE s, so a round does not start on the tail of other work
#: (a finished scenario's servers, a build, another tenant: steal time counts as busy).
QUIET_BUSY = 0.10
QUIET_SAMPLE = 0.2
QUIET_WAIT_MAX = 20.0


@dataclass
class Quiet:
    """How long the run waited for a quiet machine, and how often it gave up waiting."""

    checks: int = 0
    waited: float = 0.0
    busy_starts: int = 0
    busiest: float = 0.0  # the highest busy share a round started with


QUIET = Quiet()


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_share(seconds: float) -> float | None:
    first = cpu_times()
    time.sleep(seconds)
    second = cpu_times()
    if first is None or second is None or second[1] == first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1])


def wait_quiet() -> None:
    """Wait until the CPUs are nearly idle, or QUIET_WAIT_MAX has passed (then go on, counted)."""
    start = time.monotonic()
    QUIET.checks += 1
    while True:
        share = busy_share(QUIET_SAMPLE)
        if share is None or share <= QUIET_BUSY:
            break
        if time.monotonic() - start >= QUIET_WAIT_MAX:
            QUIET.busy_starts += 1
            QUIET.busiest = max(QUIET.busiest, share)
            break
    QUIET.waited += time.monotonic() - start - QUIET_SAMPLE


def loadgen(scenario: Scenario, address: str, duration: float, bulk_bytes: int, tmp: Path) -> dict:
    if "tls" in scenario.kind:
        return tls_load(scenario, address, duration, bulk_bytes)
    cmd = [str(LOADGEN), scenario.kind, "-t", scenario.transport, "-a", address]
    if scenario.bulk:
        cmd += ["-b", str(bulk_bytes), "-d", "120"]
        timeout = 130.0
    else:
        cmd += ["-c", str(scenario.conns), "-s", str(MSG), "-d", str(duration)]
        timeout = duration + 30
    if scenario.transport == "unix-dgram":
        cmd += ["-o", str(tmp / "client.sock")]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)
    if not out.stdout.strip():
        raise RuntimeError(f"loadgen failed: {out.stderr.strip()[:200]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tls_load(scenario: Scenario, address: str, duration: float, bulk_bytes: int) -> dict:
    """The TLS scenarios' load, from benchmarks/tls_tools.py (Python's ssl: loadgen.c has no
    TLS), in loadgen's JSON shape."""
    mode = {"tls-connect": "connect", "tls-pingpong": "pingpong"}.get(scenario.kind, "bulk")
    ca = str(tls_files() / "ca.pem")
    cmd = [PY, str(HERE / "tls_tools.py"), "load", mode, address, ca, str(scenario.conns)]
    cmd += [str(duration), str(bulk_bytes)]
    timeout = 130.0 if scenario.bulk else duration + 30
    out = subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)
    if not out.stdout.strip():
        raise RuntimeError(f"TLS load failed: {out.stderr.strip()[-200:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(run: Running, scenario: Scenario, duration: float, bulk: int, tmp: Path) -> Sample:
    before = run.cpu()
    data = loadgen(scenario, run.address, duration, bulk, tmp)
    server_cpu = run.cpu() - before
    if scenario.bulk:
        if not data.get("complete"):
            raise RuntimeError(f"transfer incomplete after {data['secs']:.1f}s")
        return Sample(
            rate=data["mb_per_s"],
            server_cpu=server_cpu,
            secs=data["secs"],
            loadgen_cpu=data["cpu_s"],
            errors=data.get("errors", 0),
        )
    if data["ops"] == 0:
        raise RuntimeError("no request was answered")
    return Sample(
        rate=data["rate"],
        p50=data["p50_us"],
        p99=data["p99_us"],
        server_cpu=server_cpu,
        ops=data["ops"],
        secs=data["secs"],
        loadgen_cpu=data["cpu_s"],
        loss=data.get("loss"),
        errors=data.get("errors", 0),
        bad=data.get("bad", 0),
    )


def run_scenario(scenario: Scenario, opts: argparse.Namespace) -> list[Result]:
    names = scenario.quick if opts.quick else scenario.servers
    if opts.servers:
        names = [n for n in scenario.servers if n in opts.servers]
    results = {name: Result(scenario.key, name) for name in names}
    tmp = Path(tempfile.mkdtemp(prefix="ssb-", dir="/tmp"))
    running: list[Running] = []
    upstream: Running | None = None
    try:
        if scenario.upstream:  # the C echo behind every proxy
            upstream = Running(SERVERS["C epoll"], scenario, tmp)
            if upstream.error:
                raise SystemExit(f"{scenario.key}: the C echo upstream failed: {upstream.error}")
        for name in names:
            run = Running(SERVERS[name], scenario, tmp, upstream and upstream.address)
            if run.error:
                results[name].note = f"unavailable: {run.error}"
            else:
                running.append(run)
        warmup = min(opts.duration, 0.3 if not opts.quick else 0.1)
        live = list(running)
        for rnd in range(-1, opts.rounds):  # round -1 warms up (JIT-free, but caches and pools)
            shift = rnd % len(live) if live else 0
            for run in live[shift:] + live[:shift]:
                res = results[run.server.key]
                if res.note:
                    continue
                # Before each server, not only each round: a fork server's children still
                # exiting after its run would otherwise land on the next server's figures.
                wait_quiet()
                try:
                    bulk = opts.bulk_mib << 20 if rnd >= 0 else min(opts.bulk_mib, 32) << 20
                    sample = measure(run, scenario, warmup if rnd < 0 else opts.duration, bulk, tmp)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    res.note = f"failed: {exc}"
                    continue
                if rnd >= 0:
                    res.samples.append(sample)
            if rnd >= 0:
                progress(scenario, rnd, results)
    finally:
        for run in running:
            run.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return list(results.values())


def progress(scenario: Scenario, rnd: int, results: dict[str, Result]) -> None:
    done = [r for r in results.values() if r.samples]
    best = max(done, key=lambda r: r.rate or 0, default=None)
    if best is not None:
        print(
            f"  {scenario.key}: round {rnd + 1} done ({len(done)} servers; "
            f"top so far {best.server} {fmt_rate(best.rate)} {scenario.unit})",
            flush=True,
        )


# -- start-up -----------------------------------------------------------------------------------


@dataclass
class StartupCase:
    key: str
    argv: Callable[[str], list[str]]  # address -> argv
    python: bool = True


#: The `sockserve` command as users type it: the entry point installed next to PY (else -m).
SOCKSERVE_SCRIPT = Path(PY).with_name("sockserve")
SOCKSERVE_COMMAND = (
    [str(SOCKSERVE_SCRIPT)] if SOCKSERVE_SCRIPT.exists() else [PY, "-m", "sockserve"]
)


def startup_cases(servers: dict[str, Server]) -> list[StartupCase]:
    """The `sockserve` command and its anchor (the bare stdlib script plus `import click`);
    `python -m sockserve`, the bare script without click and the other servers for
    information."""

    def ss(conc: str, argv0: list[str] = SOCKSERVE_COMMAND) -> Callable[[str], list[str]]:
        return lambda a: [*argv0, "tcp", a, "-H", "echo", "-c", conc, "-q"]

    cases = [
        StartupCase("sockserve thread", ss("thread")),
        StartupCase("sockserve event", ss("event")),
    ]
    if SOCKSERVE_COMMAND[0] != PY:  # informational: -m also pays for runpy's imports
        cases.append(
            StartupCase("sockserve thread (python -m)", ss("thread", [PY, "-m", "sockserve"]))
        )
    cases += [
        StartupCase(
            "bare stdlib script + click", lambda a: [PY, str(HERE / "bare_stdlib_click.py"), a]
        ),
        StartupCase("bare stdlib script", lambda a: [PY, str(HERE / "bare_stdlib.py"), a]),
        StartupCase("asyncio", lambda a: [PY, str(HERE / "peers.py"), "asyncio", "tcp", a, "echo"]),
    ]
    if not servers["uvloop"].unavailable:
        cases.append(
            StartupCase(
                "uvloop",
                lambda a: [PY, str(HERE / "peers.py"), "asyncio", "tcp", a, "echo", "uvloop"],
            )
        )
    if not servers["socat"].unavailable:
        cases.append(StartupCase("socat", lambda a: socat("tcp", a, "echo"), python=False))
    cases.append(StartupCase("C epoll", lambda a: native("tcp", a, "echo"), python=False))
    return cases


def run_startup(opts: argparse.Namespace) -> tuple[list[Result], list[Result]]:
    """exec -> first echoed byte for each case; then plain command times (--help etc.)."""
    reps = 9 if opts.quick else 25  # cheap runs, and the ratio sits near its bound: many samples
    command_reps = 5 if opts.quick else 9  # --help and the like: for information
    cases = startup_cases(SERVERS)
    results = {c.key: Result("startup", c.key) for c in cases}
    for rnd in range(-2, reps):  # two warm-up rounds fill the bytecode cache
        wait_quiet()
        shift = rnd % len(cases)  # rotating order: no case always follows the same one
        for case in cases[shift:] + cases[:shift]:
            res = results[case.key]
            if res.note:
                continue
            address = f"127.0.0.1:{free_port()}"
            cmd = [str(LOADGEN), "startup", "-t", "tcp", "-a", address, "-d", "10", "--"]
            out = subprocess.run(
                cmd + case.argv(address),
                capture_output=True,
                text=True,
                timeout=30,
                env=python_env() if case.python else None,
                cwd=ROOT,
            )
            data = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
            if "reply_ms" not in data:
                res.note = f"unavailable: {data.get('error', out.stderr.strip()[:120])}"
                continue
            if rnd >= 0:
                res.samples.append(Sample(rate=data["reply_ms"], p50=data["connect_ms"]))
    commands = {
        "python -c pass": [PY, "-c", "pass"],
        "python -c 'import socketserver'": [PY, "-c", "import socketserver"],
        "python -c 'import click'": [PY, "-c", "import click"],
        "python -c 'import sockserve'": [PY, "-c", "import sockserve"],
        "sockserve --help": [*SOCKSERVE_COMMAND, "--help"],
        "sockserve --version": [*SOCKSERVE_COMMAND, "--version"],
    }
    timed = {k: Result("commands", k) for k in commands}
    for rnd in range(-2, command_reps):
        for key, argv in commands.items():
            out = subprocess.run(
                [str(LOADGEN), "run", "-d", "20", "--", *argv],
                capture_output=True,
                text=True,
                timeout=30,
                env=python_env(),
                cwd=ROOT,
            )
            data = json.loads(out.stdout.strip().splitlines()[-1])
            if data.get("status") != 0:
                timed[key].note = f"exit status {data.get('status')}"
            elif rnd >= 0:
                timed[key].samples.append(Sample(rate=data["ms"]))
    print("  startup: done", flush=True)
    return list(results.values()), list(timed.values())


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    scenario: str
    label: str
    ours: str
    peer: str
    need: float  # ratio ours/peer must be >= need (or <= need when lower is better)
    metric: str = "rate"  # rate | cpu | startup
    lower_is_better: bool = False


TARGETS = [
    Target("tcp-pp10", "ping-pong, 10 conns", "sockserve thread", "stdlib thread", 1.0),
    Target("tcp-pp10", "ping-pong, 10 conns", "sockserve event", "uvloop", 0.95),
    Target("tcp-pp100", "ping-pong, 100 conns", "sockserve thread", "stdlib thread", 2.0),
    Target("tcp-pp100", "ping-pong, 100 conns", "sockserve event", "uvloop", 0.95),
    Target("tcp-connect", "new connection per request", "sockserve thread", "stdlib thread", 2.0),
    Target("tcp-connect", "new connection per request", "sockserve event", "uvloop", 0.9),
    Target("tcp-bulk-echo", "bulk echo, 1 conn", "sockserve thread", "C epoll", 1.1),
    Target("udp", "UDP 64 B, 10 outstanding", "sockserve sync", "stdlib sync", 1.0),
    Target("udp", "UDP 64 B, 10 outstanding", "sockserve thread", "stdlib thread", 10.0),
    Target("udp", "UDP 64 B, 10 outstanding", "sockserve event", "uvloop", 0.95),
    Target(
        "unix-pp10", "unix stream ping-pong, 10 conns", "sockserve thread", "stdlib thread", 1.0
    ),
    Target("unix-pp10", "unix stream ping-pong, 10 conns", "sockserve event", "uvloop", 0.9),
    Target("tls-connect", "TLS 1.3 handshakes, 10 clients", TLS_THREAD, "socat tls", 1.0),
    Target("tls-connect", "TLS 1.3 handshakes, 10 clients", TLS_THREAD, "ncat tls", 1.0),
    Target("tls-bulk-echo", "TLS bulk echo, 1 conn", TLS_THREAD, "socat tls", 1.0),
    Target("tls-pp10", "TLS ping-pong, 10 conns", TLS_EVENT, "uvloop tls", 0.9),
    Target("tcp-exec", "--exec cat, a connection each", EXEC_THREAD, NCAT_EXEC, 1.0),
    Target("tcp-exec", "--exec cat, a connection each", EXEC_THREAD, SOCAT_EXEC, 1.0),
    Target("fwd-tcp-bulk", "forward TCP bulk", "sockserve forward thread", "socat forward", 1.0),
    *(
        Target(
            f"fwd-tcp-pp{n}",
            f"forward ping-pong {n} conns, {p}",
            f"sockserve forward {mode}",
            "socat forward",
            1.0,
            metric=p,
            lower_is_better=True,
        )
        for n in (10, 100)
        for mode in ("thread", "event")
        for p in ("p50", "p99")
    ),
    *(
        Target(
            f"fwd-tcp-pp{n}",
            f"forward ping-pong {n} conns",
            "sockserve forward event",
            "uvloop proxy",
            0.9,
        )
        for n in (10, 100)
    ),
    Target("fwd-udp", "forward UDP", "sockserve forward sync", "socat forward", 1.0),
    Target(
        "startup",
        "exec → first accepted connection",
        "sockserve thread",
        "bare stdlib script + click",
        1.2,
        metric="startup",
        lower_is_better=True,
    ),
    Target(
        "tcp-pp100",
        "server CPU per request (event, 100 conns)",
        "sockserve event",
        "uvloop",
        1.2,
        metric="cpu",
        lower_is_better=True,
    ),
]


def round_ratios(ours: Result | None, peer: Result | None, metric: str) -> list[float]:
    """ours/peer round by round (each round ran both, one after the other): how much of a
    ratio is the machine's noise. Empty unless both have a sample from every round."""
    if ours is None or peer is None or len(ours.samples) != len(peer.samples):
        return []
    pairs = [
        (a.value(metric), b.value(metric)) for a, b in zip(ours.samples, peer.samples, strict=True)
    ]
    return [a / b for a, b in pairs if a is not None and b]


def target_value(res: Result | None, metric: str) -> float | None:
    if res is None or not res.samples:
        return None
    if metric == "cpu":
        return res.cpu_per_op_us
    if metric in ("p50", "p99"):
        return res.median(metric)
    return res.rate


# -- output -------------------------------------------------------------------------------------


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    if v >= 10_000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def fmt(v: float | None, digits: int = 0, suffix: str = "") -> str:
    return "—" if v is None else f"{v:.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def stdlib_match(server: str, scenario: Scenario) -> str | None:
    """The stdlib server with the same concurrency (--workers: the transport's default)."""
    mode = server.split()[1] if server.startswith("sockserve ") else None
    if mode in ("sync", "thread", "fork"):
        return f"stdlib {mode}"
    if mode == "workers=2":
        return "stdlib sync" if scenario.kind == "dgram" else "stdlib thread"
    return None


def scenario_table(scenario: Scenario, results: list[Result]) -> list[str]:
    by = {r.server: r for r in results}
    uv = by.get("uvloop") or by.get("asyncio")
    c = by.get("C epoll")
    uvname = "uvloop" if by.get("uvloop") and by["uvloop"].samples else "asyncio"
    if scenario.bulk:
        head = f"| server | {scenario.unit} | min–max | server CPU % | loadgen CPU % "
    else:
        head = f"| server | {scenario.unit} | min–max | p50 µs | p99 µs | srv CPU µs/op | lg CPU % "
    if scenario.kind == "dgram":
        head += "| loss "
    head += f"| × stdlib same mode | × {uvname} | × C epoll | note |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        rates = [s.rate for s in r.samples]
        spread = f"{fmt_rate(min(rates))}–{fmt_rate(max(rates))}" if rates else "—"
        row = f"| {r.server} | **{fmt_rate(r.rate)}** | {spread} "
        if scenario.bulk:
            row += f"| {fmt(r.server_pct)} | {fmt(r.loadgen_pct)} "
        else:
            row += (
                f"| {fmt(r.median('p50'))} | {fmt(r.median('p99'))} "
                f"| {fmt(r.cpu_per_op_us, 1)} | {fmt(r.loadgen_pct)} "
            )
        if scenario.kind == "dgram":
            loss = r.median("loss")
            row += f"| {'—' if loss is None else f'{loss * 100:.2f}%'} "
        if r.server.startswith("sockserve"):
            match = by.get(stdlib_match(r.server, scenario) or "")
            row += f"| {ratio(r.rate, match.rate if match else None)} "
            row += f"| {ratio(r.rate, uv.rate if uv else None)} "
            row += f"| {ratio(r.rate, c.rate if c else None)} "
        else:
            row += "| | | "
        errors = sum(s.errors for s in r.samples)
        bad = sum(s.bad for s in r.samples)
        note = r.note or (f"{errors} errors" if errors else "")
        if bad:
            note += f" {bad} replies of the wrong size"
        lines.append(row + f"| {note} |")
    return lines


def startup_table(results: list[Result], commands: list[Result]) -> list[str]:
    by = {r.server: r for r in results}
    anchor = by.get("bare stdlib script + click")
    bare = by.get("bare stdlib script")
    lines = [
        "| server | exec → first echo, ms | min–max | exec → connect, ms "
        "| × bare stdlib + click | × bare stdlib | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rates = [s.rate for s in r.samples]
        spread = f"{min(rates):.1f}–{max(rates):.1f}" if rates else "—"
        to_anchor = ratio(r.rate, anchor.rate if anchor else None)
        to_bare = ratio(r.rate, bare.rate if bare else None)
        lines.append(
            f"| {r.server} | **{fmt(r.rate, 1)}** | {spread} | {fmt(r.median('p50'), 1)} "
            f"| {to_anchor} | {to_bare} | {r.note or ''} |"
        )
    lines += ["", "| command | ms (median) | min–max | note |", "|---|---|---|---|"]
    for r in commands:
        rates = [s.rate for s in r.samples]
        spread = f"{min(rates):.1f}–{max(rates):.1f}" if rates else "—"
        lines.append(f"| `{r.server}` | **{fmt(r.rate, 1)}** | {spread} | {r.note or ''} |")
    return lines


def targets_table(all_results: dict[str, list[Result]]) -> list[str]:
    lines = [
        "| target | sockserve | peer | measured | needed | verdict | round by round |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        results = {r.server: r for r in all_results.get(t.scenario, [])}
        if not results:
            continue
        peer_name = t.peer
        if peer_name == "uvloop" and not (results.get("uvloop") and results["uvloop"].samples):
            peer_name = "asyncio"
        ours, peer = results.get(t.ours), results.get(peer_name)
        a, b = target_value(ours, t.metric), target_value(peer, t.metric)
        unit = {"cpu": " µs/op", "startup": " ms", "p50": " µs", "p99": " µs"}.get(t.metric, "")
        sign = "≤" if t.lower_is_better else "≥"
        if a is None or b is None or b == 0:
            why = (ours.note if ours and ours.note else None) or (peer.note if peer else None)
            verdict = f"n/a ({why or 'not measured'})"
            measured = rounds = "—"
        else:
            r = a / b
            ok = r <= t.need if t.lower_is_better else r >= t.need
            verdict = "**met**" if ok else "missed"
            measured = f"{r:.2f}× ({fmt_num(a)} vs {fmt_num(b)}{unit})"
            each = round_ratios(ours, peer, t.metric)
            met = sum(x <= t.need if t.lower_is_better else x >= t.need for x in each)
            rounds = (
                f"{min(each):.2f}–{max(each):.2f}×, met in {met} of {len(each)}" if each else "—"
            )
        lines.append(
            f"| {t.label} | {t.ours} | {peer_name} | {measured} | {sign} {t.need:g}× | {verdict} "
            f"| {rounds} |"
        )
    return lines


def fmt_num(v: float) -> str:
    return fmt_rate(v) if v >= 100 else f"{v:.1f}"


def headroom_lines(all_results: dict[str, list[Result]]) -> list[str]:
    lines = [
        "| scenario | loadgen vs C epoll | loadgen CPU % there | best Python server | "
        "loadgen CPU % there | headroom |",
        "|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        results = all_results.get(sc.key)
        if not results or sc.bulk:
            continue
        by = {r.server: r for r in results}
        c = by.get("C epoll")
        py = [r for r in results if SERVERS[r.server].group != "native" and r.rate]
        best = max(py, key=lambda r: r.rate or 0, default=None)
        if c is None or not c.rate or best is None:
            continue
        lines.append(
            f"| {sc.title} | {fmt_rate(c.rate)} {sc.unit} | {fmt(c.loadgen_pct)} "
            f"| {best.server}: {fmt_rate(best.rate)} | {fmt(best.loadgen_pct)} "
            f"| {ratio(c.rate, best.rate)} |"
        )
    return lines


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "kernel": f"{platform.system()} {platform.release()}",
    }
    with contextlib.suppress(Exception):
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["memory"] = f"{int(mem) / 1024 / 1024:.0f} GiB"
    info["gcc"] = _first_line(["gcc", "--version"])
    info["socat"] = _first_line(["socat", "-V"], match="socat version") or "absent"
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = "absent"
    with contextlib.suppress(Exception):
        rev = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "sockserve"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["sockserve"] = f"{rev}{' + uncommitted changes' if dirty else ''}"
    return info


def _first_line(cmd: list[str], match: str = "") -> str:
    with contextlib.suppress(OSError):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if match in line:
                return line.strip()
    return ""


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def report(
    opts: argparse.Namespace,
    info: dict[str, str],
    all_results: dict[str, list[Result]],
    startup: tuple[list[Result], list[Result]] | None,
    took: float,
    load: tuple[str, str],
) -> str:
    out = ["# sockserve benchmarks", ""]
    flags = " ".join(sys.argv[1:]) or "(full run)"
    out.append(f"`python benchmarks/run.py {flags}` — took {took:.0f} s.")
    out.append("")
    out += ["| machine | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    out.append(f"| load average (start → end) | {load[0]} → {load[1]} |")
    gave_up = (
        f"; {QUIET.busy_starts} started busy after {QUIET_WAIT_MAX:g} s (busiest "
        f"{QUIET.busiest:.0%})"
        if QUIET.busy_starts
        else ""
    )
    out.append(
        f"| quiet start | each of {QUIET.checks} rounds waited for CPUs ≤ {QUIET_BUSY:.0%} busy: "
        f"{QUIET.waited:.1f} s in all{gave_up} |"
    )
    out.append(
        f"| settings | {opts.rounds} rounds of {opts.duration:g} s (median shown), "
        f"bulk {opts.bulk_mib} MiB, {MSG} B messages |"
    )
    out.append("")
    out += ["## Targets of issue 6", ""]
    merged = dict(all_results)
    if startup is not None:
        merged["startup"] = startup[0]
    out += targets_table(merged)
    out.append("")
    for sc in SCENARIOS:
        if sc.key in all_results:
            out += [f"## {sc.title}", ""]
            out += scenario_table(sc, all_results[sc.key])
            out.append("")
    if startup is not None:
        out += ["## Start-up", ""]
        out += startup_table(*startup)
        out.append("")
    head = headroom_lines(all_results)
    if len(head) > 2:
        out += ["## Load generator headroom", ""]
        out += head
        out.append("")
    return "\n".join(out)


# -- build and main -----------------------------------------------------------------------------


def build() -> None:
    BIN.mkdir(exist_ok=True)
    for src, exe in (("loadgen.c", LOADGEN), ("echo_epoll.c", ECHO_C)):
        source = HERE / src
        if exe.exists() and exe.stat().st_mtime >= source.stat().st_mtime:
            continue
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise SystemExit("gcc is needed to build benchmarks/bin/ (apt-get install gcc)")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(source)], check=True)


def check_peers() -> None:
    if shutil.which("socat") is None:
        SERVERS["socat"].unavailable = "socat not installed (apt-get install socat)"
        SERVERS["socat tls"].unavailable = SERVERS["socat"].unavailable
        SERVERS[SOCAT_EXEC].unavailable = SERVERS["socat"].unavailable
    if shutil.which("ncat") is None:
        SERVERS[NCAT_EXEC].unavailable = "ncat not installed (apt-get install ncat)"
        SERVERS["socat forward"].unavailable = SERVERS["socat"].unavailable
    if shutil.which("haproxy") is None:
        SERVERS["haproxy"].unavailable = "haproxy not installed (apt-get install haproxy)"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        SERVERS["uvloop"].unavailable = "uvloop not installed (pip install uvloop)"
        SERVERS["uvloop tls"].unavailable = SERVERS["uvloop"].unavailable
        SERVERS["uvloop proxy"].unavailable = SERVERS["uvloop"].unavailable


@contextlib.contextmanager
def interrupt_cleanly() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so every started server is stopped."""

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs of the target peers only")
    p.add_argument(
        "--only", metavar="SCENARIO", help=f"comma-separated: {', '.join(SCENARIO_KEYS)}"
    )
    p.add_argument("--duration", type=float, help="seconds per measured run (0.7; quick 0.25)")
    p.add_argument("--rounds", type=int, help="measured runs per server (3; at least 3)")
    p.add_argument("--bulk-mib", type=int, help="MiB per bulk transfer (512; quick 64)")
    p.add_argument("--servers", metavar="NAMES", help="comma-separated subset of the servers")
    p.add_argument("--output", type=Path, help="markdown file to write")
    p.add_argument("--list", action="store_true", help="list scenarios and servers, then exit")
    opts = p.parse_args(argv)
    opts.duration = opts.duration or (0.25 if opts.quick else 0.7)
    opts.rounds = max(3, opts.rounds or 3)
    opts.bulk_mib = opts.bulk_mib or (64 if opts.quick else 512)
    if not 0 < opts.duration <= 10:
        p.error("--duration must be in (0, 10] seconds")
    if not 1 <= opts.bulk_mib <= 4096:
        p.error("--bulk-mib must be 1..4096")
    if opts.only:
        opts.only = [s.strip() for s in opts.only.split(",") if s.strip()]
        unknown = [s for s in opts.only if s not in SCENARIO_KEYS]
        if unknown:
            p.error(
                f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIO_KEYS)}"
            )
    if opts.servers:
        opts.servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
        unknown = [s for s in opts.servers if s not in SERVERS]
        if unknown:
            p.error(f"unknown server {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    if opts.output is None:
        partial = opts.quick or opts.only or opts.servers
        opts.output = BIN / "RESULTS-partial.md" if partial else HERE / "RESULTS.md"
    return opts


#: RESULTS.md from this line on is written by hand (what each optimisation buys), and kept.
KEPT_MARKER = "<!-- kept by run.py: written by hand below this line -->"


def kept_section(path: Path) -> str:
    """The hand-written end of the results file `path` (from KEPT_MARKER on), or ''."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + old[at:]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.list:
        for sc in SCENARIOS:
            print(f"{sc.key:18} {sc.title}\n{'':18} {', '.join(sc.servers)}")
        print(f"{'startup':18} exec → first echoed byte; --help time")
        return 0
    build()
    check_peers()
    started = time.monotonic()
    load_start = loadavg()
    info = machine_info()
    print(f"sockserve benchmarks on {info['CPU']} ({info['cores']} cores), {info['Python']}")
    all_results: dict[str, list[Result]] = {}
    startup = None
    with interrupt_cleanly():
        for sc in SCENARIOS:
            if opts.only and sc.key not in opts.only:
                continue
            print(f"{sc.key}: {sc.title}", flush=True)
            all_results[sc.key] = run_scenario(sc, opts)
        if not opts.only or "startup" in opts.only:
            print("startup: exec → first echo", flush=True)
            startup = run_startup(opts)
    took = time.monotonic() - started
    text = report(opts, info, all_results, startup, took, (load_start, loadavg()))
    print()
    print(text)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(text + "\n" + kept_section(opts.output))
    print(f"\nwritten to {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
