"""The command line's value types: each click ParamType parses its text in `convert`.

As `click.Path` checks a path, these turn the text the user typed into the value the config
takes, or fail with one line naming what is wrong (`self.fail`: click prints the usage and an
"Invalid value" line, then exits with 2). Their `shell_complete` answers tab completion.

- PROTO, CONCURRENCY: choices with a description for each (zsh and fish show it);
- ADDRESS: `addresses.parse_address` → Address;
- HANDLER: a builtin name, `module:Class`, `file.py[:Class]` → LoadedHandler (`loading`);
- OCTAL: `--mode` permission bits; SECONDS: durations (`2.5`, `200ms`, `1.5s`, `2m`);
- ESCAPED_TEXT: `--reply` text with backslash escapes → bytes;
- NETWORK: an --allow/--deny rule (a CIDR, an address, a host name), checked, kept as text;
- SIZE: bytes (`1500`, `64K`, `1Mi`); RATE: bytes per second (`100K`); PCT: 0 to 100;
  DELAY (`50ms[:10ms]`) and CHUNK (`3[:5ms]`): the fault options' pairs;
- READABLE_FILE, FILE_PATH: click's Path, one instance each for the options that share it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from .addresses import Address, Family, parse_address, resolve_transport
from .errors import UsageError
from .loading import BUILTIN_NAMES, LoadedHandler, load_handler

if TYPE_CHECKING:  # completion only: loaded by the `shell_complete` methods
    from click.shell_completion import CompletionItem

PROTOCOLS = {
    "tcp": "TCP stream server (IPv4 or IPv6)",
    "udp": "UDP datagram server (IPv4 or IPv6)",
    "unix": "unix domain stream socket (a path, or @name)",
    "unix-dgram": "unix domain datagram socket (a path, or @name)",
}

CONCURRENCIES = {
    "sync": "one request at a time",
    "thread": "a thread per request (default for streams)",
    "fork": "a child process per request",
    "event": "one event loop, asyncio protocol handlers",
}


class DescribedChoice(click.Choice):
    """A click.Choice whose completions carry a description (zsh and fish show it)."""

    def __init__(self, choices: dict[str, str]) -> None:
        super().__init__(list(choices))
        self.descriptions = choices

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        return [
            CompletionItem(name, help=text)
            for name, text in self.descriptions.items()
            if name.startswith(incomplete)
        ]


class AddressType(click.ParamType):
    """The ADDRESS argument → Address; completes paths for unix sockets, a few inet forms.

    The family comes from PROTO and `--family`, which click has converted by then (it
    converts options before arguments). When they contradict each other the text is left
    as it is: the config reports the contradiction, which comes first.
    """

    name = "ADDRESS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Address | str:
        if isinstance(value, Address):
            return value
        try:
            family = _family_so_far(ctx)
        except UsageError:
            return str(value)
        try:
            return parse_address(value, family)
        except UsageError as exc:
            self.fail(exc.one_line(), param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        proto = ctx.params.get("proto")
        if proto in ("unix", "unix-dgram"):
            return [CompletionItem(incomplete, type="file")]
        if not incomplete:
            return [
                CompletionItem(":0", help="127.0.0.1, a port the OS picks"),
                CompletionItem(":9999", help="127.0.0.1 port 9999"),
                CompletionItem("[::1]:0", help="IPv6 loopback, a port the OS picks"),
            ]
        return []


def _family_so_far(ctx: click.Context | None) -> Family | None:
    """The address family PROTO, --family and --type give; raises UsageError if they clash."""
    params = ctx.params if ctx is not None else {}
    proto = params.get("proto")
    if proto not in PROTOCOLS:
        return None
    # click >= 8.3 marks an option it has not converted yet with a sentinel, not None.
    family, socktype = (params.get(name) for name in ("family", "type"))
    family = family if isinstance(family, str) else None
    socktype = socktype if isinstance(socktype, str) else None
    return resolve_transport(proto, family, socktype)[0]


class HandlerType(click.ParamType):
    """A builtin name, `module:Class`, `file.py:Class` or `file.py` → LoadedHandler.

    Completion offers the builtins (with their descriptions) and, through the shell, `*.py`
    files and directories: all of them for an empty word, files only when no builtin matches
    or the word looks like a path (so `-H e<TAB>` is `echo` even beside `examples/`), and
    nothing once a `:Class` part is being typed. While completing, no module is imported.
    """

    name = "HANDLER"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> LoadedHandler | str:
        if isinstance(value, LoadedHandler):
            return value
        if ctx is not None and ctx.resilient_parsing:
            return str(value)  # tab completion: never run a user's module for it
        try:
            return load_handler(value)
        except UsageError as exc:
            self.fail(exc.one_line(), param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        if ":" in incomplete:
            return []
        from click.shell_completion import CompletionItem

        from .builtins import BUILTINS  # the descriptions: only when completing

        items = [
            CompletionItem(name, help=BUILTINS.get(name))
            for name in BUILTIN_NAMES
            if name.startswith(incomplete) and name != "exec"  # exec: what --exec implies
        ]
        if not incomplete or not items or "/" in incomplete or incomplete.startswith((".", "~")):
            items.append(CompletionItem(incomplete, type="pyfile"))
        return items


class OctalType(click.ParamType):
    """Permission bits in octal, such as 600 or 0o660 → int."""

    name = "OCTAL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode such as 600 or 660", param, ctx)
        if not 0 <= mode <= 0o777:
            self.fail(f"{value!r} is outside 000..777", param, ctx)
        return mode


#: The patterns below are compiled on first use (re caches them): a run that gives no such
#: option never compiles them.
_DURATION = r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?"
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class SecondsType(click.ParamType):
    """A duration → seconds (float): `2.5`, `200ms`, `1.5s`, `2m`, `1h`; a bare number is
    seconds. `positive`: zero is refused too."""

    name = "SECONDS"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = re.fullmatch(_DURATION, str(value).strip(), re.ASCII)
            if match is None:
                self.fail(f"{value!r}: expected seconds, e.g. 2.5 or 200ms", param, ctx)
            seconds = float(match[1]) * _SECONDS_PER_UNIT[match[2]]
        if seconds < 0 or (self.positive and seconds == 0):
            least = "more than 0" if self.positive else "0 or more"
            self.fail(f"{value!r}: expected {least} seconds, e.g. 2.5 or 200ms", param, ctx)
        return seconds


class NetworkType(click.ParamType):
    """An access rule's network: `127.0.0.0/8`, `::1`, a host name this machine resolves.

    The text is kept (config resolves it into its networks)."""

    name = "CIDR|HOST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from .access import parse_networks  # --allow/--deny only: ipaddress loads with it

        try:
            parse_networks(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


_SIZE = r"(\d+(?:\.\d*)?|\.\d+)\s*([kKMG]i?)?B?"
_SIZE_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_size(text: str) -> int | None:
    """`1500`, `64K`, `1.5M`, `1Mi` → bytes (K/M/G powers of 1000, Ki/Mi/Gi of 1024); None
    if `text` is no size."""
    match = re.fullmatch(_SIZE, text.strip(), re.ASCII)
    if match is None:
        return None
    unit = match[2][0].upper() + match[2][1:] if match[2] else None
    return round(float(match[1]) * _SIZE_UNITS[unit])


class SizeType(click.ParamType):
    """A size in bytes → int: `1500`, `64K`, `1Mi` (K/M/G: 1000s; Ki/Mi/Gi: 1024s)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        size = parse_size(str(value))
        if size is None:
            self.fail(f"{value!r}: expected a size in bytes, e.g. 1500, 64K or 1Mi", param, ctx)
        return size


