"""Soak run for issue 5: many connections per concurrency mode, resources measured from /proc.

    python benchmarks/soak.py                  # 10,000 connections in each mode
    python benchmarks/soak.py --count 2000 --modes thread,fork --clients 8

For each mode a real `sockserve tcp 127.0.0.1:0 -H echo -q` is started and, after a warm-up
and once its readings rest, `--count` connections are made by `--clients` client threads
(connect, send, half-close, read the echo to EOF, verify it). The table gives open
descriptors, threads and child processes before and after (after waiting for them to
settle), zombies, RSS before/after and its slope per 1,000 connections, the rate, and the
time SIGTERM takes to stop the server.

A second table (`--emfile N`) measures recovery from descriptor exhaustion: the server's
RLIMIT_NOFILE is lowered, clients pile up until accept() fails with EMFILE, then they all
close, and we time the first successful echo after that.

The server, its /proc readings and the echo clients are in benchmarks/soaktools.py. Linux
only (/proc). Only loopback is used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import signal
import socket
import sys
import threading
import time
from typing import Any

from soaktools import MODES, Address, Served, connect, echo, poll_until, settle

WARM_UP = 300


def churn(
    addr: Address, count: int, clients: int, server: Served, rss: list[tuple[int, int]]
) -> float:
    """`count` verified echo connections by `clients` threads; returns the elapsed time.

    Every 1,000 connections the server's RSS is sampled into `rss` as (done, KiB).
    """
    done = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        nonlocal done
        i = 0
        while not errors:
            with lock:
                if done >= count:
                    return
                done += 1
                n = done
            i += 1
            payload = b"%d-%d;" % (k, i) * 16
            try:
                got = echo(addr, payload)
            except BaseException as exc:  # reported below, after the other threads stop
                errors.append(exc)
                return
            if got != payload:
                errors.append(AssertionError(f"echo mismatch at connection {n}"))
                return
            if n % 1000 == 0:
                with contextlib.suppress(OSError):
                    rss.append((n, server.status_kib("VmRSS")))

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.monotonic() - started


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per 1,000 connections."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] / 1000 for p in points]
    ys = [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def soak_mode(mode: str, count: int, clients: int) -> dict[str, Any]:
    server = Served("-c", mode, "-H", "echo", "-q", "--print-address")
    try:
        addr = server.address()
        warm: list[tuple[int, int]] = []
        churn(addr, WARM_UP, clients, server, warm)
        settle(server, addr[1])
        base = {
            "fds": server.fds(),
            "threads": server.threads(),
            "children": len(server.children()),
            "rss": server.status_kib("VmRSS"),
        }
        rss: list[tuple[int, int]] = [(0, base["rss"])]
        took = churn(addr, count, clients, server, rss)
        settled_in = time.monotonic()
        poll_until(
            lambda: (
                server.fds() == base["fds"]
                and server.threads() == base["threads"]
                and not server.children()
            ),
            timeout=30,
        )
        settled_in = time.monotonic() - settled_in
        kids = server.children()
        after = {
            "fds": server.fds(),
            "threads": server.threads(),
            "children": len(kids),
            "zombies": sum(1 for _, state in kids if state == "Z"),
            "rss": server.status_kib("VmRSS"),
            "hwm": server.status_kib("VmHWM"),
        }
        stopping = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=30)
        stop_ms = (time.monotonic() - stopping) * 1000
        return {
            "mode": mode,
            "count": count,
            "rate": count / took,
            "base": base,
            "after": after,
            "settle_s": settled_in,
            "slope": slope(rss),
            "exit": code,
            "stop_ms": stop_ms,
        }
    finally:
        server.kill()


def emfile_trial() -> dict[str, float]:
    """Exhaust the server's descriptors, free them, time the first echo that succeeds."""
    server = Served("-H", "echo")
    held: list[socket.socket] = []
    try:
        addr = server.echoing()
        limit = server.fds() + 24
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (limit, limit * 4))
        held = [connect(addr) for _ in range(60)]
        server.await_line(r"^warning: cannot accept: Too many open files")
        ticks = server.cpu_ticks()
        time.sleep(1.0)
        cpu_ms = (server.cpu_ticks() - ticks) * 1000 / os.sysconf("SC_CLK_TCK")
        freed = time.monotonic()
        for sock in held:
            sock.close()
        held = []
        assert echo(addr, b"back") == b"back"
        recovery = time.monotonic() - freed
        warnings = len(server.lines_matching("cannot accept"))
        server.stop()
        return {"recovery_ms": recovery * 1000, "cpu_ms_per_s": cpu_ms, "warnings": warnings}
    finally:
        for sock in held:
            sock.close()
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="connections per mode")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--emfile", type=int, default=5, help="EMFILE recovery trials")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("soak.py measures servers through /proc: Linux only")

    print(f"# soak: {args.count} connections per mode, {args.clients} client threads")
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, {platform.release()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(
        "| mode | conns/s | fds before→after | threads before→after | children after "
        "(zombies) | RSS KiB before→after | RSS slope KiB/1k conns | peak RSS KiB "
        "| settled in | SIGTERM → exit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for mode in args.modes.split(","):
        r = soak_mode(mode, args.count, args.clients)
        b, a = r["base"], r["after"]
        ok = (
            (a["fds"], a["threads"], a["children"]) == (b["fds"], b["threads"], 0)
            and r["exit"] == 0
            and abs(r["slope"]) < 100
        )
        failed |= not ok
        print(
            f"| {mode} | {r['rate']:.0f} | {b['fds']}→{a['fds']} | "
            f"{b['threads']}→{a['threads']} | {a['children']} ({a['zombies']}) | "
            f"{b['rss']}→{a['rss']} | {r['slope']:+.1f} | {a['hwm']} | {r['settle_s']:.2f} s "
            f"| {r['stop_ms']:.0f} ms, exit {r['exit']} |" + ("" if ok else " **FAIL**")
        )
    if args.emfile:
        print("\n| EMFILE trial | recovery after fds freed | server CPU while paused | warnings |")
        print("|---|---|---|---|")
        for i in range(args.emfile):
            t = emfile_trial()
            print(
                f"| {i + 1} | {t['recovery_ms']:.0f} ms | {t['cpu_ms_per_s']:.0f} ms/s "
                f"| {t['warnings']:.0f} |"
            )
            failed |= t["warnings"] != 1 or t["recovery_ms"] > 1500
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
