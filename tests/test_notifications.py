"""NotificationService through the real twilio client against a local fake Twilio."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sla_daemon.config import Settings
from sla_daemon.messages import MessageCatalog
from sla_daemon.notifications import NotificationService, TokenBucket, classify_failure
from tests.fake_twilio import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, FakeTwilio

FROM = "+14155238886"
PHONE = "082 123 4567"
TO = "whatsapp:+27821234567"
TRACKING = "ETH-2024-001234"


@pytest.fixture(scope="module")
def catalog() -> MessageCatalog:
    return MessageCatalog.load()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "twilio_account_sid": TEST_ACCOUNT_SID,
        "twilio_auth_token": TEST_AUTH_TOKEN,
        "twilio_whatsapp_number": f"whatsapp:{FROM}",
        "twilio_api_base_url": base_url,
        "dry_run": False,
        "default_region": "ZA",
        "send_rate_per_second": 1000.0,
        "send_concurrency": 16,
        "send_timeout_seconds": 5.0,
        "retry_base_seconds": 0.05,  # the Twilio-wide pause after a rate limit
        "twilio_content_sids": {},
    }
    values.update(overrides)
    return Settings(**values)


def service(fake: FakeTwilio, catalog: MessageCatalog, **overrides: Any) -> NotificationService:
    return NotificationService(make_settings(fake.base_url, **overrides), catalog)


@pytest.mark.parametrize(
    ("language", "expected"),
    [("en-GB", "en"), ("isiZulu", "zu"), ("af_ZA", "af"), (None, "en")],
)
async def test_status_update_in_each_language(
    fake: FakeTwilio, catalog: MessageCatalog, language: str | None, expected: str
) -> None:
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "in_progress", language)
    assert result.outcome == "sent"
    assert result.language == expected
    (message,) = fake.messages
    assert message.sid == result.sid
    assert result.sid is not None and result.sid.startswith("SM") and len(result.sid) == 34
    assert message.account_sid == TEST_ACCOUNT_SID
    assert message.to == TO
    assert message.from_ == f"whatsapp:{FROM}"
    assert message.body == catalog.render_status("in_progress", expected, TRACKING)
    assert message.body == result.body
    assert message.content_sid is None


async def test_escalation_notice(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    async with service(fake, catalog) as notifier:
        result = await notifier.send_escalation_notice("+27821234567", TRACKING, "zu")
    assert result.outcome == "sent"
    assert fake.messages[0].body == catalog.render_escalation("zu", TRACKING)
    assert "kumphathi" in (fake.messages[0].body or "")


async def test_content_template_replaces_body(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    sids = {"resolved:zu": "HX" + "a" * 32, "escalation:af": "HX" + "b" * 32}
    async with service(fake, catalog, twilio_content_sids=sids) as notifier:
        resolved = await notifier.send_status_update(PHONE, TRACKING, "resolved", "zu-ZA")
        escalation = await notifier.send_escalation_notice(PHONE, TRACKING, "Afrikaans")
        plain = await notifier.send_status_update(PHONE, TRACKING, "resolved", "en")
    assert [r.outcome for r in (resolved, escalation, plain)] == ["sent"] * 3
    first, second, third = fake.messages
    assert first.content_sid == sids["resolved:zu"] and first.body is None
    assert json.loads(first.content_variables or "") == {"1": TRACKING, "2": "Sixazululiwe"}
    assert second.content_sid == sids["escalation:af"]
    assert json.loads(second.content_variables or "") == {"1": TRACKING, "2": "Geëskaleer"}
    assert third.content_sid is None and third.body == plain.body
    assert resolved.content_sid == sids["resolved:zu"]


@pytest.mark.parametrize("number", [FROM, f"whatsapp:{FROM}", f" WhatsApp:{FROM} "])
async def test_whatsapp_number_with_or_without_prefix(
    fake: FakeTwilio, catalog: MessageCatalog, number: str
) -> None:
    async with service(fake, catalog, twilio_whatsapp_number=number) as notifier:
        assert (await notifier.send_status_update(PHONE, TRACKING, "open", "en")).outcome == "sent"
    assert fake.messages[0].from_ == f"whatsapp:{FROM}"


async def test_rate_limited_then_sent(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    fake.fail_next(status=429, code=20429, message="Too Many Requests")
    async with service(fake, catalog) as notifier:
        first = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
        second = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
    assert first.outcome == "retry"
    assert first.error_code == 20429 and first.http_status == 429 and first.rate_limited
    assert second.outcome == "sent" and second.sid == fake.messages[0].sid
    assert [status for _, status in fake.requests] == [429, 201]


async def test_channel_rate_limit_63018_is_retried(
    fake: FakeTwilio, catalog: MessageCatalog
) -> None:
    fake.fail_next(status=400, code=63018)
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
    assert result.outcome == "retry" and result.rate_limited


async def test_invalid_number_is_dead_with_code_and_no_number(
    fake: FakeTwilio, catalog: MessageCatalog
) -> None:
    fake.fail_next(
        status=400, code=21211, message=f"The 'To' number {TO} is not a valid phone number."
    )
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "closed", "af")
    assert result.outcome == "dead"
    assert result.error_code == 21211 and result.http_status == 400
    assert result.error is not None and "not a valid phone number" in result.error
    assert "821234567" not in result.error
    assert not fake.messages


async def test_server_error_is_retried(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    fake.fail_next(status=500)
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
    assert result.outcome == "retry" and result.http_status == 500 and not result.rate_limited


async def test_slow_answer_times_out_and_is_retried(
    fake: FakeTwilio, catalog: MessageCatalog
) -> None:
    fake.delay_next(5.0)
    async with service(fake, catalog, send_timeout_seconds=0.2) as notifier:
        started = time.monotonic()
        result = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
        elapsed = time.monotonic() - started
    assert result.outcome == "retry"
    assert result.error is not None and "0.2s" in result.error
    assert elapsed < 2.0


async def test_connection_refused_is_retried(catalog: MessageCatalog) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(f"http://127.0.0.1:{port}", send_timeout_seconds=2.0)
    async with NotificationService(settings, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
    assert result.outcome == "retry"
    assert result.error is not None and "Connect" in result.error


async def test_wrong_credentials_hand_the_message_back_and_pause_sending(
    fake: FakeTwilio, catalog: MessageCatalog
) -> None:
    # a rotated token would otherwise dead-letter every queued message
    async with service(fake, catalog, twilio_auth_token="wrong") as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
        assert notifier.gate.paused and notifier.gate.problem() == "twilio=unauthorized"
    assert result.outcome == "released" and result.error_code == 20003
    assert result.http_status == 401
    assert "wrong" not in (result.error or "")
    assert not fake.messages


@pytest.mark.parametrize("phone", [None, "", "n/a", "112", "0211234567", "082123"])
async def test_unusable_phone_is_dead_without_sending(
    fake: FakeTwilio, catalog: MessageCatalog, phone: str | None
) -> None:
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(phone, TRACKING, "resolved", "zu")
        notice = await notifier.send_escalation_notice(phone, TRACKING, "zu")
    for outcome in (result, notice):
        assert outcome.outcome == "dead"
        assert outcome.error is not None and outcome.error.startswith("unusable phone number")
    assert fake.requests == []


async def test_unknown_status_is_dead_without_sending(
    fake: FakeTwilio, catalog: MessageCatalog
) -> None:
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "reopened", "en")
    assert result.outcome == "dead" and "reopened" in (result.error or "")
    assert fake.requests == []


async def test_dry_run_sends_nothing_and_masks_the_phone(
    fake: FakeTwilio, catalog: MessageCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sla_daemon.notifications"):
        async with service(fake, catalog, dry_run=True) as notifier:
            result = await notifier.send_status_update(PHONE, TRACKING, "closed", "af")
    assert result.outcome == "dry_run"
    assert result.body == catalog.render_status("closed", "af", TRACKING)
    assert fake.requests == []
    assert "+27*****4567" in caplog.text
    assert "821234567" not in caplog.text


async def test_missing_credentials_mean_dry_run(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    async with service(fake, catalog, twilio_auth_token=None) as notifier:
        result = await notifier.send_escalation_notice(PHONE, TRACKING, "en")
    assert result.outcome == "dry_run"
    assert fake.requests == []


async def test_twilio_region_in_environment_does_not_reroute(
    fake: FakeTwilio, catalog: MessageCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    async with service(fake, catalog) as notifier:
        result = await notifier.send_status_update(PHONE, TRACKING, "open", "en")
    assert result.outcome == "sent"


async def test_twilio_request_logging_is_silenced(
    fake: FakeTwilio, catalog: MessageCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with service(fake, catalog) as notifier:
            await notifier.send_status_update(PHONE, TRACKING, "open", "en")
    assert not [r for r in caplog.records if r.name.startswith("twilio")]
    assert "821234567" not in caplog.text


def test_token_bucket_waits_are_computed() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10.0, burst=3.0, clock=lambda: now[0])
    waits = [bucket.reserve() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])
    now[0] += 10.0  # a long pause refills only up to the burst
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2])


def test_token_bucket_bounds_any_window() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=80.0, burst=20.0, clock=lambda: now[0])
    due = [bucket.reserve() for _ in range(500)]  # everyone at once: a backlog
    assert due == sorted(due)
    for window in (0.0, 0.1, 0.5, 1.0, 5.0):
        started = sum(1 for at in due if at <= window + 1e-9)
        assert started == min(500, 20 + int(80 * window + 1e-9))


async def test_sending_rate_is_bounded(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    rate, count = 40.0, 30
    async with service(fake, catalog, send_rate_per_second=rate, send_concurrency=64) as notifier:
        burst = notifier.bucket.burst
        started = time.monotonic()
        results = await asyncio.gather(
            *(notifier.send_status_update(PHONE, f"T-{i}", "open", "en") for i in range(count))
        )
        elapsed = time.monotonic() - started
    assert all(r.outcome == "sent" for r in results)
    assert elapsed >= (count - burst) / rate * 0.95
    window = 0.25  # no more than the burst plus rate x window can arrive in any early window
    early = [m for m in fake.messages if m.received_monotonic <= started + window]
    assert len(early) <= burst + rate * window + 1


async def test_concurrency_is_bounded(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    fake.delay_next(0.3, times=4)
    async with service(fake, catalog, send_concurrency=2) as notifier:
        started = time.monotonic()
        results = await asyncio.gather(
            *(notifier.send_status_update(PHONE, f"T-{i}", "open", "en") for i in range(4))
        )
        elapsed = time.monotonic() - started
    assert all(r.outcome == "sent" for r in results)
    assert elapsed >= 0.55


async def test_fake_wait_for(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    async with service(fake, catalog) as notifier:
        waiting = asyncio.create_task(fake.wait_for(3, timeout=5))
        for i in range(3):
            await notifier.send_status_update(PHONE, f"T-{i}", "open", "en")
        assert len(await waiting) == 3
    with pytest.raises(TimeoutError, match="received 3 of 4"):
        await fake.wait_for(4, timeout=0.05)


async def test_close_is_idempotent(fake: FakeTwilio, catalog: MessageCatalog) -> None:
    # Closing closes the Twilio client's HTTP session (no leaked connections at
    # shutdown); a second close is harmless, and start() after close works again.
    notifier = service(fake, catalog)
    await notifier.start()
    assert (await notifier.send_status_update(PHONE, "T-1", "open", "en")).outcome == "sent"
    http = notifier._http
    assert http is not None and http.session is not None and not http.session.closed
    await notifier.close()
    assert http.session.closed
    await notifier.close()
    with pytest.raises(RuntimeError, match="start"):
        await notifier.send_status_update(PHONE, "T-2", "open", "en")
    await notifier.start()
    assert (await notifier.send_status_update(PHONE, "T-3", "open", "en")).outcome == "sent"
    await notifier.close()
    assert len(fake.messages) == 2


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (400, 21211, "dead"),
        (400, 21408, "dead"),
        (400, 21610, "dead"),
        (400, 21614, "dead"),
        (400, 63003, "dead"),
        (400, 63016, "dead"),
        (404, 20404, "dead"),
        (401, 20003, "released"),
        (403, 20003, "released"),
        (403, None, "released"),
        (400, 20003, "released"),
        (403, 21408, "dead"),
        (400, None, "dead"),
        (429, 20429, "retry"),
        (429, None, "retry"),
        (400, 63018, "retry"),
        (500, None, "retry"),
        (503, 20500, "retry"),
        (None, None, "retry"),
    ],
)
def test_classify_failure(status: int | None, code: int | None, outcome: str) -> None:
    assert classify_failure(status, code) == outcome


async def test_dry_run_logs_the_body_only_at_debug(
    fake: FakeTwilio, catalog: MessageCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    """A body is a citizen's message: INFO keeps one line without it, DEBUG shows it."""
    body = catalog.render_status("resolved", "zu", TRACKING)
    with caplog.at_level(logging.INFO, logger="sla_daemon.notifications"):
        async with service(fake, catalog, dry_run=True) as notifier:
            await notifier.send_status_update(PHONE, TRACKING, "resolved", "zu")
    (info,) = caplog.records
    assert info.levelno == logging.INFO and TRACKING in info.getMessage()
    assert body not in caplog.text and "+27*****4567" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="sla_daemon.notifications"):
        async with service(fake, catalog, dry_run=True) as notifier:
            await notifier.send_status_update(PHONE, TRACKING, "resolved", "zu")
    assert [r.levelno for r in caplog.records if body in r.getMessage()] == [logging.DEBUG]
    assert "821234567" not in caplog.text
