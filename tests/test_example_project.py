"""The pytest plugin as a user gets it: a wheel of sockserve built with `python -m build`,
installed in a fresh venv next to the example project (tests/example_project), whose own
pytest run must pass. Slow (a build, a venv, installs): run with --run-slow, as CI does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "example_project"
pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (within 5 minutes); fail with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_example_project_passes_against_the_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT)
    (wheel,) = dist.glob("sockserve-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    project = tmp_path / "example_project"  # a copy: the checkout is left as it is
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(python, "-m", "pip", "install", "-q", wheel, f"{project}[test]")

    where = run(python, "-c", "import sockserve; print(sockserve.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), "sockserve must come from the wheel"
    tests = run(python, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs", cwd=project)
    out = tests.stdout
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, out
    assert "test_client.py::test_request_gets_the_reply_line PASSED" in out
    assert "test_faults.py::test_verifies_the_servers_certificate PASSED" in out
    assert not [line for line in out.splitlines() if line.startswith("SKIPPED")], out
