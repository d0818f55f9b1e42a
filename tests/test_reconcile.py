"""Issue 13, delivery truth when callbacks go missing or come early: reconciliation looks
messages up through the real twilio client against the fake Twilio's API; a 63016 that
arrives while its row is still 'sending' still gets its one retry with the template."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from sla_daemon.messages import MessageCatalog
from sla_daemon.metrics import Metrics
from sla_daemon.notifications import NotificationService
from sla_daemon.reconcile import Reconciler

from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_daemon import wait_until_finished
from .test_webhooks import ADDRESS, TEMPLATES, change, counted, hooked, ticket, url
from .waiting import eventually

CATALOG = MessageCatalog.load()
QUICK = {"reconcile_after_seconds": 0.3, "reconcile_interval_seconds": 0.1}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def delivery(conn: asyncpg.Connection, sid: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT status FROM sla_daemon.deliveries WHERE message_sid = $1", sid
    )
    return value


# --- the 63016 race (the daemon-level case: tests/test_webhooks.py, while_sending) ---------


async def test_a_63016_before_the_outcome_after_the_template_ends_dead(
    conn: asyncpg.Connection,
) -> None:
    # The same race for the template's own send: no third send, the row ends dead.
    tid = await ticket(conn)
    await conn.execute(
        "INSERT INTO sla_daemon.outbox (id, ticket_id, new_status, state, force_template)"
        " VALUES (7, $1, 'resolved', 'sending', true)",
        tid,
    )
    await conn.fetchrow(
        "SELECT * FROM sla_daemon.record_delivery('SMx', 'failed', 63016, 7, '+27821234567')"
    )
    assert await conn.fetchval("SELECT state FROM sla_daemon.outbox WHERE id = 7") == "sending"
    await conn.execute(
        "UPDATE sla_daemon.outbox SET state = 'sent', message_sid = 'SMx' WHERE id = 7"
    )
    row = await conn.fetchrow("SELECT state, error_code FROM sla_daemon.outbox WHERE id = 7")
    assert row is not None and tuple(row.values()) == ("dead", 63016)


# --- reconciliation in the daemon --------------------------------------------------------------


async def test_a_lost_callback_is_reconciled_through_twilios_api(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn, language="af")
    async with running(hooked(dsn, fake, **QUICK)) as daemon:
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "hallo")
        await change(conn, tid, "in_progress")
        (msg,) = await fake.wait_for(1)
        fake.statuses[msg.sid] = ("read", None)  # Twilio knows; its callbacks were lost
        await eventually(lambda: delivery(conn, msg.sid), 10, what="the message reconciled")
        changed = counted(daemon, "sla_daemon_reconcile_lookups_total", outcome="changed")
        read = counted(daemon, "sla_daemon_deliveries_total", status="read", language="af")
    row = await conn.fetchrow(
        "SELECT status, ticket_id, phone, language FROM sla_daemon.deliveries"
    )
    assert row is not None
    assert tuple(row.values()) == ("read", tid, "+27821234567", "af")
    assert fake.lookups == [msg.sid]  # final now: never looked up again
    assert (changed, read) == (1, 1)


async def test_a_lost_63016_found_by_lookup_is_retried_with_the_template(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn)
    async with running(hooked(dsn, fake, **QUICK)) as daemon:
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "hi")
        await change(conn, tid, "resolved")
        (first,) = await fake.wait_for(1)
        fake.statuses[first.sid] = ("failed", 63016)  # its callback never came
        second = (await fake.wait_for(2, timeout=10))[1]
    assert first.content_sid is None and second.content_sid == TEMPLATES["resolved:en"]


async def test_no_reconciliation_without_webhooks(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    # Without callbacks no message has a state to wait for: looking each up would double
    # the API calls for nothing.
    tid = await ticket(conn)
    async with running(daemon_settings(dsn, fake, **QUICK)) as daemon:
        await change(conn, tid, "in_progress")
        await fake.wait_for(1)
        await wait_until_finished(conn)
        loops = daemon.metrics.registry.get_sample_value
        assert loops("sla_daemon_loop_failures_total", {"loop": "outbox"}) == 0
        assert loops("sla_daemon_loop_failures_total", {"loop": "reconcile"}) is None
    assert fake.lookups == []


# --- one pass ----------------------------------------------------------------------------------


async def sent_rows(conn: asyncpg.Connection, tid: UUID, count: int, age: str = "2 hours") -> None:
    """``count`` rows sent ``age`` ago (SIDs SM1..), with no delivery state yet."""
    for n in range(1, count + 1):
        await conn.execute(
            "INSERT INTO sla_daemon.outbox (id, ticket_id, new_status, state, language,"
            " message_sid, finished_at) VALUES ($1, $2, 'resolved', 'sent', 'en', $3,"
            " now() - $4::text::interval)",
            n,
            tid,
            f"SM{n}",
            age,
        )


@pytest.fixture
async def reconcilers(
    pool: asyncpg.Pool, fake: FakeTwilio
) -> AsyncIterator[Callable[..., Awaitable[Reconciler]]]:
    """Reconcilers on the real twilio client against the fake; closed after the test."""
    opened: list[NotificationService] = []

    async def make(**settings: Any) -> Reconciler:
        s = daemon_settings("postgresql://unused@localhost/x", fake, **settings)
        notifications = NotificationService(s, CATALOG)
        await notifications.start()
        opened.append(notifications)
        return Reconciler(pool, notifications, s, Metrics())

    yield make
    for notifications in opened:
        await notifications.close()


async def test_a_message_already_final_or_too_recent_is_not_looked_up(
    conn: asyncpg.Connection, fake: FakeTwilio, reconcilers: Callable[..., Awaitable[Reconciler]]
) -> None:
    tid = await ticket(conn)
    await sent_rows(conn, tid, 4)
    await conn.execute("UPDATE sla_daemon.outbox SET finished_at = now() WHERE id = 4")
    for sid, status in (("SM1", "delivered"), ("SM2", "undelivered"), ("SM3", "sent")):
        await conn.fetchrow(
            "SELECT * FROM sla_daemon.record_delivery($1, $2, NULL, NULL, NULL)", sid, status
        )
    fake.statuses.update({f"SM{n}": ("delivered", None) for n in range(1, 5)})
    r = await reconcilers(reconcile_after_seconds=3600)
    assert await r.run_once() == 1
    assert fake.lookups == ["SM3"]  # SM1, SM2 final; SM4 sent just now
    assert await delivery(conn, "SM3") == "delivered"


async def test_lookups_per_pass_are_bounded_and_unknowns_asked_again_only_after_the_bound(
    conn: asyncpg.Connection, fake: FakeTwilio, reconcilers: Callable[..., Awaitable[Reconciler]]
) -> None:
    tid = await ticket(conn)
    await sent_rows(conn, tid, 5)
    fake.statuses.update({f"SM{n}": ("sent", None) for n in range(1, 5)})  # SM5: 404
    r = await reconcilers(reconcile_after_seconds=3600, reconcile_batch_size=2)
    assert [await r.run_once() for _ in range(4)] == [2, 2, 1, 0]
    assert sorted(fake.lookups) == ["SM1", "SM2", "SM3", "SM4", "SM5"]  # each once
    states = dict(await conn.fetch("SELECT message_sid, status FROM sla_daemon.deliveries"))
    assert states == {"SM1": "sent", "SM2": "sent", "SM3": "sent", "SM4": "sent", "SM5": "queued"}
    # an hour later they are asked about again, still two per pass
    await conn.execute(
        "UPDATE sla_daemon.deliveries SET checked_at = checked_at - interval '61 minutes'"
    )
    fake.lookups.clear()
    assert await r.run_once() == 2 and len(fake.lookups) == 2


async def test_old_messages_are_left_alone(
    conn: asyncpg.Connection, fake: FakeTwilio, reconcilers: Callable[..., Awaitable[Reconciler]]
) -> None:
    tid = await ticket(conn)
    await sent_rows(conn, tid, 1, age="8 days")
    fake.statuses["SM1"] = ("delivered", None)
    r = await reconcilers(reconcile_after_seconds=3600)
    assert await r.run_once() == 0 and fake.lookups == []
    # nor, with a shorter outbox retention, any sent longer ago than it
    await conn.execute("UPDATE sla_daemon.outbox SET finished_at = now() - interval '3 days'")
    short = await reconcilers(reconcile_after_seconds=3600, outbox_retention_days=2)
    assert await short.run_once() == 0 and fake.lookups == []
    assert await r.run_once() == 1 and fake.lookups == ["SM1"]
