"""Start and stop a thread-mode server through the Python API, many times: how long each takes.

    python benchmarks/api_startstop.py [--count 500] [--warmup 50]

Each cycle is `sockserve.serve("tcp", **options)` (bound on 127.0.0.1 port 0, its loop
thread started) then `stop()` (the loop ended, the listener and every thread closed), timed
with perf_counter; one client connection per cycle too with `--connect`. Prints the median,
the 90th percentile and the range, in milliseconds, for the builtin echo and for a handler of
one's own. Issue 19's target: under 5 ms median (see RESULTS.md, "Python API").
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

import sockserve


class Echo(sockserve.StreamRequestHandler):
    """A handler of one's own: echo lines."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def cycle(options: dict, connect: bool) -> float:
    """One start and stop; seconds."""
    started = time.perf_counter()
    server = sockserve.serve("tcp", **options)
    if connect:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"x\n")
            sock.recv(10)
    server.stop()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="measured cycles per handler")
    parser.add_argument("--warmup", type=int, default=50, help="cycles before measuring")
    parser.add_argument("--connect", action="store_true", help="one client exchange per cycle")
    args = parser.parse_args()
    for name, options in (
        ("builtin echo", {"concurrency": "thread"}),
        ("own handler", {"concurrency": "thread", "handler": Echo}),
    ):
        for _ in range(args.warmup):
            cycle(options, args.connect)
        times = sorted(cycle(options, args.connect) * 1000 for _ in range(args.count))
        p90 = times[int(len(times) * 0.9) - 1]
        print(
            f"{name:13} median {statistics.median(times):.2f} ms, p90 {p90:.2f} ms, "
            f"range {times[0]:.2f}-{times[-1]:.2f} ms ({args.count} cycles)"
        )


if __name__ == "__main__":
    main()
