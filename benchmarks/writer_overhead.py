"""What sla-daemon costs the platform's writers: pgbench TPS of status UPDATEs.

Each pgbench transaction flips one random ticket between ``open`` and ``in_progress``,
looked up by its tracking number (``B-<n>``). Variants, each in its own database on
one server, loaded with identical tickets:

  a  the platform's schema alone (migration 0001): no triggers, no sla-daemon indexes;
  b  sla-daemon installed (all migrations), its sender emulated as below;
  c  no sla-daemon, but a naive ``AFTER UPDATE FOR EACH ROW`` trigger that calls
     ``pg_notify('naive', NEW.id::text)``;
  w  as b, but the emulated sender goes to sleep after every ``--drain-ms`` even with
     work waiting (no real sender does): the writers' wake-up path as often as it can
     run, about 50 times a second. A stress of that path, reported beside b;
  d  (only with ``--real-daemon``) sla-daemon installed and the real daemon running,
     sending to a fake Twilio. Both share this machine's CPUs with the server and
     pgbench, so d's TPS does not measure the writers' path; d shows how often the
     real daemon went to sleep (each time, the next status change woke it: one
     notification);
  l  (only with ``--logical-decoding``, which restarts the server with ``wal_level =
     logical`` for every variant) no sla-daemon triggers: a publication of ``tickets``
     and a logical replication slot (pgoutput), which a session drains with
     ``pg_logical_slot_get_binary_changes`` every 5 ms, as a daemon reading status
     changes from the WAL instead of a trigger could. The alternative the README names
     for the writers' figure, measured;
  plus one variant per ``--patch NAME=FILE``: all migrations, then the SQL of FILE
  (to measure a proposed change to the triggers before it becomes a migration).

During every run a separate session LISTENs on the daemon's channels and on 'naive',
as a daemon would. In b and w it also behaves like the daemon's sender
(``sla_daemon/outbox.py``): woken by a notification, it marks itself awake
(``outbox_awake()``) and looks for work; it "sends" for ``--drain-ms`` and looks again,
for as long as each look finds new intake rows; only after a look finds none does it
set the wake-up flag (``outbox_sleep()``), drop the mark and look once more, as the
real sender goes to sleep only after a claim came back empty. Under pgbench's load
that is rare: in variant d the real daemon went to sleep 0 or 1 times per run at 1,
8 and 32 clients. So b measures the writers' usual path, as in production under load.

Client counts are interleaved (for each count: every variant, ``--repeats`` times,
alternating the order) and the median is reported. Before each run the outbox is
truncated, the wake flag set to sleeping, ``tickets`` vacuumed and a CHECKPOINT taken;
autovacuum is off on this server, so it never cleans up after one variant while the
next is measured.
Ratios to variant a come three ways: of median TPS, median of per-round TPS ratios, and
of CPU per transaction (server + pgbench, from /proc and getrusage), which stays
meaningful when other work on a shared machine makes TPS jump.

    python -m benchmarks.writer_overhead [--seconds 5 --repeats 4 --clients 1,8,32]
        [--real-daemon] [--fast]

Progress goes to stderr, one JSON document to stdout (and to ``--json FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.cpu import postgres_cpu
from benchmarks.run.processes import DaemonProcess, FakeTwilioProcess
from sla_daemon.db import load_migrations, migrate
from sla_daemon.embedded import (
    EmbeddedPostgres,
    kill_pid,
    postmaster_pid,
    process_alive,
    start_embedded,
)

CHANNELS = ("sla_daemon_outbox", "sla_daemon_timer", "naive")
MUNICIPALITY = "00000000-0000-4000-8000-00000000b001"
TEAM = "00000000-0000-4000-8000-00000000b002"
USERS = 1000
CONNECT_TIMEOUT = 30.0
QUERY_TIMEOUT = 600.0  # VACUUM / CHECKPOINT with fsync on
PGBENCH_GRACE = 120.0  # beyond --seconds: connecting, finishing, reporting

# pgbench sends :n as an untyped parameter (-M prepared); the CASE needs the enum type,
# since a CASE of bare literals is text and text has no assignment cast to an enum.
UPDATE_SCRIPT = """\\set n random(1, :tickets)
UPDATE public.tickets
   SET status = CASE WHEN status = 'open' THEN 'in_progress'::public.ticket_status
                     ELSE 'open'::public.ticket_status END
 WHERE tracking_number = 'B-' || CAST(:n AS text);
