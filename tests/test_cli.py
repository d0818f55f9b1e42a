"""The command line for real: ``python -m sla_daemon ...`` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import asyncpg
import click
import pytest
from click.testing import CliRunner

from sla_daemon.cli import main

from . import factories as f
from .conftest import with_database

REPO = Path(__file__).resolve().parents[1]


def cli_env(dsn: str | None = None, **extra: str) -> dict[str, str]:
    """This environment without the developer's settings, plus ``dsn`` and ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLA_DAEMON_", "TWILIO_"))
        and k not in ("DATABASE_URL", "CREDENTIALS_DIRECTORY")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


async def cli(*args: str, env: dict[str, str], timeout: float = 60) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sla_daemon",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def lines_by_check(out: str) -> dict[str, str]:
    """``check`` output -> {check name: status}."""
    found = {}
    for line in out.splitlines():
        status, name, *_ = line.split()
        found[name] = status
    return found


# --- help ---------------------------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, (*prefix, name)))
    return paths


def test_help_works_for_every_command() -> None:
    runner = CliRunner()
    paths = _command_paths(main)
    assert {("check",), ("report",), ("demo",), ("outbox", "retry-dead")} <= set(paths)
    for path in [(), *paths]:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
    report_help = runner.invoke(main, ["report", "--help"]).output
    assert "never escalated" in report_help  # the compliance definition is documented


# --- check --------------------------------------------------------------------------------


async def test_check_passes_on_a_migrated_database(dsn: str) -> None:
    result = await cli("check", env=cli_env(dsn))
    assert result.code == 0, result.text
    checks = lines_by_check(result.out)
    assert checks == {
        "database": "ok",
        "schema": "ok",
        "privileges": "ok",
        "catalogs": "ok",
        "twilio": "warn",
    }
    assert "dry run" in result.out


async def test_check_on_an_empty_database_lists_pending_migrations(empty_dsn: str) -> None:
    result = await cli("check", env=cli_env(empty_dsn))
    assert result.code == 78, result.text
    assert lines_by_check(result.out)["schema"] == "FAIL"
    assert "0001_platform_tables" in result.out and "sla-daemon migrate" in result.out


async def test_check_on_a_closed_port_exits_69_and_says_so() -> None:
    port = closed_port()
    url = f"postgresql://sla:secret-pw@127.0.0.1:{port}/sla"
    result = await cli("check", "--timeout", "5", env=cli_env(url), timeout=30)
    assert result.code == 69, result.text
    assert lines_by_check(result.out)["database"] == "FAIL"
    assert "connection refused" in result.out and f"127.0.0.1:{port}" in result.out
    assert "Traceback" not in result.text and "secret-pw" not in result.text


async def test_check_on_a_missing_database_exits_69_and_names_it(dsn: str) -> None:
    result = await cli("check", env=cli_env(with_database(dsn, "no_such_db")), timeout=30)
    assert result.code == 69, result.text
    assert 'database "no_such_db" does not exist' in result.out
    assert "Traceback" not in result.text


async def test_check_on_an_unknown_host_exits_69() -> None:
    url = "postgresql://sla@no-such-host.invalid:5432/sla"
    result = await cli("check", "--timeout", "5", env=cli_env(url), timeout=30)
    assert result.code == 69, result.text
    assert "no-such-host.invalid" in result.out and "Traceback" not in result.text


async def test_check_with_an_invalid_setting_exits_78_naming_it(dsn: str) -> None:
    env = cli_env(dsn, SLA_DAEMON_SEND_RATE_PER_SECOND="-1")
    result = await cli("check", env=env)
    assert result.code == 78, result.text
    assert result.out == ""
    (line,) = result.err.strip().splitlines()
    assert "SLA_DAEMON_SEND_RATE_PER_SECOND" in line


async def test_check_fails_on_half_a_twilio_configuration(dsn: str) -> None:
    result = await cli("check", env=cli_env(dsn, TWILIO_ACCOUNT_SID="AC0123456789abcdef"))
    assert result.code == 78, result.text
    assert lines_by_check(result.out)["twilio"] == "FAIL"
    assert "TWILIO_AUTH_TOKEN" in result.out


