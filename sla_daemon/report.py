"""``sla-daemon report``: SLA state per municipality and category, and the outbox.

Everything is counted in the database (named queries ``report_tickets``,
``report_outbox`` and ``report_dead_by_code``), in one read-only snapshot, so the
report never loads tickets into Python one by one.
Sensitive (gender-based-violence) tickets are not SLA-monitored and never counted.

Columns, as they are now (all tickets, whenever created):

- ``open``, ``in_progress``, ``escalated``: tickets with that status;
- ``at_risk``: open or in progress, not breached, past a warning threshold (the warning
  is recorded, or due but not yet recorded);
- ``breached``: past a deadline and not yet escalated (``sla_daemon.breached_tickets``;
  non-zero for long means no daemon is escalating).

Over the period (tickets *created* in it):

- ``created``: tickets created;
- ``measured``: those with an SLA deadline whose outcome is known: resolved or closed,
  escalated (by status or by an escalation event), or breached now;
- ``met``: those resolved or closed that the daemon never escalated (no escalation
  event);
- ``compliance_pct``: met / measured, as a percentage (None when nothing is measured).

Tickets carry no resolved_at, so "resolved within the deadline" is approximated by
"resolved without the daemon having escalated it": a ticket resolved late while no
daemon ran counts as met. Still-open tickets within their deadline are not measured.

In business hours (issue 12, ``business_hours`` of each row; named queries
``report_cycles`` and ``report_levels``), over SLA cycles *started* in the period (a
reopened ticket's second cycle is counted on its own), on each ticket's calendar:

- ``responses_met`` / ``responses``: first responses within the response target, over
  cycles answered or already past the target; likewise ``resolutions_met`` /
  ``resolutions`` for the resolution target, paused business time left out;
- ``response_overdue_hours`` / ``resolution_overdue_hours``: business hours past the
  targets, summed (late ones, and the running lateness of cycles still open);
- ``breaches_by_level``: escalations in the period per level (1 at the deadline).

First responses and resolutions are recorded by the outbox claim (migration 0014), so
cycles before that migration have none; a ticket created already resolved has none.

Staff alerts (issue 12, ``staff_alerts``; named queries ``report_staff_alerts`` and
``report_unalerted``): the WhatsApp alerts to the people tickets were escalated to (and
the team managers' warnings) queued in the period, per kind, by what became of them,
and the escalations whose person could not be alerted (no phone number, no such user).
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from .db import QUERIES
from .phones import mask_phone

__all__ = [
    "BUSINESS_HOURS_DEFINITION",
    "COMPLIANCE_DEFINITION",
    "BusinessHours",
    "DeadCode",
    "FailingNumber",
    "LanguageDeliveries",
    "OutboxSummary",
    "Report",
    "ReportRow",
    "StaffAlerts",
    "build_report",
    "format_table",
    "parse_period",
]

COMPLIANCE_DEFINITION = (
    "SLA compliance = tickets created in the period that are resolved or closed and were "
    "never escalated by the daemon, over tickets created in the period with a deadline "
    "whose outcome is known (resolved, closed, escalated or breached). Sensitive tickets "
    "are excluded; tickets have no resolved_at, so 'on time' means 'never escalated'."
)

BUSINESS_HOURS_DEFINITION = (
    "† over SLA cycles started in the period (a reopened ticket's new cycle counts on "
    "its own), in business hours on each ticket's calendar: resolved within the "
    "resolution target (paused time left out) over cycles resolved or past it; business "
    "hours past the resolution target; escalations per level."
)

_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PHONE_LIKE = re.compile(r"\+?\d[\d ()\-]{5,}\d")


def parse_period(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m`` (or a bare number of days) -> a timedelta."""
    match = _PERIOD.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a period such as 30d, 12h, 2w or 90m")
    amount = float(match[1])
    unit = _UNITS[(match[2] or "d").lower()]
    period = timedelta(**{unit: amount})
    if period <= timedelta(0):
        raise ValueError("the period must be longer than zero")
    return period


def scrub(text: str | None) -> str | None:
    """Errors are scrubbed when stored; this is a second net: nothing phone-like is shown."""
    return None if text is None else _PHONE_LIKE.sub("[number]", text)


