"""sla-daemon end to end: notification latency, throughput, escalation, sweep, writers, memory.

    python -m benchmarks.run [--quick] [--only part,...] [--json out.json]

Everything is real except Twilio: an embedded PostgreSQL 16 (pgserver) with default
durability (fsync and synchronous_commit on: the daemon's claims and finishes are
commits, so turning durability off would flatter exactly what is measured; ``--fast``
exists for comparison only), the real daemon (``python -m sla_daemon run``, one
process per part, so each part's peak RSS is its own), and a recording fake Twilio
(``benchmarks.recording_twilio``, a process) that the daemon's real twilio-python
client posts to. The send rate limit is raised to 100,000/s: the default 80/s is
Twilio's production limit for one sender, not something to benchmark.

Parts (``--only``):

  latency      commit of a status UPDATE -> fake Twilio receives the message; open-loop
               at a fixed rate (scheduled by absolute time), one ticket per update.
  backlog      daemon stopped; 8 writers commit one update on each of N distinct
               tickets; then the daemon starts: messages/s until the last arrives.
  live         daemon running; 8 writers commit N updates on distinct tickets as fast
               as they can: messages/s end to end.
  escalation   tickets whose response deadlines fall 1 ms apart, 2 s ahead:
               escalated_at - deadline.
  sweep        a large tickets table (bulk-loaded, triggers off); one UPDATE makes
               K of them fall due a few seconds later: time until all are escalated,
               and the EXPLAIN (ANALYZE, BUFFERS) plan of the breach query.
  writer_overhead   ``python -m benchmarks.writer_overhead`` (pgbench), embedded.

Lost = outbox rows not ending 'sent'/'superseded', or expected messages never
received; duplicates = the same (ticket, status) received more than once. Progress
goes to stderr; one JSON document to stdout (and to ``--json FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.cpu import cpu_seconds, machine_busy_seconds, postgres_cpu
from sla_daemon import aio, db
from sla_daemon.embedded import EmbeddedPostgres, start_embedded
from sla_daemon.messages import MessageCatalog
from tests.fake_twilio import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("latency", "backlog", "live", "escalation", "sweep", "writer_overhead")
FROM_NUMBER = "+14155238886"
TEMPLATE = "bench_template"
MUNICIPALITY = "00000000-0000-4000-8000-00000000a001"
TEAM = "00000000-0000-4000-8000-00000000a002"
MANAGER = "00000000-0000-4000-8000-00000000a003"
STAFF = "00000000-0000-4000-8000-00000000a004"
USERS = 1000
WRITERS = 8
LANGUAGES = ("en", "zu", "af")

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- sizes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    latency_updates: int = 2_000
    latency_rate: float = 200.0
    backlog_updates: int = 10_000
    live_updates: int = 10_000
    escalation_tickets: int = 1_000
    sweep_tickets: int = 1_000_000
    sweep_breached: int = 10_000
    sweep_lead_seconds: float = 5.0
    #: How long to wait for all escalations; past this the part reports what it got.
    sweep_wait_seconds: float = 100.0
    escalation_wait_seconds: float = 70.0  # beyond the daemon's 60 s safety re-check
    writer_overhead_args: tuple[str, ...] = ()

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            latency_updates=400,
            backlog_updates=2_000,
            live_updates=2_000,
            escalation_tickets=200,
            sweep_tickets=100_000,
            sweep_breached=2_000,
            sweep_lead_seconds=3.0,
            sweep_wait_seconds=40.0,
            escalation_wait_seconds=15.0,
            writer_overhead_args=("--seconds", "2", "--repeats", "1", "--tickets", "2000"),
        )


# --- statistics ---------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "n": len(seconds),
        "min_ms": ms(min(seconds)) if seconds else None,
        "p50_ms": ms(pct(seconds, 50)),
        "p90_ms": ms(pct(seconds, 90)),
        "p99_ms": ms(pct(seconds, 99)),
        "max_ms": ms(max(seconds)) if seconds else None,
        "mean_ms": ms(sum(seconds) / len(seconds)) if seconds else None,
    }


# --- processes ----------------------------------------------------------------------


def stop_pid(proc: subprocess.Popen[Any], name: str, grace: float = 15.0) -> int | None:
    """SIGTERM by PID, wait, then SIGKILL by PID; reap. Returns the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:g}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(10)


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process, in kB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


class CpuMeter:
    """CPU seconds of each process of the set-up over one measured interval."""

    def __init__(self, pids: dict[str, int | None], postmaster: int | None) -> None:
        self._pids = pids
        self._postmaster = postmaster
        self._start = self._read()
        self._wall = time.monotonic()

    def add(self, name: str, pid: int | None) -> None:
        """A process started after the meter: all of its CPU counts."""
        self._pids[name] = pid
        self._start[name] = 0.0

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self._pids.items() if pid is not None}
        values["machine"] = machine_busy_seconds()
        values["postgres"] = postgres_cpu(self._postmaster)
        values["harness"] = time.process_time()
        return values

    def done(self) -> dict[str, Any]:
        end = self._read()
        wall = time.monotonic() - self._wall
        out: dict[str, Any] = {k: round(end[k] - self._start.get(k, 0.0), 2) for k in end}
        out["wall"] = round(wall, 2)
        # CPU the machine spent on anything but this benchmark: other people's work
        # on a shared machine makes every figure here slower than it is.
        ours = sum(v for k, v in out.items() if k not in ("machine", "wall"))
        out["other_processes"] = round(max(0.0, out.pop("machine") - ours), 2)
        return out


