"""The one set-up every part shares: the seeded template database, a part's own
database, connection and daemon, tickets made through the normal path, and the
messages they should produce."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from sla_daemon import db
from sla_daemon.embedded import EmbeddedPostgres
from sla_daemon.messages import MessageCatalog
from sla_daemon.phones import normalize_phone, whatsapp_address

from .common import (
    MANAGER,
    MUNICIPALITY,
    STAFF,
    TEAM,
    TEMPLATE,
    USERS,
    WRITERS,
    Sizes,
)
from .measure import CpuMeter, Measure, WaitSampler
from .processes import DaemonProcess, FakeTwilioProcess
from .records import Expected, FakeClient, delivery_report, reconcile

SEED_SQL = f"""
INSERT INTO municipalities (id, name) VALUES ('{MUNICIPALITY}', 'eThekwini');
INSERT INTO users (id, phone, preferred_language) VALUES
    ('{MANAGER}', '+27 82 999 0001', 'en'), ('{STAFF}', '0829990002', 'en');
INSERT INTO users (id, phone, preferred_language)
SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid,
       '082' || lpad(g::text, 7, '0'),
       (ARRAY['en', 'zu', 'af'])[1 + g % 3]
FROM generate_series(1, {USERS}) g;
INSERT INTO teams (id, tenant_id, name, manager_id)
VALUES ('{TEAM}', '{MUNICIPALITY}', 'Water works', '{MANAGER}');
INSERT INTO sla_configs (municipality_id, category, response_hours, resolution_hours,
                         warning_threshold_pct)
VALUES ('{MUNICIPALITY}', NULL, 24, 168, 80), ('{MUNICIPALITY}', 'water', 12, 72, 80);
"""

# Citizen g (1-based, cycling over USERS) of ticket number g.
_USER_OF = f"('00000000-0000-4000-8000-' || lpad((((g - 1) % {USERS}) + 1)::text, 12, '0'))::uuid"


async def create_tickets(
    conn: asyncpg.Connection,
    prefix: str,
    n: int,
    response_deadline_sql: str | None = None,
) -> list[tuple[Any, str]]:
    """n open tickets through the normal path (triggers on), each with an assignment."""
    cols = "tenant_id, tracking_number, user_id, category, status, assigned_team_id, assigned_to"
    vals = (
        f"'{MUNICIPALITY}'::uuid, '{prefix}' || lpad(g::text, 7, '0'), {_USER_OF}, 'water',"
        f" 'open', '{TEAM}'::uuid, '{STAFF}'::uuid"
    )
    if response_deadline_sql is not None:
        cols += ", sla_response_deadline, sla_resolution_deadline"
        vals += f", {response_deadline_sql}, now() + interval '7 days'"
    await conn.execute(
        f"INSERT INTO tickets ({cols}) SELECT {vals} FROM generate_series(1, {int(n)}) g"
    )
    await conn.execute(
        "INSERT INTO ticket_assignments (ticket_id, assigned_to, assigned_team_id, reason)"
        " SELECT id, assigned_to, assigned_team_id, 'created' FROM tickets"
        " WHERE tracking_number LIKE $1",
        prefix + "%",
    )
    rows = await conn.fetch(
        "SELECT id, tracking_number FROM tickets WHERE tracking_number LIKE $1"
        " ORDER BY tracking_number",
        prefix + "%",
    )
    return [(r["id"], r["tracking_number"]) for r in rows]


async def expected_messages(
    conn: asyncpg.Connection,
    catalog: MessageCatalog,
    tracking_numbers: Sequence[str],
    status: str | None,
) -> Expected:
    """The body each ticket's citizen should get: ``status`` or (None) the escalation notice."""
    rows = await conn.fetch(
        "SELECT t.tracking_number, u.preferred_language FROM tickets t"
        " LEFT JOIN users u ON u.id = t.user_id WHERE t.tracking_number = ANY($1::text[])",
        list(tracking_numbers),
    )
    exp = Expected()
    for r in rows:
        lang = catalog.normalize_language(r["preferred_language"])
        tn = r["tracking_number"]
        if status is None:
            exp.add((tn, "escalation"), catalog.render_escalation(lang, tn))
        else:
            exp.add((tn, status), catalog.render_status(status, lang, tn))
    return exp


async def staff_addresses(conn: asyncpg.Connection) -> frozenset[str]:
    """The WhatsApp addresses staff alerts went to (they are not citizens' messages)."""
    phones = await conn.fetch(
        "SELECT DISTINCT u.phone FROM sla_daemon.outbox o"
        " JOIN users u ON u.id = o.recipient_id WHERE u.phone IS NOT NULL"
    )
    return frozenset(whatsapp_address(normalize_phone(r["phone"])) for r in phones)