async def test_commands_explain_a_wrong_database_url_without_a_traceback() -> None:
    url = f"postgresql://sla@127.0.0.1:{closed_port()}/sla"
    for args in (("migrate",), ("report",), ("outbox", "list-dead")):
        result = await cli(*args, env=cli_env(url), timeout=30)
        assert result.code == 69, (args, result.text)
        assert "connection refused" in result.err and "Traceback" not in result.text


async def test_report_on_an_unmigrated_database_says_to_migrate(empty_dsn: str) -> None:
    result = await cli("report", env=cli_env(empty_dsn))
    assert result.code == 78, result.text
    assert "sla-daemon migrate" in result.err and "Traceback" not in result.text


# --- report -------------------------------------------------------------------------------


async def _ticket(
    conn: asyncpg.Connection, tenant: UUID, category: str, age: timedelta, now: datetime, **kw: Any
) -> UUID:
    return await f.ticket(conn, tenant, category, created_at=now - age, **kw)


async def seed_report(conn: asyncpg.Connection) -> dict[str, UUID]:
    """Tickets whose every count is known (numbers refer to the comments below)."""
    now: datetime = await conn.fetchval("SELECT now()")
    alpha = await f.municipality(conn, "Alpha")
    beta = await f.municipality(conn, "Beta")  # system defaults: 24 h / 168 h
    await f.sla_config(conn, alpha, None, 1, 2, warning_pct=50)
    minute, hour, day = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
    t: dict[str, UUID] = {}
    # 1 open, new ("Water": categories are grouped case-insensitively)
    t["1"] = await _ticket(conn, alpha, "Water", 0 * minute, now)
    # 3 open, past the response deadline: breached
    t["3"] = await _ticket(conn, alpha, "water", 90 * minute, now)
    # 4 in progress, past the resolution deadline: breached
    t["4"] = await _ticket(conn, alpha, "water", 3 * hour, now, status="in_progress")
    # 5 escalated by the daemon; 8 escalated by the daemon, then resolved
    t["5"] = await _ticket(conn, alpha, "water", 90 * minute, now)
    t["8"] = await _ticket(conn, alpha, "water", 90 * minute, now)
    for key in ("5", "8"):
        row = await conn.fetchrow("SELECT * FROM sla_daemon.escalate_ticket($1)", t[key])
        assert row is not None and row["escalated"]
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", t["8"])
    # 6 resolved, 7 closed, never escalated: met
    t["6"] = await _ticket(conn, alpha, "water", day, now, status="resolved")
    t["7"] = await _ticket(conn, alpha, "water", 2 * day, now, status="closed")
    # 9 sensitive: never counted
    t["9"] = await _ticket(conn, alpha, "water", 90 * minute, now, is_sensitive=True)
    # 10 resolved before the period: not counted; 15 open since before it: live, breached
    t["10"] = await _ticket(conn, alpha, "water", 40 * day, now, status="resolved")
    t["15"] = await _ticket(conn, alpha, "water", 40 * day, now)
    # 11 escalated by staff (no escalation event)
    t["11"] = await _ticket(conn, alpha, "water", day, now, status="escalated")
    # 12 open, past its warning threshold, warning recorded: at risk
    t["12"] = await _ticket(conn, alpha, "water", 40 * minute, now)
    await conn.fetch("SELECT * FROM sla_daemon.record_warnings(1000)")
    # 2 open, past its warning threshold, warning due but not recorded yet: at risk
    t["2"] = await _ticket(conn, alpha, "water", 40 * minute, now)
    # 16 another category, closed: met
    t["16"] = await _ticket(conn, alpha, "Electricity", day, now, status="closed")
    # 13 open and 14 resolved, in Beta
    t["13"] = await _ticket(conn, beta, "roads", 0 * minute, now)
    t["14"] = await _ticket(conn, beta, "roads", 0 * minute, now, status="resolved")
    # The outbox: 3 pending + 1 sending, 3 dead (2 with code 63016), 2 sent, 1 superseded.
    await conn.execute("DELETE FROM sla_daemon.outbox; DELETE FROM sla_daemon.outbox_intake")
    await conn.executemany(
        "INSERT INTO sla_daemon.outbox (id, ticket_id, new_status, state, error_code, last_error)"
        " VALUES ((SELECT coalesce(max(id), 0) + 1 FROM sla_daemon.outbox),"
        " $1, 'in_progress', $2, $3, $4)",
        [
            (t["1"], "pending", None, None),
            (t["2"], "pending", None, None),
            (t["3"], "pending", None, None),
            (t["4"], "sending", None, None),
            (t["5"], "dead", 63016, "HTTP 400: outside the 24-hour window"),
            (t["6"], "dead", 63016, "HTTP 400: outside the 24-hour window"),
            (t["7"], "dead", None, "unusable phone number: +27 82 123 4567 is too short"),
            (t["8"], "sent", None, None),
            (t["12"], "dry_run", None, None),
            (t["13"], "superseded", None, None),
        ],
    )
    return t