"""

NAIVE_SQL = """
CREATE FUNCTION public.naive_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('naive', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER naive_notify AFTER UPDATE ON public.tickets
    FOR EACH ROW EXECUTE FUNCTION public.naive_notify();
"""

SEED_SQL = """
INSERT INTO public.municipalities (id, name) VALUES ('{m}', 'Benchmark Local Municipality');
INSERT INTO public.users (id, phone, preferred_language)
    SELECT md5('user' || i)::uuid, '082' || lpad(i::text, 7, '0'),
           (ARRAY['en', 'zu', 'af'])[1 + i % 3]
    FROM generate_series(1, {users}) i;
INSERT INTO public.teams (id, tenant_id, name, manager_id)
    VALUES ('{t}', '{m}', 'Water and sanitation', md5('user1')::uuid);
INSERT INTO public.sla_configs (municipality_id, category, response_hours, resolution_hours)
    VALUES ('{m}', NULL, 24, 168);
-- Deadlines are given explicitly so every variant holds the very same rows (sla-daemon
-- keeps explicit deadlines); statuses alternate as after a long run of this workload.
INSERT INTO public.tickets (id, tenant_id, tracking_number, user_id, category, status,
                            assigned_team_id, created_at, sla_response_deadline,
                            sla_resolution_deadline)
    SELECT md5('ticket' || n)::uuid, '{m}', 'B-' || n, md5('user' || (1 + n % {users}))::uuid,
           (ARRAY['water', 'electricity', 'roads', 'refuse'])[1 + n % 4],
           (CASE WHEN n % 2 = 0 THEN 'open' ELSE 'in_progress' END)::public.ticket_status,
           '{t}', c.at, c.at + interval '24 hours', c.at + interval '168 hours'
    FROM generate_series(1, {tickets}) n
    CROSS JOIN LATERAL (SELECT date_trunc('hour', now()) - (n % 600) * interval '1 minute') c(at);
"""

# What the emulated sender's look for work reads: how far the intake's ids have gone
# (nothing drains this intake, so its rows would not tell new work from old).
PROGRESS_SQL = """SELECT pg_sequence_last_value('sla_daemon.outbox_intake_id_seq')"""


def log(message: str) -> None:
    print(f"[writer_overhead {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    sla_daemon: bool  # all migrations applied
    extra_sql: str = ""
    cycles: bool = False  # the emulated sender sleeps after every --drain-ms (variant w)
    real_daemon: bool = False  # the real daemon and a fake Twilio run (variant d)
    decoding: bool = False  # a logical slot on tickets, drained during runs (variant l)

    @property
    def database(self) -> str:
        return f"writer_overhead_{self.name}"


def build_variants(
    patches: list[str], real_daemon: bool = False, decoding: bool = False
) -> list[Variant]:
    variants = [
        Variant("a", "platform schema only, no triggers", sla_daemon=False),
        Variant("b", "sla-daemon installed (all migrations)", sla_daemon=True),
        Variant("c", "naive per-row pg_notify trigger", sla_daemon=False, extra_sql=NAIVE_SQL),
        Variant(
            "w",
            "sla-daemon installed, its sender sleeping after every --drain-ms (wake-path stress)",
            sla_daemon=True,
            cycles=True,
        ),
    ]
    if decoding:
        variants.append(
            Variant("l", "no triggers; a logical slot on tickets, drained", False, decoding=True)
        )
    if real_daemon:
        variants.append(
            Variant("d", "sla-daemon installed, the real daemon sending", True, real_daemon=True)
        )
    for spec in patches:
        name, sep, file = spec.partition("=")
        if (
            not sep
            or not re.fullmatch(r"[a-z][a-z0-9_]*", name)
            or name in {"a", "b", "c", "w", "d", "l"}
        ):
            raise SystemExit(f"--patch wants NAME=FILE with a new lower-case NAME, got {spec!r}")
        sql = Path(file).read_text(encoding="utf-8")
        variants.append(Variant(name, f"sla-daemon + {file}", sla_daemon=True, extra_sql=sql))
    return variants


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        dsn,
        timeout=CONNECT_TIMEOUT,
        command_timeout=QUERY_TIMEOUT,
        server_settings={"application_name": "writer_overhead"},
    )


async def close(conn: asyncpg.Connection | None) -> None:
    if conn is None or conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 5)
    except (Exception, asyncio.CancelledError):
        conn.terminate()
        raise


async def create_variant_db(pg: EmbeddedPostgres, v: Variant, tickets: int) -> None:
    admin = await connect(pg.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{v.database}"')
        await admin.execute(f'CREATE DATABASE "{v.database}"')
    finally:
        await close(admin)
    conn = await connect(pg.dsn(v.database))
    try:
        if v.sla_daemon:
            await migrate(conn)
        else:
            platform = load_migrations()[0]
            assert platform.version == 1, platform
            await conn.execute(platform.sql)
        if v.extra_sql:
            await conn.execute(v.extra_sql)
        await conn.execute(
            SEED_SQL.format(m=MUNICIPALITY, t=TEAM, users=USERS, tickets=int(tickets))
        )
        await conn.execute("VACUUM (ANALYZE)")
        if v.decoding:
            await conn.execute(f"CREATE PUBLICATION {SLOT} FOR TABLE public.tickets")
            await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", SLOT)
    finally:
        await close(conn)


#: Variant l's publication and slot (one database each, so one name serves).
SLOT = "writer_overhead_l"
DECODE_SQL = (
    "SELECT count(*) FROM pg_logical_slot_get_binary_changes($1::name, NULL, NULL,"
    " 'proto_version', '1', 'publication_names', $1::text)"
)
DECODE_EVERY = 0.005


class Decoder:
    """Variant l's reader of the WAL: drains the slot every 5 ms while pgbench runs."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.messages = 0
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._conn = await connect(self.dsn)
        await self._drain()  # what the set-up wrote (VACUUM, CHECKPOINT) is not counted
        self.messages = 0
        self._task = asyncio.create_task(self._loop())

    async def _drain(self) -> None:
        assert self._conn is not None
        self.messages += int(await self._conn.fetchval(DECODE_SQL, SLOT) or 0)

    async def _loop(self) -> None:
        while True:
            await self._drain()
            await asyncio.sleep(DECODE_EVERY)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 30)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._drain()  # the rest, so the slot holds no WAL into the next run
            await close(self._conn)