class WaitSampler:
    """Optional (--pg-waits): what the daemon's backends wait on, sampled every 10 ms."""

    SQL = (
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS q"
        " FROM pg_stat_activity WHERE application_name = 'sla-daemon' AND state = 'active'"
        " AND pid <> pg_backend_pid()"
    )

    def __init__(self, dsn: str | None) -> None:
        self._dsn = dsn
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WaitSampler:
        if self._dsn:
            self._task = asyncio.create_task(self._run(self._dsn))
        return self

    async def _run(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while True:
                for r in await conn.fetch(self.SQL):
                    self.counts[f"{r['w']} | {r['q']}"] += 1
                self.samples += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def report(self) -> dict[str, Any] | None:
        if not self._dsn:
            return None
        return {
            "samples": self.samples,
            "top": {k: v for k, v in self.counts.most_common(15)},
        }


@dataclass
class Measure:
    cpu: CpuMeter
    waits: WaitSampler

    async def done(self) -> dict[str, Any]:
        await self.waits.__aexit__()
        out = self.cpu.done()
        if (waits := self.waits.report()) is not None:
            out["daemon_backend_waits"] = waits
        return out


class FakeTwilioProcess:
    """``python -m benchmarks.recording_twilio --port 0`` in its own session, by PID."""

    def __init__(self, workdir: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log = workdir / "fake_twilio.log"

    def start(self) -> None:
        with open(self._log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.recording_twilio", "--port", "0"],
                cwd=ROOT,
                env=_child_env({}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"fake Twilio did not start: {self._log.read_text()[-2000:]}")
        self.port = int(line)
        log(f"fake Twilio on 127.0.0.1:{self.port} (pid {self.proc.pid})")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, "fake Twilio", grace=5)
            if self.proc.stdout:
                self.proc.stdout.close()


class DaemonProcess:
    """``python -m sla_daemon run`` in its own process group; stopped by PID, always."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = workdir / f"daemon-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.ready_at = 0.0
        self.peak: dict[str, int] = {}
        self._profiler: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as out:
            self.spawned_at = time.time()
            return subprocess.Popen(
                [sys.executable, "-m", "sla_daemon", "run"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    async def start(self, timeout: float = 30.0, profile_dir: Path | None = None) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited during start-up:\n{self.tail()}")
            if "running as" in self.log_path.read_text(errors="replace"):
                self.ready_at = time.time()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon not ready in {timeout:g}s:\n{self.tail()}")
            await asyncio.sleep(0.01)
        log(
            f"daemon {self.name}: pid {self.proc.pid}, ready in "
            f"{self.ready_at - self.spawned_at:.2f}s"
        )
        if profile_dir is not None:
            self._start_profiler(profile_dir)

    def _start_profiler(self, directory: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            log("py-spy not found: pip install py-spy")
            return
        assert self.proc is not None
        directory.mkdir(parents=True, exist_ok=True)
        self._profiler = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.proc.pid),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "speedscope",
                "-o",
                str(directory / f"{self.name}.speedscope.json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def sample_memory(self) -> dict[str, int]:
        if self.proc is not None and self.proc.poll() is None:
            self.peak = proc_status(self.proc.pid) or self.peak
        return self.peak

    def stop(self) -> int | None:
        """VmHWM is read first (it is the peak over the process's life), then SIGTERM."""
        if self.proc is None:
            return None
        self.sample_memory()
        if self._profiler is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._profiler.pid, signal.SIGINT)
            try:
                self._profiler.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self._profiler.pid, signal.SIGKILL)
                self._profiler.wait(5)
            self._profiler = None
        code = stop_pid(self.proc, f"daemon {self.name}")
        if code not in (0, None):
            log(f"daemon {self.name} exited with {code}:\n{self.tail(10)}")
        return code

    def errors_logged(self) -> int:
        with contextlib.suppress(OSError):
            return sum(
                1
                for line in self.log_path.read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line
            )
        return 0


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLA_DAEMON_", "TWILIO_")) and k != "DATABASE_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Writers set no session state: skip the pool's reset round trip on release."""


# --- the fake's records -------------------------------------------------------------


class FakeClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url
        self._session = session

    async def count(self) -> int:
        async with self._session.get(f"{self._base}/_bench/count") as r:
            return int((await r.json())["count"])

    async def messages(self, since: int) -> list[tuple[float, str, str]]:
        async with self._session.get(f"{self._base}/_bench/messages?since={since}") as r:
            doc = await r.json()
        return [(float(t), str(to), str(body)) for t, to, body in doc["messages"]]

    async def wait_for(
        self, since: int, expected: int, timeout: float, label: str
    ) -> tuple[bool, float]:
        """Poll until ``expected`` messages arrived after ``since``; (all there, when)."""
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while True:
            got = await self.count() - since
            if got >= expected:
                return True, time.time()
            if time.monotonic() > deadline:
                log(f"{label}: only {got}/{expected} messages after {timeout:g}s")
                return False, time.time()
            if time.monotonic() - last_report > 2:
                log(f"{label}: {got}/{expected} messages received")
                last_report = time.monotonic()
            await asyncio.sleep(0.02)


@dataclass
class Expected:
    """Message bodies a part expects, each keyed (tracking number, status or 'escalation')."""

    bodies: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, key: tuple[str, str], body: str) -> None:
        self.bodies[body] = key

    @property
    def keys(self) -> set[tuple[str, str]]:
        return set(self.bodies.values())


