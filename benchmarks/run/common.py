"""What every part shares: paths, fixed ids, sizes, progress, statistics, and the
environment and stopping of child processes."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("latency", "backlog", "live", "escalation", "sweep", "writer_overhead", "insert_rate")
FROM_NUMBER = "+14155238886"
TEMPLATE = "bench_template"
MUNICIPALITY = "00000000-0000-4000-8000-00000000a001"
TEAM = "00000000-0000-4000-8000-00000000a002"
MANAGER = "00000000-0000-4000-8000-00000000a003"
STAFF = "00000000-0000-4000-8000-00000000a004"
USERS = 1000
WRITERS = 8
LANGUAGES = ("en", "zu", "af")

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- sizes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    latency_updates: int = 2_000
    latency_rate: float = 200.0
    backlog_updates: int = 10_000
    live_updates: int = 10_000
    escalation_tickets: int = 1_000
    sweep_tickets: int = 1_000_000
    sweep_breached: int = 10_000
    sweep_lead_seconds: float = 5.0
    #: How long to wait for all escalations; past this the part reports what it got.
    sweep_wait_seconds: float = 100.0
    escalation_wait_seconds: float = 70.0  # beyond the daemon's 60 s safety re-check
    writer_overhead_args: tuple[str, ...] = ()
    insert_rate_args: tuple[str, ...] = ()

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            latency_updates=400,
            backlog_updates=2_000,
            live_updates=2_000,
            escalation_tickets=200,
            sweep_tickets=100_000,
            sweep_breached=2_000,
            sweep_lead_seconds=3.0,
            sweep_wait_seconds=40.0,
            escalation_wait_seconds=15.0,
            writer_overhead_args=("--seconds", "2", "--repeats", "1", "--tickets", "2000"),
            insert_rate_args=("--seconds", "2", "--repeats", "1", "--clients", "1,8"),
        )


# --- statistics ---------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "n": len(seconds),
        "min_ms": ms(min(seconds)) if seconds else None,
        "p50_ms": ms(pct(seconds, 50)),
        "p90_ms": ms(pct(seconds, 90)),
        "p99_ms": ms(pct(seconds, 99)),
        "max_ms": ms(max(seconds)) if seconds else None,
        "mean_ms": ms(sum(seconds) / len(seconds)) if seconds else None,
    }


# --- child processes --------------------------------------------------------------


def stop_pid(proc: subprocess.Popen[Any], name: str, grace: float = 15.0) -> int | None:
    """SIGTERM by PID, wait, then SIGKILL by PID; reap. Returns the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:g}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(10)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLA_DAEMON_", "TWILIO_")) and k != "DATABASE_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
