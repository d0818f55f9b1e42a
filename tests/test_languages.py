"""Issue 11: a reopened ticket gets its own text (never "your complaint has been
logged"), in every language; a language without a catalog falls back to English,
logged once per language and counted in a metric. Through the real daemon and the
real Twilio client to the fake server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from sla_daemon.messages import MessageCatalog

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_daemon import make_tickets

CATALOG = MessageCatalog.load()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.mark.parametrize("language", CATALOG.languages)
def test_the_reopened_text_is_not_the_first_reports(language: str) -> None:
    reopened = CATALOG.render_reopened(language, "TKT-1")
    assert reopened != CATALOG.render_status("open", language, "TKT-1")
    assert "TKT-1" in reopened
    assert "Thank you for your report" not in reopened and "logged" not in reopened


@pytest.mark.parametrize("old", ["resolved", "closed"])
async def test_a_reopened_ticket_gets_the_reopened_text(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, old: str
) -> None:
    _, (tn,) = await make_tickets(conn, 1, language="zu")
    async with running(daemon_settings(dsn, fake)):
        await conn.execute(f"UPDATE tickets SET status = '{old}' WHERE tracking_number = $1", tn)
        await fake.wait_for(1)
        await conn.execute("UPDATE tickets SET status = 'open' WHERE tracking_number = $1", tn)
        messages = await fake.wait_for(2)
    assert messages[1].body == CATALOG.render_reopened("zu", tn)


async def test_a_language_without_a_catalog_is_logged_once_and_counted(
    conn: asyncpg.Connection, dsn: str, fake: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    muni, xhosa = await make_tickets(conn, 3, language="xh")
    sotho = [f"{xhosa[0]}-st"]
    await f.ticket(
        conn, muni, user_id=await f.user(conn, "0821234568", "Sesotho"), tracking_number=sotho[0]
    )
    caplog.set_level(logging.WARNING, logger="sla_daemon")
    async with running(daemon_settings(dsn, fake)) as daemon:
        await conn.execute("UPDATE tickets SET status = 'in_progress'")
        messages = await fake.wait_for(4)
        metrics = daemon.metrics.render().decode()
    assert {m.body for m in messages} == {
        CATALOG.render_status("in_progress", "en", tn) for tn in [*xhosa, *sotho]
    }
    fallbacks = [r.getMessage() for r in caplog.records if "no message catalog" in r.getMessage()]
    assert sorted(fallbacks) == sorted(
        f"no message catalog for language {lang!r}: sending English (add"
        " sla_daemon/catalogs/<code>.toml; logged once per language)"
        for lang in ("xh", "sesotho")
    )
    assert 'sla_daemon_language_fallbacks_total{language="xh"} 3.0' in metrics
    assert 'sla_daemon_language_fallbacks_total{language="sesotho"} 1.0' in metrics
