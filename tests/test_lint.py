"""The dev tools are part of the test command: ``ruff check .`` and ``mypy`` (strict on pipeline/, router/ and
metering/) exit 0, each with the settings in pyproject.toml, so a lint or type error fails the suite with the tool's
own report in the message. mypy keeps its incremental cache in .mypy_cache (it writes its own .gitignore): after
the first run only changed modules are checked again, a few seconds; a cold run (a fresh checkout) takes ~15 s on a
quiet 2-core machine (litellm is not followed: pyproject.toml), longer under load, hence the longer timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    # The tools from this interpreter's environment (the dev layer installs both), run from the repository root so
    # they read its pyproject.toml.
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=580)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-fix", "--output-format", "concise", ".")
    assert done.returncode == 0, f"ruff check . exited {done.returncode}:\n{done.stdout}{done.stderr}"


@pytest.mark.timeout(600)
def test_mypy_finds_nothing() -> None:
    done = _run("mypy")
    assert done.returncode == 0, f"mypy exited {done.returncode}:\n{done.stdout}{done.stderr}"
    # The files come from the config: a mypy that checked nothing would pass vacuously.
    assert "Success: no issues found in" in done.stdout, done.stdout
