"""Pausing statuses, SLA cycles and escalation levels (issue 12)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from sla_daemon.escalation import EscalationService
from sla_daemon.metrics import Metrics
from sla_daemon.sla import SLAService
from sla_daemon.timer import check_sla_breaches

from . import factories as f
from .test_calendars import calendar, municipality_on, sast

WEEKDAYS = ["mon-fri 08:00-16:00"]


async def pausable(conn: asyncpg.Connection) -> None:
    """The platform's enum gets the pausing statuses the daemon's table lists."""
    for status in ("on_hold", "waiting_on_citizen"):
        await conn.execute(f"ALTER TYPE ticket_status ADD VALUE IF NOT EXISTS '{status}'")


async def set_status(conn: asyncpg.Connection, tid: UUID, status: str) -> None:
    await conn.execute("UPDATE tickets SET status = $2 WHERE id = $1", tid, status)


async def test_a_pause_across_a_weekend_counts_business_time_only(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "weekdays", WEEKDAYS, country=None)
    mid = await municipality_on(conn, "weekdays", 4, 16)
    # Friday 10:00 + 16 business hours: Friday 6, Monday 8, Tuesday 2 -> Tuesday 10:00
    tid = await f.ticket(conn, mid, created_at=sast("2030-01-04T10:00:00"))
    assert (await f.deadlines(conn, tid))[1] == sast("2030-01-08T10:00:00")
    # paused from Friday 14:00 to Monday 10:00: 2 + 2 business hours, not 68 wall hours
    await conn.execute(
        "INSERT INTO sla_daemon.pauses (ticket_id, started_at, ended_at, status)"
        " VALUES ($1, $2, $3, 'on_hold')",
        tid,
        sast("2030-01-04T14:00:00"),
        sast("2030-01-07T10:00:00"),
    )
    deadlines = "SELECT * FROM sla_daemon.ticket_deadlines($1, $2, 'water', $3)"
    row = await conn.fetchrow(deadlines, tid, mid, sast("2030-01-04T10:00:00"))
    assert row["resolution_deadline"] == sast("2030-01-08T14:00:00")
    assert row["response_deadline"] == sast("2030-01-04T14:00:00")  # never paused
    # A closure on that Monday, added during (or after) the pause: the pause's Monday
    # part no longer counts, and neither does Monday's work time.
    await conn.execute("SELECT sla_daemon.add_closure('weekdays', '2030-01-07', 'Municipal day')")
    row = await conn.fetchrow(deadlines, tid, mid, sast("2030-01-04T10:00:00"))
    # Friday 6 (of which 2 paused: 4 count), Tuesday 8, Wednesday 4 -> Wednesday 12:00
    assert row["resolution_deadline"] == sast("2030-01-09T12:00:00")


async def test_a_paused_ticket_cannot_breach_and_resumes_with_its_pause_added(
    conn: asyncpg.Connection,
) -> None:
    await pausable(conn)
    mid = await municipality_on(conn, None, 4, 16)
    tid = await f.ticket(conn, mid)
    await set_status(conn, tid, "in_progress")
    _, before = await f.deadlines(conn, tid)
    await set_status(conn, tid, "waiting_on_citizen")
    assert (await f.deadlines(conn, tid))[1] is None
    assert not await conn.fetchval(
        "SELECT count(*) FROM sla_daemon.deadlines WHERE ticket_id = $1", tid
    )
    assert (
        await conn.fetchval(
            "SELECT sla_daemon.breach_type('waiting_on_citizen', false, now() - interval '1 h',"
            " NULL, now() + interval '1 year')"
        )
        is None
    )
    await set_status(conn, tid, "in_progress")
    pause = await conn.fetchrow("SELECT * FROM sla_daemon.pauses WHERE ticket_id = $1", tid)
    _, after = await f.deadlines(conn, tid)
    assert after == before + (pause["ended_at"] - pause["started_at"])  # type: ignore[operator]
    # a return from a pause is the same cycle, not a new one
    assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.cycles")
    assert (
        await conn.fetchval("SELECT due_at FROM sla_daemon.deadlines WHERE ticket_id = $1", tid)
        == after
    )


async def test_pausing_after_a_breach_does_not_hide_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await pausable(conn)
    mid = await municipality_on(conn, None, 4, 16)
    past = await conn.fetchval("SELECT now() - interval '1 minute'")
    tid = await f.ticket(conn, mid, status="in_progress", sla_resolution_deadline=past)
    await set_status(conn, tid, "on_hold")
    assert (await f.deadlines(conn, tid))[1] == past
    assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.pauses")
    await check_sla_breaches(pool, SLAService(pool), EscalationService(pool))
    assert await conn.fetchval("SELECT status::text FROM tickets WHERE id = $1", tid) == (
        "escalated"
    )


async def test_a_reentry_records_a_new_cycle(conn: asyncpg.Connection) -> None:
    mid = await municipality_on(conn, None, 4, 16)
    tid = await f.ticket(conn, mid)
    await set_status(conn, tid, "resolved")
    await set_status(conn, tid, "open")
    await set_status(conn, tid, "closed")
    await set_status(conn, tid, "in_progress")
    cycles = await conn.fetch(
        "SELECT cycle FROM sla_daemon.cycles WHERE ticket_id = $1 ORDER BY cycle", tid
    )
    assert [r["cycle"] for r in cycles] == [2, 3]


async def add_level(
    conn: asyncpg.Connection, mid: UUID, level: int, hours: float, person: UUID
) -> None:
    await conn.execute(
        "INSERT INTO sla_daemon.escalation_levels (municipality_id, level, after_hours,"
        " assign_to) VALUES ($1, $2, $3, $4)",
        mid,
        level,
        hours,
        person,
    )


async def levels_ticket(
    conn: asyncpg.Connection, overdue: timedelta
) -> tuple[UUID, UUID, UUID, UUID, UUID]:
    mid = await municipality_on(conn, None, 4, 16)
    manager, head, mm = [await f.user(conn, f"083000000{i}") for i in range(3)]
    team = await f.team(conn, mid, manager)
    for level, hours, person in ((2, 1, head), (3, 2, mm)):
        await add_level(conn, mid, level, hours, person)
    deadline = await conn.fetchval("SELECT now() - $1::interval", overdue)
    citizen = await f.user(conn, "0821234567")
    tid = await f.ticket(
        conn,
        mid,
        user_id=citizen,
        status="in_progress",
        assigned_team_id=team,
        sla_resolution_deadline=deadline,
    )
    return tid, mid, manager, head, mm


async def test_levels_missed_while_stopped_fire_once_each_in_order(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # The deadline passed 3 h ago: level 1 (then), 2 (+1 h) and 3 (+2 h) were all missed
    # while no daemon ran. The first pass fires them in order; later passes nothing.
    tid, _mid, manager, head, mm = await levels_ticket(conn, timedelta(hours=3))
    metrics = Metrics()
    sla, escalation = SLAService(pool), EscalationService(pool, metrics=metrics)
    result = await check_sla_breaches(pool, sla, escalation, metrics)
    assert (result.escalated, result.levels) == (1, 2)
    for _ in range(2):
        again = await check_sla_breaches(pool, sla, escalation, metrics)
        assert (again.escalated, again.levels) == (0, 0)
    events = await conn.fetch(
        "SELECT level, cycle FROM sla_daemon.events WHERE ticket_id = $1 AND kind = 'escalation'"
        " ORDER BY id",
        tid,
    )
    assert [(e["level"], e["cycle"]) for e in events] == [(1, 1), (2, 1), (3, 1)]
    assignments = await conn.fetch(
        "SELECT assigned_to, reason, is_active FROM ticket_assignments WHERE ticket_id = $1"
        " ORDER BY created_at, is_active",
        tid,
    )
    assert [(a["assigned_to"], a["is_active"]) for a in assignments] == [
        (manager, False),
        (head, False),
        (mm, True),
    ]
    assert await conn.fetchval("SELECT assigned_to FROM tickets WHERE id = $1", tid) == mm
    # the citizen: one escalation notice for the cycle, not one per level
    messages = await conn.fetch(
        "SELECT kind FROM sla_daemon.messages WHERE ticket_id = $1 AND recipient_id IS NULL", tid
    )
    assert [m["kind"] for m in messages] == ["escalation"]
    assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.level_schedule")
    assert metrics.escalation_levels.labels("2")._value.get() == 1


async def test_a_level_waits_for_its_business_time_and_is_moot_once_resolved(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    tid, *_ = await levels_ticket(conn, timedelta(minutes=30))
    sla, escalation = SLAService(pool), EscalationService(pool)
    result = await check_sla_breaches(pool, sla, escalation)
    assert (result.escalated, result.levels) == (1, 0)
    due = await conn.fetchrow("SELECT level, due_at, base_deadline FROM sla_daemon.level_schedule")
    assert due["level"] == 2 and due["due_at"] == due["base_deadline"] + timedelta(hours=1)
    assert result.next_at is not None and result.next_at <= due["due_at"]
    # due now, but resolved meanwhile: never fires
    await conn.execute("UPDATE sla_daemon.level_schedule SET due_at = now() - interval '1 s'")
    await set_status(conn, tid, "resolved")
    result = await check_sla_breaches(pool, sla, escalation)
    assert result.levels == 0
    assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.level_schedule")


async def test_levels_take_the_same_lock_and_retry_on_their_own_backoff(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    tid, *_ = await levels_ticket(conn, timedelta(hours=3))
    escalation = EscalationService(pool)
    assert await escalation.escalate_ticket(tid)
    other = await asyncpg.connect(dsn)
    try:
        await other.execute("SELECT pg_advisory_lock(5459009, hashtext($1::text))", str(tid))
        results = await escalation.escalate_due_levels()
        assert [r.outcome for r in results] == ["locked"]
        row = await conn.fetchrow(
            "SELECT attempts, due_at > now() AS later FROM sla_daemon.level_schedule"
        )
        assert row["attempts"] == 1 and row["later"]
    finally:
        await other.close()
    await conn.execute("UPDATE sla_daemon.level_schedule SET due_at = now() - interval '1 s'")
    assert [r.level for r in await escalation.escalate_due_levels()] == [2, 3]


async def test_explain_tells_how_each_deadline_was_reached(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await calendar(conn, "office", ["mon-fri 08:00-12:30,13:30-16:30"])
    mid = await municipality_on(conn, "office", 8, 16)
    tid = await f.ticket(conn, mid, "billing", created_at=sast("2025-04-25T15:00:00"))
    number = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", tid)
    doc = await SLAService(pool).explain(number)
    assert doc is not None
    assert doc["calendar"]["name"] == "office" and doc["calendar"]["source"] == "municipality"
    assert doc["config"]["source"] == "municipality_default"
    assert doc["deadlines"]["response"]["business_hours"] == 8
    # closures between the cycle's start and the last deadline, on days it would open
    assert [c["day"] for c in doc["closures"]] == ["2025-04-28"]
    assert doc["cycle"]["number"] == 1
    assert datetime.fromisoformat(doc["cycle"]["started_at"]) == sast("2025-04-25T15:00:00")
    assert await SLAService(pool).explain("NO-SUCH") is None


async def test_the_readme_worked_example(conn: asyncpg.Connection) -> None:
    await calendar(conn, "office", ["mon-fri 08:00-12:30,13:30-16:30"])
    mid = await municipality_on(conn, "office", 8, 16)
    for level, hours in ((2, 8), (3, 24)):
        await add_level(conn, mid, level, hours, await f.user(conn))
    created = sast("2025-04-25T15:00:00")
    tid = await f.ticket(conn, mid, "billing", created_at=created)
    assert await f.deadlines(conn, tid) == (
        sast("2025-04-29T15:30:00"),
        sast("2025-04-30T16:00:00"),
    )
    await conn.execute(
        "INSERT INTO sla_daemon.pauses (ticket_id, started_at, ended_at, status)"
        " VALUES ($1, $2, $3, 'waiting_on_citizen')",
        tid,
        sast("2025-04-29T10:00:00"),
        sast("2025-04-30T09:00:00"),
    )
    assert (
        await conn.fetchval(
            "SELECT sla_daemon.paused_seconds($1, sla_daemon.calendar_for($2, 'billing'), $3)",
            tid,
            mid,
            created,
        )
        == 6.5 * 3600
    )
    row = await conn.fetchrow(
        "SELECT * FROM sla_daemon.ticket_deadlines($1, $2, 'billing', $3)", tid, mid, created
    )
    deadline = row["resolution_deadline"]
    assert deadline == sast("2025-05-02T15:00:00")
    due = "SELECT sla_daemon.level_due($1, 'billing', $2, $3::smallint)"
    assert await conn.fetchval(due, mid, deadline, 2) == sast("2025-05-05T15:30:00")
    assert await conn.fetchval(due, mid, deadline, 3) == sast("2025-05-07T16:30:00")
