"""The database boundary holds: other roles in the platform database are untrusted.

Each test is an attack that worked before migration 0006: a writer planting types and
functions, forging or jamming notifications, deleting the schedule, holding the
daemon's locks. Writers here have only their own rights on the platform's tables.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from sla_daemon import db
from sla_daemon.escalation import EscalationService
from sla_daemon.metrics import Metrics
from sla_daemon.report import build_report
from sla_daemon.sla import SLAService
from sla_daemon.timer import check_sla_breaches

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_daemon import wait_until_finished
from .test_privileges import as_user

_n = itertools.count()

DAEMON_TABLES = (
    "outbox",
    "outbox_intake",
    "events",
    "deadlines",
    "warnings",
    "wakeups",
    "locks",
    "escalation_marks",
    "sla_defaults",
    "schema_migrations",
)


async def make_writer(conn: asyncpg.Connection, dsn: str, *, create_on_public: bool = False) -> str:
    """A platform role with only its own rights on the platform's tables; its DSN."""
    role = f"platform_writer_{next(_n)}_{abs(hash(dsn)) % 10**6}"
    await conn.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD 'pw';"
        f" GRANT SELECT, INSERT, UPDATE ON public.tickets TO {role};"
        f" GRANT SELECT ON public.municipalities, public.users, public.teams,"
        f" public.sla_configs TO {role};"
    )
    if create_on_public:
        await conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    return as_user(dsn, role, "pw")


async def drop_role(conn: asyncpg.Connection, dsn: str) -> None:
    role = dsn.split("://", 1)[1].split(":", 1)[0]
    await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.fixture
async def writer(conn: asyncpg.Connection, dsn: str) -> AsyncIterator[asyncpg.Connection]:
    url = await make_writer(conn, dsn)
    w = await asyncpg.connect(url)
    try:
        yield w
    finally:
        await w.close()
        await drop_role(conn, url)


async def test_writers_need_no_grant_and_every_change_is_scheduled_and_notified(
    conn: asyncpg.Connection, writer: asyncpg.Connection
) -> None:
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, "water", 2, 48)
    tid = await f.ticket(writer, mid, "water")
    assert (
        await conn.fetchval("SELECT count(*) FROM sla_daemon.deadlines WHERE ticket_id = $1", tid)
        == 2
    )
    await writer.execute("UPDATE tickets SET category = 'roads' WHERE id = $1", tid)
    for status in ("in_progress", "resolved", "open"):  # the last one reopens
        await writer.execute("UPDATE tickets SET status = $1 WHERE id = $2", status, tid)
    rows = await conn.fetch("SELECT kind, new_status FROM sla_daemon.messages ORDER BY id")
    assert [(r["kind"], r["new_status"]) for r in rows] == [
        ("status", "in_progress"),
        ("status", "resolved"),
        ("status", "open"),
    ]
    assert (
        await conn.fetchval("SELECT count(*) FROM sla_daemon.deadlines WHERE ticket_id = $1", tid)
        == 2
    )


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO sla_daemon.{t} DEFAULT VALUES",
        "UPDATE sla_daemon.{t} SET ctid = ctid",
        "DELETE FROM sla_daemon.{t}",
        "TRUNCATE sla_daemon.{t}",
        "SELECT * FROM sla_daemon.{t} LIMIT 1",
    ],
)
async def test_writers_can_touch_no_table_of_the_daemon(
    writer: asyncpg.Connection, statement: str
) -> None:
    for table in DAEMON_TABLES:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await writer.execute(statement.format(t=table))


