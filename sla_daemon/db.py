"""Connections, the named queries of ``sql/queries.sql`` and the migration runner.

This is the only module that knows where the SQL files are. Migrations are numbered
files in ``sql/migrations``, applied in order, each in its own transaction, recorded
in ``sla_daemon.schema_migrations`` and serialised by an advisory lock so two
processes starting together cannot both apply one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

__all__ = [
    "DB_ERRORS",
    "QUERIES",
    "SCHEMA",
    "Migration",
    "MigrationError",
    "connect",
    "create_pool",
    "load_migrations",
    "migrate",
    "pending_migrations",
    "sql_dir",
]

log = logging.getLogger(__name__)

#: Anything that runs a query: a connection, a pooled one, or the pool itself.
Executor = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool

SCHEMA = "sla_daemon"
MIGRATION_LOCK = (5459011, 0)
#: How long migrate waits for another session's migration lock before saying who holds it.
MIGRATION_LOCK_TIMEOUT = "60s"

#: Every session of ours resolves names only in pg_catalog (pg_temp last: named, else
#: it would be searched first for types and tables), so nothing another role plants in
#: public or in its own pg_temp can match what our SQL names; our SQL qualifies the rest.
SEARCH_PATH = "pg_catalog, pg_temp"

#: What a lost or failing database raises through asyncpg. InternalClientError is
#: what asyncpg says when the server vanishes in the middle of its own protocol.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

#: Every connection of ours: named in pg_stat_activity, with its search_path pinned.
SERVER_SETTINGS = {"application_name": "sla-daemon", "search_path": SEARCH_PATH}

# The listener and the pool must never wait forever on a dead server.
COMMAND_TIMEOUT = 60.0


def sql_dir() -> Path:
    """The ``sql/`` folder: inside the installed package, else beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(f"sla-daemon's sql/ folder is missing (looked beside {here})")


_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def _load_queries(path: Path) -> Mapping[str, str]:
    text = path.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{path}: query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


QUERIES: Mapping[str, str] = _load_queries(sql_dir() / "queries.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A migration failed or the recorded history does not match the files."""


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir() / "migrations"
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = re.match(r"^(\d{4})_([a-z0-9_]+)\.sql$", path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return migrations


_BOOTSTRAP = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


async def _applied(conn: Executor) -> dict[int, str]:
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.schema_migrations"
    )
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT version, checksum FROM {SCHEMA}.schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def pending_migrations(conn: Executor) -> list[Migration]:
    """Migrations not yet applied (for ``check``: the schema is current when empty)."""
    applied = await _applied(conn)
    return [m for m in load_migrations() if m.version not in applied]


_SETTLE = f"SELECT {SCHEMA}.settle_ownership()"
_HAS_SETTLE = f"SELECT pg_catalog.to_regprocedure('{SCHEMA}.settle_ownership()') IS NOT NULL"


async def _take_migration_lock(conn: asyncpg.Connection) -> None:
    """The runner's advisory lock, waited for at most MIGRATION_LOCK_TIMEOUT.

    Any role may take any advisory key, so a foreign session could hold this one: the
    wait is bounded and the error names the holder."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'")
            await conn.execute("SELECT pg_catalog.pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    except asyncpg.LockNotAvailableError:
        holder = await conn.fetchval(
            "SELECT pg_catalog.string_agg(pg_catalog.format('pid %s (%s)', l.pid, a.usename),"
            " ', ') FROM pg_catalog.pg_locks l"
            " LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2",
            *MIGRATION_LOCK,
        )
        raise MigrationError(
            f"another session holds the migration lock {MIGRATION_LOCK} "
            f"({holder or 'holder unknown'}); waited {MIGRATION_LOCK_TIMEOUT}"
        ) from None


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply what is missing; returns what was applied. Safe to run concurrently.

    Runs with a pinned search_path (restored afterwards), and after each migration
    hands every object in the schema to its owner role (migration 0006)."""
    migrations = load_migrations()
    saved_path = await conn.fetchval("SELECT pg_catalog.current_setting('search_path')")
    await conn.execute(f"SET search_path = {SEARCH_PATH}")
    try:
        await _take_migration_lock(conn)
    except BaseException:
        await conn.execute("SELECT pg_catalog.set_config('search_path', $1, false)", saved_path)
        raise
    try:
        await conn.execute(_BOOTSTRAP)
        applied = await _applied(conn)
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    log.warning(
                        "migration %04d_%s changed after it was applied; not re-applied",
                        m.version,
                        m.name,
                    )
                continue
            log.info("applying migration %04d_%s", m.version, m.name)
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                    if await conn.fetchval(_HAS_SETTLE):
                        await conn.execute(_SETTLE)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}") from exc
        await _load_holidays(conn)
        return [m for m in migrations if m.version not in applied]
    finally:
        await conn.execute("SELECT pg_catalog.pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)
        await conn.execute("SELECT pg_catalog.set_config('search_path', $1, false)", saved_path)


async def _load_holidays(conn: asyncpg.Connection) -> None:
    """Every migrate loads the public holidays for the coming years (and so moves every
    calendar's horizon on): one transaction, under the migration lock."""
    if not await conn.fetchval(QUERIES["has_calendars"]):
        return
    from .calendars import load_public_holidays  # the holidays package, only here

    try:
        async with conn.transaction():
            loaded = await load_public_holidays(conn)
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"loading public holidays failed: {exc}") from exc
    log.info("public holidays loaded: %s", loaded)


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """One dedicated connection (the listener, the migration runner, the CLI)."""
    kwargs.setdefault("command_timeout", COMMAND_TIMEOUT)
    kwargs["server_settings"] = {**SERVER_SETTINGS, **kwargs.get("server_settings", {})}
    return await asyncpg.connect(dsn, **kwargs)


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """The pool for everything but LISTEN (a pool runs UNLISTEN * on release)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=COMMAND_TIMEOUT,
        server_settings=SERVER_SETTINGS,
        # The pool never LISTENs, sets session state or holds session locks, so the
        # default reset query on every release is a wasted round trip (asyncpg still
        # rolls back a transaction left open).
        reset=_no_reset,
    )
    assert pool is not None
    return pool