def _counts(**values: Any) -> dict[str, Any]:
    keys = ("open", "in_progress", "at_risk", "breached", "escalated", "created", "measured", "met")
    counts: dict[str, Any] = dict.fromkeys(keys, 0)
    counts.update(values)
    counts["compliance_pct"] = (
        round(100 * counts["met"] / counts["measured"], 1) if counts["measured"] else None
    )
    return counts


def _only_counts(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in row.items()
        # business_hours has tests of its own (tests/test_report_business_hours.py)
        if k not in ("municipality_id", "municipality", "category", "business_hours")
    }


async def test_report_json_numbers_are_exact(conn: asyncpg.Connection, dsn: str) -> None:
    await seed_report(conn)
    result = await cli("report", "--json", env=cli_env(dsn))
    assert result.code == 0, result.text
    data = json.loads(result.out)
    groups = {(g["municipality"], g["category"]): _only_counts(g) for g in data["groups"]}
    assert groups == {
        ("Alpha", "water"): _counts(
            open=5, in_progress=1, at_risk=2, breached=3, escalated=2, created=10, measured=7, met=2
        ),
        ("Alpha", "electricity"): _counts(created=1, measured=1, met=1),
        ("Beta", "roads"): _counts(open=1, created=2, measured=1, met=1),
    }
    towns = {m["municipality"]: _only_counts(m) for m in data["municipalities"]}
    assert towns == {
        "Alpha": _counts(
            open=5, in_progress=1, at_risk=2, breached=3, escalated=2, created=11, measured=8, met=3
        ),
        "Beta": _counts(open=1, created=2, measured=1, met=1),
    }
    assert _only_counts(data["total"]) == _counts(
        open=6, in_progress=1, at_risk=2, breached=3, escalated=2, created=13, measured=9, met=4
    )
    assert data["total"]["compliance_pct"] == 44.4
    # The grand total is all municipalities: it names none of them.
    assert [data["total"][k] for k in ("municipality_id", "municipality", "category")] == [None] * 3
    outbox = data["outbox"]
    assert (outbox["backlog"], outbox["dead"]) == (4, 3)
    assert outbox["oldest_pending_seconds"] >= 0
    by_code = [(d["error_code"], d["count"]) for d in outbox["dead_by_error_code"]]
    assert by_code == [(63016, 2), (None, 1)]
    # phone-like text in an error is never shown: the whole number is replaced (a bare
    # "4567" would be flaky, as a random UUID in the output may hold it)
    assert "unusable phone number: [number] is too short" in result.out
    assert "123 4567" not in result.out


async def test_report_period_excludes_older_tickets(conn: asyncpg.Connection, dsn: str) -> None:
    await seed_report(conn)
    result = await cli("report", "--json", "--since", "12h", env=cli_env(dsn))
    assert result.code == 0, result.text
    total = json.loads(result.out)["total"]
    # created in the last 12 h: 1, 2, 3, 4, 5, 8, 12 (Alpha) and 13, 14 (Beta)
    assert (total["created"], total["measured"], total["met"]) == (9, 5, 1)
    assert (total["open"], total["escalated"]) == (6, 2)  # snapshot columns: unchanged
    days = await cli("report", "--json", "--days", "30", env=cli_env(dsn))
    assert json.loads(days.out)["total"]["created"] == 13


