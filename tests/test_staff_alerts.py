"""Staff alerts (issue 12, item 6): the person a ticket is escalated to gets a WhatsApp
message in their own language, through the outbox like any other; with
SLA_DAEMON_WARN_TEAM_MANAGER the team manager gets the warnings. Through the real
daemon, the real twilio client and the fake Twilio on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from sla_daemon.check import check_twilio
from sla_daemon.config import Settings, SettingsError, load_settings
from sla_daemon.db import QUERIES
from sla_daemon.escalation import EscalationService
from sla_daemon.messages import MessageCatalog
from sla_daemon.metrics import Metrics
from sla_daemon.report import build_report, format_table
from sla_daemon.sla import SLAService
from sla_daemon.staff import values_for
from sla_daemon.templates import definitions, template_keys
from sla_daemon.timer import check_sla_breaches

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio, ReceivedMessage
from .test_calendars import calendar, municipality_on
from .test_cli import cli, cli_env
from .test_daemon import wait_until_finished
from .test_pauses_levels import add_level
from .test_webhooks import TEMPLATES, hooked, url
from .waiting import eventually

CATALOG = MessageCatalog.load()
CITIZEN = "+27821234567"
MANAGER = "+27830000000"
HEAD = "+27830000001"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@dataclass(frozen=True)
class Breach:
    ticket: UUID
    tracking: str
    municipality: UUID
    manager: UUID
    citizen: UUID
    deadline: datetime


async def breach(
    conn: asyncpg.Connection,
    *,
    overdue: timedelta = timedelta(minutes=65),
    manager_phone: str | None = "0830000000",
    manager_language: str = "zu",
    citizen_phone: str = "0821234567",
    category: str = "water",
    mid: UUID | None = None,
) -> Breach:
    """A ticket whose response deadline passed ``overdue`` ago (negative: still ahead),
    of a team whose manager has ``manager_phone``."""
    mid = mid or await f.municipality(conn)
    manager = await f.user(conn, manager_phone, manager_language)
    team = await f.team(conn, mid, manager)
    citizen = await f.user(conn, citizen_phone, "en")
    deadline = await conn.fetchval("SELECT now() - $1::interval", overdue)
    tid = await f.ticket(
        conn,
        mid,
        category,
        user_id=citizen,
        assigned_team_id=team,
        sla_response_deadline=deadline,
    )
    tracking = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", tid)
    return Breach(tid, tracking, mid, manager, citizen, deadline)


def to(fake: FakeTwilio, phone: str) -> list[ReceivedMessage]:
    return [m for m in fake.messages if m.to == f"whatsapp:{phone}"]


def staff_text(kind: str, lang: str, body: str | None, **values: str) -> dict[str, str]:
    """The values a received staff alert was rendered with; fails unless ``body`` is the
    catalog's text of ``kind`` in ``lang`` with ``values`` (how overdue may be any)."""
    marker = "\x00OVERDUE\x00"
    shown = {"overdue": marker, "level": "", "deadline": "", "category": "", **values}
    pattern = re.escape(CATALOG.render_staff(kind, lang, shown)).replace(
        re.escape(marker), r"(?P<overdue>\d+ h \d+ min|\d+ h|\d+ min)"
    )
    match = re.fullmatch(pattern, body or "")
    assert match, f"{body!r} is not the {kind}:{lang} text with {values}"
    return match.groupdict()


def alerted(body: str | None, lang: str, tracking: str, category: str, level: str) -> str:
    """How overdue a received escalation alert says the ticket is; fails unless ``body``
    is the catalog's escalation alert in ``lang`` for this ticket, category and level."""
    values = staff_text(
        "staff_escalation", lang, body, tracking_number=tracking, category=category, level=level
    )
    return values["overdue"]


def minutes(overdue: str) -> int:
    hours = re.search(r"(\d+) h", overdue)
    mins = re.search(r"(\d+) min", overdue)
    return (int(hours[1]) * 60 if hours else 0) + (int(mins[1]) if mins else 0)


async def staff_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, ticket_id, kind, state, recipient_id, level, superseded_by, last_error"
        " FROM sla_daemon.outbox WHERE recipient_id IS NOT NULL ORDER BY id"
    )


# --- who gets what -------------------------------------------------------------------


