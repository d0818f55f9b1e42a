"""Breach to escalation: tickets whose response deadlines fall 1 ms apart, 2 s ahead."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .bench import Bench, create_tickets, expected_messages
from .common import log, summary_ms
from .rss import memory


async def run(bench: Bench) -> dict[str, Any]:
    n = bench.sizes.escalation_tickets
    async with bench.part("escalation") as (dsn, conn, daemon):
        await daemon.start(profile_dir=bench.profile_dir)
        await asyncio.sleep(1.0)
        since = await bench.fake.count()
        meter = await bench.measure(daemon, dsn)
        log(f"escalation: {n} tickets due at now() + 2 s + i ms")
        tickets = await create_tickets(
            conn, "E", n, "now() + interval '2 seconds' + (g - 1) * interval '1 millisecond'"
        )
        tns = [tn for _, tn in tickets]
        expected = await expected_messages(conn, bench.catalog, tns, None)
        deadline = time.monotonic() + 2 + bench.sizes.escalation_wait_seconds
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM tickets WHERE tracking_number LIKE 'E%'"
                " AND escalated_at IS NOT NULL"
            )
            if done >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM escalated_at - sla_response_deadline)::float8 AS lag"
            " FROM tickets WHERE tracking_number LIKE 'E%' AND escalated_at IS NOT NULL"
        )
        lags = [r["lag"] for r in rows]
        await bench.fake.wait_for(since, len(lags), 30, "escalation notices")
        cpu = await meter.done()
        report, _, _ = await bench.deliveries(conn, since, expected, n)
        warnings = await conn.fetchval(
            "SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning'"
        )
        return {
            "tickets": n,
            "escalated": len(lags),
            "not_escalated_after_wait": n - len(lags),
            "wait_limit_s": bench.sizes.escalation_wait_seconds,
            "escalated_at_minus_deadline": summary_ms(lags),
            "warnings_recorded": warnings,
            "notices": report,
            "cpu_seconds": cpu,
            **memory(daemon),
        }
