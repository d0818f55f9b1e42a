"""Issue 13, replies: "still broken" to the resolved message reopens the ticket or is
recorded for staff (SLA_DAEMON_NOT_FIXED_ACTION); other replies are linked to the
citizen's newest open ticket; replies from unknown numbers are recorded, not acted on.
Signed inbound messages into the real daemon, real PostgreSQL, the fake Twilio."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from sla_daemon.config import SettingsError, load_settings
from sla_daemon.daemon import Daemon
from sla_daemon.messages import MessageCatalog
from sla_daemon.replies import says_not_fixed

from . import factories as f
from .daemon_harness import running
from .fake_twilio import FakeTwilio, ReceivedMessage
from .test_daemon import wait_until_finished
from .test_webhooks import (
    ADDRESS,
    PHONE,
    change,
    counted,
    hooked,
    sent_message,
    ticket,
    url,
)

CATALOG = MessageCatalog.load()
DEFAULTS = load_settings().not_fixed_keywords


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def resolved(
    conn: asyncpg.Connection, fake: FakeTwilio, tid: UUID, inbound: str
) -> ReceivedMessage:
    """The citizen wrote (window open), got "resolved", and Twilio reported it delivered."""
    await fake.inbound(inbound, ADDRESS, "hello")
    await change(conn, tid, "resolved")
    (msg,) = await fake.wait_for(1)
    await wait_until_finished(conn)
    assert await fake.callback(msg, "delivered") == 204
    return msg


async def reply_row(conn: asyncpg.Connection, sid: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT kind, ticket_id, action FROM sla_daemon.inbound_messages WHERE message_sid = $1",
        sid,
    )
    assert row is not None
    return dict(row)


async def status(conn: asyncpg.Connection, tid: UUID) -> str:
    value: str = await conn.fetchval("SELECT status::text FROM tickets WHERE id = $1", tid)
    return value


# --- what counts as "not fixed" ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["It is NOT fixed!", "still   broken.", "Akulungisiwe", "Dit is nog stukkend", "werk nog nie"],
)
def test_not_fixed_phrases_match_in_each_language_any_case_and_spacing(body: str) -> None:
    assert says_not_fixed(body, DEFAULTS)


@pytest.mark.parametrize("body", ["fixed, thank you", "the knot fixed itself", "", "STOP"])
def test_other_replies_are_not_not_fixed(body: str) -> None:
    assert not says_not_fixed(body, DEFAULTS)


def test_the_phrases_are_configurable_per_language() -> None:
    settings = load_settings(not_fixed_keywords={"xh": ["  Ayilungiswanga  "]})
    assert settings.not_fixed_keywords == {"xh": ["ayilungiswanga"]}
    assert says_not_fixed("AYILUNGISWANGA!", settings.not_fixed_keywords)
    assert not says_not_fixed("not fixed", settings.not_fixed_keywords)
    with pytest.raises(SettingsError, match="SLA_DAEMON_NOT_FIXED_KEYWORDS"):
        load_settings(not_fixed_keywords={"en": ["  "]})
    with pytest.raises(SettingsError, match="SLA_DAEMON_NOT_FIXED_ACTION"):
        load_settings(not_fixed_action="delete")
    assert load_settings().not_fixed_action == "record"  # the default (README says why)


def test_the_readme_lists_the_default_phrases() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for language, phrases in DEFAULTS.items():
        assert f"| {language} | {', '.join(phrases)} |" in readme, language


async def test_a_ticket_no_longer_resolved_is_not_reopened(conn: asyncpg.Connection) -> None:
    # A "not fixed" reply to the resolved message of a ticket closed since: recorded.
    tid = await ticket(conn)
    await change(conn, tid, "closed")
    await conn.execute(
        "INSERT INTO sla_daemon.outbox (id, ticket_id, new_status, state, message_sid)"
        " VALUES (1, $1, 'resolved', 'sent', 'SMr')",
        tid,
    )
    await conn.fetchrow(
        "SELECT * FROM sla_daemon.record_delivery('SMr', 'read', NULL, 1, '+27821234567')"
    )
    row = await conn.fetchrow(
        "SELECT * FROM sla_daemon.record_reply('SMq', '+27821234567', 'not fixed', true, true)"
    )
    assert row is not None and tuple(row.values()) == (True, tid, "not_fixed")
    assert await status(conn, tid) == "closed"


# --- what a reply does -----------------------------------------------------------------------


@pytest.mark.parametrize(("language", "body"), [("en", "Still broken!"), ("zu", "akulungisiwe")])
async def test_not_fixed_to_the_resolved_message_reopens_the_ticket_when_set(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, language: str, body: str
) -> None:
    tid = await ticket(conn, language=language)
    async with running_hooked(dsn, fake, not_fixed_action="reopen") as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        await resolved(conn, fake, tid, inbound)
        before = await conn.fetchval("SELECT now()")
        assert await fake.inbound(inbound, ADDRESS, body, sid="SMreply1") == 200
        assert await fake.inbound(inbound, ADDRESS, body, sid="SMreply1") == 200  # replayed
        _, reopened = await fake.wait_for(2)
        await wait_until_finished(conn)
        reopens = counted(daemon, "sla_daemon_replies_total", action="reopened")
    tn = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", tid)
    assert await status(conn, tid) == "open"
    assert reopened.body == CATALOG.render_reopened(language, tn)
    assert await reply_row(conn, "SMreply1") == {
        "kind": "reply",
        "ticket_id": tid,
        "action": "reopened",
    }
    # a new SLA cycle: the response deadline counts from the reopening
    due = await conn.fetchval(
        "SELECT due_at FROM sla_daemon.deadlines WHERE ticket_id = $1 AND"
        " deadline_kind = 'response'",
        tid,
    )
    assert due is not None and due > before
    assert reopens == 1 and len(fake.messages) == 2


async def test_not_fixed_by_default_is_recorded_for_staff_and_reopens_nothing(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn)
    async with running_hooked(dsn, fake) as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        await resolved(conn, fake, tid, inbound)
        assert await fake.inbound(inbound, ADDRESS, "it is not fixed", sid="SMreply2") == 200
        await wait_until_finished(conn)
        recorded = counted(daemon, "sla_daemon_replies_total", action="not_fixed")
    assert await status(conn, tid) == "resolved"
    assert await reply_row(conn, "SMreply2") == {
        "kind": "reply",
        "ticket_id": tid,
        "action": "not_fixed",
    }
    assert recorded == 1 and len(fake.messages) == 1


async def test_a_sensitive_ticket_is_never_reopened_by_a_reply(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn, category="gbv", is_sensitive=True)
    settings: dict[str, Any] = {"not_fixed_action": "reopen", "sensitive_messages": "neutral"}
    async with running_hooked(dsn, fake, **settings) as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        await resolved(conn, fake, tid, inbound)
        assert await fake.inbound(inbound, ADDRESS, "still broken", sid="SMreply3") == 200
    assert await status(conn, tid) == "resolved"
    assert (await reply_row(conn, "SMreply3"))["action"] == "not_fixed"


async def test_any_other_reply_is_recorded_against_the_citizens_newest_open_ticket(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    mid = await f.municipality(conn)
    uid = await f.user(conn, PHONE, "en")
    first = await f.ticket(conn, mid, user_id=uid)
    async with running_hooked(dsn, fake, not_fixed_action="reopen") as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        await fake.inbound(inbound, ADDRESS, "hello")
        msg = await sent_message(conn, fake, first)  # "in progress"
        assert await fake.callback(msg, "delivered") == 204
        newer = await f.ticket(conn, mid, user_id=uid)  # never messaged about
        older_closed = await f.ticket(conn, mid, user_id=uid, status="closed")
        assert await fake.inbound(inbound, ADDRESS, "thank you!", sid="SMreply4") == 200
        # "not fixed" to an "in progress" message is a reply like any other
        assert await fake.inbound(inbound, ADDRESS, "still broken", sid="SMreply5") == 200
        linked = counted(daemon, "sla_daemon_replies_total", action="linked")
    for sid in ("SMreply4", "SMreply5"):
        assert await reply_row(conn, sid) == {"kind": "reply", "ticket_id": newer, "action": None}
    assert await status(conn, first) == "in_progress" and older_closed != newer
    assert linked == 2


async def test_a_reply_from_an_unknown_number_is_recorded_not_acted_on(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio
) -> None:
    tid = await ticket(conn)
    async with running_hooked(dsn, fake, not_fixed_action="reopen") as daemon:
        inbound = url(daemon.settings, "/twilio/inbound")
        await resolved(conn, fake, tid, inbound)
        stranger = "whatsapp:+27831112222"
        before = counted(daemon, "sla_daemon_replies_total", action="unknown")
        assert await fake.inbound(inbound, stranger, "not fixed", sid="SMreply6") == 200
        unknown = counted(daemon, "sla_daemon_replies_total", action="unknown") - before
    assert await reply_row(conn, "SMreply6") == {
        "kind": "reply",
        "ticket_id": None,
        "action": "unknown",
    }
    assert await status(conn, tid) == "resolved" and len(fake.messages) == 1
    assert unknown == 1


def running_hooked(
    dsn: str, fake: FakeTwilio, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[Daemon]:
    return running(hooked(dsn, fake, **overrides))
