"""FaultPart: the faults of a connection as a whole (--fail-first, --delay-accept), and what
the stages of its watch need from the server (`sockserve.faults`)."""

from __future__ import annotations

import socket
import time
from typing import Any

from ..faults import FaultDresser, attach_socket, close_now, connection_of, reset_now
from ..socketserver import TCPServer
from ..watch import WatchedDatagramSocket, WatchedSocket


class FaultPart(TCPServer):
    """Break connections on purpose, as `fault_dresser`'s plan says.

    Extends get_request (the faults learn the watched socket, TCP_NODELAY is set),
    verify_request (--fail-first resets or closes the first connections chosen, on the
    loop, in accept order; a datagram the faults dropped is not served), finish_request
    (--delay-accept waits in the request's own thread or child), service_actions (a
    datagram --reorder held back too long is sent) and server_close (the datagrams a
    --delay still holds are sent first, at their times: `FaultDresser.close`). Comes before
    `WatchPart`, which makes the watches, and before `ReportingPart`, so a failed connection
    is reported connected first.
    """

    fault_dresser: FaultDresser | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept; tell the connection's faults their socket."""
        request, client = super().get_request()
        if isinstance(request, WatchedSocket):
            attach_socket(request.watch, request)
        return request, client

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Fail the first --fail-first connections chosen; refuse a dropped datagram."""
        if isinstance(request, tuple) and isinstance(request[1], WatchedDatagramSocket):
            conn = connection_of(request[1].watch)
            if conn is not None and conn.dropped:
                return False
            return super().verify_request(request, client_address)
        if not super().verify_request(request, client_address):
            return False
        dresser = self.fault_dresser
        if dresser is None or not dresser.plan.fail_first or not isinstance(request, WatchedSocket):
            return True
        conn = connection_of(request.watch)
        if conn is None or not dresser.take_failure():
            return True
        mode = dresser.plan.fail_mode
        conn.fire(f"fail-{mode}", f"connection {dresser.failed} of {dresser.plan.fail_first}")
        if mode == "reset":
            reset_now(request)
        else:
            close_now(request)
        return False

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Wait --delay-accept, then serve."""
        dresser = self.fault_dresser
        if dresser is not None and dresser.plan.delay_accept and isinstance(request, WatchedSocket):
            conn = connection_of(request.watch)
            if conn is not None:
                conn.fire("delay-accept", f"{dresser.plan.delay_accept * 1000:.0f}ms")
                time.sleep(dresser.plan.delay_accept)
        super().finish_request(request, client_address)

    def service_actions(self) -> None:
        """Run the other parts' actions; send a datagram held back by --reorder a while."""
        super().service_actions()
        dresser = self.fault_dresser
        if dresser is not None and self.socket_type == socket.SOCK_DGRAM:
            dresser.held.flush(older_than=0.1)

    def server_close(self) -> None:
        """Send the datagrams a delay still holds back (at their times), then close."""
        if self.fault_dresser is not None:
            self.fault_dresser.close()
        super().server_close()
