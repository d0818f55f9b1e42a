"""Staff alerts (issue 12): what the person a ticket is escalated to is told.

The database queues them (``sla_daemon.enqueue_staff_alert``, called by the escalation
at level 1 for the team manager, by each further level for its person, and, with
``SLA_DAEMON_WARN_TEAM_MANAGER``, by each warning for the team manager). They travel
the outbox like any citizen's message, one stream per (ticket, recipient). This
module turns a claimed staff row into the values its text needs, computed at send
time and written the same way in every language: how overdue (``3 h 20 min``), the
deadline on the ticket's calendar (``2025-04-29 15:30 SAST``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .messages import STAFF_TEXTS

if TYPE_CHECKING:
    from .outbox import OutboxRow

__all__ = [
    "DEFAULT_TIME_ZONE",
    "SKIPPED",
    "STAFF_KINDS",
    "alert_values",
    "format_deadline",
    "format_overdue",
    "is_staff",
    "skip_reason",
    "values_for",
]

STAFF_KINDS: tuple[str, ...] = tuple(STAFF_TEXTS)
#: A ticket on no calendar (24/7) shows its deadline in South Africa's time.
DEFAULT_TIME_ZONE = "Africa/Johannesburg"
#: Why no alert was queued (sla_daemon.enqueue_staff_alert's answers other than 'queued').
SKIPPED: Mapping[str, str] = {
    "no_recipient": "there is nobody to alert (no team manager)",
    "no_user": "the person to alert is not a user (no such id in users)",
    "no_phone": "the person to alert has no phone number",
    "sensitive": "the ticket is sensitive",
    "moot": "the ticket is no longer live",
}


def skip_reason(outcome: str | None) -> str | None:
    """Why no alert was queued, for a log line; None when one was (or none was asked)."""
    return SKIPPED.get(outcome or "")


def is_staff(row: OutboxRow) -> bool:
    """A staff alert (to the row's recipient), not a citizen's message."""
    return row.kind in STAFF_KINDS


def format_overdue(seconds: float) -> str:
    """Whole hours and minutes, rounded up, at least a minute: ``3 h 20 min``."""
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def format_deadline(at: datetime, time_zone: str | None) -> str:
    """The instant in the calendar's zone: ``2025-04-29 15:30 SAST``."""
    try:
        zone = ZoneInfo(time_zone or DEFAULT_TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo(DEFAULT_TIME_ZONE)
    local = at.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def alert_values(row: OutboxRow, now: float | None = None) -> dict[str, str]:
    """Every placeholder a staff text may use, for this claimed row, as of ``now``."""
    return values_for(
        tracking_number=row.tracking_number,
        category=row.category,
        level=row.level,
        deadline_at=row.deadline_at,
        time_zone=row.time_zone,
        now=now,
    )


def values_for(
    *,
    tracking_number: str | None,
    category: str | None,
    level: int | None,
    deadline_at: datetime | None,
    time_zone: str | None,
    now: float | None = None,
) -> dict[str, str]:
    """Every placeholder a staff text may use, as of ``now`` (epoch seconds; default:
    this moment): how overdue is counted from the deadline when the text is made."""
    overdue = 0.0 if deadline_at is None else (now or time.time()) - deadline_at.timestamp()
    return {
        "tracking_number": tracking_number or "",
        "category": category or "-",
        "overdue": format_overdue(overdue),
        "level": "" if level is None else str(level),
        "deadline": "-" if deadline_at is None else format_deadline(deadline_at, time_zone),
    }
