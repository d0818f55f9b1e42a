"""Notification latency: a status UPDATE's commit to the fake receiving the message,
open loop at a fixed rate, one ticket per update."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .bench import Bench, _no_reset
from .common import WRITERS, log, summary_ms
from .rss import memory


async def run(bench: Bench) -> dict[str, Any]:
    n, rate = bench.sizes.latency_updates, bench.sizes.latency_rate
    pool: asyncpg.Pool | None = None
    async with bench.part("latency") as (dsn, conn, daemon):
        try:
            tickets, expected = await bench.tickets_to_progress(conn, "L", n)
            await conn.execute("CHECKPOINT")
            await daemon.start(profile_dir=bench.profile_dir)
            await asyncio.sleep(1.0)  # first timer pass and outbox sleep done
            pool = await asyncpg.create_pool(
                dsn, min_size=WRITERS, max_size=WRITERS, reset=_no_reset
            )
            assert pool is not None
            since = await bench.fake.count()
            commit_time: dict[str, float] = {}
            start_lag: list[float] = []
            update = "UPDATE tickets SET status = 'in_progress' WHERE id = $1"

            async def one(ticket_id: Any, tn: str, due: float) -> None:
                assert pool is not None
                async with pool.acquire() as c:
                    start_lag.append(time.monotonic() - due)
                    await c.execute(update, ticket_id)
                    commit_time[tn] = time.time()  # right after the commit returned

            log(f"latency: {n} updates at {rate:g}/s (open loop)")
            meter = await bench.measure(daemon, dsn)
            origin = time.monotonic() + 0.05
            tasks = []
            for i, (ticket_id, tn) in enumerate(tickets):
                due = origin + i / rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(ticket_id, tn, due)))
            await asyncio.gather(*tasks)
            sent_span = time.monotonic() - origin
            await bench.fake.wait_for(since, n, 30, "latency")
            cpu = await meter.done()
            report, first, _ = await bench.deliveries(conn, since, expected, n)
            latencies = [
                first[(tn, "in_progress")] - commit_time[tn]
                for tn in commit_time
                if (tn, "in_progress") in first
            ]
            return {
                "updates": n,
                "rate_per_s": rate,
                "achieved_rate_per_s": round(n / sent_span, 1),
                "writer_start_lag": summary_ms(start_lag),
                "latency_commit_to_fake": summary_ms(latencies),
                "delivery": report,
                "cpu_seconds": cpu,
                **memory(daemon),
            }
        finally:
            if pool is not None:
                await pool.close()