def reconcile(
    received: Iterable[tuple[float, str, str]],
    expected: Expected,
    only: set[str] | None = None,
) -> tuple[dict[str, Any], dict[tuple[str, str], float]]:
    """Counts, and each expected key's first arrival time; ``only``: the tracking
    numbers whose messages must have arrived (default: all expected)."""
    counts: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], float] = {}
    unexpected = 0
    for t, _to, body in received:
        key = expected.bodies.get(body)
        if key is None:
            unexpected += 1
            continue
        counts[key] += 1
        if key not in first or t < first[key]:
            first[key] = t
    keys = expected.keys
    if only is not None:
        keys = {k for k in keys if k[0] in only}
    return (
        {
            "expected": len(keys),
            "received": sum(counts.values()),
            "missing": len(keys - counts.keys()),
            "duplicates": sum(c - 1 for c in counts.values() if c > 1),
            "unexpected": unexpected,
        },
        first,
    )


# --- database set-up ----------------------------------------------------------------


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


def delivery_report(
    stats: dict[str, Any], states: dict[str, int], expected_rows: int, complete: bool = True
) -> dict[str, Any]:
    """``complete``: every expected row exists and had time to be sent; otherwise rows
    still pending are work in progress, and only dead ones count as lost."""
    not_done = sum(n for s, n in states.items() if s not in ("sent", "superseded"))
    if not complete:
        not_done = states.get("dead", 0)
    return {
        **stats,
        "outbox_states": states,
        "outbox_rows": sum(states.values()),
        "outbox_rows_expected": expected_rows,
        "superseded": states.get("superseded", 0),
        "lost": not_done + stats["missing"],
        "duplicates": stats["duplicates"],
    }


