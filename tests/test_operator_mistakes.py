"""Issue 11: every operator mistake is one line and a documented exit code (64 usage,
69 unavailable, 78 configuration), the same from every command, in JSON with JSON logs;
no setting loses a message silently. Each case runs the real command in a subprocess."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from .daemon_harness import DaemonProcess, daemon_settings, running
from .test_cli import cli, cli_env, closed_port, lines_by_check, seed_report
from .test_privileges import as_user

TWILIO = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "token-Qz7x",
    "TWILIO_WHATSAPP_NUMBER": "+14155238886",
}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --- 1. no setting silently loses a message ----------------------------------------------


@pytest.mark.parametrize("left_out", sorted(TWILIO))
async def test_half_a_twilio_configuration_stops_run_as_it_fails_check(
    dsn: str, left_out: str
) -> None:
    env = cli_env(dsn, **{k: v for k, v in TWILIO.items() if k != left_out})
    run = await cli("run", env=env, timeout=30)
    assert run.code == 78, run.text
    line = one_line(run.err)
    assert left_out in line and "SLA_DAEMON_DRY_RUN" in line and "token-Qz7x" not in line
    check = await cli("check", env=env, timeout=30)
    assert check.code == 78
    (twilio,) = [x for x in check.out.splitlines() if x.split()[1] == "twilio"]
    assert line.removeprefix("sla-daemon: ") in twilio  # the same words


async def _started_lines(dsn: str, extra: dict[str, str]) -> list[str]:
    settings = daemon_settings(dsn, None, metrics_address="off")
    async with DaemonProcess(settings, extra) as daemon:
        return list(daemon.lines)


async def test_dry_run_says_why_and_misspelt_settings_are_named(dsn: str) -> None:
    lines = await _started_lines(dsn, {"SLA_DAEMON_SEND_RATE": "10"})
    assert any("DRY RUN: no Twilio setting is given" in x for x in lines), lines
    (warning,) = [x for x in lines if "SLA_DAEMON_SEND_RATE " in x]
    assert "WARNING" in warning and "did you mean SLA_DAEMON_SEND_RATE_PER_SECOND?" in warning

    lines = await _started_lines(dsn, {"SLA_DAEMON_DRY_RUN": "true", **TWILIO})
    assert any("DRY RUN: SLA_DAEMON_DRY_RUN is set" in x for x in lines), lines


async def test_an_unknown_default_region_is_refused(dsn: str) -> None:
    env = cli_env(dsn, SLA_DAEMON_DEFAULT_REGION="XX")
    for args in (("run",), ("check",)):
        result = await cli(*args, env=env, timeout=30)
        assert result.code == 78, result.text
        line = one_line(result.err)
        assert "SLA_DAEMON_DEFAULT_REGION: 'XX' is not a region phonenumbers knows" in line


# --- 2. permissions: the GRANT to run ------------------------------------------------------


@contextlib.asynccontextmanager
async def login_role(conn: asyncpg.Connection, member: bool) -> AsyncIterator[str]:
    role = f"sla_daemon_login_{abs(hash(conn)) % 10**6}"
    await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    if member:
        await conn.execute(f"GRANT sla_daemon_runtime TO {role}")
    try:
        yield role
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_a_role_outside_the_runtime_role_fails_check_and_run_with_the_grant(
    conn: asyncpg.Connection, dsn: str
) -> None:
    async with login_role(conn, member=False) as role:
        env = cli_env(as_user(dsn, role, "pw"))
        check = await cli("check", env=env, timeout=30)
        assert check.code == 78, check.text
        assert lines_by_check(check.out)["privileges"] == "FAIL"
        (line,) = [x for x in check.out.splitlines() if x.split()[1] == "privileges"]
        assert f"run GRANT sla_daemon_runtime TO {role}" in line
        run = await cli("run", env=env, timeout=30)
        assert run.code == 78, run.text
        assert f"run GRANT sla_daemon_runtime TO {role}" in one_line(run.err)


async def test_a_grant_revoked_from_the_runtime_role_is_named_with_its_grant(
    conn: asyncpg.Connection, dsn: str
) -> None:
    async with login_role(conn, member=True) as role:
        env = cli_env(as_user(dsn, role, "pw"))
        check = await cli("check", env=env, timeout=30)
        assert check.code == 0, check.text
        assert lines_by_check(check.out)["privileges"] == "ok"
        await conn.execute("REVOKE UPDATE (status) ON public.tickets FROM sla_daemon_runtime")
        await conn.execute("REVOKE INSERT ON sla_daemon.events FROM sla_daemon_runtime")
        check = await cli("check", env=env, timeout=30)
        assert check.code == 78, check.text
        (line,) = [x for x in check.out.splitlines() if x.split()[1] == "privileges"]
        assert "GRANT UPDATE (status) ON public.tickets TO sla_daemon_runtime" in line, line
        assert "GRANT INSERT ON sla_daemon.events TO sla_daemon_runtime" in line, line
        run = await cli("run", env=env, timeout=30)
        assert run.code == 78 and "GRANT UPDATE (status) ON public.tickets" in one_line(run.err)


def privileges_line(check_out: str) -> str:
    (line,) = [x for x in check_out.splitlines() if x.split()[1] == "privileges"]
    return line.split(None, 2)[2]


async def test_a_permission_error_in_a_command_names_the_missing_grant(
    conn: asyncpg.Connection, dsn: str
) -> None:
    async with login_role(conn, member=False) as role:
        env = cli_env(as_user(dsn, role, "pw"))
        check = await cli("check", env=env, timeout=30)
        result = await cli("report", env=env, timeout=30)
        assert result.code == 78, result.text
        line = one_line(result.err)
        assert line == f"sla-daemon: {privileges_line(check.out)}"
        assert f"GRANT sla_daemon_runtime TO {role}" in line


# --- 3. one line, one code, also in JSON -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("frobnicate",), ("report", "--since", "soon"), ("report", "--since", "1d", "--days", "2")],
)
async def test_usage_mistakes_are_one_line_and_64(dsn: str, args: tuple[str, ...]) -> None:
    result = await cli(*args, env=cli_env(dsn), timeout=30)
    assert result.code == 64, result.text
    assert "--help" in one_line(result.err)


async def test_fatal_lines_are_json_when_json_logs_are_on(dsn: str) -> None:
    cases = [
        (("run",), {"SLA_DAEMON_POOL_MIN_SIZE": "9", "SLA_DAEMON_POOL_MAX_SIZE": "8"}, 78),
        (("check",), {"SLA_DAEMON_DEFAULT_REGION": "XX"}, 78),
        (("report", "--since", "soon"), {}, 64),
        (("run",), {"DATABASE_URL": f"postgresql://a@127.0.0.1:{closed_port()}/x"}, 69),
        (("run",), {"TWILIO_ACCOUNT_SID": TWILIO["TWILIO_ACCOUNT_SID"]}, 78),
    ]
    for args, extra, code in cases:
        result = await cli(*args, env=cli_env(dsn, SLA_DAEMON_LOG_FORMAT="json", **extra))
        assert result.code == code, (args, result.text)
        entry = json.loads(one_line(result.err))
        assert entry["level"] == "CRITICAL" and entry["msg"], entry


async def test_env_file_works_before_and_after_the_command(dsn: str, tmp_path: Path) -> None:
    env_file = tmp_path / "sla.env"
    env_file.write_text(f"DATABASE_URL={dsn}\n")
    for args in (
        ("--env-file", str(env_file), "check"),
        ("check", "--env-file", str(env_file)),
        ("check", f"--env-file={env_file}"),
    ):
        result = await cli(*args, env=cli_env(), timeout=30)
        assert result.code == 0, (args, result.text)
        assert lines_by_check(result.out)["database"] == "ok"


async def test_retry_dead_of_a_row_that_is_not_dead_fails_and_requeues_nothing(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await seed_report(conn)
    dead = await conn.fetchval("SELECT min(id) FROM sla_daemon.outbox WHERE state = 'dead'")
    result = await cli("outbox", "retry-dead", "--id", str(dead), "--id", "999", env=cli_env(dsn))
    assert result.code == 64, result.text
    assert "no dead letter with id 999" in one_line(result.err)
    assert await conn.fetchval("SELECT state FROM sla_daemon.outbox WHERE id = $1", dead) == "dead"


async def test_the_image_healthcheck_follows_the_metrics_setting(dsn: str) -> None:
    off = await cli("healthcheck", env=cli_env(dsn, SLA_DAEMON_METRICS_ADDRESS="off"))
    assert off.code == 0 and "metrics are off" in off.out, off.text
    port = closed_port()
    address = f"127.0.0.1:{port}"
    down = await cli("healthcheck", env=cli_env(dsn, SLA_DAEMON_METRICS_ADDRESS=address))
    assert down.code == 1 and f"{address}/healthz" in one_line(down.err)
    async with running(daemon_settings(dsn, None, metrics_address=address)):
        up = await cli("healthcheck", env=cli_env(dsn, SLA_DAEMON_METRICS_ADDRESS=address))
    assert up.code == 0 and '"ok": true' in up.out, up.text
