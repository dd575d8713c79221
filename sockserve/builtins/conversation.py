"""The `script` builtin's interpreter: one conversation of a `--script`, with no socket.

As h11's Connection, a `Conversation` takes what the client sends and returns what to do,
so it is tested without sockets; the adapters (`script_stream` for sync/thread/fork,
`script_asyncio` for event mode) only move bytes and keep time. Rules it keeps:

- `start()` first, then `receive(data)` for each chunk (b"": the client closed its side),
  `timed_out()` when a wait for a line outlasts `read_timeout` seconds (counted from when
  `wait_number` last changed), and `woke()` when a `Sleep` is over. Each returns the actions
  to carry out in order: `Send`, `Sleep` (then nothing more until `woke()`), `Log`, and
  `Close` (the last one: `closed` is then set).
- Input is cut into lines at b"\\n" (a b"\\r" before it is dropped), at most `MAX_LINE`
  bytes each; with the script's `resp`, each RESP command array is one line, its words
  joined by spaces. Lines wait in a buffer while the script sends, sleeps or runs actions.
- A state runs its steps on entry, then answers each line with the first rule that matches
  (else `else`; with no `else` the line is ignored, with a `Log`), until an action leaves it.
  A state whose steps end without rules closes the connection.
- Memory is bounded: a line, a variable and a stored value hold at most `MAX_LINE` bytes;
  the store holds at most `STORE_LIMIT` keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass

from ..script_model import Action, Ref, Rule, Script, State, Text

#: The longest line (or RESP command) kept whole; longer ones are cut into pieces.
MAX_LINE = 64 * 1024
#: The most keys a server's store holds; a `store` of a new key beyond it is refused (Log).
STORE_LIMIT = 10_000
#: The most words of one RESP command.
MAX_RESP_WORDS = 1024


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Log:
    text: str


@dataclass(frozen=True)
class Close:
    reset: bool = False  # abort with a TCP reset (RST) instead of a normal close


ScriptAction = Send | Sleep | Log | Close


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _show(line: str, limit: int = 60) -> str:
    """A line as a log shows it: quoted, cut short."""
    return repr(line if len(line) <= limit else line[:limit] + "…")


class Conversation:
    """One connection's run of a script (see the module's rules)."""

    def __init__(self, script: Script, store: MutableMapping[str, str] | None = None) -> None:
        self.script = script
        self.store: MutableMapping[str, str] = {} if store is None else store
        self.state: State = script.start
        self.pending: deque[Action] = deque()
        self.in_rules = False  # the steps are done: lines go to the rules
        self.expecting: Action | None = None
        self.variables: dict[str, str] = {}
        self.groups: tuple[str, ...] = ("",)
        self.buffer = bytearray()
        self.lines: deque[str] = deque()
        self.eof = False
        self.reading = False
        self.wait_number = 0
        self.sleeping = False
        self.closed = False
        self.out: list[ScriptAction] = []

    # -- the interface ---------------------------------------------------------------------

    @property
    def read_timeout(self) -> float | None:
        """How long the current wait for a line may last (None: no limit)."""
        return self.script.wait_limit(self.state, self.expecting)

    def start(self) -> list[ScriptAction]:
        """The connection is open: the banner, then the first state's steps."""
        if self.script.banner is not None:
            self.out.append(Send(self.render(self.script.banner)))
        self.enter(self.state)
        return self.run()

    def receive(self, data: bytes) -> list[ScriptAction]:
        """Take what the client sent (b"": it closed its side)."""
        if self.closed:
            return []
        if not data:
            self.eof = True
            if self.buffer and not self.script.resp:
                self.lines.append(_text(bytes(self.buffer)).rstrip("\r"))
            self.buffer.clear()
        else:
            self.buffer += data
            self.cut_lines()
        return self.run()

    def timed_out(self) -> list[ScriptAction]:
        """The wait for a line outlasted `read_timeout`."""
        if self.closed or not self.reading:
            return []
        self.reading = False
        seconds = self.read_timeout
        waiting = (
            f"expect {self.expecting.pattern.source}"
            if self.expecting and self.expecting.pattern
            else f"state {self.state.name}"
        )
        rule = self.state.on_timeout
        if rule is None:
            self.out.append(Log(f"no line within {seconds:g}s ({waiting}): closing"))
            self.close()
            return self.flush()
        self.out.append(Log(f"no line within {seconds:g}s ({waiting}): on timeout"))
        self.expecting = None
        self.groups = ("",)
        self.pending = deque(rule.actions)
        return self.run()

    def woke(self) -> list[ScriptAction]:
        """A `Sleep` is over: go on."""
        self.sleeping = False
        return self.run()

    # -- input -------------------------------------------------------------------------------

    def cut_lines(self) -> None:
        if self.script.resp:
            self.cut_resp()
            return
        buffer = self.buffer
        while True:
            end = buffer.find(b"\n", 0, MAX_LINE)
            if end < 0:
                if len(buffer) < MAX_LINE:
                    return
                end = MAX_LINE - 1
                self.lines.append(_text(bytes(buffer[: end + 1])))
            else:
                self.lines.append(_text(bytes(buffer[:end])).removesuffix("\r"))
            del buffer[: end + 1]

    def cut_resp(self) -> None:
        """RESP: `*N` arrays of `$LEN` bulk strings are one line each; other lines as typed
        (an inline command)."""
        buffer = self.buffer
        while buffer:
            if buffer[:1] != b"*":
                end = buffer.find(b"\n", 0, MAX_LINE)
                if end < 0:
                    if len(buffer) >= MAX_LINE:
                        self.bad_resp("an inline command too long")
                    return
                self.lines.append(_text(bytes(buffer[:end])).rstrip("\r"))
                del buffer[: end + 1]
                continue
            parsed = self.parse_array(buffer)
            if parsed is None:
                if len(buffer) >= MAX_LINE + 64 * MAX_RESP_WORDS:
                    self.bad_resp("a command too long")
                return
            words, used = parsed
            if words is None:
                return
            self.lines.append(" ".join(words))
            del buffer[:used]

    def parse_array(self, buffer: bytearray) -> tuple[list[str] | None, int] | None:
        """The words of the array at the start of `buffer` and the bytes it takes, or None
        while it is incomplete; (None, 0) after a protocol error."""
        position = 0

        def header(marker: bytes) -> int | None:
            nonlocal position
            end = buffer.find(b"\r\n", position, position + 32)
            if end < 0:
                if len(buffer) - position >= 32:
                    raise ValueError("a header line too long")
                return None
            if buffer[position : position + 1] != marker:
                raise ValueError(f"expected {marker.decode()} at byte {position}")
            number = int(buffer[position + 1 : end])
            position = end + 2
            return number

        try:
            count = header(b"*")
            if count is None:
                return None
            if not 0 <= count <= MAX_RESP_WORDS:
                raise ValueError(f"an array of {count} words")
            words = []
            for _ in range(count):
                size = header(b"$")
                if size is None:
                    return None
                if not 0 <= size <= MAX_LINE:
                    raise ValueError(f"a word of {size} bytes")
                if len(buffer) < position + size + 2:
                    return None
                words.append(_text(bytes(buffer[position : position + size])))
                position += size + 2
        except ValueError as exc:
            self.bad_resp(str(exc))
            return None, 0
        return words, position

    def bad_resp(self, what: str) -> None:
        self.buffer.clear()
        self.out.append(Log(f"not RESP ({what}): closing"))
        self.close()

    # -- running -----------------------------------------------------------------------------

    def flush(self) -> list[ScriptAction]:
        out, self.out = self.out, []
        return out

    def run(self) -> list[ScriptAction]:
        """Carry on until the script needs a line that has not come, sleeps or closes."""
        while not self.closed and not self.sleeping:
            if self.expecting is not None or (not self.pending and self.in_rules):
                if not self.lines:
                    if self.eof:
                        self.client_gone()
                    elif not self.reading:
                        self.reading = True
                        self.wait_number += 1
                    break
                self.reading = False
                line = self.lines.popleft()
                if self.expecting is not None:
                    self.check_expected(self.expecting, line)
                else:
                    self.answer(line)
                continue
            if not self.pending:
                if self.state.rules or self.state.otherwise or self.state.on_timeout:
                    self.in_rules = True
                    continue
                self.close()  # the end of the script
                break
            self.perform(self.pending.popleft())
        return self.flush()

    def client_gone(self) -> None:
        """The client closed its side and no line is left: the conversation ends."""
        expect = self.expecting
        if expect is not None and expect.pattern is not None:
            self.out.append(Log(f"the client closed before expect {expect.pattern.source}"))
        self.close()

    def enter(self, state: State) -> None:
        self.state = state
        self.pending = deque(state.steps)
        self.in_rules = False
        self.expecting = None

    def check_expected(self, expect: Action, line: str) -> None:
        self.expecting = None
        assert expect.pattern is not None
        found = expect.pattern.match(line)
        if found is None:
            self.out.append(
                Log(
                    f"line {expect.line} expected {expect.pattern.source}, got {_show(line)}: "
                    "closing"
                )
            )
            self.close()
            return
        self.take(found)

    def answer(self, line: str) -> None:
        """Run the first rule that matches `line` (else `else`, else log it)."""
        for rule in self.state.rules:
            assert rule.pattern is not None
            found = rule.pattern.match(line)
            if found is None or not self.guard_holds(rule, found[0]):
                continue
            self.take(found)
            self.pending = deque(rule.actions)
            return
        otherwise = self.state.otherwise
        if otherwise is None:
            self.out.append(Log(f"no rule of state {self.state.name} matches {_show(line)}"))
            return
        self.groups = (line,)
        self.pending = deque(otherwise.actions)

    def guard_holds(self, rule: Rule, groups: tuple[str, ...]) -> bool:
        if rule.stored is None:
            return True
        key = _text(self.render(rule.stored, groups))
        value = self.store.get(key)
        if value is None:
            return False
        self.variables["stored"] = value
        return True

    def take(self, found: tuple[tuple[str, ...], dict[str, str]]) -> None:
        self.groups, named = found
        self.variables.update(named)

    def perform(self, action: Action) -> None:
        name = action.name
        if name == "send":
            assert action.text is not None
            self.out.append(Send(self.render(action.text)))
        elif name == "expect":
            self.expecting = action
        elif name == "wait":
            assert action.seconds is not None
            self.out.append(Sleep(action.seconds))
            self.sleeping = True
        elif name == "set":
            assert action.text is not None
            self.variables[action.var] = _text(self.render(action.text)[:MAX_LINE])
        elif name == "store":
            assert action.text is not None and action.value is not None
            key = _text(self.render(action.text)[:MAX_LINE])
            if key not in self.store and len(self.store) >= STORE_LIMIT:
                self.out.append(Log(f"the store is full ({STORE_LIMIT} keys): {key!r} not kept"))
                return
            self.store[key] = _text(self.render(action.value)[:MAX_LINE])
        elif name == "unstore":
            assert action.text is not None
            self.store.pop(_text(self.render(action.text)), None)
        elif name == "log":
            assert action.text is not None
            self.out.append(Log(_text(self.render(action.text))))
        elif name == "goto":
            self.enter(self.script.states[action.var])
        else:  # close, reset
            self.close(reset=name == "reset")

    def close(self, reset: bool = False) -> None:
        self.out.append(Close(reset))
        self.closed = True
        self.reading = False
        self.pending.clear()
        self.lines.clear()

    def render(self, text: Text, groups: tuple[str, ...] | None = None) -> bytes:
        """The bytes of `text` with its references filled in."""
        groups = self.groups if groups is None else groups
        out = bytearray()
        for piece in text.pieces:
            if not isinstance(piece, Ref):
                out += piece
                continue
            if piece.kind == "group":
                assert isinstance(piece.key, int)
                value = groups[piece.key] if piece.key < len(groups) else ""
            else:
                assert isinstance(piece.key, str)
                value = self.variables.get(piece.key, "")
            data = value.encode("utf-8", "surrogateescape")
            out += str(len(data)).encode() if piece.length else data
        return bytes(out)