# --- the bench ----------------------------------------------------------------------


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
    async def _part(
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
        env = _child_env(
            {
                "DATABASE_URL": dsn,
                "TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
                "TWILIO_WHATSAPP_NUMBER": FROM_NUMBER,
                "TWILIO_API_BASE_URL": self.fake_proc.base_url,
                # 80/s is Twilio's production limit for one sender; not what is measured.
                "SLA_DAEMON_SEND_RATE_PER_SECOND": "100000",
                "SLA_DAEMON_METRICS_ADDRESS": "127.0.0.1:0",
                "SLA_DAEMON_WORKER_ID": f"bench-{name}",
                **self.overrides,
            }
        )
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

    @staticmethod
    def memory(daemon: DaemonProcess) -> dict[str, Any]:
        peak = daemon.sample_memory()
        return {
            "daemon_peak_rss_mb": round(peak.get("VmHWM", 0) / 1024, 1),
            "daemon_rss_at_end_mb": round(peak.get("VmRSS", 0) / 1024, 1),
            "errors_logged": daemon.errors_logged(),
        }

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
        stats, first = reconcile(received, expected, only)
        return delivery_report(stats, states, outbox_rows, complete), first, received

    # parts

    async def part_latency(self) -> dict[str, Any]:
        n, rate = self.sizes.latency_updates, self.sizes.latency_rate
        pool: asyncpg.Pool | None = None
        async with self._part("latency") as (dsn, conn, daemon):
            try:
                tickets = await create_tickets(conn, "L", n)
                expected = await expected_messages(
                    conn, self.catalog, [tn for _, tn in tickets], "in_progress"
                )
                await conn.execute("CHECKPOINT")
                await daemon.start(profile_dir=self.profile_dir)
                await asyncio.sleep(1.0)  # first timer pass and outbox sleep done
                pool = await asyncpg.create_pool(
                    dsn, min_size=WRITERS, max_size=WRITERS, reset=_no_reset
                )
                assert pool is not None
                since = await self.fake.count()
                commit_time: dict[str, float] = {}
                start_lag: list[float] = []
                update = "UPDATE tickets SET status = 'in_progress' WHERE id = $1"

                async def one(ticket_id: Any, tn: str, due: float) -> None:
                    assert pool is not None
                    async with pool.acquire() as c:
                        start_lag.append(time.monotonic() - due)
                        await c.execute(update, ticket_id)
                        commit_time[tn] = time.time()  # right after the commit returned

                log(f"latency: {n} updates at {rate:g}/s (open loop)")
                meter = await self.measure(daemon, dsn)
                origin = time.monotonic() + 0.05
                tasks = []
                for i, (ticket_id, tn) in enumerate(tickets):
                    due = origin + i / rate
                    if (delay := due - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one(ticket_id, tn, due)))
                await asyncio.gather(*tasks)
                sent_span = time.monotonic() - origin
                await self.fake.wait_for(since, n, 30, "latency")
                cpu = await meter.done()
                report, first, _ = await self.deliveries(conn, since, expected, n)
                latencies = [
                    first[(tn, "in_progress")] - commit_time[tn]
                    for tn in commit_time
                    if (tn, "in_progress") in first
                ]
                return {
                    "updates": n,
                    "rate_per_s": rate,
                    "achieved_rate_per_s": round(n / sent_span, 1),
                    "writer_start_lag": summary_ms(start_lag),
                    "latency_commit_to_fake": summary_ms(latencies),
                    "delivery": report,
                    "cpu_seconds": cpu,
                    **self.memory(daemon),
                }
            finally:
                if pool is not None:
                    await pool.close()

    async def _write_all(
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

    async def part_backlog(self) -> dict[str, Any]:
        n = self.sizes.backlog_updates
        async with self._part("backlog") as (dsn, conn, daemon):
            tickets = await create_tickets(conn, "B", n)
            expected = await expected_messages(
                conn, self.catalog, [tn for _, tn in tickets], "in_progress"
            )
            log(f"backlog: {WRITERS} writers commit {n} updates on {n} tickets, daemon stopped")
            w0, w1 = await self._write_all(dsn, tickets, "in_progress")
            pending = sum((await outbox_states(conn)).values())
            await conn.execute("CHECKPOINT")
            since = await self.fake.count()
            meter = await self.measure(None, dsn)
            await daemon.start(profile_dir=self.profile_dir)
            meter.cpu.add("daemon", daemon.pid)  # started after the meter: counts from 0
            ok, _ = await self.fake.wait_for(since, n, 120, "backlog")
            cpu = await meter.done()
            report, first, _ = await self.deliveries(conn, since, expected, n)
            arrivals = sorted(first.values())
            last = arrivals[-1] if arrivals else float("nan")
            return {
                "updates": n,
                "tickets": n,
                "note": "one update per distinct ticket: nothing to supersede",
                "writers": WRITERS,
                "writer_commits_per_s": round(n / (w1 - w0), 1),
                "outbox_rows_before_start": pending,
                "daemon_ready_s": round(daemon.ready_at - daemon.spawned_at, 2),
                "drain_seconds_from_ready": round(last - daemon.ready_at, 3),
                "messages_per_s_from_ready": round(n / (last - daemon.ready_at), 1),
                "messages_per_s_from_spawn": round(n / (last - daemon.spawned_at), 1),
                "messages_per_s_first_to_last": round((len(arrivals) - 1) / (last - arrivals[0]), 1)
                if len(arrivals) > 1
                else None,
                "all_received": ok,
                "delivery": report,
                "cpu_seconds": cpu,
                "daemon_cpu_us_per_message": round(cpu.get("daemon", 0) / n * 1e6, 1),
                **self.memory(daemon),
            }

    async def part_live(self) -> dict[str, Any]:
        n = self.sizes.live_updates
        async with self._part("live") as (dsn, conn, daemon):
            tickets = await create_tickets(conn, "V", n)
            expected = await expected_messages(
                conn, self.catalog, [tn for _, tn in tickets], "in_progress"
            )
            await conn.execute("CHECKPOINT")
            await daemon.start(profile_dir=self.profile_dir)
            await asyncio.sleep(1.0)
            since = await self.fake.count()
            log(f"live: {WRITERS} writers commit {n} updates as fast as they can")
            meter = await self.measure(daemon, dsn)
            w0, w1 = await self._write_all(dsn, tickets, "in_progress")
            ok, _ = await self.fake.wait_for(since, n, 120, "live")
            cpu = await meter.done()
            report, first, _ = await self.deliveries(conn, since, expected, n)
            last = max(first.values()) if first else float("nan")
            return {
                "updates": n,
                "tickets": n,
                "writers": WRITERS,
                "writer_commits_per_s": round(n / (w1 - w0), 1),
                "writers_seconds": round(w1 - w0, 3),
                "end_to_end_seconds": round(last - w0, 3),
                "messages_per_s": round(n / (last - w0), 1),
                "all_received": ok,
                "delivery": report,
                "cpu_seconds": cpu,
                "daemon_cpu_us_per_message": round(cpu.get("daemon", 0) / n * 1e6, 1),
                **self.memory(daemon),
            }

    async def part_escalation(self) -> dict[str, Any]:
        n = self.sizes.escalation_tickets
        async with self._part("escalation") as (dsn, conn, daemon):
            await daemon.start(profile_dir=self.profile_dir)
            await asyncio.sleep(1.0)
            since = await self.fake.count()
            meter = await self.measure(daemon, dsn)
            log(f"escalation: {n} tickets due at now() + 2 s + i ms")
            tickets = await create_tickets(
                conn, "E", n, "now() + interval '2 seconds' + (g - 1) * interval '1 millisecond'"
            )
            tns = [tn for _, tn in tickets]
            expected = await expected_messages(conn, self.catalog, tns, None)
            deadline = time.monotonic() + 2 + self.sizes.escalation_wait_seconds
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM tickets WHERE tracking_number LIKE 'E%'"
                    " AND escalated_at IS NOT NULL"
                )
                if done >= n or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            rows = await conn.fetch(
                "SELECT extract(epoch FROM escalated_at - sla_response_deadline)::float8 AS lag"
                " FROM tickets WHERE tracking_number LIKE 'E%' AND escalated_at IS NOT NULL"
            )
            lags = [r["lag"] for r in rows]
            await self.fake.wait_for(since, len(lags), 30, "escalation notices")
            cpu = await meter.done()
            report, _, _ = await self.deliveries(conn, since, expected, n)
            warnings = await conn.fetchval(
                "SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning'"
            )
            return {
                "tickets": n,
                "escalated": len(lags),
                "not_escalated_after_wait": n - len(lags),
                "wait_limit_s": self.sizes.escalation_wait_seconds,
                "escalated_at_minus_deadline": summary_ms(lags),
                "warnings_recorded": warnings,
                "notices": report,
                "cpu_seconds": cpu,
                **self.memory(daemon),
            }

    async def part_sweep(self) -> dict[str, Any]:
        total, k = self.sizes.sweep_tickets, self.sizes.sweep_breached
        lead = self.sizes.sweep_lead_seconds
        async with self._part("sweep", command_timeout=None) as (dsn, conn, daemon):
            load = await self._bulk_load(conn, total)
            # Tickets number g with g % 10 = 0 are open; the breached ones are spread
            # over the whole table (and so over the whole index).
            step = total // k
            breach = [f"S{g:07d}" for g in range(step, total + 1, step)][:k]
            assert all(int(tn[1:]) % 10 == 0 for tn in breach), "step must keep them open"
            plan_idle = await self._explain(conn)
            await conn.execute("CHECKPOINT")
            await daemon.start(profile_dir=self.profile_dir)
            await asyncio.sleep(1.5)
            since = await self.fake.count()
            expected = await expected_messages(conn, self.catalog, breach, None)
            meter = await self.measure(daemon, dsn)
            log(f"sweep: {k} of {total} tickets fall due {lead:g} s after one UPDATE")
            t_update = time.monotonic()
            d = await conn.fetchval(
                "WITH u AS (UPDATE tickets SET sla_response_deadline = now()"
                " + make_interval(secs => $2) WHERE tracking_number = ANY($1::text[])"
                " RETURNING sla_response_deadline) SELECT max(sla_response_deadline) FROM u",
                breach,
                lead,
            )
            update_s = time.monotonic() - t_update
            committed = time.time()
            # Due and visible: the deadline, or the commit if the UPDATE outlasted its lead.
            due = max(d.timestamp(), committed)
            if update_s > lead:
                log(f"sweep: the UPDATE took {update_s:.1f}s, longer than the {lead:g}s lead")
            wait_until = time.monotonic() + lead + self.sizes.sweep_wait_seconds
            last_log = 0.0
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM sla_daemon.events WHERE kind = 'escalation'"
                )
                if done >= k or time.monotonic() > wait_until:
                    break
                if time.monotonic() - last_log > 2:
                    log(f"sweep: {done}/{k} escalated")
                    last_log = time.monotonic()
                await asyncio.sleep(0.05)
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(escalated_at) AS first, max(escalated_at) AS last"
                " FROM tickets WHERE tracking_number = ANY($1::text[])"
                " AND escalated_at IS NOT NULL",
                breach,
            )
            assert row is not None
            lags = [
                r["lag"]
                for r in await conn.fetch(
                    "SELECT extract(epoch FROM escalated_at)::float8 - $2 AS lag"
                    " FROM tickets WHERE tracking_number = ANY($1::text[])"
                    " AND escalated_at IS NOT NULL",
                    breach,
                    due,
                )
            ]
            all_s = row["last"].timestamp() - due if row["n"] else None
            span = (row["last"] - row["first"]).total_seconds() if row["n"] > 1 else None
            got, at = await self.fake.wait_for(since, row["n"], 60, "sweep notices")
            cpu = await meter.done()
            only = None
            if row["n"] < k:  # gave up waiting: judge the notices of those escalated by then
                only = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT tracking_number FROM tickets WHERE tracking_number = ANY($1)"
                        " AND escalated_at IS NOT NULL AND escalated_at <= $2",
                        breach,
                        row["last"],
                    )
                }
            report, _, _ = await self.deliveries(conn, since, expected, row["n"], only)
            if only is not None:
                report["not_escalated_when_part_ended"] = k - row["n"]
            warnings = await conn.fetchval(
                "SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning'"
            )
            mem = self.memory(daemon)
            daemon.stop()
            plan_breached = await self._explain(conn, breach_others=k, total=total)
            return {
                "tickets": total,
                "breached": k,
                "load": load,
                "breach_update_seconds": round(update_s, 3),
                "lead_seconds": lead,
                "escalated": row["n"],
                "wait_limit_s": lead + self.sizes.sweep_wait_seconds,
                "breach_visible_after_deadline_s": round(due - d.timestamp(), 3),
                "seconds_due_to_all_escalated": round(all_s, 3)
                if all_s and row["n"] == k
                else None,
                "seconds_due_to_last_escalated": round(all_s, 3) if all_s else None,
                "escalations_per_s_from_due": round(row["n"] / all_s, 1) if all_s else None,
                "escalations_per_s_first_to_last": round((row["n"] - 1) / span, 1)
                if span
                else None,
                "escalated_at_minus_due": summary_ms(lags),
                "warnings_recorded": warnings,
                "notices_all_received_s_after_due": round(at - due, 3) if got else None,
                "notices": report,
                "cpu_seconds": cpu,
                **mem,
                "breach_query_plan_idle": plan_idle,
                "breach_query_plan_with_breached": plan_breached,
            }

    async def _bulk_load(self, conn: asyncpg.Connection, total: int) -> dict[str, Any]:
        """Tickets, assignments and warning schedule in bulk, triggers off; then ANALYZE.

        Ticket g: g % 10 in 0-3 open, 4-5 in progress, 6-7 resolved, 8-9 closed; g % 100
        = 55 sensitive (no deadlines). Live tickets are due 1-8 days ahead.
        """
        t0 = time.monotonic()
        log(f"sweep: bulk-loading {total} tickets (session_replication_role = replica)")
        status = (
            "(CASE WHEN g % 10 < 4 THEN 'open' WHEN g % 10 < 6 THEN 'in_progress'"
            " WHEN g % 10 < 8 THEN 'resolved' ELSE 'closed' END)"
        )
        live = "g % 10 < 6"
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                f"""
                INSERT INTO tickets (tenant_id, tracking_number, user_id, category, status,
                    is_sensitive, assigned_team_id, assigned_to, created_at,
                    sla_response_deadline, sla_resolution_deadline)
                SELECT '{MUNICIPALITY}', 'S' || lpad(g::text, 7, '0'), {_USER_OF},
                    (ARRAY['water', 'electricity', 'roads', 'refuse'])[1 + g % 4],
                    {status}::ticket_status, g % 100 = 55, '{TEAM}', '{STAFF}', c.created,
                    CASE WHEN g % 100 = 55 THEN NULL
                         WHEN {live} THEN now() + interval '1 day' + (g % 86400) * interval '1 s'
                         ELSE c.created + interval '24 hours' END,
                    CASE WHEN g % 100 = 55 THEN NULL
                         WHEN {live} THEN now() + interval '7 days' + (g % 86400) * interval '1 s'
                         ELSE c.created + interval '168 hours' END
                FROM generate_series(1, {int(total)}) g
                CROSS JOIN LATERAL (SELECT CASE WHEN {live}
                    THEN now() - (g % 1440) * interval '1 minute'
                    ELSE now() - interval '30 days' - (g % 100000) * interval '1 minute'
                    END AS created) c
                """
            )
            t1 = time.monotonic()
            await conn.execute(
                "INSERT INTO ticket_assignments (ticket_id, assigned_to, assigned_team_id,"
                " reason, is_active, created_at)"
                " SELECT id, assigned_to, assigned_team_id, 'created', true, created_at"
                " FROM tickets WHERE tracking_number LIKE 'S%'"
            )
            t2 = time.monotonic()
            # The schedule the triggers would have built (deadlines, warnings), by the
            # daemon's own set-based function, as its migration does for existing tickets.
            schedule = await conn.fetchval(
                "SELECT coalesce(to_regproc('sla_daemon.schedule_tickets'),"
                " to_regproc('sla_daemon.schedule_warnings'))::text"
            )
            await conn.execute(
                f"SELECT {schedule}(array_agg(t.id)) FROM tickets t"
                " WHERE t.tracking_number LIKE 'S%' AND t.status IN ('open', 'in_progress')"
            )
        t3 = time.monotonic()
        for table in (
            "tickets",
            "ticket_assignments",
            "sla_daemon.warnings",
            "sla_daemon.deadlines",
        ):
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                await conn.execute(f"VACUUM (ANALYZE) {table}")
        t4 = time.monotonic()
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        log(f"sweep: loaded in {t4 - t0:.1f}s ({size})")
        return {
            "tickets_s": round(t1 - t0, 2),
            "assignments_s": round(t2 - t1, 2),
            "schedule_s": round(t3 - t2, 2),
            "vacuum_analyze_s": round(t4 - t3, 2),
            "database_size": size,
        }

    async def _explain(
        self, conn: asyncpg.Connection, breach_others: int = 0, total: int = 0
    ) -> dict[str, Any]:
        """EXPLAIN (ANALYZE, BUFFERS) of the breach query; with breach_others, in a
        transaction that makes that many other open tickets breached, then rolls back."""
        sql = "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM sla_daemon.breached_tickets"
        tr = conn.transaction()
        await tr.start()
        try:
            if breach_others:
                # The open ticket just before each breached one (g % 10 = 0: open).
                step = total // breach_others
                others = [f"S{g - 10:07d}" for g in range(step, total + 1, step)]
                await conn.execute(
                    "UPDATE tickets SET sla_response_deadline = now() - interval '1 minute'"
                    " WHERE tracking_number = ANY($1::text[])",
                    others,
                )
            lines = [r[0] for r in await conn.fetch(sql)]
        finally:
            await tr.rollback()
        rows = next(
            (int(ln.split("rows=")[2].split()[0]) for ln in lines[:1] if ln.count("rows=") >= 2),
            None,
        )
        return {
            "breached_rows_visible": rows,
            "seq_scan_on_tickets": any("Seq Scan on tickets" in ln for ln in lines),
            "indexes_used": sorted({m[1] for ln in lines if (m := _INDEX_SCAN.search(ln))}),
            "plan": lines,
        }


