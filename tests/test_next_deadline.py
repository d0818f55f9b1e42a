"""Issue 11: sla_daemon_next_deadline_seconds follows the timer: it counts down between
passes (computed at each scrape) and moves at once when a nearer deadline wakes it."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg

from . import factories as f
from .daemon_harness import daemon_settings, running
from .waiting import eventually


def gauge(text: str) -> float:
    match = re.search(r"^sla_daemon_next_deadline_seconds (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


async def test_next_deadline_counts_down_and_follows_new_tickets(
    conn: asyncpg.Connection, dsn: str
) -> None:
    muni = await f.municipality(conn)
    await f.sla_config(conn, muni, None, response_hours=10, resolution_hours=20, warning_pct=99)
    await f.ticket(conn, muni)
    settings = daemon_settings(dsn, None, safety_interval_seconds=60)
    async with running(settings) as daemon:

        def seconds() -> float:
            return gauge(daemon.metrics.render().decode())

        first = await eventually(lambda: seconds() > 0 and seconds(), what="a next deadline")
        assert 9 * 3600 < first <= 10 * 3600
        await asyncio.sleep(1.5)  # no pass in between (safety interval 60 s)
        assert first - 3 < seconds() <= first - 1.4
        # A ticket due sooner wakes the timer; the gauge follows within moments, not
        # at the next safety pass.
        soon = await conn.fetchval("SELECT now() + interval '120 seconds'")
        await f.ticket(
            conn, muni, sla_response_deadline=soon, sla_resolution_deadline=soon + timedelta(1)
        )
        await eventually(lambda: 100 < seconds() <= 120, timeout=5, what="gauge follows")
