"""A real PostgreSQL for every test, each test in its own database.

Where the server comes from, in order: ``SLA_DAEMON_TEST_DSN``; testcontainers'
PostgreSQL when a Docker engine answers; else an embedded server (pgserver), which
works on a bare machine and as root. Each test gets a fresh database cloned from a
template that was migrated once, so tests are isolated and cheap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sla_daemon import db

log = logging.getLogger(__name__)

TEMPLATE = "sla_daemon_template"
_counter = itertools.count()


def with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _server() -> Iterator[str]:
    dsn = os.environ.get("SLA_DAEMON_TEST_DSN")
    if dsn:
        yield dsn
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from sla_daemon.embedded import start_embedded

    pg = start_embedded()
    try:
        yield pg.dsn()
    finally:
        pg.stop()


@dataclass(frozen=True)
class Server:
    admin_dsn: str

    async def create_database(self, template: str | None = TEMPLATE) -> str:
        name = f"t_{os.getpid()}_{next(_counter)}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            clause = f" TEMPLATE {template}" if template else ""
            await conn.execute(f"CREATE DATABASE {name}{clause}")
        finally:
            await conn.close()
        return with_database(self.admin_dsn, name)

    async def drop_database(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def pg_server() -> AsyncIterator[Server]:
    with _server() as admin_dsn:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        tmpl = await asyncpg.connect(with_database(admin_dsn, TEMPLATE))
        try:
            await db.migrate(tmpl)
        finally:
            await tmpl.close()
        yield Server(admin_dsn)


@pytest.fixture
async def dsn(pg_server: Server) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    url = await pg_server.create_database()
    yield url
    await pg_server.drop_database(url)


@pytest.fixture
async def empty_dsn(pg_server: Server) -> AsyncIterator[str]:
    """A fresh database with nothing in it (not even the platform tables)."""
    url = await pg_server.create_database(template="template0")
    yield url
    await pg_server.drop_database(url)


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(dsn)
    yield c
    await c.close()


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(dsn, min_size=1, max_size=8)
    yield p
    await p.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, and its path."""
    folder = Path(tempfile.mkdtemp(prefix="sdn"))
    path = str(folder / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()
    Path(path).unlink(missing_ok=True)
    folder.rmdir()
