"""Templates: Content API definitions from the catalogs, pushed to a fake Content API on
127.0.0.1 through the real twilio client, and ``check`` naming what is missing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest

from sla_daemon.check import check_twilio
from sla_daemon.config import Settings
from sla_daemon.messages import STATUSES, MessageCatalog
from sla_daemon.templates import definitions, template_keys

from .fake_twilio import FakeTwilio

CATALOG = MessageCatalog.load()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def test_every_status_and_the_escalation_in_every_language_has_a_definition() -> None:
    by_key = {d.key: d for d in definitions(CATALOG)}
    for lang in ("en", "zu", "af"):
        for kind in (*STATUSES, "escalation", "neutral"):
            d = by_key[f"{kind}:{lang}"]
            assert "{{1}}" in d.body and "{" not in d.body.replace("{{1}}", "").replace("{{2}}", "")
            assert d.language == lang and set(d.variables) <= {"1", "2"}
    assert by_key["resolved:en"].body == CATALOG.texts["en"]["status.resolved"].format(
        tracking_number="{{1}}", status_label="{{2}}"
    )


async def test_push_creates_them_through_the_content_api_and_prints_the_sids(
    fake: FakeTwilio,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLA_DAEMON_", "TWILIO_"))}
    env.update(
        TWILIO_ACCOUNT_SID=fake.account_sid,
        TWILIO_AUTH_TOKEN=fake.auth_token,
        TWILIO_CONTENT_BASE_URL=fake.base_url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sla_daemon", "templates", "push",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    sids = json.loads(out)
    assert set(sids) == set(template_keys(CATALOG, neutral=True, staff_warning=True))
    assert sorted(sids.values()) == sorted(str(c["sid"]) for c in fake.contents)
    assert {sid for sid, _ in fake.approvals} == set(sids.values())
    assert all(body["category"] == "UTILITY" for _, body in fake.approvals)
    created = {str(c["friendly_name"]): c for c in fake.contents}
    assert created["sla_daemon_resolved_zu"]["types"] == {
        "twilio/text": {
            "body": next(d.body for d in definitions(CATALOG) if d.key == "resolved:zu")
        }
    }
    # The printed line is the setting, as is.
    assert Settings(twilio_content_sids=sids).twilio_content_sids == sids


async def test_push_with_a_wrong_token_fails_in_one_line(fake: FakeTwilio) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLA_DAEMON_", "TWILIO_"))}
    env.update(
        TWILIO_ACCOUNT_SID=fake.account_sid,
        TWILIO_AUTH_TOKEN="wrong",
        TWILIO_CONTENT_BASE_URL=fake.base_url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sla_daemon", "templates", "push",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 69 and not out and not fake.contents
    assert len(err.decode().strip().splitlines()) == 1 and "wrong" not in err.decode()


def test_check_lists_what_has_no_template_and_warns_when_webhooks_make_it_fatal() -> None:
    base = {
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "t",
        "twilio_whatsapp_number": "+14155238886",
    }
    sids = {k: "HX1" for k in template_keys(CATALOG) if k != "resolved:zu"}
    (_, templates) = check_twilio(Settings(**base, twilio_content_sids=sids), CATALOG)
    assert templates.status == "warn" and "resolved:zu" in templates.detail
    hooked = Settings(
        **base,
        twilio_content_sids={},
        webhook_address="127.0.0.1:0",
        webhook_public_url="https://desk.example.org/hooks",
    )
    (_, templates) = check_twilio(hooked, CATALOG)
    assert templates.status == "warn" and "end dead" in templates.detail
    full = {k: "HX1" for k in template_keys(CATALOG)}
    (_, templates) = check_twilio(Settings(**base, twilio_content_sids=full), CATALOG)
    assert templates.status == "ok"
