"""Promises the mutation check (``python -m tests.mutation``) showed no test guarded.

Each test names the promise it guards; each fails when the promise is broken in the
SQL (the mutant named beside it) and passes on the real code.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import asyncpg

from sla_daemon.outbox import retry_delay

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_daemon import wait_until_finished
from .waiting import eventually


async def _changed_tickets(conn: asyncpg.Connection, n: int) -> list[asyncpg.Record]:
    mid = await f.municipality(conn)
    ids = [await f.ticket(conn, mid) for _ in range(n)]
    for tid in ids:
        await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid)
    # take the intake into the outbox without claiming anything
    await conn.execute("SELECT * FROM sla_daemon.claim_outbox('mover', 0, 60)")
    rows = await conn.fetch("SELECT id, ticket_id FROM sla_daemon.outbox ORDER BY id")
    assert len(rows) == n
    return rows


async def test_a_warning_is_recorded_once_even_by_overlapping_passes(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """Warning once (mutant warning-once): two warning passes at the same moment, as two
    daemons run them, record one event; the unique index makes the second wait."""
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 1, 100, warning_pct=50)
    now = await conn.fetchval("SELECT now()")
    await f.ticket(conn, mid, "water", created_at=now - timedelta(minutes=40))
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tx = first.transaction()
        await tx.start()
        assert len(await first.fetch("SELECT * FROM sla_daemon.record_warnings(100)")) == 1
        other = asyncio.create_task(second.fetch("SELECT * FROM sla_daemon.record_warnings(100)"))
        pid = second.get_server_pid()

        async def second_is_blocked_or_done() -> bool:
            return other.done() or bool(
                await conn.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
                )
            )

        await eventually(second_is_blocked_or_done, what="the second pass reaches its insert")
        await tx.commit()
        assert await asyncio.wait_for(other, 10) == []
    finally:
        await first.close()
        await second.close()
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning'") == 1


async def test_a_claim_never_waits_behind_a_locked_row(conn: asyncpg.Connection, dsn: str) -> None:
    """SKIP LOCKED (mutant skip-locked): a row locked by another transaction (a finish,
    a requeue, the purge) is skipped, not waited for; the other due rows are claimed."""
    locked, free = await _changed_tickets(conn, 2)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM sla_daemon.outbox WHERE id = $1 FOR UPDATE", locked["id"]
            )
            claimed = await asyncio.wait_for(
                conn.fetch("SELECT id FROM sla_daemon.claim_outbox('w', 10, 60)"), 5
            )
    finally:
        await holder.close()
    assert [r["id"] for r in claimed] == [free["id"]]


async def test_after_a_crash_the_newest_row_goes_in_the_same_claim(
    conn: asyncpg.Connection,
) -> None:
    """The lease ends a claim (mutant lease-in-busy): a row left 'sending' by a crashed
    daemon, lease run out, neither blocks its ticket's newer row nor delays it a round:
    one claim supersedes the old row and takes the new one."""
    (old,) = await _changed_tickets(conn, 1)
    await conn.execute(
        "UPDATE sla_daemon.outbox SET state = 'sending', locked_by = 'crashed',"
        " claim_token = -1, next_attempt_at = now() - interval '1 second' WHERE id = $1",
        old["id"],
    )
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", old["ticket_id"])
    claimed = await conn.fetch("SELECT id, new_status FROM sla_daemon.claim_outbox('w', 10, 60)")
    assert [r["new_status"] for r in claimed] == ["resolved"]
    state = await conn.fetchval("SELECT state FROM sla_daemon.outbox WHERE id = $1", old["id"])
    assert state == "superseded"


async def _claimed(conn: asyncpg.Connection) -> asyncpg.Record:
    await _changed_tickets(conn, 1)
    (row,) = await conn.fetch("SELECT id, claim_token FROM sla_daemon.claim_outbox('w', 10, 60)")
    return row


async def test_a_row_handed_back_keeps_its_attempts(conn: asyncpg.Connection) -> None:
    """Release (mutant release-keeps-attempt): a row handed back unsent (shutdown, or a
    lease too short to send in) does not use up one of its attempts."""
    row = await _claimed(conn)
    assert (
        await conn.fetchval("SELECT attempts FROM sla_daemon.outbox WHERE id = $1", row["id"]) == 1
    )
    await conn.execute(
        "SELECT sla_daemon.finish_outbox($1, $2, '{released}', '{NULL}', '{NULL}', '{NULL}',"
        " '{NULL}', '{NULL}')",
        [row["claim_token"]],
        [row["id"]],
    )
    after = await conn.fetchrow(
        "SELECT state, attempts, next_attempt_at <= now() AS due FROM sla_daemon.outbox"
        " WHERE id = $1",
        row["id"],
    )
    assert after is not None and tuple(after) == ("pending", 0, True)


async def test_retry_dead_gives_a_row_its_attempts_back(conn: asyncpg.Connection) -> None:
    """Re-queue (mutant requeue-resets-attempts): a dead row re-queued once its cause is
    fixed gets max_attempts tries again, not none."""
    row = await _claimed(conn)
    await conn.execute(
        "SELECT sla_daemon.finish_outbox($1, $2, '{dead}', '{NULL}', '{21211}',"
        " '{invalid number}', '{NULL}', '{NULL}')",
        [row["claim_token"]],
        [row["id"]],
    )
    await conn.execute("UPDATE sla_daemon.outbox SET attempts = 12 WHERE id = $1", row["id"])
    assert await conn.fetchval("SELECT sla_daemon.requeue_dead(NULL)") == 1
    after = await conn.fetchrow(
        "SELECT state, attempts FROM sla_daemon.outbox WHERE id = $1", row["id"]
    )
    assert after is not None and tuple(after) == ("pending", 0)


def test_backoff_doubles_with_each_attempt_up_to_its_cap() -> None:
    """Backoff shape (mutant backoff-exponential): between half and all of
    base * 2^(attempt-1), never above the cap, never overflowing."""
    for attempt in range(1, 8):
        ceiling = 2.0 ** (attempt - 1)
        for _ in range(20):
            assert ceiling / 2 <= retry_delay(attempt, 1.0, 1000.0) <= ceiling
    assert 50 <= retry_delay(30, 1.0, 100.0) <= 100
    assert 50 <= retry_delay(10**6, 1.0, 100.0) <= 100


async def test_a_retryable_failure_is_tried_exactly_max_attempts_times(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """Max attempts (mutant max-attempts): a row that keeps failing with a retryable
    error is POSTed exactly max_attempts times, then dead with the reason."""
    mid = await f.municipality(conn)
    tid = await f.ticket(conn, mid, user_id=await f.user(conn, "0821234567"))
    async with FakeTwilio() as fake:
        fake.fail_next(500, times=10)
        async with running(daemon_settings(dsn, fake, max_attempts=3)):
            await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
            states = await wait_until_finished(conn)
        requests = len(fake.requests)
    assert states == Counter({"dead": 1})
    assert requests == 3
    error = await conn.fetchval("SELECT last_error FROM sla_daemon.outbox")
    assert error.startswith("gave up after 3 attempts")


async def test_changes_made_while_the_daemon_was_away_send_only_the_newest(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """Supersede (mutant supersede): three status changes per ticket committed while no
    daemon runs send one message per ticket, the newest; the older rows end superseded
    (pointing at it), never sent, so no arrival order can show an older status last."""
    mid = await f.municipality(conn)
    citizen = await f.user(conn, "0821234567")
    for _ in range(20):
        await f.ticket(conn, mid, user_id=citizen)
    for status in ("in_progress", "resolved", "closed"):
        await conn.execute("UPDATE tickets SET status = $1", status)
    async with FakeTwilio() as fake, running(daemon_settings(dsn, fake)):
        states = await wait_until_finished(conn)
        received = [m.body for m in fake.messages]
    assert states == Counter({"sent": 20, "superseded": 40})
    assert len(received) == 20 and all("closed" in body for body in received), received
    pointers = await conn.fetch(
        "SELECT o.superseded_by = n.id AS to_newest FROM sla_daemon.outbox o"
        " JOIN sla_daemon.outbox n ON n.ticket_id = o.ticket_id AND n.state = 'sent'"
        " WHERE o.state = 'superseded'"
    )
    assert len(pointers) == 40 and all(r["to_newest"] for r in pointers)
