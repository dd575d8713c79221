"""TLS for stream servers: the one SSLContext of a run, its throwaway certificates, and what
a handshake tells (imported only when a run serves TLS: it loads ssl, trustme, cryptography).

`prepare_tls(config)` builds the context once, before the server binds: with `--tls` alone
a throwaway certificate authority (trustme) signs a server certificate for the names the
server answers to; `--cert`/`--key` load one's own. Private keys reach OpenSSL through an
anonymous in-memory file (memfd) and never touch the disk, unless `--tls-client-cert-out`
asks for a client key. Every file written is created with mode 600.

The parts (`sockserve.parts.tls`) and event mode (`sockserve.tls_asyncio`) run each
handshake in the request's own thread, child or task, and tell `Events.tls` what it gave:
`handshake_info` on success, `failure_info` when it failed.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .config import ServeConfig
from .errors import UsageError
from .tls_config import DEFAULT_HANDSHAKE_TIMEOUT
from .tls_duplex import tls_reason
from .watch import Watch

__all__ = [
    "TlsSetup",
    "TlsSocket",
    "WatchedTlsSocket",
    "failure_info",
    "handshake_info",
    "prepare_tls",
]

#: How long the throwaway certificates are valid: a test server's lifetime, not a year's.
VALIDITY = datetime.timedelta(days=7)
#: Clock skew the throwaway certificates allow for (notBefore is this far in the past).
SKEW = datetime.timedelta(minutes=5)
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: OpenSSL's reasons for bytes that are no TLS record (plain text to a TLS port).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER"})


@dataclass
class TlsSetup:
    """The run's SSLContext and the files made for it; `close()` removes the temporary ones."""

    context: ssl.SSLContext
    handshake_timeout: float
    ca_path: str | None = None  # the throwaway CA's certificate, for clients to trust
    client_cert_dir: str | None = None
    temp_dir: str | None = None
    owner: int = field(default_factory=os.getpid)

    def details(self) -> dict[str, str]:
        """What the banner and the `listening` event name: the files a client needs."""
        shown = {}
        if self.ca_path is not None:
            shown["tls_ca"] = self.ca_path
        if self.client_cert_dir is not None:
            shown["tls_client_cert"] = os.path.join(self.client_cert_dir, "client.pem")
        return shown

    def close(self) -> None:
        """Remove the temporary CA file (in the process that made it only)."""
        if self.temp_dir is not None and os.getpid() == self.owner:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


class TlsSocket(ssl.SSLSocket):
    """A served TLS connection (the context's `sslsocket_class`).

    `shutdown(SHUT_WR)` of an established connection sends TLS's close_notify first, without
    waiting for the peer's, so a client reading until the end sees a clean end of the data
    (OpenSSL 3 takes a bare FIN for a truncation). Other shutdowns (an abort, from another
    thread) touch only the socket, never the TLS state.
    """

    #: The handshake is done (`parts.tls`): the TLS session is up.
    established = False
    #: For `sockserve.watch.is_watched`: fast paths that bypass the socket object must not run.
    encrypted = True
    #: The watch of a `WatchedTlsSocket` (`parts.watching.WatchPart` sets it).
    watch: Watch | None = None

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_WR and self.established:
            self.established = False
            timeout = self.gettimeout()
            try:
                self.settimeout(0)
                self.unwrap()  # sends close_notify; waiting for the peer's raises WantRead
            except (OSError, ValueError):
                pass
            finally:
                if self.fileno() != -1:
                    self.settimeout(timeout)
        socket.socket.shutdown(self, how)