@dataclass(frozen=True)
class BusinessHours:
    """A group's SLA cycles measured in business hours, and its breaches per level."""

    cycles: int = 0
    responses: int = 0
    responses_met: int = 0
    resolutions: int = 0
    resolutions_met: int = 0
    response_overdue_hours: float = 0.0
    resolution_overdue_hours: float = 0.0
    breaches_by_level: tuple[tuple[int, int], ...] = ()

    @property
    def response_compliance_pct(self) -> float | None:
        return _pct(self.responses_met, self.responses)

    @property
    def resolution_compliance_pct(self) -> float | None:
        return _pct(self.resolutions_met, self.resolutions)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["breaches_by_level"] = {str(level): n for level, n in self.breaches_by_level}
        data["response_compliance_pct"] = self.response_compliance_pct
        data["resolution_compliance_pct"] = self.resolution_compliance_pct
        return data


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


@dataclass(frozen=True)
class ReportRow:
    """One municipality and category; ``category`` None is the municipality's total,
    and ``municipality_id`` None as well is the grand total."""

    municipality_id: UUID | None
    municipality: str | None
    category: str | None
    open: int
    in_progress: int
    at_risk: int
    breached: int
    escalated: int
    created: int
    measured: int
    met: int
    business_hours: BusinessHours = BusinessHours()

    @property
    def compliance_pct(self) -> float | None:
        return _pct(self.met, self.measured)

    @property
    def is_total(self) -> bool:
        return self.category is None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["municipality_id"] = str(self.municipality_id) if self.municipality_id else None
        data["compliance_pct"] = self.compliance_pct
        data["business_hours"] = self.business_hours.as_dict()
        return data


@dataclass(frozen=True)
class DeadCode:
    error_code: int | None
    count: int
    example: str | None


@dataclass(frozen=True)
class OutboxSummary:
    backlog: int
    dead: int
    oldest_pending_seconds: float | None
    dead_by_error_code: tuple[DeadCode, ...]


@dataclass(frozen=True)
class LanguageDeliveries:
    """Issue 13: messages whose delivery Twilio reported, in one language."""

    language: str
    reported: int
    delivered: int
    read: int
    failed: int


@dataclass(frozen=True)
class StaffAlerts:
    """Issue 12: staff alerts of one kind queued in the period, by what became of them."""

    kind: str
    queued: int
    sent: int
    waiting: int
    dead: int
    #: not sent by design: superseded by a newer alert to the same person, opted out, withheld
    unsent: int


@dataclass(frozen=True)
class FailingNumber:
    """A number whose messages keep failing; masked (+27*****4567), never whole."""

    phone: str
    failures: int
    last_error_code: int | None


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    since: datetime
    rows: tuple[ReportRow, ...]
    total: ReportRow
    outbox: OutboxSummary
    deliveries: tuple[LanguageDeliveries, ...] = ()
    failing_numbers: tuple[FailingNumber, ...] = ()
    staff_alerts: tuple[StaffAlerts, ...] = ()
    #: escalations in the period whose person could not be alerted (no phone, no user)
    unalerted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "since": self.since.isoformat(),
            "compliance_definition": COMPLIANCE_DEFINITION,
            "groups": [r.as_dict() for r in self.rows if not r.is_total],
            "municipalities": [
                r.as_dict() for r in self.rows if r.is_total and r.municipality_id is not None
            ],
            "total": self.total.as_dict(),
            "outbox": {
                "backlog": self.outbox.backlog,
                "dead": self.outbox.dead,
                "oldest_pending_seconds": self.outbox.oldest_pending_seconds,
                "dead_by_error_code": [asdict(d) for d in self.outbox.dead_by_error_code],
            },
            "deliveries": [asdict(d) for d in self.deliveries],
            "failing_numbers": [asdict(n) for n in self.failing_numbers],
            "staff_alerts": {
                "by_kind": [asdict(a) for a in self.staff_alerts],
                "escalations_without_alert": self.unalerted,
            },
        }


