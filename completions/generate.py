"""Write completions/sockserve.{bash,zsh,fish} from the click application.

    python completions/generate.py           # rewrite the three scripts
    python completions/generate.py --check   # exit 1 if one is out of date

Each script is exactly what `sockserve --completion SHELL` prints; tests/test_completion.py fails
when a checked-in script differs from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sockserve.cli import main as cli_main
from sockserve.completion import COMPLETION_CLASSES, completion_source

HERE = Path(__file__).resolve().parent


def render() -> dict[Path, str]:
    """Path of each script → its text."""
    return {
        HERE / f"sockserve.{shell}": completion_source(cli_main, shell)
        for shell in COMPLETION_CLASSES
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if not check:
            path.write_text(text)
    if check and stale:
        print(
            f"out of date: {', '.join(stale)}; run python completions/generate.py", file=sys.stderr
        )
        return 1
    for name in stale:
        print(f"wrote completions/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
