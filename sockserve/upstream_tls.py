"""The TLS of a ``--forward-tls`` upstream: the client context of a run, the handshake of each
upstream connection, and what it tells (imported only by a run that forwards over TLS).

The certificate is verified by default, as a browser or curl does: against the system's CAs,
or those of ``--forward-ca``, for the name ``--forward-sni`` gives or else the upstream's
host (a name, or an IP address its certificate must list). That name is also sent as SNI
(an IP address is not: TLS sends names only). ``--forward-cert``/``--forward-key`` present
a client certificate to an upstream that asks for one (mTLS).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any

from .addresses import Address
from .errors import UsageError
from .tls_duplex import BioTls, tls_reason

__all__ = ["HandshakeFailed", "UpstreamTls", "prepare_upstream_tls"]

#: OpenSSL's reasons for an answer that is no TLS (a plain-text upstream).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER", "HTTP_REQUEST"})


class HandshakeFailed(ConnectionError):
    """The upstream's TLS handshake failed; the text is the reason, in words."""


@dataclass(frozen=True)
class UpstreamTls:
    """The client side of the upstream's TLS: one context for the run, the name checked."""

    context: ssl.SSLContext
    server_name: str | None

    def secure(self, sock: socket.socket, timeout: float | None) -> BioTls:
        """Shake hands over `sock` (connected) within `timeout`; the TLS connection.
        Raises HandshakeFailed with the reason; closes `sock` then."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            sslobj = self.context.wrap_bio(incoming, outgoing, server_hostname=self.server_name)
            tls = BioTls(sock, sslobj, incoming, outgoing, sock.gettimeout())
            tls.handshake(timeout)
        except (OSError, ValueError) as exc:
            sock.close()
            raise HandshakeFailed(failure_reason(exc, timeout)) from exc
        return tls

    @staticmethod
    def details(tls: Any) -> dict[str, Any]:
        """What the `upstream` event tells of a TLS upstream (a `BioTls`, or asyncio's
        ssl.SSLObject): version and cipher."""
        sslobj = getattr(tls, "sslobj", tls)
        cipher = sslobj.cipher()
        info: dict[str, Any] = {"version": sslobj.version(), "cipher": cipher and cipher[0]}
        alpn = sslobj.selected_alpn_protocol()
        if alpn:
            info["alpn"] = alpn
        return info

    @staticmethod
    def describe_failure(exc: BaseException, timeout: float | None) -> str:
        """Why the handshake failed, in a few words (`failure_reason`)."""
        return failure_reason(exc, timeout)


def failure_reason(exc: BaseException, timeout: float | None) -> str:
    """Why the handshake with the upstream failed, in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {timeout:g}s (is the upstream a TLS server?)"
    if isinstance(exc, ssl.SSLEOFError) or isinstance(exc, ConnectionError):
        return "the upstream closed the connection during the TLS handshake"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        why = "TLS handshake failed: " + reason.lower().replace("_", " ")
        if reason in _NOT_TLS:
            why += " (the upstream does not speak TLS?)"
        elif reason.startswith(("TLSV1_ALERT", "SSLV3_ALERT", "TLSV13_ALERT")):
            why += " (the upstream refused the handshake: does it want a client certificate?)"
        return why
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def prepare_upstream_tls(
    upstream: Address,
    ca: str | None,
    sni: str | None,
    cert: str | None,
    key: str | None,
    no_verify: bool = False,
) -> UpstreamTls:
    """The run's client context for the upstream. Raises UsageError for a CA file, a
    certificate or a key that cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, names checked
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        context.load_default_certs()
    else:  # that CA only, as haproxy's ca-file and socat's cafile
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot use --forward-ca {ca}: {tls_reason(exc)}",
                hint="give a PEM file of CA certificates (e.g. the tls_ca file of sockserve --tls)",
            ) from None
    if no_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:

        def no_password() -> bytes:
            raise UsageError(
                f"the key of --forward-cert {cert} is encrypted", hint="give an unencrypted key"
            )

        try:
            context.load_cert_chain(cert, key, password=no_password)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot use --forward-cert {cert}"
                + (f" with --forward-key {key}" if key else "")
                + f": {tls_reason(exc)}",
                hint="give a PEM certificate and its unencrypted private key",
            ) from None
    name = sni if sni is not None else upstream.host
    return UpstreamTls(context, name or None)
