"""Faults on a relay (`forward`), per side: --faults-to client|upstream|both.

A relay has two connections for each client: the client's, which the server accepted and
watches, and the upstream's, which the relay opened. Each side's faults shape what the proxy
sends toward that side, and act on that side's connection:

- --delay, --throttle and --chunk: what the proxy sends to that side leaves late, slowly or
  in pieces (with `both`, each direction: as on a server);
- --close-after and --reset-after (bytes through that side's connection, both ways
  together), --stall and --stall-after (bytes sent to it): that side's connection is
  closed, reset or no longer written to. The relay then treats the cut as that side's own
  doing: a close passes on as an orderly end, a reset resets the other side;
- --drop, --duplicate and --reorder: the datagrams sent toward that side (the client's
  replies, or what goes to the upstream); nothing is lost on the way in;
- --fail-first and --delay-accept act on the connection the proxy accepts (the client's),
  so `upstream` alone cannot take them (the configuration refuses it).

`RelayFaultDresser` is the configuration's dresser when the handler is forward: it dresses
the client's watch (the server's) as its side says, and the relay asks it, through that
watch, to dress each upstream watch it makes (`dress_upstream`). --fault-rate chooses once
per connection (a datagram client's, per datagram): both sides of a chosen connection break.
Each `fault` event names its side.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .fault_stages import (
    Connection,
    Cutoff,
    FaultStage,
    Held,
)
from .faultplan import FaultPlan, FaultsTo
from .faults import FaultDresser, connection_of, fault_stages
from .send_schedule import SendSchedule
from .watch import Sink, Stage, Watch

__all__ = [
    "FaultsTo",
    "RelayFaultDresser",
    "after_paced",
    "relay_dresser",
    "relay_stages",
    "side_connection",
]


class ChooseDatagram(FaultStage):
    """The first "out" stage of a relay's datagram side: --fault-rate chooses each datagram
    sent toward it."""

    def pass_on(self, chunk: memoryview, sink: Sink) -> int:
        conn = self.conn
        plan = conn.plan
        conn.told.clear()
        conn.active = plan.fault_rate >= 100 or conn.rng.random() * 100 < plan.fault_rate
        return super().pass_on(chunk, sink)


def relay_stages(conn: Connection, direction: str, datagram: bool) -> list[Stage]:
    """The stages of one side of a relay, for the direction `direction` of its watch ("in":
    what the proxy receives from that side, "out": what it sends to it), in chain order."""
    plan = conn.plan
    stages: list[Stage] = []
    if direction == "in":
        if not datagram and (plan.close_after is not None or plan.reset_after is not None):
            stages.append(Cutoff(conn, "in"))  # counts that connection's bytes both ways
        return stages
    if datagram:
        stages.append(ChooseDatagram(conn, "out"))
    return stages + fault_stages(conn, "out", datagram)  # what it sends: as a server's


class _UpstreamOwner:
    """What the upstream side's stages need of their owner: its own --reorder hold, and the
    relay's `SendSchedule` (each side's datagrams a flow of their own in it)."""

    def __init__(self, loop: bool, schedule: SendSchedule | None) -> None:
        self.loop = loop
        self.held = Held()
        self.schedule = schedule


class RelayFaultDresser(FaultDresser):
    """The faults of a relay: `sides` is --faults-to. Called with each client watch (as any
    dresser); `dress_upstream` dresses the upstream watch of a client it chose."""

    def __init__(
        self,
        plan: FaultPlan,
        datagram: bool,
        loop: bool,
        sides: FaultsTo,
        schedule: SendSchedule | None = None,
    ) -> None:
        super().__init__(plan, datagram, loop, schedule)
        self.sides = sides
        self.upstream_owner = _UpstreamOwner(loop, schedule)

    def dress(self, watch: Watch, directions: tuple[Any, ...] = ("in", "out")) -> Connection | None:
        """Choose the client's `watch` or not; if chosen, dress it with the client side's
        stages (none with `upstream` alone: a stage that passes all marks it chosen)."""
        conn = self.choose(watch)
        if conn is None:
            return None
        conn.side = "client"
        stages: list[Stage] = []
        if self.sides != "upstream":
            for direction in directions:
                for stage in relay_stages(conn, direction, self.datagram):
                    watch.append(direction, stage)
                    stages.append(stage)
        if not stages:  # passes all: marks the client chosen (--fail-first finds it too)
            watch.append("in", FaultStage(conn, "in"))
        return conn

    def dress_upstream(self, client: Connection, watch: Watch) -> Connection | None:
        """Dress the upstream `watch` of the client whose faults are `client`; None (left
        as it is) when the upstream side takes no faults."""
        if self.sides == "client":
            return None
        conn = Connection(
            self.plan, random.Random(client.rng.getrandbits(64)), watch, self.upstream_owner
        )
        conn.side = "upstream"
        dressed = False
        for direction in ("in", "out"):
            for stage in relay_stages(conn, direction, self.datagram):
                watch.append(direction, stage)
                dressed = True
        return conn if dressed else None


def relay_dresser(
    plan: FaultPlan,
    datagram: bool,
    loop: bool,
    sides: FaultsTo,
    schedule: SendSchedule | None = None,
) -> FaultDresser:
    """The dresser of a relay's faults (`compose.watch_dressers`)."""
    return RelayFaultDresser(plan, datagram, loop, sides, schedule)


def side_connection(watch: Watch | None) -> Connection | None:
    """The faults' Connection of a relay's client `watch`, when a relay dresser chose it."""
    if watch is None:
        return None
    conn = connection_of(watch)
    if conn is None or not isinstance(conn.owner, RelayFaultDresser):
        return None
    return conn


def upstream_watch(client_watch: Watch | None) -> tuple[Watch, Connection] | None:
    """A watch for the upstream side of the connection `client_watch` watches, dressed with
    the upstream's faults; None when that side takes none (not chosen, `client` only).

    It reports no data (the client's watch does) and tells its faults with the client's id.
    """
    client = side_connection(client_watch)
    if client is None:
        return None
    assert client_watch is not None
    watch = Watch(client_watch.events, client_watch.client)
    conn = client.owner.dress_upstream(client, watch)
    if conn is None:
        return None
    return watch, conn


def paced_until(watch: Watch) -> float:
    """When the last piece the "out" chain of `watch` holds back is due (0: none held)."""
    due = 0.0
    stage: Stage | None = watch.outbound.next
    while stage is not None:
        if isinstance(stage, FaultStage) and stage.pacer.queue:
            due = max(due, stage.pacer.last)
        stage = stage.next
    return due


def after_paced(watch: Watch | None, then: Callable[[], None]) -> None:
    """On an event loop: run `then` once what `watch`'s faults hold back has been sent (an
    EOF or a close must not overtake delayed data); now if nothing is held."""
    due = paced_until(watch) if watch is not None else 0.0
    if not due:
        then()
        return
    import asyncio  # on an event loop only: loaded already

    wait = max(0.0, due - time.monotonic()) + 0.001
    asyncio.get_running_loop().call_later(wait, after_paced, watch, then)
