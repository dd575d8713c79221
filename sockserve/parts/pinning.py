"""PinningPart: the loop's thread, and so every thread it starts, kept on one CPU."""

from __future__ import annotations

import os
import sys

from .requests import RequestsPart


def stay_on_this_cpu() -> set[int] | None:
    """Keep the calling thread, and the threads it starts, on the CPU it runs on (Linux).

    Threads that run Python take turns under the GIL, and handing the GIL to a thread on
    another CPU costs far more than a switch on one CPU, the more so the more threads wait
    (see benchmarks/RESULTS.md). Returns the CPUs the thread had, for `restore_cpus`; None
    where nothing changed (one CPU only, no sched_setaffinity, or the system refuses).
    """
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed) < 2:
            return None
        with open("/proc/thread-self/stat", "rb") as f:  # field 39: the CPU it last ran on
            cpu = int(f.read().rpartition(b")")[2].split()[36])
        if cpu not in allowed:
            return None
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    return allowed


def restore_cpus(cpus: set[int] | None) -> None:
    """Give the calling thread back the CPUs `stay_on_this_cpu` returned."""
    if cpus is not None:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


def gil_enabled() -> bool:
    """False on a free-threaded Python running without its GIL: threads then run in
    parallel, and nothing is won by keeping them on one CPU."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


class PinningPart(RequestsPart):
    """Thread mode: serve_forever keeps its thread, and so every thread it starts, on the CPU
    it runs on (`--pin`; by default for the builtins, whose threads run Python in turn);
    the thread gets its CPUs back when the loop ends.

    Extends serve_forever; `pin_loop_thread` lets the banner pin first and name the CPU.
    """

    _cpus_before_pin: set[int] | None = None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Pin this thread (unless the banner did), run the loop, then unpin."""
        self.pin_loop_thread()
        try:
            super().serve_forever(poll_interval)
        finally:
            restore_cpus(self._cpus_before_pin)  # the calling thread as it was
            self._cpus_before_pin = self.pinned_cpu = None

    def pin_loop_thread(self) -> int | None:
        """Keep the calling thread (the one that will run serve_forever) on its CPU, once;
        return that CPU, or None if nothing could be pinned."""
        if self._cpus_before_pin is None:
            self._cpus_before_pin = stay_on_this_cpu()
            if self._cpus_before_pin is not None:
                self.pinned_cpu = next(iter(os.sched_getaffinity(0)))
        return self.pinned_cpu
