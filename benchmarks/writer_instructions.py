"""What a status UPDATE costs the server, in CPU instructions: noise-free, unlike TPS.

pgbench TPS on a small shared machine moves by a third between identical runs, which
hides a 10 % change in the trigger. Instructions do not move: each variant's database
(the same ones as ``benchmarks.writer_overhead``: ``a`` no sla-daemon, ``b`` all
migrations, plus ``--patch NAME=FILE``) is run by a single-user backend under
valgrind's callgrind, fed ``--updates`` prepared status UPDATEs (one transaction
each, the same open <-> in_progress flips as pgbench's script), and the instructions of
a short warm-up run are subtracted.

A single-user backend has no daemon beside it: by default the wake-up hint says no
daemon is awake, so every change tries the wake-up lock (which it gets) and reads the
wake-up flag, the dearest path. ``--awake`` sets the hint as an awake daemon does
(``sla_daemon.outbox_hint`` = 1), the usual path. Compare variants of one run, and read
ratios to ``a`` as a floor of the TPS ratio: pgbench's client, the socket and the
kernel add cost to every variant alike, and contention between writers is not counted.

    python -m benchmarks.writer_instructions [--updates 1000] [--awake] [--patch NAME=FILE]
        [--keep DIR]   (then: callgrind_annotate --inclusive=yes DIR/b-1200.callgrind)

Needs ``valgrind``. Progress goes to stderr, one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.writer_overhead import (
    Variant,
    build_variants,
    create_variant_db,
    find_pgbench,
    log,
)
from sla_daemon.embedded import start_embedded

WARM_UP = 200
TIMEOUT = 1800.0  # one callgrind run of a few thousand UPDATEs takes seconds to minutes
PREPARE = (
    "PREPARE flip(text) AS UPDATE public.tickets"
    " SET status = CASE WHEN status = 'open' THEN 'in_progress'::public.ticket_status"
    " ELSE 'open'::public.ticket_status END WHERE tracking_number = 'B-' || $1"
)


AWAKE = "SELECT pg_catalog.setval('sla_daemon.outbox_hint', 1)"


def script(updates: int, tickets: int, awake: bool) -> str:
    lines = [AWAKE, PREPARE] if awake else [PREPARE]
    lines += [f"EXECUTE flip('{1 + (i * 7919) % tickets}')" for i in range(updates)]
    return "\n".join(lines) + "\n"


def instructions(postgres: str, data: Path, owner: str, v: Variant, sql: Path, out: Path) -> int:
    """Callgrind's instruction total for a single-user backend running ``sql``."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        postgres,
        "--single",
        "-D",
        str(data),
        v.database,
    ]
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the data's owner
        cmd = ["runuser", "-u", owner, "--", *cmd]
    with sql.open(encoding="utf-8") as stdin:
        done = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run of {v.name} failed: {done.stderr.strip()[-400:]}")
    return int(found.group(1))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    # w (the wake-path stress) differs from b only in the emulated sender: not here
    variants = [v for v in build_variants(args.patch) if not v.cycles]
    root = Path(tempfile.mkdtemp(prefix="writer-instructions-"))
    try:
        os.chmod(root, 0o755)
        data = root / "data"
        pg = start_embedded(data, fast=True)
        try:

            async def create() -> None:
                for v in variants:
                    log(f"creating database {v.database}: {v.description}")
                    await create_variant_db(pg, v, args.tickets)

            asyncio.run(create())
        finally:
            pg.stop()  # keeps the data: the single-user runs below use it
        postgres = str(Path(find_pgbench()).parent / "postgres")
        # callgrind writes its output beside the scripts, as the data's owner
        os.chown(root, data.stat().st_uid, -1)
        owner = pwd.getpwuid(data.stat().st_uid).pw_name
        per_update: dict[str, float] = {}
        for v in variants:
            totals = []
            for n in (WARM_UP, WARM_UP + args.updates):
                sql = root / f"{v.name}-{n}.sql"
                sql.write_text(
                    script(n, args.tickets, args.awake and v.sla_daemon), encoding="utf-8"
                )
                out = root / f"{v.name}-{n}.callgrind"
                totals.append(instructions(postgres, data, owner, v, sql, out))
            per_update[v.name] = (totals[1] - totals[0]) / args.updates
            if args.keep is not None:  # for callgrind_annotate --inclusive=yes
                args.keep.mkdir(parents=True, exist_ok=True)
                for n in (WARM_UP, WARM_UP + args.updates):
                    shutil.copy(root / f"{v.name}-{n}.callgrind", args.keep)
            log(f"{v.name}: {per_update[v.name]:,.0f} instructions per status UPDATE")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = per_update["a"]
    return {
        "benchmark": "writer_instructions",
        "workload": "prepared UPDATE tickets SET status = open<->in_progress, one per transaction",
        "config": {
            "updates": args.updates,
            "tickets": args.tickets,
            "warm_up": WARM_UP,
            "awake": args.awake,
        },
        "variants": {v.name: v.description for v in variants},
        "instructions_per_update": {k: round(x) for k, x in per_update.items()},
        "ratios": {f"{k}/a": round(base / x, 3) for k, x in per_update.items() if k != "a"},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.writer_instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--updates", type=int, default=1000, help="measured UPDATEs per variant")
    p.add_argument("--tickets", type=int, default=10_000, help="tickets in each database")
    p.add_argument("--patch", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--awake", action="store_true", help="the wake-up hint says a daemon is awake")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy the callgrind files here (NAME-UPDATES.callgrind), to see where the cost goes",
    )
    args = p.parse_args(argv)
    if args.updates < 1 or args.tickets < 1:
        p.error("--updates and --tickets must be positive")
    if shutil.which("valgrind") is None:
        print(
            "writer_instructions: valgrind is not installed (apt-get install valgrind)",
            file=sys.stderr,
        )
        return 69
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
