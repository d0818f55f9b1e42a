"""The sweep: a large tickets table, K of them falling due at once; time until all are
escalated, and the plan of the breach query."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import asyncpg

from .bench import _USER_OF, Bench, expected_messages
from .common import MUNICIPALITY, STAFF, TEAM, log, summary_ms
from .rss import memory


async def run(bench: Bench) -> dict[str, Any]:
    total, k = bench.sizes.sweep_tickets, bench.sizes.sweep_breached
    lead = bench.sizes.sweep_lead_seconds
    async with bench.part("sweep", command_timeout=None) as (dsn, conn, daemon):
        load = await _bulk_load(conn, total)
        # Tickets number g with g % 10 = 0 are open; the breached ones are spread
        # over the whole table (and so over the whole index).
        step = total // k
        breach = [f"S{g:07d}" for g in range(step, total + 1, step)][:k]
        assert all(int(tn[1:]) % 10 == 0 for tn in breach), "step must keep them open"
        plan_idle = await _explain(conn)
        await conn.execute("CHECKPOINT")
        await daemon.start(profile_dir=bench.profile_dir)
        await asyncio.sleep(1.5)
        since = await bench.fake.count()
        expected = await expected_messages(conn, bench.catalog, breach, None)
        meter = await bench.measure(daemon, dsn)
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
        wait_until = time.monotonic() + lead + bench.sizes.sweep_wait_seconds
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
        got, at = await bench.fake.wait_for(since, row["n"], 60, "sweep notices")
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
        report, _, _ = await bench.deliveries(conn, since, expected, row["n"], only)
        if only is not None:
            report["not_escalated_when_part_ended"] = k - row["n"]
        warnings = await conn.fetchval(
            "SELECT count(*) FROM sla_daemon.events WHERE kind = 'warning'"
        )
        mem = memory(daemon)
        daemon.stop()
        plan_breached = await _explain(conn, breach_others=k, total=total)
        return {
            "tickets": total,
            "breached": k,
            "load": load,
            "breach_update_seconds": round(update_s, 3),
            "lead_seconds": lead,
            "escalated": row["n"],
            "wait_limit_s": lead + bench.sizes.sweep_wait_seconds,
            "breach_visible_after_deadline_s": round(due - d.timestamp(), 3),
            "seconds_due_to_all_escalated": round(all_s, 3) if all_s and row["n"] == k else None,
            "seconds_due_to_last_escalated": round(all_s, 3) if all_s else None,
            "escalations_per_s_from_due": round(row["n"] / all_s, 1) if all_s else None,
            "escalations_per_s_first_to_last": round((row["n"] - 1) / span, 1) if span else None,
            "escalated_at_minus_due": summary_ms(lags),
            "warnings_recorded": warnings,
            "notices_all_received_s_after_due": round(at - due, 3) if got else None,
            "notices": report,
            "cpu_seconds": cpu,
            **mem,
            "breach_query_plan_idle": plan_idle,
            "breach_query_plan_with_breached": plan_breached,
        }


async def _bulk_load(conn: asyncpg.Connection, total: int) -> dict[str, Any]:
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
    conn: asyncpg.Connection, breach_others: int = 0, total: int = 0
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
