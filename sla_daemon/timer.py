"""The SLA timer: sleep until the next deadline or warning, then escalate and warn.

``check_sla_breaches`` is one pass; ``SLATimer.run`` repeats it, sleeping until the
soonest instant that matters (database time), at most the safety interval, and is
woken early by the deadline trigger's NOTIFY. While a pass runs the daemon's wake
time is 'infinity', so any deadline set meanwhile notifies; after it, the trigger
notifies only for something sooner than the next instant the timer knows of (not its
wake time: a nearer deadline must show in ``sla_daemon_next_deadline_seconds`` at
once, not at the safety pass).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from .aio import wait_any
from .db import QUERIES
from .escalation import EscalationService
from .metrics import Metrics
from .sla import SLAService
from .staff import skip_reason

__all__ = ["PassResult", "SLATimer", "check_sla_breaches"]

log = logging.getLogger(__name__)

# Wake a hair after the instant, so the database's now() has passed it.
_EPSILON = timedelta(milliseconds=2)


@dataclass(frozen=True)
class PassResult:
    escalated: int
    examined: int
    warnings: int
    next_at: datetime | None
    db_now: datetime
    #: escalation levels (2, 3, ...) fired
    levels: int = 0


async def check_sla_breaches(
    pool: asyncpg.Pool,
    sla: SLAService,
    escalation: EscalationService,
    metrics: Metrics | None = None,
    started: datetime | None = None,
    stop: asyncio.Event | None = None,
) -> PassResult:
    """One pass: escalate every breached ticket, record due warnings, find the next instant.

    ``started`` is the database time the pass began: the next instant is sought after
    it, so one that fell due during the pass comes back (already past) rather than
    being skipped until the safety interval.
    """
    results = await escalation.bulk_escalate_results(sla.find_breached_tickets(), stop)
    escalated = [r for r in results if r.escalated]
    if results:
        log.info("Escalated %d/%d", len(escalated), len(results))
    levels = await escalation.escalate_due_levels()
    fired = [r for r in levels if r.outcome == "escalated"]
    await sla.tidy_deadlines()
    warnings = await sla.record_warnings()
    for w in warnings:
        log.warning(
            "SLA warning: ticket %s reaches its %s deadline at %s",
            w.tracking_number,
            w.deadline_kind,
            w.deadline.isoformat(timespec="seconds"),
        )
        if why := skip_reason(w.staff_alert):
            log.warning("SLA warning for ticket %s: no staff alert: %s", w.tracking_number, why)
    if metrics is not None:
        for r in escalated:
            metrics.escalations.labels(r.breach_type or "unknown").inc()
        for lv in fired:
            metrics.escalation_levels.labels(str(lv.level)).inc()
        for w in warnings:
            metrics.warnings.labels(w.deadline_kind).inc()
        alerts = [
            *(("escalation", r.staff_alert) for r in escalated),
            *(("escalation", lv.staff_alert) for lv in fired),
            *(("warning", w.staff_alert) for w in warnings),
        ]
        for kind, outcome in alerts:
            if outcome is not None:
                metrics.staff_alerts.labels(kind, outcome).inc()
    nxt = await sla.next_event_at(started)
    return PassResult(
        len(escalated), len(results), len(warnings), nxt.at, nxt.db_now, levels=len(fired)
    )


class SLATimer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sla: SLAService,
        escalation: EscalationService,
        *,
        safety_interval: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._sla = sla
        self._escalation = escalation
        self._safety = timedelta(seconds=safety_interval)
        self._metrics = metrics
        self.next_at: datetime | None = None
        self._next_mono: float | None = None  # next_at on this process's monotonic clock
        if metrics is not None:
            # Computed at each scrape: counts down between passes, negative when overdue.
            metrics.next_deadline.set_function(self._seconds_to_next)

    def _seconds_to_next(self) -> float:
        return -1.0 if self._next_mono is None else self._next_mono - time.monotonic()

    async def run(self, wake: asyncio.Event, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            wake.clear()
            started = await self._pool.fetchval(QUERIES["timer_awake"])
            result = await check_sla_breaches(
                self._pool, self._sla, self._escalation, self._metrics, started, stopping
            )
            wake_at = result.db_now + self._safety
            if result.next_at is not None:
                wake_at = min(wake_at, result.next_at + _EPSILON)
            self.next_at = result.next_at
            self._next_mono = (
                time.monotonic() + (result.next_at - result.db_now).total_seconds()
                if result.next_at is not None
                else None
            )
            await self._pool.execute(
                QUERIES["set_timer_wake"],
                result.next_at + _EPSILON if result.next_at is not None else None,
            )
            delay = max(0.0, (wake_at - result.db_now).total_seconds())
            await wait_any(wake, stopping, timeout=delay)
