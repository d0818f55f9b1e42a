"""``sla-daemon calendar ...`` and ``sla-daemon sla explain``, for real (issue 12)."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from . import factories as f
from .test_cli import cli, cli_env


async def test_an_operator_sets_up_a_calendar_from_the_command_line(
    conn: asyncpg.Connection, dsn: str
) -> None:
    env = cli_env(dsn)
    mid = await f.municipality(conn)
    await f.sla_config(conn, mid, None, 8, 16)
    steps = [
        ("calendar", "define", "office"),
        ("calendar", "hours", "office", "mon-fri 08:00-12:30,13:30-16:30"),
        ("calendar", "assign", str(mid), "office"),
        ("calendar", "assign", str(mid), "24/7", "--category", "water"),
    ]
    for args in steps:
        result = await cli(*args, env=env)
        assert result.code == 0, (args, result.text)
    created = datetime.fromisoformat("2031-03-07T15:00:00+02:00")  # a Friday
    billing = await f.ticket(conn, mid, "billing", created_at=created)
    water = await f.ticket(conn, mid, "water", created_at=created)
    assert (await f.deadlines(conn, billing))[0] == datetime.fromisoformat(
        "2031-03-10T15:30:00+02:00"
    )
    result = await cli("calendar", "close", "office", "2031-03-10", "Municipal day", env=env)
    assert result.code == 0 and "1 live ticket got new deadlines" in result.out, result.text
    assert (await f.deadlines(conn, billing))[0] == datetime.fromisoformat(
        "2031-03-11T15:30:00+02:00"
    )
    assert (await f.deadlines(conn, water))[0] == datetime.fromisoformat(
        "2031-03-07T23:00:00+02:00"
    )
    number = await conn.fetchval("SELECT tracking_number FROM tickets WHERE id = $1", billing)
    result = await cli("sla", "explain", number, env=env)
    assert result.code == 0, result.text
    assert "calendar    office (municipality), Africa/Johannesburg" in result.out
    assert "skipped     2031-03-10 Municipal day (calendar)" in result.out
    assert "= cycle start + 8 business h" in result.out
    as_json = json.loads((await cli("sla", "explain", number, "--json", env=env)).out)
    assert as_json["deadlines"]["response"]["business_hours"] == 8
    result = await cli("sla", "explain", "NO-SUCH", env=env)
    assert result.code == 66 and "NO-SUCH" in result.err


async def test_bad_calendar_input_is_one_line_and_exit_65(dsn: str) -> None:
    env = cli_env(dsn)
    for args in (
        ("calendar", "close", "nowhere", "2031-03-10", "x"),
        ("calendar", "define", "x", "--time-zone", "Mars/Olympus"),
    ):
        result = await cli(*args, env=env)
        assert result.code == 65, (args, result.text)
        assert len(result.err.splitlines()) == 1 and "Traceback" not in result.text
    result = await cli("calendar", "hours", "x", "mon 12:00-08:00", env=env)
    assert result.code == 64 and "open before it closes" in result.err  # usage


async def test_the_daemon_role_cannot_change_calendars(conn: asyncpg.Connection) -> None:
    # Calendar administration is the migration role's: a leaked daemon password cannot
    # declare a holiday and move every deadline.
    for fn in (
        "add_closure(text, date, text)",
        "add_public_holiday(text, date, text)",
        "define_calendar(text, text, text)",
        "load_public_holidays(text, date, date, date[], text[], text)",
    ):
        assert not await conn.fetchval(
            "SELECT has_function_privilege('sla_daemon_runtime', $1, 'EXECUTE')",
            f"sla_daemon.{fn}",
        ), fn
    assert not await conn.fetchval(
        "SELECT has_table_privilege('sla_daemon_runtime', 'sla_daemon.public_holidays', 'INSERT')"
    )
    # it reads them (explain, report) and runs the escalation levels
    assert await conn.fetchval(
        "SELECT has_function_privilege('sla_daemon_runtime',"
        " 'sla_daemon.escalate_levels(uuid)', 'EXECUTE')"
    )
