"""What may be sent to whom, and how: opt-outs, unreachable numbers, sensitive tickets and
the 24-hour WhatsApp window (issue 13).

The outbox claims rows; before they are sent, one query per claim reads what the
database knows about each row's ticket and number (``delivery_plan``). Then, per row:

- a sensitive (GBV) ticket gets no automated message ('withheld'), or with
  ``SLA_DAEMON_SENSITIVE_MESSAGES=neutral`` a text that names no category or detail
  (to its citizen; a staff alert about it is always withheld);
- a number that opted out (STOP) gets nothing: the row ends 'opted_out';
- a number Twilio called unreachable (63024, 63014, 63003) gets nothing until the
  citizen writes again: the row ends dead with the reason;
- with webhooks on, the window is known: inside it the body text goes, outside it the
  approved template (no template: dead, saying so). A 63016 anyway is sent once more
  with the template. With webhooks off the window is unknown: the template when one
  is configured, else the body, as before.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from .config import Settings
from .db import QUERIES
from .notifications import Guard, NotificationService, SendOptions, SendResult
from .phones import InvalidPhoneError, normalize_phone
from .staff import alert_values, is_staff

if TYPE_CHECKING:
    from .outbox import OutboxRow

__all__ = ["Conversation", "Plan", "classify_inbound", "plain_e164"]

log = logging.getLogger(__name__)

#: Twilio codes after which a number gets nothing until the citizen writes again.
UNREACHABLE_CODES = frozenset({63024, 63014, 63003})
WINDOW_CODE = 63016
STATUS_PATH = "/twilio/status"
INBOUND_PATH = "/twilio/inbound"

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EDGE_PUNCTUATION = " \t\r\n.!,;:?\"'"


def plain_e164(address: str | None) -> str | None:
    """``whatsapp:+27821234567`` -> ``+27821234567``; None for anything else."""
    if not address:
        return None
    value = address.strip()
    if value.lower().startswith("whatsapp:"):
        value = value[len("whatsapp:") :]
    return value if _E164.match(value) else None


def classify_inbound(body: str, opt_out: list[str], opt_in: list[str]) -> str:
    """'stop', 'start' or 'reply': keywords count only as the whole message (one word)."""
    word = body.strip(_EDGE_PUNCTUATION).upper()
    if word in opt_out:
        return "stop"
    if word in opt_in:
        return "start"
    return "reply"


@dataclass(frozen=True)
class Plan:
    """What the database knows about one claimed row's ticket and number."""

    sensitive: bool = False
    force_template: bool = False
    in_window: bool | None = None
    opted_out: bool = False
    unreachable_code: int | None = None


class Conversation:
    """Decides, per claimed outbox row, whether and how it is sent."""

    def __init__(
        self, pool: asyncpg.Pool, notifications: NotificationService, settings: Settings
    ) -> None:
        self._pool = pool
        self._notifications = notifications
        self._settings = settings
        self._plans: dict[tuple[int, int], Plan] = {}

    async def prepare(self, rows: list[OutboxRow]) -> None:
        """Read every row's plan in one query (rows whose number is unusable get none)."""
        if not rows:
            return
        phones = [self._e164(row.phone) for row in rows]
        records = await self._pool.fetch(QUERIES["delivery_plan"], [row.id for row in rows], phones)
        by_id = {r["id"]: r for r in records}
        for row in rows:
            r = by_id.get(row.id)
            if r is None:
                continue
            self._plans[row.key] = Plan(
                sensitive=bool(r["is_sensitive"]),
                force_template=bool(r["force_template"]),
                in_window=r["in_window"],
                opted_out=bool(r["opted_out"]),
                unreachable_code=r["unreachable_code"],
            )

    async def send(self, row: OutboxRow, guard: Guard | None) -> SendResult:
        """Send one claimed row as its plan says; never raises for a failed send."""
        plan = self._plans.pop(row.key, Plan())
        if row.tracking_number is None:
            return SendResult("dead", error="ticket no longer exists")
        staff = is_staff(row)  # issue 12: a staff alert goes to its recipient's number
        neutral = plan.sensitive and not staff and self._settings.sensitive_messages == "neutral"
        if plan.sensitive and not neutral:
            return SendResult(
                "withheld",
                error="sensitive ticket: no automated message (SLA_DAEMON_SENSITIVE_MESSAGES)",
            )
        if plan.opted_out:
            return SendResult("opted_out", error="the number opted out (STOP); START resumes")
        if plan.unreachable_code is not None:
            return SendResult(
                "dead",
                error_code=plan.unreachable_code,
                error=f"number unreachable ({plan.unreachable_code}): nothing is sent until"
                f" the {'staff member' if staff else 'citizen'} writes again",
            )
        options = SendOptions(self._template_choice(plan), self._callback_url(row))
        result = await self._send(row, neutral, guard, options)
        if result.error_code == WINDOW_CODE and result.content_sid is None:
            if options.template is not True and self._has_template(row, neutral, result):
                log.info("outbox row %s: 63016, sending again with the template", row.id)
                return await self._send(
                    row, neutral, guard, SendOptions(True, options.status_callback)
                )
            return SendResult(
                "dead",
                error_code=WINDOW_CODE,
                error="63016: outside the 24-hour WhatsApp window and no approved template"
                " configured (SLA_DAEMON_TWILIO_CONTENT_SIDS)",
                language=result.language,
            )
        return result

    def _template_choice(self, plan: Plan) -> bool | None:
        if plan.force_template:
            return True
        if not self._settings.webhooks_on:
            return None  # the window is unknown without inbound messages
        return not plan.in_window

    def _callback_url(self, row: OutboxRow) -> str | None:
        base = self._settings.webhook_public_url
        if not self._settings.webhook_address or not base:
            return None
        return f"{base}{STATUS_PATH}?outbox={row.id}"

    def _has_template(self, row: OutboxRow, neutral: bool, result: SendResult) -> bool:
        kind = row.new_status
        if neutral or row.kind == "escalation":
            kind = "neutral" if neutral else "escalation"
        elif is_staff(row):
            kind = row.kind
        return f"{kind}:{result.language}" in self._settings.twilio_content_sids

    async def _send(
        self, row: OutboxRow, neutral: bool, guard: Guard | None, options: SendOptions
    ) -> SendResult:
        n = self._notifications
        assert row.tracking_number is not None
        if neutral:
            return await n.send_neutral_notice(
                row.phone, row.tracking_number, row.language, guard, options
            )
        if is_staff(row):  # issue 12
            return await n.send_staff_alert(
                row.phone, row.kind, row.language, alert_values(row), guard, options
            )
        if row.kind == "escalation":
            return await n.send_escalation_notice(
                row.phone, row.tracking_number, row.language, guard, options
            )
        return await n.send_status_update(
            row.phone,
            row.tracking_number,
            row.new_status,
            row.language,
            guard,
            options,
            old_status=row.old_status,
        )

    def _e164(self, phone: str | None) -> str | None:
        try:
            return normalize_phone(phone, self._settings.default_region)
        except InvalidPhoneError:
            return None
