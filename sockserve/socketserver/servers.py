"""The five server classes: BaseServer and the four synchronous socket servers."""

from __future__ import annotations

import selectors
import socket
import sys
import threading
import time

# The int values behind socket.family and socket.type (which convert them to enums).
_raw_family = socket.SocketType.family.__get__
_raw_type = socket.SocketType.type.__get__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["BaseServer", "TCPServer", "UDPServer"]
if hasattr(socket, "AF_UNIX"):
    __all__ += ["UnixStreamServer", "UnixDatagramServer"]

# poll() has no limit on the number of file descriptors; select() is the fallback.
if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:  # pragma: no cover - platforms without poll()
    _ServerSelector = selectors.SelectSelector


class _Waker:
    """A self-pipe that makes a selector return at once when `wake` is called."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def fileno(self) -> int:
        return self.reader.fileno()

    def wake(self) -> None:
        try:
            self.writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending, or closed: either way the loop will look at its flags

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class BaseServer:
    """Base class for all servers: the request loop, with the socket work left to subclasses.

    Methods for the caller:
    - __init__(server_address, RequestHandlerClass)
    - serve_forever(poll_interval=0.5), shutdown(), handle_request(), server_close(), fileno()

    Methods that may be overridden:
    - server_bind(), server_activate(), get_request() -> (request, client_address),
      handle_timeout(), verify_request(request, client_address),
      process_request(request, client_address), shutdown_request(request),
      close_request(request), service_actions(), handle_error(request, client_address)

    Methods for derived classes:
    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or instances:
    - timeout, address_family, socket_type, allow_reuse_address, allow_reuse_port

    Instance variables:
    - RequestHandlerClass, socket

    Unlike the stdlib, `shutdown()` wakes the loop instead of waiting for the next poll, and
    returns at once when called from inside the loop (where the stdlib would deadlock).
    """

    timeout: float | None = None
    #: sockserve's: False for a server whose requests are taken by other threads (threads
    #: waiting in accept themselves): `serve_forever` then leaves the socket alone and only
    #: runs `service_actions()` every `poll_interval` until `shutdown()`.
    loop_handles_requests = True

    def __init__(self, server_address: Any, RequestHandlerClass: Callable[..., Any]) -> None:
        """Store the address and handler class; subclasses create the socket."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False
        self.__serving_thread: int | None = None
        self.__waker: _Waker | None = None
        self.__waker_lock = threading.Lock()

    def server_activate(self) -> None:
        """Called by the constructor to activate the server; may be overridden."""

    # The request loop:
    # serve_forever / handle_request -> _handle_request_noblock
    #   -> get_request -> verify_request -> process_request -> finish_request
    #   an Exception from the steps goes to handle_error, then shutdown_request.

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until `shutdown()` is called.

        Checks for shutdown every `poll_interval` seconds at the latest (sooner: shutdown wakes
        the loop), ignores `self.timeout`, and calls `service_actions()` once per iteration.
        """
        self.__is_shut_down.clear()
        self.__serving_thread = threading.get_ident()
        with self.__waker_lock:
            self.__waker = _Waker()
        try:
            with _ServerSelector() as selector:
                if self.loop_handles_requests:
                    selector.register(self, selectors.EVENT_READ)
                selector.register(self.__waker, selectors.EVENT_READ)
                while not self.__shutdown_request:
                    events = selector.select(poll_interval)
                    if self.__shutdown_request:
                        break
                    for key, _ in events:
                        if key.fileobj is self:
                            self.handle_ready()
                        else:
                            self.__waker.drain()
                    self.service_actions()
        finally:
            with self.__waker_lock:
                self.__waker.close()
                self.__waker = None
            self.__serving_thread = None
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def shutdown(self) -> None:
        """Stop the `serve_forever` loop and wait until it has stopped.

        Called from the thread that runs the loop (from a handler in a synchronous server), it
        only asks the loop to stop and returns, since waiting there would never end.
        """
        self.request_shutdown()
        if self.__serving_thread == threading.get_ident():
            return
        self.__is_shut_down.wait()

    def request_shutdown(self) -> None:
        """Ask the loop to stop without waiting: safe from any thread and signal handlers."""
        self.__shutdown_request = True
        self._wake()

    def handle_ready(self) -> None:
        """Handle what is waiting on the socket; `serve_forever` calls it when it is readable.

        Handles one request (`_handle_request_noblock`); may be overridden to handle several
        waiting requests per wake-up (call the base once per request).
        """
        self._handle_request_noblock()

    def _wake(self) -> None:
        """Make a running `serve_forever` look at its flags now.

        Takes no lock, so it is safe from a signal handler: a waker closed concurrently just
        makes the send fail, and the loop is then gone anyway.
        """
        waker = self.__waker
        if waker is not None:
            waker.wake()

    def wakeup_fileno(self) -> int | None:
        """The fd that turns readable when `shutdown()` is called, while the loop runs."""
        waker = self.__waker
        return None if waker is None else waker.fileno()

    @property
    def shutdown_requested(self) -> bool:
        """True between a `shutdown()` call and the end of the loop it stops."""
        return self.__shutdown_request

    def service_actions(self) -> None:
        """Called once per `serve_forever` iteration; may be overridden (extend, in mixins)."""

    def handle_request(self) -> None:
        """Handle one request, waiting at most `self.timeout` seconds for it.

        When the wait ends without a request, `handle_timeout()` is called instead.
        """
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout

        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:
                if selector.select(timeout):
                    return self._handle_request_noblock()
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout < 0:
                        return self.handle_timeout()

    def _handle_request_noblock(self) -> None:
        """Handle one request that is known to be waiting, without blocking in accept."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if self.verify_request(request, client_address):
            try:
                self.process_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
                self.shutdown_request(request)
            except BaseException:
                self.shutdown_request(request)
                raise
        else:
            self.shutdown_request(request)

    def handle_timeout(self) -> None:
        """Called when `handle_request` times out; may be overridden (does nothing here)."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return True to handle the request, False to drop it; may be overridden."""
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle the request, then shut it down; the mixins override this."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Clean up the server; may be overridden."""

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Instantiate `RequestHandlerClass`, which handles the request."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Close the individual request."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Clean up an individual request; may be overridden."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Print the exception being handled to stderr, then go on serving; may be overridden.

        As the stdlib's: a rule of 40 dashes, the line "Exception occurred during processing
        of request from <client_address>", the traceback and another rule, printed (not
        logged, so that a logging handler that sends to this very server cannot loop).
        """
        import traceback  # as the stdlib: loaded on the first failure (it loads re & co.)

        rule = "-" * 40
        print(rule, file=sys.stderr)
        print(
            "Exception occurred during processing of request from",
            client_address,
            file=sys.stderr,
        )
        traceback.print_exc()
        print(rule, file=sys.stderr)

    def __enter__(self) -> BaseServer:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()


class TCPServer(BaseServer):
    """Base class for stream socket servers (TCP by default).

    Class variables: address_family, socket_type, request_queue_size (listen backlog),
    allow_reuse_address, allow_reuse_port, and `dualstack_ipv6` (sockserve's own: an AF_INET6
    server bound to "::" then accepts IPv4 clients too).
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size: int = 5
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    dualstack_ipv6: bool = False

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[..., Any],
        bind_and_activate: bool = True,
    ) -> None:
        """Create the socket, then bind and activate it unless told not to.

        If binding or activating fails, the socket is closed before the error propagates.
        """
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Bind the socket, then read back the real address (port 0 becomes the real port)."""
        inet = self.address_family in (socket.AF_INET, getattr(socket, "AF_INET6", None))
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT") and inet:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if self.address_family == getattr(socket, "AF_INET6", None) and hasattr(
            socket, "IPV6_V6ONLY"
        ):
            if self.dualstack_ipv6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen on the socket with a backlog of `request_queue_size`."""
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Close the listening socket."""
        self.socket.close()

    def fileno(self) -> int:
        """Return the listening socket's file descriptor, for use with selectors."""
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection and return (connected socket, client address).

        A plain `socket.socket` listener is accepted as `socket.accept` does it, without
        turning its family and type into enums for the new socket (about 1 µs per connection);
        any other kind of socket (an SSLSocket...) through its own `accept`.
        """
        sock = self.socket
        if type(sock) is not socket.socket:
            return sock.accept()
        fd, addr = sock._accept()
        conn = socket.socket(_raw_family(sock), _raw_type(sock), sock.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and sock.gettimeout():
            conn.setblocking(True)  # as socket.accept: not the listener's timeout flags
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        """Shut the connection down explicitly for writing, then close it."""
        try:
            # Shutting down first makes the peer see EOF even if a forked child still holds
            # a copy of the descriptor.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may already be gone
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Close the connected socket."""
        request.close()


class UDPServer(TCPServer):
    """Datagram server: each request is a (data, socket) pair, read up to max_packet_size."""

    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    socket_type: int = socket.SOCK_DGRAM
    max_packet_size: int = 8192

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram and return ((data, socket), client address)."""
        data, client_addr = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        """Do nothing: datagram sockets do not listen."""

    def shutdown_request(self, request: Any) -> None:
        """Do nothing but close: there is no connection to shut down."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Do nothing: the socket is the server's own."""


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """Stream server on a Unix domain socket (a filesystem path, or abstract on Linux)."""

        address_family: int = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        """Datagram server on a Unix domain socket."""

        address_family: int = socket.AF_UNIX
