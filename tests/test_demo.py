"""``sla-daemon demo`` end to end, as a user runs it: a real process, a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from sla_daemon.embedded import process_alive
from sla_daemon.messages import MessageCatalog

from . import factories as f
from .test_cli import cli, cli_env
from .waiting import eventually

CATALOG = MessageCatalog.load()
SERVER = re.compile(r"running: pid (\d+), data (\S+)")
PREFIX = re.compile(r"\b(DEMO-[0-9a-f]{4}-)\d")


async def gone(pid: int, within: float = 10) -> bool:
    """Wait (bounded) for ``pid`` to end: the postmaster may take a moment after exit."""
    with contextlib.suppress(TimeoutError):
        await eventually(lambda: not process_alive(pid), within, what=f"pid {pid} gone")
    return not process_alive(pid)


def kill_if_ours(pid: int, data_dir: Path) -> None:
    """SIGKILL ``pid`` if it is the server of ``data_dir`` (a failed test's leftover)."""
    with contextlib.suppress(OSError):
        if str(data_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


@dataclass
class Demo:
    """``python -m sla_daemon demo`` with its output collected line by line."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    server_pid: int | None = None
    data_dir: Path | None = None

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    async def read(self, until: str | None = None, timeout: float = 120) -> None:
        """Collect lines until one contains ``until`` (or the end of output)."""
        assert self.proc.stdout
        async with asyncio.timeout(timeout):
            while line := await self.proc.stdout.readline():
                text = line.decode().rstrip("\n")
                self.lines.append(text)
                if (m := SERVER.search(text)) and self.server_pid is None:
                    self.server_pid, self.data_dir = int(m[1]), Path(m[2])
                if until is not None and until in text:
                    return

    async def finish(self, timeout: float = 120) -> int:
        await self.read(timeout=timeout)
        return await asyncio.wait_for(self.proc.wait(), 10)


@contextlib.asynccontextmanager
async def demo(*args: str, env: dict[str, str]) -> AsyncIterator[Demo]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sla_daemon",
        "demo",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    run = Demo(proc)
    try:
        yield run
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # Never leave a server behind, even when the test failed.
        if (
            run.server_pid is not None
            and run.data_dir is not None
            and process_alive(run.server_pid)
        ):
            kill_if_ours(run.server_pid, run.data_dir)


async def test_demo_shows_messages_in_three_languages_and_an_escalation_then_cleans_up() -> None:
    started = time.monotonic()
    async with demo(env=cli_env()) as run:
        code = await run.finish(timeout=120)
    elapsed = time.monotonic() - started
    out = run.out
    assert code == 0, out
    assert elapsed < 60, f"the demo took {elapsed:.0f}s"
    match = PREFIX.search(out)
    assert match, out
    prefix = match[1]
    # Each citizen's texts, in their language, rendered as the daemon would send them.
    expected = [
        CATALOG.render_status("in_progress", "en", f"{prefix}1"),
        CATALOG.render_status("resolved", "en", f"{prefix}1"),
        CATALOG.render_status("closed", "en", f"{prefix}1"),
        CATALOG.render_status("in_progress", "zu", f"{prefix}2"),
        CATALOG.render_status("resolved", "zu", f"{prefix}2"),
        CATALOG.render_status("in_progress", "af", f"{prefix}3"),
        CATALOG.render_status("resolved", "af", f"{prefix}3"),
        CATALOG.render_escalation("zu", f"{prefix}4"),
    ]
    for text in expected:
        assert text in out, f"missing {text!r} in:\n{out}"
    assert re.search(rf"WARNING\s+{prefix}4: .*response", out), out
    assert re.search(rf"ESCALATED\s+{prefix}4: response deadline .* team manager", out), out
    assert "8 WhatsApp messages to citizens" in out and "1 warning, 1 escalation" in out
    # a second escalation level, with no second message to the citizen
    assert re.search(rf"ESCALATED\s+{prefix}4: still unresolved, level 2 .* department head", out)
    # Issue 12: the team manager (isiZulu) and then the department head (Afrikaans) get a
    # staff alert each, as approved templates (staff never wrote: no 24-hour window).
    for who, lang, level, phone in (
        ("team manager", "zu", 1, "0009"),
        ("department head", "af", 2, "0008"),
    ):
        alert = CATALOG.render_staff(
            "staff_escalation",
            lang,
            {
                "tracking_number": f"{prefix}4",
                "category": "refuse",
                "overdue": "OVERDUE",
                "level": str(level),
                "deadline": "",
            },
        )
        pattern = re.escape(alert).replace("OVERDUE", r"\d+ min")
        assert re.search(rf"template to the {who} \+27\*+{phone} \[{lang}\]: {pattern}", out), out
    assert "2 staff alerts" in out
    # the business-hours ticket's deadline skips the office's closure
    assert re.search(
        rf"ticket\s+{prefix}5 \(billing\) on office hours .* skipping .*Demo municipal day", out
    ), out
    # Issue 13: Twilio's signed callbacks into the real endpoint show the ticks; one
    # citizen's STOP keeps the next message to them from being sent.
    assert re.search(rf"ticks\s+{prefix}1 'resolved': delivered", out), out
    assert re.search(rf"ticks\s+{prefix}1 'resolved': read", out), out
    assert '+27*****0003 wrote on WhatsApp: "STOP"' in out
    assert re.search(rf"{prefix}3 'closed' to \+27\*+0003: NOT sent: the number opted out", out)
    assert "10 delivered, 10 read; 1 STOP, 1 message not sent" in out
    assert CATALOG.render_status("closed", "af", f"{prefix}3") not in out
    # Phones are masked; the output is plain text when not a terminal.
    assert "+27*****0002" in out
    assert "082 000" not in out and "27820000" not in out
    assert "\x1b[" not in out and "Traceback" not in out
    # The server is stopped (by PID) and its data removed.
    assert run.server_pid is not None and run.data_dir is not None, out
    assert await gone(run.server_pid), f"postgres {run.server_pid} still runs"
    assert not run.data_dir.exists()
    assert f"PostgreSQL (pid {run.server_pid}) stopped; removed {run.data_dir}" in out


async def test_ctrl_c_stops_the_demo_and_cleans_up() -> None:
    async with demo("--seconds", "20", env=cli_env()) as run:
        await run.read(until="whatsapp", timeout=60)  # mid-flow: the daemon is sending
        assert run.server_pid is not None and run.data_dir is not None, run.out
        run.proc.send_signal(signal.SIGINT)
        code = await run.finish(timeout=60)
    assert code == 130, run.out
    assert "SIGINT: cleaning up" in run.out and "Traceback" not in run.out
    assert "daemon    stopped" in run.out
    assert await gone(run.server_pid), f"postgres {run.server_pid} still runs"
    assert not run.data_dir.exists()


async def test_sigterm_stops_the_demo_and_cleans_up() -> None:
    async with demo("--seconds", "20", env=cli_env()) as run:
        await run.read(until="staff", timeout=60)
        assert run.server_pid is not None and run.data_dir is not None, run.out
        run.proc.send_signal(signal.SIGTERM)
        code = await run.finish(timeout=60)
    assert code == 143, run.out
    assert await gone(run.server_pid)
    assert not run.data_dir.exists()


_DEMO_TABLES = (
    "public.tickets",
    "public.users",
    "public.teams",
    "public.municipalities",
    "public.sla_configs",
    "public.ticket_assignments",
    "sla_daemon.outbox",
    "sla_daemon.events",
    "sla_daemon.warnings",
    "sla_daemon.deliveries",
    "sla_daemon.delivery_events",
    "sla_daemon.inbound_messages",
    "sla_daemon.contacts",
)


async def test_demo_on_database_url_migrates_it_and_leaves_no_rows_behind(
    empty_dsn: str,
) -> None:
    async with demo("--seconds", "6", env=cli_env(empty_dsn)) as run:
        code = await run.finish(timeout=90)
    assert code == 0, run.out
    assert "using DATABASE_URL" in run.out and "applied 0001_platform_tables" in run.out
    assert "ESCALATED" in run.out and "deleted the demo's rows" in run.out
    assert run.server_pid is None  # no embedded server
    conn = await asyncpg.connect(empty_dsn)
    try:
        for table in _DEMO_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await conn.close()


async def test_demo_refuses_a_database_with_real_tickets(
    conn: asyncpg.Connection, dsn: str
) -> None:
    mid = await f.municipality(conn)
    await f.ticket(conn, mid, created_at=await conn.fetchval("SELECT now() - interval '3 days'"))
    result = await cli("demo", "--seconds", "6", env=cli_env(dsn), timeout=60)
    assert result.code == 1, result.text
    assert "tickets that are not the demo's (1)" in result.err and "Traceback" not in result.text
    # The platform's breached ticket was not escalated, and the demo left nothing.
    assert await conn.fetchval("SELECT status::text FROM tickets") == "open"
    assert await conn.fetchval("SELECT count(*) FROM municipalities") == 1


@pytest.mark.parametrize("seconds", ["3", "abc"])
async def test_demo_rejects_a_bad_duration(seconds: str) -> None:
    result = await cli("demo", "--seconds", seconds, env=cli_env(), timeout=30)
    assert result.code == 64 and "--seconds" in result.err


def test_an_interrupted_initdb_pid_is_never_a_process_group(tmp_path: Path) -> None:
    from sla_daemon.embedded import postmaster_pid

    (tmp_path / "postmaster.pid").write_text("-4242\n/data\n")
    assert postmaster_pid(tmp_path) == 4242  # initdb's backend writes its PID negated
    (tmp_path / "postmaster.pid").write_text("-1\n")
    assert postmaster_pid(tmp_path) is None
