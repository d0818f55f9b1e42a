"""``sla-daemon sla explain``: how a ticket's deadlines were reached, for a person.

The facts come from one stored function (``sla_daemon.explain_ticket``, migration
0007); this module only lays them out, for the manager answering a citizen who
disputes a breach.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["format_explanation"]


def _when(value: str | None) -> str:
    if value is None:
        return "none"
    return datetime.fromisoformat(value).strftime("%a %d %b %Y %H:%M %z")


def _hours(value: float | None) -> str:
    return "?" if value is None else f"{value:g} business h"


def format_explanation(doc: dict[str, Any]) -> str:
    """The explanation as lines of text (times in the database session's zone)."""
    cfg, cal, cycle = doc["config"], doc["calendar"], doc["cycle"]
    lines = [
        f"ticket {doc['tracking_number']}: {doc['status']}"
        + (" (sensitive: never SLA-monitored)" if doc["sensitive"] else ""),
        f"config      response {cfg['response_hours']:g} h, resolution"
        f" {cfg['resolution_hours']:g} h, warning at {cfg['warning_threshold_pct']} %"
        f" (from: {cfg['source'].replace('_', ' ')})",
    ]
    if cal["name"] == "24/7":
        lines.append(f"calendar    24/7, wall clock ({cal['source']})")
    else:
        holidays = cal["holiday_country"] or "no"
        lines.append(
            f"calendar    {cal['name']} ({cal['source']}), {cal['time_zone']},"
            f" {holidays} public holidays, materialised until {cal['built_until']}"
        )
    lines.append(f"cycle       {cycle['number']}, started {_when(cycle['started_at'])}")
    for kind in ("response", "resolution"):
        d = doc["deadlines"][kind]
        lines.append(
            f"{kind:<11} {_when(d['deadline'])}"
            + (f" = cycle start + {_hours(d['business_hours'])}" if d["deadline"] else "")
        )
    for c in doc["closures"]:
        lines.append(f"skipped     {c['day']} {c['name']} ({c['source']})")
    for p in doc["pauses"]:
        lines.append(
            f"paused      {_when(p['started_at'])} to {_when(p['ended_at'])}"
            f" ({p['status']}): {_hours(p['business_hours'])} added to the resolution deadline"
        )
    for lv in doc["levels"]:
        missed = f", {lv['deadline_kind']} deadline {_when(lv['deadline'])}"
        lines.append(
            f"level {lv['level']}     cycle {lv['cycle'] or '?'}: escalated {_when(lv['at'])}"
            + (missed if lv["deadline_kind"] else "")
            + (f", assigned to {lv['assigned_to']}" if lv["assigned_to"] else "")
        )
    if doc["next_level"]:
        nxt = doc["next_level"]
        lines.append(f"next        level {nxt['level']} due {_when(nxt['due_at'])}")
    return "\n".join(lines)
