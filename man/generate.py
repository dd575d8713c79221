"""Keep man/sockserve.1 in step with the click application.

    python man/generate.py           # rewrite the generated parts of the page
    python man/generate.py --check   # exit 1 if the page is out of date

The page is written by hand, except the regions between `.\\" BEGIN GENERATED: name` and
`.\\" END GENERATED: name`, which this script fills from the code: the title line (version), the
OPTIONS (every option of `sockserve.cli.main`, in its --help section, with its help and its
default), the builtin handlers and the exit statuses. tests/test_docs.py fails when the page
differs from what this script would write.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import click

from sockserve import __version__
from sockserve.builtins import BUILTINS
from sockserve.cli import main as cli_main
from sockserve.helptext import EXIT_CODES, option_metavar, section_params

PAGE = Path(__file__).resolve().parent / "sockserve.1"
DATE = "2026-12-07"  # the page's date; change it with the hand-written text

#: Defaults for options whose default is None and whose help names none ("": the help says).
IMPLIED_DEFAULTS = {
    "family": "",
    "type": "",
    "reply": "none",
    "reply_file": "none",
    "banner": "none",
    "banner_file": "none",
    "allow": "every peer",
    "deny": "none",
    "allow_file": "none",
    "deny_file": "none",
    "allow_uid": "every user",
    "allow_gid": "every group",
    "exec": "none",
    "sh_exec": "none",
    "fd": "none",
    "fd_name": "the only socket passed",
    "script": "none",
    "forward": "none",
}
_UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3 marks "no default" with a sentinel

_DEFAULT_IN_HELP = re.compile(r"\s*\[default: ([^\]]*)\]")


def roff(text: str) -> str:
    """Escape text for roff (backslashes, hyphens that must copy as ASCII, a leading dot or
    quote) and wrap it in lines of at most 80 bytes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = textwrap.wrap(text, 78, break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def option_head(param: click.Option, ctx: click.Context) -> str:
    names = ", ".join(f"\\fB{roff(name)}\\fR" for name in (*param.opts, *param.secondary_opts))
    metavar = option_metavar(param, ctx)
    if isinstance(param.type, click.Choice):
        metavar = "|".join(f"\\fB{roff(str(c))}\\fR" for c in param.type.choices)
    elif metavar:
        metavar = f"\\fI{roff(metavar)}\\fR"
    return f"{names} {metavar}" if metavar else names


def option_default(param: click.Option, ctx: click.Context, help_default: str | None) -> str | None:
    """The 'Default: ...' sentence; raise when an option has none to state."""
    name = param.name or ""
    if param.is_eager and not param.expose_value:
        return None  # --help, --version, --completion act and exit
    value = param.get_default(ctx, call=False)
    if value is _UNSET:
        value = None
    if help_default is not None:
        return f"Default: {roff(help_default)}."
    if param.is_flag and param.secondary_opts:
        flag = param.opts[0] if value else param.secondary_opts[0]
        return f"Default: \\fB{roff(flag)}\\fR."
    if param.is_flag or param.count:
        return "Off by default."
    if value is not None:
        return f"Default: \\fB{roff(str(value))}\\fR."
    if name in IMPLIED_DEFAULTS:
        return f"Default: {roff(IMPLIED_DEFAULTS[name])}." if IMPLIED_DEFAULTS[name] else None
    raise SystemExit(
        f"man/generate.py: option {param.opts[0]} has no default to state: add "
        "'[default: ...]' to its help, or an entry to IMPLIED_DEFAULTS"
    )


def options_region() -> str:
    ctx = click.Context(cli_main, info_name="sockserve", **cli_main.context_settings)
    out: list[str] = []
    current = None
    for title, param in section_params(cli_main, ctx):
        assert isinstance(param, click.Option)
        if title != current:
            out.append(f".SS {title}")
            current = title
        help_text = param.help or ""
        match = _DEFAULT_IN_HELP.search(help_text)
        help_default = match.group(1) if match else None
        help_text = _DEFAULT_IN_HELP.sub("", help_text)
        out += [".TP", option_head(param, ctx), roff(sentence(help_text))]
        default = option_default(param, ctx, help_default)
        if default:
            out.append(default)
    return "\n".join(out)


def builtins_region() -> str:
    out: list[str] = []
    for name, what in BUILTINS.items():
        out += [".TP", f".B {name}", roff(sentence(what))]
    return "\n".join(out)


def exit_status_region() -> str:
    out: list[str] = []
    for code, meaning in EXIT_CODES:
        out += [".TP", f".B {code}", roff(sentence(meaning))]
    return "\n".join(out)


def title_region() -> str:
    return f'.TH SOCKSERVE 1 {DATE} "sockserve {__version__}" "User Commands"'


REGIONS: dict[str, Callable[[], str]] = {
    "title": title_region,
    "options": options_region,
    "builtins": builtins_region,
    "exit-status": exit_status_region,
}


def render(page: str) -> str:
    """`page` with every generated region rewritten."""
    for name, build in REGIONS.items():
        begin = f'.\\" BEGIN GENERATED: {name}\n'
        end = f'.\\" END GENERATED: {name}\n'
        start = page.index(begin) + len(begin)
        stop = page.index(end, start)
        page = page[:start] + build() + "\n" + page[stop:]
    return page


def main(argv: list[str]) -> int:
    current = PAGE.read_text()
    wanted = render(current)
    if wanted == current:
        return 0
    if "--check" in argv:
        print("man/sockserve.1 is out of date: run python man/generate.py", file=sys.stderr)
        return 1
    PAGE.write_text(wanted)
    print("wrote man/sockserve.1")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