_INDEX_SCAN = re.compile(r"Index (?:Only )?Scan (?:Backward )?(?:using|on) (\S+)")


# --- writer overhead ----------------------------------------------------------------


def run_writer_overhead(args: Sequence[str], workdir: Path, timeout: float) -> dict[str, Any]:
    module = ROOT / "benchmarks" / "writer_overhead.py"
    if not module.exists():
        return {"skipped": "benchmarks/writer_overhead.py does not exist yet"}
    out = workdir / "writer_overhead.json"
    cmd = [sys.executable, "-m", "benchmarks.writer_overhead", "--json", str(out), *args]
    log("writer_overhead: " + " ".join(cmd[1:]))
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_child_env({}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # the same document goes to --json
        stderr=None,  # its progress, on our stderr
        start_new_session=True,
    )
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"writer_overhead: still running after {timeout:g}s; stopping it")
        stop_pid(proc, "writer_overhead", grace=30)
        return {"error": f"timed out after {timeout:g}s"}
    finally:
        if proc.poll() is None:
            stop_pid(proc, "writer_overhead", grace=30)
    if code != 0 or not out.exists():
        return {"error": f"exit code {code}"}
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def overhead_ratio_at(doc: dict[str, Any], clients: int) -> float | None:
    """The installed/bare TPS ratio at ``clients``, from writer_overhead's JSON."""
    for key in ("ratios", "ratio", "summary", "results"):
        section = doc.get(key)
        if isinstance(section, dict):
            for k in (str(clients), clients, f"clients_{clients}"):
                v = section.get(k)
                if isinstance(v, int | float):
                    return float(v)
                if isinstance(v, dict):
                    for name in ("b_over_a", "b/a", "installed", "sla_daemon", "b"):
                        if isinstance(v.get(name), int | float):
                            return float(v[name])
    return None


