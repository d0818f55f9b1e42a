"""The ``sla-daemon`` command line.

Commands stay thin: the work is in ``check``, ``report``, ``demo`` and the daemon.
Exit codes follow sysexits.h: 0 ok, 64 usage, 69 database unavailable, 78 configuration
(an invalid setting, DATABASE_URL missing, the schema not current, ...).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import NoReturn, TypeVar
from uuid import UUID

import asyncpg
import click

from . import aio, db
from .check import (
    DEFAULT_TIMEOUT,
    EX_CONFIG,
    EX_UNAVAILABLE,
    DatabaseUnavailable,
    check_privileges,
    check_twilio,
    connect,
    describe_target,
    explain_connect_error,
)
from .config import Settings, SettingsError, load_settings, unknown_variables
from .logs import JsonFormatter, setup_logging

__all__ = ["EX_CONFIG", "EX_UNAVAILABLE", "EX_USAGE", "main"]

EX_USAGE = 64  # sysexits.h: the command was used incorrectly
EX_DATAERR = 65  # sysexits.h: the input data was incorrect (a refused calendar change)
EX_NOINPUT = 66  # sysexits.h: an input did not exist (no such ticket)

T = TypeVar("T")

log = logging.getLogger("sla_daemon")

_STATUS_COLOURS = {"ok": "green", "warn": "yellow", "FAIL": "red", "skip": None}


def _json_logs() -> bool:
    """JSON logs are on: from the loaded settings' log set-up, or (before the settings
    load, or when they cannot) from the environment."""
    handlers = logging.getLogger().handlers
    if handlers and isinstance(handlers[0].formatter, JsonFormatter):
        return True
    return os.environ.get("SLA_DAEMON_LOG_FORMAT", "").strip().lower() == "json"


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr (one JSON object with JSON logs) and the exit code."""
    if _json_logs():
        record = logging.LogRecord("sla_daemon", logging.CRITICAL, "", 0, message, None, None)
        click.echo(JsonFormatter().format(record), err=True)
    else:
        click.echo(f"sla-daemon: {message}", err=True)
    sys.exit(code)


def _settings(ctx: click.Context) -> Settings:
    env_file = ctx.obj.get("env_file")
    try:
        settings: Settings = load_settings(env_file)
    except SettingsError as exc:
        _fail(str(exc), EX_CONFIG)
    setup_logging(settings.log_level, settings.log_format)
    for name, closest in unknown_variables(env_file=env_file):
        log.warning(
            "%s is not a setting and is ignored%s",
            name,
            f" (did you mean {closest}?)" if closest else "",
        )
    return settings


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        _fail("DATABASE_URL is not set", EX_CONFIG)
    return settings.database_url


class _SchemaNotCurrent(Exception):
    pass


class _NotPermitted(Exception):
    pass


class _Refused(Exception):
    """The database refused the input (no such calendar, overlapping hours, ...)."""


#: What the calendar functions raise for bad input, not for a failing database.
_INPUT_ERRORS = (
    asyncpg.DataError,
    asyncpg.RaiseError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.InsufficientPrivilegeError,
)


async def _nothing(_conn: asyncpg.Connection) -> None:
    """The work of a connection made only to see that it can be made."""


