"""What business calendars cost ticket inserts: pgbench TPS of INSERTs, business hours
against 24/7 (issue 12's target: business-hours inserts at >= 0.8x the 24/7 rate).

One database with sla-daemon installed and South Africa's public holidays loaded, two
municipalities with the same SLA config (8 h response, 16 h resolution): one on a
business calendar (Mon-Fri 08:00-12:30 and 13:30-16:30, ZA holidays), one 24/7. Each
pgbench transaction inserts one ticket of one of them (the trigger computes its
deadlines, the statement trigger schedules them and their warnings). Runs alternate
between the two, ``--repeats`` times per client count; medians are reported.

    python -m benchmarks.insert_rate --seconds 10 --clients 1,8 [--fast]

Progress goes to stderr, one JSON document to stdout (and to ``--json FILE``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.writer_overhead import (
    CONNECT_TIMEOUT,
    _client_list,
    close,
    connect,
    find_pgbench,
    log,
    run_on_embedded,
    run_pgbench,
)
from sla_daemon.calendars import set_hours
from sla_daemon.db import migrate
from sla_daemon.embedded import (
    EmbeddedPostgres,
)

DATABASE = "insert_rate"
VARIANTS = {
    "business_hours": "00000000-0000-4000-8000-00000000c001",
    "24/7": "00000000-0000-4000-8000-00000000c002",
}
INSERT_SCRIPT = """\
INSERT INTO public.tickets (tenant_id, tracking_number, category)
VALUES ('{municipality}', gen_random_uuid()::text, 'billing');
"""


async def prepare(pg: EmbeddedPostgres) -> None:
    admin = await connect(pg.dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await close(admin)
    conn = await connect(pg.dsn(DATABASE))
    try:
        await migrate(conn)  # loads the public holidays too
        await conn.execute("SELECT sla_daemon.define_calendar('office')")
        await set_hours(conn, "office", ["mon-fri 08:00-12:30,13:30-16:30"])
        for name, mid in VARIANTS.items():
            await conn.execute(
                "INSERT INTO public.municipalities (id, name) VALUES ($1, $2)", mid, name
            )
            await conn.execute(
                "INSERT INTO public.sla_configs (municipality_id, category, response_hours,"
                " resolution_hours) VALUES ($1, NULL, 8, 16)",
                mid,
            )
        await conn.execute(
            "SELECT sla_daemon.assign_calendar($1, NULL, 'office')", VARIANTS["business_hours"]
        )
    finally:
        await close(conn)


async def bench(pg: EmbeddedPostgres, args: Any) -> dict[str, Any]:
    pgbench = find_pgbench()
    await prepare(pg)
    env = dict(os.environ)
    env.update(
        PGHOST=str(pg.socket_dir),
        PGPORT=str(pg.server.get_postmaster_info().port or 5432),
        PGUSER="postgres",
        PGCONNECT_TIMEOUT=str(int(CONNECT_TIMEOUT)),
        PGAPPNAME="pgbench",
    )
    tps: dict[int, dict[str, list[float]]] = {c: {v: [] for v in VARIANTS} for c in args.clients}
    with tempfile.TemporaryDirectory(prefix="insert-rate-") as tmp:
        scripts = {}
        for name, mid in VARIANTS.items():
            scripts[name] = Path(tmp) / f"{name.replace('/', '_')}.sql"
            scripts[name].write_text(INSERT_SCRIPT.format(municipality=mid), encoding="utf-8")
        for clients in args.clients:
            for rep in range(args.repeats):
                order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
                for name in order:
                    result = await run_pgbench(pgbench, env, DATABASE, scripts[name], clients, args)
                    tps[clients][name].append(result.tps)
                    log(f"clients={clients} {name}: {result.tps:.0f} inserts/s")
    summary = {}
    for clients, by in tps.items():
        business = statistics.median(by["business_hours"])
        always = statistics.median(by["24/7"])
        summary[str(clients)] = {
            "business_hours_tps": round(business, 1),
            "24/7_tps": round(always, 1),
            "ratio": round(business / always, 3),
        }
    return {"seconds": args.seconds, "repeats": args.repeats, "ratios": summary, "runs": tps}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.insert_rate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=int, default=10, help="duration of each pgbench run")
    p.add_argument("--clients", type=_client_list, default=[1, 8], help="e.g. 1,8")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant and client count")
    p.add_argument("--fast", action="store_true", help="fsync and friends off (default: durable)")
    p.add_argument("--protocol", choices=["simple", "extended", "prepared"], default="prepared")
    p.add_argument("--json", type=Path, help="also write the JSON document here")
    args = p.parse_args(argv)
    args.tickets = 1  # run_pgbench defines :tickets; the insert script ignores it
    if args.seconds < 1 or args.repeats < 1:
        p.error("--seconds and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_on_embedded("insert-rate-pg-", parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
