"""The daemon end to end: real PostgreSQL, real twilio client, fake Twilio on 127.0.0.1."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest

from sla_daemon.messages import MessageCatalog

from . import factories as f
from .daemon_harness import FROM_NUMBER, DaemonProcess, daemon_settings, running
from .fake_twilio import FakeTwilio
from .waiting import eventually

CATALOG = MessageCatalog.load()
ZA_PHONE = "082 123 4567"
E164 = "+27821234567"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def make_tickets(
    conn: asyncpg.Connection, n: int, *, phone: str | None = ZA_PHONE, language: str = "en"
) -> tuple[UUID, list[str]]:
    mid = await f.municipality(conn)
    uid = await f.user(conn, phone, language)
    prefix = f"D{id(conn) % 100000}-"
    await conn.execute(
        "INSERT INTO tickets (tenant_id, tracking_number, user_id, category)"
        " SELECT $1, $2 || g, $3, 'water' FROM generate_series(1, $4) g",
        mid,
        prefix,
        uid,
        n,
    )
    return mid, [f"{prefix}{i}" for i in range(1, n + 1)]


async def outbox_states(conn: asyncpg.Connection) -> Counter[str]:
    """States of every message, the intake's (not yet taken in) counted as pending."""
    rows = await conn.fetch("SELECT state, count(*) FROM sla_daemon.messages GROUP BY state")
    return Counter({r["state"]: r["count"] for r in rows})


async def wait_until_finished(conn: asyncpg.Connection, timeout: float = 20) -> Counter[str]:
    """Wait (bounded) until no outbox row is pending or being sent."""

    async def finished() -> Counter[str] | None:
        states = await outbox_states(conn)
        return None if states["pending"] or states["sending"] else states

    return await eventually(finished, timeout, what="outbox drained")


