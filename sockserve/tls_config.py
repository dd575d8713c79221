"""The TLS options of one run, checked: `TlsSettings` (--tls) and `ForwardTls` (--forward-tls).

`config.build_config` imports this module only when a TLS option is given, so a run without
TLS never loads it. No ssl here: only `tls.py` and `upstream_tls.py`, loaded when a run uses
TLS, import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UsageError

#: How long a client may take over its handshake, by default.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
TLS_MIN_VERSIONS = ("1.2", "1.3")


def parse_alpn(text: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """--alpn's comma-separated list as a tuple (None: not given). Raises UsageError."""
    if text is None or isinstance(text, tuple):
        return text
    protocols = tuple(p.strip() for p in text.split(",") if p.strip())
    if not protocols:
        raise UsageError("--alpn names no protocol", hint="e.g. --alpn h2,http/1.1")
    for protocol in protocols:
        if len(protocol.encode()) > 255:
            raise UsageError(f"--alpn protocol {protocol[:20]}... is over 255 bytes")
    return protocols


@dataclass(frozen=True)
class TlsSettings:
    """The TLS a server speaks (`ServeConfig.tls`), read by `tls.prepare_tls`.

    `cert` None: a throwaway certificate, for the bound host, localhost and `names`
    (--tls-name), its CA written to `ca_out` when given.
    """

    cert: str | None = None
    key: str | None = None
    names: tuple[str, ...] = ()
    ca_out: str | None = None
    client_ca: str | None = None  # --client-ca: clients must show a certificate it signed
    client_cert_out: str | None = None  # --tls-client-cert-out DIR
    alpn: tuple[str, ...] | None = None
    min_version: str | None = None  # --tls-min: 1.2 or 1.3 (None: 1.2)
    handshake_timeout: float | None = None  # None: DEFAULT_HANDSHAKE_TIMEOUT


def tls_settings(
    tls: bool,
    cert: str | None,
    key: str | None,
    tls_name: tuple[str, ...],
    tls_ca_out: str | None,
    client_ca: str | None,
    tls_client_cert_out: str | None,
    alpn: str | tuple[str, ...] | None,
    tls_min: str | None,
    tls_handshake_timeout: float | None,
) -> TlsSettings | None:
    """The TLS options (build_config's keywords) as TlsSettings; None when the run serves no
    TLS (--cert and --key imply --tls). Raises UsageError for options that cannot apply
    together; `check_tls_transport` checks the transport."""
    if not (tls or cert is not None or key is not None):
        for option, value in (
            ("--tls-name", tls_name),
            ("--tls-ca-out", tls_ca_out),
            ("--client-ca", client_ca),
            ("--tls-client-cert-out", tls_client_cert_out),
            ("--alpn", alpn),
            ("--tls-min", tls_min),
            ("--tls-handshake-timeout", tls_handshake_timeout),
        ):
            if value:
                raise UsageError(f"{option} only applies with --tls", hint="add --tls")
        return None
    if key is not None and cert is None:
        raise UsageError("--key needs --cert (the certificate it signs)", hint="add --cert FILE")
    if cert is not None:
        for option, value in (("--tls-name", tls_name), ("--tls-ca-out", tls_ca_out)):
            if value:
                raise UsageError(
                    f"{option} is for the throwaway certificate of --tls: --cert is your own",
                    hint=f"drop {option}, or --cert/--key",
                )
    if tls_min is not None and tls_min not in TLS_MIN_VERSIONS:
        raise UsageError(f"--tls-min {tls_min}: not a TLS version", hint="use 1.2 or 1.3")
    if tls_handshake_timeout is not None and not tls_handshake_timeout > 0:
        raise UsageError(
            "--tls-handshake-timeout must be more than 0 seconds",
            hint="e.g. --tls-handshake-timeout 5s",
        )
    return TlsSettings(
        cert=cert,
        key=key,
        names=tuple(tls_name),
        ca_out=tls_ca_out,
        client_ca=client_ca,
        client_cert_out=tls_client_cert_out,
        alpn=parse_alpn(alpn),
        min_version=tls_min,
        handshake_timeout=tls_handshake_timeout,
    )


def check_tls_transport(socktype: str, transport: str) -> None:
    """Refuse TLS on datagrams (no DTLS)."""
    if socktype != "stream":
        raise UsageError(
            f"TLS needs a stream: a {transport} server cannot serve it (DTLS is not supported)",
            hint="use tcp or unix, or drop the TLS options",
        )


@dataclass(frozen=True)
class ForwardTls:
    """TLS to the --forward upstream (`ServeConfig.forward_tls`), read by
    `runner.upstream_tls`: verified against `ca` (None: the system's CAs) under the name
    `sni` (None: the upstream's host), unless `no_verify`; `cert`/`key` for mTLS."""

    ca: str | None = None
    sni: str | None = None
    cert: str | None = None
    key: str | None = None
    no_verify: bool = False


def forward_tls_settings(
    forward_tls: bool,
    forward_ca: str | None,
    forward_sni: str | None,
    forward_cert: str | None,
    forward_key: str | None,
    forward_no_verify: bool,
) -> ForwardTls | None:
    """The --forward-tls options as ForwardTls; None without --forward-tls. Raises
    UsageError for options that cannot apply together; `check_forward_tls` checks them
    against the upstream and the transport."""
    if not forward_tls:
        for option, value in (
            ("--forward-ca", forward_ca),
            ("--forward-sni", forward_sni),
            ("--forward-cert", forward_cert),
            ("--forward-key", forward_key),
            ("--forward-no-verify", forward_no_verify),
        ):
            if value:
                raise UsageError(
                    f"{option} only applies with --forward-tls", hint="add --forward-tls"
                )
        return None
    return ForwardTls(forward_ca, forward_sni, forward_cert, forward_key, forward_no_verify)


def check_forward_tls(settings: ForwardTls, forward: Any, socktype: str, transport: str) -> None:
    """Refuse --forward-tls where it cannot apply: without --forward (the upstream's Address,
    or None), on datagrams (no DTLS), a unix upstream with no name to check; and its options
    that contradict each other."""
    if forward is None:
        raise UsageError(
            "--forward-tls needs --forward UPSTREAM (the TLS server to relay to)",
            hint="e.g. --forward example.org:443 --forward-tls",
        )
    if socktype != "stream":
        raise UsageError(
            f"--forward-tls needs a stream: a {transport} server cannot forward over "
            "TLS (DTLS is not supported)",
            hint="use tcp or unix, or drop --forward-tls",
        )
    if settings.key is not None and settings.cert is None:
        raise UsageError(
            "--forward-key needs --forward-cert (the certificate it signs)",
            hint="add --forward-cert FILE",
        )
    if settings.no_verify and settings.ca is not None:
        raise UsageError(
            "--forward-ca and --forward-no-verify contradict each other",
            hint="drop one of them",
        )
    if forward.family == "unix" and settings.sni is None and not settings.no_verify:
        raise UsageError(
            f"--forward-tls to the unix socket {forward}: no host name to check its "
            "certificate against",
            hint="name it with --forward-sni NAME (e.g. --forward-sni localhost)",
        )
    if settings.sni is not None and not settings.sni.strip():
        raise UsageError("--forward-sni names nothing", hint="e.g. --forward-sni localhost")
