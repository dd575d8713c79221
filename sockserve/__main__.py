"""`python -m sockserve` runs the command line tool (as the `sockserve` script does)."""

from __future__ import annotations

if __name__ == "__main__":
    from .entry import main

    main()
