"""Business calendars: public holidays from the ``holidays`` package, opening hours, closures.

The calendar rules live in SQL (migration 0007: materialised opening intervals, the
deadline triggers). This module feeds the database what only Python knows (the
holidays the package lists, with its version) and turns the operator's notation for
opening hours into rows. Calendar changes are administration: they run with the
migration role, not the daemon's (a leaked daemon password cannot declare holidays).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, time

import asyncpg
import holidays
from holidays import version as holidays_version

from .db import QUERIES

__all__ = [
    "DEFAULT_COUNTRY",
    "FIRST_YEAR",
    "YEARS_AHEAD",
    "Hours",
    "load_public_holidays",
    "parse_hours",
    "set_hours",
]

#: The years the database materialises (migration 0007's build_calendar), from 2020
#: (history enough to explain old tickets) to five years ahead: holidays are loaded
#: for the same span.
FIRST_YEAR = 2020
YEARS_AHEAD = 5
DEFAULT_COUNTRY = "ZA"

_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}


@dataclass(frozen=True)
class Hours:
    weekday: int  # ISO: 1 Monday .. 7 Sunday
    #: local times as PostgreSQL reads them ("24:00" closes at midnight)
    opens: str
    closes: str


def _time(text: str) -> time:
    if text in ("24:00", "24:00:00"):
        return time.max
    return time.fromisoformat(text)


def parse_hours(specs: list[str]) -> list[Hours]:
    """``["mon-fri 08:00-12:30,13:30-16:30", "sat 08:00-12:00"]`` as rows.

    Days are a name or a range of names (mon..sun); intervals are comma-separated
    ``HH:MM-HH:MM``; ``24:00`` closes at midnight."""
    rows: list[Hours] = []
    for spec in specs:
        match = re.fullmatch(r"\s*([a-z]{3})(?:-([a-z]{3}))?\s+(\S+)\s*", spec.lower())
        if not match or match[1] not in _DAYS or (match[2] and match[2] not in _DAYS):
            raise ValueError(f"{spec!r}: expected e.g. 'mon-fri 08:00-12:30,13:30-16:30'")
        first, last = _DAYS[match[1]], _DAYS[match[2] or match[1]]
        if last < first:
            raise ValueError(f"{spec!r}: the day range runs backwards")
        for interval in match[3].split(","):
            opens, sep, closes = interval.partition("-")
            try:
                start, end = _time(opens), _time(closes)
            except ValueError:
                raise ValueError(f"{spec!r}: {interval!r} is not HH:MM-HH:MM") from None
            if not sep or start >= end:
                raise ValueError(f"{spec!r}: {interval!r} must open before it closes")
            rows.extend(Hours(day, opens, closes) for day in range(first, last + 1))
    return rows


async def load_public_holidays(
    conn: asyncpg.Connection, countries: list[str] | None = None
) -> dict[str, int]:
    """Load the package's holidays of each country (default: ZA and every calendar's).

    Covers 1 January 2020 to 31 December five years ahead, so every
    calendar's horizon moves on with it; rows added by hand stay. Returns the rows
    loaded per country."""
    today: date = await conn.fetchval(QUERIES["calendar_today"])
    if countries is None:
        used = await conn.fetch(QUERIES["holiday_countries"])
        countries = sorted({DEFAULT_COUNTRY, *(r["country"] for r in used)})
    first, last = FIRST_YEAR, today.year + YEARS_AHEAD
    loaded: dict[str, int] = {}
    for country in countries:
        listed = holidays.country_holidays(country, years=range(first, last + 1))
        days = sorted(listed)
        loaded[country] = await conn.fetchval(
            QUERIES["load_public_holidays"],
            country,
            date(first, 1, 1),
            date(last, 12, 31),
            days,
            [str(listed[d]) for d in days],
            holidays_version.__version__,
        )
    return loaded


async def set_hours(conn: asyncpg.Connection, calendar: str, specs: list[str]) -> int:
    """Replace a calendar's weekly hours (``parse_hours`` notation); its live tickets
    move. Returns how many tickets' deadlines moved."""
    rows = parse_hours(specs)
    moved: int = await conn.fetchval(
        QUERIES["set_calendar_hours"],
        calendar,
        [r.weekday for r in rows],
        [r.opens for r in rows],
        [r.closes for r in rows],
    )
    return moved
