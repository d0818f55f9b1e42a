"""Issue 11: tickets that existed before sla-daemon was installed are adopted: given
their deadlines in batches, scheduled like new ones; already breached ones escalated,
or recorded without escalating, as the operator chooses."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg

from . import factories as f
from .daemon_harness import daemon_settings, running
from .test_cli import cli, cli_env
from .waiting import eventually


async def pre_existing(conn: asyncpg.Connection) -> dict[str, UUID]:
    """Tickets as a platform had them before installation: no deadlines."""
    muni = await f.municipality(conn)
    user = await f.user(conn)
    now = await conn.fetchval("SELECT now()")
    tickets = {
        "fresh": await f.ticket(conn, muni, user_id=user, created_at=now),
        "late": await f.ticket(conn, muni, user_id=user, created_at=now - timedelta(days=3)),
        "late_working": await f.ticket(
            conn, muni, user_id=user, created_at=now - timedelta(days=30), status="in_progress"
        ),
        "resolved": await f.ticket(
            conn, muni, user_id=user, created_at=now - timedelta(days=30), status="resolved"
        ),
        "sensitive": await f.ticket(conn, muni, user_id=user, is_sensitive=True),
    }
    await conn.execute(
        "UPDATE tickets SET sla_response_deadline = NULL, sla_resolution_deadline = NULL"
    )
    assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.deadlines")
    return tickets


async def test_migrate_names_the_unadopted_and_adopt_records_breaches_in_batches(
    conn: asyncpg.Connection, dsn: str
) -> None:
    t = await pre_existing(conn)
    migrate = await cli("migrate", env=cli_env(dsn))
    assert migrate.code == 0, migrate.text
    assert "3 live tickets without deadlines" in migrate.out
    assert "run sla-daemon adopt" in migrate.out

    result = await cli("adopt", "--batch-size", "2", "--breached", "record", env=cli_env(dsn))
    assert result.code == 0, result.text
    assert result.out.splitlines()[:2] == [
        "adopted 2 of 3 (2 already breached)",  # oldest first: late_working, late
        "adopted 3 of 3 (2 already breached)",
    ], result.out
    assert "adopted 3 tickets; 2 already breached: recorded as adopted_breached" in result.out

    for name in ("fresh", "late", "late_working"):
        _response, resolution = await f.deadlines(conn, t[name])
        assert resolution is not None, name
    for name in ("resolved", "sensitive"):
        assert await f.deadlines(conn, t[name]) == (None, None), name
    # Breaches recorded, out of the schedule; the fresh ticket scheduled like a new one.
    recorded = await conn.fetch(
        "SELECT ticket_id, deadline_kind FROM sla_daemon.events WHERE kind = 'adopted_breached'"
    )
    assert {(r["ticket_id"], r["deadline_kind"]) for r in recorded} == {
        (t["late"], "response"),
        (t["late_working"], "resolution"),
    }
    assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.breached_tickets")
    scheduled = await conn.fetch("SELECT ticket_id, deadline_kind FROM sla_daemon.deadlines")
    assert {(r["ticket_id"], r["deadline_kind"]) for r in scheduled} == {
        (t["fresh"], "response"),
        (t["fresh"], "resolution"),
        (t["late"], "resolution"),  # 3 days old: its 7-day resolution deadline is to come
    }
    again = await cli("adopt", env=cli_env(dsn))
    assert "adopted 0 tickets" in again.out
    assert "without deadlines" not in (await cli("migrate", env=cli_env(dsn))).out


async def test_adopted_breached_tickets_are_escalated_by_the_daemon(
    conn: asyncpg.Connection, dsn: str
) -> None:
    t = await pre_existing(conn)
    result = await cli("adopt", env=cli_env(dsn))
    assert result.code == 0, result.text
    assert "2 already breached: escalated by the running daemon's next pass" in result.out
    async with running(daemon_settings(dsn, None)):

        async def escalated() -> bool:
            states = dict(await conn.fetch("SELECT id, status::text FROM tickets"))
            return states[t["late"]] == states[t["late_working"]] == "escalated"

        await eventually(escalated, timeout=20, what="adopted breached tickets escalated")
    assert (
        await conn.fetchval("SELECT status::text FROM tickets WHERE id = $1", t["fresh"]) == "open"
    )