async def test_a_breach_alerts_the_team_manager_in_their_language_and_the_citizen_once(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    b = await breach(conn, manager_language="zu")
    async with running(daemon_settings(dsn, fake)) as daemon:
        await fake.wait_for(2)
        assert await wait_until_finished(conn) == Counter({"sent": 2})
        queued = daemon.metrics.registry.get_sample_value(
            "sla_daemon_staff_alerts_total", {"kind": "escalation", "outcome": "queued"}
        )
    (notice,) = to(fake, CITIZEN)
    assert notice.body == CATALOG.render_escalation("en", b.tracking)
    (alert,) = to(fake, MANAGER)
    overdue = alerted(alert.body, "zu", b.tracking, "water", "1")
    assert 65 <= minutes(overdue) <= 67  # from the deadline, at send time
    assert "izinga 1" in (alert.body or "")
    (row,) = await staff_rows(conn)
    assert (row["recipient_id"], row["level"], row["state"]) == (b.manager, 1, "sent")
    details = await conn.fetchval(
        "SELECT details FROM sla_daemon.events WHERE kind = 'escalation' AND ticket_id = $1",
        b.ticket,
    )
    assert json.loads(details)["staff_alert"] == "queued"
    assert queued == 1
    report = await build_report(conn, timedelta(days=1))
    (alerts,) = report.staff_alerts
    assert (alerts.kind, alerts.queued, alerts.sent, alerts.dead) == ("staff_escalation", 1, 1, 0)
    assert report.as_dict()["staff_alerts"]["by_kind"][0]["sent"] == 1
    assert "escalation 1 queued: 1 sent, 0 waiting, 0 dead" in format_table(report)


async def test_a_second_level_alerts_its_person_and_the_citizen_hears_nothing_more(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    # The deadline is a second ahead; level 2 (the department head, Afrikaans) two
    # seconds after it, on the 24/7 clock.
    b = await breach(conn, overdue=timedelta(seconds=-1), category="roads")
    head = await f.user(conn, "0830000001", "af")
    await add_level(conn, b.municipality, 2, 2 / 3600, head)
    async with running(daemon_settings(dsn, fake)):
        await fake.wait_for(3, timeout=15)
        assert await wait_until_finished(conn) == Counter({"sent": 3})
    assert [m.body for m in to(fake, CITIZEN)] == [CATALOG.render_escalation("en", b.tracking)]
    (first,) = to(fake, MANAGER)
    alerted(first.body, "zu", b.tracking, "roads", "1")
    (second,) = to(fake, HEAD)
    alerted(second.body, "af", b.tracking, "roads", "2")
    assert "(vlak 2)" in (second.body or "")
    rows = await staff_rows(conn)
    assert [(r["recipient_id"], r["level"]) for r in rows] == [(b.manager, 1), (head, 2)]


async def test_staff_alerts_and_citizen_messages_never_supersede_each_other(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, fake: FakeTwilio
) -> None:
    mid = await f.municipality(conn)
    later = await breach(conn, mid=mid)  # then its citizen hears of a newer status
    alone = await breach(conn, mid=mid, manager_phone="0830000009", citizen_phone="0820000009")
    escalation = EscalationService(pool)
    for b in (later, alone):
        assert await escalation.escalate_ticket(b.ticket)
    await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", later.ticket)
    async with running(daemon_settings(dsn, fake)):
        await fake.wait_for(4)
        states = await wait_until_finished(conn)
    assert states == Counter({"sent": 4, "superseded": 1})
    # The staff alert is older than the citizen's in_progress, and was sent all the same.
    (alert,) = to(fake, MANAGER)
    assert "isikhalazo " + later.tracking in (alert.body or "")
    rows = await conn.fetch(
        "SELECT id, kind, state, superseded_by FROM sla_daemon.outbox WHERE ticket_id = $1"
        " ORDER BY id",
        later.ticket,
    )
    assert [(r["kind"], r["state"]) for r in rows] == [
        ("escalation", "superseded"),  # by the citizen's newer status, not by the alert
        ("staff_escalation", "sent"),
        ("status", "sent"),
    ]
    assert rows[0]["superseded_by"] == rows[2]["id"]
    # The citizen's notice is older than the staff alert (same transaction), and sent.
    notice, alert_row = await conn.fetch(
        "SELECT id, kind, state FROM sla_daemon.outbox WHERE ticket_id = $1 ORDER BY id",
        alone.ticket,
    )
    assert (notice["kind"], notice["state"]) == ("escalation", "sent")
    assert (alert_row["kind"], alert_row["state"]) == ("staff_escalation", "sent")
    assert [m.body for m in to(fake, "+27820000009")] == [
        CATALOG.render_escalation("en", alone.tracking)
    ]
    assert len(to(fake, "+27830000009")) == 1


async def test_of_two_alerts_to_one_person_about_one_ticket_only_the_newest_is_sent(
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    dsn: str,
    fake: FakeTwilio,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Warned (the manager alerted), then breached (the manager alerted again): while no
    # daemon sent anything. The manager's language has no catalog: English, logged.
    b = await breach(conn, overdue=timedelta(hours=-1), manager_language="xh-ZA")
    await conn.execute(
        "UPDATE tickets SET created_at = now() - interval '23 hours' WHERE id = $1", b.ticket
    )
    await conn.execute("SELECT sla_daemon.reschedule(ARRAY[$1::uuid])", b.ticket)
    (warning,) = await SLAService(pool, warn_team_manager=True).record_warnings()
    assert warning.staff_alert == "queued"
    await conn.execute(
        "UPDATE tickets SET sla_response_deadline = now() - interval '1 minute' WHERE id = $1",
        b.ticket,
    )
    assert await EscalationService(pool).escalate_ticket(b.ticket)
    caplog.set_level(logging.WARNING, "sla_daemon.notifications")
    async with running(daemon_settings(dsn, fake)):
        await fake.wait_for(2)
        assert await wait_until_finished(conn) == Counter({"sent": 2, "superseded": 1})
    warned, escalated = await staff_rows(conn)
    assert (warned["kind"], warned["state"]) == ("staff_warning", "superseded")
    assert warned["superseded_by"] == escalated["id"]
    assert (escalated["kind"], escalated["state"]) == ("staff_escalation", "sent")
    (alert,) = to(fake, MANAGER)
    alerted(alert.body, "en", b.tracking, "water", "1")
    assert "no message catalog for language 'xh-za'" in caplog.text
    assert len(to(fake, CITIZEN)) == 1


@pytest.mark.parametrize("warn", [False, True], ids=["off", "on"])
async def test_warnings_reach_the_team_manager_only_when_the_setting_says_so(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, warn: bool
) -> None:
    # 24 h to respond, created 23 h ago: past the 80 % warning, an hour before the deadline.
    mid = await f.municipality(conn)
    manager = await f.user(conn, "0830000000", "af")
    team = await f.team(conn, mid, manager)
    created = await conn.fetchval("SELECT now() - interval '23 hours'")
    citizen = await f.user(conn)
    tid = await f.ticket(
        conn, mid, "electricity", user_id=citizen, assigned_team_id=team, created_at=created
    )
    tracking, deadline = await conn.fetchrow(
        "SELECT tracking_number, sla_response_deadline FROM tickets WHERE id = $1", tid
    )
    async with running(daemon_settings(dsn, fake, warn_team_manager=warn)):

        async def warned() -> bool:
            return bool(
                await conn.fetchval("SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning'")
            )

        await eventually(warned, 10, what="the warning recorded")
        if warn:
            await fake.wait_for(1)
            await wait_until_finished(conn)
    if not warn:  # an alert would have been queued with the warning, in its transaction
        assert not await conn.fetchval("SELECT count(*) FROM sla_daemon.messages")
        assert not fake.messages
        return
    (alert,) = to(fake, MANAGER)
    local = deadline.astimezone(ZoneInfo("Africa/Johannesburg"))
    shown = f"{local:%Y-%m-%d %H:%M} SAST"
    staff_text(
        "staff_warning",
        "af",
        alert.body,
        tracking_number=tracking,
        category="electricity",
        deadline=shown,
    )
    (row,) = await staff_rows(conn)
    assert (row["kind"], row["recipient_id"], row["state"]) == ("staff_warning", manager, "sent")
    assert len(fake.messages) == 1  # the citizen hears nothing of a warning


async def test_a_manager_without_a_phone_gets_no_alert_and_the_escalation_goes_on(
    conn: asyncpg.Connection, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    b = await breach(conn, manager_phone=None)
    metrics = Metrics()
    caplog.set_level(logging.WARNING, "sla_daemon.escalation")
    result = await check_sla_breaches(
        pool, SLAService(pool), EscalationService(pool, metrics=metrics), metrics
    )
    assert result.escalated == 1
    t = await conn.fetchrow("SELECT status::text, assigned_to FROM tickets WHERE id = $1", b.ticket)
    assert tuple(t.values()) == ("escalated", b.manager)
    assert not await staff_rows(conn)
    details = await conn.fetchval(
        "SELECT details FROM sla_daemon.events WHERE kind = 'escalation' AND ticket_id = $1",
        b.ticket,
    )
    assert json.loads(details)["staff_alert"] == "no_phone"
    assert f"ticket {b.tracking} escalated to its team manager, but no staff alert" in caplog.text
    assert "has no phone number" in caplog.text
    labels = {"kind": "escalation", "outcome": "no_phone"}
    assert metrics.registry.get_sample_value("sla_daemon_staff_alerts_total", labels) == 1
    report = await build_report(conn, timedelta(days=1))
    assert report.unalerted == 1
    assert report.as_dict()["staff_alerts"]["escalations_without_alert"] == 1
    assert "1 escalations whose person could not be alerted" in format_table(report)


async def test_no_alert_for_a_sensitive_ticket_or_a_person_who_is_not_a_user(
    conn: asyncpg.Connection,
) -> None:
    mid = await f.municipality(conn)
    manager = await f.user(conn, "0830000000")
    gbv = await f.ticket(conn, mid, "gbv", user_id=await f.user(conn), is_sensitive=True)
    plain = await f.ticket(conn, mid, user_id=await f.user(conn))
    enqueue = "SELECT sla_daemon.enqueue_staff_alert($1, $2, 'staff_escalation', 1::int2, now())"
    assert await conn.fetchval(enqueue, gbv, manager) == "sensitive"
    assert await conn.fetchval(enqueue, plain, uuid4()) == "no_user"
    assert await conn.fetchval(enqueue, plain, None) == "no_recipient"
    assert not await staff_rows(conn)
    assert await conn.fetchval(enqueue, plain, manager) == "queued"


async def test_a_warning_whose_team_has_no_manager_is_counted_and_logged(
    conn: asyncpg.Connection, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await f.municipality(conn)
    team = await f.team(conn, mid, None)
    created = await conn.fetchval("SELECT now() - interval '23 hours'")
    await f.ticket(conn, mid, assigned_team_id=team, created_at=created)
    metrics = Metrics()
    caplog.set_level(logging.WARNING, "sla_daemon.timer")
    sla = SLAService(pool, warn_team_manager=True)
    result = await check_sla_breaches(pool, sla, EscalationService(pool), metrics)
    assert result.warnings == 1 and not await staff_rows(conn)
    assert "no staff alert: there is nobody to alert (no team manager)" in caplog.text
    labels = {"kind": "warning", "outcome": "no_recipient"}
    assert metrics.registry.get_sample_value("sla_daemon_staff_alerts_total", labels) == 1


async def test_a_warning_shows_the_deadline_on_the_tickets_calendar_clock(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "port-louis", ["mon-fri 08:00-16:00"], time_zone="Indian/Mauritius")
    mid = await municipality_on(conn, "port-louis", 4, 16)
    manager = await f.user(conn, "0830000000")
    tid = await f.ticket(conn, mid, user_id=await f.user(conn))
    deadline = datetime(2030, 1, 7, 12, 30, tzinfo=ZoneInfo("UTC"))
    queued = await conn.fetchval(
        "SELECT sla_daemon.enqueue_staff_alert($1, $2, 'staff_warning', NULL, $3)",
        tid,
        manager,
        deadline,
    )
    assert queued == "queued"
    (row,) = await conn.fetch(QUERIES["claim_outbox"], "w", 10, 30.0)
    assert (row["kind"], row["time_zone"], row["level"]) == (
        "staff_warning",
        "Indian/Mauritius",
        None,
    )
    fields = ("tracking_number", "category", "level", "deadline_at", "time_zone")
    values = values_for(**{k: row[k] for k in fields})
    assert values["deadline"] == "2030-01-07 16:30 +04"


# --- templates, the window, opt-out ---------------------------------------------------


def test_templates_and_check_cover_the_staff_alerts() -> None:
    by_key = {d.key: d for d in definitions(CATALOG)}
    escalation, warning = by_key["staff_escalation:zu"], by_key["staff_warning:af"]
    assert escalation.body == CATALOG.texts["zu"]["staff.escalation"].format(
        tracking_number="{{1}}", category="{{2}}", overdue="{{3}}", level="{{4}}"
    )
    assert set(escalation.variables) == {"1", "2", "3", "4"}
    assert warning.body == CATALOG.texts["af"]["staff.warning"].format(
        tracking_number="{{1}}", category="{{2}}", deadline="{{3}}"
    )
    assert set(warning.variables) == {"1", "2", "3"}
    base: dict[str, Any] = {
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "t",
        "twilio_whatsapp_number": "+14155238886",
    }
    citizens = {k: "HX1" for k in template_keys(CATALOG) if not k.startswith("staff_")}
    (_, templates) = check_twilio(Settings(**base, twilio_content_sids=citizens), CATALOG)
    assert templates.status == "warn" and "staff_escalation:zu" in templates.detail
    assert "staff_warning" not in templates.detail  # only asked for with the setting
    warned = Settings(**base, twilio_content_sids=citizens, warn_team_manager=True)
    (_, templates) = check_twilio(warned, CATALOG)
    assert "staff_warning:af" in templates.detail
    every = {k: "HX1" for k in template_keys(CATALOG, staff_warning=True)}
    (_, templates) = check_twilio(Settings(**base, twilio_content_sids=every), CATALOG)
    assert templates.status == "ok"


async def test_a_staff_alert_goes_as_its_approved_template_where_one_is_configured(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    b = await breach(conn, manager_language="zu")
    sids = {"staff_escalation:zu": "HXstaffzu"}
    async with running(daemon_settings(dsn, fake, twilio_content_sids=sids)):
        await fake.wait_for(2)
        await wait_until_finished(conn)
    (alert,) = to(fake, MANAGER)
    assert (alert.content_sid, alert.body) == ("HXstaffzu", None)
    variables = json.loads(alert.content_variables or "{}")
    assert variables.keys() == {"1", "2", "3", "4"}
    assert (variables["1"], variables["2"], variables["4"]) == (b.tracking, "water", "1")
    assert 65 <= minutes(variables["3"]) <= 67
    (notice,) = to(fake, CITIZEN)  # no template for it: its text, as before
    assert (notice.content_sid, notice.body) == (None, CATALOG.render_escalation("en", b.tracking))


async def test_outside_the_window_a_staff_alert_without_a_template_dies_saying_so(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    b = await breach(conn, manager_language="af")
    caplog.set_level(logging.WARNING, "sla_daemon.daemon")
    async with running(hooked(dsn, fake)):  # templates for the citizens' texts only
        assert "staff_escalation:af" in caplog.text  # named at start
        await fake.wait_for(1)
        await wait_until_finished(conn)
    (notice,) = to(fake, CITIZEN)
    assert notice.content_sid == TEMPLATES["escalation:en"]
    assert json.loads(notice.content_variables or "{}")["1"] == b.tracking
    assert not to(fake, MANAGER)
    (row,) = await staff_rows(conn)
    assert row["state"] == "dead"
    assert "24-hour" in row["last_error"]
    assert "no approved template for staff_escalation:af" in row["last_error"]


async def test_a_staff_members_stop_opts_their_number_out_like_any_other(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    b = await breach(conn, overdue=timedelta(seconds=-2))
    async with running(hooked(dsn, fake)) as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        assert await fake.inbound(inbound, f"whatsapp:{MANAGER}", "STOP") == 200
        await fake.wait_for(1, timeout=10)  # the citizen's notice

        async def finished() -> list[asyncpg.Record]:
            rows = await staff_rows(conn)
            return rows if rows and rows[0]["state"] not in ("pending", "sending") else []

        (row,) = await eventually(finished, 10, what="the staff alert finished")
    assert row["state"] == "opted_out" and not to(fake, MANAGER)
    assert [m.to for m in fake.messages] == [f"whatsapp:{CITIZEN}"]
    assert b.ticket == row["ticket_id"]


async def test_a_staff_alerts_delivery_is_tracked_like_any_message(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    await breach(conn, manager_language="zu")
    sids = {**TEMPLATES, "staff_escalation:zu": "HXstaffzu"}
    async with running(hooked(dsn, fake, twilio_content_sids=sids)):
        await fake.wait_for(2)
        await wait_until_finished(conn)
        (alert,) = to(fake, MANAGER)
        assert alert.content_sid == "HXstaffzu" and alert.status_callback
        assert await fake.callback(alert, "delivered") == 204

        async def delivered() -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT d.status, o.recipient_id FROM sla_daemon.deliveries d"
                " JOIN sla_daemon.outbox o ON o.id = d.outbox_id WHERE d.message_sid = $1",
                alert.sid,
            )

        row = await eventually(delivered, 10, what="the delivery recorded")
    assert row["status"] == "delivered" and row["recipient_id"] is not None


async def test_a_staff_alert_is_retried_and_dead_lettered_like_any_message(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    # With the warning setting on, a ticket past its warning: the manager's alert is the
    # only message, so the fake's scripted failures are its.
    async def warned_ticket() -> UUID:
        mid = await f.municipality(conn)
        team = await f.team(conn, mid, await f.user(conn, "0830000000"))
        created = await conn.fetchval("SELECT now() - interval '23 hours'")
        return await f.ticket(conn, mid, assigned_team_id=team, created_at=created)

    fake.fail_next(503)
    first = await warned_ticket()
    async with running(daemon_settings(dsn, fake, warn_team_manager=True)):
        await fake.wait_for(1)
        await wait_until_finished(conn)
        fake.fail_next(400, code=21211, message="Invalid 'To' Phone Number")
        second = await warned_ticket()
        await conn.execute("SELECT sla_daemon.reschedule(ARRAY[$1::uuid])", second)

        async def dead() -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT attempts, error_code FROM sla_daemon.outbox"
                " WHERE ticket_id = $1 AND state = 'dead'",
                second,
            )

        gone = await eventually(dead, 15, what="the second alert dead")
    sent = await conn.fetchrow(
        "SELECT state, attempts, kind FROM sla_daemon.outbox WHERE ticket_id = $1", first
    )
    assert tuple(sent.values()) == ("sent", 2, "staff_warning")  # retried after the 503
    assert (gone["attempts"], gone["error_code"]) == (1, 21211)
    assert len(fake.messages) == 1


# --- the outbox's rules, per (ticket, recipient) ---------------------------------------


async def test_a_staff_alert_in_flight_does_not_hold_the_citizens_message_back(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, fake: FakeTwilio
) -> None:
    b = await breach(conn)
    assert await EscalationService(pool).escalate_ticket(b.ticket)
    # The alert was claimed by a daemon that died: its lease runs for an hour.
    await conn.execute(
        "UPDATE sla_daemon.outbox SET state = 'sending', locked_by = 'gone', claim_token = -1,"
        " next_attempt_at = now() + interval '1 hour' WHERE recipient_id IS NOT NULL"
    )
    async with running(daemon_settings(dsn, fake)):
        (notice,) = await fake.wait_for(1, timeout=5)
    assert notice.to == f"whatsapp:{CITIZEN}"


async def test_a_lease_is_extended_per_recipient(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    b = await breach(conn)
    assert await EscalationService(pool).escalate_ticket(b.ticket)
    claimed = await conn.fetch(QUERIES["claim_outbox"], "w", 10, 30.0)
    by_kind = {r["kind"]: r for r in claimed}
    notice, alert = by_kind["escalation"], by_kind["staff_escalation"]
    assert (notice["phone"], alert["phone"]) == ("0821234567", "0830000000")
    assert (alert["recipient_id"], alert["level"], alert["category"]) == (b.manager, 1, "water")
    assert notice["recipient_id"] is None and alert["deadline_at"] == b.deadline
    assert alert["time_zone"] == "Africa/Johannesburg"
    # A newer citizen status (still in the intake) does not stop the staff alert's send;
    # the citizen's notice is older than the alert, and may be sent all the same.
    await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", b.ticket)
    extend = QUERIES["extend_outbox"]
    token = alert["claim_token"]
    assert [r["id"] for r in await conn.fetch(extend, token, [alert["id"]], 30.0)] == [alert["id"]]
    assert not await conn.fetch(extend, token, [notice["id"]], 30.0)  # the intake's is newer
    await conn.execute("DELETE FROM sla_daemon.outbox_intake")
    assert [r["id"] for r in await conn.fetch(extend, token, [notice["id"]], 30.0)] == [
        notice["id"]
    ]


async def test_dead_letters_are_requeued_per_recipient(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    mid = await f.municipality(conn)
    # one: the manager's number is unusable; the citizen then hears of a newer status
    one = await breach(conn, mid=mid, manager_phone="12345")
    # two: the citizen's number is unusable; the manager's alert (newer) is sent
    two = await breach(conn, mid=mid, manager_phone="0830000009", citizen_phone="12346")
    async with running(daemon_settings(dsn, fake)):
        await fake.wait_for(2)
        assert await wait_until_finished(conn) == Counter({"sent": 2, "dead": 2})
        await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", one.ticket)
        await fake.wait_for(3)
        await wait_until_finished(conn)
        listed = await cli("outbox", "list-dead", env=cli_env(dsn))
        assert listed.code == 0, listed.text
        assert "staff alert: escalation level 1" in listed.out
        assert "escalation notice" in listed.out
        await conn.execute("UPDATE users SET phone = '0830000000' WHERE id = $1", one.manager)
        await conn.execute("UPDATE users SET phone = '0820000002' WHERE id = $1", two.citizen)
        requeued = await cli("outbox", "retry-dead", "--yes", env=cli_env(dsn))
        assert requeued.code == 0 and "re-queued 2 dead letters" in requeued.out, requeued.text
        await fake.wait_for(5)
        assert await wait_until_finished(conn) == Counter({"sent": 5})
    (alert,) = to(fake, MANAGER)  # the alert, though the citizen's stream moved on
    assert one.tracking in (alert.body or "")
    assert [m.body for m in to(fake, "+27820000002")] == [
        CATALOG.render_escalation("en", two.tracking)  # though an alert came after it
    ]


async def test_retention_keeps_the_newest_row_of_each_recipient(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    b = await breach(conn)
    assert await EscalationService(pool).escalate_ticket(b.ticket)
    await conn.fetch(QUERIES["claim_outbox"], "w", 10, 30.0)
    await conn.execute(
        "UPDATE sla_daemon.outbox SET state = 'sent', finished_at = now() - interval '40 days'"
    )
    assert await conn.fetchval(QUERIES["purge_outbox"], 30.0, 100) == 0
    kinds = await conn.fetch("SELECT kind FROM sla_daemon.outbox ORDER BY id")
    assert [r["kind"] for r in kinds] == ["escalation", "staff_escalation"]


async def test_the_newest_per_recipient_lookups_are_index_backed(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    b = await breach(conn)
    assert await EscalationService(pool).escalate_ticket(b.ticket)
    scans = (
        "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables"
        " WHERE schemaname = 'sla_daemon' AND relname = 'outbox'"
    )
    index_scans = "SELECT pg_stat_get_xact_numscans('sla_daemon.outbox_ticket'::regclass)"
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        claimed = await conn.fetch(QUERIES["claim_outbox"], "w", 10, 30.0)
        token = claimed[0]["claim_token"]
        await conn.fetch(QUERIES["extend_outbox"], token, [r["id"] for r in claimed], 30.0)
        ids = [r["id"] for r in claimed]
        await conn.execute("UPDATE sla_daemon.outbox SET state = 'dead' WHERE id = ANY ($1)", ids)
        await conn.fetchval(QUERIES["requeue_dead"], None)
        assert await conn.fetchval(scans) == 0
        assert await conn.fetchval(index_scans) > 0


# --- settings --------------------------------------------------------------------------


def test_the_warning_setting_is_off_by_default_and_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DATABASE_URL", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().warn_team_manager is False
    monkeypatch.setenv("SLA_DAEMON_WARN_TEAM_MANAGER", "true")
    assert load_settings().warn_team_manager is True
    monkeypatch.setenv("SLA_DAEMON_WARN_TEAM_MANAGER", "sometimes")
    with pytest.raises(SettingsError, match="SLA_DAEMON_WARN_TEAM_MANAGER"):
        load_settings()
