"""The start-up anchor: the bare stdlib socketserver echo script, plus `import click`.

    python benchmarks/bare_stdlib_click.py 127.0.0.1:PORT

A command-line tool built on click pays for importing it (about as much as the rest of a
start-up) before it parses a single option. `sockserve tcp 127.0.0.1:PORT -H echo -c thread`
should start about as fast as this script; `bare_stdlib.py` is the same without click.
"""

# click first: importing the bare script runs its server, which never returns.
import click  # noqa: F401, I001  what any click command imports before it starts
import bare_stdlib  # noqa: F401, E402  the bare script itself, run as it is imported
