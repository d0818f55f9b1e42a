"""What an operator watches: systemd notifications, /metrics and /healthz, logs."""

from __future__ import annotations

import asyncio
import signal
import socket

import aiohttp
import asyncpg
import pytest

from . import factories as f
from .daemon_harness import DaemonProcess, daemon_settings, running
from .fake_twilio import FakeTwilio
from .waiting import eventually


async def receive_until(sock: socket.socket, wanted: str, timeout: float = 20) -> list[str]:
    """Datagrams until one contains ``wanted`` (bounded)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            data = (await loop.sock_recv(sock, 4096)).decode()
            seen.append(data)
            if wanted in data:
                return seen


async def test_daemon_tells_systemd_ready_watchdog_status_and_stopping(
    conn: asyncpg.Connection, dsn: str, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    settings = daemon_settings(dsn, None, metrics_address="off", health_interval_seconds=0.2)
    proc = DaemonProcess(settings)
    proc._env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    await proc.start()
    try:
        seen = await receive_until(sock, "READY=1")
        seen += await receive_until(sock, "WATCHDOG=1")
        seen += await receive_until(sock, "STATUS=")
        status = next(s for s in seen if "STATUS=" in s)
        assert "backlog 0" in status and "next deadline" in status
        proc.signal(signal.SIGTERM)
        seen += await receive_until(sock, "STOPPING=1")
        assert await proc.wait() == 0
    finally:
        await proc.kill()


async def test_metrics_and_health_endpoints(conn: asyncpg.Connection, dsn: str) -> None:
    mid = await f.municipality(conn)
    uid = await f.user(conn, "0821234567", "zu")
    past = await conn.fetchval("SELECT now() - interval '1 hour'")
    await f.ticket(conn, mid, user_id=uid, sla_response_deadline=past)
    async with FakeTwilio() as fake, running(daemon_settings(dsn, fake)) as daemon:
        await fake.wait_for(1)
        assert daemon.metrics_server is not None and daemon.metrics_server.port
        base = f"http://127.0.0.1:{daemon.metrics_server.port}"
        async with aiohttp.ClientSession() as http:

            async def scraped() -> str | None:
                # counters move after Twilio answers and after the timer pass
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 200
                    text = await r.text()
                wanted = (
                    'sla_daemon_messages_total{language="zu",outcome="sent"} 1.0',
                    'sla_daemon_escalations_total{breach_type="response"} 1.0',
                )
                return text if all(w in text for w in wanted) else None

            text = await eventually(scraped, what="metrics updated")
            assert "sla_daemon_send_latency_seconds_count 1.0" in text
            assert "sla_daemon_outbox_dead 0.0" in text
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200 and (await r.json())["ok"] is True
            # a dead listener makes the daemon unhealthy until it reconnects
            assert daemon.listener is not None
            daemon.listener.healthy = False
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 503 and "listener=down" in (await r.json())["detail"]


async def test_logs_never_show_a_whole_phone_number(
    conn: asyncpg.Connection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await f.municipality(conn)
    uid = await f.user(conn, "082 765 4321", "en")
    tid = await f.ticket(conn, mid, user_id=uid)
    caplog.set_level("DEBUG")
    async with running(daemon_settings(dsn, None)):  # dry run logs every message
        await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
        await eventually(
            lambda: conn.fetchval("SELECT state = 'dry_run' FROM sla_daemon.outbox"),
            what="row marked dry_run",
        )
    assert "4321" in caplog.text  # the masked tail is there
    for whole in ("0827654321", "+27827654321", "27827654321", "082 765 4321"):
        assert whole not in caplog.text
