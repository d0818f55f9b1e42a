"""A benchmark that is a program of its own (``python -m benchmarks.X --json FILE``),
run as a child process with a time limit, stopped by PID, its JSON document read back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import ROOT, _child_env, log, stop_pid


def run_child_benchmark(
    name: str, args: Sequence[str], workdir: Path, timeout: float
) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py``; its document, or ``{"error": ...}``."""
    module = ROOT / "benchmarks" / f"{name}.py"
    if not module.exists():
        return {"skipped": f"benchmarks/{name}.py does not exist yet"}
    out = workdir / f"{name}.json"
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json", str(out), *args]
    log(f"{name}: " + " ".join(cmd[1:]))
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_child_env({}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # the same document goes to --json
        stderr=None,  # its progress, on our stderr
        start_new_session=True,
    )
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name}: still running after {timeout:g}s; stopping it")
        stop_pid(proc, name, grace=30)
        return {"error": f"timed out after {timeout:g}s"}
    finally:
        if proc.poll() is None:
            stop_pid(proc, name, grace=30)
    if code != 0 or not out.exists():
        return {"error": f"exit code {code}"}
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc
