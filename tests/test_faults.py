"""Faults a production deployment meets (issue 10), each on real PostgreSQL.

Every test here failed on the code before the fix (commit ab1dcd1) and states the
promise it guards: fenced claims and leases, buffered outcomes across a database blip,
per-ticket isolation in the sweep, one escalation per SLA cycle, retry-dead and
retention, status changes made by a platform's BEFORE trigger, claims that skip busy
tickets before their LIMIT, wake-ups beside a writer's long transaction, and the
smaller ones (backoff overflow, unexpected send errors).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from sla_daemon.config import Settings
from sla_daemon.db import QUERIES
from sla_daemon.escalation import EscalationService
from sla_daemon.listener import Listener
from sla_daemon.messages import MessageCatalog
from sla_daemon.metrics import Metrics
from sla_daemon.notifications import NotificationService, SendResult
from sla_daemon.outbox import OutboxProcessor, retry_delay
from sla_daemon.sla import SLAService
from sla_daemon.timer import PassResult, check_sla_breaches

from . import factories as f
from .conftest import Server
from .daemon_harness import cut_pool, daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_cli import cli, cli_env
from .test_daemon import wait_until_finished
from .waiting import eventually

CATALOG = MessageCatalog.load()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def claim(
    conn: asyncpg.Connection, worker: str, limit: int, lease: float
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM sla_daemon.claim_outbox($1, $2, $3)", worker, limit, lease
    )
    return rows


async def finish(
    conn: asyncpg.Connection, token: int, row_id: int, state: str, sid: str | None = None
) -> int:
    """Record one outcome as the sender does; returns how many rows it changed."""
    changed: int = await conn.fetchval(
        "SELECT sla_daemon.finish_outbox($1, $2, $3, $4, '{NULL}', '{NULL}', $5, '{en}')",
        [token],
        [row_id],
        [state],
        [sid],
        [0.0 if state == "pending" else None],
    )
    return changed


async def row_of(conn: asyncpg.Connection, row_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM sla_daemon.outbox WHERE id = $1", row_id)
    assert row is not None
    return row


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- 1. fenced claims -----------------------------------------------------------------------


async def test_a_finish_from_a_lapsed_claim_changes_nothing(conn: asyncpg.Connection) -> None:
    # Promise: only the row's current claim records its outcome. A worker whose lease
    # ran out (its row claimed again, even under the same worker name, as host:pid
    # repeats across container restarts) neither overwrites the new claimer's result
    # nor puts a sent row back to pending (which would send it again).
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid)
    (old,) = await claim(conn, "w", 10, 0)  # a lease that has run out at once
    (new,) = await claim(conn, "w", 10, 60)
    row_id, stale, current = new["id"], old["claim_token"], new["claim_token"]
    assert old["id"] == row_id and stale != current
    # stale outcomes while the new claim is in flight
    assert await finish(conn, stale, row_id, "dead") == 0
    assert await finish(conn, stale, row_id, "released") == 0
    extend = "SELECT id FROM sla_daemon.extend_outbox($1, $2, 60) AS e(id)"
    assert await conn.fetch(extend, stale, [row_id]) == []
    row = await row_of(conn, row_id)
    assert (row["state"], row["claim_token"], row["attempts"]) == ("sending", current, 2)
    assert [r["id"] for r in await conn.fetch(extend, current, [row_id])] == [row_id]
    assert await finish(conn, current, row_id, "sent", "SM-new") == 1
    # a stale retry after the row was sent
    assert await finish(conn, stale, row_id, "pending") == 0
    assert await finish(conn, stale, row_id, "sent", "SM-old") == 0
    row = await row_of(conn, row_id)
    assert (row["state"], row["message_sid"]) == ("sent", "SM-new")
    assert await claim(conn, "w", 10, 60) == []


def test_worker_ids_are_unique_per_process_start() -> None:
    # host:pid repeats across container restarts (pid 1 every time): not a fence.
    assert Settings().worker_id != Settings().worker_id


async def test_a_row_queued_past_its_lease_margin_is_extended_or_handed_back(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    # Promise: a row is POSTed only while its lease covers the send timeout + 5 s.
    # Rows queued behind a slow POST (one send at a time, a lease just above that
    # bound) get their lease extended while still their ticket's newest and held, and
    # are handed back unsent when their ticket moved on meanwhile: the citizen never
    # gets the older status, and the row keeps its attempt.
    mid = await f.municipality(conn)
    by_to: dict[str, UUID] = {}
    for i in range(1, 4):
        uid = await f.user(conn, f"082100000{i}")
        by_to[f"whatsapp:+2782100000{i}"] = await f.ticket(conn, mid, user_id=uid)
    fake.delay_next(1.5)
    settings = daemon_settings(
        dsn, fake, send_concurrency=1, send_timeout_seconds=2, outbox_lease_seconds=7.5
    )
    async with running(settings):
        await conn.execute(
            "UPDATE tickets SET status = 'in_progress' WHERE id = ANY($1::uuid[])",
            list(by_to.values()),
        )
        await eventually(lambda: fake.arrivals, what="the first POST in flight")
        first = by_to[fake.arrivals[0].to]
        moved_on, extended = [t for t in by_to.values() if t != first]
        # while its row waits in the send queue, this ticket changes again
        await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", moved_on)
        await fake.wait_for(3, timeout=20)
        states = await wait_until_finished(conn)
    assert states == Counter({"sent": 3, "superseded": 1})
    numbers = {t: n for t, n in await conn.fetch("SELECT id, tracking_number FROM tickets")}
    got = Counter((by_to[m.to], m.body) for m in fake.messages)
    assert got == Counter(
        {
            (first, CATALOG.render_status("in_progress", "en", numbers[first])): 1,
            (extended, CATALOG.render_status("in_progress", "en", numbers[extended])): 1,
            (moved_on, CATALOG.render_status("resolved", "en", numbers[moved_on])): 1,
        }
    )
    assert len(fake.arrivals) == 3  # the older status was never POSTed
    rows = {
        (r["ticket_id"], r["new_status"]): r
        for r in await conn.fetch("SELECT * FROM sla_daemon.outbox")
    }
    handed_back = rows[(moved_on, "in_progress")]
    assert (handed_back["state"], handed_back["attempts"]) == ("superseded", 0)
    # the queued row's lease was extended before its POST (>= 1.5 s after the claim)
    gap = (
        rows[(extended, "in_progress")]["next_attempt_at"]
        - rows[(first, "in_progress")]["next_attempt_at"]
    )
    assert gap >= timedelta(seconds=1), gap


# --- 2. outcomes buffered across a database blip ---------------------------------------------


async def test_outcomes_buffered_across_a_database_blip_are_written_when_it_answers(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, pg_server: Server
) -> None:
    # Promise: outcomes that could not be recorded (the database went away mid-flush)
    # are written as soon as it answers again, with no new traffic to prompt it, and
    # before their leases lapse: no row is sent twice.
    mid = await f.municipality(conn)
    uid = await f.user(conn)
    for _ in range(3):
        await f.ticket(conn, mid, user_id=uid)
    database = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_server.admin_dsn)  # another database: it may lock ours
    fake.delay_next(1.0, times=3)
    async with running(daemon_settings(dsn, fake)) as daemon:
        assert daemon.listener is not None
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await eventually(lambda: len(fake.arrivals) == 3, what="three POSTs in flight")
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        try:
            await cut_pool(conn, daemon)
            await fake.wait_for(3)
            # the answers came while the database was away; the sender's loop fails
            # and is started again with the outcomes still buffered
            await eventually(
                lambda: (
                    sample(daemon.metrics, "sla_daemon_loop_failures_total", loop="outbox") >= 2
                ),
                timeout=15,
                what="the sender restarted while the database is away",
            )
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM sla_daemon.outbox WHERE state = 'sending'"
                )
                == 3
            )
        finally:
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await admin.close()
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 3 FROM sla_daemon.outbox WHERE state = 'sent'"
            ),
            timeout=8,
            what="the buffered outcomes written",
        )
        sids = {r[0] for r in await conn.fetch("SELECT message_sid FROM sla_daemon.outbox")}
    assert sids == {m.sid for m in fake.messages}
    assert len(fake.arrivals) == 3  # nothing was sent again


# --- 3. per-ticket isolation in the sweep ----------------------------------------------------


async def sweep(pool: asyncpg.Pool, metrics: Metrics) -> PassResult:
    """One pass of the timer, as the daemon runs it (bounded)."""
    service = EscalationService(pool, concurrency=4, metrics=metrics)
    return await asyncio.wait_for(check_sla_breaches(pool, SLAService(pool), service, metrics), 30)


async def test_one_failing_escalation_never_stops_the_sweep(
    conn: asyncpg.Connection, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # Promise: a ticket whose escalation fails (here a platform trigger refuses its
    # new assignment) is logged with the reason, counted, retried on its own backoff,
    # and never stops the others, even when it comes first every pass.
    caplog.set_level(logging.WARNING, logger="sla_daemon.escalation")
    mid = await f.municipality(conn)
    now = await conn.fetchval("SELECT now()")
    bad = await f.ticket(conn, mid, sla_response_deadline=now - timedelta(hours=3))
    others = [
        await f.ticket(conn, mid, sla_response_deadline=now - timedelta(hours=2)) for _ in range(39)
    ]
    await conn.execute(
        "CREATE FUNCTION public.refuse_assignment() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF NEW.ticket_id = '{bad}' THEN"
        "   RAISE EXCEPTION 'platform refuses the assignment of %', NEW.ticket_id;"
        " END IF; RETURN NEW; END $$"
    )
    await conn.execute(
        "CREATE TRIGGER refuse_assignment BEFORE INSERT ON public.ticket_assignments"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse_assignment()"
    )
    metrics = Metrics()
    result = await sweep(pool, metrics)
    assert (result.escalated, result.examined) == (39, 40)
    statuses = {r[0]: r[1] for r in await conn.fetch("SELECT id, status::text FROM tickets")}
    assert statuses[bad] == "open"
    assert {statuses[t] for t in others} == {"escalated"}
    assert sample(metrics, "sla_daemon_escalation_failures_total", cause="error") == 1
    row = await conn.fetchrow(
        "SELECT attempts, last_error, due_at > now() AS later FROM sla_daemon.deadlines"
        " WHERE ticket_id = $1 AND deadline_kind = 'response'",
        bad,
    )
    assert row is not None and row["attempts"] == 1 and row["later"], dict(row or {})
    assert "platform refuses the assignment" in row["last_error"]
    tracking = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", bad)
    (line,) = [r.getMessage() for r in caplog.records if tracking in r.getMessage()]
    assert "not escalated (error)" in line and "platform refuses the assignment" in line
    # its backoff has not run out: the next pass does not try it again at once
    assert (await sweep(pool, metrics)).examined == 0


async def test_a_ticket_row_locked_by_a_long_transaction_is_waited_for_briefly(
    conn: asyncpg.Connection, dsn: str, pool: asyncpg.Pool
) -> None:
    # Promise: escalate_ticket waits at most lock_timeout (2 s) for a ticket row a
    # writer holds; that ticket is counted as lock_timeout and the others escalate.
    mid = await f.municipality(conn)
    past = await conn.fetchval("SELECT now() - interval '2 hours'")
    tids = [await f.ticket(conn, mid, sla_response_deadline=past) for _ in range(5)]
    holder = await asyncpg.connect(dsn)
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE", tids[0])
        metrics = Metrics()
        started = time.monotonic()
        result = await sweep(pool, metrics)
        elapsed = time.monotonic() - started
    finally:
        await tx.rollback()
        await holder.close()
    assert (result.escalated, result.examined) == (4, 5)
    assert 1.5 <= elapsed < 10, elapsed
    assert sample(metrics, "sla_daemon_escalation_failures_total", cause="lock_timeout") == 1
    status = await conn.fetchval("SELECT status::text FROM tickets WHERE id = $1", tids[0])
    assert status == "open"


# --- 4. one escalation per SLA cycle ---------------------------------------------------------


@pytest.mark.parametrize(("left", "back"), [("escalated", "in_progress"), ("resolved", "open")])
async def test_one_escalation_per_sla_cycle(
    conn: asyncpg.Connection, pool: asyncpg.Pool, left: str, back: str
) -> None:
    # Promise: a ticket that re-enters open/in_progress starts a new cycle at that
    # moment with its config's durations; its old, missed deadlines do not escalate it
    # again at once (no second reassignment, no second notice); the new cycle's
    # deadline escalates once when missed; the old cycle's escalation stays recorded.
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 2, 48)
    team = await f.team(conn, mid, await f.user(conn, "0830000000"))
    now = await conn.fetchval("SELECT now()")
    tid = await f.ticket(
        conn,
        mid,
        "water",
        status="in_progress",
        assigned_team_id=team,
        created_at=now - timedelta(hours=60),
        sla_response_deadline=now - timedelta(hours=58),
        sla_resolution_deadline=now - timedelta(hours=12),
    )
    metrics = Metrics()
    if left == "escalated":
        assert (await sweep(pool, metrics)).escalated == 1
    else:
        await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    old_events = await conn.fetch(
        "SELECT * FROM sla_daemon.events WHERE kind = 'escalation' ORDER BY id"
    )
    assert len(old_events) == (1 if left == "escalated" else 0)

    async def escalations() -> tuple[int, int]:
        """(escalation notices, escalation reassignments) of the ticket so far."""
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM sla_daemon.messages"
            "        WHERE ticket_id = $1 AND kind = 'escalation'),"
            "       (SELECT count(*) FROM ticket_assignments"
            "        WHERE ticket_id = $1 AND reason = 'escalation')",
            tid,
        )
        assert row is not None
        return row[0], row[1]

    async with conn.transaction():  # one now() for the change and the check
        await conn.execute("UPDATE tickets SET status = $1 WHERE id = $2", back, tid)
        reentered = await conn.fetchval("SELECT now()")
    assert await f.deadlines(conn, tid) == (
        reentered + timedelta(hours=2),
        reentered + timedelta(hours=48),
    )
    assert (await sweep(pool, metrics)).escalated == 0
    assert await escalations() == (len(old_events), len(old_events))
    # the new cycle's deadlines run out
    await conn.execute(
        "UPDATE tickets SET sla_response_deadline = now() - interval '1 second',"
        " sla_resolution_deadline = now() - interval '1 second' WHERE id = $1",
        tid,
    )
    assert (await sweep(pool, metrics)).escalated == 1
    assert (await sweep(pool, metrics)).escalated == 0
    assert await escalations() == (len(old_events) + 1, len(old_events) + 1)
    events = await conn.fetch(
        "SELECT * FROM sla_daemon.events WHERE kind = 'escalation' ORDER BY id"
    )
    assert events[: len(old_events)] == old_events and len(events) == len(old_events) + 1
    assert events[-1]["deadline"] > reentered - timedelta(seconds=1)


# --- 5. retry-dead and retention -------------------------------------------------------------


async def test_retry_dead_requeues_only_a_tickets_newest_status(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # Promise: `outbox retry-dead` re-queues a dead row only while it is still its
    # ticket's newest status, else it ends superseded, also once the newer sent row is
    # older than the retention (which keeps each ticket's newest row).
    mid = await f.municipality(conn)
    purged, queued, newest = [await f.ticket(conn, mid) for _ in range(3)]
    await conn.execute("UPDATE tickets SET status = 'in_progress'")
    dead = {r["ticket_id"]: r for r in await claim(conn, "w", 10, 60)}
    for r in dead.values():
        assert await finish(conn, r["claim_token"], r["id"], "dead") == 1
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", purged)
    (sent,) = await claim(conn, "w", 10, 60)
    assert await finish(conn, sent["claim_token"], sent["id"], "sent", "SM1") == 1
    await conn.execute(
        "UPDATE sla_daemon.outbox SET finished_at = now() - interval '40 days' WHERE id = $1",
        sent["id"],
    )
    assert await conn.fetchval(QUERIES["purge_outbox"], 30.0, 5000) == 0
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", queued)
    in_intake = await conn.fetchval(
        "SELECT id FROM sla_daemon.outbox_intake WHERE ticket_id = $1", queued
    )

    result = await cli("outbox", "retry-dead", "--yes", env=cli_env(dsn))
    assert result.code == 0, result.text
    assert "re-queued 1 dead letter" in result.out, result.out
    rows = {
        r["id"]: (r["state"], r["superseded_by"])
        for r in await conn.fetch("SELECT id, state, superseded_by FROM sla_daemon.outbox")
    }
    assert rows[dead[purged]["id"]] == ("superseded", sent["id"])
    assert rows[dead[queued]["id"]] == ("superseded", in_intake)
    assert rows[dead[newest]["id"]] == ("pending", None)
    assert rows[sent["id"]] == ("sent", None)  # kept by retention: its ticket's newest


# --- 6. a status set by the platform's BEFORE trigger ----------------------------------------


async def test_a_status_set_by_a_platform_before_trigger_is_notified_and_rescheduled(
    conn: asyncpg.Connection,
) -> None:
    # Promise: every status change is seen, however it was made, including one the
    # platform's own BEFORE trigger makes in a statement that does not name status.
    await conn.execute(
        "CREATE FUNCTION public.status_from_reason() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN"
        "   IF NEW.escalation_reason = 'done' THEN NEW.status := 'resolved';"
        "   ELSIF NEW.escalation_reason = 'reopen' THEN NEW.status := 'open'; END IF;"
        "   RETURN NEW;"
        " END $$"
    )
    await conn.execute(
        "CREATE TRIGGER status_from_reason BEFORE UPDATE ON public.tickets"
        " FOR EACH ROW EXECUTE FUNCTION public.status_from_reason()"
    )
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 2, 48)
    tid = await f.ticket(conn, mid, "water")
    await conn.execute("UPDATE tickets SET escalation_reason = 'done' WHERE id = $1", tid)
    async with conn.transaction():
        await conn.execute("UPDATE tickets SET escalation_reason = 'reopen' WHERE id = $1", tid)
        reopened = await conn.fetchval("SELECT now()")
    changes = await conn.fetch(
        "SELECT old_status, new_status FROM sla_daemon.messages WHERE ticket_id = $1 ORDER BY id",
        tid,
    )
    assert [(r["old_status"], r["new_status"]) for r in changes] == [
        ("open", "resolved"),
        ("resolved", "open"),
    ]
    due = await conn.fetch(
        "SELECT deadline_kind, due_at FROM sla_daemon.deadlines WHERE ticket_id = $1"
        " ORDER BY deadline_kind",
        tid,
    )
    assert [(r["deadline_kind"], r["due_at"]) for r in due] == [
        ("resolution", reopened + timedelta(hours=48)),
        ("response", reopened + timedelta(hours=2)),
    ]


# --- 7. claims skip busy tickets before LIMIT ------------------------------------------------


async def test_a_claim_skips_busy_tickets_before_its_limit(conn: asyncpg.Connection) -> None:
    # Promise: due rows of tickets with a row in flight do not use up a claim's LIMIT,
    # so a second daemon claims the free due rows behind them.
    mid = await f.municipality(conn)
    busy = [await f.ticket(conn, mid) for _ in range(3)]
    free = [await f.ticket(conn, mid) for _ in range(2)]
    await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = ANY($1)", busy)
    assert len(await claim(conn, "w1", 10, 60)) == 3
    # their newer rows are the oldest due ones now
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = ANY($1)", busy)
    await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = ANY($1)", free)
    got = await claim(conn, "w2", 2, 60)
    assert sorted(r["ticket_id"] for r in got) == sorted(free)


# --- 8. wake-ups beside a writer's long transaction ------------------------------------------


async def test_a_writers_long_transaction_delays_others_by_at_most_one_poll(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    # Promise (the stated bound): while one writer's open transaction holds the
    # wake-up lock, other writers' committed changes are still sent within one outbox
    # poll interval (plus the claim and the send), and the sender never blocks on it.
    poll = 0.5
    mid = await f.municipality(conn)
    uid = await f.user(conn)
    long_one, *others = [await f.ticket(conn, mid, user_id=uid) for _ in range(3)]
    writer = await asyncpg.connect(dsn)
    try:
        async with running(daemon_settings(dsn, fake, outbox_poll_seconds=poll)):
            asleep = (
                "SELECT w.sleeping AND NOT EXISTS (SELECT 1 FROM pg_locks l"
                "  WHERE l.locktype = 'advisory' AND l.classid = 5459011 AND l.objid = 1"
                "    AND l.granted)"
                " FROM sla_daemon.wakeups w WHERE w.name = 'outbox'"
            )
            holds = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = 5459011 AND objid = 1 AND mode = 'ExclusiveLock' AND granted"
                " AND pid = pg_backend_pid()"
            )
            tx = writer.transaction()
            for _ in range(20):  # the daemon may be marked awake in between: try again
                await eventually(lambda: conn.fetchval(asleep), what="the sender asleep")
                tx = writer.transaction()
                await tx.start()
                await writer.execute(
                    "UPDATE tickets SET status = 'in_progress' WHERE id = $1", long_one
                )
                if await writer.fetchval(holds):
                    break
                await tx.rollback()
            else:
                pytest.fail("the writer never got the wake-up lock")
            try:
                for i, tid in enumerate(others, start=1):
                    await conn.execute(
                        "UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid
                    )
                    started = time.monotonic()
                    await fake.wait_for(i, timeout=poll + 4.5)
                    assert time.monotonic() - started < poll + 4.5
            finally:
                await tx.commit()
            await fake.wait_for(3, timeout=poll + 4.5)
            states = await wait_until_finished(conn)
    finally:
        await writer.close()
    assert states == Counter({"sent": 3})
    assert len(fake.messages) == 3


# --- 9. the smaller ones ---------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1100, 10**6])
def test_retry_delay_never_overflows(attempts: int) -> None:
    delay = retry_delay(attempts, 2.0, 900.0)
    assert 450.0 <= delay <= 900.0


class BrokenNotifications(NotificationService):
    """A sender with a bug: every status update raises."""

    async def send_status_update(self, *args: Any, **kwargs: Any) -> SendResult:
        raise RuntimeError("a bug in the sender")


async def test_an_unexpected_send_error_counts_as_an_attempt_and_ends_dead(
    conn: asyncpg.Connection, dsn: str, pool: asyncpg.Pool
) -> None:
    # Promise: an exception nobody expected is an attempt like any other: the row is
    # retried, then dead-lettered at max_attempts, never retried forever.
    tid = await f.ticket(conn, await f.municipality(conn), user_id=await f.user(conn))
    settings = daemon_settings(
        dsn, None, max_attempts=3, retry_base_seconds=0.01, retry_max_seconds=0.02
    )
    wake, stopping = asyncio.Event(), asyncio.Event()
    listener = Listener(dsn, {"sla_daemon_outbox": wake})
    await listener.connect()
    try:
        async with BrokenNotifications(settings, CATALOG) as notifications:
            outbox = OutboxProcessor(pool, notifications, settings, awake=listener)
            task = asyncio.create_task(outbox.run(wake, stopping))
            try:
                await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
                await eventually(
                    lambda: conn.fetchval("SELECT state = 'dead' FROM sla_daemon.outbox"),
                    what="the row dead-lettered",
                )
            finally:
                stopping.set()
                await asyncio.wait_for(task, 15)
    finally:
        await listener.close()
    row = await conn.fetchrow("SELECT attempts, last_error FROM sla_daemon.outbox")
    assert row is not None and row["attempts"] == 3
    assert "gave up after 3 attempts" in row["last_error"]
    assert "RuntimeError" in row["last_error"]