class Listener:
    """A LISTENing session; where sla-daemon is installed, also its sleep/wake cycle."""

    def __init__(self, dsn: str, *, daemon: bool, drain_s: float, cycles: bool = False) -> None:
        self.dsn = dsn
        self.daemon = daemon
        self.drain_s = drain_s
        self.cycles = cycles
        self.counts: Counter[str] = Counter()
        self.sleeps = 0
        self.marks_failed = 0  # woken, but outbox_awake() could not take the lock
        self._woken = asyncio.Event()
        self._listen: asyncpg.Connection | None = None
        self._work: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def _on_notify(self, _conn: Any, _pid: int, channel: str, _payload: object) -> None:
        self.counts[channel] += 1
        if channel == "sla_daemon_outbox":
            self._woken.set()

    async def start(self) -> None:
        self._listen = await connect(self.dsn)
        for channel in CHANNELS:
            await self._listen.add_listener(channel, self._on_notify)
        if self.daemon:
            # The daemon's pool connection: LISTEN has its own, as DESIGN.md asks.
            self._work = await connect(self.dsn)
            await self._work.execute("SELECT sla_daemon.outbox_sleep()")
            self._task = asyncio.create_task(self._sender())

    async def _look(self) -> int:
        assert self._work is not None
        return int(await self._work.fetchval(PROGRESS_SQL) or 0)

    async def _mark_awake(self) -> bool:
        assert self._work is not None
        awake = bool(await self._work.fetchval("SELECT sla_daemon.outbox_awake()"))
        self.marks_failed += not awake
        return awake

    async def _sender(self) -> None:
        assert self._work is not None
        while True:
            await self._woken.wait()
            self._woken.clear()
            # The daemon's protocol (migration 0005): mark awake on the connection
            # that stays; when idle, set the flag, then drop the mark.
            awake = await self._mark_awake()
            seen = await self._look()  # claim what is there
            while True:
                if self.drain_s > 0:
                    await asyncio.sleep(self.drain_s)  # and send it
                if not self.cycles:
                    now = await self._look()
                    if now != seen:  # more came meanwhile: claim and send that too
                        seen = now
                        continue
                # idle (or variant w): as the real sender after an empty claim
                await self._work.execute("SELECT sla_daemon.outbox_sleep()")
                if awake:
                    await self._work.execute("SELECT sla_daemon.outbox_release()")
                self.sleeps += 1
                if self.cycles:
                    break
                now = await self._look()  # once more, after dropping the mark
                if now == seen:
                    break
                seen = now
                awake = await self._mark_awake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
            if self._task.done() and not self._task.cancelled() and self._task.exception():
                log(f"emulated sender failed: {self._task.exception()!r}")
        for conn in (self._work, self._listen):
            with contextlib.suppress(Exception):
                await close(conn)


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latency_ms: float


