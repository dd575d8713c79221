"""The five server classes: BaseServer and the four synchronous socket servers."""

from __future__ import annotations

import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeAlias

if TYPE_CHECKING:
    from .handlers import BaseRequestHandler

__all__ = ["BaseServer", "TCPServer", "UDPServer"]
if hasattr(socket, "AF_UNIX"):
    __all__ += ["UnixStreamServer", "UnixDatagramServer"]

# The shapes typeshed's socketserver.pyi gives these, so that type checkers see no difference.
_Address: TypeAlias = tuple[Any, ...] | str | bytes | bytearray | memoryview
_RetAddress: TypeAlias = Any
_Socket: TypeAlias = socket.socket
_RequestType: TypeAlias = _Socket | tuple[bytes, _Socket]
_AfInetAddress: TypeAlias = tuple[str | bytes | bytearray, int]
_AfInet6Address: TypeAlias = tuple[str | bytes | bytearray, int, int, int]
_AfUnixAddress: TypeAlias = str | bytes | bytearray | memoryview

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
    - serve_forever(poll_interval=0.5)
    - shutdown(): stop the loop and wait for it (returns at once from the loop's own thread)
    - request_shutdown(): ask the loop to stop without waiting (any thread, signal handlers)
    - handle_request(): if you do not use serve_forever()
    - server_close()
    - fileno() -> int: for selectors
    - wakeup_fileno() -> int | None: readable once a shutdown is asked for, while the loop runs

    Methods that may be overridden:
    - server_bind(), server_activate(), get_request() -> (request, client_address),
      handle_timeout(), verify_request(request, client_address), server_close(),
      process_request(request, client_address), shutdown_request(request),
      close_request(request), service_actions(), handle_error(request, client_address)
    - handle_ready(): what serve_forever does when the socket is readable (one request); an
      override may handle several, calling the base once for each

    Methods that may be extended (call the base), not overridden:
    - __init__(server_address, RequestHandlerClass), request_shutdown()

    Methods for derived classes:
    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or instances:
    - timeout, address_family, socket_type, allow_reuse_address, allow_reuse_port
    - loop_handles_requests: False leaves the socket to other threads (serve_forever then
      only runs service_actions() until shutdown)

    Instance variables:
    - RequestHandlerClass, server_address, socket
    - shutdown_requested (read-only): True from a shutdown request until the loop has ended

    Beyond the stdlib, `shutdown()` wakes the loop at once instead of at its next poll.
    """

    timeout: float | None = None
    loop_handles_requests: bool = True
    server_address: _Address
    RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler]
    # What the socket servers provide, declared for type checkers only (no attributes here).
    socket: _Socket
    fileno: Callable[[], int]
    get_request: Callable[[], tuple[Any, Any]]

    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler],
    ) -> None:
        """Store the address and handler class; may be extended, not overridden."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False
        self.__serving_thread: int | None = None
        self.__waker: _Waker | None = None
        self.__waker_lock = threading.Lock()

    def server_activate(self) -> None:
        """Activate the server (called by the constructor); may be overridden."""

    # The request loop, step by step:
    # - serve_forever waits until the socket is readable and calls handle_ready();
    #   handle_request waits for one request and calls _handle_request_noblock() itself.
    # - _handle_request_noblock: get_request (one kind per socket type) -> verify_request ->
    #   process_request (where a mixin starts a thread or forks) -> finish_request, which
    #   instantiates RequestHandlerClass; the handler does the work in its constructor.
    # - An Exception from those steps goes to handle_error, then shutdown_request; anything
    #   else (SystemExit, KeyboardInterrupt) gets shutdown_request and propagates.

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until a shutdown is asked for.

        Looks at the shutdown flag every `poll_interval` seconds at the latest (sooner: a
        shutdown request wakes the loop), ignores `self.timeout`, and calls
        `service_actions()` once per iteration.
        """
        self.__is_shut_down.clear()
        self.__serving_thread = threading.get_ident()
        with self.__waker_lock:
            waker = self.__waker = _Waker()
        try:
            with _ServerSelector() as selector:
                if self.loop_handles_requests:
                    selector.register(self, selectors.EVENT_READ)
                selector.register(waker, selectors.EVENT_READ)
                while not self.__shutdown_request:
                    events = selector.select(poll_interval)
                    if self.__shutdown_request:
                        break
                    for key, _ in events:
                        if key.fileobj is self:
                            self.handle_ready()
                        else:
                            waker.drain()
                    self.service_actions()
        finally:
            with self.__waker_lock:
                waker.close()
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
        """Ask the loop to stop, without waiting; safe from any thread and signal handlers.

        May be extended (to record why, say), not overridden: `shutdown()` calls it.
        """
        self.__shutdown_request = True
        # No lock here, so that a signal handler can call this: a waker closed meanwhile
        # makes the send fail, and the loop is then gone anyway.
        waker = self.__waker
        if waker is not None:
            waker.wake()

    @property
    def shutdown_requested(self) -> bool:
        """True from a shutdown request until the loop it stops has ended.

        Long waits of a server's own (for a free thread or child slot) look at it, with
        `wakeup_fileno()`, to give up when the server stops.
        """
        return self.__shutdown_request

    def wakeup_fileno(self) -> int | None:
        """The descriptor that turns readable on a shutdown request, while the loop runs.

        None when no loop runs. Add it to the selector of a wait that must end when the
        server stops; only the loop reads it.
        """
        waker = self.__waker
        return None if waker is None else waker.fileno()

    def handle_ready(self) -> None:
        """Handle the request waiting on the socket; `serve_forever` calls it when readable.

        May be overridden, to handle several waiting requests per wake-up for instance: call
        the base once per request (it handles exactly one, without blocking).
        """
        self._handle_request_noblock()

    def service_actions(self) -> None:
        """Do periodic work; called once per `serve_forever` iteration.

        May be overridden; the mixins extend it (call the base in an override of a server
        class that uses one).
        """

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

    def verify_request(self, request: _RequestType, client_address: _RetAddress) -> bool:
        """Return True to handle the request, False to drop it; may be overridden."""
        return True

    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Handle the request, then shut it down; may be overridden (the mixins do)."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Clean up the server; may be overridden."""

    def finish_request(self: Self, request: _RequestType, client_address: _RetAddress) -> None:
        """Instantiate `RequestHandlerClass`, which handles the request."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: _RequestType) -> None:
        """Shut down and close one request; may be overridden."""
        self.close_request(request)

    def close_request(self, request: _RequestType) -> None:
        """Clean up one request; may be overridden."""

    def handle_error(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Print the exception being handled to stderr, then go on serving; may be overridden.

        As the stdlib's: a rule of 40 dashes, the line "Exception occurred during processing
        of request from <client_address>", the traceback and another rule, printed (not
        logged, so that a logging handler that sends to this very server cannot loop).
        """
        rule = "-" * 40
        print(rule, file=sys.stderr)
        print(
            "Exception occurred during processing of request from",
            client_address,
            file=sys.stderr,
        )
        import traceback  # as the stdlib's socketserver: loaded by the first error only

        traceback.print_exc()
        print(rule, file=sys.stderr)

    def __enter__(self) -> Self:
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
    server_address: _AfInetAddress | _AfInet6Address

    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler],
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

    def get_request(self) -> tuple[_Socket, _RetAddress]:
        """Accept a connection and return (connected socket, client address)."""
        return self.socket.accept()

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

    def get_request(  # type: ignore[override]  # a datagram, not a connection (as typeshed)
        self,
    ) -> tuple[tuple[bytes, _Socket], _RetAddress]:
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
        server_address: _AfUnixAddress  # type: ignore[assignment]  # a path, not (host, port)

    class UnixDatagramServer(UDPServer):
        """Datagram server on a Unix domain socket."""

        address_family: int = socket.AF_UNIX
        server_address: _AfUnixAddress  # type: ignore[assignment]  # a path, not (host, port)
