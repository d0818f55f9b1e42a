"""The writers' cost: ``python -m benchmarks.writer_overhead`` as a child process, and
its ratio at a client count for the targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .child import run_child_benchmark


def run_writer_overhead(args: Sequence[str], workdir: Path, timeout: float) -> dict[str, Any]:
    return run_child_benchmark("writer_overhead", args, workdir, timeout)


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