def _with_connection(
    settings: Settings,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    require_schema: bool = True,
    command_timeout: float | None = db.COMMAND_TIMEOUT,
) -> T:
    """Connect (bounded, explained on failure), check the schema, run ``work``, close.

    Every database failure ends the process with one line and 69 (78 for configuration).
    """
    dsn = _database_url(settings)

    async def go() -> T:
        conn = await connect(dsn, timeout, command_timeout=command_timeout)
        try:
            if require_schema and (pending := await db.pending_migrations(conn)):
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
                raise _SchemaNotCurrent(f"the schema is not current ({names} pending)")
            return await work(conn)
        except asyncpg.InsufficientPrivilegeError:
            # Say which grant is missing, in check's words.
            privileges = await check_privileges(conn)
            if privileges.failed:
                raise _NotPermitted(privileges.detail) from None
            raise
        finally:
            await conn.close(timeout=timeout)

    try:
        return aio.run(go())
    except DatabaseUnavailable as exc:
        _fail(str(exc), exc.code)
    except _SchemaNotCurrent as exc:
        _fail(f"{exc}: run sla-daemon migrate", EX_CONFIG)
    except _NotPermitted as exc:
        _fail(str(exc), EX_CONFIG)
    except _Refused as exc:
        _fail(str(exc), EX_DATAERR)
    except db.MigrationError as exc:
        _fail(str(exc), EX_UNAVAILABLE)
    except asyncpg.InsufficientPrivilegeError as exc:
        target = describe_target(dsn)
        _fail(
            f"{target}: {exc}: the role lacks a grant (the daemon's role needs"
            " GRANT sla_daemon_runtime TO <role>; sla-daemon check lists what is missing)",
            EX_CONFIG,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _fail(f"database error: {type(exc).__name__}: {exc}", EX_UNAVAILABLE)
    except Exception as exc:  # asyncpg's failures are varied; one line, details at DEBUG
        log.debug("unexpected error", exc_info=True)
        _fail(f"unexpected {type(exc).__name__}: {exc}", EX_UNAVAILABLE)


_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=600),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the database to answer a connection.",
)


def _hoist_env_file(args: list[str]) -> list[str]:
    """``--env-file FILE`` is the group's option; accept it after the sub-command too."""
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == "--env-file" and i + 1 < len(args):
            moved += args[i : i + 2]
            i += 2
            continue
        if arg.startswith("--env-file="):
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return moved + rest


