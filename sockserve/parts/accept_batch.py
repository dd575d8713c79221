"""AcceptBatchPart: several waiting connections accepted per wake-up of the loop."""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from .requests import RequestsPart


def input_waiting(fd: Any) -> Callable[[int], list[Any]]:
    """A poll for input on `fd` (a descriptor or an object with fileno()): call it with a
    timeout in ms (0: do not wait); a non-empty list means input waits. Unlike a read or an
    accept that fails with EAGAIN, an empty answer costs no exception."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller.poll


class AcceptBatchPart(RequestsPart):
    """Accept up to `accept_batch` waiting connections per wake-up, asking the listener
    (poll) before each further accept; the listener is non-blocking.

    For thread and fork modes, where each accept only hands the connection over to a thread
    or a child. Extends server_activate, get_request (counts accepts) and handle_ready.
    """

    accept_batch = 16
    _accepted = 0

    def server_activate(self) -> None:
        """Listen, on a non-blocking listener."""
        super().server_activate()
        self.socket.setblocking(False)
        self._listener_ready = input_waiting(self.socket)

    def get_request(self) -> tuple[Any, Any]:
        """Accept, and count the accept."""
        result = super().get_request()
        self._accepted += 1
        return result

    def handle_ready(self) -> None:
        """Accept until no connection waits, the batch is done or the server stops."""
        ready = self._listener_ready
        for i in range(self.accept_batch):
            if i and not ready(0):  # none waits: no accept that fails with an exception
                return
            accepted = self._accepted
            super().handle_ready()
            if self._accepted == accepted or self.stop_reason is not None:
                return
