"""Reporting in business time (issue 12, item 7): first response and resolution per SLA
cycle, recorded by the outbox claim; compliance and overdue hours on each ticket's
calendar; breaches per escalation level."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from sla_daemon.report import BusinessHours, build_report

from . import factories as f
from .test_calendars import OFFICE, calendar, municipality_on, sast
from .test_pauses_levels import add_level, set_status

WEEKDAYS = ["mon-fri 08:00-16:00"]
SINCE_2025 = timedelta(days=366 * 20)  # a period that covers the dated examples


async def claim(conn: asyncpg.Connection) -> None:
    """One claim, as the daemon's sender makes it: intake rows move into the outbox."""
    await conn.fetch("SELECT * FROM sla_daemon.claim_outbox('test', 1000, 30)")


async def change(conn: asyncpg.Connection, tid: UUID, old: str, new: str, at: datetime) -> None:
    """A status change as the status trigger records it, at a chosen instant."""
    await conn.execute(
        "INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status,"
        " created_at) VALUES ($1, 'status', $2, $3, $4)",
        tid,
        old,
        new,
        at,
    )


async def outcomes(conn: asyncpg.Connection, tid: UUID) -> list[tuple[int, bool, bool]]:
    rows = await conn.fetch(
        "SELECT cycle, first_response_at IS NOT NULL AS responded,"
        " resolved_at IS NOT NULL AS resolved"
        " FROM sla_daemon.cycle_outcomes WHERE ticket_id = $1 ORDER BY cycle",
        tid,
    )
    return [(r["cycle"], r["responded"], r["resolved"]) for r in rows]


async def group(conn: asyncpg.Connection, mid: UUID, period: timedelta) -> BusinessHours:
    report = await build_report(conn, period)
    (row,) = [r for r in report.rows if r.municipality_id == mid and not r.is_total]
    return row.business_hours


async def test_compliance_is_counted_in_business_hours_across_a_holiday_weekend(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "office", WEEKDAYS)  # ZA public holidays close it
    mid = await municipality_on(conn, "office", 4, 8)
    # Friday 25 April 2025 15:00; Monday 28 April is Freedom Day (observed).
    created = sast("2025-04-25T15:00:00")
    on_time = await f.ticket(conn, mid, created_at=created)
    late = await f.ticket(conn, mid, created_at=created)
    for tid, resolved in ((on_time, "15:00"), (late, "16:00")):
        # answered Tuesday 09:00: 1 + 1 business hours (96 + wall-clock hours later)
        await change(conn, tid, "open", "in_progress", sast("2025-04-29T09:00:00"))
        await change(conn, tid, "in_progress", "resolved", sast(f"2025-04-29T{resolved}:00"))
    await claim(conn)
    assert await outcomes(conn, on_time) == [(1, True, True)]
    bh = await group(conn, mid, SINCE_2025)
    # on_time: Friday 1 h + Tuesday 7 h = 8 business hours, the target exactly: met;
    # late: 9 business hours, 1 past the target.
    assert (bh.cycles, bh.responses, bh.responses_met) == (2, 2, 2)
    assert (bh.resolutions, bh.resolutions_met) == (2, 1)
    assert bh.resolution_overdue_hours == 1.0
    assert bh.response_overdue_hours == 0.0
    assert bh.resolution_compliance_pct == 50.0


async def test_the_readme_example_takes_7_5_business_hours(conn: asyncpg.Connection) -> None:
    """README, "Reporting in business time": Friday 15:00 to Tuesday 15:00 on `office`."""
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 7.5)
    tid = await f.ticket(conn, mid, created_at=sast("2025-04-25T15:00:00"))
    await change(conn, tid, "open", "resolved", sast("2025-04-29T15:00:00"))
    await claim(conn)
    bh = await group(conn, mid, SINCE_2025)
    assert (bh.resolutions, bh.resolutions_met, bh.resolution_overdue_hours) == (1, 1, 0.0)
    await conn.execute(
        "UPDATE sla_configs SET resolution_hours = 7 WHERE municipality_id = $1", mid
    )
    bh = await group(conn, mid, SINCE_2025)
    assert (bh.resolutions_met, bh.resolution_overdue_hours) == (0, 0.5)


async def test_a_24_7_ticket_of_the_same_dates_is_late_by_wall_clock_hours(
    conn: asyncpg.Connection,
) -> None:
    mid = await municipality_on(conn, None, 4, 8)
    tid = await f.ticket(conn, mid, created_at=sast("2025-04-25T15:00:00"))
    await change(conn, tid, "open", "resolved", sast("2025-04-29T15:00:00"))
    await claim(conn)
    bh = await group(conn, mid, SINCE_2025)
    assert (bh.resolutions, bh.resolutions_met) == (1, 0)
    assert bh.resolution_overdue_hours == 88.0  # 96 wall-clock hours, 8 allowed


