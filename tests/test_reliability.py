"""Health that tells the truth, failover URLs, keepalives, and start-up that fails clearly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from sla_daemon.daemon import Daemon
from sla_daemon.health import describe_error
from sla_daemon.listener import KEEPALIVE, Listener, set_keepalive

from . import factories as f
from .daemon_harness import cut_pool, daemon_settings, running
from .test_cli import cli, cli_env
from .test_privileges import as_user, readme_role
from .waiting import eventually


async def healthz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    assert daemon.metrics_server is not None and daemon.metrics_server.port
    url = f"http://127.0.0.1:{daemon.metrics_server.port}/healthz"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.json()


async def scrape(daemon: Daemon) -> str:
    assert daemon.metrics_server is not None
    url = f"http://127.0.0.1:{daemon.metrics_server.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return await r.text()


async def health_is(
    daemon: Daemon, status: int, timeout: float = 15, containing: str = ""
) -> dict[str, Any]:
    """The first /healthz answer with this status (and ``containing`` in its detail): a
    503 may first give another reason (pool=down while connections are cut)."""

    async def check() -> dict[str, Any] | None:
        got, body = await healthz(daemon)
        return body if got == status and containing in body["detail"] else None

    return await eventually(check, timeout=timeout, what=f"/healthz answering {status}")


# --- health ----------------------------------------------------------------------------


async def test_a_read_only_database_is_unhealthy_until_it_can_write_again(
    conn: asyncpg.Connection, dsn: str
) -> None:
    mid = await f.municipality(conn)
    uid = await f.user(conn, "0821234567")
    tid = await f.ticket(conn, mid, user_id=uid)
    database = await conn.fetchval("SELECT current_database()")
    async with running(daemon_settings(dsn, None)) as daemon:
        await health_is(daemon, 200)
        assert daemon.listener is not None
        # as after a failover: the server the pool talks to accepts no writes
        await conn.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        try:
            await cut_pool(conn, daemon)
            body = await health_is(daemon, 503, containing="pool=read-only")
            assert "sla_daemon_healthy 0.0" in await scrape(daemon)
        finally:
            await conn.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        # nobody restarts it: the daemon reconnects its pool and works again
        body = await health_is(daemon, 200)
        assert body["detail"] == "listener=ok pool=ok"
        await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
        await eventually(
            lambda: conn.fetchval("SELECT bool_and(state = 'dry_run') FROM sla_daemon.outbox"),
            what="the status change handled after recovery",
        )


async def test_a_loop_that_keeps_failing_makes_the_daemon_unhealthy_until_fixed(
    conn: asyncpg.Connection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sla_daemon.health")
    async with readme_role(conn, dsn) as role:
        settings = daemon_settings(as_user(dsn, role, "pw"), None, unhealthy_after_seconds=1.5)
        async with running(settings) as daemon:
            await health_is(daemon, 200)
            # every timer pass starts by updating its wake-up row
            await conn.execute("REVOKE UPDATE ON sla_daemon.wakeups FROM sla_daemon_runtime")
            await conn.execute("NOTIFY sla_daemon_timer")
            body = await health_is(daemon, 503, containing="timer loop failing for")
            assert "SQLSTATE 42501" in body["detail"], body

            async def failed_often() -> str | None:
                text = await scrape(daemon)
                for line in text.splitlines():
                    if line.startswith('sla_daemon_loop_failures_total{loop="timer"}'):
                        return text if float(line.split()[-1]) >= 3 else None
                return None

            text = await eventually(failed_often, what="three timer failures")
            failing = next(
                line
                for line in text.splitlines()
                if line.startswith('sla_daemon_loop_failing_seconds{loop="timer"}')
            )
            assert float(failing.split()[-1]) > 0
            await conn.execute("GRANT UPDATE ON sla_daemon.wakeups TO sla_daemon_runtime")
            body = await health_is(daemon, 200)
            assert "loop" not in body["detail"]
            assert 'sla_daemon_loop_failing_seconds{loop="timer"} 0.0' in await scrape(daemon)
    timer_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("timer")]
    # one line for the cause, however many retries; it names the real error
    assert len(timer_lines) == 1, timer_lines
    assert "InsufficientPrivilegeError" in timer_lines[0]
    assert "SQLSTATE 42501" in timer_lines[0]
    assert "TaskGroup" not in caplog.text


async def test_error_description_unwraps_task_groups_and_names_the_sqlstate(
    conn: asyncpg.Connection,
) -> None:
    try:
        await conn.execute("SELECT * FROM no_such_table")
    except asyncpg.PostgresError as exc:
        error: asyncpg.PostgresError = exc
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("x", [error])])
    text = describe_error(group)
    assert text == ('UndefinedTableError: relation "no_such_table" does not exist (SQLSTATE 42P01)')
    twice = ExceptionGroup("g", [error, error, TimeoutError()])
    assert describe_error(twice).count("42P01") == 1 and describe_error(twice).endswith(
        "; TimeoutError"
    )


# --- failover: several hosts in DATABASE_URL -------------------------------------------


def with_refusing_first_host(dsn: str, port: int) -> str:
    """``dsn`` with 127.0.0.1:``port`` (nothing listens) as the first of two hosts."""
    parts = urlsplit(dsn)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "host" in query:  # a Unix socket folder: asyncpg takes host and port lists here
        query["host"] = f"127.0.0.1,{query['host']}"
        query["port"] = f"{port},{query.get('port', '5432')}"
        netloc = parts.netloc
    else:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@127.0.0.1:{port},{hostport}" if userinfo else f"127.0.0.1:{port},"
    query["target_session_attrs"] = "read-write"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


async def test_a_multi_host_url_skips_a_host_that_refuses(
    conn: asyncpg.Connection, dsn: str
) -> None:
    with socket.socket() as refusing:  # bound, never listening: connections are refused
        refusing.bind(("127.0.0.1", 0))
        url = with_refusing_first_host(dsn, refusing.getsockname()[1])
        mid = await f.municipality(conn)
        uid = await f.user(conn, "0821234567")
        tid = await f.ticket(conn, mid, user_id=uid)
        async with running(daemon_settings(url, None)) as daemon:
            assert (await health_is(daemon, 200))["detail"] == "listener=ok pool=ok"
            await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
            await eventually(
                lambda: conn.fetchval("SELECT state = 'dry_run' FROM sla_daemon.outbox"),
                what="the message handled",
            )


# --- keepalives ------------------------------------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        peer, _ = server.accept()
        yield client
        client.close()
        peer.close()


def test_keepalive_is_set_on_a_tcp_socket(tcp_pair: socket.socket) -> None:
    assert tcp_pair.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    assert set_keepalive(tcp_pair) is True
    assert_keepalive(tcp_pair)


def assert_keepalive(sock: Any) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE["idle"]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE["interval"]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE["count"]
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 11_000


def test_keepalive_is_a_no_op_on_a_unix_socket() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert set_keepalive(left) is False
    assert set_keepalive(None) is False


@contextlib.asynccontextmanager
async def tcp_proxy(dsn: str) -> AsyncIterator[str]:
    """A TCP port on 127.0.0.1 forwarding to the test server; yields ``dsn`` through it."""
    parts = urlsplit(dsn)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    socket_dir = query.pop("host", None)
    port = int(query.pop("port", "0") or 0) or parts.port or 5432

    async def open_upstream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if socket_dir:
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(parts.hostname, port)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await open_upstream()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))
    finally:
        server.close()


async def test_the_listener_sets_keepalives_on_its_tcp_connection(dsn: str) -> None:
    async with tcp_proxy(dsn) as via_tcp:
        listener = Listener(via_tcp, {"sla_daemon_outbox": asyncio.Event()})
        await asyncio.wait_for(listener.connect(), 15)
        try:
            assert listener._conn is not None
            transport: Any = getattr(listener._conn, "_transport", None)
            sock = transport.get_extra_info("socket")
            assert sock.family == socket.AF_INET
            assert_keepalive(sock)
            # the server's end is asked for the same; it reads 0 where it sees a Unix
            # socket (as through this proxy to the embedded server)
            row = await listener._conn.fetchrow(
                "SELECT current_setting('tcp_keepalives_idle') AS idle,"
                " inet_client_addr() IS NULL AS unix"
            )
            assert row is not None
            assert row["idle"] == ("0" if row["unix"] else str(KEEPALIVE["idle"]))
        finally:
            await listener.close()


# --- start-up that cannot work: one line and an exit code --------------------------------


async def test_a_taken_metrics_port_exits_69_with_one_line(dsn: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = await cli("run", env=cli_env(dsn, SLA_DAEMON_METRICS_ADDRESS=address))
    assert result.code == 69, result.text
    (line,) = result.err.strip().splitlines()
    assert address in line and "address already in use" in line, line


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_metrics_on_a_bracketed_ipv6_address(dsn: str) -> None:
    async with running(daemon_settings(dsn, None, metrics_address="[::1]:0")) as daemon:
        assert daemon.metrics_server is not None
        url = f"http://[::1]:{daemon.metrics_server.port}/healthz"
        async with aiohttp.ClientSession() as http:

            async def ok() -> bool:
                async with http.get(url) as r:
                    return r.status == 200

            await eventually(ok, what="/healthz on [::1]")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"SLA_DAEMON_POOL_MAX_SIZE": "1"}, "SLA_DAEMON_POOL_MAX_SIZE (1)"),
        (
            {"SLA_DAEMON_POOL_MIN_SIZE": "9", "SLA_DAEMON_POOL_MAX_SIZE": "8"},
            "SLA_DAEMON_POOL_MIN_SIZE (9)",
        ),
        ({"SLA_DAEMON_OUTBOX_LEASE_SECONDS": "12"}, "SLA_DAEMON_OUTBOX_LEASE_SECONDS (12)"),
        ({"SLA_DAEMON_METRICS_ADDRESS": "::1:9108"}, "[::1]:9108"),
    ],
)
async def test_settings_that_cannot_work_together_exit_78_with_one_line(
    dsn: str, extra: dict[str, str], named: str
) -> None:
    result = await cli("run", env=cli_env(dsn, **extra), timeout=30)
    assert result.code == 78, result.text
    (line,) = result.err.strip().splitlines()
    assert named in line, line
