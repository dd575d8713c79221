"""Access rules: which peers a server serves (--allow, --deny, --allow-uid, --allow-gid).

A rule is a network (`127.0.0.0/8`, `::1`, a host name resolved once at start-up to its
addresses). The most specific rule that matches a peer decides (the longest prefix);
between an allow and a deny of the same prefix, the deny wins. Once any allow rule is
given, a peer that matches no rule is refused; with deny rules only, it is served. An IPv4
client of a dual-stack socket (`::ffff:127.0.0.2`) is matched as the IPv4 address it is.

Unix stream peers are matched by their credentials (SO_PEERCRED): with `--allow-uid` or
`--allow-gid`, a peer is served when its user or its group is one of those given.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import UsageError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = Literal["allow", "deny"]

#: SO_PEERCRED's struct ucred: pid, uid, gid (Linux).
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Rule:
    """One rule: allow or deny a network; `text` is how the user wrote it."""

    verdict: Verdict
    network: Network
    text: str

    def __str__(self) -> str:
        return f"--{self.verdict} {self.text}"


def parse_networks(text: str) -> list[Network]:
    """The networks `text` names: a CIDR or an address, or a host name (its addresses).

    Raises ValueError with a message for the user when it names none.
    """
    text = text.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return [ipaddress.ip_network(bare, strict=False)]
    except ValueError:
        pass
    if "/" in bare or not bare or any(c.isspace() for c in bare):
        raise ValueError(f"{text!r} is not an address or network (e.g. 127.0.0.0/8, ::1)")
    try:
        infos = socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValueError(
            f"{text!r} is not an address, a network or a host name this machine resolves"
        ) from None
    return sorted(
        {ipaddress.ip_network(str(info[4][0]).split("%")[0]) for info in infos},
        key=lambda n: (n.version, n),
    )


def read_rule_file(path: str) -> list[str]:
    """The rules of a file: one per line; blank lines and `#` comments skipped.

    Raises UsageError when the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise UsageError(f"cannot read rule file {path}: {reason}", hint="check the path") from None
    rules = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if text:
            rules.append(text)
    return rules


class AccessRules:
    """The rules of one run; `decide(client_address)` says whether a peer is served."""

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        uids: Iterable[int] = (),
        gids: Iterable[int] = (),
    ) -> None:
        # Most specific first; at one prefix length, deny before allow.
        self.rules = tuple(sorted(rules, key=lambda r: (-r.network.prefixlen, r.verdict != "deny")))
        self.any_allow = any(r.verdict == "allow" for r in rules)
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)

    def __bool__(self) -> bool:
        return bool(self.rules or self.uids or self.gids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessRules):
            return NotImplemented
        return (self.rules, self.uids, self.gids) == (other.rules, other.uids, other.gids)

    def __hash__(self) -> int:
        return hash((self.rules, self.uids, self.gids))

    def check(self, family: str, transport: str) -> None:
        """Network rules need an IP peer; credentials, a unix stream peer. Raises
        UsageError."""
        if self.rules and family == "unix":
            raise UsageError(
                "--allow/--deny match IP addresses: a unix socket's peers have none",
                hint="use --allow-uid or --allow-gid, or the socket file's --mode",
            )
        if (self.uids or self.gids) and transport != "unix":
            raise UsageError(
                "--allow-uid/--allow-gid match a unix stream peer's credentials: "
                f"a {transport} peer has none",
                hint="use --allow/--deny with addresses, or serve unix",
            )
        if (self.uids or self.gids) and not peer_credentials_supported():
            raise UsageError(
                "--allow-uid/--allow-gid need SO_PEERCRED, which this platform lacks",
                hint="use the socket file's --mode instead",
            )

    def describe(self) -> str:
        """The rules in one line, for the banner."""
        words = [str(rule) for rule in sorted(self.rules, key=lambda r: r.text)]
        words += [f"--allow-uid {uid}" for uid in sorted(self.uids)]
        words += [f"--allow-gid {gid}" for gid in sorted(self.gids)]
        return " ".join(words)

    def decide(self, address: object) -> str | None:
        """None if the peer at `address` (an accepted client address) is served, else why not."""
        if not self.rules:
            return None
        host = address[0] if isinstance(address, tuple) and address else None
        if not isinstance(host, str):
            return "no address to match the rules with"
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return f"{host!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for rule in self.rules:
            if ip.version == rule.network.version and ip in rule.network:
                return None if rule.verdict == "allow" else f"denied by {rule}"
        if self.any_allow:
            return "matches no --allow rule"
        return None

    def decide_credentials(self, sock: socket.socket) -> str | None:
        """None if the unix stream peer on `sock` is served by --allow-uid/--allow-gid."""
        if not self.uids and not self.gids:
            return None
        try:
            _pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
        except (OSError, AttributeError):
            return "its credentials cannot be read"
        if uid in self.uids or gid in self.gids:
            return None
        return f"uid {uid} gid {gid} matches no --allow-uid or --allow-gid"


def peer_credentials_supported() -> bool:
    """True where a unix peer's credentials can be read (SO_PEERCRED: Linux)."""
    return hasattr(socket, "SO_PEERCRED")


def build_rules(
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    allow_file: str | None = None,
    deny_file: str | None = None,
    allow_uid: Sequence[int] = (),
    allow_gid: Sequence[int] = (),
) -> AccessRules:
    """The AccessRules of the options; raises UsageError naming a rule that is not one."""
    rules: list[Rule] = []
    sources: list[tuple[Verdict, str, Sequence[str]]] = [
        ("allow", "--allow", allow),
        ("deny", "--deny", deny),
    ]
    if allow_file is not None:
        sources.append(("allow", f"--allow-file {allow_file}", read_rule_file(allow_file)))
    if deny_file is not None:
        sources.append(("deny", f"--deny-file {deny_file}", read_rule_file(deny_file)))
    for verdict, option, texts in sources:
        for text in texts:
            try:
                networks = parse_networks(text)
            except ValueError as exc:
                raise UsageError(
                    f"{option}: {exc}", hint="e.g. 127.0.0.1, 10.0.0.0/8, ::1"
                ) from None
            rules += [Rule(verdict, network, text) for network in networks]
    for option, ids in (("--allow-uid", allow_uid), ("--allow-gid", allow_gid)):
        if any(i < 0 for i in ids):
            raise UsageError(f"{option} takes a number of 0 or more", hint=f"e.g. {option} 1000")
    return AccessRules(rules, allow_uid, allow_gid)
