"""CPU seconds per process over a measured interval, and (optionally) what the
daemon's backends wait on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg

from benchmarks.cpu import cpu_seconds, machine_busy_seconds, postgres_cpu


class CpuMeter:
    """CPU seconds of each process of the set-up over one measured interval."""

    def __init__(self, pids: dict[str, int | None], postmaster: int | None) -> None:
        self._pids = pids
        self._postmaster = postmaster
        self._start = self._read()
        self._wall = time.monotonic()

    def add(self, name: str, pid: int | None) -> None:
        """A process started after the meter: all of its CPU counts."""
        self._pids[name] = pid
        self._start[name] = 0.0

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self._pids.items() if pid is not None}
        values["machine"] = machine_busy_seconds()
        values["postgres"] = postgres_cpu(self._postmaster)
        values["harness"] = time.process_time()
        return values

    def done(self) -> dict[str, Any]:
        end = self._read()
        wall = time.monotonic() - self._wall
        out: dict[str, Any] = {k: round(end[k] - self._start.get(k, 0.0), 2) for k in end}
        out["wall"] = round(wall, 2)
        # CPU the machine spent on anything but this benchmark: other people's work
        # on a shared machine makes every figure here slower than it is.
        ours = sum(v for k, v in out.items() if k not in ("machine", "wall"))
        out["other_processes"] = round(max(0.0, out.pop("machine") - ours), 2)
        return out


class WaitSampler:
    """Optional (--pg-waits): what the daemon's backends wait on, sampled every 10 ms."""

    SQL = (
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS q"
        " FROM pg_stat_activity WHERE application_name = 'sla-daemon' AND state = 'active'"
        " AND pid <> pg_backend_pid()"
    )

    def __init__(self, dsn: str | None) -> None:
        self._dsn = dsn
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WaitSampler:
        if self._dsn:
            self._task = asyncio.create_task(self._run(self._dsn))
        return self

    async def _run(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while True:
                for r in await conn.fetch(self.SQL):
                    self.counts[f"{r['w']} | {r['q']}"] += 1
                self.samples += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def report(self) -> dict[str, Any] | None:
        if not self._dsn:
            return None
        return {
            "samples": self.samples,
            "top": {k: v for k, v in self.counts.most_common(15)},
        }


@dataclass
class Measure:
    cpu: CpuMeter
    waits: WaitSampler

    async def done(self) -> dict[str, Any]:
        await self.waits.__aexit__()
        out = self.cpu.done()
        if (waits := self.waits.report()) is not None:
            out["daemon_backend_waits"] = waits
        return out