def find_pgbench() -> str:
    try:
        import pgserver

        path = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("no pgbench: install sla-daemon[embedded] (pgserver ships one)")
    log(f"using {found}: pgserver's pgbench was not found")
    return found


async def run_pgbench(
    pgbench: str, env: dict[str, str], database: str, script: Path, clients: int, args: Any
) -> PgbenchResult:
    cmd = [
        pgbench,
        "--no-vacuum",
        f"--protocol={args.protocol}",
        f"--client={clients}",
        f"--jobs={min(clients, os.cpu_count() or 1)}",
        f"--time={args.seconds}",
        f"--file={script}",
        f"--define=tickets={args.tickets}",
        database,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(), args.seconds + PGBENCH_GRACE)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
    out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
    tps = re.search(r"^tps = ([\d.]+) \(without initial", out, re.MULTILINE)
    if proc.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench exited {proc.returncode}:\n{out[-2000:]}\n{err[-2000:]}")
    done = re.search(r"actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    return PgbenchResult(
        tps=float(tps[1]),
        transactions=int(done[1]) if done else 0,
        failed=int(failed[1]) if failed else 0,
        latency_ms=float(latency[1]) if latency else float("nan"),
    )


async def prepare_run(conn: asyncpg.Connection, v: Variant) -> None:
    if v.sla_daemon:
        await conn.execute("TRUNCATE sla_daemon.outbox, sla_daemon.outbox_intake")
        await conn.execute("UPDATE sla_daemon.wakeups SET sleeping = true WHERE name = 'outbox'")
        await conn.execute(
            "VACUUM (ANALYZE) sla_daemon.outbox, sla_daemon.outbox_intake, sla_daemon.wakeups"
        )
    await conn.execute("VACUUM (ANALYZE) public.tickets")
    await conn.execute("CHECKPOINT")


def real_daemon(v: Variant, dsn: str, fake: FakeTwilioProcess | None) -> DaemonProcess:
    """``sla-daemon run`` on variant d's database, sending to the fake Twilio."""
    assert fake is not None, "variant d needs the fake Twilio"
    env = fake.daemon_env(dsn, f"writer-overhead-{v.name}", {})
    return DaemonProcess(v.name, env, fake.workdir)


def server_cpu_seconds(postmaster: int | None) -> float:
    """CPU the server has used (its reaped children too, e.g. pgbench's backends);
    NaN when the server is unknown or gone, rather than a misleading 0."""
    if postmaster is None or not Path(f"/proc/{postmaster}").exists():
        return float("nan")
    return postgres_cpu(postmaster)


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children: pgbench."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def snapshot(conn: asyncpg.Connection, functions: bool) -> dict[str, float]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE relid = 'public.tickets'::regclass"
    )
    assert row is not None
    stats: dict[str, float] = {"upd": row["n_tup_upd"], "hot": row["n_tup_hot_upd"]}
    if functions:
        for f in await conn.fetch(
            "SELECT schemaname || '.' || funcname AS name, calls, self_time"
            " FROM pg_stat_user_functions"
        ):
            stats[f"calls:{f['name']}"] = f["calls"]
            stats[f"ms:{f['name']}"] = f["self_time"]
    return stats


