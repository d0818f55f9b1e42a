"""Backlog drain: writers commit N updates while the daemon is stopped; then it starts,
and the messages per second until the last arrives are measured."""

from __future__ import annotations

from typing import Any

from .bench import Bench, outbox_states
from .common import WRITERS, log
from .rss import memory


async def run(bench: Bench) -> dict[str, Any]:
    n = bench.sizes.backlog_updates
    async with bench.part("backlog") as (dsn, conn, daemon):
        tickets, expected = await bench.tickets_to_progress(conn, "B", n)
        log(f"backlog: {WRITERS} writers commit {n} updates on {n} tickets, daemon stopped")
        w0, w1 = await bench.write_all(dsn, tickets, "in_progress")
        pending = sum((await outbox_states(conn)).values())
        await conn.execute("CHECKPOINT")
        since = await bench.fake.count()
        meter = await bench.measure(None, dsn)
        await daemon.start(profile_dir=bench.profile_dir)
        meter.cpu.add("daemon", daemon.pid)  # started after the meter: counts from 0
        ok, _ = await bench.fake.wait_for(since, n, 120, "backlog")
        cpu = await meter.done()
        report, first, _ = await bench.deliveries(conn, since, expected, n)
        arrivals = sorted(first.values())
        last = arrivals[-1] if arrivals else float("nan")
        return {
            "updates": n,
            "tickets": n,
            "note": "one update per distinct ticket: nothing to supersede",
            "writers": WRITERS,
            "writer_commits_per_s": round(n / (w1 - w0), 1),
            "outbox_rows_before_start": pending,
            "daemon_ready_s": round(daemon.ready_at - daemon.spawned_at, 2),
            "drain_seconds_from_ready": round(last - daemon.ready_at, 3),
            "messages_per_s_from_ready": round(n / (last - daemon.ready_at), 1),
            "messages_per_s_from_spawn": round(n / (last - daemon.spawned_at), 1),
            "messages_per_s_first_to_last": round((len(arrivals) - 1) / (last - arrivals[0]), 1)
            if len(arrivals) > 1
            else None,
            "all_received": ok,
            "delivery": report,
            "cpu_seconds": cpu,
            "daemon_cpu_us_per_message": round(cpu.get("daemon", 0) / n * 1e6, 1),
            **memory(daemon),
        }
