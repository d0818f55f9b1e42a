"""The README's least-privilege role is enough for the daemon, and no more is needed."""

from __future__ import annotations

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
    block = re.search(r"The daemon's login role, once `migrate`.*?```sql\n(.*?)```", text, re.S)
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
        .replace("ROLE sla_daemon LOGIN", f"ROLE {role} LOGIN")
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
            await fake.wait_for(2)  # the escalation notice, the manager's staff alert
            await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", other)
            await fake.wait_for(3)
            assert await wait_until_finished(conn) == Counter({"sent": 3})
        # the staff alert too needs no more than the README's grants (issue 12)
        assert [m.to for m in fake.messages].count("whatsapp:+27830000000") == 1
        assert await conn.fetchval("SELECT count(*) FROM tickets WHERE status = 'escalated'") == 1
