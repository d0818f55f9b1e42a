"""Escalation: to the team manager, once, under an advisory lock, only if still breached."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

import asyncpg
import pytest

from sla_daemon import db
from sla_daemon.escalation import EscalationService
from sla_daemon.sla import SLAService

from . import factories as f


async def breached_ticket(conn: asyncpg.Connection, mid: UUID, **columns: object) -> UUID:
    past = await conn.fetchval("SELECT now() - interval '2 hours'")
    columns.setdefault("sla_response_deadline", past)
    return await f.ticket(conn, mid, **columns)


async def test_escalates_to_the_team_manager(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    mid = await f.municipality(conn)
    manager = await f.user(conn, "0830000000")
    agent = await f.user(conn, "0840000000")
    team = await f.team(conn, mid, manager)
    tid = await breached_ticket(conn, mid, assigned_team_id=team, assigned_to=agent)
    await conn.execute(
        "INSERT INTO ticket_assignments (ticket_id, assigned_to, assigned_team_id, reason)"
        " VALUES ($1, $2, $3, 'triage')",
        tid,
        agent,
        team,
    )
    assert await EscalationService(pool).escalate_ticket(tid) is True
    t = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", tid)
    assert t["status"] == "escalated" and t["assigned_to"] == manager
    assert t["escalated_at"] is not None and "response" in t["escalation_reason"]
    rows = await conn.fetch(
        "SELECT assigned_to, reason, is_active FROM ticket_assignments WHERE ticket_id = $1"
        " ORDER BY created_at",
        tid,
    )
    assert [(r["assigned_to"], r["reason"], r["is_active"]) for r in rows] == [
        (agent, "triage", False),
        (manager, "escalation", True),
    ]
    outbox = await conn.fetch(
        "SELECT kind, new_status, recipient_id FROM sla_daemon.messages WHERE ticket_id = $1"
        " ORDER BY recipient_id NULLS FIRST",
        tid,
    )
    # the citizen's escalation notice, and the manager's staff alert (issue 12)
    assert [(r["kind"], r["new_status"], r["recipient_id"]) for r in outbox] == [
        ("escalation", "escalated", None),
        ("staff_escalation", "escalated", manager),
    ]
    event = await conn.fetchrow("SELECT * FROM sla_daemon.events WHERE kind = 'escalation'")
    assert event["ticket_id"] == tid and event["deadline_kind"] == "response"
    # once escalated it is no longer live: a second call does nothing
    assert await EscalationService(pool).escalate_ticket(tid) is False


async def test_without_manager_keeps_the_assignee(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    mid = await f.municipality(conn)
    agent = await f.user(conn)
    team = await f.team(conn, mid, None)
    tid = await breached_ticket(conn, mid, assigned_team_id=team, assigned_to=agent)
    result = await EscalationService(pool).escalate(tid)
    assert result.escalated and result.outcome == "escalated_without_manager"
    t = await conn.fetchrow("SELECT status, assigned_to FROM tickets WHERE id = $1", tid)
    assert t["status"] == "escalated" and t["assigned_to"] == agent
    active = await conn.fetch(
        "SELECT assigned_to FROM ticket_assignments WHERE ticket_id = $1 AND is_active", tid
    )
    assert [r["assigned_to"] for r in active] == [agent]


async def test_ticket_resolved_after_detection_is_not_escalated(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    mid = await f.municipality(conn)
    tid = await breached_ticket(conn, mid)
    found = [t async for batch in SLAService(pool).find_breached_tickets() for t in batch]
    assert [t.ticket_id for t in found] == [tid]
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    assert await EscalationService(pool).bulk_escalate(found) == 0
    assert await conn.fetchval("SELECT status FROM tickets WHERE id = $1", tid) == "resolved"
    assert await conn.fetchval("SELECT count(*) FROM ticket_assignments") == 0


async def test_deadline_extended_after_detection_is_not_escalated(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    mid = await f.municipality(conn)
    tid = await breached_ticket(conn, mid)
    later = await conn.fetchval("SELECT now() + interval '1 day'")
    await conn.execute("UPDATE tickets SET sla_response_deadline = $2 WHERE id = $1", tid, later)
    result = await EscalationService(pool).escalate(tid)
    assert (result.escalated, result.outcome) == (False, "not_breached")


async def test_a_ticket_locked_elsewhere_is_skipped(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    mid = await f.municipality(conn)
    tid = await breached_ticket(conn, mid)
    async with conn.transaction():
        # the key is derived in SQL from the ticket id: the same in every process
        await conn.execute("SELECT pg_advisory_xact_lock(5459009, hashtext($1::text))", str(tid))
        result = await EscalationService(pool).escalate(tid)
        assert (result.escalated, result.outcome) == (False, "locked")
    assert await EscalationService(pool).escalate_ticket(tid) is True


async def test_four_connections_escalate_200_tickets_exactly_once(
    conn: asyncpg.Connection, dsn: str
) -> None:
    mid = await f.municipality(conn)
    manager = await f.user(conn)
    team = await f.team(conn, mid, manager)
    past = await conn.fetchval("SELECT now() - interval '1 hour'")
    await conn.execute(
        "INSERT INTO tickets (tenant_id, tracking_number, category, assigned_team_id,"
        " sla_response_deadline)"
        " SELECT $1, 'C-' || g, 'water', $2, $3 FROM generate_series(1, 200) g",
        mid,
        team,
        past,
    )
    pools = [await db.create_pool(dsn, min_size=1, max_size=1) for _ in range(4)]
    try:
        breached = [
            t async for batch in SLAService(pools[0]).find_breached_tickets() for t in batch
        ]
        assert len(breached) == 200
        counts = await asyncio.gather(
            *(
                EscalationService(p, concurrency=1).bulk_escalate(
                    list(reversed(breached)) if i % 2 else breached
                )
                for i, p in enumerate(pools)
            )
        )
    finally:
        for p in pools:
            await p.close()
    assert sum(counts) == 200
    assert await conn.fetchval("SELECT count(*) FROM tickets WHERE status = 'escalated'") == 200
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM ticket_assignments WHERE reason = 'escalation' AND is_active"
        )
        == 200
    )
    assert await conn.fetchval("SELECT count(*) FROM ticket_assignments") == 200
    assert (
        await conn.fetchval("SELECT count(*) FROM sla_daemon.events WHERE kind = 'escalation'")
        == 200
    )
    assert (
        await conn.fetchval("SELECT count(*) FROM sla_daemon.messages WHERE kind = 'escalation'")
        == 200
    )


async def test_bulk_escalate_logs_the_count(
    conn: asyncpg.Connection, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await f.municipality(conn)
    for _ in range(3):
        await breached_ticket(conn, mid)
    caplog.set_level(logging.INFO, logger="sla_daemon.escalation")
    count = await EscalationService(pool).bulk_escalate(SLAService(pool).find_breached_tickets())
    assert count == 3
    assert "Escalated 3/3" in caplog.text
