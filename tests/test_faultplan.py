"""FaultPlan: the fault options, checked against each other, the transport and the mode."""

from __future__ import annotations

import pytest

from sockserve.config import build_config
from sockserve.errors import UsageError
from sockserve.faultplan import FaultPlan, fault_plan


def test_no_fault_option_is_no_plan() -> None:
    assert fault_plan() is None
    assert build_config(proto="tcp", address=":0").faults is None


def test_pairs_and_plain_values() -> None:
    plan = fault_plan(delay=(0.05, 0.01), chunk=(3, 0.005), fault_rate=50, seed=4)
    assert plan == FaultPlan(
        delay=0.05, jitter=0.01, chunk=3, chunk_gap=0.005, fault_rate=50, seed=4
    )
    assert fault_plan(delay=0.2, chunk=7) == FaultPlan(delay=0.2, chunk=7)


def test_describe_lists_the_active_faults() -> None:
    plan = fault_plan(delay=(0.05, 0.01), throttle=100000, fail_first=2, fault_rate=25, seed=1)
    assert plan is not None
    assert plan.describe() == (
        "delay 50ms±10ms; throttle 100000 B/s; fail-first 2 (reset); on 25% of requests; seed 1"
    )
    assert fault_plan(drop=10, stall_after=0) is not None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"delay": -1.0}, "--delay cannot be negative"),
        ({"delay": (0.1, -0.01)}, "--jitter cannot be negative"),
        ({"drop": 101.0}, "--drop must be from 0 to 100"),
        ({"fault_rate": -1.0, "delay": 1.0}, "--fault-rate must be from 0 to 100"),
        ({"throttle": 0}, "--throttle must be at least 1"),
        ({"close_after": 0}, "--close-after must be at least 1 byte"),
        ({"fail_first": -1}, "--fail-first cannot be negative"),
        ({"seed": 1}, "--seed tells how faults apply, but no fault is given"),
        ({"fault_rate": 5.0}, "--fault-rate tells how faults apply"),
        ({"fail_mode": "close", "delay": 1.0}, "--fail-mode applies to --fail-first"),
    ],
)
def test_values_out_of_range(kwargs: dict, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        fault_plan(**kwargs)


@pytest.mark.parametrize(
    ("proto", "kwargs", "words"),
    [
        ("tcp", {"drop": 5.0}, "--drop only applies to datagrams"),
        ("tcp", {"reorder": 5.0}, "--reorder only applies to datagrams"),
        ("udp", {"throttle": 10}, "--throttle only applies to streams"),
        ("udp", {"stall": True}, "--stall only applies to streams"),
        ("udp", {"fail_first": 1}, "--fail-first only applies to streams"),
        ("unix", {"reset_after": 10}, "--reset-after sends a TCP reset"),
        ("unix", {"fail_first": 1}, "--fail-mode reset sends a TCP reset"),
        ("tcp", {"close_after": 1, "reset_after": 1}, "cannot be combined"),
        ("tcp", {"stall": True, "stall_after": 3}, "cannot be combined"),
    ],
)
def test_what_cannot_apply_is_refused(proto: str, kwargs: dict, words: str) -> None:
    address = "/tmp/faultplan.sock" if proto == "unix" else ":0"
    with pytest.raises(UsageError, match=words):
        build_config(proto=proto, address=address, **kwargs)


def test_what_applies_is_kept() -> None:
    unix = build_config(proto="unix", address="/tmp/f.sock", fail_first=1, fail_mode="close")
    assert unix.faults == FaultPlan(fail_first=1, fail_mode="close")
    udp = build_config(proto="udp", address=":0", drop=5.0, delay=0.01, concurrency="fork")
    assert udp.faults == FaultPlan(drop=5.0, delay=0.01)
    with pytest.raises(UsageError, match="each child answers only one"):
        build_config(proto="udp", address=":0", reorder=5.0, concurrency="fork")
