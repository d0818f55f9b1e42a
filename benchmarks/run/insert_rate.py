"""Business calendars' cost to ticket inserts (issue 12): ``python -m
benchmarks.insert_rate`` as a child process, and the business-hours/24/7 ratio for the
targets (>= 0.8x)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .child import run_child_benchmark


def run_insert_rate(args: Sequence[str], workdir: Path, timeout: float) -> dict[str, Any]:
    return run_child_benchmark("insert_rate", args, workdir, timeout)


def lowest_ratio(doc: dict[str, Any]) -> float | None:
    """The lowest business-hours/24/7 insert ratio over the client counts measured."""
    ratios = [
        v["ratio"]
        for v in (doc.get("ratios") or {}).values()
        if isinstance(v, dict) and isinstance(v.get("ratio"), int | float)
    ]
    return min(ratios) if ratios else None