async def test_report_table_is_readable(conn: asyncpg.Connection, dsn: str) -> None:
    await seed_report(conn)
    result = await cli("report", env=cli_env(dsn))
    assert result.code == 0, result.text
    lines = result.out.splitlines()
    header = next(line for line in lines if line.startswith("Municipality"))
    assert "At risk" in header and "Breached" in header and "SLA %" in header
    alpha = next(line for line in lines if line.startswith("Alpha"))
    assert alpha.split()[:8] == ["Alpha", "electricity", "0", "0", "0", "0", "0", "1"]
    total = next(line for line in lines if line.startswith("All municipalities"))
    # then in business hours: resolved in time, overdue hours, breaches per level (the
    # daemon escalated 5 and 8: level 1 twice)
    assert total.split()[-5:-3] == ["4/9", "44.4"] and total.split()[-1] == "L1:2"
    assert "In time" in header and "Overdue bh" in header and "Breaches by level" in header
    assert "dead letters: 3" in result.out and "63016" in result.out
    assert "\x1b[" not in result.out  # no colour codes when not a terminal


async def test_report_rejects_bad_periods(dsn: str) -> None:
    both = await cli("report", "--since", "7d", "--days", "7", env=cli_env(dsn))
    assert both.code == 64 and "not both" in both.err
    bad = await cli("report", "--since", "fortnight", env=cli_env(dsn))
    assert bad.code == 64 and "fortnight" in bad.err


# --- outbox -------------------------------------------------------------------------------