async def build_report(conn: asyncpg.Connection, period: timedelta) -> Report:
    """The report over the ``period`` ending now, read in one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        records = await conn.fetch(QUERIES["report_tickets"], period)
        cycles = await conn.fetch(QUERIES["report_cycles"], period)
        levels = await conn.fetch(QUERIES["report_levels"], period)
        outbox = await conn.fetchrow(QUERIES["report_outbox"], period)
        dead = await conn.fetch(QUERIES["report_dead_by_code"])
        deliveries = await conn.fetch(QUERIES["report_deliveries"], period)
        failing = await conn.fetch(QUERIES["report_failing_numbers"], period)
        staff = await conn.fetch(QUERIES["report_staff_alerts"], period)
        unalerted = await conn.fetchval(QUERIES["report_unalerted"], period)
    assert outbox is not None
    business = _business_hours(cycles, levels)
    rows: list[ReportRow] = []
    total: ReportRow | None = None
    for r in records:
        category = r["category"] if r["level"] == 0 else None
        row = ReportRow(
            municipality_id=r["tenant_id"],
            municipality=r["municipality"],
            category=category,
            **{k: r[k] for k in _COUNTS},
            business_hours=business.get((r["level"], r["tenant_id"], category), BusinessHours()),
        )
        if r["level"] == 3:
            total = row
        else:
            rows.append(row)
    assert total is not None  # GROUPING SETS (..., ()) always yields the grand total
    return Report(
        generated_at=outbox["generated_at"],
        since=outbox["since"],
        rows=tuple(rows),
        total=total,
        outbox=OutboxSummary(
            backlog=outbox["backlog"],
            dead=outbox["dead"],
            oldest_pending_seconds=outbox["oldest_pending_seconds"],
            dead_by_error_code=tuple(
                DeadCode(d["error_code"], d["count"], scrub(d["example"])) for d in dead
            ),
        ),
        deliveries=tuple(LanguageDeliveries(**dict(d.items())) for d in deliveries),
        failing_numbers=tuple(
            FailingNumber(mask_phone(n["phone"]), n["failures"], n["last_error_code"])
            for n in failing
        ),
        staff_alerts=tuple(StaffAlerts(**dict(a.items())) for a in staff),
        unalerted=unalerted,
    )


_GroupKey = tuple[int, UUID | None, str | None]


def _business_hours(
    cycles: list[asyncpg.Record], levels: list[asyncpg.Record]
) -> dict[_GroupKey, BusinessHours]:
    """Per group (grouping level, municipality, category): cycles and breaches per level."""
    by_level: dict[_GroupKey, list[tuple[int, int]]] = {}
    for r in levels:
        key = (r["level"], r["tenant_id"], r["category"])
        by_level.setdefault(key, []).append((r["escalation_level"], r["breaches"]))
    out: dict[_GroupKey, BusinessHours] = {}
    fields = [f for f in BusinessHours.__dataclass_fields__ if f != "breaches_by_level"]
    for r in cycles:
        key = (r["level"], r["tenant_id"], r["category"])
        out[key] = BusinessHours(
            **{f: r[f] for f in fields}, breaches_by_level=tuple(by_level.pop(key, []))
        )
    for key, counted in by_level.items():  # breaches of groups with no cycle in the period
        out[key] = BusinessHours(breaches_by_level=tuple(counted))
    return out


_COUNTS = (
    "open",
    "in_progress",
    "at_risk",
    "breached",
    "escalated",
    "created",
    "measured",
    "met",
)

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("open", "Open"),
    ("in_progress", "In progress"),
    ("at_risk", "At risk"),
    ("breached", "Breached"),
    ("escalated", "Escalated"),
    ("created", "Created*"),
    ("met_of_measured", "Met/measured*"),
    ("compliance", "SLA %*"),
    ("resolved_in_time", "In time†"),
    ("overdue", "Overdue bh†"),
    ("levels", "Breaches by level†"),
)


def _cells(row: ReportRow) -> dict[str, str]:
    cells = {name: str(getattr(row, name)) for name in _COUNTS}
    cells["met_of_measured"] = f"{row.met}/{row.measured}"
    pct = row.compliance_pct
    cells["compliance"] = "-" if pct is None else f"{pct:.1f}"
    bh = row.business_hours
    cells["resolved_in_time"] = f"{bh.resolutions_met}/{bh.resolutions}"
    cells["overdue"] = f"{bh.resolution_overdue_hours:.1f}"
    cells["levels"] = " ".join(f"L{lv}:{n}" for lv, n in bh.breaches_by_level) or "-"
    return cells


def format_table(report: Report, style: Any = None) -> str:
    """A plain-text table (``str.ljust``), headers styled by ``style(text)`` if given."""
    bold = style or (lambda text: text)
    header = ["Municipality", "Category", *(title for _, title in _COLUMNS)]
    lines: list[list[str]] = []
    kinds: list[str] = []
    categories = Counter(r.municipality_id for r in report.rows if not r.is_total)
    for row in report.rows:
        cells = _cells(row)
        if row.is_total and categories[row.municipality_id] < 2:
            continue  # a municipality with one category: its subtotal says nothing new
        if row.is_total:
            name, category, kind = "", "(all)", "subtotal"
        else:
            name, kind = row.municipality or "(unknown municipality)", "row"
            category = row.category or ""
        lines.append([name, category, *(cells[c] for c, _ in _COLUMNS)])
        kinds.append(kind)
    total = _cells(report.total)
    lines.append(["All municipalities", "", *(total[c] for c, _ in _COLUMNS)])
    kinds.append("total")
    # A municipality's name is shown on its first row only.
    previous = None
    for line, kind in zip(lines, kinds, strict=True):
        if kind == "row":
            if line[0] == previous:
                line[0] = ""
            else:
                previous = line[0]
        elif kind == "subtotal":
            previous = None
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        right = [cells[i].rjust(widths[i]) for i in range(2, len(cells))]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(render(["-" * w for w in widths]))
    out = [
        f"SLA report {report.since:%Y-%m-%d %H:%M} .. {report.generated_at:%Y-%m-%d %H:%M %Z}",
        "",
        bold(render(header)),
        rule,
    ]
    if not report.rows:
        out.append("(no tickets)")
    for line, kind in zip(lines, kinds, strict=True):
        if kind == "total":
            out.append(rule)
            out.append(bold(render(line)))
        else:
            out.append(render(line))
    out.append("")
    out.append(textwrap.fill("* over tickets created in the period. " + COMPLIANCE_DEFINITION, 88))
    out.append(textwrap.fill(BUSINESS_HOURS_DEFINITION, 88))
    ob = report.outbox
    oldest = (
        f", oldest waiting {_duration(ob.oldest_pending_seconds)}"
        if ob.oldest_pending_seconds is not None
        else ""
    )
    out.append("")
    out.append(bold("Outbox"))
    out.append(f"  backlog (pending or sending): {ob.backlog}{oldest}")
    out.append(f"  dead letters: {ob.dead}")
    for d in ob.dead_by_error_code:
        code = "no code" if d.error_code is None else str(d.error_code)
        example = f"  e.g. {d.example}" if d.example else ""
        out.append(f"    {code.ljust(8)} {str(d.count).rjust(6)}{example}")
    if ob.dead:
        out.append("  (sla-daemon outbox list-dead shows them; retry-dead re-queues them)")
    out.extend(_delivery_lines(report, bold))
    out.extend(_staff_lines(report, bold))
    return "\n".join(out)


def _staff_lines(report: Report, bold: Any) -> list[str]:
    """Issue 12: the staff alerts of the period, and escalations nobody could be told of."""
    out = ["", bold("Staff alerts (queued in the period)")]
    if not report.staff_alerts:
        out.append("  (none)")
    for a in report.staff_alerts:
        out.append(
            f"  {a.kind.removeprefix('staff_').ljust(10)} {a.queued} queued: {a.sent} sent,"
            f" {a.waiting} waiting, {a.dead} dead, {a.unsent} not sent (superseded, opted"
            " out or withheld)"
        )
    if report.unalerted:
        out.append(
            f"  {report.unalerted} escalations whose person could not be alerted (no phone"
            " number, or no such user)"
        )
    return out


def _delivery_lines(report: Report, bold: Any) -> list[str]:
    """Delivered, read and failed per language; numbers that keep failing (masked)."""
    out = ["", bold("Deliveries (Twilio's callbacks, messages of the period)")]
    if not report.deliveries:
        out.append("  (none reported: are the webhooks on?)")
    for d in report.deliveries:
        out.append(
            f"  {d.language.ljust(8)} delivered {d.delivered}/{d.reported},"
            f" read {d.read}, failed {d.failed}"
        )
    if report.failing_numbers:
        out.append("  numbers that keep failing:")
        for n in report.failing_numbers:
            code = "" if n.last_error_code is None else f" (last error {n.last_error_code})"
            out.append(f"    {n.phone}  {n.failures} failures{code}")
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
