"""The README's least-privilege role is enough for the daemon, and no more is needed."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from . import factories as f
from .daemon_harness import daemon_settings, running
from .fake_twilio import FakeTwilio
from .test_daemon import wait_until_finished

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_grants() -> str:
    text = README.read_text()
    block = re.search(r"### A least-privilege database role\n.*?```sql\n(.*?)```", text, re.S)
    assert block, "README lost its GRANT block"
    return block.group(1)


def as_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@contextlib.asynccontextmanager
async def readme_role(conn: asyncpg.Connection, dsn: str) -> AsyncIterator[str]:
    """A login role (password 'pw') with exactly the README's grants; dropped after."""
    role = f"sla_daemon_{abs(hash(dsn)) % 10**8}"
    sql = (
        readme_grants()
        .replace("ROLE sla_daemon", f"ROLE {role}")
        .replace("TO sla_daemon;", f"TO {role};")
        .replace("PASSWORD '...'", "PASSWORD 'pw'")
    )
    await conn.execute(sql)
    try:
        yield role
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_daemon_runs_with_only_the_readme_grants(conn: asyncpg.Connection, dsn: str) -> None:
    async with readme_role(conn, dsn) as role:
        mid = await f.municipality(conn)
        manager = await f.user(conn, "0830000000")
        team = await f.team(conn, mid, manager)
        citizen = await f.user(conn, "0821234567", "zu")
        past = await conn.fetchval("SELECT now() - interval '1 hour'")
        await f.ticket(
            conn, mid, user_id=citizen, assigned_team_id=team, sla_response_deadline=past
        )
        other = await f.ticket(conn, mid, user_id=citizen)
        async with FakeTwilio() as fake, running(daemon_settings(as_user(dsn, role, "pw"), fake)):
            await fake.wait_for(1)  # the escalation notice
            await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", other)
            await fake.wait_for(2)
            assert await wait_until_finished(conn) == Counter({"sent": 2})
        assert await conn.fetchval("SELECT count(*) FROM tickets WHERE status = 'escalated'") == 1


def readme_writer_grants() -> str:
    text = README.read_text()
    block = re.search(r"Every other client that changes tickets.*?```sql\n(.*?)```", text, re.S)
    assert block, "README lost its writers' GRANT block"
    return block.group(1)


async def test_platform_writers_need_only_the_readme_grants(
    conn: asyncpg.Connection, dsn: str
) -> None:
    role = f"platform_app_{abs(hash(dsn)) % 10**8}"
    await conn.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD 'pw';"
        f" GRANT USAGE ON SCHEMA public TO {role};"
        f" GRANT SELECT, INSERT, UPDATE ON public.tickets TO {role};"
        f" GRANT SELECT ON public.municipalities, public.users, public.teams,"
        f" public.sla_configs TO {role};"
    )
    await conn.execute(readme_writer_grants().replace("platform_app", role))
    try:
        mid = await f.municipality(conn)
        await f.sla_config(conn, mid, "water", 2, 48)
        await conn.execute("SELECT sla_daemon.outbox_sleep()")  # the sender is asleep
        writer = await asyncpg.connect(as_user(dsn, role, "pw"))
        try:
            woken: asyncio.Queue[str] = asyncio.Queue()
            await conn.add_listener("sla_daemon_outbox", lambda *a: woken.put_nowait(a[2]))
            tid = await f.ticket(writer, mid, "water")
            await writer.execute("UPDATE tickets SET category = 'roads' WHERE id = $1", tid)
            for status in ("in_progress", "resolved", "open"):  # the last one reopens
                await writer.execute("UPDATE tickets SET status = $1 WHERE id = $2", status, tid)
            await asyncio.wait_for(woken.get(), 10)
        finally:
            await writer.close()
        assert await conn.fetchval("SELECT count(*) FROM sla_daemon.messages") == 3
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM sla_daemon.deadlines WHERE ticket_id = $1", tid
            )
            == 2
        )
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
