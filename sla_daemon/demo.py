"""``sla-daemon demo``: the whole flow, live, in well under a minute.

With no DATABASE_URL it starts a private PostgreSQL (``sla_daemon.embedded``) in a
temporary folder; with one, it uses that database (see below). It migrates, seeds a
municipality whose SLA is counted in seconds, three citizens (English, isiZulu,
Afrikaans) and a team with a manager, runs the real :class:`~sla_daemon.daemon.Daemon`
in this process (always in dry run: nothing is sent, the numbers are made up), has
"staff" change ticket statuses from a separate connection, and prints what happens as
it happens: the WhatsApp texts each citizen would get, in their language (read back
from the outbox as the daemon finishes each row, rendered by the message catalog,
phones masked), the SLA warning, the escalation when a deadline passes, and the staff
alerts to the team manager and (level 2) the department head, in their languages. Its
webhook endpoint is on (loopback): Twilio's side is played by signed requests into it
(``sla_daemon.demo_twilio``), so each message shows its delivered and read ticks,
and one citizen's STOP keeps the next message from being sent.

It then stops the daemon, stops the server by its PID and removes the temporary
folder. Ctrl-C (or SIGTERM) at any moment does the same cleanup and exits 130 (143).

With DATABASE_URL set, the demo's rows are tagged (tracking numbers ``DEMO-xxxx-N``,
municipality "Demo Municipality (DEMO-xxxx)") and deleted at the end, interrupted or
not. Because its daemon would escalate and dry-run (that is, swallow the messages of)
every ticket in that database, it refuses a database that holds tickets other than
demo ones, or where another sla-daemon is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import click
from pydantic import SecretStr

from . import db
from .calendars import set_hours
from .check import DatabaseUnavailable, connect, describe_target
from .config import Settings
from .daemon import Daemon
from .demo_twilio import ACCOUNT_SID, DEMO_PUBLIC_URL, SimulatedTwilio, new_sid
from .embedded import kill_pid, postmaster_pid, process_alive
from .messages import MessageCatalog
from .phones import InvalidPhoneError, mask_phone, normalize_phone, whatsapp_address
from .staff import STAFF_KINDS, values_for

__all__ = ["DemoError", "run_demo"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, int]], int]

DEFAULT_SECONDS = 20.0
MUNICIPALITY = "Demo Municipality"
WARNING_PCT = 50
#: Resolution deadline = this many response deadlines.
RESOLUTION_FACTOR = 3


class DemoError(Exception):
    """The demo cannot run (or did not see what it should); the text says why."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Citizen:
    phone: str
    language: str  # as the platform stores it; the daemon normalises it


CITIZENS = (
    Citizen("082 000 0001", "en"),
    Citizen("082 000 0002", "isiZulu"),
    Citizen("082 000 0003", "af-ZA"),
)
MANAGER_PHONE = "082 000 0009"
MANAGER_LANGUAGE = "zu"  # staff alerts come in the staff member's own language
HEAD_PHONE = "082 000 0008"  # the department head: escalation level 2
HEAD_LANGUAGE = "af"

#: The business-hours ticket: billing on an office calendar closed the next working day.
BUSINESS_CALENDAR = "demo-office"
BUSINESS_HOURS = "mon-fri 08:00-16:30"
BUSINESS_RESPONSE_HOURS = 12
BUSINESS_TICKET = 5

#: (ticket number, citizen index, category); ticket 4 is left open and will escalate.
TICKETS = ((1, 0, "water"), (2, 1, "electricity"), (3, 2, "roads"), (4, 1, "refuse"))

#: Staff actions: (fraction of the response deadline, ticket number, new status).
STAFF_SCRIPT = (
    (0.10, 1, "in_progress"),
    (0.15, 2, "in_progress"),
    (0.20, 3, "in_progress"),
    (0.30, 1, "resolved"),
    (0.35, 2, "resolved"),
    (0.40, 3, "resolved"),
    (0.45, 1, "closed"),
)
ESCALATING_TICKET = 4
#: What each citizen writes first (on WhatsApp, opening its 24-hour window).
GREETINGS = ("Hello", "Sawubona", "Goeie dag")
#: The citizen who sends STOP once their "resolved" message is read, and whose ticket
#: staff then close: that "closed" message is not sent.
STOPPING_TICKET = 3


