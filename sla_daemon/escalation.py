"""EscalationService: escalate breached tickets, each in its own transaction.

The work is one stored function, ``sla_daemon.escalate_ticket``, which takes a
transaction-level advisory lock keyed on the ticket id (the same key in every
process), re-reads the ticket under it and escalates only if it is still live and
still breached. Many daemons may sweep at once: each ticket is escalated once.

A ticket whose escalation fails (a platform constraint or trigger, its row locked by a
long transaction past the function's lock_timeout, its advisory lock held by a
foreign session) is logged with the reason, counted, and looked at again after its
own backoff (``sla_daemon.escalation_failed``); it never delays the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from .db import DB_ERRORS, QUERIES
from .metrics import Metrics
from .sla import BreachedTicket
from .staff import skip_reason

__all__ = ["EscalationResult", "EscalationService", "LevelResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EscalationResult:
    ticket_id: UUID
    escalated: bool
    #: escalated, escalated_without_manager, not_found, not_breached, or (not escalated,
    #: retried on the ticket's own backoff) locked, lock_timeout, failed.
    outcome: str
    breach_type: str | None
    manager_id: UUID | None
    tracking_number: str | None
    #: issue 12: the team manager's staff alert: queued, or why not (sla_daemon.staff.SKIPPED);
    #: None when there was no escalation or no manager
    staff_alert: str | None = None


@dataclass(frozen=True)
class LevelResult:
    ticket_id: UUID
    #: escalated, moot (no longer escalated, or a new cycle), locked or failed.
    outcome: str
    level: int | None
    assigned_to: UUID | None
    tracking_number: str | None
    overdue_hours: float | None
    #: issue 12: the alert to the person assigned: queued, or why not
    staff_alert: str | None = None


class EscalationService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        concurrency: int = 4,
        batch_size: int = 20,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._metrics = metrics

    async def escalate(self, ticket_id: UUID, reason: str | None = None) -> EscalationResult:
        row = await self._pool.fetchrow(QUERIES["escalate_ticket"], ticket_id, reason)
        assert row is not None
        result = EscalationResult(
            ticket_id=ticket_id,
            escalated=row["escalated"],
            outcome=row["outcome"],
            breach_type=row["breach_type"],
            manager_id=row["manager_id"],
            tracking_number=row["tracking_number"],
            staff_alert=row["staff_alert"],
        )
        self._report(result)
        return result

    @staticmethod
    def _report(result: EscalationResult) -> None:
        if result.outcome == "escalated_without_manager":
            log.warning(
                "ticket %s escalated (%s breach) but its team has no manager "
                "(or it has no team): assignee kept",
                result.tracking_number,
                result.breach_type,
            )
        elif result.escalated:
            log.info("ticket %s escalated (%s breach)", result.tracking_number, result.breach_type)
        if why := skip_reason(result.staff_alert):
            log.warning(
                "ticket %s escalated to its team manager, but no staff alert: %s",
                result.tracking_number,
                why,
            )

    async def escalate_ticket(self, ticket_id: UUID, reason: str | None = None) -> bool:
        """Escalate one ticket if it is still breached; True when this call escalated it."""
        return (await self.escalate(ticket_id, reason)).escalated

    async def bulk_escalate(
        self, breached: Iterable[BreachedTicket] | AsyncIterable[list[BreachedTicket]]
    ) -> int:
        """Escalate every ticket given, a bounded number at a time; returns how many were."""
        results = await self.bulk_escalate_results(breached)
        count = sum(r.escalated for r in results)
        log.info("Escalated %d/%d", count, len(results))
        return count

    async def bulk_escalate_results(
        self,
        breached: Iterable[BreachedTicket] | AsyncIterable[list[BreachedTicket]],
        stop: asyncio.Event | None = None,
    ) -> list[EscalationResult]:
        """Escalate each ticket, ``batch_size`` per transaction, ``concurrency`` at once.

        Each ticket keeps its own lock, re-check and subtransaction
        (``sla_daemon.escalate_tickets``): one that fails is recorded alone, with its own
        backoff. When ``stop`` is set, no more batches start (shutdown)."""
        semaphore = asyncio.BoundedSemaphore(self._concurrency)
        results: list[EscalationResult] = []

        async def one(batch: list[BreachedTicket]) -> None:
            try:
                results.extend(await self.escalate_batch(batch))
            finally:
                semaphore.release()

        async with (
            asyncio.TaskGroup() as tg,
            contextlib.aclosing(_chunks(breached, self._batch_size)) as batches,
        ):
            async for batch in batches:
                if stop is not None and stop.is_set():
                    break
                await semaphore.acquire()
                tg.create_task(one(batch))
        return results

    async def escalate_batch(self, tickets: list[BreachedTicket]) -> list[EscalationResult]:
        """Escalate these tickets in one transaction, each isolated; never raises."""
        reasons = [
            f"SLA {t.breach_type} deadline missed (overdue by {t.overdue_by_hours:.2f} h)"
            for t in tickets
        ]
        try:
            rows = await self._pool.fetch(
                QUERIES["escalate_tickets"], [t.ticket_id for t in tickets], reasons
            )
        except DB_ERRORS as exc:  # the whole batch failed (a lost connection, say)
            sqlstate = getattr(exc, "sqlstate", None)
            error = f"{type(exc).__name__}: {exc}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
            out = []
            for t in tickets:
                await self._failed(t, "error", error)
                out.append(
                    EscalationResult(t.ticket_id, False, "failed", t.breach_type, None, None)
                )
            return out
        by_id = {t.ticket_id: t for t in tickets}
        out = []
        for row in rows:
            result = EscalationResult(
                ticket_id=row["ticket_id"],
                escalated=row["escalated"],
                outcome=row["outcome"],
                breach_type=row["breach_type"],
                manager_id=row["manager_id"],
                tracking_number=row["tracking_number"],
                staff_alert=row["staff_alert"],
            )
            if row["error"] is not None:
                ticket = by_id[row["ticket_id"]]
                cause = result.outcome if result.outcome in ("locked", "lock_timeout") else "error"
                self._report_failure(ticket, cause, row["error"], row["retry_at"])
            else:
                self._report(result)
            out.append(result)
        return out

    async def _failed(self, ticket: BreachedTicket, cause: str, error: str) -> None:
        try:
            retry_at = await self._pool.fetchval(
                QUERIES["escalation_failed"], ticket.ticket_id, error
            )
        except DB_ERRORS as exc:
            retry_at = None
            log.warning(
                "could not record the failed escalation of %s: %s", ticket.tracking_number, exc
            )
        self._report_failure(ticket, cause, error, retry_at)

    def _report_failure(
        self, ticket: BreachedTicket, cause: str, error: str, retry_at: datetime | None
    ) -> None:
        if self._metrics is not None:
            self._metrics.escalation_failures.labels(cause).inc()
        log.warning(
            "ticket %s not escalated (%s): %s; next try %s",
            ticket.tracking_number,
            cause,
            error,
            retry_at.isoformat(timespec="seconds") if retry_at else "at the next sweep",
        )

    async def escalate_due_levels(self, batch_size: int = 500) -> list[LevelResult]:
        """Fire every due escalation level (2, 3, ...), each ticket in its own transaction.

        Under the ticket's escalation lock and re-check (sla_daemon.escalate_levels):
        each level once per cycle; levels missed while no daemon ran fire in order."""
        semaphore = asyncio.BoundedSemaphore(self._concurrency)
        results: list[LevelResult] = []

        async def one(ticket_id: UUID) -> None:
            async with semaphore:
                results.extend(await self._levels_isolated(ticket_id))

        ids = [r["ticket_id"] for r in await self._pool.fetch(QUERIES["due_levels"], batch_size)]
        async with asyncio.TaskGroup() as tg:
            for ticket_id in ids:
                tg.create_task(one(ticket_id))
        return results

    async def _levels_isolated(self, ticket_id: UUID) -> list[LevelResult]:
        try:
            rows = await self._pool.fetch(QUERIES["escalate_levels"], ticket_id)
        except DB_ERRORS as exc:
            await self._level_failed(ticket_id, f"{type(exc).__name__}: {exc}")
            return [LevelResult(ticket_id, "failed", None, None, None, None)]
        results = [
            LevelResult(
                ticket_id,
                r["outcome"],
                r["level"],
                r["assigned_to"],
                r["tracking_number"],
                r["overdue_hours"],
                r["staff_alert"],
            )
            for r in rows
        ]
        for r in results:
            if r.outcome == "locked":
                await self._level_failed(ticket_id, "escalation lock held by another session")
            elif r.outcome == "escalated":
                log.info(
                    "ticket %s escalated to level %d (overdue by %.2f h)",
                    r.tracking_number,
                    r.level,
                    r.overdue_hours or 0.0,
                )
                if why := skip_reason(r.staff_alert):
                    log.warning(
                        "ticket %s: no staff alert for level %d: %s",
                        r.tracking_number,
                        r.level,
                        why,
                    )
        return results

    async def _level_failed(self, ticket_id: UUID, error: str) -> None:
        if self._metrics is not None:
            self._metrics.escalation_failures.labels("level").inc()
        try:
            retry_at = await self._pool.fetchval(QUERIES["level_failed"], ticket_id, error)
        except DB_ERRORS as exc:
            retry_at = None
            error = f"{error}; not recorded: {exc}"
        log.warning(
            "escalation level of ticket %s not fired: %s; next try %s",
            ticket_id,
            error,
            retry_at.isoformat(timespec="seconds") if retry_at else "at the next sweep",
        )


async def _chunks(
    items: Iterable[BreachedTicket] | AsyncIterable[list[BreachedTicket]], size: int
) -> AsyncGenerator[list[BreachedTicket], None]:
    """Batches of at most ``size``, never waiting for more than what has arrived."""
    async with contextlib.aclosing(_batches(items)) as batches:
        async for batch in batches:
            for i in range(0, len(batch), size):
                yield batch[i : i + size]


async def _batches(
    items: Iterable[BreachedTicket] | AsyncIterable[list[BreachedTicket]],
) -> AsyncGenerator[list[BreachedTicket], None]:
    if isinstance(items, AsyncIterable):
        try:
            async for batch in items:
                yield batch
        finally:
            if isinstance(items, AsyncGenerator):
                await items.aclose()  # its cursor's connection goes back to the pool now
    else:
        yield list(items)