class _Commands(click.Group):
    """Click's group, with one line and exit 64 for a usage mistake (click prints the
    usage and exits 2), and ``--env-file`` accepted anywhere on the line."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: object,
    ) -> object:
        argv = _hoist_env_file(list(sys.argv[1:] if args is None else args))
        prog = prog_name or "sla-daemon"
        if not standalone_mode:
            return super().main(argv, prog, complete_var, False, **extra)
        try:
            code = super().main(argv, prog, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else prog
            _fail(f"{exc.format_message()} (see {where} --help)", EX_USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read settings from this file too (KEY=value lines; the environment wins).",
)
@click.version_option(package_name="sla-daemon")
@click.pass_context
def main(ctx: click.Context, env_file: str | None) -> None:
    """SLA deadlines, escalation and WhatsApp status notifications for service-desk tickets."""
    ctx.ensure_object(dict)
    ctx.obj["env_file"] = env_file
    # Escaping formatter from the start, before the settings (and their log format) load.
    setup_logging(fmt="json" if _json_logs() else "text")


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or update sla-daemon's schema in DATABASE_URL (safe to run again)."""
    settings = _settings(ctx)
    # No statement timeout: an index on a large platform tickets table takes its time.
    applied = _with_connection(
        settings, db.migrate, timeout=30, require_schema=False, command_timeout=None
    )
    if applied:
        click.echo("applied: " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    else:
        click.echo("schema is up to date")
    unadopted = _with_connection(
        settings, lambda conn: conn.fetchval(db.QUERIES["unadopted_count"]), timeout=30
    )
    if unadopted:
        click.echo(
            f"{unadopted} live ticket{'' if unadopted == 1 else 's'} without deadlines (from"
            " before sla-daemon was installed) are not monitored: run sla-daemon adopt"
        )


@main.command(short_help="Give live tickets from before the installation their deadlines.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Tickets per transaction (each batch locks only its own rows, briefly).",
)
@click.option(
    "--breached",
    type=click.Choice(["escalate", "record"]),
    help="A ticket already past a deadline: escalate it (the daemon's next pass), or"
    " record the breach without escalating.  [default: SLA_DAEMON_ADOPT_BREACHED, escalate]",
)
@_timeout_option
@click.pass_context
def adopt(ctx: click.Context, batch_size: int, breached: str | None, timeout: float) -> None:
    """Adopt live tickets that have no deadlines (they existed before sla-daemon).

    Each open or in-progress ticket gets its deadlines from its SLA config, counted from
    its creation, through the same triggers as a new ticket: scheduled, warned and
    escalated like one. Run it as the migration role (writing deadlines is not the
    daemon's right). Safe to run again, and while the daemon runs.
    """
    settings = _settings(ctx)
    escalate = (breached or settings.adopt_breached) == "escalate"

    async def work(conn: asyncpg.Connection) -> tuple[int, int, int]:
        waiting = int(await conn.fetchval(db.QUERIES["unadopted_count"]))
        adopted = late = 0
        while adopted < waiting:
            async with conn.transaction():  # one short transaction per batch
                row = await conn.fetchrow(db.QUERIES["adopt_tickets"], batch_size, escalate)
            assert row is not None
            if not row["adopted"]:
                break  # the rest are locked by other transactions
            adopted += row["adopted"]
            late += row["breached"]
            click.echo(f"adopted {adopted} of {waiting} ({late} already breached)")
        left = int(await conn.fetchval(db.QUERIES["unadopted_count"]))
        return adopted, late, left

    adopted, late, left = _with_connection(settings, work, timeout=timeout)
    fate = (
        "escalated by the running daemon's next pass"
        if escalate
        else "recorded as adopted_breached events, not escalated"
    )
    click.echo(
        f"adopted {adopted} ticket{'' if adopted == 1 else 's'}; {late} already breached: {fate}"
    )
    if left:
        click.echo(f"{left} still without deadlines (locked meanwhile): run sla-daemon adopt again")


@main.command()
@click.option("--migrate", "apply_migrations", is_flag=True, help="Apply pending migrations first.")
@click.pass_context
def run(ctx: click.Context, apply_migrations: bool) -> None:
    """Run the daemon: send status notifications, escalate breached tickets, warn."""
    from .daemon import Daemon, DaemonError

    settings = _settings(ctx)
    dsn = _database_url(settings)
    # Half a Twilio configuration would mark every message dry_run for good: refused,
    # in check's words.
    for result in check_twilio(settings, None):
        if result.failed:
            _fail(result.detail, result.code)
    if apply_migrations:
        _with_connection(
            settings, db.migrate, timeout=30, require_schema=False, command_timeout=None
        )
    # Reachable, current and permitted, explained in one line (69 or 78) before the
    # daemon starts.
    privileges = _with_connection(settings, check_privileges, timeout=30)
    if privileges.failed:
        _fail(privileges.detail, privileges.code)
    try:
        code = aio.run(Daemon(settings).run())
    except DaemonError as exc:
        if isinstance(exc.__cause__, Exception):  # the database failed between the two
            explained = explain_connect_error(exc.__cause__, dsn, 30)
            _fail(str(explained), explained.code)
        _fail(str(exc), EX_UNAVAILABLE)
    sys.exit(code)


@main.command()
@_timeout_option
@click.pass_context
def check(ctx: click.Context, timeout: float) -> None:
    """Check that the daemon can run here, one line per check.

    \b
    database   DATABASE_URL reachable within --timeout (why not, if not)
    schema     every migration applied (pending ones listed)
    catalogs   every message catalog complete and consistent with English
    twilio     credentials present, or dry run announced (half of them: FAIL)
    templates  WhatsApp content templates configured (when sending)

    Exits 0 when nothing FAILed (warnings do not fail), 69 when the database cannot
    be reached or used, 78 for configuration: an invalid setting, DATABASE_URL not
    set or malformed, pending migrations, a broken catalog, half-configured Twilio.
    """
    from .check import exit_code, run_checks

    settings = _settings(ctx)
    results = aio.run(run_checks(settings, connect_timeout=timeout))
    for r in results:
        status = click.style(r.status.ljust(4), fg=_STATUS_COLOURS[r.status], bold=r.failed)
        click.echo(f"{status}  {r.name.ljust(9)}  {r.detail}")
    sys.exit(exit_code(results))


@main.command(short_help="SLA state per municipality and category; the outbox.")
@click.option(
    "--since",
    "since",
    metavar="PERIOD",
    help="The period ending now for the SLA columns: 30d, 12h, 2w, 90m.  [default: 30d]",
)
@click.option("--days", type=click.IntRange(min=1), help="The period in days (--since Nd).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@_timeout_option
@click.pass_context
def report(
    ctx: click.Context, since: str | None, days: int | None, as_json: bool, timeout: float
) -> None:
    """SLA state per municipality and category, and the outbox's backlog.

    \b
    Now (all tickets; sensitive ones are never counted):
      Open, In progress, Escalated  tickets with that status
      At risk    open or in progress, not breached, past the warning
                 threshold (warning recorded, or due and not yet recorded)
      Breached   past a deadline and not yet escalated
    Over the period (tickets created in it, with an SLA deadline):
      Met/measured  met: resolved or closed and never escalated by the
                 daemon; measured: outcome known (resolved, closed,
                 escalated or breached). Tickets have no resolved_at, so
                 "on time" means "never escalated".
      SLA %      met / measured
    Outbox: messages waiting (pending or sending), dead letters by error code.

    Everything is counted in the database, in one snapshot.
    """
    from .report import build_report, format_table, parse_period

    if since is not None and days is not None:
        raise click.UsageError("give --since or --days, not both")
    try:
        period = timedelta(days=days) if days is not None else parse_period(since or "30d")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = _settings(ctx)
    result = _with_connection(settings, lambda conn: build_report(conn, period), timeout=timeout)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_table(result, lambda text: click.style(text, bold=True)))


@main.group()
def outbox() -> None:
    """The status-message outbox: list and re-queue dead letters."""


@outbox.command("list-dead")
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Rows shown."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@_timeout_option
@click.pass_context
def list_dead(ctx: click.Context, limit: int, as_json: bool, timeout: float) -> None:
    """The newest dead letters: id, tracking number, status (or staff alert), error code
    and error.

    Phone numbers are never shown (stored errors are scrubbed, and scrubbed again here).
    """
    from .report import scrub

    settings = _settings(ctx)

    async def work(conn: asyncpg.Connection) -> tuple[int, list[asyncpg.Record]]:
        counts = await conn.fetchrow(db.QUERIES["outbox_backlog"])
        assert counts is not None
        return counts["dead"], await conn.fetch(db.QUERIES["list_dead"], limit)

    total, rows = _with_connection(settings, work, timeout=timeout)
    items = [
        {
            "id": r["id"],
            "tracking_number": r["tracking_number"],
            "status": _what_was_sent(r["kind"], r["new_status"], r["level"]),
            # issue 12: a staff alert's recipient (users.id); None: the ticket's citizen
            "recipient_id": str(r["recipient_id"]) if r["recipient_id"] else None,
            "attempts": r["attempts"],
            "error_code": r["error_code"],
            "error": scrub(r["last_error"]),
            "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps({"dead": total, "rows": items}, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("no dead letters")
        return
    header = ["id", "ticket", "status", "code", "error"]
    table = [
        [
            str(i["id"]),
            i["tracking_number"] or "(ticket deleted)",
            str(i["status"]),
            "" if i["error_code"] is None else str(i["error_code"]),
            str(i["error"] or ""),
        ]
        for i in items
    ]
    widths = [max(len(header[c]), *(len(row[c]) for row in table)) for c in range(4)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            [cells[0].rjust(widths[0])]
            + [cells[c].ljust(widths[c]) for c in range(1, 4)]
            + [cells[4]]
        ).rstrip()

    click.echo(click.style(line(header), bold=True))
    for row in table:
        click.echo(line(row))
    click.echo(f"({len(items)} of {total} dead; sla-daemon outbox retry-dead re-queues them)")


def _what_was_sent(kind: str, new_status: str, level: int | None) -> str:
    """A dead letter's message, as list-dead shows it."""
    if kind == "staff_escalation":
        return f"staff alert: escalation level {level}"
    if kind == "staff_warning":
        return "staff alert: warning"
    return "escalation notice" if kind == "escalation" else new_status


@outbox.command("retry-dead")
@click.option(
    "--id",
    "ids",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="N",
    help="Re-queue this dead row (repeat for more). Without --id: every dead row.",
)
@click.option("--yes", "-y", is_flag=True, help="Re-queue every dead row without asking.")
@_timeout_option
@click.pass_context
def retry_dead(ctx: click.Context, ids: tuple[int, ...], yes: bool, timeout: float) -> None:
    """Put dead letters back in the queue, once their cause is fixed.

    A row that is no longer its ticket's newest status is superseded, not sent: the
    citizen never gets an older status after a newer one. Staff alerts are judged per
    recipient: a newer alert to the same person supersedes one, a citizen's status not.
    A running daemon picks the rows up at once; otherwise they go when it next starts.
    """
    settings = _settings(ctx)
    if not ids and not yes:

        async def count(conn: asyncpg.Connection) -> int:
            row = await conn.fetchrow(db.QUERIES["outbox_backlog"])
            assert row is not None
            return int(row["dead"])

        dead = _with_connection(settings, count, timeout=timeout)
        if not dead:
            click.echo("no dead letters: nothing to re-queue")
            return
        if not sys.stdin.isatty():
            _fail(f"re-queue all {dead} dead letters? Add --yes (or pick rows with --id)", EX_USAGE)
        click.confirm(f"Re-queue all {dead} dead letters?", abort=True)

    async def requeue(conn: asyncpg.Connection) -> int | list[int]:
        """All the given rows or none: an id that is no dead letter is a mistake."""
        async with conn.transaction():
            if ids:
                dead = {r["id"] for r in await conn.fetch(db.QUERIES["dead_ids"], list(ids))}
                if wrong := sorted(set(ids) - dead):
                    return wrong
            n = await conn.fetchval(db.QUERIES["requeue_dead"], list(ids) if ids else None)
            return int(n)

    n = _with_connection(settings, requeue, timeout=timeout)
    if isinstance(n, list):
        listed = ", ".join(map(str, n))
        _fail(
            f"no dead letter with id {listed} (sla-daemon outbox list-dead shows them);"
            " nothing re-queued",
            EX_USAGE,
        )
    click.echo(f"re-queued {n} dead letter{'' if n == 1 else 's'}")


@main.command(short_help="Ask a running daemon's /healthz (the image's HEALTHCHECK).")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=4.0, show_default=True)
@click.pass_context
def healthcheck(ctx: click.Context, timeout: float) -> None:
    """Exit 0 when the daemon on SLA_DAEMON_METRICS_ADDRESS answers /healthz with 200,
    1 when it does not; 0 with a note when metrics are off (nothing to ask, so the
    container's health is left to its restart policy)."""
    import urllib.error
    import urllib.request

    from .config import split_host_port

    settings = _settings(ctx)
    if not settings.metrics_address:
        click.echo("metrics are off (SLA_DAEMON_METRICS_ADDRESS=off): no /healthz to ask")
        return
    host, port = split_host_port(settings.metrics_address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            click.echo(answer.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        _fail(f"{url}: {exc.code} {exc.read().decode(errors='replace')}", 1)
    except (OSError, TimeoutError) as exc:
        _fail(f"{url}: {exc}", 1)


@main.group()
def sla() -> None:
    """SLA deadlines: explain how one was reached."""


@sla.command("explain")
@click.argument("tracking_number")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@_timeout_option
@click.pass_context
def sla_explain(ctx: click.Context, tracking_number: str, as_json: bool, timeout: float) -> None:
    """How TRACKING_NUMBER's deadlines were reached: the config and where it comes
    from, the calendar, the cycle's start, the business hours counted, the closures
    and pauses skipped, the escalation levels fired. Exits 66 for no such ticket."""
    from .explain import format_explanation

    settings = _settings(ctx)

    async def work(conn: asyncpg.Connection) -> str | None:
        text: str | None = await conn.fetchval(db.QUERIES["explain_ticket"], tracking_number)
        return text

    text = _with_connection(settings, work, timeout=timeout)
    if text is None:
        _fail(f"no ticket with tracking number {tracking_number!r}", EX_NOINPUT)
    doc = json.loads(text)
    click.echo(
        json.dumps(doc, indent=2, ensure_ascii=False) if as_json else format_explanation(doc)
    )


@main.group()
def calendar() -> None:
    """Business calendars: hours, closures, public holidays, which tickets use which.

    Changes recompute the deadlines of live tickets that have not passed. They need
    the migration role's DATABASE_URL (or a member of sla_daemon_owner): the daemon's
    own role may read calendars, never change them.
    """


def _calendar_change(ctx: click.Context, timeout: float, query: str, *args: object) -> int:
    """Run one calendar function; bad input is one line and exit 65."""
    settings = _settings(ctx)

    async def work(conn: asyncpg.Connection) -> int:
        try:
            async with conn.transaction():
                return int(await conn.fetchval(db.QUERIES[query], *args) or 0)
        except _INPUT_ERRORS as exc:
            raise _Refused(f"refused: {exc}") from None

    return _with_connection(settings, work, timeout=timeout)


def _moved(n: int) -> str:
    return f"{n} live ticket{'' if n == 1 else 's'} got new deadlines"


@calendar.command("define")
@click.argument("name")
@click.option("--time-zone", default="Africa/Johannesburg", show_default=True)
@click.option(
    "--holidays",
    "country",
    default="ZA",
    show_default=True,
    help="Whose public holidays close it (a country code of the holidays package; 'none').",
)
@_timeout_option
@click.pass_context
def calendar_define(
    ctx: click.Context, name: str, time_zone: str, country: str, timeout: float
) -> None:
    """Create calendar NAME, or change its time zone or holidays."""
    holiday_country = None if country.lower() == "none" else country.upper()
    _calendar_change(ctx, timeout, "define_calendar", name, time_zone, holiday_country)
    click.echo(f"calendar {name}: {time_zone}, {holiday_country or 'no'} public holidays")


@calendar.command("hours")
@click.argument("name")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@_timeout_option
@click.pass_context
def calendar_hours(ctx: click.Context, name: str, specs: tuple[str, ...], timeout: float) -> None:
    """Replace NAME's weekly opening hours, e.g.

    \b
    sla-daemon calendar hours office 'mon-fri 08:00-12:30,13:30-16:30' 'sat 08:00-12:00'
    """
    from .calendars import parse_hours

    try:
        rows = parse_hours(list(specs))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SPEC") from None
    n = _calendar_change(
        ctx,
        timeout,
        "set_calendar_hours",
        name,
        [r.weekday for r in rows],
        [r.opens for r in rows],
        [r.closes for r in rows],
    )
    click.echo(f"calendar {name}: {len(rows)} opening intervals a week; {_moved(n)}")


@calendar.command("close")
@click.argument("name")
@click.argument("day", type=click.DateTime(["%Y-%m-%d"]))
@click.argument("reason")
@_timeout_option
@click.pass_context
def calendar_close(
    ctx: click.Context, name: str, day: datetime, reason: str, timeout: float
) -> None:
    """Close NAME on DAY (YYYY-MM-DD) for REASON (a municipal day, ...)."""
    n = _calendar_change(ctx, timeout, "add_closure", name, day.date(), reason)
    click.echo(f"calendar {name}: closed on {day.date()}; {_moved(n)}")


@calendar.command("reopen")
@click.argument("name")
@click.argument("day", type=click.DateTime(["%Y-%m-%d"]))
@_timeout_option
@click.pass_context
def calendar_reopen(ctx: click.Context, name: str, day: datetime, timeout: float) -> None:
    """Remove NAME's own closure on DAY."""
    n = _calendar_change(ctx, timeout, "remove_closure", name, day.date())
    click.echo(f"calendar {name}: open on {day.date()}; {_moved(n)}")


@calendar.command("assign")
@click.argument("municipality", type=click.UUID)
@click.argument("name")
@click.option("--category", help="Only this category of the municipality's tickets.")
@_timeout_option
@click.pass_context
def calendar_assign(
    ctx: click.Context, municipality: UUID, name: str, category: str | None, timeout: float
) -> None:
    """Run MUNICIPALITY's tickets (or one --category) on calendar NAME; '24/7' for the
    wall clock (say, water and electricity outages on a business-hours municipality)."""
    cal = None if name == "24/7" else name
    n = _calendar_change(ctx, timeout, "assign_calendar", municipality, category, cal)
    click.echo(f"{municipality}{f' {category}' if category else ''}: {name}; {_moved(n)}")


@calendar.command("add-holiday")
@click.argument("day", type=click.DateTime(["%Y-%m-%d"]))
@click.argument("name")
@click.option("--country", default="ZA", show_default=True)
@_timeout_option
@click.pass_context
def calendar_add_holiday(
    ctx: click.Context, day: datetime, name: str, country: str, timeout: float
) -> None:
    """A public holiday the holidays package does not know yet (a declared day): every
    calendar with COUNTRY's holidays closes; a package reload never removes it."""
    n = _calendar_change(ctx, timeout, "add_public_holiday", country.upper(), day.date(), name)
    click.echo(f"{country.upper()} public holiday {day.date()} {name}; {_moved(n)}")


@calendar.command("load-holidays")
@_timeout_option
@click.pass_context
def calendar_load_holidays(ctx: click.Context, timeout: float) -> None:
    """Load the public holidays of the installed holidays package (also done by every
    migrate), from 2020 to five years ahead, and move every calendar's horizon on."""
    from .calendars import load_public_holidays

    settings = _settings(ctx)

    async def work(conn: asyncpg.Connection) -> dict[str, int]:
        async with conn.transaction():
            return await load_public_holidays(conn)

    loaded = _with_connection(settings, work, timeout=timeout, command_timeout=None)
    click.echo(", ".join(f"{c}: {n} holidays loaded" for c, n in loaded.items()))


@main.command(short_help="Watch the daemon work, live, in well under a minute.")
@click.option(
    "--seconds",
    type=click.FloatRange(4, 600),
    default=20.0,
    show_default=True,
    help="The demo SLA's response deadline (resolution: 3x, warning at 50%). "
    "The demo lasts about this long plus a few seconds.",
)
@click.option("-v", "--verbose", is_flag=True, help="Also show the daemon's log (stderr).")
@click.pass_context
def demo(ctx: click.Context, seconds: float, verbose: bool) -> None:
    """Watch the daemon work, live: WhatsApp texts in three languages, a warning, an
    escalation; then stop and clean up (also on Ctrl-C).

    \b
    Without DATABASE_URL: a private PostgreSQL in a temporary folder, stopped
    and removed at the end (needs sla-daemon[embedded]).
    With DATABASE_URL: that database, migrated; the demo's rows are tagged
    DEMO-xxxx- and deleted at the end. It refuses a database holding other
    tickets or queued messages, or where another sla-daemon is connected
    (its daemon would act on them).

    Nothing is sent: the daemon runs in dry run with made-up numbers, and the
    texts are read back from the outbox and shown with the numbers masked.
    """
    settings = _settings(ctx)
    if not verbose:
        logging.getLogger().setLevel(logging.ERROR)
    try:
        from .demo import DemoError, run_demo

        try:
            code = run_demo(settings, aio.run, seconds=seconds)
        except DemoError as exc:
            _fail(f"demo: {exc}", exc.code)
    except KeyboardInterrupt:  # before the demo's own handlers were in place
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)


@main.group()
def templates() -> None:
    """WhatsApp templates (Twilio Content API), built from the message catalogs."""


@templates.command("show")
def templates_show() -> None:
    """Print every template's Content API definition as JSON (nothing is sent)."""
    from .messages import MessageCatalog
    from .templates import definitions

    catalog = MessageCatalog.load()
    out = {d.key: d.as_content() for d in definitions(catalog)}
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@templates.command("push")
@click.pass_context
def templates_push(ctx: click.Context) -> None:
    """Create every template through the Content API, request WhatsApp approval, and
    print the SIDs as the JSON for SLA_DAEMON_TWILIO_CONTENT_SIDS (on stdout)."""
    from twilio.base.exceptions import TwilioException

    from .messages import MessageCatalog
    from .templates import push

    settings = _settings(ctx)
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        _fail("templates push needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN", EX_CONFIG)
    try:
        sids = push(settings, MessageCatalog.load())
    except (TwilioException, OSError, TimeoutError) as exc:
        _fail(f"the Content API refused or did not answer: {exc}", EX_UNAVAILABLE)
    click.echo(json.dumps(sids, sort_keys=True))
    click.echo(
        "set SLA_DAEMON_TWILIO_CONTENT_SIDS to the line above once WhatsApp has approved"
        " them (check: sla-daemon check)",
        err=True,
    )
