"""--script files: what the parser builds, and each mistake as one FILE:LINE message."""

from __future__ import annotations

import re

import pytest

from sockserve.errors import UsageError
from sockserve.script_file import ScriptError, parse_script, read_script
from sockserve.script_model import Ref, Text


def test_settings_states_steps_and_rules():
    script = parse_script(
        "# a comment\n"
        "banner 220 ready\\r\\n\n"
        "timeout 2s\n"
        "\n"
        "expect /^HELO (\\w+)/i within 500ms\n"
        "send 250 \\1\\r\\n\n"
        'on "QUIT"  send 221 bye\\r\\n\n'
        "    close\n"
        "else send ?\\n\n"
        "state other\n"
        "timeout 1m\n"
        "on timeout close\n"
    )
    assert script.banner == Text((b"220 ready\r\n",))
    assert script.timeout == 2.0
    start, other = script.states.values()
    assert start.name == "start" and other.name == "other"
    assert [step.name for step in start.steps] == ["expect", "send"]
    assert start.steps[0].seconds == 0.5
    assert start.steps[1].text == Text((b"250 ", Ref("group", 1), b"\r\n"))
    (quit_rule,) = start.rules
    assert [a.name for a in quit_rule.actions] == ["send", "close"]
    assert start.otherwise is not None and start.otherwise.actions[0].text == Text((b"?\n",))
    assert other.timeout == 60.0 and other.on_timeout is not None
    assert script.wait_limit(start) == 2.0 and script.wait_limit(other) == 60.0
    assert script.wait_limit(start, start.steps[0]) == 0.5


def test_texts_references_escapes_and_braces():
    script = parse_script(
        'set quoted "  two spaces  "\n'
        'on /(?P<key>\\w+) (\\w+)/ send ${#key}\\r\\n{key}{2}\\\\1 {{x}} \\{ {"json": 1}\n'
    )
    assert script.start.steps[0].text == Text((b"  two spaces  ",))
    (rule,) = script.start.rules
    assert rule.actions[0].text == Text(
        (
            b"$",
            Ref("var", "key", length=True),
            b"\r\n",
            Ref("var", "key"),
            Ref("group", 2),
            b"\\",
            b"1 ",
            b"{",
            b"x",
            b"}",
            b" ",
            b"{",
            b' {"json": 1}',
        )
    )


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("sned hello\n", 1, "unknown statement 'sned'"),
        ("on /x/\n    sned hi\n", 2, "unknown action 'sned'"),
        ("\n\non /(unclosed/ send x\n", 3, "bad regex /(unclosed/: missing ), unterminated"),
        ("on /x send y\n", 1, "the pattern has no closing /"),
        ("on /x/q send y\n", 1, "unknown regex flag 'q'"),
        ("on hello send y\n", 1, "expected a pattern"),
        ('on "a"\n    goto nowhere\n', 2, "goto nowhere: no state of that name"),
        ("on /(a)/ send \\2\n", 1, "group 2: the rule's pattern has 1 group"),
        ("send {who}\n", 1, "{who}: nothing sets it"),
        ("wait soon\n", 1, "expected seconds"),
        ("timeout 0\n", 1, "expected more than 0 seconds"),
        ("expect /a/ within\n", 1, "expected `within DURATION`"),
        ("send\n", 1, "`send` needs an argument"),
        ("close now\n", 1, "`close` takes nothing after it"),
        ("  send x\n", 1, "an indented line is an action of a rule"),
        ('on "a" send x\nsend y\n', 2, "`send` after the state's rules"),
        ("send x\nbanner hi\n", 2, "`banner` is a setting of the script"),
        ("state a\nstate a\n", 2, "state 'a' is already defined (line 1)"),
        ("state 1-2\n", 1, "bad state name '1-2'"),
        ("else\nelse\n", 2, "already has an `else` (line 1)"),
        ("on timeout\non timeout\n", 2, "already has an `on timeout` (line 1)"),
        ("on /a/ if stored\n", 1, "expected `if stored KEY`"),
        ("send \\x4\n", 1, "invalid escape sequence"),
        ('on "a"\n    close\n    send late\n', 3, "`send` after `close` never runs"),
        ("resp please\n", 1, "`resp` takes nothing after it"),
    ],
)
def test_each_mistake_names_its_line(source, line, message):
    with pytest.raises(ScriptError, match=re.escape(message)) as caught:
        parse_script(source)
    assert caught.value.line == line


def test_read_script_says_file_and_line(tmp_path):
    path = tmp_path / "bad.script"
    path.write_text("banner hi\\r\\n\non /(/ send x\n")
    with pytest.raises(UsageError) as caught:
        read_script(path)
    assert str(caught.value).startswith(f"{path}:2: bad regex /(/: ")
    with pytest.raises(UsageError, match="cannot read --script .*missing.script: No such file"):
        read_script(tmp_path / "missing.script")


def test_the_examples_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples"
    for path in sorted(root.glob("*.script")):
        assert read_script(path).states, path
