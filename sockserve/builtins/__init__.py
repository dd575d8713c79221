"""The builtin handlers: echo, upper, discard, stdout, stdio, chargen, daytime, time, reply,
broadcast and chat (`rooms`), script (`conversation`), replay, forward (`forward*`), and exec
(a program per connection: `program`, made by `program.stream_program_handler` and
`program.datagram_program_handler`, in sync, thread and fork mode only).

Each builtin's behaviour is a pure core in `cores` (bytes in, bytes or nothing out; the
one-answer streams as the small state machine `OneAnswer`), testable without sockets. Thin
adapters put it on the wire, each with the fast paths it uses:

- `stream_handler(name, options)`: a request handler class for TCP and unix stream servers,
  in sync, thread and fork mode (`stream`);
- `datagram_handler(name, options)`: the same for UDP and unix datagram servers (`datagram`,
  loaded by the first call);
- `protocol_factory(name, socktype, options)`: asyncio protocols for the event mode
  (`protocols`, loaded by the first call).

`output` writes what stdout and stdio receive, framed in lines by `framing` unless
`HandlerOptions.lines` is off (--raw); `stdin` sends stdin to stdio's clients. Every
class gets its `HandlerOptions` bound as a class attribute. The observer (`sockserve.events.
Events`) hears about each connection once when it ends (or each datagram) with its byte
counts. Every chunk (-vv) is reported by the watched socket the server hands the stream and
datagram adapters (`sockserve.watch`), and by the watched transport of the asyncio protocols.

Rules every adapter keeps:

- Bounded memory: no client can make the server allocate without limit (chunks of at most
  `chunk_size` bytes; stdout's line framing holds at most `framing.LINE_LIMIT` bytes of a
  partial line).
- A client that resets or goes away simply ends its connection; that is not an error.
- Fast paths change nothing a client or an observer can see.
- chargen (RFC 864): streams get the 72-character rotating lines without end, and what the
  client sends is read and dropped (a client that sends while it reads is never blocked); a
  datagram gets `min(len(request), 512)` bytes of the pattern from its start.
- daytime (RFC 867) and time (RFC 868): on streams, sent at connect, then the connection
  closes; a datagram gets one answer.
- reply: a stream waits for the client's first bytes (or its EOF), sends the reply (`reply`
  bytes, or the file `reply_file`), shuts its write side, then drops what the client still
  sends until it closes or `LINGER_SECONDS` pass (so an HTTP client is not cut off by a
  reset). A datagram is answered with the reply bytes (the file is read once). With neither
  set the reply is empty.
- forward relays to `upstream` and back (`forward`, `forward_asyncio`): no pure core, only
  the relaying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from ..loading import ROOM_BUILTINS
from .cores import (
    BUILTINS,
    CHARGEN_PERIOD,
    LINGER_SECONDS,
    chargen_datagram,
    chargen_pattern,
    check_name,
    daytime_line,
    greeting,
    respond_datagram,
    time_bytes,
    transform_chunk,
)
from .output import OutputClosed
from .shared import HandlerOptions, Shared
from .stream import stream_handler

if TYPE_CHECKING:  # asyncio is loaded in event mode only, the datagram adapters for datagrams
    import asyncio

    from ..socketserver import BaseRequestHandler

__all__ = [
    "BUILTINS",
    "CHARGEN_PERIOD",
    "LINGER_SECONDS",
    "HandlerOptions",
    "OutputClosed",
    "stream_handler",
    "datagram_handler",
    "protocol_factory",
    "transform_chunk",
    "respond_datagram",
    "greeting",
    "chargen_pattern",
    "chargen_datagram",
    "daytime_line",
    "time_bytes",
]


def datagram_handler(name: str, options: HandlerOptions) -> type[BaseRequestHandler]:
    """A new request handler class for datagram servers running the builtin `name` (see
    `datagram.datagram_handler`); a run that serves streams never loads the datagram adapters.
    """
    from .datagram import datagram_handler as new_handler

    return new_handler(name, options)


def protocol_factory(
    name: str, socktype: Literal["stream", "dgram"], options: HandlerOptions
) -> Callable[[], asyncio.BaseProtocol]:
    """A factory of asyncio protocols running the builtin `name`, for the event mode.

    Use it with `loop.create_server` / `create_unix_server` (stream) or
    `create_datagram_endpoint` (dgram). Raises ValueError for an unknown name or socktype,
    OSError when a datagram `reply_file` cannot be read.
    """
    check_name(name)
    if name == "exec":
        raise ValueError("exec runs a program per connection: not as an asyncio protocol")
    if socktype not in ("stream", "dgram"):
        raise ValueError(f"socktype must be 'stream' or 'dgram', not {socktype!r}")
    if socktype == "dgram" and (name in ROOM_BUILTINS or name == "script"):
        raise ValueError(f"{name} serves stream connections only")
    if name == "forward":
        from .forward_asyncio import forward_protocol_factory  # forward only

        return forward_protocol_factory(socktype, options)
    from .protocols import make_protocol_factory  # event mode only: loaded here

    shared = Shared(name, options)
    return make_protocol_factory(shared, socktype, shared.input)