async def test_status_change_sends_one_message_in_the_citizens_language(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    _, (tn,) = await make_tickets(conn, 1, language="zu-ZA")
    async with running(daemon_settings(dsn, fake)):
        await conn.execute(
            "UPDATE tickets SET status = 'in_progress' WHERE tracking_number = $1", tn
        )
        (msg,) = await fake.wait_for(1)
    assert msg.to == f"whatsapp:{E164}" and msg.from_ == f"whatsapp:{FROM_NUMBER}"
    assert msg.body == CATALOG.render_status("in_progress", "zu", tn)
    row = await conn.fetchrow("SELECT state, message_sid, language FROM sla_daemon.outbox")
    assert (row["state"], row["message_sid"], row["language"]) == ("sent", msg.sid, "zu")


async def test_one_statement_updating_1000_tickets_sends_1000_messages(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    _, tns = await make_tickets(conn, 1000, language="af")
    async with running(daemon_settings(dsn, fake)):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        messages = await fake.wait_for(1000, timeout=60)
        states = await wait_until_finished(conn)
    assert states == Counter({"sent": 1000})
    bodies = Counter(m.body for m in messages)
    assert len(messages) == 1000
    assert bodies == Counter(CATALOG.render_status("in_progress", "af", tn) for tn in tns)


async def test_rolled_back_change_sends_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    _, (rolled, committed) = await make_tickets(conn, 2)
    async with running(daemon_settings(dsn, fake)):
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "UPDATE tickets SET status = 'resolved' WHERE tracking_number = $1", rolled
        )
        await tx.rollback()
        await conn.execute(
            "UPDATE tickets SET status = 'resolved' WHERE tracking_number = $1", committed
        )
        await fake.wait_for(1)
        await wait_until_finished(conn)
    assert [m.body for m in fake.messages] == [CATALOG.render_status("resolved", "en", committed)]
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.outbox") == 1


async def test_citizen_never_sees_an_older_status_last(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    _, tns = await make_tickets(conn, 50)
    # slow first answers keep the first status in flight while the others commit
    fake.delay_next(0.3, times=50)
    async with running(daemon_settings(dsn, fake)):
        for status in ("in_progress", "resolved", "closed"):
            await conn.execute("UPDATE tickets SET status = $1", status)
        await wait_until_finished(conn)
    states = await outbox_states(conn)
    assert states["pending"] == states["sending"] == states["dead"] == 0
    order = {"in_progress": 0, "resolved": 1, "closed": 2}
    for tn in tns:
        seen = [
            s for m in fake.messages for s in order if m.body == CATALOG.render_status(s, "en", tn)
        ]
        assert seen and seen[-1] == "closed", (tn, seen)
        assert seen == sorted(seen, key=order.__getitem__), (tn, seen)
    assert states["sent"] + states["superseded"] == 150


async def test_rate_limited_then_sent(conn: asyncpg.Connection, dsn: str, fake: FakeTwilio) -> None:
    await make_tickets(conn, 1)
    fake.fail_next(429, 20429, times=2)
    async with running(daemon_settings(dsn, fake)):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await fake.wait_for(1)
        await wait_until_finished(conn)
    row = await conn.fetchrow("SELECT state, attempts, error_code FROM sla_daemon.outbox")
    assert (row["state"], row["attempts"]) == ("sent", 3)
    assert [status for _, status in fake.requests] == [429, 429, 201]


async def test_timeouts_are_retried(conn: asyncpg.Connection, dsn: str, fake: FakeTwilio) -> None:
    await make_tickets(conn, 1)
    fake.delay_next(3, times=1)  # beyond send_timeout_seconds
    async with running(daemon_settings(dsn, fake, send_timeout_seconds=0.5)):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await wait_until_finished(conn)
        row = await conn.fetchrow("SELECT state, attempts, last_error FROM sla_daemon.outbox")
    assert row["state"] == "sent" and row["attempts"] == 2
    # Twilio has no idempotency key: a timed-out request may still have been delivered
    assert 1 <= len(fake.messages) <= 2


async def test_permanent_error_is_dead_and_not_retried(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    await make_tickets(conn, 1)
    fake.fail_next(400, 21211, "Invalid 'To' Phone Number")
    async with running(daemon_settings(dsn, fake)):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        states = await wait_until_finished(conn)
    assert states == Counter({"dead": 1})
    row = await conn.fetchrow("SELECT attempts, error_code, last_error FROM sla_daemon.outbox")
    assert (row["attempts"], row["error_code"]) == (1, 21211)
    assert len(fake.requests) == 1


async def test_unusable_phone_is_dead_without_a_send(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    await make_tickets(conn, 1, phone="12345")
    async with running(daemon_settings(dsn, fake)):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        states = await wait_until_finished(conn)
    assert states == Counter({"dead": 1})
    assert "phone" in await conn.fetchval("SELECT last_error FROM sla_daemon.outbox")
    assert fake.requests == []


async def test_dead_rows_can_be_requeued(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    await make_tickets(conn, 1)
    fake.fail_next(400, 21610, "Attempt to send to unsubscribed recipient")
    async with running(daemon_settings(dsn, fake)):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        assert await wait_until_finished(conn) == Counter({"dead": 1})
        assert await conn.fetchval("SELECT sla_daemon.requeue_dead(NULL)") == 1
        await fake.wait_for(1)
        assert await wait_until_finished(conn) == Counter({"sent": 1})


async def test_dry_run_without_credentials(conn: asyncpg.Connection, dsn: str) -> None:
    await make_tickets(conn, 3)
    async with running(daemon_settings(dsn, None)) as daemon:
        assert daemon.settings.effective_dry_run
        await conn.execute("UPDATE tickets SET status = 'resolved'")
        assert await wait_until_finished(conn) == Counter({"dry_run": 3})


async def test_two_daemons_never_send_a_row_twice(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    _, tns = await make_tickets(conn, 400)
    async with (
        running(daemon_settings(dsn, fake, worker_id="a", outbox_batch_size=25)),
        running(daemon_settings(dsn, fake, worker_id="b", outbox_batch_size=25)),
    ):
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await conn.execute("UPDATE tickets SET status = 'resolved'")
        await wait_until_finished(conn, timeout=60)
    per_body = Counter(m.body for m in fake.messages)
    assert max(per_body.values()) == 1
    for tn in tns:
        assert per_body[CATALOG.render_status("resolved", "en", tn)] == 1
    workers = await conn.fetch(
        "SELECT DISTINCT locked_by IS NULL AS unlocked FROM sla_daemon.outbox"
    )
    assert [r["unlocked"] for r in workers] == [True]


async def test_sigkill_mid_burst_then_restart_loses_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    _, tns = await make_tickets(conn, 300)
    settings = daemon_settings(
        dsn,
        fake,
        outbox_lease_seconds=6.5,  # must exceed the send timeout + 5 s
        send_timeout_seconds=1,
        send_rate_per_second=300,
        metrics_address="off",
    )
    first = DaemonProcess(settings)
    await first.start()
    try:
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await fake.wait_for(50, timeout=30)
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.kill()
    async with DaemonProcess(settings):
        await wait_until_finished(conn, timeout=60)
    assert await outbox_states(conn) == Counter({"sent": 300})
    received = Counter(m.body for m in fake.messages)
    for tn in tns:  # at least once each; a send cut off by the kill may repeat
        assert received[CATALOG.render_status("in_progress", "en", tn)] >= 1


async def test_sigterm_finishes_in_flight_sends_and_exits_0(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    await make_tickets(conn, 20)
    fake.delay_next(0.5, times=20)
    async with DaemonProcess(daemon_settings(dsn, fake, metrics_address="off")) as proc:
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await fake.wait_for(1, timeout=10)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    assert await outbox_states(conn) == Counter({"sent": 20})


async def test_listener_killed_by_the_server_recovers_and_loses_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    await make_tickets(conn, 20)
    async with running(daemon_settings(dsn, fake, outbox_poll_seconds=30)) as daemon:
        assert daemon.listener is not None
        old_pid = daemon.listener.backend_pid
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        # changes made while the listener is down: their NOTIFYs go nowhere
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        await fake.wait_for(20, timeout=15)  # well before the 30 s poll
        listener = daemon.listener
        await eventually(lambda: listener.backend_pid != old_pid, what="listener reconnected")
        assert daemon.metrics.listener_reconnects._value.get() >= 1
        await conn.execute("UPDATE tickets SET status = 'resolved'")
        await fake.wait_for(40, timeout=15)
    assert await outbox_states(conn) == Counter({"sent": 40})


async def test_deadline_two_seconds_ahead_escalates_on_time_and_notifies_once(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    mid = await f.municipality(conn)
    manager = await f.user(conn, "0830000001")
    citizen = await f.user(conn, ZA_PHONE, "af")
    team = await f.team(conn, mid, manager)
    async with running(daemon_settings(dsn, fake, safety_interval_seconds=60)):
        deadline = await conn.fetchval("SELECT now() + interval '2 seconds'")
        tid = await f.ticket(
            conn, mid, user_id=citizen, assigned_team_id=team, sla_response_deadline=deadline
        )
        gbv = await f.ticket(conn, mid, "gbv", user_id=citizen, is_sensitive=True)
        # the citizen's escalation notice, and the team manager's staff alert (issue 12)
        await fake.wait_for(2, timeout=10)
        t = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", tid)
        await wait_until_finished(conn)
    assert t["status"] == "escalated" and t["assigned_to"] == manager
    lateness = (t["escalated_at"] - deadline).total_seconds()
    assert 0 <= lateness < 1.0, lateness
    (msg,) = [m for m in fake.messages if m.to == f"whatsapp:{E164}"]
    assert msg.body == CATALOG.render_escalation("af", t["tracking_number"])
    assert [m.to for m in fake.messages if m is not msg] == ["whatsapp:+27830000001"]
    assert len(fake.messages) == 2
    assert await conn.fetchval("SELECT status FROM tickets WHERE id = $1", gbv) == "open"


async def test_breached_tickets_found_at_start_are_escalated(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    mid = await f.municipality(conn)
    past = await conn.fetchval("SELECT now() - interval '1 hour'")
    uid = await f.user(conn, ZA_PHONE)
    live = [await f.ticket(conn, mid, user_id=uid, sla_response_deadline=past) for _ in range(5)]
    await conn.execute("ALTER TABLE tickets DISABLE TRIGGER sla_daemon_set_deadlines")
    gbv = await f.ticket(
        conn, mid, "gbv", user_id=uid, is_sensitive=True, sla_response_deadline=past
    )
    await conn.execute("ALTER TABLE tickets ENABLE TRIGGER sla_daemon_set_deadlines")
    async with running(daemon_settings(dsn, fake)):
        await fake.wait_for(5)
        await wait_until_finished(conn)
    statuses = await conn.fetch("SELECT id, status FROM tickets")
    assert {r["id"]: r["status"] for r in statuses} == {
        **dict.fromkeys(live, "escalated"),
        gbv: "open",
    }
    assert len(fake.messages) == 5


async def test_database_connections_killed_mid_burst_lose_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    mid = await f.municipality(conn)
    uid = await f.user(conn, ZA_PHONE)
    past = await conn.fetchval("SELECT now() - interval '1 hour'")
    breached = [
        await f.ticket(conn, mid, user_id=uid, sla_response_deadline=past) for _ in range(3)
    ]
    await conn.execute(
        "INSERT INTO tickets (tenant_id, tracking_number, user_id, category)"
        " SELECT $1, 'K-' || g, $2, 'water' FROM generate_series(1, 300) g",
        mid,
        uid,
    )
    fake.delay_next(0.01, times=300)
    async with running(daemon_settings(dsn, fake, outbox_lease_seconds=7.5)) as daemon:
        await fake.wait_for(3)  # the escalations went out
        await conn.execute(
            "UPDATE tickets SET status = 'in_progress' WHERE tracking_number LIKE 'K-%'"
        )
        await fake.wait_for(30, timeout=20)
        # every connection of the daemon, pool and listener alike, dies at once
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'sla-daemon' AND pid <> pg_backend_pid()"
        )
        assert killed >= 2
        await wait_until_finished(conn, timeout=60)
        await eventually(lambda: daemon.health()[0], what="healthy again")
    states = await outbox_states(conn)
    assert states == Counter({"sent": 303}), states
    received = Counter(m.body for m in fake.messages)
    for i in range(1, 301):
        assert received[CATALOG.render_status("in_progress", "en", f"K-{i}")] >= 1
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM tickets WHERE id = ANY($1) AND status = 'escalated'", breached
        )
        == 3
    )


async def test_finished_rows_past_retention_are_purged(conn: asyncpg.Connection, dsn: str) -> None:
    _, numbers = await make_tickets(conn, 3)
    first, second, third = [
        await conn.fetchval("SELECT id FROM tickets WHERE tracking_number = $1", n) for n in numbers
    ]
    await conn.execute("UPDATE tickets SET status = 'in_progress'")
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", first)
    # take the intake into the outbox without claiming anything
    await conn.execute("SELECT * FROM sla_daemon.claim_outbox('test', 0, 60)")
    old = "finished_at = now() - interval '40 days'"
    # first: an old sent row with a newer one after it (goes), and that newer one
    await conn.execute(
        f"UPDATE sla_daemon.outbox SET state = 'sent', {old} WHERE ticket_id = $1", first
    )
    # second: an old sent row that is still its ticket's newest (stays: "is this the
    # ticket's newest status" must never look past a purged row)
    await conn.execute(
        f"UPDATE sla_daemon.outbox SET state = 'sent', {old} WHERE ticket_id = $1", second
    )
    # third: an old dead row (stays until handled)
    await conn.execute(
        f"UPDATE sla_daemon.outbox SET state = 'dead', {old} WHERE ticket_id = $1", third
    )
    async with running(daemon_settings(dsn, None, outbox_retention_days=30)):
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 3 FROM sla_daemon.outbox"), what="purge"
        )
        states = await wait_until_finished(conn)
    assert states == Counter({"dead": 1, "sent": 2})
    kept = await conn.fetch("SELECT ticket_id, new_status FROM sla_daemon.outbox ORDER BY id")
    assert [(r["ticket_id"], r["new_status"]) for r in kept] == [
        (second, "in_progress"),
        (third, "in_progress"),
        (first, "resolved"),
    ]


async def test_events_past_retention_are_purged_but_live_tickets_keep_theirs(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """Warnings and escalations go after SLA_DAEMON_EVENT_RETENTION_DAYS (outbox retention
    off here), except those of tickets still open or in progress: a warning's event is
    what keeps it from being given twice."""
    await make_tickets(conn, 3)
    done, live, fresh = await conn.fetch("SELECT id FROM tickets ORDER BY tracking_number")
    await conn.execute(
        "UPDATE tickets SET status = 'resolved' WHERE id = ANY($1)", [done["id"], fresh["id"]]
    )
    old = "now() - interval '400 days'"
    await conn.execute(
        "INSERT INTO sla_daemon.events (ticket_id, kind, deadline_kind, created_at) VALUES"
        f" ($1, 'escalation', 'response', {old}),"  # resolved ticket, old: goes
        f" ($1, 'warning', 'response', {old}),"  # resolved ticket, old: goes
        f" (gen_random_uuid(), 'warning', 'response', {old}),"  # ticket deleted, old: goes
        f" ($2, 'warning', 'resolution', {old}),"  # live ticket: stays
        " ($3, 'escalation', 'response', now() - interval '10 days')",  # recent: stays
        done["id"],
        live["id"],
        fresh["id"],
    )
    settings = daemon_settings(dsn, None, outbox_retention_days=0, event_retention_days=365)
    async with running(settings):
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 2 FROM sla_daemon.events"), what="purge"
        )
    kept = await conn.fetch("SELECT ticket_id, kind FROM sla_daemon.events ORDER BY kind")
    assert [(r["ticket_id"], r["kind"]) for r in kept] == [
        (fresh["id"], "escalation"),
        (live["id"], "warning"),
    ]
