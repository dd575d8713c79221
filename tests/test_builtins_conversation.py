"""The script interpreter alone (`builtins.conversation`): lines in, actions out, no socket."""

from __future__ import annotations

from pathlib import Path

from sockserve.builtins.conversation import (
    MAX_LINE,
    STORE_LIMIT,
    Close,
    Conversation,
    Log,
    Send,
    Sleep,
)
from sockserve.script_file import parse_script, read_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def talk(source: str, store: dict[str, str] | None = None) -> Conversation:
    return Conversation(parse_script(source), store)


def sent(actions: list) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def test_banner_steps_then_the_end_closes():
    conv = talk("banner hi\\n\nexpect /^(\\w+)$/\nsend bye \\1\\n\n")
    assert conv.start() == [Send(b"hi\n")]
    assert conv.reading and conv.wait_number == 1
    assert conv.receive(b"bo") == []  # no whole line yet
    assert conv.receive(b"b\r\n") == [Send(b"bye bob\n"), Close()]
    assert conv.closed and conv.receive(b"more\n") == []


def test_first_matching_rule_wins_and_rules_loop():
    conv = talk(
        'on /^GET (\\w+)/  send got \\1\\n\non /^GET/  send never\\n\non "Q"\n    close\n'
        "else send what? {0}\\n\n"
    )
    assert conv.start() == []
    assert conv.receive(b"GET a\nGET b\nhuh\n") == [
        Send(b"got a\n"),
        Send(b"got b\n"),
        Send(b"what? huh\n"),
    ]
    assert conv.receive(b"Q\n") == [Close()]


def test_unmatched_line_without_else_is_logged_and_ignored():
    conv = talk('on "a" send A\n')
    conv.start()
    assert conv.receive(b"b\na\n") == [Log("no rule of state start matches 'b'"), Send(b"A")]


def test_goto_runs_the_states_steps_and_variables_persist():
    conv = talk(
        "on /^name (?P<who>\\w+)/\n    set greeting hello {who}\n    goto greet\n"
        "state greet\nsend {greeting} ({#who})\\n\ngoto start\n"
    )
    conv.start()
    assert conv.receive(b"name ann\n") == [Send(b"hello ann (3)\n")]
    assert not conv.closed and conv.reading


def test_expect_mismatch_closes_with_a_log_line():
    conv = talk('expect "HELLO"\nsend ok\n')
    conv.start()
    assert conv.receive(b"hullo\n") == [
        Log("line 1 expected \"HELLO\", got 'hullo': closing"),
        Close(),
    ]


def test_timeouts_close_or_run_on_timeout():
    conv = talk("timeout 2s\nexpect /x/ within 1s\nsend late\n")
    conv.start()
    assert conv.read_timeout == 1.0
    assert conv.timed_out() == [Log("no line within 1s (expect /x/): closing"), Close()]

    conv = talk('timeout 2s\non "a" send A\non timeout send ping\\n\n')
    conv.start()
    first = conv.wait_number
    assert conv.read_timeout == 2.0
    assert conv.timed_out() == [
        Log("no line within 2s (state start): on timeout"),
        Send(b"ping\n"),
    ]
    assert conv.reading and conv.wait_number == first + 1  # a new wait, a new limit


def test_wait_sleeps_and_lines_wait_meanwhile():
    conv = talk('on "a"\n    wait 50ms\n    send A\n')
    conv.start()
    assert conv.receive(b"a\na\n") == [Sleep(0.05)]
    assert conv.sleeping and not conv.reading
    assert conv.woke() == [Send(b"A"), Sleep(0.05)]
    assert conv.woke() == [Send(b"A")]
    assert conv.reading


def test_eof_ends_the_conversation_after_the_last_line():
    conv = talk('on "a" send A\non "b" send B\n')
    conv.start()
    assert conv.receive(b"a\nb") == [Send(b"A")]
    assert conv.receive(b"") == [Send(b"B"), Close()]
    conv = talk('expect "a"\n')
    conv.start()
    assert conv.receive(b"") == [Log('the client closed before expect "a"'), Close()]


def test_reset_closes_with_a_reset():
    conv = talk('on "boom" reset\n')
    conv.start()
    assert conv.receive(b"boom\n") == [Close(reset=True)]


def test_long_lines_are_cut():
    conv = talk("on /^(.*)$/ send {#1},\n")
    conv.start()
    assert sent(conv.receive(b"x" * (MAX_LINE + 10) + b"\n")) == f"{MAX_LINE},10,".encode()


def test_store_is_shared_and_bounded():
    store: dict[str, str] = {}
    source = (
        "on /^set (\\S+) (.*)/\n    store \\1 \\2\non /^get (\\S+)/ if stored \\1 send {stored}\n"
        "on /^get/ send nil\non /^del (\\S+)/\n    unstore \\1\n"
    )
    one, two = talk(source, store), talk(source, store)
    one.start()
    two.start()
    assert one.receive(b"set k v w\nget k\n") == [Send(b"v w")]
    assert two.receive(b"get k\ndel k\nget k\n") == [Send(b"v w"), Send(b"nil")]
    store.update({str(i): "" for i in range(STORE_LIMIT)})
    assert one.receive(b"set new 1\n") == [
        Log(f"the store is full ({STORE_LIMIT} keys): 'new' not kept")
    ]


def test_resp_arrays_are_lines_and_inline_commands_too():
    conv = talk("resp\non /^(.*)$/ send [\\1]\n")
    conv.start()
    command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nw\n\r\n"
    assert conv.receive(command[:9]) == []  # an array arrives in pieces
    assert conv.receive(command[9:] + b"PING\r\n") == [Send(b"[SET k v\r\nw\n]"), Send(b"[PING]")]
    assert conv.receive(b"*1\r\n:3\r\n") == [
        Log("not RESP (expected $ at byte 4): closing"),
        Close(),
    ]


def test_smtp_example_accepts_one_message():
    conv = Conversation(read_script(EXAMPLES / "smtp.script"))
    assert conv.start() == [Send(b"220 sockserve ESMTP test server\r\n")]
    dialogue = [
        (b"EHLO client\r\n", b"250 hello client\r\n"),
        (b"MAIL FROM:<a@x>\r\n", b"250 sender ok\r\n"),
        (b"RCPT TO:<b@y>\r\n", b"250 recipient ok\r\n"),
        (b"DATA\r\n", b"354 end data with <CR><LF>.<CR><LF>\r\n"),
        (b"Subject: hi\r\n\r\nbody\r\n", b""),
        (b".\r\n", b"250 queued\r\n"),
        (b"MAIL FROM:<a@x>\r\n", b"452 one message per connection\r\n"),
    ]
    for line, reply in dialogue:
        actions = conv.receive(line)
        assert sent(actions) == reply, line
    assert conv.receive(b"QUIT\r\n") == [Send(b"221 bye\r\n"), Close()]
