"""The command line: parse options, start PostgreSQL and the fake, run the parts in
order (one broken part does not hide the others), print one JSON document."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from sla_daemon import aio
from sla_daemon.embedded import EmbeddedPostgres, start_embedded

from . import __doc__ as package_doc
from . import drain, escalation, latency, live, sweep
from .bench import Bench
from .common import PARTS, Sizes, log
from .insert_rate import run_insert_rate
from .overhead import run_writer_overhead
from .processes import FakeTwilioProcess
from .records import FakeClient
from .targets import targets

#: Parts that are programs of their own (each starts its own PostgreSQL): the runner
#: and the Sizes field holding their arguments.
CHILD_PARTS: dict[str, tuple[Callable[[Sequence[str], Path, float], dict[str, Any]], str]] = {
    "writer_overhead": (run_writer_overhead, "writer_overhead_args"),
    "insert_rate": (run_insert_rate, "insert_rate_args"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=package_doc,
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
        help="extra environment for the daemon (repeatable; e.g."
        " SLA_DAEMON_ESCALATION_CONCURRENCY=8 with SLA_DAEMON_POOL_MAX_SIZE=11)",
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
        table: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
            "latency": latency.run,
            "backlog": drain.run,
            "live": live.run,
            "escalation": escalation.run,
            "sweep": sweep.run,
        }
        for name in parts:
            if name not in table:
                continue
            t = time.monotonic()
            log(f"--- {name}")
            try:
                doc["parts"][name] = await table[name](bench)
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
            "sizes": {k: v for k, v in sizes.__dict__.items() if not k.endswith("_args")},
            "daemon_per_part": True,
            "loadavg_at_start": os.getloadavg(),
            "peak_rss": "VmHWM of each part's own daemon process",
        },
        "parts": {},
    }
    db_parts = [p for p in args.parts if p not in CHILD_PARTS]
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
        for name, (run, part_args) in CHILD_PARTS.items():
            if name not in args.parts:
                continue
            t = time.monotonic()
            log(f"--- {name}")
            budget = 300.0 if args.quick else 420.0
            result = run(getattr(sizes, part_args), workdir, budget)
            result["part_seconds"] = round(time.monotonic() - t, 1)
            doc["parts"][name] = result
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
    stalled = [k for k in missed if doc["targets"][k].get("machine_stalled")]
    if stalled:
        lag = doc["targets"][stalled[0]]["load_generator_lag_p99_ms"]
        log(
            f"{', '.join(stalled)}: the load generator itself ran {lag:g} ms late at p99,"
            " so the machine stalled during that part; rerun it (--only latency)"
        )
    log(f"done in {doc['wall_seconds']:.0f}s; targets missed: {', '.join(missed) or 'none'}")
    return 0