# --- targets ------------------------------------------------------------------------


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    parts = doc["parts"]
    out: dict[str, Any] = {}

    def check(name: str, value: Any, op: str, limit: float, unit: str) -> None:
        met = None
        if isinstance(value, int | float):
            met = value <= limit if op == "<=" else value >= limit
        out[name] = {"value": value, "target": f"{op} {limit:g} {unit}".strip(), "met": met}

    def get(*path: str) -> Any:
        node: Any = parts
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    if "latency" in parts:
        check("latency_p50", get("latency", "latency_commit_to_fake", "p50_ms"), "<=", 5, "ms")
        check("latency_p99", get("latency", "latency_commit_to_fake", "p99_ms"), "<=", 15, "ms")
    if "backlog" in parts:
        check("backlog_drain", get("backlog", "messages_per_s_from_ready"), ">=", 2000, "msg/s")
    if "live" in parts:
        check("live_throughput", get("live", "messages_per_s"), ">=", 1000, "msg/s")
    if "escalation" in parts:
        p99 = get("escalation", "escalated_at_minus_deadline", "p99_ms")
        check("breach_to_escalation_p99", p99 / 1000 if p99 is not None else None, "<=", 1, "s")
        if (late := get("escalation", "not_escalated_after_wait")) and late > 0:
            out["breach_to_escalation_p99"]["met"] = False
            out["breach_to_escalation_p99"]["not_escalated_within_wait"] = late
    if "sweep" in parts:
        all_s = get("sweep", "seconds_due_to_all_escalated")
        rate = get("sweep", "escalations_per_s_from_due")
        extrapolated = all_s is None and isinstance(rate, float) and rate > 0
        if extrapolated:  # gave up waiting: what the measured rate needs for all of them
            all_s = round(get("sweep", "breached") / rate, 1)
        check("sweep_all_escalated", all_s, "<=", 10, "s")
        out["sweep_all_escalated"]["extrapolated_from_rate"] = extrapolated
        check(
            "sweep_no_seq_scan",
            0
            if get("sweep", "breach_query_plan_with_breached", "seq_scan_on_tickets") is False
            else 1,
            "<=",
            0,
            "seq scans",
        )
    if "writer_overhead" in parts:
        check(
            "writer_overhead_32_clients",
            overhead_ratio_at(parts["writer_overhead"], 32),
            ">=",
            0.7,
            "x",
        )
    peaks: list[float] = [
        p["daemon_peak_rss_mb"]
        for p in parts.values()
        if isinstance(p, dict) and isinstance(p.get("daemon_peak_rss_mb"), int | float)
    ]
    if peaks:
        check("daemon_peak_rss", max(peaks), "<=", 100, "MB")
    lost = dup = 0
    for name in ("latency", "backlog", "live"):
        lost += get(name, "delivery", "lost") or 0
        dup += get(name, "delivery", "duplicates") or 0
    for name in ("escalation", "sweep"):
        lost += get(name, "notices", "lost") or 0
        dup += get(name, "notices", "duplicates") or 0
    if any(n in parts for n in ("latency", "backlog", "live", "escalation", "sweep")):
        check("lost_messages", lost, "<=", 0, "")
        check("duplicate_messages", dup, "<=", 0, "")
    return out