async def one_run(
    pg: EmbeddedPostgres,
    pgbench: str,
    env: dict[str, str],
    script: Path,
    v: Variant,
    clients: int,
    rep: int,
    args: Any,
    fake: FakeTwilioProcess | None = None,
) -> dict[str, Any]:
    dsn = pg.dsn(v.database)
    load = os.getloadavg()[0]  # other work on the machine skews the numbers
    admin = await connect(dsn)
    try:
        await prepare_run(admin, v)
        before = await snapshot(admin, args.track_functions)
        emulate = v.sla_daemon and not v.real_daemon
        listener = Listener(dsn, daemon=emulate, drain_s=args.drain_ms / 1000, cycles=v.cycles)
        daemon = real_daemon(v, dsn, fake) if v.real_daemon else None
        decoder = Decoder(dsn) if v.decoding else None
        try:
            await listener.start()
            if daemon is not None:
                await daemon.start()
            if decoder is not None:
                await decoder.start()
            cpu0 = server_cpu_seconds(pg.pid), children_cpu_seconds()
            result = await run_pgbench(pgbench, env, v.database, script, clients, args)
            # Late notifications arrive; backends exit, are reaped and flush their stats.
            await asyncio.sleep(0.5)
            cpu1 = server_cpu_seconds(pg.pid), children_cpu_seconds()
        finally:
            if decoder is not None:
                await decoder.stop()
            if daemon is not None:
                daemon.stop()
            await listener.stop()
        # The real daemon's sleeps each ended with a writer's notification.
        sleeps = listener.counts["sla_daemon_outbox"] if daemon is not None else listener.sleeps
        after = await snapshot(admin, args.track_functions)
        outbox = 0
        if v.sla_daemon:
            outbox = await admin.fetchval("SELECT count(*) FROM sla_daemon.messages")
    finally:
        await close(admin)
    updated = after["upd"] - before["upd"]
    done = max(result.transactions, 1)
    run: dict[str, Any] = {
        "clients": clients,
        "variant": v.name,
        "rep": rep,
        "tps": round(result.tps, 1),
        "latency_ms": result.latency_ms,
        "transactions": result.transactions,
        "failed": result.failed,
        "notifications": dict(listener.counts),
        "daemon_sleeps": sleeps,
        "marks_failed": listener.marks_failed,
        "outbox_rows": outbox,
        "decoded_messages": decoder.messages if decoder is not None else None,
        "server_cpu_us_per_txn": round(1e6 * (cpu1[0] - cpu0[0]) / done, 1),
        "pgbench_cpu_us_per_txn": round(1e6 * (cpu1[1] - cpu0[1]) / done, 1),
        "loadavg_before": round(load, 2),
        "hot_update_pct": round(100 * (after["hot"] - before["hot"]) / updated, 1)
        if updated
        else None,
    }
    if args.track_functions:
        per_call = {}
        for key, value in after.items():
            if key.startswith("ms:"):
                name = key[3:]
                calls = after[f"calls:{name}"] - before.get(f"calls:{name}", 0)
                if calls:
                    spent = value - before.get(key, 0)
                    per_call[name] = {"calls": calls, "us_per_call": round(1000 * spent / calls, 2)}
        run["functions"] = per_call
    return run