class Printer:
    """One line per event, stamped with the time since the demo started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, tag: str, text: str, colour: str | None = None, bold: bool = False) -> None:
        stamp = click.style(f"+{self.elapsed():5.1f}s", dim=True)
        label = click.style(tag.ljust(9), fg=colour, bold=True)
        click.echo(f"{stamp}  {label} {click.style(text, bold=bold) if bold else text}")


@dataclass
class Seeded:
    prefix: str
    municipality: str
    municipality_id: UUID
    team_id: UUID
    manager_id: UUID
    user_ids: list[UUID]
    head_id: UUID
    calendar: str
    tickets: dict[int, str] = field(default_factory=dict)  # number -> tracking number


@dataclass
class Seen:
    """What the watcher has printed so far."""

    outbox_ids: set[int] = field(default_factory=set)
    last_event_id: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    warnings: int = 0
    escalations: int = 0
    levels: int = 0
    escalation_notice: bool = False
    #: issue 12: WhatsApp alerts to the staff a ticket was escalated to
    staff_alerts: int = 0
    unfinished: int = 0
    #: issue 13: per message SID, the tick shown (delivered, read); rows not sent
    ticks: dict[str, str] = field(default_factory=dict)
    read: set[tuple[str, str]] = field(default_factory=set)  # (tracking, status)
    read_more: asyncio.Event = field(default_factory=asyncio.Event)
    not_sent: int = 0
    stops: int = 0


# --- entry point ------------------------------------------------------------------------


def run_demo(settings: Settings, run: Runner, *, seconds: float = DEFAULT_SECONDS) -> int:
    """Run the demo; returns the exit code. ``run`` runs a coroutine (the CLI's uvloop)."""
    out = Printer()
    if settings.database_url:
        out(
            "database",
            f"using DATABASE_URL ({describe_target(settings.database_url)}); demo rows are "
            "tagged DEMO- and deleted at the end",
            "cyan",
        )
        return run(_demo(settings, settings.database_url, out, seconds, shared=True))
    return _with_embedded(settings, run, out, seconds)


def _with_embedded(settings: Settings, run: Runner, out: Printer, seconds: float) -> int:
    """Start a private PostgreSQL, run the demo on it, and always stop and remove it."""
    from .embedded import start_embedded

    data_dir = Path(tempfile.mkdtemp(prefix="sla-daemon-demo-"))
    pg = None
    pid: int | None = None
    # Until the event loop takes over the signals, SIGTERM interrupts like Ctrl-C does.
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _terminate)
    try:
        out("postgres", f"starting an embedded PostgreSQL in {data_dir}", "cyan")
        try:
            pg = start_embedded(data_dir)
        except Exception as exc:
            raise DemoError(f"cannot start the embedded PostgreSQL: {exc}", 69) from None
        pid = pg.pid
        version = pg.psql("SHOW server_version;").split("\n")
        shown = next((v.strip() for v in version[2:] if v.strip()), "?")
        out("postgres", f"PostgreSQL {shown} running: pid {pid}, data {data_dir}", "cyan")
        return run(_demo(settings, pg.dsn(), out, seconds, shared=False))
    finally:
        # Cleanup must finish: a second Ctrl-C or a SIGTERM now would leave a server behind.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.stop()
        pid = pid or postmaster_pid(data_dir)
        if pid is not None and process_alive(pid):
            kill_pid(pid)
        _remove(data_dir)
        gone = pid is None or not process_alive(pid)
        removed = not data_dir.exists()
        server = (
            "no server was running"
            if pid is None
            else f"PostgreSQL (pid {pid}) {'stopped' if gone else 'STILL RUNNING'}"
        )
        out(
            "postgres",
            f"{server}; {'removed' if removed else 'could NOT remove'} {data_dir}",
            "cyan" if gone and removed else "red",
        )
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _remove(data_dir: Path) -> None:
    """Remove the data folder, after ending whatever still writes into it.

    An interrupted start can leave initdb's bootstrap backend running for a moment
    (its parent was killed); it is found by the folder, unique to this run, on its
    command line.
    """
    for _ in range(50):
        for pid in _processes_using(data_dir):
            kill_pid(pid)
        shutil.rmtree(data_dir, ignore_errors=True)
        if not data_dir.exists():
            return
        time.sleep(0.1)


def _processes_using(data_dir: Path) -> list[int]:
    needle = str(data_dir).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if pid != os.getpid()]


# --- the demo itself --------------------------------------------------------------------