async def test_outbox_list_dead_shows_rows_without_phone_numbers(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await seed_report(conn)
    result = await cli("outbox", "list-dead", env=cli_env(dsn))
    assert result.code == 0, result.text
    assert "63016" in result.out and "TKT-" in result.out
    assert "123 4567" not in result.out and "phone number: [number] is too" in result.out
    assert "3 of 3 dead" in result.out
    as_json = await cli("outbox", "list-dead", "--json", "--limit", "2", env=cli_env(dsn))
    data = json.loads(as_json.out)
    assert data["dead"] == 3 and len(data["rows"]) == 2
    assert {"id", "tracking_number", "status", "error_code", "error"} <= set(data["rows"][0])


async def test_outbox_retry_dead_requeues(conn: asyncpg.Connection, dsn: str) -> None:
    await seed_report(conn)
    dead = [
        r["id"] for r in await conn.fetch("SELECT id FROM sla_daemon.outbox WHERE state = 'dead'")
    ]
    one = await cli("outbox", "retry-dead", "--id", str(dead[0]), env=cli_env(dsn))
    assert one.code == 0, one.text
    assert "re-queued 1 dead letter" in one.out
    state = await conn.fetchval("SELECT state FROM sla_daemon.outbox WHERE id = $1", dead[0])
    assert state == "pending"
    # All of them needs --yes when nobody can be asked.
    unconfirmed = await cli("outbox", "retry-dead", env=cli_env(dsn))
    assert unconfirmed.code == 64 and "--yes" in unconfirmed.err
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.outbox WHERE state = 'dead'") == 2
    rest = await cli("outbox", "retry-dead", "--yes", env=cli_env(dsn))
    assert rest.code == 0 and "re-queued 2 dead letters" in rest.out
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.outbox WHERE state = 'dead'") == 0
    again = await cli("outbox", "retry-dead", "--id", str(dead[0]), env=cli_env(dsn))
    assert again.code == 64 and f"no dead letter with id {dead[0]}" in again.err


def test_connection_errors_are_explained_without_the_password() -> None:
    from sla_daemon.check import EX_CONFIG, EX_UNAVAILABLE, explain_connect_error

    url = "postgresql://sla:s3cret@db.example:6543/platform"
    cases = [
        (
            asyncpg.InvalidPasswordError('password authentication failed for user "sla"'),
            "password authentication failed",
            EX_UNAVAILABLE,
        ),
        (TimeoutError(), "no answer within 5s from db.example:6543", EX_UNAVAILABLE),
        (ValueError("invalid port s3cret"), "not a usable PostgreSQL URL", EX_CONFIG),
        # a parser's text may quote part of the password: never shown
        (ValueError("invalid literal for int() with base 10: 's3c'"), "percent-encod", EX_CONFIG),
        (OSError(113, "No route to host"), "No route to host", EX_UNAVAILABLE),
    ]
    for exc, expected, code in cases:
        error = explain_connect_error(exc, url, 5)
        assert expected in str(error) and error.code == code, str(error)
        assert "s3c" not in str(error)
        assert "database platform as sla" in str(error) or code == EX_CONFIG


# --- settings and failures that must not leak or trace back ---------------------------------

#: Generated passwords hold the characters that cut a URL. Each fragment between them is
#: what the parsers used to quote (as a port, a host, a query), so none may appear.
LEAKY_PASSWORDS = {
    "p/ss#w?rd": ("p/ss", "ss#w", "w?rd", "#w?", "invalid literal"),
    "Qz7x/Vk9t#Wp4j?Rh2y@Bn5m": ("Qz7x", "Vk9t", "Wp4j", "Rh2y", "Bn5m"),
}
EVERY_COMMAND = (
    ("run",),
    ("run", "--migrate"),
    ("check",),
    ("migrate",),
    ("report",),
    ("outbox", "list-dead"),
    ("outbox", "retry-dead", "--yes"),
    ("demo",),
)


def assert_no_leak(result: Result, fragments: tuple[str, ...]) -> None:
    assert "Traceback" not in result.text, result.text
    for fragment in fragments:
        assert fragment not in result.text, (fragment, result.text)


@pytest.mark.parametrize("password", sorted(LEAKY_PASSWORDS))
async def test_an_unencoded_password_is_one_line_and_exit_78_in_every_command(
    password: str,
) -> None:
    url = f"postgresql://sla:{password}@127.0.0.1:{closed_port()}/sla"
    for args in EVERY_COMMAND:
        result = await cli(*args, env=cli_env(url), timeout=30)
        assert result.code == 78, (args, result.text)
        assert_no_leak(result, LEAKY_PASSWORDS[password])
        assert result.out == "", (args, result.out)
        (line,) = result.err.splitlines()
        assert line.startswith("sla-daemon: invalid setting: DATABASE_URL: "), line
        for encoded in ("/ as %2F", "# as %23", "? as %3F", "@ as %40"):
            assert encoded in line, line


async def test_an_unreachable_database_is_one_line_and_exit_69_in_every_command() -> None:
    password = "Qz7x/Vk9t#Wp4j?Rh2y@Bn5m"
    encoded = quote(password, safe="")
    url = f"postgresql://sla:{encoded}@127.0.0.1:{closed_port()}/sla"
    for args in EVERY_COMMAND[:-1]:  # the demo on a database it cannot reach: test_demo
        result = await cli(*args, env=cli_env(url), timeout=60)
        assert result.code == 69, (args, result.text)
        assert_no_leak(result, (*LEAKY_PASSWORDS[password], encoded))
        if args == ("check",):
            assert lines_by_check(result.out)["database"] == "FAIL"
            continue
        assert result.out == "", (args, result.out)
        (line,) = result.err.splitlines()
        assert line.startswith("sla-daemon: connection refused by 127.0.0.1:"), (args, line)


async def test_run_on_an_unmigrated_database_is_one_line_and_exit_78(empty_dsn: str) -> None:
    result = await cli("run", env=cli_env(empty_dsn), timeout=60)
    assert result.code == 78, result.text
    (line,) = result.err.splitlines()
    assert "sla-daemon migrate" in line and "Traceback" not in result.text


async def test_twilio_over_http_off_loopback_is_refused_in_one_line(dsn: str) -> None:
    for args in (("run",), ("check",)):
        env = cli_env(dsn, TWILIO_API_BASE_URL="http://api.twilio.com")
        result = await cli(*args, env=env, timeout=30)
        assert result.code == 78, result.text
        (line,) = result.err.splitlines()
        assert line.startswith("sla-daemon: invalid setting: TWILIO_API_BASE_URL: must be https")


async def test_a_setting_that_is_not_json_is_one_line_and_exit_78(dsn: str) -> None:
    env = cli_env(dsn, SLA_DAEMON_TWILIO_CONTENT_SIDS="{Qz7x")
    for args in (("run",), ("check",)):
        result = await cli(*args, env=env, timeout=30)
        assert result.code == 78, result.text
        (line,) = result.err.splitlines()
        assert "SLA_DAEMON_TWILIO_CONTENT_SIDS: not valid JSON" in line
        assert "Qz7x" not in line and "Traceback" not in result.text
