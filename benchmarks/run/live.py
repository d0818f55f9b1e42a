"""Live throughput: writers commit N updates as fast as they can while the daemon runs."""

from __future__ import annotations

import asyncio
from typing import Any

from .bench import Bench
from .common import WRITERS, log
from .rss import memory


async def run(bench: Bench) -> dict[str, Any]:
    n = bench.sizes.live_updates
    async with bench.part("live") as (dsn, conn, daemon):
        tickets, expected = await bench.tickets_to_progress(conn, "V", n)
        await conn.execute("CHECKPOINT")
        await daemon.start(profile_dir=bench.profile_dir)
        await asyncio.sleep(1.0)
        since = await bench.fake.count()
        log(f"live: {WRITERS} writers commit {n} updates as fast as they can")
        meter = await bench.measure(daemon, dsn)
        w0, w1 = await bench.write_all(dsn, tickets, "in_progress")
        ok, _ = await bench.fake.wait_for(since, n, 120, "live")
        cpu = await meter.done()
        report, first, _ = await bench.deliveries(conn, since, expected, n)
        last = max(first.values()) if first else float("nan")
        return {
            "updates": n,
            "tickets": n,
            "writers": WRITERS,
            "writer_commits_per_s": round(n / (w1 - w0), 1),
            "writers_seconds": round(w1 - w0, 3),
            "end_to_end_seconds": round(last - w0, 3),
            "messages_per_s": round(n / (last - w0), 1),
            "all_received": ok,
            "delivery": report,
            "cpu_seconds": cpu,
            "daemon_cpu_us_per_message": round(cpu.get("daemon", 0) / n * 1e6, 1),
            **memory(daemon),
        }
