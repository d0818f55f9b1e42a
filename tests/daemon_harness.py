"""Running the real daemon in tests: in-process (a task) or as a separate process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from sla_daemon.config import Settings, env_name
from sla_daemon.daemon import Daemon

from .fake_twilio import FakeTwilio

FROM_NUMBER = "+14155238886"


def daemon_settings(dsn: str, fake: FakeTwilio | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "metrics_address": "127.0.0.1:0",
        "send_rate_per_second": 5000,
        "outbox_poll_seconds": 0.5,
        "safety_interval_seconds": 5,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "health_interval_seconds": 0.5,
        "health_timeout_seconds": 1,
        "reconnect_max_seconds": 1,
        "send_timeout_seconds": 2,
        "shutdown_grace_seconds": 5,
    }
    if fake is not None:
        values.update(
            twilio_account_sid=fake.account_sid,
            twilio_auth_token=fake.auth_token,
            twilio_whatsapp_number=FROM_NUMBER,
            twilio_api_base_url=fake.base_url,
        )
    values.update(overrides)
    return Settings(**values)


def daemon_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for a daemon process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLA_DAEMON_", "TWILIO_"))}
    for name, value in settings.model_dump().items():
        if value is None or name == "worker_id":
            continue
        if name == "twilio_auth_token":
            value = value.get_secret_value()
        env[env_name(name)] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return env


@contextlib.asynccontextmanager
async def running(settings: Settings, start_timeout: float = 15) -> AsyncIterator[Daemon]:
    """A daemon in this process, ready (listener up) when the block starts."""
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run(handle_signals=False))
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait(
        {task, ready}, timeout=start_timeout, return_when="FIRST_COMPLETED"
    )
    ready.cancel()
    if task in done:
        task.result()  # raises what stopped it
        raise RuntimeError("daemon exited during start-up")
    if not done:
        task.cancel()
        raise TimeoutError("daemon not ready in time")
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


async def cut_pool(conn: asyncpg.Connection, daemon: Daemon) -> None:
    """Terminate the daemon's pool sessions, not its LISTEN one: a blip under its loops."""
    assert daemon.listener is not None
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'sla-daemon'"
        " AND pid <> $1",
        daemon.listener.backend_pid,
    )


class DaemonProcess:
    """``python -m sla_daemon run`` in its own process group, stopped by PID."""

    def __init__(self, settings: Settings, extra_env: dict[str, str] | None = None) -> None:
        self._env = daemon_env(settings) | (extra_env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sla_daemon",
            "run",
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise TimeoutError(
                "daemon process not ready:\n" + "\n".join(self.lines[-30:])
            ) from None

    async def _read(self) -> None:
        assert self.proc and self.proc.stderr
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            if "running as" in text:
                self._ready.set()

    def signal(self, sig: int) -> None:
        assert self.proc
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.signal(signal.SIGKILL)
            await self.wait()

    async def __aenter__(self) -> DaemonProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc and self.proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await self.wait(20)
            except TimeoutError:
                await self.kill()
