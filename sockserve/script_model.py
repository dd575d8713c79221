"""A parsed `--script` file: states of steps and rules, as plain data.

`script_file.read_script` builds a Script from a file; `builtins.conversation` runs one per
connection. Nothing here reads a file or a socket. A Text is what a `send`, `set`, `log` or
`store` line writes, as pieces: bytes as written (escapes already decoded) and references
filled in per connection (`Ref`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .errors import UsageError

#: A reference in a Text: `\\1` or `{1}` (a group of the last match), `{name}` (a variable),
#: `{#name}` (its length in bytes).
RefKind = Literal["group", "var"]


@dataclass(frozen=True)
class Ref:
    """A value filled in when the text is sent: a group number or a variable's name."""

    kind: RefKind
    key: int | str
    length: bool = False  # {#...}: the value's length in bytes, in decimal


@dataclass(frozen=True)
class Text:
    """Bytes with references, e.g. `250 hello \\2\\r\\n`."""

    pieces: tuple[bytes | Ref, ...]


@dataclass(frozen=True)
class Pattern:
    """What a line must be: `"literal"` (the whole line) or `/regex/` (found in the line)."""

    source: str  # as written, for messages
    literal: str | None = None
    regex: re.Pattern[str] | None = None

    def match(self, line: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
        """None, or the match's groups (group 0, the whole match, first; "" for a group that
        took no part) and its named groups."""
        if self.regex is None:
            return ((line,), {}) if line == self.literal else None
        found = self.regex.search(line)
        if found is None:
            return None
        groups = (found[0], *(g or "" for g in found.groups()))
        return groups, {name: value or "" for name, value in found.groupdict().items()}


ActionName = Literal[
    "send", "wait", "expect", "set", "store", "unstore", "log", "goto", "close", "reset"
]


@dataclass(frozen=True)
class Action:
    """One step or one action of a rule; which fields count depends on `name`.

    send/log: `text`; set: `var` and `text`; store: `text` is the key, `value` the value;
    unstore: `text` is the key; wait: `seconds`; expect: `pattern` and `seconds` (its
    `within`, or None); goto: `var` is the state's name.
    """

    name: ActionName
    line: int
    text: Text | None = None
    value: Text | None = None
    var: str = ""
    seconds: float | None = None
    pattern: Pattern | None = None


@dataclass(frozen=True)
class Rule:
    """`on PATTERN [if stored KEY]`, `else` (pattern None) or `on timeout`, with its actions."""

    line: int
    pattern: Pattern | None
    actions: tuple[Action, ...]
    stored: Text | None = None  # the `if stored KEY` guard


@dataclass
class State:
    """Steps run on entering the state, then rules that answer each line."""

    name: str
    line: int
    timeout: float | None = None
    steps: list[Action] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    otherwise: Rule | None = None  # else
    on_timeout: Rule | None = None


@dataclass
class Script:
    """A whole script: its settings and its states, the first one where a connection starts."""

    path: str
    banner: Text | None = None
    timeout: float | None = None
    resp: bool = False
    states: dict[str, State] = field(default_factory=dict)

    @property
    def start(self) -> State:
        return next(iter(self.states.values()))

    def wait_limit(self, state: State, expect: Action | None = None) -> float | None:
        """How long a wait for a line may last: the expect's `within`, else the state's
        `timeout`, else the script's (None: no limit)."""
        if expect is not None and expect.seconds is not None:
            return expect.seconds
        return state.timeout if state.timeout is not None else self.timeout


def check_script(
    builtin: str | None, name: str, script: Script | None, socktype: str, proto: str
) -> None:
    """--script implies -H script, a conversation on a stream connection (`builtin` and
    `name`: the handler's). Raises UsageError."""
    if builtin == "script" and script is None:
        raise UsageError("-H script needs --script FILE", hint="give the script to run")
    if script is None:
        return
    if builtin == "reply":
        raise UsageError(
            "--script and --reply/--reply-file cannot be combined: each implies its own handler",
            hint="give only one of them",
        )
    if builtin != "script":
        raise UsageError(
            f"--script runs its own handler (-H script): not with -H {name}",
            hint="drop -H, or --script",
        )
    if socktype == "dgram":
        raise UsageError(
            f"--script holds a conversation on a connection: {proto} has none",
            hint="serve it over tcp or unix",
        )
