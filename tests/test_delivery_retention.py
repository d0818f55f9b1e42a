"""Issue 13: the delivery tables are purged with the outbox and event retention, through
functions of the schema's owner (the daemon's role deletes nothing there itself), and
the README's least-privilege role is enough for replies, reconciliation and retention."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_privileges import as_user, readme_role
from .test_webhooks import ADDRESS, PHONE, change, hooked, url
from .waiting import eventually

OLD, RECENT = "now() - interval '40 days'", "now() - interval '2 days'"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def test_delivery_tables_past_retention_are_purged_keeping_what_must_stay(
    conn: asyncpg.Connection, dsn: str
) -> None:
    deliveries = [  # (sid, phone, created/updated): per number, the newest always stays
        ("SMold1", "+27821111111", OLD),  # old, a newer one for the number: goes
        ("SMnew1", "+27821111111", RECENT),  # stays
        ("SMold2", "+27822222222", OLD),  # old but its number's newest: stays
    ]
    for sid, phone, at in deliveries:
        await conn.execute(
            "INSERT INTO sla_daemon.deliveries (message_sid, phone, status, created_at,"
            f" updated_at) VALUES ($1, $2, 'read', {at}, {at})",
            sid,
            phone,
        )
        await conn.execute(
            "INSERT INTO sla_daemon.delivery_events (message_sid, status, received_at)"
            f" VALUES ($1, 'read', {at})",
            sid,
        )
    await conn.execute(
        "INSERT INTO sla_daemon.inbound_messages (message_sid, phone, kind, received_at) VALUES"
        " ('SMin1', '+27821111111', 'reply', now() - interval '400 days'),"  # goes
        " ('SMin2', '+27821111111', 'stop', now() - interval '10 days')"  # stays
    )
    await conn.execute(
        "INSERT INTO sla_daemon.contacts (phone, opted_out_at, last_inbound_at, updated_at)"
        " VALUES ('+27821111111', now() - interval '400 days', NULL, now() - interval '400 days'),"
        " ('+27823333333', NULL, now() - interval '400 days', now() - interval '400 days')"
    )  # the opt-out stays however old; a number with nothing to remember goes
    settings = daemon_settings(dsn, None, outbox_retention_days=30, event_retention_days=365)
    async with running(settings):
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 1 FROM sla_daemon.inbound_messages"
                " WHERE NOT EXISTS (SELECT 1 FROM sla_daemon.deliveries"
                "                   WHERE message_sid = 'SMold1')"
                " AND NOT EXISTS (SELECT 1 FROM sla_daemon.contacts"
                "                 WHERE phone = '+27823333333')"
            ),
            what="purge",
        )
    assert {r[0] for r in await conn.fetch("SELECT message_sid FROM sla_daemon.deliveries")} == {
        "SMnew1",
        "SMold2",
    }
    events = await conn.fetch("SELECT message_sid FROM sla_daemon.delivery_events")
    assert {r[0] for r in events} == {"SMnew1", "SMold2"}
    assert await conn.fetchval("SELECT message_sid FROM sla_daemon.inbound_messages") == "SMin2"
    assert await conn.fetchval("SELECT phone FROM sla_daemon.contacts") == "+27821111111"


async def test_opted_out_and_withheld_rows_are_purged_keeping_each_tickets_newest(
    conn: asyncpg.Connection,
) -> None:
    from sla_daemon.db import QUERIES

    mid = await f.municipality(conn)
    a, b = await f.ticket(conn, mid), await f.ticket(conn, mid)
    rows = [(1, a, "opted_out"), (2, a, "withheld"), (3, b, "withheld"), (4, a, "sent")]
    for oid, tid, state in rows:
        await conn.execute(
            "INSERT INTO sla_daemon.outbox (id, ticket_id, new_status, state, finished_at)"
            f" VALUES ($1, $2, 'resolved', $3, {OLD})",
            oid,
            tid,
            state,
        )
    assert await conn.fetchval(QUERIES["purge_outbox"], 30.0, 5000) == 2
    kept = await conn.fetch("SELECT id FROM sla_daemon.outbox ORDER BY id")
    assert [r["id"] for r in kept] == [3, 4]  # each ticket's newest


async def test_the_daemons_role_deletes_nothing_itself_and_may_purge_through_functions(
    conn: asyncpg.Connection,
) -> None:
    has_tab = "SELECT has_table_privilege('sla_daemon_runtime', $1::regclass, $2)"
    has_fn = "SELECT has_function_privilege($1, $2::regprocedure, 'EXECUTE')"
    for table in (
        "sla_daemon.deliveries",
        "sla_daemon.delivery_events",
        "sla_daemon.inbound_messages",
        "sla_daemon.contacts",
        "sla_daemon.events",
    ):
        assert not await conn.fetchval(has_tab, table, "DELETE"), table
        assert not await conn.fetchval(has_tab, table, "TRUNCATE"), table
    for fn in ("purge_deliveries", "purge_inbound"):
        signature = f"sla_daemon.{fn}(double precision, integer)"
        assert await conn.fetchval(has_fn, "sla_daemon_runtime", signature)
        assert not await conn.fetchval(has_fn, "public", signature)


async def test_replies_reconciliation_and_retention_work_with_only_the_readme_grants(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    async with readme_role(conn, dsn) as role:
        mid = await f.municipality(conn)
        uid = await f.user(conn, PHONE, "en")
        tid = await f.ticket(conn, mid, user_id=uid)
        settings = hooked(
            as_user(dsn, role, "pw"),
            fake,
            not_fixed_action="reopen",
            reconcile_after_seconds=0.3,
            reconcile_interval_seconds=0.1,
            outbox_retention_days=30,
        )
        async with running(settings) as daemon:
            await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "hello")
            await change(conn, tid, "resolved")
            (msg,) = await fake.wait_for(1)
            fake.statuses[msg.sid] = ("delivered", None)  # no callback: found by lookup

            async def delivered() -> bool:
                status = await conn.fetchval("SELECT status FROM sla_daemon.deliveries")
                return bool(status == "delivered")

            await eventually(delivered, 10, what="reconciled")
            inbound = url(daemon.settings, "/twilio/inbound")
            assert await fake.inbound(inbound, ADDRESS, "still broken") == 200
            await fake.wait_for(2)  # the reopened text
            failures = daemon.metrics.registry.get_sample_value(
                "sla_daemon_loop_failures_total", {"loop": "housekeeping"}
            )
        assert await conn.fetchval("SELECT status::text FROM tickets") == "open"
        assert failures == 0