class RateType(click.ParamType):
    """Bytes per second → int, more than 0: `100K`, `1Mi`, `5000` (an optional `/s`)."""

    name = "RATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        text = str(value).strip().removesuffix("/s")
        rate = parse_size(text)
        if not rate:
            self.fail(f"{value!r}: expected bytes per second above 0, e.g. 100K or 1Mi", param, ctx)
        return rate


class PercentType(click.ParamType):
    """A percentage → float from 0 to 100: `5`, `12.5`, `30%`."""

    name = "PCT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            pct = float(str(value).strip().removesuffix("%"))
        except ValueError:
            pct = -1.0
        if not 0 <= pct <= 100:
            self.fail(
                f"{value!r}: expected a percentage from 0 to 100, e.g. 5 or 12.5%", param, ctx
            )
        return pct


class DelayType(click.ParamType):
    """`DURATION[:JITTER]` → (seconds, jitter seconds): `50ms`, `50ms:10ms`."""

    name = "DURATION[:JITTER]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        delay, _, jitter = str(value).partition(":")
        return (SECONDS.convert(delay, param, ctx), SECONDS.convert(jitter or 0, param, ctx))


class ChunkType(click.ParamType):
    """`N[:DURATION]` → (bytes, gap seconds): `3`, `512:5ms`."""

    name = "N[:DURATION]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, float]:
        if isinstance(value, tuple):
            return value
        size, _, gap = str(value).partition(":")
        n = SIZE.convert(size, param, ctx)
        if n < 1:
            self.fail(f"{value!r}: expected writes of 1 byte or more, e.g. 3 or 3:5ms", param, ctx)
        return (n, SECONDS.convert(gap or 0, param, ctx))


