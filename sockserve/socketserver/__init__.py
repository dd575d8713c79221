"""sockserve's socketserver: a framework for network servers, compatible with the stdlib's.

A server is the product of three independent choices:

- the address family: internet (AF_INET, or AF_INET6 by setting `address_family`) or Unix;
- the socket type: stream (connections) or datagram (packets);
- the concurrency: synchronous (one request after the other), a thread per request, or a
  child process per request.

The first two choose one of four concrete classes, in a five-class tree::

    BaseServer
      └── TCPServer ──────────── UnixStreamServer
            └── UDPServer ────── UnixDatagramServer

(UnixDatagramServer derives from UDPServer: Unix and IP servers differ only in the family.)
The third is a mixin, ThreadingMixIn or ForkingMixIn, placed *first* in the bases so that its
`process_request` replaces the server's: ``class S(ThreadingMixIn, TCPServer): pass``.

A request handler class, instantiated once per request, does the work: subclass
BaseRequestHandler and override `handle`, or StreamRequestHandler / DatagramRequestHandler to
get file objects (`rfile`, `wfile`) for either kind of socket.

Where sockserve goes further than the stdlib, it keeps the stdlib's behaviour by default:
`shutdown()` wakes the loop at once; `ThreadingMixIn.max_threads` bounds the threads, and
`ThreadingMixIn.reuse_threads` lets a thread take the next request instead of ending;
`ForkingMixIn` waits for a free child slot on pidfds instead of polling; `dualstack_ipv6`
lets a server on "::" accept IPv4. As in the stdlib, `handle_error` prints the traceback on
stderr (override it to report errors another way). The Unix and Forking classes exist where
the platform has AF_UNIX and fork(), all of them on Python 3.11 too.

Extension points. BaseServer's docstring lists, as the stdlib's does, the methods for the
caller, those that may be overridden or only extended, and the class and instance variables;
sockserve adds a few, public and documented there, for servers that drive the loop in other
ways: `request_shutdown()` (stop without waiting, from a signal handler too),
`wakeup_fileno()` and `shutdown_requested` (for waits of a server's own that must end when it
stops), `handle_ready()` (what the loop does when the socket is readable: one request, or a
batch in an override), `loop_handles_requests` (False: other threads take the requests), and
`ThreadingMixIn.start_tracked_thread(target)` (a thread of the server's own, counted in
`live_threads` and joined by `server_close`). Private stdlib names that code reads keep
working: `_handle_request_noblock()`, `ThreadingMixIn._threads`.
"""

from __future__ import annotations

from . import handlers, mixins, servers
from .handlers import *  # noqa: F403
from .mixins import *  # noqa: F403
from .servers import *  # noqa: F403

__all__ = [*servers.__all__, *mixins.__all__, *handlers.__all__]
