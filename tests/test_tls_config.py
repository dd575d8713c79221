"""The rules of the TLS options: what implies --tls, what needs it, what cannot apply."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from sockserve import cli
from sockserve.config import build_config
from sockserve.errors import UsageError


def test_cert_and_key_imply_tls() -> None:
    config = build_config(proto="tcp", address=":0", cert="c.pem", key="k.pem")
    assert config.tls and (config.tls.cert, config.tls.key) == ("c.pem", "k.pem")
    assert build_config(proto="tcp", address=":0", cert="both.pem").tls
    assert not build_config(proto="tcp", address=":0").tls


def test_alpn_is_a_list() -> None:
    config = build_config(proto="tcp", address=":0", tls=True, alpn=" h2 ,http/1.1,")
    assert config.tls and config.tls.alpn == ("h2", "http/1.1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpn": "h2"}, "--alpn only applies with --tls"),
        ({"tls_name": ("x.test",)}, "--tls-name only applies with --tls"),
        ({"tls_ca_out": "ca.pem"}, "--tls-ca-out only applies with --tls"),
        ({"client_ca": "ca.pem"}, "--client-ca only applies with --tls"),
        ({"tls_client_cert_out": "d"}, "--tls-client-cert-out only applies with --tls"),
        ({"tls_min": "1.3"}, "--tls-min only applies with --tls"),
        ({"tls_handshake_timeout": 1.0}, "--tls-handshake-timeout only applies with --tls"),
        ({"tls": True, "key": "k.pem"}, "--key needs --cert"),
        ({"cert": "c.pem", "tls_name": ("x",)}, "--tls-name is for the throwaway certificate"),
        ({"cert": "c.pem", "tls_ca_out": "ca"}, "--tls-ca-out is for the throwaway certificate"),
        ({"tls": True, "alpn": ","}, "--alpn names no protocol"),
        ({"tls": True, "alpn": "x" * 256}, "is over 255 bytes"),
        ({"tls": True, "tls_min": "1.1"}, "not a TLS version"),
        ({"tls": True, "tls_handshake_timeout": 0.0}, "must be more than 0 seconds"),
    ],
)
def test_rules(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_config(proto="tcp", address=":0", **options)


@pytest.mark.parametrize("proto", ["udp", "unix-dgram"])
def test_no_tls_on_datagrams(proto: str) -> None:
    address = ":0" if proto == "udp" else "/tmp/x.sock"
    with pytest.raises(UsageError, match=f"a {proto} server cannot serve it"):
        build_config(proto=proto, address=address, tls=True)


def test_the_command_refuses_with_exit_2() -> None:
    result = CliRunner().invoke(cli.main, ["udp", ":0", "--tls"])
    assert result.exit_code == 2
    assert "TLS needs a stream" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli.main, ["tcp", ":0", "--alpn", "h2"])
    assert result.exit_code == 2 and "--alpn only applies with --tls" in result.output