async def outbox_states(conn: asyncpg.Connection) -> dict[str, int]:
    """Outbox rows by state; rows still in the writers' intake count as 'intake'."""
    rows = await conn.fetch(
        "SELECT state::text AS state, count(*) AS n FROM sla_daemon.outbox GROUP BY 1"
        " UNION ALL SELECT 'intake', count(*) FROM sla_daemon.outbox_intake"
        if await conn.fetchval("SELECT to_regclass('sla_daemon.outbox_intake') IS NOT NULL")
        else "SELECT state::text AS state, count(*) AS n FROM sla_daemon.outbox GROUP BY 1"
    )
    return {r["state"]: r["n"] for r in rows if r["n"]}


async def wait_outbox_settled(conn: asyncpg.Connection, timeout: float = 15.0) -> dict[str, int]:
    """Wait until no row is pending/sending (outcomes are flushed in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        states = await outbox_states(conn)
        if not states.get("pending") and not states.get("sending") and not states.get("intake"):
            return states
        if time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.05)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Writers set no session state: skip the pool's reset round trip on release."""


class Bench:
    def __init__(
        self,
        pg: EmbeddedPostgres,
        fake: FakeTwilioProcess,
        sizes: Sizes,
        workdir: Path,
        daemon_overrides: dict[str, str],
        profile_dir: Path | None,
        pg_waits: bool = False,
    ) -> None:
        self.pg_waits = pg_waits
        self.pg = pg
        self.fake_proc = fake
        self.sizes = sizes
        self.workdir = workdir
        self.overrides = daemon_overrides
        self.profile_dir = profile_dir
        self.catalog = MessageCatalog.load()
        self.fake: FakeClient
        self.daemons: list[DaemonProcess] = []

    # set-up helpers

    async def make_template(self) -> None:
        admin = await asyncpg.connect(self.pg.dsn())
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.pg.dsn(TEMPLATE))
        try:
            await db.migrate(conn)
            await conn.execute(SEED_SQL)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def part(
        self, name: str, **connect: Any
    ) -> AsyncIterator[tuple[str, asyncpg.Connection, DaemonProcess]]:
        """A part's fresh database, a connection to it and its daemon (not started yet);
        the daemon is stopped and the connection closed however the part ends."""
        dsn = await self.new_database(f"bench_{name}")
        conn = await asyncpg.connect(dsn, **connect)
        daemon = self.daemon(name, dsn)
        try:
            yield dsn, conn, daemon
        finally:
            daemon.stop()
            await conn.close()

    async def new_database(self, name: str) -> str:
        admin = await asyncpg.connect(self.pg.dsn())
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name}")
            await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        finally:
            await admin.close()
        return self.pg.dsn(name)

    def daemon(self, name: str, dsn: str) -> DaemonProcess:
        env = self.fake_proc.daemon_env(dsn, f"bench-{name}", self.overrides)
        d = DaemonProcess(name, env, self.workdir)
        self.daemons.append(d)
        return d

    async def measure(self, daemon: DaemonProcess | None, dsn: str) -> Measure:
        cpu = CpuMeter(
            {
                "daemon": daemon.pid if daemon else None,
                "fake_twilio": self.fake_proc.proc.pid if self.fake_proc.proc else None,
            },
            self.pg.pid,
        )
        waits = WaitSampler(dsn if self.pg_waits else None)
        await waits.__aenter__()
        return Measure(cpu, waits)

    async def deliveries(
        self,
        conn: asyncpg.Connection,
        since: int,
        expected: Expected,
        outbox_rows: int,
        only: set[str] | None = None,
    ) -> tuple[dict[str, Any], dict[tuple[str, str], float], list[tuple[float, str, str]]]:
        complete = only is None
        states = await wait_outbox_settled(conn, 15.0 if complete else 1.0)
        await asyncio.sleep(0.3)  # a duplicate would arrive now, if at all
        received = await self.fake.messages(since)
        stats, first = reconcile(received, expected, only, await staff_addresses(conn))
        return delivery_report(stats, states, outbox_rows, complete), first, received

    # parts

    async def tickets_to_progress(
        self, conn: asyncpg.Connection, prefix: str, n: int
    ) -> tuple[list[tuple[Any, str]], Expected]:
        """n open tickets, and the 'in_progress' message each should produce."""
        tickets = await create_tickets(conn, prefix, n)
        tns = [tn for _, tn in tickets]
        return tickets, await expected_messages(conn, self.catalog, tns, "in_progress")

    async def write_all(
        self, dsn: str, tickets: Sequence[tuple[Any, str]], status: str
    ) -> tuple[float, float]:
        """WRITERS connections commit one UPDATE per ticket, as fast as they can."""
        conns = [await asyncpg.connect(dsn) for _ in range(WRITERS)]
        update = f"UPDATE tickets SET status = '{status}' WHERE id = $1"
        try:
            for c in conns:  # prepared before the clock starts
                await c.prepare(update)

            async def writer(c: asyncpg.Connection, share: Sequence[tuple[Any, str]]) -> None:
                for ticket_id, _tn in share:
                    await c.execute(update, ticket_id)

            started = time.time()
            await asyncio.gather(*(writer(c, tickets[i::WRITERS]) for i, c in enumerate(conns)))
            return started, time.time()
        finally:
            for c in conns:
                await c.close()
