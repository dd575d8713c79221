"""Start-up in instructions (callgrind): exec -> first echoed byte, the command and its anchor.

    python benchmarks/startup_callgrind.py

Wall-clock start-up figures are noisy on a shared machine; instruction counts are not. Each
case runs once under `valgrind --tool=callgrind` (PYTHONHASHSEED=0, bytecode cached first):
this script connects until the server listens, sends a byte, reads it back, then ends the
server by its pid with SIGVTALRM, which nothing handles (valgrind prints its count as the
process dies, and no shutdown is counted). Also `import sockserve.cli` alone, ended by
os._exit (no interpreter teardown). Needs valgrind; run it with the Python that has sockserve.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
SCRIPT = Path(PY).with_name("sockserve")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [PY, "-m", "sockserve"]
SERVE = ["tcp", "127.0.0.1:PORT", "-H", "echo", "-c", "thread", "-q"]
CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collected(stderr: str) -> int:
    found = re.search(r"Collected : (\d+)", stderr)
    if found is None:
        raise SystemExit(f"no callgrind count in:\n{stderr}")
    return int(found[1])


def first_echo(argv: list[str], wrapper: list[str]) -> str:
    """Start the server `argv` under `wrapper`, echo one byte, end it; return its stderr."""
    port = free_port()
    argv = [arg.replace("PORT", str(port)) for arg in argv]
    proc = subprocess.Popen(
        wrapper + argv,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{argv} did not start") from None
                time.sleep(0.01)
        with client:
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        os.kill(proc.pid, signal.SIGVTALRM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


def to_first_echo(argv: list[str]) -> int:
    """Instructions from exec to the first echoed byte; a run without valgrind first fills
    the bytecode cache."""
    first_echo(argv, [])
    return collected(first_echo(argv, CALLGRIND))


def import_only(code: str) -> int:
    env = environment()
    argv = [PY, "-c", f"{code}; import os; os._exit(0)"]
    subprocess.run(argv, env=env, check=True)  # fills the bytecode cache
    out = subprocess.run(CALLGRIND + argv, env=env, capture_output=True, text=True, check=True)
    return collected(out.stderr)


def main() -> None:
    anchor = to_first_echo([PY, str(HERE / "bare_stdlib_click.py"), "127.0.0.1:PORT"])
    rows = {
        "anchor: bare stdlib script + click": anchor,
        "sockserve " + " ".join(SERVE): to_first_echo([*COMMAND, *SERVE]),
        "import click, socketserver": import_only("import click, socketserver"),
        "import sockserve.cli": import_only("import sockserve.cli"),
    }
    for name, count in rows.items():
        print(f"{name:60s} {count / 1e6:8.1f} M  {count / anchor:5.2f}x anchor")


if __name__ == "__main__":
    main()
