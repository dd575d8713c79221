"""The `script` builtin as a request handler for stream servers, in sync, thread and fork mode.

Each connection runs its own `conversation.Conversation` and carries out what it says:
sends, log lines (`info` events), sleeps, a close or a reset. The socket is read only while
the script waits for a line, so what a client sends meanwhile waits in the kernel's buffers.
A wait for a line that outlasts the script's timeout goes to `Conversation.timed_out`; the
server's own `--timeout` (idle) still applies as for any handler. The store of `store` and
`if stored` is the handler class's: shared by the connections of one process.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import deque
from typing import ClassVar

from ..console import format_client
from .conversation import Close, Conversation, Log, ScriptAction, Send, Sleep
from .stream import StreamBuiltin


def abort(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset (SO_LINGER 0); a unix socket simply closes."""
    try:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class ScriptStream(StreamBuiltin):
    """script: one conversation of the script per connection."""

    store: ClassVar[dict[str, str]]  # made by `stream_handler`

    def serve(self, sock: socket.socket) -> None:
        script = self.options.script
        assert script is not None
        conv = Conversation(script, self.store)
        buffers = self.shared.buffers
        buf = buffers.get()
        view = memoryview(buf)
        idle = sock.gettimeout()  # --timeout, or None
        wait = 0
        deadline: float | None = None
        try:
            self.carry_out(sock, conv, conv.start())
            while not conv.closed:
                if conv.wait_number != wait:
                    wait = conv.wait_number
                    seconds = conv.read_timeout
                    deadline = None if seconds is None else time.monotonic() + seconds
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.carry_out(sock, conv, conv.timed_out())
                    continue
                mine = left is not None and (idle is None or left <= idle)
                sock.settimeout(left if mine else idle)
                try:
                    n = sock.recv_into(buf)
                except TimeoutError:
                    if not mine:
                        raise  # the server's --timeout
                    continue  # the script's: `left` is now 0
                finally:
                    sock.settimeout(idle)
                self.saw(view[:n])
                self.carry_out(sock, conv, conv.receive(bytes(view[:n])))
        finally:
            view.release()
            buffers.put(buf)

    def carry_out(
        self, sock: socket.socket, conv: Conversation, actions: list[ScriptAction]
    ) -> None:
        queue = deque(actions)
        while queue:
            action = queue.popleft()
            if isinstance(action, Send):
                self.send(sock, action.data)
            elif isinstance(action, Log):
                self.log(action.text)
            elif isinstance(action, Sleep):
                pause(sock, action.seconds)
                queue.extend(conv.woke())
            elif isinstance(action, Close) and action.reset:
                abort(sock)

    def log(self, text: str) -> None:
        observer = self.shared.observer
        if observer is not None:
            observer.info(f"script {format_client(self.client_address)}: {text}")


def pause(sock: socket.socket, seconds: float) -> None:
    """Wait `seconds`, or less if the connection is shut down both ways (a stopping server
    aborts it)."""
    poller = select.poll()
    poller.register(sock, 0)  # only POLLHUP / POLLERR / POLLNVAL report
    poller.poll(seconds * 1000)
