"""FaultPlan: the fault options of one run (--delay, --throttle, --drop...), checked.

The plan only says what to break; `sockserve.faults` does the breaking, with stages on each
connection's watch, and `sockserve.parts.faults` at accept time. No sockets here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import UsageError

FailMode = Literal["reset", "close"]
#: --faults-to: which side of a relay (forward) the faults break.
FaultsTo = Literal["client", "upstream", "both"]

#: The options only a stream can take, and those only a datagram socket can.
STREAM_ONLY = (
    "delay_accept",
    "throttle",
    "chunk",
    "close_after",
    "reset_after",
    "stall",
    "stall_after",
    "fail_first",
)
DATAGRAM_ONLY = ("drop", "duplicate", "reorder")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g}ms"


@dataclass(frozen=True)
class FaultPlan:
    """What to break, on every connection (or datagram) that `fault_rate` chooses.

    Sizes are bytes, durations seconds, rates bytes per second, shares percentages.
    """

    delay: float = 0.0
    jitter: float = 0.0
    delay_accept: float = 0.0
    throttle: int | None = None
    chunk: int | None = None
    chunk_gap: float = 0.0
    close_after: int | None = None
    reset_after: int | None = None
    stall: bool = False
    stall_after: int | None = None
    fail_first: int = 0
    fail_mode: FailMode = "reset"
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    fault_rate: float = 100.0
    seed: int | None = None

    def given(self) -> list[str]:
        """The names of the fault options in effect (not --fail-mode, --fault-rate, --seed)."""
        names = []
        for name in (*STREAM_ONLY, *DATAGRAM_ONLY, "delay"):
            value = getattr(self, name)
            if name.endswith("_after") and value is not None:
                names.append(name)  # --stall-after 0 is a fault: --stall
            elif not name.endswith("_after") and value:
                names.append(name)
        return names

    def describe(self) -> str:
        """The active faults in a few words, for the listening line."""
        parts = []
        if self.delay:
            jitter = f"±{_ms(self.jitter)}" if self.jitter else ""
            parts.append(f"delay {_ms(self.delay)}{jitter}")
        if self.delay_accept:
            parts.append(f"delay-accept {_ms(self.delay_accept)}")
        if self.throttle:
            parts.append(f"throttle {self.throttle} B/s")
        if self.chunk:
            gap = f" every {_ms(self.chunk_gap)}" if self.chunk_gap else ""
            parts.append(f"chunk {self.chunk} B{gap}")
        for name in ("close_after", "reset_after", "stall_after"):
            if getattr(self, name) is not None:
                parts.append(f"{name.replace('_', '-')} {getattr(self, name)} B")
        if self.stall:
            parts.append("stall")
        if self.fail_first:
            parts.append(f"fail-first {self.fail_first} ({self.fail_mode})")
        for name in DATAGRAM_ONLY:
            if getattr(self, name):
                parts.append(f"{name} {getattr(self, name):g}%")
        if self.fault_rate < 100:
            parts.append(f"on {self.fault_rate:g}% of requests")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return "; ".join(parts)

    def check(self, socktype: str, family: str, concurrency: str) -> None:
        """Refuse what cannot apply to the transport or mode (UsageError, with the reason)."""
        given = self.given()
        if socktype == "dgram":
            wrong = [name for name in given if name in STREAM_ONLY]
            if wrong:
                raise UsageError(
                    f"{_option(wrong[0])} only applies to streams (tcp, unix): a datagram "
                    "socket has no connection",
                    hint="for datagrams use --drop, --duplicate, --reorder or --delay",
                )
            if self.reorder and concurrency == "fork":
                raise UsageError(
                    "--reorder holds a datagram back until the next one: with --concurrency "
                    "fork each child answers only one",
                    hint="use --concurrency sync, thread or event",
                )
        else:
            wrong = [name for name in given if name in DATAGRAM_ONLY]
            if wrong:
                raise UsageError(
                    f"{_option(wrong[0])} only applies to datagrams (udp, unix-dgram): a "
                    "stream loses, doubles and reorders nothing",
                    hint="for streams use --close-after, --reset-after or --stall",
                )
        if family == "unix" and (self.reset_after is not None or self.fail_first):
            resets = self.reset_after is not None or self.fail_mode == "reset"
            if resets:
                option = "--reset-after" if self.reset_after is not None else "--fail-mode reset"
                raise UsageError(
                    f"{option} sends a TCP reset: a unix socket has none",
                    hint="use --close-after, or --fail-mode close",
                )
        if self.reset_after is not None and self.close_after is not None:
            raise UsageError(
                "--close-after and --reset-after cannot be combined", hint="give only one of them"
            )
        if self.stall and self.stall_after is not None:
            raise UsageError(
                "--stall and --stall-after cannot be combined (--stall is --stall-after 0)",
                hint="give only one of them",
            )


def fault_plan(
    *,
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
) -> FaultPlan | None:
    """The plan of the fault options given, or None when none is (a run without faults).

    `delay` is seconds or (seconds, jitter); `chunk` bytes or (bytes, gap seconds). Raises
    UsageError for a value out of range, or --fail-mode, --fault-rate or --seed alone.
    """
    seconds, jitter = delay if isinstance(delay, tuple) else (delay or 0.0, 0.0)
    size, gap = chunk if isinstance(chunk, tuple) else (chunk, 0.0)
    plan = FaultPlan(
        delay=seconds,
        jitter=jitter,
        delay_accept=delay_accept or 0.0,
        throttle=throttle,
        chunk=size,
        chunk_gap=gap,
        close_after=close_after,
        reset_after=reset_after,
        stall=stall,
        stall_after=stall_after,
        fail_first=fail_first or 0,
        fail_mode=fail_mode or "reset",
        drop=drop or 0.0,
        duplicate=duplicate or 0.0,
        reorder=reorder or 0.0,
        fault_rate=100.0 if fault_rate is None else fault_rate,
        seed=seed,
    )
    for name in ("delay", "jitter", "delay_accept", "chunk_gap"):
        if getattr(plan, name) < 0:
            raise UsageError(f"{_option(name)} cannot be negative", hint="e.g. 50ms")
    for name in ("drop", "duplicate", "reorder", "fault_rate"):
        if not 0 <= getattr(plan, name) <= 100:
            raise UsageError(f"{_option(name)} must be from 0 to 100 (percent)", hint="e.g. 5")
    for name in ("throttle", "chunk"):
        if getattr(plan, name) is not None and getattr(plan, name) < 1:
            raise UsageError(f"{_option(name)} must be at least 1", hint="e.g. 100K")
    for name, least in (("close_after", 1), ("reset_after", 1), ("stall_after", 0)):
        value = getattr(plan, name)
        if value is not None and value < least:
            raise UsageError(f"{_option(name)} must be at least {least} byte", hint="e.g. 1K")
    if plan.fail_first < 0:
        raise UsageError("--fail-first cannot be negative", hint="e.g. --fail-first 2")
    if not plan.given():
        alone = [
            option
            for option, value in (
                ("--fail-mode", fail_mode),
                ("--fault-rate", fault_rate),
                ("--seed", seed),
            )
            if value is not None
        ]
        if alone:
            raise UsageError(
                f"{alone[0]} tells how faults apply, but no fault is given",
                hint="add a fault such as --delay 50ms or --drop 10, or drop " + alone[0],
            )
        return None
    if fail_mode is not None and not plan.fail_first:
        raise UsageError("--fail-mode applies to --fail-first", hint="add --fail-first N")
    return plan
