"""Read a `--script` file into a `script_model.Script`, or say what is wrong at FILE:LINE.

The format (README and man page: "Scripted conversations"): one statement a
line, `#` comment lines, indentation only for a rule's actions. Settings first (`banner`,
`timeout`, `resp`), then states (`state NAME`; what comes before the first is `start`), each
with steps (`send`, `expect`, `wait`, `set`, `store`, `unstore`, `log`, `goto`, `close`,
`reset`) and then rules (`on PATTERN`, `on timeout`, `else`). Everything is checked here,
at start-up: a regex that does not compile, a `goto` to no state, a `{name}` nothing sets,
a `\\3` beyond its pattern's groups are each one `UsageError("FILE:LINE: ...")`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import click

from .errors import UsageError
from .options import POSITIVE_SECONDS, SECONDS, decode_escapes
from .script_model import Action, Pattern, Ref, Rule, Script, State, Text

#: Step and action names, and whether each takes an argument.
ACTIONS = {
    "send": True,
    "wait": True,
    "expect": True,
    "set": True,
    "store": True,
    "unstore": True,
    "log": True,
    "goto": True,
    "close": False,
    "reset": False,
}
SETTINGS = ("banner", "timeout", "resp")
_NAME = re.compile(r"[A-Za-z_]\w*", re.ASCII)
_TOKEN = re.compile(r"\\\\|\\([1-9])|\\([{}])|\{\{|\}\}|\{(#?)(\w+)\}", re.ASCII)
_FLAGS = {"i": re.IGNORECASE}


class ScriptError(Exception):
    """Something wrong on one line of the script."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def read_script(path: str | os.PathLike[str] | Script) -> Script:
    """Parse the script file `path` (a Script is returned as it is); raise
    UsageError("FILE:LINE: what is wrong")."""
    if isinstance(path, Script):
        return path
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            source = f.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise UsageError(
            f"cannot read --script {name}: {exc.strerror}", hint="check the path"
        ) from None
    try:
        return parse_script(source, name)
    except ScriptError as exc:
        raise UsageError(f"{name}:{exc.line}: {exc}") from None


def parse_script(source: str, path: str = "<script>") -> Script:
    """Parse the text of a script; raise ScriptError for its first wrong line."""
    parser = _Parser(Script(path=path))
    for number, raw in enumerate(source.splitlines(), 1):
        line = raw.rstrip()
        if line.strip() and not line.lstrip().startswith("#"):
            parser.statement(number, line)
    return parser.finish()


@dataclass
class _OpenRule:
    """A rule whose indented actions may still come."""

    line: int
    kind: str  # on, else, timeout
    pattern: Pattern | None = None
    stored: Text | None = None
    actions: list[Action] = field(default_factory=list)


