"""ruff and mypy stay clean: run as tests so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_clean(command: tuple[str, ...]) -> None:
    if shutil.which(command[0]) is None and run(command[0], "--version").returncode != 0:
        pytest.fail(f"{command[0]} is not installed: pip install -e '.[test]'")
    result = run(*command)
    assert result.returncode == 0, result.stdout + result.stderr
