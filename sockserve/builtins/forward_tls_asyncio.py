"""The TLS upstream of forward in event mode (`--forward-tls`), with a real half-close.

asyncio's own TLS transport cannot close its write side alone (`write_eof` raises), so a
client's EOF could not reach the upstream. Here the TLS runs in a protocol of ours over the
plain connection (`TlsLayer`: an ssl.SSLObject over memory BIOs, all on the loop's thread),
and the plaintext protocol (`forward_asyncio.UpstreamSide`) gets a transport
(`TlsTransport`) whose `write_eof` sends close_notify and then the connection's FIN, while
what the upstream sends afterwards still arrives.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from ..addresses import Address

#: What one decrypting read takes at most.
READ_SIZE = 65536


class TlsLayer(asyncio.Protocol):
    """TLS (client side) over a plain connection for one plaintext protocol (`app`), which
    hears of it once the handshake is done (`ready`)."""

    def __init__(
        self,
        secure: Any,
        app_factory: Callable[[], Any],
        on_alert: Callable[[str], None] | None = None,
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = secure.context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=secure.server_name
        )
        self.app = app_factory()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.raw: Any = None
        self.transport = TlsTransport(self)
        self.ended = False  # the upstream's end of data was read
        self.write_closed = False  # our close_notify went out
        self.failed: BaseException | None = None
        self.app_made = False  # the app has the transport (after the handshake)
        self.on_alert = on_alert  # told why an alert ended the connection
        self.heard = False  # some plaintext came from the upstream

    # -- the plain connection's protocol ----------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.raw = transport
        self.step()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        self.step()

    def eof_received(self) -> bool:
        self.incoming.write_eof()
        self.step()
        return True  # our side may still send

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(
                exc or ConnectionResetError("the upstream closed the connection")
            )
            return
        if not self.app_made:
            return  # the handshake failed or was given up: the app never was
        if exc is not None and not self.heard and self.failed is None and self.on_alert:
            # the alert may be lost to the reset (our write met the closed socket first)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.on_alert(
                f"{why} before any data, right after the TLS handshake (does the upstream "
                "want a client certificate?)"
            )
        failed = self.failed
        self.app.connection_lost(exc or (failed if isinstance(failed, Exception) else None))

    def pause_writing(self) -> None:
        if self.app_made:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app_made:
            self.app.resume_writing()

    # -- TLS --------------------------------------------------------------------------------

    def step(self) -> None:
        """Go on with the handshake, then pass on what can be decrypted."""
        if self.ready.cancelled():
            return  # given up (the connect's time limit): being aborted
        if not self.ready.done():
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                return
            except (OSError, ValueError) as exc:
                self.flush()
                self.ready.set_exception(exc)
                self.raw.abort()
                return
            self.flush()
            self.ready.set_result(None)
            self.app_made = True
            self.app.connection_made(self.transport)
        self.decrypt()

    def decrypt(self) -> None:
        """Hand every whole record in to the app (none stays for SSL_shutdown to read)."""
        while not self.ended:
            try:
                chunk = self.sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a bare FIN
                chunk = b""
            except ssl.SSLError as exc:  # an alert (a refused client certificate...)
                self.failed = exc
                if self.on_alert is not None:
                    self.on_alert((exc.reason or str(exc)).lower().replace("_", " "))
                self.flush()
                self.raw.abort()
                return
            if not chunk:
                self.ended = True
                self.app.eof_received()
                break
            self.heard = True
            self.app.data_received(chunk)
        self.flush()

    def flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.raw.write(data)

    def close_write(self) -> None:
        """close_notify (not waiting for the upstream's), once."""
        if self.write_closed:
            return
        self.write_closed = True
        try:
            self.sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass
        except (OSError, ValueError):
            pass  # broken already: the FIN alone
        self.flush()


class TlsTransport(asyncio.Transport):
    """The plaintext side of a `TlsLayer`, as the upstream's protocol sees its transport."""

    def __init__(self, layer: TlsLayer) -> None:
        super().__init__()
        self.layer = layer

    def write(self, data: Any) -> None:
        layer = self.layer
        if layer.write_closed or layer.raw.is_closing():
            return
        layer.sslobj.write(data)
        layer.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        layer = self.layer
        if layer.raw.is_closing():
            return
        layer.close_write()
        layer.raw.write_eof()

    def close(self) -> None:
        layer = self.layer
        if not layer.raw.is_closing():
            layer.close_write()
            layer.raw.close()

    def abort(self) -> None:
        self.layer.raw.abort()

    def is_closing(self) -> bool:
        return bool(self.layer.raw.is_closing())

    def pause_reading(self) -> None:
        self.layer.raw.pause_reading()

    def resume_reading(self) -> None:
        self.layer.raw.resume_reading()

    def is_reading(self) -> bool:
        return bool(self.layer.raw.is_reading())

    def get_write_buffer_size(self) -> int:
        return int(self.layer.raw.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.layer.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.layer.sslobj
        return self.layer.raw.get_extra_info(name, default)


async def open_tls_upstream(
    upstream: Address,
    secure: Any,
    app_factory: Callable[[], Any],
    on_alert: Callable[[str], None] | None = None,
) -> tuple[TlsTransport, Any]:
    """Connect to `upstream` and shake hands (`secure`: a `sockserve.upstream_tls.UpstreamTls`);
    the plaintext transport and the app's protocol. Raises OSError, ssl.SSLError (a
    certificate that does not verify...); a cancelled open closes the connection. `on_alert`
    is told the reason when an alert from the upstream ends the connection later (TLS 1.3
    refuses a client certificate after the handshake)."""
    loop = asyncio.get_running_loop()
    layers: list[TlsLayer] = []

    def make() -> TlsLayer:
        layers.append(TlsLayer(secure, app_factory, on_alert))
        return layers[-1]

    if upstream.family == "unix":
        await loop.create_unix_connection(make, upstream.sockaddr())
    else:
        host, port = upstream.sockaddr()
        await loop.create_connection(make, host, port)
    layer = layers[0]
    try:
        await layer.ready
    except BaseException:
        if layer.raw is not None:
            layer.raw.abort()
        raise
    return layer.transport, layer.app