class WatchedTlsSocket(TlsSocket):
    """A TLS connection whose plaintext goes through `watch` (`sockserve.watch`): what the
    handler reads and writes, not the records on the wire."""

    watch: Watch

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)
        if data:
            self.watch.incoming(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if n:
            with memoryview(buffer) as view, view.cast("B") as octets:
                self.watch.incoming(octets[:n])
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        send = super().send
        return self.watch.outgoing(data, lambda chunk: send(chunk, flags))

    def sendall(self, data: Any, flags: int = 0) -> None:
        send = super().send  # SSLSocket.sendall would call our send: each chunk seen twice

        def sink(chunk: memoryview) -> int:
            sent = 0
            while sent < len(chunk):
                sent += send(chunk[sent:], flags)
            return sent

        self.watch.outgoing(data, sink)


# -- what a handshake tells ---------------------------------------------------------------


def _remember_sni(sslobj: Any, name: str | None, context: ssl.SSLContext) -> None:
    """The context's SNI callback: keep the name the client asked for, for `handshake_info`."""
    try:
        sslobj.sni_name = name
    except AttributeError:  # pragma: no cover - an object that takes no attributes
        pass


def handshake_info(sslobj: Any) -> dict[str, Any]:
    """The `tls` event of a completed handshake (`sslobj`: an SSLSocket or SSLObject)."""
    cipher = sslobj.cipher()
    info: dict[str, Any] = {
        "version": sslobj.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": sslobj.selected_alpn_protocol(),
        "sni": getattr(sslobj, "sni_name", None),
    }
    peer = sslobj.getpeercert()
    if peer:
        info["client_subject"] = ",".join(
            f"{key}={value}" for rdn in peer.get("subject", ()) for key, value in rdn
        )
    return info


def failure_info(exc: BaseException, timeout: float) -> dict[str, Any]:
    """The `tls` event of a failed handshake: {"error": why, in a few words}."""
    if isinstance(exc, TimeoutError | ConnectionAbortedError) and not isinstance(exc, ssl.SSLError):
        why = f"no handshake within {timeout:g}s"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        why = f"client certificate rejected: {exc.verify_message or exc.reason}"
    elif isinstance(exc, ssl.SSLEOFError) or isinstance(exc, ConnectionError):
        why = "the client closed the connection during the handshake"
    elif isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        why = reason.lower().replace("_", " ")
        if reason in _NOT_TLS:
            why += " (not TLS: plain text to a TLS port?)"
        elif reason.startswith(("TLSV1_ALERT", "SSLV3_ALERT")):
            why += " (the client refused the handshake: does it trust the CA?)"
        elif reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            why += " (this server requires a client certificate)"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return {"error": why}


# -- the context ----------------------------------------------------------------------------


def prepare_tls(config: ServeConfig) -> TlsSetup:
    """Build the run's SSLContext and write the files it shares (the CA certificate, a client
    certificate when asked). Raises UsageError for a certificate or key that cannot serve."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    settings = config.tls
    assert settings is not None  # a run that serves TLS
    context.minimum_version = TLS_VERSIONS[settings.min_version or "1.2"]
    context.sslsocket_class = TlsSocket
    context.sni_callback = _remember_sni
    if settings.alpn:
        context.set_alpn_protocols(list(settings.alpn))
    timeout = settings.handshake_timeout
    setup = TlsSetup(context, DEFAULT_HANDSHAKE_TIMEOUT if timeout is None else timeout)
    try:
        ca = None
        if settings.cert is None or settings.client_cert_out is not None:
            import trustme  # only a run with throwaway certificates loads it

            ca = trustme.CA(organization_name="sockserve", organization_unit_name="throwaway CA")
        if settings.cert is None:
            assert ca is not None
            now = datetime.datetime.now(datetime.UTC)
            leaf = ca.issue_cert(
                *server_names(config),
                common_name="localhost",
                organization_name="sockserve",
                not_before=now - SKEW,
                not_after=now + VALIDITY,
            )
            with _memory_file(leaf.private_key_and_cert_chain_pem.bytes()) as path:
                context.load_cert_chain(path)
            setup.ca_path = _write_ca(setup, ca.cert_pem.bytes(), settings.ca_out)
        else:
            _load_own(context, settings.cert, settings.key)
        if settings.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            try:
                context.load_verify_locations(cafile=settings.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(
                    f"cannot use --client-ca {settings.client_ca}: {tls_reason(exc)}",
                    hint="give a PEM file of CA certificates",
                ) from None
        if settings.client_cert_out is not None:
            assert ca is not None
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
            now = datetime.datetime.now(datetime.UTC)
            client = ca.issue_cert(
                "sockserve-client",
                common_name="sockserve client",
                organization_name="sockserve",
                not_before=now - SKEW,
                not_after=now + VALIDITY,
            )
            _write_client(settings.client_cert_out, client)
            setup.client_cert_dir = settings.client_cert_out
    except BaseException:
        setup.close()
        raise
    return setup


def server_names(config: ServeConfig) -> list[str]:
    """The names the throwaway server certificate is for: the bound host, localhost, the
    loopback addresses and each --tls-name (a server on all interfaces: the host's name)."""
    names: list[str] = []
    address = config.address
    if address.family != "unix" and address.host:
        names.append(socket.gethostname() if address.all_interfaces else address.host)
    names += ["localhost", "127.0.0.1", "::1", *(config.tls.names if config.tls else ())]
    return list(dict.fromkeys(names))


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds `data` in memory only (a memfd on Linux); where
    there is none, a file in a private temporary directory removed as soon as it is read."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sockserve-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    folder = tempfile.mkdtemp(prefix="sockserve-tls-")  # pragma: no cover - not Linux
    try:  # pragma: no cover
        path = os.path.join(folder, "key.pem")
        _write_private(path, data)
        yield path
    finally:  # pragma: no cover
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(path: str, data: bytes) -> None:
    """Write `data` to `path`, created (or truncated) with mode 600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_ca(setup: TlsSetup, pem: bytes, path: str | None) -> str:
    """Write the CA certificate to `path` (--tls-ca-out), or into a new temporary directory
    that `setup.close()` removes."""
    if path is None:
        setup.temp_dir = tempfile.mkdtemp(prefix="sockserve-tls-")
        path = os.path.join(setup.temp_dir, "ca.pem")
    try:
        _write_private(path, pem)
    except OSError as exc:
        raise UsageError(
            f"cannot write --tls-ca-out {path}: {exc.strerror}", hint="choose a path you may write"
        ) from None
    return os.path.abspath(path)


def _write_client(folder: str, leaf: Any) -> None:
    """Write client.pem (certificate chain) and client.key into `folder` (made if missing)."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _write_private(os.path.join(folder, "client.pem"), leaf.cert_chain_pems[0].bytes())
        _write_private(os.path.join(folder, "client.key"), leaf.private_key_pem.bytes())
    except OSError as exc:
        raise UsageError(
            f"cannot write --tls-client-cert-out {folder}: {exc.strerror}",
            hint="choose a directory you may write",
        ) from None


def _load_own(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """Load --cert and --key; refuse what cannot serve, in one line each."""
    try:
        with open(cert, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read --cert {cert}: {exc.strerror}", hint="check the path"
        ) from None
    from cryptography import x509  # a dependency of trustme

    try:
        first = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise UsageError(
            f"--cert {cert} is not a PEM certificate",
            hint="give a file with -----BEGIN CERTIFICATE----- blocks",
        ) from None
    now = datetime.datetime.now(datetime.UTC)
    if first.not_valid_after_utc < now:
        raise UsageError(
            f"--cert {cert} expired on {first.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            hint="renew it, or use --tls alone for a throwaway certificate",
        )
    if first.not_valid_before_utc > now:
        raise UsageError(
            f"--cert {cert} is not valid before {first.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            hint="check the certificate, or this machine's clock",
        )
    if key is not None:
        try:
            with open(key, "rb"):
                pass
        except OSError as exc:
            raise UsageError(
                f"cannot read --key {key}: {exc.strerror}", hint="check the path"
            ) from None

    def no_password() -> bytes:
        raise UsageError(
            f"the key of --cert {cert} is encrypted", hint="give an unencrypted PEM key"
        )

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(
                f"--key {key} does not match --cert {cert}",
                hint="give the private key of that certificate",
            ) from None
        where = f"--key {key}" if key is not None else f"--cert {cert} (no --key)"
        raise UsageError(
            f"{where} holds no PEM private key that OpenSSL can load ({tls_reason(exc)})",
            hint="give a file with a -----BEGIN PRIVATE KEY----- block",
        ) from None
