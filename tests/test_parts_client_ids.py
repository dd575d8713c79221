"""ClientIdsPart: reporting code gets a `Client` with an id, handlers the plain address."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest
from servertools import EventsRecorder

import sockserve as ss
from sockserve.events import Client, ClientIds
from sockserve.parts.client_ids import ClientIdsPart
from sockserve.parts.reporting import ReportingPart

pytestmark = pytest.mark.leakcheck


class Seen(ss.BaseRequestHandler):
    """Keeps the client_address it was given."""

    seen: ClassVar[list[Any]] = []

    def handle(self) -> None:
        self.seen.append(self.client_address)
        raise ValueError("reported with the id")


class TakesClient(Seen):
    takes_client = True


def serve_one(handler: type[ss.BaseRequestHandler], ids: ClientIds) -> tuple[Any, EventsRecorder]:
    events = EventsRecorder()
    handler.seen = []
    bases = (ReportingPart, ClientIdsPart, ss.TCPServer)
    cls = type("Server", bases, {"monitor": events, "client_ids": ids})
    with cls(("127.0.0.1", 0), handler) as server:
        with socket.create_connection(server.server_address, timeout=5) as client:
            server.handle_request()
            here = client.getsockname()
    return here, events


def test_a_handler_sees_the_plain_address_and_the_events_its_id() -> None:
    ids = ClientIds()
    ids.restart(7, 3)
    here, events = serve_one(Seen, ids)
    assert Seen.seen == [here] and type(Seen.seen[0]) is tuple
    [(connected,)] = events.named("connected")
    [(failed, _)] = events.named("handler_error")
    assert failed is connected  # one object from accept to the last event
    assert type(connected) is Client and (connected.address, connected.id) == (here, 7)
    assert ids.next() == 10


def test_a_handler_that_takes_the_client_gets_it() -> None:
    _, events = serve_one(TakesClient, ClientIds())
    [(connected,)] = events.named("connected")
    assert TakesClient.seen == [connected]  # the builtins keep it and unwrap the address
    assert events.named("handler_error")[0][0] is connected


def test_ids_of_a_worker_slot_go_on_after_the_last_one() -> None:
    cells = [0, 0]
    first = ClientIds()
    first.restart(2, 2, cells, 1)
    assert [first.next(), first.next()] == [2, 4]
    assert cells == [0, 4]
    again = ClientIds()  # a worker started again in slot 1 (see workers.serve_workers)
    again.restart(cells[1] + 2, 2, cells, 1)
    assert again.next() == 6
