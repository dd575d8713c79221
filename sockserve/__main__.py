"""`python -m sockserve` runs the command line tool (as the `sockserve` script does)."""

from __future__ import annotations

import gc

if __name__ == "__main__":
    gc.disable()  # runner.serve turns it back on once the server is built

from .entry import main  # noqa: E402

if __name__ == "__main__":
    main()
