"""Issue 11: fast, quiet recovery. A private embedded PostgreSQL (this test's only) is
stopped for about 5 s under a running daemon process, by its postmaster's PID, and
started again through its own API. The daemon must be healthy again within a few
seconds (well inside the unit's WatchdogSec=30) and write a handful of lines, no
tracebacks. Timings are bounded generously; the measured figures are printed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from sla_daemon import db
from sla_daemon.config import Settings
from sla_daemon.embedded import EmbeddedPostgres, process_alive, start_embedded

from .daemon_harness import DaemonProcess, daemon_settings
from .test_cli import closed_port
from .waiting import eventually

OUTAGE_SECONDS = 5.0


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    pg = start_embedded()
    try:
        yield pg
    finally:
        pg.stop()


async def _stop(pg: EmbeddedPostgres) -> None:
    """PostgreSQL's fast shutdown (SIGINT to the postmaster), awaited by PID."""
    pid = pg.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    await eventually(lambda: not process_alive(pid), timeout=20, what="postmaster stopped")


async def test_after_an_outage_the_daemon_is_healthy_within_seconds_and_quiet(
    private_server: EmbeddedPostgres,
) -> None:
    pg = private_server
    conn = await asyncpg.connect(pg.dsn())
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    port = closed_port()
    # The shipped reconnect and health settings, not the tests' quick ones.
    settings = daemon_settings(
        pg.dsn(),
        None,
        metrics_address=f"127.0.0.1:{port}",
        health_interval_seconds=5,
        health_timeout_seconds=2,
        reconnect_max_seconds=Settings.model_fields["reconnect_max_seconds"].default,
    )
    healthz = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as http, DaemonProcess(settings) as daemon:

        async def health() -> int:
            try:
                async with http.get(healthz, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status
            except (aiohttp.ClientError, TimeoutError):
                return 0

        await eventually(lambda: _is(health, 200), timeout=20, what="healthy at start")
        before = len(daemon.lines)
        await _stop(pg)
        await eventually(lambda: _is(health, 503), timeout=20, what="unhealthy in the outage")
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for
        await asyncio.to_thread(pg.server.ensure_postgres_running)
        back = time.monotonic()
        await eventually(lambda: _is(health, 200), timeout=25, what="healthy again")
        recovery = time.monotonic() - back
        lines = daemon.lines[before:]
    print(f"\nhealthy {recovery:.1f}s after the server was back; {len(lines)} log lines")
    for line in lines:
        print("  ", line[:160])
    assert recovery < 15, (recovery, lines)
    assert not any("Traceback" in x for x in lines), lines
    assert len(lines) <= 8, lines  # lost, pool failing, pool back, connection back


async def _is(health: object, status: int) -> bool:
    assert callable(health)
    return bool(await health() == status)
