"""SLA rules in the database, reached through SLAService and the ticket triggers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from sla_daemon.sla import SLAService

from . import factories as f

HOUR = 3600.0


def hours(a: datetime | None, b: datetime) -> float:
    assert a is not None
    return (a - b).total_seconds() / HOUR


async def created(conn: asyncpg.Connection, tid: object) -> datetime:
    value: datetime = await conn.fetchval("SELECT created_at FROM tickets WHERE id = $1", tid)
    return value


async def test_config_precedence_and_defaults(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    other = await f.municipality(conn, "Mangaung")
    await f.sla_config(conn, mid, "water", 2, 10, 70)
    await f.sla_config(conn, mid, None, 4, 20)
    await f.sla_config(conn, mid, "roads", 1, 1, active=False)  # inactive: ignored

    water = await sla.get_sla_config(mid, "Water")  # categories match case-insensitively
    assert (water.response_hours, water.resolution_hours, water.warning_threshold_pct) == (
        2,
        10,
        70,
    )
    assert water.source == "category"
    roads = await sla.get_sla_config(mid, "roads")
    assert (roads.response_hours, roads.resolution_hours, roads.source) == (
        4,
        20,
        "municipality_default",
    )
    none = await sla.get_sla_config(other, "water")
    assert (none.response_hours, none.resolution_hours, none.source) == (24, 168, "system_default")

    # the trigger uses the same rule
    for category, expected in (("water", (2, 10)), ("roads", (4, 20))):
        tid = await f.ticket(conn, mid, category)
        resp, res = await f.deadlines(conn, tid)
        at = await created(conn, tid)
        assert (hours(resp, at), hours(res, at)) == expected
    tid = await f.ticket(conn, other, "water")
    resp, res = await f.deadlines(conn, tid)
    assert (hours(resp, await created(conn, tid)), hours(res, await created(conn, tid))) == (
        24,
        168,
    )


async def test_system_defaults_are_configurable(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "UPDATE sla_daemon.sla_defaults SET response_hours = 12, resolution_hours = 72"
    )
    mid = await f.municipality(conn)
    tid = await f.ticket(conn, mid)
    resp, res = await f.deadlines(conn, tid)
    at = await created(conn, tid)
    assert (hours(resp, at), hours(res, at)) == (12, 72)


async def test_calculate_deadlines_matches_trigger(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 0.5, 3)
    at = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    d = await sla.calculate_deadlines(mid, "water", at)
    assert d.response == at + timedelta(minutes=30) and d.resolution == at + timedelta(hours=3)
    tid = await f.ticket(conn, mid, "water", created_at=at)
    assert await f.deadlines(conn, tid) == (d.response, d.resolution)
    sensitive = await sla.calculate_deadlines(mid, "water", at, is_sensitive=True)
    assert sensitive.response is None and sensitive.resolution is None


async def test_explicit_deadlines_are_kept(conn: asyncpg.Connection) -> None:
    mid = await f.municipality(conn)
    mine = datetime(2030, 5, 5, tzinfo=UTC)
    tid = await f.ticket(conn, mid, sla_response_deadline=mine)
    resp, res = await f.deadlines(conn, tid)
    assert resp == mine
    assert hours(res, await created(conn, tid)) == 168  # the one not given is computed


async def test_recompute_on_category_change_only_while_live(conn: asyncpg.Connection) -> None:
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 2, 10)
    await f.sla_config(conn, mid, "electricity", 1, 5)
    tid = await f.ticket(conn, mid, "water")
    at = await created(conn, tid)
    await conn.execute("UPDATE tickets SET category = 'electricity' WHERE id = $1", tid)
    resp, res = await f.deadlines(conn, tid)
    assert (hours(resp, at), hours(res, at)) == (1, 5)
    # an explicit deadline in the same UPDATE wins
    mine = datetime(2031, 1, 1, tzinfo=UTC)
    await conn.execute(
        "UPDATE tickets SET category = 'water', sla_resolution_deadline = $2 WHERE id = $1",
        tid,
        mine,
    )
    resp, res = await f.deadlines(conn, tid)
    assert hours(resp, at) == 2 and res == mine
    # a closed ticket keeps what it had
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    await conn.execute("UPDATE tickets SET category = 'electricity' WHERE id = $1", tid)
    resp, res = await f.deadlines(conn, tid)
    assert hours(resp, at) == 2 and res == mine


async def test_set_ticket_deadlines_after_config_change(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    tid = await f.ticket(conn, mid, "water")
    await f.sla_config(conn, mid, "water", 3, 30)
    d = await sla.set_ticket_deadlines(tid)
    at = await created(conn, tid)
    assert (hours(d.response, at), hours(d.resolution, at)) == (3, 30)
    assert await f.deadlines(conn, tid) == (d.response, d.resolution)


async def test_sensitive_tickets_are_never_monitored(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    past = datetime.now(UTC) - timedelta(days=30)
    gbv = await f.ticket(conn, mid, "gbv", is_sensitive=True, created_at=past)
    assert await f.deadlines(conn, gbv) == (None, None)
    # marked sensitive later: loses its deadlines
    tid = await f.ticket(conn, mid, "water", created_at=past)
    assert (await f.deadlines(conn, tid))[0] is not None
    await conn.execute("UPDATE tickets SET is_sensitive = true WHERE id = $1", tid)
    assert await f.deadlines(conn, tid) == (None, None)
    # even with deadlines forced in behind the trigger's back
    await conn.execute("ALTER TABLE tickets DISABLE TRIGGER sla_daemon_set_deadlines")
    forced = await f.ticket(
        conn,
        mid,
        "gbv",
        is_sensitive=True,
        created_at=past,
        sla_response_deadline=past + timedelta(hours=1),
        sla_resolution_deadline=past + timedelta(hours=2),
    )
    await conn.execute("ALTER TABLE tickets ENABLE TRIGGER sla_daemon_set_deadlines")
    breached = [t async for batch in sla.find_breached_tickets() for t in batch]
    assert breached == []
    warnings = [t async for batch in sla.find_warning_tickets() for t in batch]
    assert warnings == []
    row = await conn.fetchrow("SELECT * FROM sla_daemon.escalate_ticket($1, NULL)", forced)
    assert row["escalated"] is False and row["outcome"] == "not_breached"


async def test_config_constraints_reject_nonsense(conn: asyncpg.Connection) -> None:
    mid = await f.municipality(conn)
    with pytest.raises(asyncpg.CheckViolationError, match="hours_must_be_positive"):
        await f.sla_config(conn, mid, "water", 0, 10)
    with pytest.raises(asyncpg.CheckViolationError, match="hours_must_be_positive"):
        await f.sla_config(conn, mid, "water", 2, -1)
    for pct in (0, 100, 150):
        with pytest.raises(asyncpg.CheckViolationError, match="warning_pct_must_be_1_to_99"):
            await f.sla_config(conn, mid, "water", 2, 10, pct)


async def test_both_breach_types_with_overdue_hours(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    now = await conn.fetchval("SELECT now()")
    response = await f.ticket(
        conn,
        mid,
        sla_response_deadline=now - timedelta(hours=3),
        sla_resolution_deadline=now + timedelta(hours=3),
    )
    resolution = await f.ticket(
        conn,
        mid,
        status="in_progress",
        sla_response_deadline=now - timedelta(hours=9),
        sla_resolution_deadline=now - timedelta(hours=5),
    )
    # in progress past only the response deadline: not a breach
    await f.ticket(
        conn,
        mid,
        status="in_progress",
        sla_response_deadline=now - timedelta(hours=1),
        sla_resolution_deadline=now + timedelta(hours=1),
    )
    await f.ticket(
        conn,
        mid,
        status="resolved",
        sla_response_deadline=now - timedelta(hours=9),
        sla_resolution_deadline=now - timedelta(hours=5),
    )
    found = {t.ticket_id: t async for batch in sla.find_breached_tickets() for t in batch}
    assert set(found) == {response, resolution}
    assert found[response].breach_type == "response"
    assert found[resolution].breach_type == "resolution"
    assert found[response].overdue_by_hours == pytest.approx(3, abs=0.05)
    assert found[resolution].overdue_by_hours == pytest.approx(5, abs=0.05)


async def test_breaches_stream_in_batches_through_an_index(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    past = await conn.fetchval("SELECT now() - interval '1 hour'")
    for _ in range(5):
        await f.ticket(conn, mid, sla_response_deadline=past)
    sizes = [len(batch) async for batch in sla.find_breached_tickets(batch_size=2)]
    assert sizes == [2, 2, 1]
    await conn.execute("SET enable_seqscan = off")
    plan = "\n".join(
        r[0] for r in await conn.fetch("EXPLAIN SELECT * FROM sla_daemon.breached_tickets")
    )
    assert "Seq Scan on tickets" not in plan and "deadlines_due_at" in plan


async def test_warnings_are_reported_once(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 1, 100, warning_pct=75)
    now = await conn.fetchval("SELECT now()")
    # 50 of 60 minutes gone: past 75 % of the response window, not of resolution
    warn = await f.ticket(conn, mid, "water", created_at=now - timedelta(minutes=50))
    await f.ticket(conn, mid, "water", created_at=now - timedelta(minutes=10))  # not yet
    await f.ticket(
        conn, mid, "water", created_at=now - timedelta(minutes=70)
    )  # breached, no warning
    await f.ticket(conn, mid, "water", created_at=now - timedelta(minutes=50), status="resolved")

    due = [w async for batch in sla.find_warning_tickets() for w in batch]
    assert [(w.ticket_id, w.deadline_kind) for w in due] == [(warn, "response")]

    announced: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener("sla_daemon_warning", lambda *a: announced.put_nowait(a[3]))
        recorded = await sla.record_warnings()
        assert [(w.ticket_id, w.deadline_kind) for w in recorded] == [(warn, "response")]
        # the announcement is a bare wake-up (no identifiers for any listener to read);
        # the warning itself is in the event log
        assert await asyncio.wait_for(announced.get(), 5) == ""
    finally:
        await listener.close()
    logged = await conn.fetch(
        "SELECT ticket_id, deadline_kind FROM sla_daemon.events WHERE kind = 'warning'"
    )
    assert [(r["ticket_id"], r["deadline_kind"]) for r in logged] == [(warn, "response")]
    # never again for this deadline, even when the schedule is rebuilt
    assert await sla.record_warnings() == []
    assert [w async for batch in sla.find_warning_tickets() for w in batch] == []
    await conn.execute("SELECT sla_daemon.schedule_tickets(ARRAY[$1::uuid])", warn)
    assert await sla.record_warnings() == []
    # a new deadline (moved, or a new SLA cycle) is a new promise: warned once more
    await conn.execute(
        "UPDATE tickets SET sla_response_deadline = sla_response_deadline + interval '1 second'"
        " WHERE id = $1",
        warn,
    )
    assert [w.ticket_id for w in await sla.record_warnings()] == [warn]
    assert await sla.record_warnings() == []
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning' AND ticket_id = $1", warn
        )
        == 2
    )


async def test_next_event_at_is_the_soonest_warning_or_deadline(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    sla = SLAService(pool)
    assert (await sla.next_event_at()).at is None
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 1, 10, warning_pct=50)
    tid = await f.ticket(conn, mid, "water")
    at = await created(conn, tid)
    event = await sla.next_event_at()
    assert event.at == at + timedelta(minutes=30)  # the response warning comes first
    await f.ticket(conn, mid, "gbv", is_sensitive=True)
    assert (await sla.next_event_at()).at == event.at


async def test_next_event_after_a_given_time_includes_instants_already_past(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # An instant that fell due while a timer pass ran must not be skipped.
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    now = await conn.fetchval("SELECT now()")
    due = now - timedelta(seconds=1)
    await f.ticket(
        conn, mid, sla_response_deadline=due, sla_resolution_deadline=now + timedelta(hours=1)
    )
    assert (await sla.next_event_at(now - timedelta(seconds=5))).at == due
    # from now on, the instant already past is not the next one; something later is
    later = (await sla.next_event_at()).at
    assert later is not None and later > now, later


async def test_reopened_ticket_starts_a_new_cycle(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # A ticket that comes back to life is scheduled again, on a new SLA cycle that
    # starts at the reopening: its old, missed deadlines do not escalate it at once.
    sla = SLAService(pool)
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 2, 48)
    now = await conn.fetchval("SELECT now()")
    tid = await f.ticket(
        conn,
        mid,
        "water",
        status="in_progress",
        created_at=now - timedelta(hours=60),
        sla_resolution_deadline=now - timedelta(minutes=5),
    )
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    await sla.tidy_deadlines()
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.deadlines") == 0
    assert [t async for batch in sla.find_breached_tickets() for t in batch] == []
    async with conn.transaction():  # one now() for the update and the check
        await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid)
        reopened_at = await conn.fetchval("SELECT now()")
        response, resolution = await f.deadlines(conn, tid)
    assert (response, resolution) == (
        reopened_at + timedelta(hours=2),
        reopened_at + timedelta(hours=48),
    )
    assert [t async for batch in sla.find_breached_tickets() for t in batch] == []
    due = await conn.fetch(
        "SELECT deadline_kind, due_at FROM sla_daemon.deadlines WHERE ticket_id = $1", tid
    )
    assert [(r["deadline_kind"], r["due_at"]) for r in due] == [("resolution", resolution)]


async def test_status_updates_stay_hot(conn: asyncpg.Connection) -> None:
    # No index of the daemon's names tickets.status: status changes stay heap-only
    # tuple updates, so writers add no index entries.
    mid = await f.municipality(conn)
    tid = await f.ticket(conn, mid)
    for status in ("in_progress", "open") * 20:
        await conn.execute("UPDATE tickets SET status = $1 WHERE id = $2", status, tid)
    await conn.execute("SELECT pg_stat_force_next_flush()")
    row = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'tickets'"
    )
    assert row["n_tup_upd"] >= 40
    assert row["n_tup_hot_upd"] >= 0.9 * row["n_tup_upd"], dict(row)


async def test_no_before_update_trigger_on_tickets(conn: asyncpg.Connection) -> None:
    # Any BEFORE UPDATE row trigger, even one limited to columns an UPDATE does not
    # name, makes PostgreSQL lock the old row (a tuple lock and its WAL record) before
    # every UPDATE of tickets: the daemon's deadline work on update runs after it.
    names = await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.tickets'::regclass"
        " AND NOT tgisinternal AND tgname LIKE 'sla_daemon%'"
        " AND tgtype::int & 1 = 1 AND tgtype::int & 2 = 2 AND tgtype::int & 16 = 16"
    )
    assert [r["tgname"] for r in names] == []


async def test_reopen_with_a_new_category_starts_a_cycle_on_its_config(
    conn: asyncpg.Connection,
) -> None:
    # One UPDATE that reopens a ticket and changes its category: the new cycle starts
    # at the reopening, with the new category's durations, and is scheduled.
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 2, 48)
    await f.sla_config(conn, mid, "electricity", 1, 5)
    now = await conn.fetchval("SELECT now()")
    tid = await f.ticket(conn, mid, "water", created_at=now - timedelta(hours=60))
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    async with conn.transaction():
        await conn.execute(
            "UPDATE tickets SET status = 'open', category = 'electricity' WHERE id = $1", tid
        )
        reopened_at = await conn.fetchval("SELECT now()")
        response, resolution = await f.deadlines(conn, tid)
    assert (response, resolution) == (
        reopened_at + timedelta(hours=1),
        reopened_at + timedelta(hours=5),
    )
    due = await conn.fetch(
        "SELECT deadline_kind, due_at FROM sla_daemon.deadlines WHERE ticket_id = $1"
        " ORDER BY deadline_kind",
        tid,
    )
    assert [(r["deadline_kind"], r["due_at"]) for r in due] == [
        ("resolution", resolution),
        ("response", response),
    ]