def summarise(runs: list[dict[str, Any]], variants: list[Variant]) -> dict[str, Any]:
    """Median TPS per client count and variant, and ratios to variant a three ways:
    of the median TPS; the median of per-round ratios (each round runs every variant
    back to back, so slow drifts in other load cancel); and of CPU per transaction
    (server plus pgbench), what the ratio would be on a machine bound by CPU alone."""
    tps: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    paired: dict[str, dict[str, float]] = {}
    cpu_ratios: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    notes: dict[str, dict[str, Any]] = {}
    for clients in sorted({r["clients"] for r in runs}):
        key = str(clients)
        tps[key] = {}
        notes[key] = {}
        for v in variants:
            mine = [r for r in runs if r["clients"] == clients and r["variant"] == v.name]
            if mine:
                tps[key][v.name] = round(statistics.median(r["tps"] for r in mine), 1)
                cpu.setdefault(key, {})[v.name] = round(
                    statistics.median(
                        r["server_cpu_us_per_txn"] + r["pgbench_cpu_us_per_txn"] for r in mine
                    ),
                    1,
                )
                notes[key][v.name] = {
                    "runs_tps": [r["tps"] for r in mine],
                    "server_cpu_us_per_txn": [r["server_cpu_us_per_txn"] for r in mine],
                    "notifications": [sum(r["notifications"].values()) for r in mine],
                    "daemon_sleeps": [r["daemon_sleeps"] for r in mine],
                    "marks_failed": [r["marks_failed"] for r in mine],
                    "hot_update_pct": [r["hot_update_pct"] for r in mine],
                }
        base = tps[key].get("a")
        if base:
            ratios[key] = {f"{n}/a": round(t / base, 3) for n, t in tps[key].items() if n != "a"}
        by_rep = {(r["rep"], r["variant"]): r["tps"] for r in runs if r["clients"] == clients}
        reps = sorted({rep for rep, _ in by_rep})
        paired[key] = {}
        for v in variants[1:]:
            pairs = [
                by_rep[r, v.name] / by_rep[r, "a"]
                for r in reps
                if (r, v.name) in by_rep and by_rep.get((r, "a"))
            ]
            if pairs:
                paired[key][f"{v.name}/a"] = round(statistics.median(pairs), 3)
        base_cpu = cpu.get(key, {}).get("a")
        if base_cpu:
            cpu_ratios[key] = {
                f"{n}/a": round(base_cpu / c, 3) for n, c in cpu[key].items() if n != "a" and c
            }
    return {
        "tps": tps,
        "ratios": ratios,
        "ratios_paired": paired,
        "cpu_us_per_txn": cpu,
        "ratios_cpu": cpu_ratios,
        "details": notes,
    }


@contextlib.contextmanager
def fake_twilio(workdir: Path, wanted: bool) -> Iterator[FakeTwilioProcess | None]:
    """The fake Twilio for variant d, stopped by PID however the benchmark ends."""
    if not wanted:
        yield None
        return
    fake = FakeTwilioProcess(workdir)
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()


async def bench(pg: EmbeddedPostgres, args: Any) -> dict[str, Any]:
    variants = build_variants(args.patch, args.real_daemon, args.logical_decoding)
    pgbench = find_pgbench()
    info = pg.server.get_postmaster_info()
    env = dict(os.environ)
    env.update(
        PGHOST=str(pg.socket_dir),
        PGPORT=str(info.port or 5432),
        PGUSER="postgres",
        PGCONNECT_TIMEOUT=str(int(CONNECT_TIMEOUT)),
        PGAPPNAME="pgbench",
    )
    admin = await connect(pg.dsn())
    try:
        settings = {
            name: await admin.fetchval(f"SHOW {name}")
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "shared_buffers",
                "max_connections",
                "track_functions",
                "wal_level",
            )
        }
    finally:
        await close(admin)
    for v in variants:
        log(f"creating database {v.database}: {v.description}")
        await create_variant_db(pg, v, args.tickets)
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="writer-overhead-") as tmp,
        fake_twilio(Path(tmp), args.real_daemon) as fake,
    ):
        script = Path(tmp) / "status_update.sql"
        script.write_text(UPDATE_SCRIPT, encoding="utf-8")
        for clients in args.clients:
            for rep in range(args.repeats):
                order = variants if rep % 2 == 0 else variants[::-1]
                for v in order:
                    run = await one_run(pg, pgbench, env, script, v, clients, rep, args, fake)
                    runs.append(run)
                    cpu_txn = f"{run['server_cpu_us_per_txn']}+{run['pgbench_cpu_us_per_txn']}"
                    log(
                        f"clients={clients:<3} rep={rep} {v.name}: {run['tps']:>9.1f} tps"
                        f"  lat {run['latency_ms']:.2f} ms  notifications {run['notifications']}"
                        f"  sleeps {run['daemon_sleeps']} (marks failed {run['marks_failed']})"
                        f"  HOT {run['hot_update_pct']}%"
                        f"  cpu/txn {cpu_txn} us"
                        f"  failed {run['failed']}  load {run['loadavg_before']}"
                    )
    summary = summarise(runs, variants)
    return {
        "benchmark": "writer_overhead",
        "workload": "UPDATE tickets SET status = open<->in_progress WHERE tracking_number = B-n",
        "config": {
            "seconds": args.seconds,
            "tickets": args.tickets,
            "clients": args.clients,
            "repeats": args.repeats,
            "fast": args.fast,
            "protocol": args.protocol,
            "drain_ms": args.drain_ms,
            "real_daemon": args.real_daemon,
            "logical_decoding": args.logical_decoding,
            "cpus": os.cpu_count(),
            "pgbench": pgbench,
            "server": settings,
        },
        "variants": {v.name: v.description for v in variants},
        **summary,
        "runs": runs,
    }