async def test_writers_cannot_call_the_daemons_functions_or_take_its_claim_lock(
    writer: asyncpg.Connection,
) -> None:
    for call in (
        "SELECT sla_daemon.requeue_dead(NULL)",
        "SELECT * FROM sla_daemon.claim_outbox('x', 10, 60)",
        "SELECT sla_daemon.outbox_sleep()",
        "SELECT 1 FROM sla_daemon.locks FOR UPDATE",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await writer.execute(call)


async def test_a_writer_cannot_forge_an_escalation_notice(
    conn: asyncpg.Connection, writer: asyncpg.Connection
) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    async with writer.transaction():
        await writer.execute("SET LOCAL sla_daemon.escalating = on")
        await writer.execute("UPDATE tickets SET status = 'escalated' WHERE id = $1", tid)
    kinds = await conn.fetch("SELECT kind FROM sla_daemon.messages WHERE ticket_id = $1", tid)
    assert [r["kind"] for r in kinds] == ["status"]


async def test_a_writers_pg_temp_type_never_runs_in_the_trigger(
    conn: asyncpg.Connection, writer: asyncpg.Connection
) -> None:
    # pg_temp is searched first for types unless a path names it: a domain called
    # "text" whose CHECK runs the writer's code would run as the trigger's owner.
    await conn.execute(
        "CREATE TABLE public.pwned (what text, who text); GRANT INSERT ON public.pwned TO PUBLIC"
    )
    tid = await f.ticket(conn, await f.municipality(conn))
    await writer.execute(
        """
        CREATE FUNCTION pg_temp.pwn(v pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.pwned VALUES ('pg_temp.text', current_user);
            RETURN true;
        END $$;
        CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.pwn(VALUE));
        CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (pg_temp.pwn(VALUE::pg_catalog.text));
        """
    )
    await writer.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    await writer.execute("UPDATE tickets SET status = 'open' WHERE id = $1", tid)  # new cycle
    await writer.execute("UPDATE tickets SET category = 'roads' WHERE id = $1", tid)
    assert await conn.fetch("SELECT * FROM public.pwned") == []
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.messages") == 2


LOOKALIKES = """
CREATE TABLE public.pwned (what text, who text);
GRANT INSERT ON public.pwned TO PUBLIC;
CREATE FUNCTION public.note(what text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES (what, current_user) $$;
CREATE FUNCTION public.lookalike_agg(s uuid[], v uuid) RETURNS uuid[] LANGUAGE sql
    AS $$ SELECT public.note('array_agg(uuid)'); SELECT s || v $$;
CREATE AGGREGATE public.array_agg(uuid) (sfunc = public.lookalike_agg, stype = uuid[]);
CREATE FUNCTION public.jsonb_build_object(text, text, text, uuid, text, uuid, text, text)
    RETURNS jsonb LANGUAGE sql
    AS $$ SELECT public.note('jsonb_build_object/8'); SELECT '{}'::jsonb $$;
CREATE FUNCTION public.jsonb_build_object(text, text, text, timestamptz)
    RETURNS jsonb LANGUAGE sql
    AS $$ SELECT public.note('jsonb_build_object/4'); SELECT '{}'::jsonb $$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql
    AS $$ SELECT public.note('format'); SELECT $1 || $2 $$;
CREATE FUNCTION public.power(integer, integer) RETURNS double precision LANGUAGE sql
    AS $$ SELECT public.note('power'); SELECT 1::double precision $$;
CREATE FUNCTION public.quote_literal(text) RETURNS text LANGUAGE sql
    AS $$ SELECT public.note('quote_literal'); SELECT $1 $$;
CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql
    AS $$ SELECT public.note('lower'); SELECT $1 $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql
    AS $$ SELECT public.note('now'); SELECT pg_catalog.now() $$;
CREATE FUNCTION public.current_setting(text, boolean) RETURNS text LANGUAGE sql
    AS $$ SELECT public.note('current_setting'); SELECT pg_catalog.current_setting($1, $2) $$;
CREATE FUNCTION public.pg_try_advisory_xact_lock(integer, integer) RETURNS boolean LANGUAGE sql
    AS $$ SELECT public.note('pg_try_advisory_xact_lock'); SELECT true $$;
CREATE FUNCTION public.hashtext(text) RETURNS integer LANGUAGE sql
    AS $$ SELECT public.note('hashtext'); SELECT 1 $$;
CREATE FUNCTION public.count(uuid) RETURNS bigint LANGUAGE sql
    AS $$ SELECT public.note('count'); SELECT 1::bigint $$;
"""


async def test_lookalikes_planted_in_public_never_run(empty_dsn: str) -> None:
    # The CVE-2018-1058 class: a role that may CREATE in public plants functions that
    # match better than the built-ins (or, on a path that puts public first, exactly).
    admin = await asyncpg.connect(empty_dsn)
    attacker_url = ""
    try:
        # the platform's tables exist before the daemon (migration 0001 makes them)
        await admin.execute(db.load_migrations()[0].sql)
        attacker_url = await make_writer(admin, empty_dsn, create_on_public=True)
        attacker = await asyncpg.connect(attacker_url)
        try:
            await attacker.execute(LOOKALIKES)
        finally:
            await attacker.close()
        # the victim's session puts public first, as many platforms do
        await admin.execute("SET search_path = public, pg_catalog")
        await db.migrate(admin)
        await admin.execute("SET search_path = public, pg_catalog")
        await _exercise_everything(admin, empty_dsn, attacker_url)
        planted_ran = await admin.fetch("SELECT what, who FROM public.pwned")
        assert [tuple(r) for r in planted_ran] == []
    finally:
        if attacker_url:
            await drop_role(admin, attacker_url)
        await admin.close()


async def _exercise_everything(admin: asyncpg.Connection, dsn: str, attacker_url: str) -> None:
    """Migrated; now the daemon escalates, warns and sends, report runs, writers write."""
    mid = await f.municipality(admin)
    manager = await f.user(admin, "0830000000")
    team = await f.team(admin, mid, manager)
    citizen = await f.user(admin, "0821234567", "zu")
    now = await admin.fetchval("SELECT pg_catalog.now()")
    await f.ticket(
        admin,
        mid,
        user_id=citizen,
        assigned_team_id=team,
        created_at=now - timedelta(hours=2),
        sla_response_deadline=now - timedelta(minutes=1),
        sla_resolution_deadline=now + timedelta(hours=5),
    )
    await f.ticket(  # past its warning threshold
        admin, mid, user_id=citizen, created_at=now - timedelta(hours=23)
    )
    writer = await asyncpg.connect(attacker_url)
    try:
        await writer.execute("SET search_path = public, pg_catalog")
        tid = await f.ticket(writer, mid, user_id=citizen)
        for status in ("in_progress", "resolved", "open"):
            await writer.execute("UPDATE tickets SET status = $1 WHERE id = $2", status, tid)
    finally:
        await writer.close()
    async with FakeTwilio() as fake, running(daemon_settings(dsn, fake)) as daemon:
        # the escalation notice, the manager's staff alert, and the newest of three changes
        await fake.wait_for(3)
        assert await wait_until_finished(admin) == Counter({"sent": 3, "superseded": 2})
        assert daemon.timer is not None
    assert await admin.fetchval("SELECT count(*) FROM sla_daemon.events") == 2
    c = await db.connect(dsn)
    try:
        report = await build_report(c, timedelta(days=7))
        assert report.rows
    finally:
        await c.close()


async def test_a_bad_intake_row_is_quarantined_and_the_rest_flow(
    conn: asyncpg.Connection,
) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    # whatever its origin (only the trigger's owner can write the intake now)
    await conn.execute(
        "INSERT INTO sla_daemon.outbox_intake (ticket_id, kind, old_status, new_status)"
        " VALUES ($1, 'bogus', 'open', 'in_progress')",
        tid,
    )
    other = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", other)
    claimed = await conn.fetch("SELECT * FROM sla_daemon.claim_outbox('w', 10, 60)")
    assert [(r["ticket_id"], r["new_status"]) for r in claimed] == [(other, "resolved")]
    dead = await conn.fetchrow(
        "SELECT state, last_error FROM sla_daemon.outbox WHERE ticket_id = $1", tid
    )
    assert dead is not None
    assert dead["state"] == "dead" and "unknown kind 'bogus'" in dead["last_error"]


async def test_a_foreign_session_holding_old_or_new_keys_cannot_stall_claims(
    conn: asyncpg.Connection, dsn: str, writer: asyncpg.Connection
) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    await writer.execute("SELECT pg_advisory_lock(5459010, 0)")  # the old claim key
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await writer.execute("SELECT 1 FROM sla_daemon.locks FOR UPDATE")
    claimed = await asyncio.wait_for(
        conn.fetch("SELECT * FROM sla_daemon.claim_outbox('w', 10, 60)"), 5
    )
    assert [r["ticket_id"] for r in claimed] == [tid]


async def _breached(conn: asyncpg.Connection, n: int) -> list[asyncpg.Record]:
    mid = await f.municipality(conn)
    team = await f.team(conn, mid, await f.user(conn, "0830000000"))
    citizen = await f.user(conn, "0821234567")
    past = await conn.fetchval("SELECT now() - interval '1 minute'")
    ids = [
        await f.ticket(
            conn, mid, user_id=citizen, assigned_team_id=team, sla_response_deadline=past
        )
        for _ in range(n)
    ]
    return [
        await conn.fetchrow("SELECT id, tracking_number FROM tickets WHERE id = $1", i) for i in ids
    ]


async def test_a_foreign_escalation_lock_delays_only_that_ticket_visibly(
    conn: asyncpg.Connection, pool: asyncpg.Pool, writer: asyncpg.Connection
) -> None:
    held, free = await _breached(conn, 2)
    await writer.execute("SELECT pg_advisory_lock(5459009, hashtext($1::uuid::text))", held["id"])
    metrics = Metrics()
    escalation = EscalationService(pool, metrics=metrics)
    await check_sla_breaches(pool, SLAService(pool), escalation, metrics)
    statuses = dict(await conn.fetch("SELECT id, status::text FROM tickets"))
    assert statuses == {held["id"]: "open", free["id"]: "escalated"}
    row = await conn.fetchrow(
        "SELECT attempts, last_error, due_at > now() AS later FROM sla_daemon.deadlines"
        " WHERE ticket_id = $1 AND deadline_kind = 'response'",
        held["id"],
    )
    assert row is not None and row["attempts"] == 1 and row["later"]
    assert "escalation lock held by pid" in row["last_error"]
    assert metrics.escalation_failures.labels("locked")._value.get() == 1
    # once the lock is let go, the ticket's own retry escalates it
    await writer.execute("SELECT pg_advisory_unlock_all()")
    await conn.execute(
        "UPDATE sla_daemon.deadlines SET due_at = now() WHERE ticket_id = $1", held["id"]
    )
    await check_sla_breaches(pool, SLAService(pool), escalation, metrics)
    assert await conn.fetchval("SELECT status::text FROM tickets WHERE id = $1", held["id"]) == (
        "escalated"
    )


async def test_readme_roles_are_least_privilege(conn: asyncpg.Connection) -> None:
    # The runtime role reads and writes only the platform columns it needs, and may
    # not delete the event log or the migration record.
    await conn.execute("ALTER TABLE users ADD COLUMN email text, ADD COLUMN password_hash text")
    has_col = "SELECT has_column_privilege('sla_daemon_runtime', $1::regclass, $2, $3)"
    has_tab = "SELECT has_table_privilege('sla_daemon_runtime', $1::regclass, $2)"
    assert await conn.fetchval(has_col, "public.users", "phone", "SELECT")
    for column in ("email", "password_hash"):
        assert not await conn.fetchval(has_col, "public.users", column, "SELECT")
    assert await conn.fetchval(has_col, "public.tickets", "status", "UPDATE")
    for column in ("tracking_number", "category", "tenant_id", "is_sensitive", "user_id"):
        assert not await conn.fetchval(has_col, "public.tickets", column, "UPDATE")
    for table in ("public.tickets", "public.users", "public.ticket_assignments"):
        assert not await conn.fetchval(has_tab, table, "DELETE")
    for table in ("sla_daemon.events", "sla_daemon.schema_migrations"):
        assert not await conn.fetchval(has_tab, table, "DELETE")
        assert not await conn.fetchval(has_tab, table, "UPDATE")
        assert not await conn.fetchval(has_tab, table, "TRUNCATE")
    # nobody else may use the schema
    assert not await conn.fetchval("SELECT has_schema_privilege('public', 'sla_daemon', 'USAGE')")
    functions = await conn.fetch(
        "SELECT p.oid::regprocedure::text AS name, p.proconfig"
        " FROM pg_proc p WHERE p.pronamespace = 'sla_daemon'::regnamespace"
    )
    unpinned = [
        r["name"]
        for r in functions
        if "search_path=pg_catalog, pg_temp" not in (r["proconfig"] or [])
    ]
    assert functions and unpinned == []


async def test_the_migration_lock_wait_is_bounded_and_names_the_holder(
    conn: asyncpg.Connection, writer: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await writer.execute("SELECT pg_advisory_lock(5459011, 0)")
    monkeypatch.setattr(db, "MIGRATION_LOCK_TIMEOUT", "200ms")
    with pytest.raises(db.MigrationError, match=r"holds the migration lock .*pid \d+"):
        await db.migrate(conn)
    await writer.execute("SELECT pg_advisory_unlock_all()")
    assert await db.migrate(conn) == []
    assert await conn.fetchval("SHOW search_path") == '"$user", public'


async def test_the_daemon_and_cli_sessions_pin_their_search_path(dsn: str) -> None:
    c = await db.connect(dsn)
    try:
        assert await c.fetchval("SHOW search_path") == "pg_catalog, pg_temp"
    finally:
        await c.close()
    p = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        assert await p.fetchval("SHOW search_path") == "pg_catalog, pg_temp"
    finally:
        await p.close()


async def test_escalation_notice_is_still_one_message(conn: asyncpg.Connection, dsn: str) -> None:
    (ticket,) = await _breached(conn, 1)
    async with FakeTwilio() as fake, running(daemon_settings(dsn, fake)):
        await fake.wait_for(2)  # the citizen's notice and the team manager's staff alert
        assert await wait_until_finished(conn) == Counter({"sent": 2})
    kinds = await conn.fetch(
        "SELECT kind FROM sla_daemon.messages WHERE ticket_id = $1 AND recipient_id IS NULL",
        ticket["id"],
    )
    assert [r["kind"] for r in kinds] == ["escalation"]
    assert [m.to for m in fake.messages].count("whatsapp:+27821234567") == 1


async def test_a_foreign_holder_of_the_awake_mark_costs_at_most_a_poll(
    conn: asyncpg.Connection, dsn: str, writer: asyncpg.Connection
) -> None:
    # Advisory locks need no privilege: a foreign session holding the sender's awake
    # mark makes writers believe the sender awake (no NOTIFY) and stops the sender
    # marking itself; changes then wait for the outbox poll, never longer.
    await writer.execute("SELECT pg_advisory_lock(5459011, 1)")
    (ticket,) = await _breached(conn, 1)
    other = await f.ticket(conn, await f.municipality(conn), user_id=await f.user(conn))
    settings = daemon_settings(dsn, None, outbox_poll_seconds=0.5)
    async with running(settings):
        await wait_until_finished(conn)  # the escalation notice (and the staff alert)
        await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", other)
        # no NOTIFY comes (writers see the mark held); the 0.5 s poll picks it up
        states = await wait_until_finished(conn, timeout=5)
    assert states == Counter({"dry_run": 3})
    kinds = await conn.fetch("SELECT ticket_id, kind FROM sla_daemon.messages ORDER BY id")
    assert [(r["ticket_id"], r["kind"]) for r in kinds] == [
        (ticket["id"], "escalation"),
        (ticket["id"], "staff_escalation"),
        (other, "status"),
    ]