class _Parser:
    """The parse of one script, a statement at a time (`statement`), then `finish`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.state: State | None = None
        self.rule: _OpenRule | None = None
        self.texts: list[tuple[int, Text, int | None]] = []  # (line, text, groups it may use)
        self.gotos: list[Action] = []
        self.variables: set[str] = {"stored"}

    def statement(self, number: int, line: str) -> None:
        indented = line[0].isspace()
        word, _, rest = _split(line)
        if indented:
            if self.rule is None:
                raise ScriptError(
                    number,
                    "an indented line is an action of a rule: put it under an `on` or `else` line",
                )
            self.rule.actions.append(self.action(number, word, rest, _groups(self.rule.pattern)))
            return
        self.end_rule()
        if word in SETTINGS:
            self.setting(number, word, rest)
        elif word == "state":
            self.new_state(number, rest)
        elif word in ("on", "else"):
            self.start_rule(number, word, rest)
        elif word in ACTIONS:
            state = self.current(number)
            if state.rules or state.otherwise or state.on_timeout:  # steps come first
                raise ScriptError(
                    number,
                    f"`{word}` after the state's rules: a state's steps "
                    "come before its first `on`; indent it to make it an action",
                )
            state.steps.append(self.action(number, word, rest, None))
        else:
            raise ScriptError(
                number,
                f"unknown statement {word!r}: expected a setting "
                f"({', '.join(SETTINGS)}), state, on, else or an action "
                f"({', '.join(ACTIONS)})",
            )

    # -- settings and states ---------------------------------------------------------------

    def setting(self, number: int, word: str, rest: str) -> None:
        state = self.state
        if word == "timeout" and state is not None and not _has_content(state):
            state.timeout = self.duration(number, rest, positive=True)
            return
        if state is not None:
            raise ScriptError(
                number,
                f"`{word}` is a setting of the script: put it before the first state, step or rule",
            )
        if word == "banner":
            self.script.banner = self.text(number, rest, 0)
        elif word == "timeout":
            self.script.timeout = self.duration(number, rest, positive=True)
        else:
            if rest:
                raise ScriptError(number, "`resp` takes nothing after it")
            self.script.resp = True

    def new_state(self, number: int, rest: str) -> None:
        if not _NAME.fullmatch(rest):
            raise ScriptError(number, f"bad state name {rest!r}: letters, digits and _")
        if rest in self.script.states:
            raise ScriptError(
                number, f"state {rest!r} is already defined (line {self.script.states[rest].line})"
            )
        self.state = self.script.states[rest] = State(rest, number)

    def current(self, number: int) -> State:
        if self.state is None:
            self.state = self.script.states["start"] = State("start", number)
        return self.state

    # -- rules -------------------------------------------------------------------------------

    def start_rule(self, number: int, word: str, rest: str) -> None:
        state = self.current(number)
        pattern: Pattern | None = None
        stored: Text | None = None
        kind = word
        if word == "on":
            if rest == "timeout" or rest.startswith("timeout "):
                kind, rest = "timeout", rest[7:].strip()
            else:
                pattern, rest = self.pattern(number, rest)
                if rest == "if" or rest.startswith("if "):
                    guard = rest[2:].split(None, 2)
                    if len(guard) < 2 or guard[0] != "stored":
                        raise ScriptError(number, "expected `if stored KEY` after the pattern")
                    groups = _groups(pattern)
                    stored = self.text(number, guard[1], groups)
                    rest = guard[2] if len(guard) > 2 else ""
        if kind == "else" and state.otherwise is not None:
            raise ScriptError(
                number, f"state {state.name!r} already has an `else` (line {state.otherwise.line})"
            )
        if kind == "timeout" and state.on_timeout is not None:
            raise ScriptError(
                number,
                f"state {state.name!r} already has an `on timeout` (line {state.on_timeout.line})",
            )
        self.rule = _OpenRule(number, kind, pattern, stored)
        if rest:
            action_word, _, argument = _split(rest)
            self.rule.actions.append(self.action(number, action_word, argument, _groups(pattern)))

    def end_rule(self) -> None:
        if self.rule is None:
            return
        opened, self.rule = self.rule, None
        state = self.current(opened.line)
        _check_reachable(opened.actions)
        rule = Rule(opened.line, opened.pattern, tuple(opened.actions), opened.stored)
        if opened.kind == "else":
            state.otherwise = rule
        elif opened.kind == "timeout":
            state.on_timeout = rule
        else:
            state.rules.append(rule)

    # -- actions -----------------------------------------------------------------------------

    def action(self, number: int, word: str, rest: str, groups: int | None) -> Action:
        if word not in ACTIONS:
            raise ScriptError(
                number, f"unknown action {word!r}: expected one of " + ", ".join(ACTIONS)
            )
        if ACTIONS[word] and not rest:
            raise ScriptError(number, f"`{word}` needs an argument")
        if not ACTIONS[word] and rest:
            raise ScriptError(number, f"`{word}` takes nothing after it")
        if word in ("send", "log"):
            return Action(word, number, text=self.text(number, rest, groups))  # type: ignore[arg-type]
        if word == "wait":
            return Action("wait", number, seconds=self.duration(number, rest, positive=False))
        if word == "expect":
            pattern, after = self.pattern(number, rest)
            seconds = None
            if after:
                within = after.split()
                if len(within) != 2 or within[0] != "within":
                    raise ScriptError(number, "expected `within DURATION` after the pattern")
                seconds = self.duration(number, within[1], positive=True)
            return Action("expect", number, pattern=pattern, seconds=seconds)
        if word == "set":
            name, _, value = rest.partition(" ")
            self.check_name(number, name, "variable")
            self.variables.add(name)
            return Action("set", number, var=name, text=self.text(number, value.strip(), groups))
        if word == "store":
            key, _, value = rest.partition(" ")
            return Action(
                "store",
                number,
                text=self.text(number, key, groups),
                value=self.text(number, value.strip(), groups),
            )
        if word == "unstore":
            return Action("unstore", number, text=self.text(number, rest, groups))
        if word == "goto":
            self.check_name(number, rest, "state")
            action = Action("goto", number, var=rest)
            self.gotos.append(action)
            return action
        return Action(word, number)  # type: ignore[arg-type]  # close, reset

    def check_name(self, number: int, name: str, what: str) -> None:
        if not _NAME.fullmatch(name):
            raise ScriptError(number, f"bad {what} name {name!r}: letters, digits and _")

    # -- values ------------------------------------------------------------------------------

    def duration(self, number: int, text: str, positive: bool) -> float:
        try:
            return (POSITIVE_SECONDS if positive else SECONDS).convert(text, None, None)
        except click.BadParameter as exc:
            raise ScriptError(number, exc.message) from None

    def text(self, number: int, source: str, groups: int | None) -> Text:
        """Parse a TEXT; `groups`: how many groups its \\N may name (None: unchecked)."""
        if len(source) >= 2 and source[0] == source[-1] == '"':
            source = source[1:-1]
        pieces: list[bytes | Ref] = []
        position = 0
        try:
            for token in _TOKEN.finditer(source):
                pieces.append(decode_escapes(source[position : token.start()]))
                position = token.end()
                whole, group, brace, length, key = token.group(0, 1, 2, 3, 4)
                if whole == "\\\\":
                    pieces.append(b"\\")
                elif brace or whole in ("{{", "}}"):
                    pieces.append((brace or whole[0]).encode())
                else:
                    ref = self.ref(number, group or key, bool(length), groups)
                    pieces.append(ref)
            pieces.append(decode_escapes(source[position:]))
        except ValueError as exc:
            raise ScriptError(number, str(exc)) from None
        text = Text(tuple(p for p in pieces if p != b""))
        self.texts.append((number, text, groups))
        return text

    def ref(self, number: int, key: str, length: bool, groups: int | None) -> Ref:
        if key.isdigit():
            index = int(key)
            if groups is not None and index > groups:
                raise ScriptError(
                    number,
                    f"group {index}: the rule's pattern has "
                    f"{groups} group{'s' if groups != 1 else ''}",
                )
            return Ref("group", index, length)
        return Ref("var", key, length)

    def pattern(self, number: int, text: str) -> tuple[Pattern, str]:
        """Parse `/regex/flags` or `"literal"` at the start of `text`; return it and the rest."""
        if not text or text[0] not in '/"':
            raise ScriptError(number, 'expected a pattern: /regex/ or "exact line"')
        quote = text[0]
        end = 1
        while end < len(text) and text[end] != quote:
            end += 2 if text[end] == "\\" else 1
        if end >= len(text):
            raise ScriptError(number, f"the pattern has no closing {quote}")
        body, rest = text[1:end], text[end + 1 :]
        if quote == '"':
            try:
                literal = decode_escapes(body).decode("utf-8", "surrogateescape")
            except ValueError as exc:
                raise ScriptError(number, str(exc)) from None
            pattern = Pattern(text[: end + 1], literal=literal)
        else:
            flags_text = re.match(r"[a-z]*", rest, re.ASCII)
            assert flags_text is not None
            flags = 0
            for flag in flags_text[0]:
                if flag not in _FLAGS:
                    raise ScriptError(number, f"unknown regex flag {flag!r}: only i (ignore case)")
                flags |= _FLAGS[flag]
            rest = rest[flags_text.end() :]
            try:
                regex = re.compile(body, flags | re.DOTALL)  # a RESP word may hold a newline
            except re.error as exc:
                raise ScriptError(number, f"bad regex /{body}/: {exc}") from None
            self.variables.update(regex.groupindex)
            pattern = Pattern(text[: end + 1 + flags_text.end()], regex=regex)
        if rest and not rest[0].isspace():
            raise ScriptError(number, f"expected a space after the pattern {pattern.source}")
        return pattern, rest.strip()

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> Script:
        self.end_rule()
        for state in self.script.states.values():
            _check_reachable(state.steps)
        for action in self.gotos:
            if action.var not in self.script.states:
                raise ScriptError(action.line, f"goto {action.var}: no state of that name")
        for number, text, _ in self.texts:
            for piece in text.pieces:
                if isinstance(piece, Ref) and piece.kind == "var":
                    if piece.key not in self.variables:
                        raise ScriptError(
                            number,
                            f"{{{piece.key}}}: nothing sets it (no "
                            f"(?P<{piece.key}>...) group, no `set {piece.key}`)",
                        )
        if not self.script.states:
            self.script.states["start"] = State("start", 1)
        return self.script


def _has_content(state: State) -> bool:
    return bool(state.steps or state.rules or state.otherwise or state.on_timeout)


def _split(line: str) -> tuple[str, str, str]:
    """The first word of a line and the rest, stripped."""
    parts = line.split(None, 1)
    return parts[0], " ", parts[1].strip() if len(parts) > 1 else ""


def _groups(pattern: Pattern | None) -> int:
    """How many groups a rule's actions may name: the regex's; none for a literal (\\0 is
    the line)."""
    return pattern.regex.groups if pattern is not None and pattern.regex is not None else 0


def _check_reachable(actions: list[Action]) -> None:
    for before, after in zip(actions, actions[1:], strict=False):
        if before.name in ("goto", "close", "reset"):
            raise ScriptError(after.line, f"`{after.name}` after `{before.name}` never runs")
