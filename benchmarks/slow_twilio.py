"""Two daemons, a slow Twilio, short leases: count duplicates and reorderings.

The scenario of ``tests/test_slow_twilio.py`` at the scale of the issue that found
the fault: two daemon processes (``python -m sla_daemon run``) on one embedded
PostgreSQL, a fake Twilio in this process that answers every other POST after
``--slow`` seconds, a send timeout and lease as short as allowed, a narrow send queue
so claimed rows wait there longer than their lease, and two status changes per
ticket. Counted per ticket by arrival at the fake; prints one JSON document:

    python -m benchmarks.slow_twilio                  # 300 tickets, 600 status changes
    python -m benchmarks.slow_twilio --tickets 1000 --slow 3 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import asyncpg

from sla_daemon import aio, db
from sla_daemon.config import LEASE_MARGIN_SECONDS
from sla_daemon.embedded import start_embedded
from tests.daemon_harness import DaemonProcess, daemon_settings
from tests.fake_twilio import FakeTwilio
from tests.test_daemon import make_tickets, outbox_states
from tests.test_slow_twilio import CATALOG, faults

__all__ = ["main", "scenario"]


async def scenario(
    dsn: str, tickets: int, slow: float, send_timeout: float, concurrency: int, batch: int
) -> dict[str, Any]:
    """Run it once on a migrated, empty database; return the counts."""
    conn = await asyncpg.connect(dsn)
    try:
        _, tns = await make_tickets(conn, tickets)
        async with FakeTwilio() as fake:
            fake.slow(slow)
            common: dict[str, Any] = {
                "send_timeout_seconds": send_timeout,
                "outbox_lease_seconds": send_timeout + LEASE_MARGIN_SECONDS + 0.5,
                "send_concurrency": concurrency,
                "outbox_batch_size": batch,
                "metrics_address": "off",
            }
            daemons = [
                DaemonProcess(daemon_settings(dsn, fake, **common)),
                DaemonProcess(daemon_settings(dsn, fake, **common)),
            ]
            started = time.monotonic()
            async with daemons[0], daemons[1]:
                await conn.execute("UPDATE tickets SET status = 'in_progress'")
                await fake.wait_for(min(tickets, 4 * concurrency), timeout=120)
                await conn.execute("UPDATE tickets SET status = 'resolved'")
                states = await _settled(conn, timeout=60 + 4 * tickets * slow / concurrency)
            elapsed = time.monotonic() - started
        found = faults(fake, tns)
        newest = {a.body for a in fake.arrivals}
        lost = sum(CATALOG.render_status("resolved", "en", tn) not in newest for tn in tns)
    finally:
        await conn.close()
    return {
        "tickets": tickets,
        "status_changes": 2 * tickets,
        "posts": len(fake.arrivals),
        "duplicates": found.duplicates,
        "reorderings": found.reorderings,
        "unanswered": found.unanswered,
        "newest_status_lost": lost,
        "outbox": dict(states),
        "seconds": round(elapsed, 1),
        "settings": {**common, "slow_answer_seconds": slow, "slow_share": 0.5, "daemons": 2},
    }


async def _settled(conn: asyncpg.Connection, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        states = await outbox_states(conn)
        if not states["pending"] and not states["sending"]:
            return dict(states)
        if time.monotonic() > deadline:
            raise TimeoutError(f"outbox not settled within {timeout:.0f}s: {dict(states)}")
        await asyncio.sleep(0.2)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    pg = start_embedded()
    try:
        dsn = pg.dsn()
        conn = await asyncpg.connect(dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        return await scenario(
            dsn, args.tickets, args.slow, args.send_timeout, args.concurrency, args.batch
        )
    finally:
        pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=300)
    parser.add_argument("--slow", type=float, default=3.0, help="seconds for every other answer")
    parser.add_argument("--send-timeout", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args(argv)
    result = aio.run(_main(args))
    json.dump(result, sys.stdout, indent=2)
    print()
    bad = result["duplicates"] or result["reorderings"] or result["newest_status_lost"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