def _client_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("client counts must be positive")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.writer_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Rounds of 5 s, 4 of them: a round's ratio moves by up to 0.08 on a small shared
    # machine, so more, shorter rounds give a steadier median in the same time.
    p.add_argument("--seconds", type=int, default=5, help="duration of each pgbench run")
    p.add_argument("--tickets", type=int, default=10_000, help="tickets in each database")
    p.add_argument("--clients", type=_client_list, default=[1, 8, 32], help="e.g. 1,8,32")
    p.add_argument("--repeats", type=int, default=4, help="runs per variant and client count")
    p.add_argument(
        "--fast",
        action="store_true",
        help="fsync, synchronous_commit and full_page_writes off (default: durable)",
    )
    p.add_argument(
        "--drain-ms",
        type=float,
        default=10.0,
        help="emulated sender: how long sending what one look found takes (variant w: its"
        " pause between a wake-up and outbox_sleep())",
    )
    p.add_argument("--protocol", choices=["simple", "extended", "prepared"], default="prepared")
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="extra variant: all migrations, then the SQL in FILE",
    )
    p.add_argument(
        "--track-functions",
        action="store_true",
        help="track_functions=pl: per-call self time of trigger functions",
    )
    p.add_argument(
        "--real-daemon",
        action="store_true",
        help="add variant d: the real daemon running, sending to a fake Twilio",
    )
    p.add_argument(
        "--logical-decoding",
        action="store_true",
        help="wal_level = logical for every variant, and variant l: a drained logical slot",
    )
    p.add_argument("--json", type=Path, help="also write the JSON document here")
    args = p.parse_args(argv)
    if args.seconds < 1 or args.tickets < 1 or args.repeats < 1:
        p.error("--seconds, --tickets and --repeats must be positive")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_on_embedded(
    prefix: str,
    args: Any,
    bench: Callable[[EmbeddedPostgres, Any], Coroutine[Any, Any, dict[str, Any]]],
    settings: dict[str, str] | None = None,
    restart: bool = False,
) -> int:
    """Start a private server, run ``bench`` on it, always stop it by PID, print the JSON.

    Shared by the pgbench benchmarks (this one and ``benchmarks.insert_rate``)."""
    signal.signal(signal.SIGTERM, _terminate)
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    pg: EmbeddedPostgres | None = None
    try:
        pg = start_embedded(data_dir, fast=args.fast, settings=settings)
        if restart:  # settings such as wal_level take effect only at a start
            pg.stop()
            pg = start_embedded(data_dir, fast=args.fast)
        log(f"PostgreSQL started (pid {pg.pid}, {'fast' if args.fast else 'durable'} settings)")
        doc = asyncio.run(bench(pg, args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        # Let the clean-up (bounded) finish; a second Ctrl-C must not orphan the server.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if pg is not None:
            log(f"stopping PostgreSQL (pid {pg.pid})")
            pg.stop()
        elif (pid := postmaster_pid(data_dir)) is not None and process_alive(pid):
            kill_pid(pid)  # a server whose start was interrupted
        shutil.rmtree(data_dir, ignore_errors=True)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Each run starts from a VACUUM of its own database; autovacuum would instead clean
    # up after one variant while the next is measured.
    settings = {"autovacuum": "off"}
    if args.track_functions:
        settings["track_functions"] = "pl"
    if args.logical_decoding:
        settings.update(wal_level="logical", max_replication_slots="4")
    return run_on_embedded(
        "writer-overhead-pg-", args, bench, settings, restart=args.logical_decoding
    )


if __name__ == "__main__":
    sys.exit(main())