# --- main ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run (< 2 min)")
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    p.add_argument("--json", type=Path, help="also write the JSON document here")
    p.add_argument(
        "--fast",
        action="store_true",
        help="fsync/synchronous_commit/full_page_writes off (default: durable, as in production)",
    )
    p.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the daemon (e.g. SLA_DAEMON_ESCALATION_CONCURRENCY=8)",
    )
    p.add_argument(
        "--pg-waits",
        action="store_true",
        help="sample pg_stat_activity every 10 ms: what the daemon's backends wait on",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the work folder (daemon logs) and say where"
    )
    p.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="record a py-spy profile of each daemon here"
    )
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s): {', '.join(unknown)}")
    args.parts = [x for x in PARTS if x in parts]
    try:
        args.overrides = dict(kv.split("=", 1) for kv in args.daemon_env)
    except ValueError:
        p.error("--daemon-env takes KEY=VALUE")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def _run_parts(bench: Bench, parts: Sequence[str], doc: dict[str, Any]) -> None:
    await bench.make_template()
    async with aiohttp.ClientSession() as session:
        bench.fake = FakeClient(bench.fake_proc.base_url, session)
        table: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "latency": bench.part_latency,
            "backlog": bench.part_backlog,
            "live": bench.part_live,
            "escalation": bench.part_escalation,
            "sweep": bench.part_sweep,
        }
        for name in parts:
            if name not in table:
                continue
            t = time.monotonic()
            log(f"--- {name}")
            try:
                doc["parts"][name] = await table[name]()
            except Exception as exc:  # one broken part must not hide the others
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                doc["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            doc["parts"][name]["part_seconds"] = round(time.monotonic() - t, 1)
            log(f"{name} done in {time.monotonic() - t:.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="sla-bench-"))
    started = time.time()
    doc: dict[str, Any] = {
        "benchmark": "sla-daemon end to end",
        "mode": "quick" if args.quick else "full",
        "settings": {
            "postgres": "fast (fsync off)" if args.fast else "durable (fsync on, defaults)",
            "cpus": os.cpu_count(),
            "send_rate_per_second": 100000,
            "daemon_env_overrides": args.overrides,
            "sizes": {k: v for k, v in sizes.__dict__.items() if k != "writer_overhead_args"},
            "daemon_per_part": True,
            "loadavg_at_start": os.getloadavg(),
            "peak_rss": "VmHWM of each part's own daemon process",
        },
        "parts": {},
    }
    db_parts = [p for p in args.parts if p != "writer_overhead"]
    pg: EmbeddedPostgres | None = None
    fake = FakeTwilioProcess(workdir)
    bench: Bench | None = None
    try:
        if db_parts:
            pg = start_embedded(workdir / "pg", fast=args.fast)
            log(f"PostgreSQL started (pid {pg.pid}, {'fast' if args.fast else 'durable'})")
            fake.start()
            bench = Bench(pg, fake, sizes, workdir, args.overrides, args.py_spy, args.pg_waits)
            aio.run(_run_parts(bench, db_parts, doc))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for d in bench.daemons if bench else []:
            d.stop()
        fake.stop()
        if pg is not None:
            log(f"stopping PostgreSQL (pid {pg.pid})")
            pg.stop()
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if "writer_overhead" in args.parts:
            t = time.monotonic()
            log("--- writer_overhead")
            budget = 300.0 if args.quick else 420.0
            wo = run_writer_overhead(sizes.writer_overhead_args, workdir, budget)
            wo["part_seconds"] = round(time.monotonic() - t, 1)
            doc["parts"]["writer_overhead"] = wo
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep:
            log(f"work folder kept: {workdir}")
            shutil.rmtree(workdir / "pg", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    doc["targets"] = targets(doc)
    doc["wall_seconds"] = round(time.time() - started, 1)
    doc["settings"]["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    missed = [k for k, v in doc["targets"].items() if v["met"] is False]
    log(f"done in {doc['wall_seconds']:.0f}s; targets missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
