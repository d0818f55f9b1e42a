"""Migrations: idempotent, concurrent-safe, and harmless to an existing platform database."""

from __future__ import annotations

import asyncio

import asyncpg

from sla_daemon import db

from . import factories as f

PLATFORM_WITH_TEXT_STATUS = """
CREATE TABLE municipalities (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id uuid PRIMARY KEY, phone text, preferred_language text);
CREATE TABLE teams (id uuid PRIMARY KEY, tenant_id uuid, name text, manager_id uuid);
CREATE TABLE tickets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant_id uuid NOT NULL,
    tracking_number text UNIQUE NOT NULL, user_id uuid, category text NOT NULL,
    status text NOT NULL DEFAULT 'open', is_sensitive boolean NOT NULL DEFAULT false,
    assigned_team_id uuid, assigned_to uuid, created_at timestamptz NOT NULL DEFAULT now(),
    sla_response_deadline timestamptz, sla_resolution_deadline timestamptz,
    escalated_at timestamptz, escalation_reason text, legacy_note text);
CREATE TABLE ticket_assignments (id uuid PRIMARY KEY, ticket_id uuid, assigned_to uuid,
    assigned_team_id uuid, reason text, is_active boolean, created_at timestamptz);
CREATE TABLE sla_configs (id serial PRIMARY KEY, municipality_id uuid, category text,
    response_hours integer, resolution_hours integer, warning_threshold_pct integer,
    is_active boolean);
INSERT INTO municipalities VALUES ('00000000-0000-0000-0000-000000000001', 'Msunduzi');
INSERT INTO tickets (tenant_id, tracking_number, category, legacy_note)
    VALUES ('00000000-0000-0000-0000-000000000001', 'OLD-1', 'roads', 'keep me');
INSERT INTO tickets (tenant_id, tracking_number, category, sla_response_deadline)
    VALUES ('00000000-0000-0000-0000-000000000001', 'OLD-2', 'roads', now() - interval '1 hour');
-- a config that predates the constraints: kept, ignored by the rules
INSERT INTO sla_configs (municipality_id, category, response_hours, resolution_hours,
    warning_threshold_pct, is_active)
    VALUES ('00000000-0000-0000-0000-000000000001', NULL, 0, 0, 80, true);
"""


async def test_migrate_twice_on_empty_database(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        first = await db.migrate(conn)
        second = await db.migrate(conn)
        assert [m.version for m in first] == [m.version for m in db.load_migrations()]
        assert second == []
        assert await db.pending_migrations(conn) == []
        recorded = await conn.fetchval("SELECT count(*) FROM sla_daemon.schema_migrations")
        assert recorded == len(first)
        # the platform tables were created, with the enum the platform's ORM uses
        assert (
            await conn.fetchval(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'tickets' AND column_name = 'status'"
            )
            == "USER-DEFINED"
        )
    finally:
        await conn.close()


async def test_migrate_on_existing_platform_tables_keeps_them(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(PLATFORM_WITH_TEXT_STATUS)
        assert len(await db.migrate(conn)) == len(db.load_migrations())
        assert await db.migrate(conn) == []
        # nothing of theirs was dropped or rewritten
        old = await conn.fetchrow(
            "SELECT status, legacy_note FROM tickets WHERE tracking_number = 'OLD-1'"
        )
        assert old["status"] == "open" and old["legacy_note"] == "keep me"
        assert (
            await conn.fetchval(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'tickets' AND column_name = 'status'"
            )
            == "text"
        )
        assert await conn.fetchval("SELECT count(*) FROM sla_configs") == 1
        # live tickets that already had deadlines were scheduled by the migration
        breached = await conn.fetch(
            "SELECT tracking_number, breach_type FROM sla_daemon.breached_tickets"
        )
        assert [tuple(r) for r in breached] == [("OLD-2", "response")]
        # the rules work on a text status column; the bad legacy config is ignored
        mid = "00000000-0000-0000-0000-000000000001"
        tid = await f.ticket(conn, mid, "water")
        created, (resp, res) = (
            await conn.fetchval("SELECT created_at FROM tickets WHERE id = $1", tid),
            await f.deadlines(conn, tid),
        )
        assert resp is not None and res is not None
        assert (resp - created).total_seconds() == 24 * 3600
        await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid)
        assert (
            await conn.fetchval(
                "SELECT new_status FROM sla_daemon.messages WHERE ticket_id = $1", tid
            )
            == "in_progress"
        )
        # escalation works with text status and an id column that had no default
        await conn.execute(
            "UPDATE tickets SET sla_resolution_deadline = now() - interval '1 minute'"
            " WHERE id = $1",
            tid,
        )
        row = await conn.fetchrow("SELECT * FROM sla_daemon.escalate_ticket($1, NULL)", tid)
        assert row["escalated"] is True
        assert await conn.fetchval("SELECT status FROM tickets WHERE id = $1", tid) == "escalated"
        # the partial indexes match the view on a text column too
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN SELECT * FROM sla_daemon.breached_tickets")
        )
        assert "Seq Scan on tickets" not in plan and "deadlines_due_at" in plan
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(db.load_migrations())]
    finally:
        for c in conns:
            await c.close()


async def test_uninstall_removes_only_what_the_daemon_owns(conn: asyncpg.Connection) -> None:
    mid = await f.municipality(conn)
    await f.ticket(conn, mid)
    await conn.execute((db.sql_dir() / "uninstall.sql").read_text())
    assert await conn.fetchval("SELECT to_regnamespace('sla_daemon')") is None
    assert await conn.fetchval("SELECT count(*) FROM tickets") == 1
    triggers = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tickets'::regclass AND NOT tgisinternal"
    )
    assert triggers == 0
    assert (
        await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'sla_daemon%'")
        == 0
    )
    constraints = await conn.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sla_configs'::regclass"
        " AND conname LIKE 'sla_configs_%must%'"
    )
    assert constraints == 0
    # the daemon's roles keep no grant on the platform's tables (here: the roles stay
    # while other databases of the test cluster use them)
    for view in ("role_table_grants", "column_privileges"):
        assert (
            await conn.fetchval(
                f"SELECT count(*) FROM information_schema.{view}"
                " WHERE grantee IN ('sla_daemon_owner', 'sla_daemon_runtime')"
            )
            == 0
        )
    # and it can be installed again
    assert len(await db.migrate(conn)) == len(db.load_migrations())