async def _demo(settings: Settings, dsn: str, out: Printer, seconds: float, *, shared: bool) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    received: list[signal.Signals] = []
    cleaning = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        # Once: cancelling the cleanup itself would leave things behind.
        if not received and not cleaning.is_set():
            out("stop", f"{sig.name}: cleaning up", "yellow")
            main.cancel()
        received.append(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await _demo_body(settings, dsn, out, seconds, cleaning, shared=shared)
    except asyncio.CancelledError:
        if not received:
            raise
        main.uncancel()
        return 128 + received[0].value
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _demo_body(
    settings: Settings,
    dsn: str,
    out: Printer,
    seconds: float,
    cleaning: asyncio.Event,
    *,
    shared: bool,
) -> int:
    catalog = MessageCatalog.load()
    prefix = f"DEMO-{secrets.token_hex(2)}-"
    try:
        admin = await connect(dsn, application_name="sla-daemon-demo")
    except DatabaseUnavailable as exc:
        raise DemoError(str(exc), exc.code) from None
    daemon: Daemon | None = None
    daemon_task: asyncio.Task[int] | None = None
    seeded: Seeded | None = None
    staff: asyncpg.Connection | None = None
    script: asyncio.Task[None] | None = None
    stop: asyncio.Task[None] | None = None
    ticks: set[asyncio.Task[None]] = set()
    twilio: SimulatedTwilio | None = None
    try:
        if shared:  # before migrating: a platform database is not the demo's to change
            await _refuse_shared(admin)
        applied = await db.migrate(admin)
        out(
            "migrate",
            "applied " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
            if applied
            else "schema is up to date",
            "cyan",
        )
        seeded = await _seed(admin, prefix, seconds, shared)
        out(
            "seed",
            f'"{seeded.municipality}": SLA response {seconds:g}s, resolution '
            f"{seconds * RESOLUTION_FACTOR:g}s, warning at {WARNING_PCT}%; 3 citizens, "
            "a team with a manager",
            "cyan",
        )
        token = secrets.token_hex(16)
        daemon = Daemon(_daemon_settings(settings, dsn, seconds, prefix, token))
        daemon_task = asyncio.create_task(daemon.run(handle_signals=False))
        await _until_ready(daemon, daemon_task)
        out("daemon", "running in this process (dry run: texts are shown, not sent)", "cyan")
        assert daemon.webhook_server is not None and daemon.webhook_server.port is not None
        twilio = SimulatedTwilio(daemon.webhook_server.port, token)
        await twilio.start()
        staff = await connect(dsn, application_name="demo-staff")
        seen = Seen()
        db_zero: datetime = await admin.fetchval("SELECT clock_timestamp()")
        zero = out.elapsed()

        def at(moment: datetime) -> float:
            """A database timestamp as seconds since the demo started."""
            return zero + (moment - db_zero).total_seconds()

        await _greet(twilio, out)
        await _report_tickets(staff, seeded, out)
        await _business_hours_ticket(staff, seeded, out)
        script = asyncio.create_task(_staff_script(staff, seeded, seconds, out))
        stop = asyncio.create_task(_stop_and_close(twilio, staff, seeded, seen, out))
        deadline = time.monotonic() + seconds * 1.2 + 20
        while True:
            for row_id, to in await _watch_once(admin, seeded, catalog, seen, out, at):
                ticks.add(asyncio.create_task(_ticks(twilio, row_id, to)))
            if daemon_task.done():
                script.cancel()
                error = None if daemon_task.cancelled() else daemon_task.exception()
                raise DemoError(f"the daemon stopped unexpectedly: {error!r}")
            finished = script.done() and stop.done() and all(t.done() for t in ticks)
            staffed = seen.staff_alerts >= 2  # the team manager's and the department head's
            if (
                finished
                and seen.escalation_notice
                and seen.levels
                and staffed
                and not seen.unfinished
            ):
                await _watch_once(admin, seeded, catalog, seen, out, at)  # the last ticks
                break
            if time.monotonic() > deadline:
                script.cancel()
                raise DemoError(
                    "the demo did not see everything in time "
                    f"(escalation notice sent: {seen.escalation_notice}, "
                    f"level 2 fired: {seen.levels > 0}, "
                    f"staff alerts sent: {seen.staff_alerts}, "
                    f"messages still queued: {seen.unfinished}); see the daemon's log with -v"
                )
            await asyncio.sleep(0.1)
        await script  # re-raises a failed staff update
        await stop
        await asyncio.gather(*ticks)
        by_language = ", ".join(f"{lang} {n}" for lang, n in sorted(seen.messages.items()))
        out(
            "summary",
            f"{sum(seen.messages.values())} WhatsApp messages to citizens ({by_language}), "
            f"{seen.staff_alerts} staff alerts, "
            f"{seen.warnings} warning, {seen.escalations} escalation (then level 2); "
            f"{sum(1 for t in seen.ticks.values() if t in ('delivered', 'read'))} delivered,"
            f" {sum(1 for t in seen.ticks.values() if t == 'read')} read; {seen.stops} STOP,"
            f" {seen.not_sent} message not sent",
            "green",
            bold=True,
        )
        missing = [
            what
            for what, ok in (
                ("a warning", seen.warnings > 0),
                ("an escalation", seen.escalations > 0),
                ("a second escalation level", seen.levels > 0),
                ("the staff alerts of both levels", seen.staff_alerts >= 2),
                ("all three languages", len(seen.messages) >= 3),
                ("a read message", "read" in seen.ticks.values()),
                ("a message not sent after STOP", seen.not_sent > 0),
            )
            if not ok
        ]
        if missing:
            raise DemoError("the demo did not show " + ", ".join(missing))
        return 0
    finally:
        cleaning.set()
        background = [t for t in (script, stop, *ticks) if t is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if twilio is not None:
            await twilio.close()
        await _shutdown(out, admin, staff, daemon, daemon_task, seeded if shared else None)


async def _shutdown(
    out: Printer,
    admin: asyncpg.Connection,
    staff: asyncpg.Connection | None,
    daemon: Daemon | None,
    daemon_task: asyncio.Task[int] | None,
    shared_rows: Seeded | None,
) -> None:
    """Stop the daemon, delete the demo's rows (shared database), close connections.

    Runs after Ctrl-C too (the signal handler cancels the demo once, never again); each
    step is bounded, and a failed step does not skip the next.
    """
    if daemon is not None and daemon_task is not None:
        daemon.stop()
        done, _ = await asyncio.wait({daemon_task}, timeout=20)
        if done and not daemon_task.cancelled() and daemon_task.exception() is None:
            out("daemon", "stopped", "cyan")
        else:
            daemon_task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(daemon_task, 5)
            out("daemon", "stopped abruptly", "yellow")
    if staff is not None:
        with contextlib.suppress(Exception):
            await staff.close(timeout=5)
    if shared_rows is not None:
        try:
            counts = await asyncio.wait_for(_delete_demo_rows(admin, shared_rows), 20)
            out("cleanup", f"deleted the demo's rows ({counts})", "cyan")
        except Exception as exc:
            out(
                "cleanup",
                f"could NOT delete the demo's rows ({type(exc).__name__}: {exc}); they are "
                f"tagged {shared_rows.prefix}",
                "red",
            )
    with contextlib.suppress(Exception):
        await admin.close(timeout=5)


def _daemon_settings(
    settings: Settings, dsn: str, seconds: float, prefix: str, token: str
) -> Settings:
    """The operator's settings, but: this database, dry run, quick loops, no metrics port,
    and the webhook endpoint on loopback, checking signatures with the demo's own token.
    Staff never wrote to the desk (no 24-hour window): their alerts go as approved
    templates, made-up content SIDs here (dry run: nothing reaches Twilio)."""
    staff_templates = {
        f"{kind}:{lang}": f"HXdemo{kind.removeprefix('staff_')}{lang}"
        for kind in STAFF_KINDS
        for lang in MessageCatalog.load().languages
    }
    return settings.model_copy(
        update={
            "twilio_content_sids": staff_templates | settings.twilio_content_sids,
            "database_url": dsn,
            "dry_run": True,
            "webhook_address": "127.0.0.1:0",
            "webhook_public_url": DEMO_PUBLIC_URL,
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": SecretStr(token),
            "metrics_address": "",
            "pool_min_size": 1,
            "pool_max_size": max(4, settings.pool_needed),
            "outbox_poll_seconds": 0.5,
            "safety_interval_seconds": max(1.0, seconds / 4),
            "health_interval_seconds": 1.0,
            "health_timeout_seconds": 2.0,
            "reconnect_max_seconds": 2.0,
            "shutdown_grace_seconds": 3.0,
            "worker_id": f"demo:{prefix.strip('-').lower()}:{os.getpid()}",
        }
    )


async def _until_ready(daemon: Daemon, task: asyncio.Task[int], within: float = 20) -> None:
    ready = asyncio.ensure_future(daemon.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=within, return_when="FIRST_COMPLETED")
    finally:
        ready.cancel()
    if task in done:
        exc = task.exception()
        raise DemoError(f"the daemon stopped during start-up: {exc}")
    if not done:
        raise DemoError(f"the daemon was not ready within {within:g}s")


async def _refuse_shared(conn: asyncpg.Connection) -> None:
    """The demo's daemon acts on the whole database: refuse one with real work in it."""
    tickets, outbox = await conn.fetchrow(
        "SELECT to_regclass('public.tickets') IS NOT NULL,"
        " to_regclass('sla_daemon.outbox') IS NOT NULL"
    ) or (False, False)
    others = tickets and await conn.fetchval(
        "SELECT count(*) FROM public.tickets WHERE tracking_number NOT LIKE 'DEMO-%'"
    )
    if others:
        raise DemoError(
            f"the database in DATABASE_URL holds tickets that are not the demo's ({others}): "
            "its daemon would escalate them and swallow their messages (dry run). Use an "
            "empty database, or unset DATABASE_URL for an embedded one"
        )
    queued = outbox and await conn.fetchval(
        "SELECT count(*) FROM sla_daemon.messages WHERE state IN ('pending', 'sending')"
    )
    daemons = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'sla-daemon' AND pid <> pg_backend_pid()"
    )
    if daemons:
        raise DemoError(
            "another sla-daemon is connected to the database in DATABASE_URL: it would send "
            "the demo's made-up messages for real. Stop it, or unset DATABASE_URL"
        )
    if queued:
        raise DemoError(
            f"the outbox of the database in DATABASE_URL has {queued} queued messages: the "
            "demo's daemon would swallow them (dry run). Use an empty database"
        )


async def _seed(conn: asyncpg.Connection, prefix: str, seconds: float, shared: bool) -> Seeded:
    """Municipality, SLA in seconds, citizens, a team and its manager: one transaction."""
    name = f"{MUNICIPALITY} ({prefix.rstrip('-')})" if shared else MUNICIPALITY
    hours = seconds / 3600.0
    async with conn.transaction():
        mid = await conn.fetchval(
            "INSERT INTO public.municipalities (name) VALUES ($1) RETURNING id", name
        )
        await conn.execute(
            "INSERT INTO public.sla_configs (municipality_id, category, response_hours,"
            " resolution_hours, warning_threshold_pct, is_active)"
            " VALUES ($1, NULL, $2::numeric, $3::numeric, $4, true)",
            mid,
            hours,
            hours * RESOLUTION_FACTOR,
            WARNING_PCT,
        )
        user_ids = [
            await conn.fetchval(
                "INSERT INTO public.users (phone, preferred_language) VALUES ($1, $2) RETURNING id",
                c.phone,
                c.language,
            )
            for c in CITIZENS
        ]
        manager = await conn.fetchval(
            "INSERT INTO public.users (phone, preferred_language) VALUES ($1, $2) RETURNING id",
            MANAGER_PHONE,
            MANAGER_LANGUAGE,
        )
        team = await conn.fetchval(
            "INSERT INTO public.teams (tenant_id, name, manager_id) VALUES ($1, $2, $3)"
            " RETURNING id",
            mid,
            "Demo Service Team",
            manager,
        )
        head = await conn.fetchval(
            "INSERT INTO public.users (phone, preferred_language) VALUES ($1, $2) RETURNING id",
            HEAD_PHONE,
            HEAD_LANGUAGE,
        )
        # level 2: the department head, a quarter of the response time after the deadline
        await conn.execute(
            "INSERT INTO sla_daemon.escalation_levels (municipality_id, level, after_hours,"
            " assign_to) VALUES ($1, 2, $2::numeric, $3)",
            mid,
            min(seconds / 4, 5.0) / 3600,
            head,
        )
        # billing runs on office hours, and the office is closed on the next working day
        await conn.execute(
            "INSERT INTO public.sla_configs (municipality_id, category, response_hours,"
            " resolution_hours, warning_threshold_pct, is_active)"
            " VALUES ($1, 'billing', $2, $3, $4, true)",
            mid,
            BUSINESS_RESPONSE_HOURS,
            BUSINESS_RESPONSE_HOURS * RESOLUTION_FACTOR,
            WARNING_PCT,
        )
        calendar = f"{BUSINESS_CALENDAR}-{prefix.rstrip('-').lower()}"
        await conn.execute("SELECT sla_daemon.define_calendar($1)", calendar)
        await set_hours(conn, calendar, [BUSINESS_HOURS])
        await conn.execute(
            "SELECT sla_daemon.add_closure($1, d, 'Demo municipal day')"
            " FROM (SELECT min(d)::date AS d FROM generate_series("
            "   (now() AT TIME ZONE 'Africa/Johannesburg')::date + 1,"
            "   (now() AT TIME ZONE 'Africa/Johannesburg')::date + 7, interval '1 day') d"
            "  WHERE extract(isodow FROM d) <= 5) x",
            calendar,
        )
        await conn.execute("SELECT sla_daemon.assign_calendar($1, 'billing', $2)", mid, calendar)
    return Seeded(prefix, name, mid, team, manager, user_ids, head, calendar)


async def _report_tickets(conn: asyncpg.Connection, seeded: Seeded, out: Printer) -> None:
    """Citizens report problems: the platform inserts a ticket per report."""
    for number, citizen, category in TICKETS:
        tracking = f"{seeded.prefix}{number}"
        await conn.execute(
            "INSERT INTO public.tickets (tenant_id, tracking_number, user_id, category,"
            " assigned_team_id) VALUES ($1, $2, $3, $4, $5)",
            seeded.municipality_id,
            tracking,
            seeded.user_ids[citizen],
            category,
            seeded.team_id,
        )
        seeded.tickets[number] = tracking
        who = CITIZENS[citizen]
        out("ticket", f"{tracking} ({category}) reported by {_masked(who.phone)} [{who.language}]")


async def _business_hours_ticket(conn: asyncpg.Connection, seeded: Seeded, out: Printer) -> None:
    """A billing query on office hours: its deadline skips nights, weekends, public
    holidays and the office's closure, as ``sla-daemon sla explain`` tells."""
    tracking = f"{seeded.prefix}{BUSINESS_TICKET}"
    await conn.execute(
        "INSERT INTO public.tickets (tenant_id, tracking_number, user_id, category,"
        " assigned_team_id) VALUES ($1, $2, $3, 'billing', $4)",
        seeded.municipality_id,
        tracking,
        seeded.user_ids[0],
        seeded.team_id,
    )
    seeded.tickets[BUSINESS_TICKET] = tracking
    doc = json.loads(await conn.fetchval(db.QUERIES["explain_ticket"], tracking))
    skipped = "; ".join(f"{c['day']} {c['name']}" for c in doc["closures"])
    due = datetime.fromisoformat(doc["deadlines"]["response"]["deadline"])
    local = due.astimezone(ZoneInfo(doc["calendar"]["time_zone"]))
    out(
        "ticket",
        f"{tracking} (billing) on office hours ({BUSINESS_HOURS}): response due"
        f" {local:%a %d %b %H:%M} SAST, {BUSINESS_RESPONSE_HOURS} business hours later,"
        f" skipping {skipped}",
    )


def _address(phone: str | None) -> str:
    return whatsapp_address(normalize_phone(phone))


async def _greet(twilio: SimulatedTwilio, out: Printer) -> None:
    """Each citizen writes to the desk on WhatsApp first (opening their 24-hour window)."""
    for citizen, text in zip(CITIZENS, GREETINGS, strict=True):
        await twilio.inbound(_address(citizen.phone), text)
        out("citizen", f'{_masked(citizen.phone)} wrote on WhatsApp: "{text}"', "magenta")


async def _ticks(twilio: SimulatedTwilio, row_id: int, to: str) -> None:
    """Twilio's callbacks for one message: sent, delivered, then read a moment later."""
    sid = new_sid()
    for status, pause in (("sent", 0.2), ("delivered", 0.6), ("read", 0.0)):
        await twilio.status(row_id, sid, to, status)
        await asyncio.sleep(pause)


async def _stop_and_close(
    twilio: SimulatedTwilio, conn: asyncpg.Connection, seeded: Seeded, seen: Seen, out: Printer
) -> None:
    """Once the "resolved" message of ticket 3 is read, its citizen sends STOP; then staff
    close the ticket, and that message is not sent."""
    tracking = seeded.tickets[STOPPING_TICKET]
    while (tracking, "resolved") not in seen.read:  # bounded by the demo's deadline,
        seen.read_more.clear()  # which cancels this; the watch loop fills seen.read
        await seen.read_more.wait()
    phone = CITIZENS[TICKETS[STOPPING_TICKET - 1][1]].phone
    await twilio.inbound(_address(phone), "STOP")
    seen.stops += 1
    out("citizen", f'{_masked(phone)} wrote on WhatsApp: "STOP"', "magenta")
    await asyncio.sleep(0.5)
    old = await conn.fetchval(
        "UPDATE public.tickets t SET status = 'closed' FROM public.tickets o"
        " WHERE t.id = o.id AND t.tracking_number = $1 RETURNING o.status::text",
        tracking,
    )
    out("staff", f"{tracking}: {old} -> closed", "blue")


async def _staff_script(
    conn: asyncpg.Connection, seeded: Seeded, seconds: float, out: Printer
) -> None:
    """Staff work on tickets 1-3 from their own connection; ticket 4 is forgotten."""
    start = time.monotonic()
    for fraction, number, status in STAFF_SCRIPT:
        await asyncio.sleep(max(0.0, start + fraction * seconds - time.monotonic()))
        tracking = seeded.tickets[number]
        old = await conn.fetchval(
            "UPDATE public.tickets t SET status = $2 FROM public.tickets o"
            " WHERE t.id = o.id AND t.tracking_number = $1 RETURNING o.status::text",
            tracking,
            status,
        )
        out("staff", f"{tracking}: {old} -> {status}", "blue")
    forgotten = seeded.tickets[ESCALATING_TICKET]
    out("staff", f"{forgotten} is left open: nobody responds to it", "blue")


_OUTBOX_DONE = """
SELECT o.id, o.kind, o.new_status, o.state, o.language, o.error_code, o.last_error,
       o.finished_at, o.recipient_id, o.level, o.deadline_at, t.tracking_number, t.category,
       u.phone, u.preferred_language
FROM sla_daemon.outbox o
JOIN public.tickets t ON t.id = o.ticket_id
LEFT JOIN public.users u ON u.id = coalesce(o.recipient_id, t.user_id)
WHERE t.tracking_number LIKE $1 || '%' AND o.state NOT IN ('pending', 'sending')
  AND o.id <> ALL ($2::bigint[])
ORDER BY o.id
"""
_OUTBOX_UNFINISHED = """
SELECT count(*) FROM sla_daemon.outbox o JOIN public.tickets t ON t.id = o.ticket_id
WHERE t.tracking_number LIKE $1 || '%' AND o.state IN ('pending', 'sending')
"""
_TICKS = """
SELECT d.message_sid, d.status, t.tracking_number, o.new_status, o.kind::text AS kind
FROM sla_daemon.deliveries d
JOIN sla_daemon.outbox o ON o.id = d.outbox_id
JOIN public.tickets t ON t.id = o.ticket_id
WHERE t.tracking_number LIKE $1 || '%' AND d.status IN ('delivered', 'read')
ORDER BY d.updated_at
"""
_EVENTS = """
SELECT e.id, e.kind, e.deadline_kind, e.deadline, e.created_at, e.details, e.level,
       t.tracking_number, t.assigned_to, t.created_at AS ticket_created_at
FROM sla_daemon.events e
JOIN public.tickets t ON t.id = e.ticket_id
WHERE e.id > $2 AND t.tracking_number LIKE $1 || '%'
ORDER BY e.id
"""


async def _watch_once(
    conn: asyncpg.Connection,
    seeded: Seeded,
    catalog: MessageCatalog,
    seen: Seen,
    out: Printer,
    at: Callable[[datetime], float],
) -> list[tuple[int, str]]:
    """Print the warnings, escalations, finished outbox rows and delivery ticks not
    printed yet; return the messages newly "sent" (row id, WhatsApp address), for
    their callbacks."""
    sent: list[tuple[int, str]] = []
    for e in await conn.fetch(_EVENTS, seeded.prefix, seen.last_event_id):
        seen.last_event_id = e["id"]
        if e["kind"] == "warning":
            seen.warnings += 1
            details = json.loads(e["details"]) if isinstance(e["details"], str) else {}
            due = details.get("warn_at")
            when = f" (due +{at(datetime.fromisoformat(due)):.1f}s)" if due else ""
            out(
                "WARNING",
                f"{e['tracking_number']}: {WARNING_PCT}% of its {e['deadline_kind']} time is "
                f"used{when}; the deadline is at +{at(e['deadline']):.1f}s",
                "yellow",
                bold=True,
            )
        elif e["level"] is not None and e["level"] > 1:
            seen.levels += 1
            out(
                "ESCALATED",
                f"{e['tracking_number']}: still unresolved, level {e['level']} at"
                f" +{at(e['created_at']):.1f}s: now assigned to the department head"
                f" {_masked(HEAD_PHONE)} (no second message to the citizen)",
                "red",
                bold=True,
            )
        else:
            seen.escalations += 1
            late = (e["created_at"] - e["deadline"]).total_seconds()
            manager = (
                f"now assigned to the team manager {_masked(MANAGER_PHONE)}"
                if e["assigned_to"] == seeded.manager_id
                else "assignee unchanged (no manager)"
            )
            out(
                "ESCALATED",
                f"{e['tracking_number']}: {e['deadline_kind']} deadline (+{at(e['deadline']):.1f}s)"
                f" missed, escalated {late:.2f}s later; {manager}",
                "red",
                bold=True,
            )
    for r in await conn.fetch(_OUTBOX_DONE, seeded.prefix, list(seen.outbox_ids)):
        seen.outbox_ids.add(r["id"])
        tracking = r["tracking_number"]
        lang = r["language"] or catalog.normalize_language(r["preferred_language"])
        to = _masked(r["phone"])
        if r["state"] == "superseded":
            out(
                "whatsapp", f"{tracking} '{r['new_status']}' superseded by a newer status: not sent"
            )
            continue
        if r["state"] == "dead":
            out("whatsapp", f"{tracking} to {to}: NOT sendable: {r['last_error']}", "red")
            continue
        if r["state"] in ("opted_out", "withheld"):
            seen.not_sent += 1
            out(
                "whatsapp",
                f"{tracking} '{r['new_status']}' to {to}: NOT sent: {r['last_error']}",
                "yellow",
            )
            continue
        if r["recipient_id"] is not None:  # issue 12: a staff alert, as the daemon made it
            values = values_for(
                tracking_number=tracking,
                category=r["category"],
                level=r["level"],
                deadline_at=r["deadline_at"],
                time_zone=None,
                now=r["finished_at"].timestamp(),
            )
            body = catalog.render_staff(r["kind"], lang, values)
            who = "team manager" if r["recipient_id"] == seeded.manager_id else "department head"
            seen.staff_alerts += 1
            label = "(dry run) " if r["state"] == "dry_run" else ""
            out("whatsapp", f"{label}template to the {who} {to} [{lang}]: {body}", "green")
            sent.append((r["id"], _address(r["phone"])))
            continue
        if r["kind"] == "escalation":
            body = catalog.render_escalation(lang, tracking)
            seen.escalation_notice = True
        else:
            body = catalog.render_status(r["new_status"], lang, tracking)
        seen.messages[catalog.names.get(lang, lang)] += 1
        label = "(dry run) " if r["state"] == "dry_run" else ""
        out("whatsapp", f"{label}to {to} [{lang}]: {body}", "green")
        sent.append((r["id"], _address(r["phone"])))
    for d in await conn.fetch(_TICKS, seeded.prefix):
        if seen.ticks.get(d["message_sid"]) == d["status"]:
            continue
        seen.ticks[d["message_sid"]] = d["status"]
        what = {"escalation": "escalation notice", "staff_escalation": "staff alert"}.get(
            d["kind"], f"'{d['new_status']}'"
        )
        if d["status"] == "read":
            seen.read.add((d["tracking_number"], d["new_status"]))
            seen.read_more.set()
            out("ticks", f"{d['tracking_number']} {what}: read (two blue ticks)", "blue")
        else:
            out("ticks", f"{d['tracking_number']} {what}: delivered (two grey ticks)")
    seen.unfinished = await conn.fetchval(_OUTBOX_UNFINISHED, seeded.prefix)
    return sent


async def _delete_demo_rows(conn: asyncpg.Connection, seeded: Seeded) -> str:
    """Remove everything the demo created in a shared database, in one transaction."""
    pattern = seeded.prefix + "%"
    users = [*seeded.user_ids, seeded.manager_id, seeded.head_id]
    async with conn.transaction():
        ids = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM public.tickets WHERE tracking_number LIKE $1", pattern
            )
        ]
        for sql in (
            "DELETE FROM sla_daemon.delivery_events WHERE message_sid IN"
            " (SELECT message_sid FROM sla_daemon.deliveries WHERE ticket_id = ANY ($1::uuid[]))",
            "DELETE FROM sla_daemon.deliveries WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.outbox WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.outbox_intake WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.deadlines WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.events WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.warnings WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.level_schedule WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.cycles WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM sla_daemon.pauses WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM public.ticket_assignments WHERE ticket_id = ANY ($1::uuid[])",
            "DELETE FROM public.tickets WHERE id = ANY ($1::uuid[])",
        ):
            await conn.execute(sql, ids)
        for sql in (
            "DELETE FROM public.sla_configs WHERE municipality_id = $1",
            "DELETE FROM sla_daemon.escalation_levels WHERE municipality_id = $1",
            "DELETE FROM sla_daemon.calendar_assignments WHERE municipality_id = $1",
        ):
            await conn.execute(sql, seeded.municipality_id)
        await conn.execute("DELETE FROM sla_daemon.calendars WHERE name = $1", seeded.calendar)
        phones = [normalize_phone(c.phone) for c in CITIZENS]  # what they wrote, STOP
        await conn.execute(
            "DELETE FROM sla_daemon.inbound_messages WHERE phone = ANY ($1::text[])", phones
        )
        await conn.execute("DELETE FROM sla_daemon.contacts WHERE phone = ANY ($1::text[])", phones)
        await conn.execute("DELETE FROM public.teams WHERE id = $1", seeded.team_id)
        await conn.execute("DELETE FROM public.users WHERE id = ANY ($1::uuid[])", users)
        await conn.execute(
            "DELETE FROM public.municipalities WHERE id = $1", seeded.municipality_id
        )
    return f"{len(ids)} tickets, {len(users)} users, 1 team, 1 calendar, 1 municipality"


def _masked(phone: str | None) -> str:
    try:
        return mask_phone(normalize_phone(phone))
    except InvalidPhoneError:
        return mask_phone(phone)
