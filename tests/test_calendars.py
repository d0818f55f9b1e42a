"""Business calendars: public holidays, closures, deadlines in business time (issue 12)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import holidays
import pytest

from sla_daemon import db
from sla_daemon.calendars import Hours, load_public_holidays, parse_hours, set_hours

from . import factories as f

OFFICE = ["mon-fri 08:00-12:30,13:30-16:30"]


async def calendar(
    conn: asyncpg.Connection,
    name: str,
    hours: list[str],
    *,
    time_zone: str = "Africa/Johannesburg",
    country: str | None = "ZA",
) -> int:
    cal: int = await conn.fetchval(
        "SELECT sla_daemon.define_calendar($1, $2, $3)", name, time_zone, country
    )
    await set_hours(conn, name, hours)
    return cal


async def municipality_on(
    conn: asyncpg.Connection, name: str | None, response: float, resolution: float, pct: int = 80
) -> UUID:
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, None, response, resolution, pct)
    if name is not None:
        await conn.execute("SELECT sla_daemon.assign_calendar($1, NULL, $2)", mid, name)
    return mid


def sast(text: str) -> datetime:
    return datetime.fromisoformat(text + "+02:00")


async def test_public_holidays_are_loaded_on_migrate_with_the_package_version(
    conn: asyncpg.Connection,
) -> None:
    rows = await conn.fetch(
        "SELECT day::text, name, source, package_version FROM sla_daemon.public_holidays"
        " WHERE country = 'ZA' AND day IN ('2025-04-28', '2024-05-29', '2026-11-04')"
        " ORDER BY day"
    )
    assert [(r["day"], r["source"], r["package_version"]) for r in rows] == [
        ("2024-05-29", "holidays", holidays.__version__),  # declared: elections
        ("2025-04-28", "holidays", holidays.__version__),  # Sunday-to-Monday rule
        ("2026-11-04", "holidays", holidays.__version__),
    ]
    assert "observed" in rows[1]["name"]
    # years ahead too, so deadlines can be computed
    this_year = await conn.fetchval("SELECT extract(year FROM now())::int")
    assert await conn.fetchval(
        "SELECT count(*) FROM sla_daemon.public_holidays WHERE extract(year FROM day) = $1",
        this_year + 5,
    )


async def test_a_reload_keeps_manual_holidays_and_drops_what_the_package_withdrew(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute("SELECT sla_daemon.add_public_holiday('ZA', '2027-03-03', 'Declared day')")
    await conn.execute(
        "INSERT INTO sla_daemon.public_holidays (country, day, name, source, package_version)"
        " VALUES ('ZA', '2027-03-04', 'withdrawn', 'holidays', '0.1')"
    )
    loaded = await load_public_holidays(conn)
    assert loaded["ZA"] > 50
    days = {
        r["day"].isoformat(): r["source"]
        for r in await conn.fetch(
            "SELECT day, source FROM sla_daemon.public_holidays WHERE day IN"
            " ('2027-03-03', '2027-03-04')"
        )
    }
    assert days == {"2027-03-03": "manual"}


async def test_freedom_day_example(conn: asyncpg.Connection) -> None:
    # The example: Mon-Fri 08:00-12:30 and 13:30-16:30; Friday 25 April 2025 at
    # 15:00 plus 8 business hours is Tuesday 29 April at 15:30 (Monday 28 April is
    # Freedom Day, observed).
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 16)
    tid = await f.ticket(conn, mid, "billing", created_at=sast("2025-04-25T15:00:00"))
    response, resolution = await f.deadlines(conn, tid)
    assert response == sast("2025-04-29T15:30:00")
    # 16 h: 1.5 Friday, 7.5 Tuesday, 7 Wednesday -> Wednesday 30 April at 16:00
    assert resolution == sast("2025-04-30T16:00:00")


async def test_a_ticket_created_outside_hours_starts_at_the_next_opening(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 2, 5)
    saturday = await f.ticket(conn, mid, created_at=sast("2025-05-03T10:00:00"))
    assert (await f.deadlines(conn, saturday))[0] == sast("2025-05-05T10:00:00")
    lunch = await f.ticket(conn, mid, created_at=sast("2025-05-06T12:45:00"))
    assert (await f.deadlines(conn, lunch))[0] == sast("2025-05-06T15:30:00")


async def test_a_deadline_that_fills_a_day_lands_at_closing_time(conn: asyncpg.Connection) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 7.5, 15)
    tid = await f.ticket(conn, mid, created_at=sast("2025-05-08T08:00:00"))
    response, resolution = await f.deadlines(conn, tid)
    assert response == sast("2025-05-08T16:30:00")  # Thursday closing, not Friday 08:00
    assert resolution == sast("2025-05-09T16:30:00")


async def test_business_time_is_right_across_dst(conn: asyncpg.Connection) -> None:
    # Europe/London moves to BST on Sunday 30 March 2025: 09:00 on Monday is 08:00 UTC.
    await calendar(conn, "london", ["mon-fri 09:00-17:00"], time_zone="Europe/London", country=None)
    mid = await municipality_on(conn, "london", 2, 10)
    tid = await f.ticket(conn, mid, created_at=datetime.fromisoformat("2025-03-28T16:00:00+00:00"))
    response, resolution = await f.deadlines(conn, tid)
    assert response == datetime.fromisoformat("2025-03-31T10:00:00+01:00")
    # 10 h: Friday 1, Monday 8, Tuesday 1
    assert resolution == datetime.fromisoformat("2025-04-01T10:00:00+01:00")


async def test_a_category_may_run_24_7_on_a_business_hours_municipality(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 16)
    await conn.execute("SELECT sla_daemon.assign_calendar($1, 'Water', NULL)", mid)
    created = sast("2025-04-25T15:00:00")
    water = await f.ticket(conn, mid, "water", created_at=created)
    billing = await f.ticket(conn, mid, "billing", created_at=created)
    assert (await f.deadlines(conn, water))[0] == created + timedelta(hours=8)
    assert (await f.deadlines(conn, billing))[0] == sast("2025-04-29T15:30:00")


async def test_warnings_use_the_business_time_share(conn: asyncpg.Connection) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 16, pct=50)
    tid = await f.ticket(conn, mid, "billing", created_at=sast("2031-03-07T15:00:00"))
    warn_at = await conn.fetchval(
        "SELECT warn_at FROM sla_daemon.warnings WHERE ticket_id = $1 AND deadline_kind ="
        " 'response'",
        tid,
    )
    # 4 of 8 business hours: 1.5 on Friday, then 2.5 on Monday 10 March 2031
    assert warn_at == sast("2031-03-10T10:30:00")


async def test_a_deadline_past_the_horizon_is_a_clear_error(conn: asyncpg.Connection) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 100_000)
    with pytest.raises(asyncpg.PostgresError, match="beyond the opening hours") as info:
        await f.ticket(conn, mid)
    assert "load-holidays" in (info.value.as_dict().get("hint") or "")


async def test_a_closure_added_after_creation_moves_a_live_deadline_not_a_passed_one(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "always", ["mon-sun 00:00-24:00"], country=None)
    mid = await municipality_on(conn, "always", 1, 48)
    live = await f.ticket(conn, mid)
    passed = await f.ticket(
        conn, mid, created_at=await conn.fetchval("SELECT now() - interval '3 hours'")
    )
    before_live = await f.deadlines(conn, live)
    before_passed = await f.deadlines(conn, passed)
    tomorrow = await conn.fetchval("SELECT (now() AT TIME ZONE 'Africa/Johannesburg')::date + 1")
    moved = await conn.fetchval(
        "SELECT sla_daemon.add_closure('always', $1, 'Municipal day')", tomorrow
    )
    assert moved == 2  # both tickets' resolution deadlines lie beyond tomorrow
    after_live = await f.deadlines(conn, live)
    after_passed = await f.deadlines(conn, passed)
    assert after_live[1] == before_live[1] + timedelta(days=1)  # type: ignore[operator]
    assert after_passed[0] == before_passed[0]  # breached an hour ago: stays breached
    assert after_passed[1] == before_passed[1] + timedelta(days=1)  # type: ignore[operator]
    due = await conn.fetchval(
        "SELECT due_at FROM sla_daemon.deadlines WHERE ticket_id = $1 AND"
        " deadline_kind = 'resolution'",
        live,
    )
    assert due == after_live[1]  # and the schedule follows


async def test_changed_hours_reach_live_tickets(conn: asyncpg.Connection) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 16)
    tid = await f.ticket(conn, mid, created_at=sast("2031-03-07T15:00:00"))
    assert (await f.deadlines(conn, tid))[0] == sast("2031-03-10T15:30:00")
    await calendar(conn, "office", ["mon-fri 08:00-16:00", "sat 08:00-12:00"])
    # Friday 1 h, Saturday 4 h, Monday 3 h
    assert (await f.deadlines(conn, tid))[0] == sast("2031-03-10T11:00:00")


async def test_overlapping_hours_are_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="overlapping"):
        await calendar(conn, "bad", ["mon 08:00-12:00,11:00-13:00"])


def test_parse_hours() -> None:
    assert parse_hours(["sat 08:00-12:00", "sun 00:00-24:00"]) == [
        Hours(6, "08:00", "12:00"),
        Hours(7, "00:00", "24:00"),
    ]
    assert len(parse_hours(OFFICE)) == 10
    for bad in ("fri-mon 08:00-12:00", "mon 12:00-08:00", "monday 08:00-12:00", "mon 8-12"):
        with pytest.raises(ValueError):
            parse_hours([bad])


async def test_migrate_again_keeps_calendars_and_moves_nothing(conn: asyncpg.Connection) -> None:
    await calendar(conn, "office", OFFICE)
    mid = await municipality_on(conn, "office", 8, 16)
    tid = await f.ticket(conn, mid, created_at=sast("2031-03-07T15:00:00"))
    before = await f.deadlines(conn, tid)
    assert await db.migrate(conn) == []
    assert await f.deadlines(conn, tid) == before


async def test_a_public_holiday_declared_after_creation_moves_a_live_deadline(
    conn: asyncpg.Connection,
) -> None:
    await calendar(conn, "always-za", ["mon-sun 00:00-24:00"])  # ZA holidays close it
    mid = await municipality_on(conn, "always-za", 1, 72)
    tid = await f.ticket(conn, mid)
    _, before = await f.deadlines(conn, tid)
    day = await conn.fetchval(
        "SELECT d FROM generate_series((now() AT TIME ZONE 'Africa/Johannesburg')::date + 1,"
        " (now() AT TIME ZONE 'Africa/Johannesburg')::date + 10, interval '1 day') d"
        " WHERE d::date NOT IN (SELECT day FROM sla_daemon.public_holidays WHERE country = 'ZA')"
        " ORDER BY d LIMIT 1"
    )
    n = await conn.fetchval(
        "SELECT sla_daemon.add_public_holiday('ZA', $1::date, 'Declared day')", day
    )
    assert n == 1
    _, after = await f.deadlines(conn, tid)
    # the first open day ahead is now closed: the deadline moves by a day
    assert after == before + timedelta(days=1)  # type: ignore[operator]
