"""`python -m sockserve` runs the command line tool."""

from __future__ import annotations

from .cli import command

if __name__ == "__main__":
    command()
