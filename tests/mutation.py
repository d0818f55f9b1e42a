"""The mutation check: break one promise at a time and see that a test notices.

    python -m tests.mutation              # every mutant, two at a time
    python -m tests.mutation --list       # the mutants and the promises they break
    python -m tests.mutation --only ID... # some of them
    python -m tests.mutation --jobs 1     # one at a time (each runs its own PostgreSQL)

Each mutant is one textual change to one file (a SQL migration or a module of the
package), applied to a fresh copy of the checkout in a temporary folder; the tests
that guard its promise run against that copy (``PYTHONPATH`` puts the copy's package
first; the migrations are read from the copy, so every test database is built from the
mutated SQL). A mutant is *killed* when a test fails, and *survives* when all pass: a
survivor is a promise no test guards. The unmutated tests run first, so a kill is
never a test that fails anyway. Progress goes to stderr, the table to stdout; the exit
code is 0 only when every mutant was killed.

A mutant whose text is not found (the code moved on) is reported as ``stale``, which
also fails the run: the list must follow the code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)
TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Mutant:
    id: str
    promise: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


M6 = "sql/migrations/0006_boundary.sql"
M2 = "sql/migrations/0002_sla_core.sql"
M7 = "sql/migrations/0007_calendars.sql"
#: 0015 restates, per (ticket, recipient), the outbox's rules (claim_outbox, extend_outbox,
#: requeue_dead) and the escalation (escalate_ticket, escalate_tickets, escalate_levels,
#: record_warnings), which now queue staff alerts
M15 = "sql/migrations/0015_staff_alerts.sql"
STAFF = "tests/test_staff_alerts.py"
#: 0016 restates the status trigger (the writers' path), the deadline triggers and the
#: awake mark (a daemon queues briefly for the wake-up lock)
M16 = "sql/migrations/0016_writer_path.sql"

MUTANTS: tuple[Mutant, ...] = (
    # --- escalation: advisory lock and re-check ------------------------------------
    Mutant(
        "escalation-lock",
        "a ticket is escalated under its advisory lock, so a held key stops the escalation",
        M15,
        "    IF NOT pg_try_advisory_xact_lock(5459009, hashtext(p_ticket_id::text)) THEN\n"
        "        RETURN QUERY SELECT false, 'locked'",
        "    IF false THEN\n        RETURN QUERY SELECT false, 'locked'",
        ("tests/test_escalation.py", "tests/test_boundary.py"),
    ),
    Mutant(
        "escalation-recheck",
        "under the lock the ticket is re-checked: one no longer breached is left alone",
        M15,
        "    IF v_breach IS NULL THEN\n        RETURN QUERY SELECT false, 'not_breached'",
        "    IF false THEN\n        RETURN QUERY SELECT false, 'not_breached'",
        ("tests/test_escalation.py",),
    ),
    Mutant(
        "escalation-isolated",
        "a ticket whose escalation fails is retried on its own backoff, recorded with why",
        M15,
        "            retry_at := sla_daemon.escalation_failed(ticket_id, error);",
        "            retry_at := NULL;",
        ("tests/test_boundary.py", "tests/test_faults.py"),
    ),
    # --- SLA rules ------------------------------------------------------------------
    Mutant(
        "config-precedence",
        "a category's config wins over the municipality default, which wins over the system's",
        M2,
        "    ORDER BY c.rank, c.response_hours, c.resolution_hours",
        "    ORDER BY c.rank DESC, c.response_hours, c.resolution_hours",
        ("tests/test_sla.py",),
    ),
    Mutant(
        "sensitive-exclusion",
        "sensitive (GBV) tickets get no SLA deadlines",
        M7,
        "    IF p_is_sensitive IS NOT FALSE THEN\n        RETURN;\n    END IF;\n"
        "    SELECT * INTO c FROM sla_daemon.sla_config_for(p_municipality, p_category);",
        "    SELECT * INTO c FROM sla_daemon.sla_config_for(p_municipality, p_category);",
        ("tests/test_sla.py",),
    ),
    Mutant(
        "warning-once",
        "a warning is recorded once per ticket, deadline kind and deadline",
        M6,
        "CREATE UNIQUE INDEX events_warning_once",
        "CREATE INDEX events_warning_once",
        ("tests/test_promises.py", "tests/test_sla.py"),
    ),
    Mutant(
        "new-cycle",
        "a ticket that re-enters open/in_progress starts a new SLA cycle, not its old deadlines",
        M16,
        "            PERFORM sla_daemon.start_cycle(NEW.id);",
        "            PERFORM sla_daemon.reschedule(ARRAY[NEW.id]);",
        ("tests/test_sla.py", "tests/test_faults.py"),
    ),
    Mutant(
        "recompute-after-update",
        "a category change recomputes a live ticket's deadlines (after the UPDATE, no row lock)",
        M16,
        "        UPDATE public.tickets t\n"
        "        SET sla_response_deadline = v_response, sla_resolution_deadline = v_resolution",
        "        UPDATE public.tickets t\n"
        "        SET sla_response_deadline = t.sla_response_deadline,"
        " sla_resolution_deadline = v_resolution",
        ("tests/test_sla.py",),
    ),
    # --- business calendars ---------------------------------------------------------
    Mutant(
        "closing-time",
        "a deadline that exactly fills a business day lands at closing time, not next morning",
        M7,
        "    WHERE i.calendar_id = v_cal AND i.cum_end >= v0 + c.resolution_hours * 3600",
        "    WHERE i.calendar_id = v_cal AND i.cum_end > v0 + c.resolution_hours * 3600",
        ("tests/test_calendars.py",),
    ),
    Mutant(
        "holidays-closed",
        "public holidays are closed days of a calendar that keeps them",
        M7,
        "              AND NOT EXISTS (SELECT 1 FROM sla_daemon.public_holidays ph\n"
        "                              WHERE ph.country = c.holiday_country"
        " AND ph.day = g.d::date)\n",
        "",
        ("tests/test_calendars.py",),
    ),
    Mutant(
        "pauses-count",
        "paused business time moves the resolution deadline",
        M7,
        "    RETURN coalesce((SELECT sum(sla_daemon.business_seconds(p_calendar, p.started_at,",
        "    RETURN 0 * coalesce((SELECT sum(sla_daemon.business_seconds(p_calendar, p.started_at,",
        ("tests/test_pauses_levels.py",),
    ),
    # --- outbox: claims -------------------------------------------------------------
    Mutant(
        "skip-locked",
        "a claim skips rows another transaction holds instead of waiting for them",
        M15,
        "        LIMIT p_limit\n        FOR UPDATE SKIP LOCKED",
        "        LIMIT p_limit\n        FOR UPDATE",
        ("tests/test_promises.py", "tests/test_faults.py"),
    ),
    Mutant(
        "lease-in-busy",
        "a ticket's row whose lease ran out no longer blocks its newer rows",
        M15,
        "                            AND s.state = 'sending' AND s.next_attempt_at > now())\n"
        "        ORDER BY o.next_attempt_at, o.id",
        "                            AND s.state = 'sending')\n"
        "        ORDER BY o.next_attempt_at, o.id",
        ("tests/test_promises.py", "tests/test_faults.py"),
    ),
    Mutant(
        "busy-before-limit",
        "claims skip busy tickets before LIMIT, so free due rows are always found",
        M15,
        "          AND NOT EXISTS (SELECT 1 FROM sla_daemon.outbox s\n"
        "                          WHERE s.ticket_id = o.ticket_id AND s.id <> o.id\n"
        "                            AND s.recipient_id IS NOT DISTINCT FROM o.recipient_id\n"
        "                            AND s.state = 'sending' AND s.next_attempt_at > now())\n",
        "",
        ("tests/test_daemon.py", "tests/test_faults.py"),
    ),
    Mutant(
        "supersede",
        "only a ticket's newest row is sent; older ones end superseded",
        M15,
        "        WHERE o.id = j.id AND j.id = j.newest\n        RETURNING o.id, o.ticket_id",
        "        WHERE o.id = j.id\n        RETURNING o.id, o.ticket_id",
        (
            "tests/test_promises.py",
            "tests/test_wakeups.py",
            "tests/test_daemon.py",
            "tests/test_faults.py",
        ),
    ),
    Mutant(
        "quarantine",
        "an intake row that cannot be sent is quarantined, and the rest flow",
        M15,
        "                  i.kind IN ('status', 'escalation') AS valid",
        "                  true AS valid",
        ("tests/test_boundary.py",),
    ),
    # --- outbox: one stream per (ticket, recipient) (issue 12, staff alerts) ----------
    Mutant(
        "newest-per-recipient",
        "a staff alert and the citizen's messages never supersede each other",
        M15,
        "                WHERE n.ticket_id = c.ticket_id\n"
        "                  AND n.recipient_id IS NOT DISTINCT FROM c.recipient_id) AS newest",
        "                WHERE n.ticket_id = c.ticket_id) AS newest",
        (STAFF,),
    ),
    Mutant(
        "busy-per-recipient",
        "a staff alert in flight does not hold the citizen's message back",
        M15,
        "                            AND s.recipient_id IS NOT DISTINCT FROM o.recipient_id\n",
        "",
        (STAFF,),
    ),
    Mutant(
        "extend-per-recipient",
        "a lease is extended while its row is the newest of its own recipient's stream",
        M15,
        "                      WHERE n.ticket_id = o.ticket_id AND n.id > o.id\n"
        "                        AND n.recipient_id IS NOT DISTINCT FROM o.recipient_id)",
        "                      WHERE n.ticket_id = o.ticket_id AND n.id > o.id)",
        (STAFF,),
    ),
    Mutant(
        "extend-intake-citizens",
        "a citizen's newer status in the intake does not stop a staff alert's send",
        M15,
        "      AND (o.recipient_id IS NOT NULL\n           OR NOT EXISTS",
        "      AND (false\n           OR NOT EXISTS",
        (STAFF,),
    ),
    Mutant(
        "requeue-per-recipient",
        "retry-dead judges a row against its own recipient's stream",
        M15,
        "                         WHERE n.ticket_id = o.ticket_id\n"
        "                           AND n.recipient_id IS NOT DISTINCT FROM o.recipient_id),",
        "                         WHERE n.ticket_id = o.ticket_id),",
        (STAFF,),
    ),
    Mutant(
        "purge-per-recipient",
        "retention keeps the newest row of each recipient's stream",
        "sql/queries.sql",
        "                  WHERE n.ticket_id = o.ticket_id AND n.id > o.id\n"
        "                    AND n.recipient_id IS NOT DISTINCT FROM o.recipient_id)",
        "                  WHERE n.ticket_id = o.ticket_id AND n.id > o.id)",
        (STAFF,),
    ),
    # --- staff alerts (issue 12) ------------------------------------------------------
    Mutant(
        "staff-alert-manager",
        "an escalation alerts the team manager",
        M15,
        "    IF v_manager IS NOT NULL THEN\n        v_alert := sla_daemon.enqueue_staff_alert(",
        "    IF false THEN\n        v_alert := sla_daemon.enqueue_staff_alert(",
        (STAFF,),
    ),
    Mutant(
        "staff-alert-level-person",
        "a further level alerts the person it assigns the ticket to",
        M15,
        "            v_alert := sla_daemon.enqueue_staff_alert(p_ticket_id, v_person,",
        "            v_alert := sla_daemon.enqueue_staff_alert(p_ticket_id, t.assigned_to,",
        (STAFF,),
    ),
    Mutant(
        "staff-phone",
        "a staff alert goes to the staff member's number, in their language",
        M15,
        "    LEFT JOIN public.users u ON u.id = coalesce(c.recipient_id, t.user_id)",
        "    LEFT JOIN public.users u ON u.id = t.user_id",
        (STAFF,),
    ),
    Mutant(
        "warn-setting",
        "warnings reach the team manager only with SLA_DAEMON_WARN_TEAM_MANAGER",
        M15,
        "        IF p_team_manager THEN",
        "        IF true THEN",
        (STAFF,),
    ),
    Mutant(
        "staff-no-phone",
        "a person without a phone gets no alert row, and the escalation goes on",
        M15,
        "    IF nullif(btrim(v_phone), '') IS NULL THEN\n        RETURN 'no_phone';",
        "    IF false THEN\n        RETURN 'no_phone';",
        (STAFF,),
    ),
    Mutant(
        "staff-sensitive",
        "no staff alert names a sensitive ticket",
        M15,
        "    IF t.is_sensitive IS NOT FALSE THEN\n        RETURN 'sensitive';",
        "    IF false THEN\n        RETURN 'sensitive';",
        (STAFF,),
    ),
    Mutant(
        "staff-template-variables",
        "a staff alert's template gets its variables numbered as the template has them",
        "sla_daemon/notifications.py",
        "        variables = {str(i): values[name] for i, name in enumerate(names, 1)}",
        "        variables = {str(i): values[name] for i, name in enumerate(names)}",
        (STAFF,),
    ),
    # --- outbox: finishes -----------------------------------------------------------
    Mutant(
        "fence-finish",
        "a finish from an older claim (stale token) changes nothing",
        M6,
        "        WHERE o.id = r.id AND o.state = 'sending' AND o.claim_token = r.token",
        "        WHERE o.id = r.id AND o.state = 'sending'",
        ("tests/test_faults.py", "tests/test_wakeups.py"),
    ),
    Mutant(
        "fence-extend",
        "a lease is extended only for the claim that holds it, while it is still the newest",
        M15,
        "    WHERE o.id = ANY (p_ids) AND o.claim_token = p_token AND o.state = 'sending'",
        "    WHERE o.id = ANY (p_ids) AND o.state = 'sending'",
        ("tests/test_faults.py",),
    ),
    Mutant(
        "release-keeps-attempt",
        "a row handed back at shutdown does not lose an attempt",
        M6,
        "            attempts = CASE WHEN r.state = 'released' THEN greatest(o.attempts - 1, 0)",
        "            attempts = CASE WHEN r.state = 'released' THEN o.attempts",
        ("tests/test_promises.py", "tests/test_daemon.py", "tests/test_faults.py"),
    ),
    Mutant(
        "requeue-resets-attempts",
        "retry-dead gives a row its attempts back",
        M15,
        "        SET state = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL,",
        "        SET state = 'pending', next_attempt_at = now(), finished_at = NULL,",
        (
            "tests/test_promises.py",
            "tests/test_daemon.py",
            "tests/test_cli.py",
            "tests/test_faults.py",
        ),
    ),
    Mutant(
        "requeue-newest-only",
        "retry-dead re-queues a row only while it is its ticket's newest",
        M15,
        "        FROM dead d WHERE o.id = d.id AND d.newest <= d.id",
        "        FROM dead d WHERE o.id = d.id",
        ("tests/test_cli.py", "tests/test_faults.py"),
    ),
    Mutant(
        "max-attempts",
        "a retryable failure gives up after max_attempts",
        "sla_daemon/outbox.py",
        "        if row.attempts >= self._settings.max_attempts and not result.rate_limited:",
        "        if row.attempts > self._settings.max_attempts and not result.rate_limited:",
        (
            "tests/test_promises.py",
            "tests/test_daemon.py",
            "tests/test_notifications.py",
            "tests/test_faults.py",
        ),
    ),
    Mutant(
        "backoff-exponential",
        "retries back off exponentially, capped",
        "sla_daemon/backoff.py",
        "    ceiling = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 64))",
        "    ceiling = min(cap, base)",
        (
            "tests/test_promises.py",
            "tests/test_notifications.py",
            "tests/test_daemon.py",
            "tests/test_faults.py",
        ),
    ),
    Mutant(
        "lease-guard",
        "a row is POSTed only while its lease covers the send timeout plus a margin",
        "sla_daemon/outbox.py",
        "            if started + needed < self._lease_until.get(row.key, 0.0):",
        "            if True:",
        ("tests/test_faults.py",),
    ),
    # --- wake-ups -------------------------------------------------------------------
    Mutant(
        "wakeup-notify",
        "a status change wakes a sleeping sender at once",
        M16,
        "            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';\n"
        "            PERFORM pg_notify('sla_daemon_outbox', '');\n        END IF;\n    END IF;\n"
        "    RETURN NULL;",
        "            UPDATE sla_daemon.wakeups SET sleeping = false WHERE name = 'outbox';\n"
        "        END IF;\n    END IF;\n    RETURN NULL;",
        ("tests/test_wakeups.py",),
    ),
    Mutant(
        "usual-change-awake-only",
        "the usual change skips the wake-up only while the hint says a daemon is awake",
        M16,
        "       AND NEW.status IN ('open', 'in_progress', 'resolved', 'closed')\n"
        "       AND pg_sequence_last_value('sla_daemon.outbox_hint') = 1 THEN",
        "       AND NEW.status IN ('open', 'in_progress', 'resolved', 'closed') THEN",
        ("tests/test_wakeups.py",),
    ),
    Mutant(
        "awake-queues",
        "a daemon marks itself awake past writers that keep taking the wake-up lock",
        M16,
        "    PERFORM pg_advisory_lock_shared(5459011, 1);\n",
        "    IF NOT pg_try_advisory_lock_shared(5459011, 1) THEN\n        RETURN false;\n"
        "    END IF;\n",
        ("tests/test_wakeups.py",),
    ),
    Mutant(
        "awake-wait-bounded",
        "a writer's long transaction delays the awake mark only briefly",
        M16,
        "SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms' AS $$",
        "SET search_path = pg_catalog, pg_temp AS $$",
        ("tests/test_wakeups.py",),
    ),
    Mutant(
        "mark-retry-spacing",
        "after a failed awake mark, claims run unmarked a while before the next try",
        "sla_daemon/listener.py",
        "        if awake and time.monotonic() < self._unmarked_until:\n",
        "        if False:\n",
        ("tests/test_wakeups.py",),
    ),
    Mutant(
        "background-mark-ends-first",
        "a background try to mark awake ends before the sender drops the mark to sleep",
        "sla_daemon/listener.py",
        "        if self._marking is not None:\n            await self._marking\n",
        "",
        ("tests/test_wakeups.py",),
    ),
    Mutant(
        "hint-asleep",
        "the wake-up hint says 'asleep' before a daemon drops its awake mark",
        M16,
        "BEGIN\n    PERFORM setval('sla_daemon.outbox_hint', 2);\n",
        "BEGIN\n",
        ("tests/test_wakeups.py",),
    ),
    # --- the boundary ---------------------------------------------------------------
    Mutant(
        "pinned-search-path",
        "the status trigger runs with a pinned search_path, so a writer's pg_temp type never runs",
        M16,
        "CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger\n"
        "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$",
        "CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger\n"
        "LANGUAGE plpgsql SECURITY DEFINER AS $$",
        ("tests/test_boundary.py",),
    ),
    Mutant(
        "writers-need-no-grant",
        "writers need no grant on the daemon's schema (the trigger runs as its owner)",
        M16,
        "CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger\n"
        "LANGUAGE plpgsql SECURITY DEFINER SET",
        "CREATE OR REPLACE FUNCTION sla_daemon.enqueue_status_change() RETURNS trigger\n"
        "LANGUAGE plpgsql SECURITY INVOKER SET",
        ("tests/test_boundary.py",),
    ),
    Mutant(
        "escalation-mark",
        "only the daemon's escalation is notified as one; a writer's SET cannot forge it",
        M16,
        "        IF EXISTS (SELECT 1 FROM sla_daemon.escalation_marks m"
        " WHERE m.ticket_id = NEW.id) THEN",
        "        IF true THEN",
        ("tests/test_boundary.py",),
    ),
    Mutant(
        "runtime-no-delete-events",
        "the daemon's role may not delete the event log",
        M6,
        "GRANT SELECT, INSERT ON sla_daemon.events TO sla_daemon_runtime;",
        "GRANT SELECT, INSERT, DELETE ON sla_daemon.events TO sla_daemon_runtime;",
        ("tests/test_boundary.py",),
    ),
    Mutant(
        "sessions-pin-path",
        "the daemon's and the CLI's connections pin their search_path",
        "sla_daemon/db.py",
        'SERVER_SETTINGS = {"application_name": "sla-daemon", "search_path": SEARCH_PATH}',
        'SERVER_SETTINGS = {"application_name": "sla-daemon"}',
        ("tests/test_boundary.py",),
    ),
    # --- Twilio-wide trouble --------------------------------------------------------
    Mutant(
        "auth-pauses",
        "a refused token pauses sending and never dead-letters a row",
        "sla_daemon/notifications.py",
        "        # fault of the message: it goes back to the queue uncounted (sending pauses).\n"
        '        return "released"',
        "        # fault of the message: it goes back to the queue uncounted (sending pauses).\n"
        '        return "retry"',
        ("tests/test_twilio_trouble.py",),
    ),
    Mutant(
        "rate-limit-holds-all",
        "a rate limit holds every POST of the daemon, not only the row's",
        "sla_daemon/notifications.py",
        "                    self.bucket.hold_until(time.monotonic() + retry_after)\n",
        "",
        ("tests/test_twilio_trouble.py",),
    ),
    # --- delivery truth -------------------------------------------------------------
    Mutant(
        "callback-forward-only",
        "a status callback moves a message's delivery state only forward",
        "sql/migrations/0012_delivery.sql",
        "        WHERE sla_daemon.delivery_rank(EXCLUDED.status)"
        " > sla_daemon.delivery_rank(d.status)",
        "        WHERE true",
        ("tests/test_webhooks.py",),
    ),
    Mutant(
        "webhook-signature",
        "an unsigned or badly signed webhook changes nothing",
        "sla_daemon/webhooks.py",
        "        if not self._validator.validate(url, params, signature, algorithm):",
        "        if False:",
        ("tests/test_webhooks.py",),
    ),
    Mutant(
        "opt-out",
        "no message goes to a number that opted out (STOP)",
        "sla_daemon/conversation.py",
        "        if plan.opted_out:",
        "        if False:",
        ("tests/test_webhooks.py",),
    ),
    Mutant(
        "early-63016",
        "a 63016 that came while its row was still sending still gets one template retry",
        "sql/migrations/0013_replies.sql",
        "    IF NOT EXISTS (SELECT 1 FROM sla_daemon.delivery_events e\n"
        "                   WHERE e.message_sid = NEW.message_sid AND e.error_code = 63016) THEN",
        "    IF true THEN",
        ("tests/test_webhooks.py", "tests/test_reconcile.py"),
    ),
    Mutant(
        "reconcile-unfinal-only",
        "reconciliation looks up only messages with no final state",
        "sql/queries.sql",
        "       OR (sla_daemon.delivery_rank(d.status) < 3\n",
        "       OR (true\n",
        ("tests/test_reconcile.py",),
    ),
    Mutant(
        "not-fixed-records",
        "a 'not fixed' reply only reopens the ticket when the setting says so (default: record)",
        "sql/migrations/0013_replies.sql",
        "        IF p_reopen THEN\n            UPDATE public.tickets t SET status = 'open'",
        "        IF true THEN\n            UPDATE public.tickets t SET status = 'open'",
        ("tests/test_replies.py",),
    ),
    # --- what citizens and logs see -------------------------------------------------
    Mutant(
        "masking",
        "phone numbers are never logged whole",
        "sla_daemon/phones.py",
        "    shown = 4\n",
        "    shown = 12\n",
        ("tests/test_phones.py", "tests/test_notifications.py"),
    ),
    Mutant(
        "language-fallback",
        "a language without a catalog gets English",
        "sla_daemon/messages.py",
        "        return self._lookup(code) or FALLBACK_LANGUAGE",
        "        return self._lookup(code) or 'zu'",
        ("tests/test_messages.py",),
    ),
)


def _apply(mutant: Mutant, root: Path) -> bool:
    path = root / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        return False
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    return True


def _run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        return 1, "timeout"
    return proc.returncode, proc.stdout + proc.stderr


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+)", line)
        if match:
            return match.group(2)
    return output.strip().splitlines()[-1] if output.strip() else "?"


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    outcome: str  # killed, survived, stale, error
    detail: str
    seconds: float


def run_mutant(mutant: Mutant) -> Result:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.id}-") as tmp:
        root = Path(tmp) / "repo"
        shutil.copytree(ROOT, root, ignore=COPY_IGNORE)
        if not _apply(mutant, root):
            return Result(mutant, "stale", f"text not found once in {mutant.path}", 0.0)
        missing = [t for t in mutant.tests if not (root / t.split("::")[0]).exists()]
        if missing:
            return Result(mutant, "stale", f"no such test: {', '.join(missing)}", 0.0)
        code, output = _run_tests(root, mutant.tests)
    seconds = time.monotonic() - started
    if code == 0:
        return Result(mutant, "survived", "every test passed", seconds)
    if code == 1:  # pytest: tests ran and some failed
        return Result(mutant, "killed", _first_failure(output), seconds)
    # collection errors, interruptions, usage: not a kill (the mutant broke the run)
    return Result(mutant, "error", f"pytest exit {code}: {_first_failure(output)}", seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--jobs", type=int, default=2, help="mutants at once (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.only and len(mutants) != len(set(args.only)):
        known = {m.id for m in MUTANTS}
        parser.error(f"unknown mutant(s): {', '.join(sorted(set(args.only) - known))}")
    if args.list:
        for m in mutants:
            print(f"{m.id:28} {m.path:38} {m.promise}")
        return 0
    if not args.no_baseline:
        tests = tuple(sorted({t for m in mutants for t in m.tests}))
        print(f"baseline: {len(tests)} test files, unmutated ...", file=sys.stderr, flush=True)
        code, output = _run_tests(ROOT, tests)
        if code != 0:
            print(f"baseline fails ({_first_failure(output)}): fix that first", file=sys.stderr)
            return 2
    results: list[Result] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_mutant, m): m for m in mutants}
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results.append(r)
            print(
                f"[{len(results)}/{len(mutants)}] {r.mutant.id}: {r.outcome}"
                f" ({r.seconds:.0f}s) {r.detail}",
                file=sys.stderr,
                flush=True,
            )
    order = {m.id: i for i, m in enumerate(mutants)}
    results.sort(key=lambda r: order[r.mutant.id])
    print("| mutant | promise | result | first failing test |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.mutant.id} | {r.mutant.promise} | {r.outcome} | {r.detail} |")
    kinds = ("killed", "survived", "stale", "error")
    counts = {k: sum(r.outcome == k for r in results) for k in kinds}
    print("\n" + ", ".join(f"{counts[k]} {k}" for k in kinds))
    return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