class EscapedTextType(click.ParamType):
    """Text with backslash escapes → bytes (see `decode_escapes`)."""

    name = "TEXT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> bytes:
        if isinstance(value, bytes):
            return value
        try:
            return decode_escapes(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_ESCAPE = r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]*\}|[0-7]{1,3}|.?)"
_SINGLE = {
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\n": b"",  # a backslash at the end of a line joins the lines
}
_BAD_ESCAPE = "invalid escape sequence (use \\n, \\r, \\t, \\\\, \\xNN or \\uNNNN)"


def decode_escapes(text: str) -> bytes:
    """Turn `--reply` text into bytes: the text as UTF-8, escapes decoded as Python's do.

    `\\xNN` and octal `\\NNN` are one byte; `\\uNNNN`, `\\UNNNNNNNN` and `\\N{name}` are a
    character, as UTF-8; `\\n`, `\\r`, `\\t`, `\\\\` and the other single-letter escapes as
    in a Python string. An unknown escape such as `\\q` stays as typed. Raises ValueError
    (one line) for an escape that is cut short or names no character.
    """
    out = bytearray()
    pos = 0
    for match in re.finditer(_ESCAPE, text, re.S):
        out += _literal(text[pos : match.start()])
        out += _escaped(match[1])
        pos = match.end()
    out += _literal(text[pos:])
    return bytes(out)


def _literal(text: str) -> bytes:
    """Text as UTF-8; what stands for an undecodable byte of the command line is that byte."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError("the text has a character UTF-8 cannot encode") from None


def _escaped(body: str) -> bytes:
    """The bytes of one escape, given what follows its backslash."""
    if body in _SINGLE:
        return _SINGLE[body]
    if not body or (body[0] in "xuUN" and len(body) == 1):
        raise ValueError(_BAD_ESCAPE)
    kind, digits = body[0], body[1:]
    if kind == "x":
        return bytes([int(digits, 16)])
    if kind in "01234567":
        value = int(body, 8)
        if value > 0xFF:
            raise ValueError(f"octal escape \\{body} is above \\377 (one byte)")
        return bytes([value])
    try:
        if kind in "uU":
            char = chr(int(digits, 16))
        elif kind == "N":
            import unicodedata  # only a \N{name} escape needs the character names

            char = unicodedata.lookup(digits[1:-1])
        else:
            return ("\\" + body).encode("utf-8", "surrogateescape")
        return char.encode("utf-8")
    except (KeyError, ValueError, UnicodeEncodeError):
        raise ValueError(f"\\{body} names no character that UTF-8 can encode") from None


PROTO = DescribedChoice(PROTOCOLS)
CONCURRENCY = DescribedChoice(CONCURRENCIES)
ADDRESS = AddressType()
HANDLER = HandlerType()
OCTAL = OctalType()
SECONDS = SecondsType()
POSITIVE_SECONDS = SecondsType(positive=True)
ESCAPED_TEXT = EscapedTextType()
NETWORK = NetworkType()
SIZE = SizeType()
RATE = RateType()
PCT = PercentType()
DELAY = DelayType()
CHUNK = ChunkType()
#: click's own path types, one instance for all the options that share one (as click's STRING):
#: a file that must exist and be readable (--reply-file, --allow-file...), and a file's path,
#: read or written later (--cert, --tls-ca-out...).
READABLE_FILE = click.Path(exists=True, dir_okay=False, readable=True)
FILE_PATH = click.Path(dir_okay=False)