async def test_paused_business_time_is_left_out_of_the_resolution_clock(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "office", WEEKDAYS)
    mid = await municipality_on(conn, "office", 4, 8)
    tid = await f.ticket(conn, mid, created_at=sast("2025-04-25T15:00:00"))
    # paused Tuesday 08:00-10:00, resolved Wednesday 09:00
    await conn.execute(
        "INSERT INTO sla_daemon.pauses (ticket_id, started_at, ended_at, status)"
        " VALUES ($1, $2, $3, 'on_hold')",
        tid,
        sast("2025-04-29T08:00:00"),
        sast("2025-04-29T10:00:00"),
    )
    await change(conn, tid, "in_progress", "resolved", sast("2025-04-30T09:00:00"))
    await claim(conn)
    bh = await group(conn, mid, SINCE_2025)
    # Friday 1 + Tuesday 8 + Wednesday 1 = 10 business hours, 2 paused: 8, met
    assert (bh.resolutions, bh.resolutions_met, bh.resolution_overdue_hours) == (1, 1, 0.0)


async def test_a_reopened_ticket_s_second_cycle_is_counted_on_its_own(
    conn: asyncpg.Connection,
) -> None:
    mid = await municipality_on(conn, None, 1, 2)
    tid = await f.ticket(conn, mid)
    # real status changes through the platform's trigger
    for status in ("in_progress", "resolved", "open", "in_progress"):
        await set_status(conn, tid, status)
    await claim(conn)
    assert await outcomes(conn, tid) == [(1, True, True), (2, True, False)]
    bh = await group(conn, mid, timedelta(days=1))
    assert (bh.cycles, bh.responses, bh.responses_met) == (2, 2, 2)
    # the second cycle is neither resolved nor past its 2 hours: not measured yet
    assert (bh.resolutions, bh.resolutions_met) == (1, 1)
    # resolved again: the second cycle's own resolution, the first one's unchanged
    await set_status(conn, tid, "closed")
    await claim(conn)
    assert await outcomes(conn, tid) == [(1, True, True), (2, True, True)]
    first = await conn.fetch(
        "SELECT resolved_at FROM sla_daemon.cycle_outcomes WHERE ticket_id = $1 ORDER BY cycle",
        tid,
    )
    assert first[0]["resolved_at"] < first[1]["resolved_at"]
    bh = await group(conn, mid, timedelta(days=1))
    assert (bh.cycles, bh.resolutions, bh.resolutions_met) == (2, 2, 2)


async def test_the_daemon_s_escalation_is_no_first_response(conn: asyncpg.Connection) -> None:
    mid = await municipality_on(conn, None, 1, 2)
    now: datetime = await conn.fetchval("SELECT now()")
    tid = await f.ticket(conn, mid, created_at=now - timedelta(hours=3))
    row = await conn.fetchrow("SELECT * FROM sla_daemon.escalate_ticket($1)", tid)
    assert row is not None and row["escalated"]
    await claim(conn)
    assert await outcomes(conn, tid) == []
    bh = await group(conn, mid, timedelta(days=1))
    # 3 hours unanswered (1 allowed) and unresolved (2 allowed): both known, both late
    assert (bh.responses, bh.responses_met, bh.resolutions, bh.resolutions_met) == (1, 0, 1, 0)
    assert 1.9 < bh.response_overdue_hours < 2.1 and 0.9 < bh.resolution_overdue_hours < 1.1


async def test_a_claim_twice_over_keeps_the_earliest_instants(conn: asyncpg.Connection) -> None:
    mid = await municipality_on(conn, None, 4, 8)
    tid = await f.ticket(conn, mid, created_at=sast("2025-04-25T15:00:00"))
    await change(conn, tid, "open", "in_progress", sast("2025-04-25T16:00:00"))
    await claim(conn)
    await change(conn, tid, "in_progress", "open", sast("2025-04-25T16:30:00"))
    await change(conn, tid, "open", "in_progress", sast("2025-04-25T17:00:00"))
    await change(conn, tid, "in_progress", "resolved", sast("2025-04-25T18:00:00"))
    await change(conn, tid, "resolved", "closed", sast("2025-04-25T19:00:00"))
    await claim(conn)
    row = await conn.fetchrow(
        "SELECT first_response_at, resolved_at FROM sla_daemon.cycle_outcomes WHERE ticket_id = $1",
        tid,
    )
    assert row is not None
    assert (row["first_response_at"], row["resolved_at"]) == (
        sast("2025-04-25T16:00:00"),
        sast("2025-04-25T18:00:00"),
    )


async def test_breaches_are_counted_per_escalation_level(conn: asyncpg.Connection) -> None:
    mid = await municipality_on(conn, None, 1, 2)
    head = await f.user(conn)
    await add_level(conn, mid, 2, 0.5, head)
    now: datetime = await conn.fetchval("SELECT now()")
    tickets = [await f.ticket(conn, mid, created_at=now - timedelta(hours=3)) for _ in range(3)]
    for tid in tickets:
        row = await conn.fetchrow("SELECT * FROM sla_daemon.escalate_ticket($1)", tid)
        assert row is not None and row["escalated"]
    # the first ticket's level 2 comes due and fires
    await conn.execute(
        "UPDATE sla_daemon.level_schedule SET due_at = now() - interval '1 s' WHERE ticket_id = $1",
        tickets[0],
    )
    fired = await conn.fetch("SELECT * FROM sla_daemon.escalate_levels($1)", tickets[0])
    assert [(r["outcome"], r["level"]) for r in fired] == [("escalated", 2)]
    report = await build_report(conn, timedelta(days=1))
    assert report.total.business_hours.breaches_by_level == ((1, 3), (2, 1))
    town = next(r for r in report.rows if r.municipality_id == mid and not r.is_total)
    assert town.business_hours.as_dict()["breaches_by_level"] == {"1": 3, "2": 1}
