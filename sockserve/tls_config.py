"""The rules of the TLS options of one run (no ssl here: only `tls.py`, loaded when a run
serves TLS, imports it)."""

from __future__ import annotations

from typing import Any, Protocol

from .errors import UsageError

#: How long a client may take over its handshake, by default.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
TLS_MIN_VERSIONS = ("1.2", "1.3")
#: The options that need --tls (or --cert, which implies it), with their ServeConfig fields.
_NEED_TLS = (
    ("--tls-name", "tls_name"),
    ("--tls-ca-out", "tls_ca_out"),
    ("--client-ca", "client_ca"),
    ("--tls-client-cert-out", "tls_client_cert_out"),
    ("--alpn", "alpn"),
    ("--tls-min", "tls_min"),
    ("--tls-handshake-timeout", "tls_handshake_timeout"),
)


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


class TlsFields(Protocol):
    """What `check_tls` reads of a ServeConfig (this module is below config's layer)."""

    @property
    def tls(self) -> bool: ...
    @property
    def cert(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...
    @property
    def tls_min(self) -> str | None: ...
    @property
    def tls_handshake_timeout(self) -> float | None: ...
    @property
    def socktype(self) -> str: ...
    @property
    def transport(self) -> str: ...


class ForwardTlsFields(Protocol):
    """What `check_forward_tls` reads of a ServeConfig."""

    @property
    def forward(self) -> Any: ...
    @property
    def forward_tls(self) -> bool: ...
    @property
    def forward_ca(self) -> str | None: ...
    @property
    def forward_sni(self) -> str | None: ...
    @property
    def forward_cert(self) -> str | None: ...
    @property
    def forward_key(self) -> str | None: ...
    @property
    def forward_no_verify(self) -> bool: ...
    @property
    def socktype(self) -> str: ...
    @property
    def transport(self) -> str: ...


#: The options that need --forward-tls, with their ServeConfig fields.
_NEED_FORWARD_TLS = (
    ("--forward-ca", "forward_ca"),
    ("--forward-sni", "forward_sni"),
    ("--forward-cert", "forward_cert"),
    ("--forward-key", "forward_key"),
    ("--forward-no-verify", "forward_no_verify"),
)


def check_forward_tls(config: ForwardTlsFields) -> None:
    """Refuse --forward-tls and its options where they cannot apply: without --forward, on
    datagrams (no DTLS), a unix upstream with no name to check."""
    if not config.forward_tls:
        for option, name in _NEED_FORWARD_TLS:
            if getattr(config, name):
                raise UsageError(
                    f"{option} only applies with --forward-tls", hint="add --forward-tls"
                )
        return
    if config.forward is None:
        raise UsageError(
            "--forward-tls needs --forward UPSTREAM (the TLS server to relay to)",
            hint="e.g. --forward example.org:443 --forward-tls",
        )
    if config.socktype != "stream":
        raise UsageError(
            f"--forward-tls needs a stream: a {config.transport} server cannot forward over "
            "TLS (DTLS is not supported)",
            hint="use tcp or unix, or drop --forward-tls",
        )
    if config.forward_key is not None and config.forward_cert is None:
        raise UsageError(
            "--forward-key needs --forward-cert (the certificate it signs)",
            hint="add --forward-cert FILE",
        )
    if config.forward_no_verify and config.forward_ca is not None:
        raise UsageError(
            "--forward-ca and --forward-no-verify contradict each other",
            hint="drop one of them",
        )
    if (
        config.forward.family == "unix"
        and config.forward_sni is None
        and not config.forward_no_verify
    ):
        raise UsageError(
            f"--forward-tls to the unix socket {config.forward}: no host name to check its "
            "certificate against",
            hint="name it with --forward-sni NAME (e.g. --forward-sni localhost)",
        )
    if config.forward_sni is not None and not config.forward_sni.strip():
        raise UsageError("--forward-sni names nothing", hint="e.g. --forward-sni localhost")


def check_tls(config: TlsFields) -> None:
    """Refuse TLS options that cannot apply together. `build_config` has made --cert and
    --key imply --tls already."""
    if not config.tls:
        for option, name in _NEED_TLS:
            if getattr(config, name):
                raise UsageError(f"{option} only applies with --tls", hint="add --tls")
        if config.cert is not None or config.key is not None:
            raise UsageError("--cert and --key serve TLS: not without --tls")
        return
    if config.socktype != "stream":
        raise UsageError(
            f"TLS needs a stream: a {config.transport} server cannot serve it "
            "(DTLS is not supported)",
            hint="use tcp or unix, or drop the TLS options",
        )
    if config.key is not None and config.cert is None:
        raise UsageError("--key needs --cert (the certificate it signs)", hint="add --cert FILE")
    if config.cert is not None:
        for option, name in (("--tls-name", "tls_name"), ("--tls-ca-out", "tls_ca_out")):
            if getattr(config, name):
                raise UsageError(
                    f"{option} is for the throwaway certificate of --tls: --cert is your own",
                    hint=f"drop {option}, or --cert/--key",
                )
    if config.tls_min is not None and config.tls_min not in TLS_MIN_VERSIONS:
        raise UsageError(f"--tls-min {config.tls_min}: not a TLS version", hint="use 1.2 or 1.3")
    timeout = config.tls_handshake_timeout
    if timeout is not None and not timeout > 0:
        raise UsageError(
            "--tls-handshake-timeout must be more than 0 seconds",
            hint="e.g. --tls-handshake-timeout 5s",
        )
