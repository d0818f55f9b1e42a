"""The writers' cost: ``python -m benchmarks.writer_overhead`` as a child process, and
its ratio at a client count for the targets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import ROOT, _child_env, log, stop_pid


def run_writer_overhead(args: Sequence[str], workdir: Path, timeout: float) -> dict[str, Any]:
    module = ROOT / "benchmarks" / "writer_overhead.py"
    if not module.exists():
        return {"skipped": "benchmarks/writer_overhead.py does not exist yet"}
    out = workdir / "writer_overhead.json"
    cmd = [sys.executable, "-m", "benchmarks.writer_overhead", "--json", str(out), *args]
    log("writer_overhead: " + " ".join(cmd[1:]))
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
        log(f"writer_overhead: still running after {timeout:g}s; stopping it")
        stop_pid(proc, "writer_overhead", grace=30)
        return {"error": f"timed out after {timeout:g}s"}
    finally:
        if proc.poll() is None:
            stop_pid(proc, "writer_overhead", grace=30)
    if code != 0 or not out.exists():
        return {"error": f"exit code {code}"}
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def overhead_ratio_at(doc: dict[str, Any], clients: int) -> float | None:
    """The installed/bare TPS ratio at ``clients``, from writer_overhead's JSON."""
    for key in ("ratios", "ratio", "summary", "results"):
        section = doc.get(key)
        if isinstance(section, dict):
            for k in (str(clients), clients, f"clients_{clients}"):
                v = section.get(k)
                if isinstance(v, int | float):
                    return float(v)
                if isinstance(v, dict):
                    for name in ("b_over_a", "b/a", "installed", "sla_daemon", "b"):
                        if isinstance(v.get(name), int | float):
                            return float(v[name])
    return None
