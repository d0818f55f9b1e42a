"""The writer-overhead benchmark's emulated sender goes to sleep as the real one does
(only after a look finds no new work), and variant w's after every pause: the README's
writer figures rest on which path the writers took."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from benchmarks.writer_overhead import Listener as EmulatedSender

from . import factories as f
from .waiting import eventually

DRAIN = 0.05  # the emulated send; flips back to back take about a millisecond each


async def flip_for(conn: asyncpg.Connection, tid: UUID, seconds: float) -> int:
    """Status changes, each its own transaction, back to back for ``seconds``."""
    loop = asyncio.get_running_loop()
    until, flips = loop.time() + seconds, 0
    while loop.time() < until:
        status = "in_progress" if flips % 2 == 0 else "open"
        await conn.execute("UPDATE tickets SET status = $1 WHERE id = $2", status, tid)
        flips += 1
    return flips


async def test_it_stays_awake_while_work_keeps_coming(conn: asyncpg.Connection, dsn: str) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    sender = EmulatedSender(dsn, daemon=True, drain_s=DRAIN)
    await sender.start()
    try:
        flips = await flip_for(conn, tid, 12 * DRAIN)
        assert flips > 24  # work came within every one of its pauses
        assert sender.counts["sla_daemon_outbox"] == 1  # woken once
        assert sender.sleeps == 0
        await eventually(lambda: sender.sleeps == 1, what="asleep once the work stopped")
        await flip_for(conn, tid, DRAIN / 5)
        await eventually(lambda: sender.counts["sla_daemon_outbox"] == 2, what="woken again")
    finally:
        await sender.stop()
    assert sender.marks_failed == 0


async def test_variant_w_sleeps_after_every_pause(conn: asyncpg.Connection, dsn: str) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    sender = EmulatedSender(dsn, daemon=True, drain_s=DRAIN, cycles=True)
    await sender.start()
    try:
        await flip_for(conn, tid, 12 * DRAIN)
        assert sender.sleeps >= 3
        assert sender.counts["sla_daemon_outbox"] >= sender.sleeps  # each sleep, a wake-up
    finally:
        await sender.stop()
