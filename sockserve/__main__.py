"""`python -m sockserve` runs the command line tool (as the `sockserve` script does)."""

from __future__ import annotations

if __name__ == "__main__":
    import gc

    gc.disable()  # runner.serve turns it back on once the server is built

    from .entry import main

    main()
