"""Twilio-wide trouble is handled once for the whole sender, not row by row.

A refused token pauses all sending (rows keep their attempts, none goes dead), shows
on /healthz and a metric, is probed one message at a time and resumes by itself; a
rate limit pauses every POST for Retry-After (or a growing backoff). Through the real
twilio client, the real daemon and the fake Twilio.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections import Counter
from email.utils import formatdate

import asyncpg
import pytest

from sla_daemon.messages import MessageCatalog
from sla_daemon.metrics import Metrics
from sla_daemon.notifications import NotificationService, TokenBucket
from sla_daemon.twilio_gate import TwilioGate, parse_retry_after

from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_daemon import make_tickets, wait_until_finished
from .test_notifications import PHONE, TRACKING, make_settings
from .test_operations import receive_until
from .test_reliability import health_is, scrape
from .waiting import eventually

CATALOG = MessageCatalog.load()


# --- pieces ----------------------------------------------------------------------------


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    for unreadable in (None, "", "soon", "-5", "1.5e9x"):
        assert parse_retry_after(unreadable, now) is None


def test_a_hold_delays_every_token_and_restarts_at_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10.0, burst=5.0, clock=lambda: now[0])
    bucket.hold_until(105.0)
    waits = [bucket.reserve() for _ in range(3)]
    assert waits == pytest.approx([5.0, 5.1, 5.2])  # no burst after the pause
    bucket.hold_until(101.0)  # an earlier hold changes nothing
    assert bucket.reserve() == pytest.approx(5.3)


async def test_a_hold_set_while_waiting_holds_the_waiter_too() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1.0)
    bucket.reserve()  # the next caller must wait for a token
    waiter = asyncio.create_task(bucket.acquire())
    bucket.hold_until(time.monotonic() + 0.3)
    started = time.monotonic()
    await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - started >= 0.28


def test_the_gate_honours_retry_after_else_doubles_its_backoff() -> None:
    now = [0.0]
    gate = TwilioGate(backoff_base=1.0, backoff_cap=10.0, clock=lambda: now[0])
    assert gate.rate_limited(started=0.0, retry_after=3.0) == 3.0
    assert gate.rate_limited(started=0.0, retry_after=3600.0) == 10.0  # capped
    now[0] = 20.0
    waits = []
    for _ in range(5):  # each POST started after the previous pause ended
        waits.append(gate.rate_limited(started=now[0], retry_after=None))
        now[0] += waits[-1] + 0.01
    for step, wait in enumerate(waits):
        ceiling = min(10.0, 2.0**step)
        assert ceiling / 2 <= wait <= ceiling, (step, waits)
    # POSTs already under way when a pause began do not double it again
    began = now[0]
    first = gate.rate_limited(started=began, retry_after=None)
    assert gate.rate_limited(started=began - 0.001, retry_after=None) <= first
    gate.sent()  # a message went through: the backoff starts over
    now[0] += 100
    assert gate.rate_limited(started=now[0], retry_after=None) <= 1.0


async def test_retry_after_is_read_from_the_answer_and_holds_the_next_send(
    catalog: MessageCatalog,
) -> None:
    async with FakeTwilio() as fake:
        settings = make_settings(fake.base_url, twilio_backoff_max_seconds=5)
        async with NotificationService(settings, catalog) as notifier:
            fake.fail_next(429, 20429, retry_after="1")
            first = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
            assert first.rate_limited and first.retry_after is not None
            assert 0.9 <= first.retry_after <= 1.0
            second = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
            assert second.outcome == "sent"
            fake.fail_next(429, 20429, retry_after=formatdate(time.time() + 3, usegmt=True))
            dated = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
        assert dated.retry_after is not None and 1.9 <= dated.retry_after <= 3.0
    assert fake.answered_at[1] - fake.answered_at[0] >= 0.9


@pytest.fixture(scope="module")
def catalog() -> MessageCatalog:
    return CATALOG


# --- a refused token --------------------------------------------------------------------


async def test_a_refused_token_pauses_all_sending_probes_and_resumes_by_itself(
    conn: asyncpg.Connection,
    dsn: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    await make_tickets(conn, 20)
    probe = 0.3
    async with FakeTwilio() as fake:
        fake.fail_all(401, 20003, "Authenticate")
        settings = daemon_settings(
            dsn,
            fake,
            max_attempts=1,  # before: the first 401 made a row dead
            twilio_probe_seconds=probe,
            send_concurrency=4,
            outbox_batch_size=10,
        )
        with caplog.at_level(logging.INFO, logger="sla_daemon.twilio_gate"):
            async with running(settings) as daemon:
                await conn.execute("UPDATE tickets SET status = 'in_progress'")
                body = await health_is(daemon, 503)
                assert body["detail"].startswith("listener=ok pool=ok twilio=unauthorized"), body
                assert "sla_daemon_twilio_paused 1.0" in await scrape(daemon)
                # a restart cannot fix a token: systemd's watchdog keeps being pinged
                assert daemon.liveness() == (True, "listener=ok pool=ok")
                status = await receive_until(sock, "twilio=unauthorized", timeout=10)
                seen = status + await receive_until(sock, "WATCHDOG=1", timeout=10)
                assert "WATCHDOG=1" in seen[-1]
                # one probe at a time, a probe interval apart
                paused_at = len(fake.requests)
                await eventually(lambda: len(fake.requests) >= paused_at + 4, timeout=10)
                answered = fake.answered_at[-3:]
                assert all(b - a >= probe * 0.9 for a, b in itertools.pairwise(answered))
                rows = await conn.fetch("SELECT state, attempts FROM sla_daemon.outbox")
                assert not [r for r in rows if r["state"] == "dead"]
                assert max(r["attempts"] for r in rows if r["state"] == "pending") == 0
                # the operator fixes the token: nobody restarts anything
                fake.recover()
                await fake.wait_for(20, timeout=20)
                states = await wait_until_finished(conn)
                body = await health_is(daemon, 200)
                assert body["detail"] == "listener=ok pool=ok"
                assert "sla_daemon_twilio_paused 0.0" in await scrape(daemon)
    assert states == Counter({"sent": 20})
    assert {s for _, s in fake.requests} == {401, 201}
    said = [r.getMessage() for r in caplog.records if r.name == "sla_daemon.twilio_gate"]
    assert len([m for m in said if "refused the credentials" in m]) == 1, said
    assert len([m for m in said if "sending resumed" in m]) == 1, said


# --- rate limits --------------------------------------------------------------------------


async def test_a_rate_limit_holds_every_post_for_retry_after(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await make_tickets(conn, 30)
    async with FakeTwilio() as fake:
        fake.fail_next(429, 20429, retry_after="1")
        settings = daemon_settings(dsn, fake, send_concurrency=4, send_rate_per_second=50)
        async with running(settings) as daemon:
            await conn.execute("UPDATE tickets SET status = 'in_progress'")
            await fake.wait_for(30, timeout=20)
            states = await wait_until_finished(conn)
            assert "sla_daemon_twilio_slowdowns_total 1.0" in await scrape(daemon)
    assert states == Counter({"sent": 30})
    limited_at = fake.answered_at[fake.requests.index((fake.account_sid, 429))]
    # POSTs already on their way may arrive just after; then nothing for Retry-After
    later = [a.received_monotonic - limited_at for a in fake.arrivals]
    assert not [t for t in later if 0.15 < t < 0.95], later


async def test_without_retry_after_the_pause_grows_for_everyone(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await make_tickets(conn, 1)
    base = 0.2
    async with FakeTwilio() as fake:
        fake.fail_next(429, 20429, times=3)
        settings = daemon_settings(dsn, fake, retry_base_seconds=base, retry_max_seconds=60)
        async with running(settings):
            await conn.execute("UPDATE tickets SET status = 'in_progress'")
            await fake.wait_for(1, timeout=20)
            await wait_until_finished(conn)
    gaps = [
        b.received_monotonic - a.received_monotonic
        for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)
    ]
    assert len(gaps) == 3
    for step, gap in enumerate(gaps):
        assert gap >= base * 2**step / 2 * 0.9, gaps


async def test_a_rate_limit_alone_never_makes_a_row_dead(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await make_tickets(conn, 1)
    async with FakeTwilio() as fake:
        fake.fail_next(429, 20429, times=3)
        fake.fail_next(400, 63018, times=1)
        settings = daemon_settings(dsn, fake, max_attempts=2)
        async with running(settings):
            await conn.execute("UPDATE tickets SET status = 'in_progress'")
            await fake.wait_for(1, timeout=20)
            states = await wait_until_finished(conn)
    assert states == Counter({"sent": 1})
    assert await conn.fetchval("SELECT attempts FROM sla_daemon.outbox") == 5
    assert [s for _, s in fake.requests] == [429, 429, 429, 400, 201]


def test_metrics_start_unpaused() -> None:
    metrics = Metrics()
    TwilioGate(backoff_base=1, backoff_cap=2, metrics=metrics)
    assert "sla_daemon_twilio_paused 0.0" in metrics.render().decode()
