"""Issue 13 end to end: signed Twilio webhooks into the real daemon, real PostgreSQL,
the real twilio client and RequestValidator, and a fake Twilio that sends callbacks
(out of order, duplicated, late), inbound messages and 63016 outside the window."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from twilio.request_validator import RequestValidator

from sla_daemon.config import Settings, SettingsError, load_settings
from sla_daemon.daemon import Daemon
from sla_daemon.messages import MessageCatalog

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio, ReceivedMessage
from .test_daemon import wait_until_finished
from .waiting import eventually

CATALOG = MessageCatalog.load()
PHONE = "082 123 4567"
ADDRESS = "whatsapp:+27821234567"
TEMPLATES = {
    f"{kind}:{lang}": f"HX{kind[:4]}{lang}"
    for kind in ("open", "in_progress", "escalated", "resolved", "closed", "escalation")
    for lang in ("en", "zu", "af")
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hooked(dsn: str, fake: FakeTwilio, **overrides: Any) -> Settings:
    """Daemon settings with the webhook endpoint on a free loopback port."""
    port = free_port()
    values: dict[str, Any] = {
        "webhook_address": f"127.0.0.1:{port}",
        "webhook_public_url": f"http://127.0.0.1:{port}",
        "twilio_content_sids": TEMPLATES,
    }
    values.update(overrides)
    return daemon_settings(dsn, fake, **values)


def url(settings: Settings, path: str) -> str:
    return f"{settings.webhook_public_url}{path}"


async def ticket(conn: asyncpg.Connection, *, language: str = "en", **columns: Any) -> UUID:
    mid = await f.municipality(conn)
    uid = await f.user(conn, PHONE, language)
    return await f.ticket(conn, mid, user_id=uid, **columns)


async def change(conn: asyncpg.Connection, tid: UUID, status: str) -> None:
    await conn.execute("UPDATE tickets SET status = $2 WHERE id = $1", tid, status)


def counted(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def nothing_recorded(conn: asyncpg.Connection) -> bool:
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM sla_daemon.delivery_events) AS events,"
        " (SELECT count(*) FROM sla_daemon.deliveries) AS deliveries,"
        " (SELECT count(*) FROM sla_daemon.contacts) AS contacts,"
        " (SELECT count(*) FROM sla_daemon.inbound_messages) AS inbound"
    )
    assert counts is not None
    return all(v == 0 for v in counts.values())


# --- the endpoint: only Twilio's signed requests count ----------------------------------


async def test_unsigned_badly_signed_oversized_and_malformed_requests_change_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    settings = hooked(dsn, fake)
    inbound = url(settings, "/twilio/inbound")
    status = url(settings, "/twilio/status?outbox=1")
    stop = {"AccountSid": fake.account_sid, "From": ADDRESS, "Body": "STOP", "MessageSid": "SM1"}
    delivered = {
        "AccountSid": fake.account_sid,
        "MessageSid": "SM2",
        "MessageStatus": "delivered",
        "To": ADDRESS,
    }
    async with running(settings) as daemon:
        assert await fake.post(inbound, stop, {}) == 403
        assert await fake.signed_post(inbound, stop, token="not-the-auth-token") == 403
        assert await fake.signed_post(inbound, {**stop, "Body": "hello"}) == 200  # genuine
        signed_stop = RequestValidator(fake.auth_token).compute_signature(inbound, stop)
        tampered = {**stop, "From": "whatsapp:+27829999999"}  # a STOP for someone else
        assert await fake.post(inbound, tampered, {"X-Twilio-Signature": signed_stop}) == 403
        forged = {"X-Twilio-Signature": "A" * 28}
        assert await fake.post(status, delivered, forged) == 403
        # signed for another URL (the outbox row in the query is signed too)
        other = RequestValidator(fake.auth_token).compute_signature(
            url(settings, "/twilio/status?outbox=2"), delivered
        )
        assert await fake.post(status, delivered, {"X-Twilio-Signature": other}) == 403
        big = {**stop, "Body": "x" * (settings.webhook_max_body_bytes + 1)}
        assert await fake.signed_post(inbound, big) == 413
        assert await fake.signed_post(status, {**delivered, "MessageStatus": "exploded"}) == 400
        assert await fake.signed_post(status, {**delivered, "ErrorCode": "12ab"}) == 400
        assert await fake.signed_post(inbound, {**stop, "From": "whatsapp:082"}) == 400
        assert await fake.signed_post(status, {**delivered, "AccountSid": "AC" + "9" * 32}) == 403
        rejected = {
            (endpoint, outcome): counted(
                daemon, "sla_daemon_webhook_requests_total", endpoint=endpoint, outcome=outcome
            )
            for endpoint in ("inbound", "status")
            for outcome in ("unsigned", "bad_signature", "too_large", "malformed", "accepted")
        }
    assert {k: v for k, v in rejected.items() if v} == {
        ("inbound", "unsigned"): 1,
        ("inbound", "bad_signature"): 2,
        ("inbound", "too_large"): 1,
        ("inbound", "malformed"): 1,
        ("inbound", "accepted"): 1,
        ("status", "bad_signature"): 3,
        ("status", "malformed"): 2,
    }
    # Only the genuine "hello" was recorded: no STOP, no delivery.
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.delivery_events") == 0
    row = await conn.fetchrow("SELECT phone, opted_out_at FROM sla_daemon.contacts")
    assert row is not None and row["phone"] == "+27821234567" and row["opted_out_at"] is None
    assert await conn.fetchval("SELECT kind FROM sla_daemon.inbound_messages") == "reply"


async def test_the_signature_is_checked_against_the_public_url_behind_a_proxy(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    port = free_port()
    public = "https://desk.example.org/sla-daemon"
    settings = daemon_settings(
        dsn, fake, webhook_address=f"127.0.0.1:{port}", webhook_public_url=public
    )
    local = f"http://127.0.0.1:{port}/twilio/inbound"
    params = {"AccountSid": fake.account_sid, "From": ADDRESS, "Body": "hi", "MessageSid": "SM9"}
    validator = RequestValidator(fake.auth_token)
    async with running(settings):
        signed_local = {"X-Twilio-Signature": validator.compute_signature(local, params)}
        assert await fake.post(local, params, signed_local) == 403
        assert await nothing_recorded(conn)
        signature = validator.compute_signature(f"{public}/twilio/inbound", params)
        assert await fake.post(local, params, {"X-Twilio-Signature": signature}) == 200
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.inbound_messages") == 1


def test_webhooks_need_a_public_url_and_the_auth_token() -> None:
    with pytest.raises(SettingsError, match="SLA_DAEMON_WEBHOOK_PUBLIC_URL"):
        load_settings(webhook_address="127.0.0.1:0", twilio_auth_token="t")
    with pytest.raises(SettingsError, match="TWILIO_AUTH_TOKEN"):
        load_settings(webhook_address="127.0.0.1:0", webhook_public_url="https://x.example")
    with pytest.raises(SettingsError, match="https"):
        load_settings(webhook_public_url="http://desk.example.org/hooks")


# --- delivery states ----------------------------------------------------------------------


async def sent_message(conn: asyncpg.Connection, fake: FakeTwilio, tid: UUID) -> ReceivedMessage:
    await change(conn, tid, "in_progress")
    (msg,) = await fake.wait_for(1)
    await wait_until_finished(conn)
    return msg


async def test_callbacks_replayed_and_out_of_order_move_the_state_only_forward(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn, language="zu")
    async with running(hooked(dsn, fake)) as daemon:
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "sawubona")
        msg = await sent_message(conn, fake, tid)
        assert msg.status_callback and msg.status_callback.endswith("/twilio/status?outbox=1")
        for status in ("read", "sent", "delivered", "delivered", "read", "failed", "queued"):
            assert await fake.callback(msg, status) == 204
        read = counted(daemon, "sla_daemon_deliveries_total", status="read", language="zu")
        delivered = counted(
            daemon, "sla_daemon_deliveries_total", status="delivered", language="zu"
        )
        failed = counted(daemon, "sla_daemon_deliveries_total", status="failed", language="zu")
        replayed = counted(
            daemon, "sla_daemon_webhook_requests_total", endpoint="status", outcome="replayed"
        )
    row = await conn.fetchrow("SELECT status, outbox_id, ticket_id FROM sla_daemon.deliveries")
    assert row is not None and (row["status"], row["ticket_id"]) == ("read", tid)
    events = await conn.fetchval("SELECT count(*) FROM sla_daemon.delivery_events")
    assert events == 5  # read, sent, delivered, failed, queued: each once
    assert (read, delivered, failed) == (1, 0, 0)
    assert replayed == 6  # everything after the first "read" moved nothing


async def test_failed_counts_only_when_never_delivered_and_keeps_its_code(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn)
    async with running(hooked(dsn, fake)) as daemon:
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "hi")
        msg = await sent_message(conn, fake, tid)
        assert await fake.callback(msg, "sent") == 204
        assert await fake.callback(msg, "undelivered", error_code=30008) == 204
        assert await fake.callback(msg, "delivered") == 204
    row = await conn.fetchrow("SELECT status, error_code FROM sla_daemon.deliveries")
    assert row is not None and (row["status"], row["error_code"]) == ("delivered", 30008)


# --- the 24-hour window -----------------------------------------------------------------------


async def test_outside_the_window_the_template_goes_inside_it_the_text(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn, language="af")
    async with running(hooked(dsn, fake)) as daemon:
        await change(conn, tid, "in_progress")  # never wrote: outside the window
        (first,) = await fake.wait_for(1)
        await wait_until_finished(conn)
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "Dankie")
        await change(conn, tid, "resolved")
        second = (await fake.wait_for(2))[1]
    assert (first.content_sid, first.body) == (TEMPLATES["in_progress:af"], None)
    tn = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", tid)
    assert (second.content_sid, second.body) == (None, CATALOG.render_status("resolved", "af", tn))


async def test_outside_the_window_without_a_template_the_row_dies_saying_so(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    tid = await ticket(conn)
    caplog.set_level(logging.WARNING, "sla_daemon.daemon")
    async with running(hooked(dsn, fake, twilio_content_sids={})):
        assert "no approved template for open:af" in caplog.text  # said at start
        await change(conn, tid, "in_progress")
        states = await wait_until_finished(conn)
    assert states["dead"] == 1 and not fake.messages
    error = await conn.fetchval("SELECT last_error FROM sla_daemon.outbox")
    assert "24-hour" in error and "no approved template for in_progress:en" in error


@pytest.mark.parametrize("early", [False, True], ids=["after", "while_sending"])
async def test_a_63016_anyway_is_sent_once_more_with_the_template(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, early: bool
) -> None:
    fake.enforce_window = True
    # early: the 63016 callback arrives before the send's outcome is written, while the
    # row is still 'sending' (migration 0013's trigger acts when 'sent' is written).
    fake.window_failure_before_answer = early
    tid = await ticket(conn, language="zu")
    async with running(hooked(dsn, fake)) as daemon:
        # The database thinks the window is open; WhatsApp disagrees (63016).
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "sawubona")
        fake.window.clear()
        await change(conn, tid, "resolved")
        first, second = await fake.wait_for(2, timeout=10)
        await wait_until_finished(conn)
    assert first.body is not None and first.content_sid is None
    assert second.content_sid == TEMPLATES["resolved:zu"]
    row = await conn.fetchrow("SELECT state, message_sid, force_template FROM sla_daemon.outbox")
    assert row is not None and tuple(row.values()) == ("sent", second.sid, True)
    assert len(fake.messages) == 2


async def test_a_63016_without_a_template_ends_dead_saying_so(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    fake.enforce_window = True
    tid = await ticket(conn)
    async with running(hooked(dsn, fake, twilio_content_sids={})) as daemon:
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "hello")
        fake.window.clear()
        await change(conn, tid, "resolved")
        await fake.wait_for(1)

        async def dead() -> str | None:
            value: str | None = await conn.fetchval(
                "SELECT last_error FROM sla_daemon.outbox WHERE state = 'dead'"
            )
            return value

        error = await eventually(dead, 10, what="the row dead")
    assert "24-hour" in error and "template" in error and len(fake.messages) == 1


# --- opt-out, unreachable numbers --------------------------------------------------------------


@pytest.mark.parametrize("word", ["STOP", "stop", "Yeka", "MISA", "staak.", "Kanselleer"])
async def test_stop_in_each_language_stops_messages_until_start(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, word: str
) -> None:
    tid = await ticket(conn)
    async with running(hooked(dsn, fake)) as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        assert await fake.inbound(inbound, ADDRESS, word) == 200
        await change(conn, tid, "in_progress")
        states = await wait_until_finished(conn)
        assert states["opted_out"] == 1 and not fake.messages
        assert await fake.inbound(inbound, ADDRESS, "please stop the leak") == 200
        await change(conn, tid, "escalated")  # a sentence with "stop" is not STOP
        states = await wait_until_finished(conn)
        assert states["opted_out"] == 2 and not fake.messages
        assert await fake.inbound(inbound, ADDRESS, "START") == 200
        await change(conn, tid, "resolved")
        (msg,) = await fake.wait_for(1)
        stops = counted(daemon, "sla_daemon_inbound_messages_total", kind="stop")
    assert msg.body and "resolved" in msg.body
    assert stops == 1


async def test_an_unreachable_number_gets_nothing_until_the_citizen_writes(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn)
    async with running(hooked(dsn, fake)) as daemon:
        msg = await sent_message(conn, fake, tid)
        assert await fake.callback(msg, "failed", error_code=63024) == 204
        await change(conn, tid, "escalated")
        states = await wait_until_finished(conn)
        assert states["dead"] == 1 and len(fake.messages) == 1
        error = await conn.fetchval("SELECT last_error FROM sla_daemon.outbox WHERE state='dead'")
        assert "63024" in error and "writes again" in error
        await fake.inbound(url(daemon.settings, "/twilio/inbound"), ADDRESS, "hello?")
        await change(conn, tid, "resolved")
        await fake.wait_for(2)


# --- sensitive tickets -----------------------------------------------------------------------


async def test_a_sensitive_ticket_gets_no_message_by_default(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn, category="gbv", is_sensitive=True)
    async with running(daemon_settings(dsn, fake)):
        await change(conn, tid, "in_progress")
        states = await wait_until_finished(conn)
    assert states["withheld"] == 1 and not fake.messages


async def test_a_sensitive_ticket_may_get_a_neutral_text_naming_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn, language="zu", category="gbv", is_sensitive=True)
    async with running(daemon_settings(dsn, fake, sensitive_messages="neutral")):
        await change(conn, tid, "resolved")
        (msg,) = await fake.wait_for(1)
    tn = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", tid)
    assert msg.body == CATALOG.render_neutral("zu", tn)
    for language in CATALOG.languages:
        text = CATALOG.render_neutral(language, tn).lower()
        labels = [CATALOG.status_label(s, language).lower() for s in ("resolved", "in_progress")]
        assert "gbv" not in text and not any(label in text for label in labels)


# --- report ------------------------------------------------------------------------------------


async def test_report_shows_delivered_read_failed_per_language_and_failing_numbers_masked(
    conn: asyncpg.Connection,
) -> None:
    from datetime import timedelta

    from sla_daemon.report import build_report, format_table

    tid = await ticket(conn)
    callbacks = [  # (sid, language, phone, [(status, code)])
        ("SMa", "zu", "+27821234567", [("delivered", None), ("read", None)]),
        ("SMb", "zu", "+27821234567", [("sent", None), ("delivered", None)]),
        ("SMc", "af", "+27829876543", [("failed", 63024)]),
        ("SMd", "af", "+27829876543", [("undelivered", 30008)]),
        ("SMe", "en", "+27820000001", [("failed", 30003)]),
    ]
    for n, (sid, lang, phone, statuses) in enumerate(callbacks, start=1):
        await conn.execute(
            "INSERT INTO sla_daemon.outbox (id, ticket_id, new_status, state, language,"
            " message_sid) VALUES ($1, $2, 'resolved', 'sent', $3, $4)",
            1000 + n,
            tid,
            lang,
            sid,
        )
        for status, code in statuses:
            await conn.fetchrow(
                "SELECT * FROM sla_daemon.record_delivery($1, $2, $3, $4, $5)",
                sid,
                status,
                code,
                1000 + n,
                phone,
            )
    report = await build_report(conn, timedelta(days=1))
    by_language = {d.language: (d.delivered, d.read, d.failed) for d in report.deliveries}
    assert by_language == {"zu": (2, 1, 0), "af": (0, 0, 2), "en": (0, 0, 1)}
    assert [(n.phone, n.failures) for n in report.failing_numbers] == [("+27*****6543", 2)]
    table = format_table(report)
    assert "zu       delivered 2/2, read 1, failed 0" in table and "+27*****6543" in table
    assert "9876543" not in table and "9876543" not in str(report.as_dict())
