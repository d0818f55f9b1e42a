"""SLAService: SLA configs, deadlines, breaches and warnings, read from the database.

The rules are the stored functions of ``sql/migrations`` (the same ones the ticket
triggers use); this module only calls them, so there is one implementation.
Breaches are judged on database time and streamed in batches.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from .db import QUERIES

__all__ = ["BreachedTicket", "Deadlines", "SLAConfig", "SLAService", "WarningTicket"]

BreachType = Literal["response", "resolution"]


@dataclass(frozen=True)
class SLAConfig:
    response_hours: float
    resolution_hours: float
    warning_threshold_pct: int
    #: 'category', 'municipality_default' or 'system_default'.
    source: str


@dataclass(frozen=True)
class Deadlines:
    response: datetime | None
    resolution: datetime | None


@dataclass(frozen=True)
class BreachedTicket:
    ticket_id: UUID
    tracking_number: str
    tenant_id: UUID
    category: str
    status: str
    breach_type: BreachType
    deadline: datetime
    overdue_by_hours: float


@dataclass(frozen=True)
class WarningTicket:
    ticket_id: UUID
    tracking_number: str
    deadline_kind: BreachType
    deadline: datetime
    warn_at: datetime
    #: issue 12: the team manager's staff alert (SLA_DAEMON_WARN_TEAM_MANAGER): queued,
    #: or why not (sla_daemon.staff.SKIPPED); None when not asked for
    staff_alert: str | None = None


@dataclass(frozen=True)
class NextEvent:
    #: The soonest warning or deadline still ahead, or None when nothing is pending.
    at: datetime | None
    db_now: datetime


class SLAService:
    """Reads SLA state; never changes a ticket except to (re)set its deadlines."""

    def __init__(
        self, pool: asyncpg.Pool, *, batch_size: int = 500, warn_team_manager: bool = False
    ) -> None:
        self._pool = pool
        self._batch_size = batch_size
        #: each warning recorded also alerts the ticket's team manager (issue 12)
        self._warn_team_manager = warn_team_manager

    async def get_sla_config(self, municipality_id: UUID, category: str | None) -> SLAConfig:
        row = await self._pool.fetchrow(QUERIES["sla_config_for"], municipality_id, category)
        assert row is not None  # the system defaults always answer
        return SLAConfig(
            response_hours=row["response_hours"],
            resolution_hours=row["resolution_hours"],
            warning_threshold_pct=row["warning_threshold_pct"],
            source=row["source"],
        )

    async def calculate_deadlines(
        self,
        municipality_id: UUID,
        category: str | None,
        created_at: datetime,
        is_sensitive: bool = False,
    ) -> Deadlines:
        row = await self._pool.fetchrow(
            QUERIES["compute_deadlines"], municipality_id, category, created_at, is_sensitive
        )
        if row is None:  # sensitive: never SLA-monitored
            return Deadlines(None, None)
        return Deadlines(row["response_deadline"], row["resolution_deadline"])

    async def set_ticket_deadlines(self, ticket_id: UUID) -> Deadlines:
        """Recompute a ticket's deadlines from its current config (e.g. after a config change)."""
        row = await self._pool.fetchrow(QUERIES["set_ticket_deadlines"], ticket_id)
        if row is None:
            raise LookupError(f"ticket {ticket_id} does not exist")
        return Deadlines(row["sla_response_deadline"], row["sla_resolution_deadline"])

    async def find_breached_tickets(
        self, batch_size: int | None = None
    ) -> AsyncIterator[list[BreachedTicket]]:
        """Breached tickets in batches, through a server-side cursor (never all at once)."""
        async for rows in self._stream(QUERIES["breached_tickets"], batch_size):
            yield [_breached(r) for r in rows]

    async def find_warning_tickets(
        self, batch_size: int | None = None
    ) -> AsyncIterator[list[WarningTicket]]:
        """Live tickets past their warning threshold, not breached, never warned for it."""
        async for rows in self._stream(QUERIES["due_warnings"], batch_size):
            yield [_warning(r) for r in rows]

    async def explain(self, tracking_number: str) -> dict[str, Any] | None:
        """How a ticket's deadlines were reached (config, calendar, cycle, closures,
        pauses, levels), as sla_daemon.explain_ticket tells it; None: no such ticket."""
        text = await self._pool.fetchval(QUERIES["explain_ticket"], tracking_number)
        if text is None:
            return None
        doc: dict[str, Any] = json.loads(text)
        return doc

    async def _stream(
        self, query: str, batch_size: int | None
    ) -> AsyncIterator[list[asyncpg.Record]]:
        size = batch_size or self._batch_size
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(query)
            while rows := await cursor.fetch(size):
                yield rows

    async def tidy_deadlines(self) -> int:
        """Drop due schedule rows whose ticket can no longer breach (resolved, moved...)."""
        count: int = await self._pool.fetchval(QUERIES["tidy_deadlines"])
        return count

    async def record_warnings(self, limit: int = 1000) -> list[WarningTicket]:
        """Record due warnings once each (announced on NOTIFY 'sla_daemon_warning'); with
        ``warn_team_manager``, each also queues a staff alert to its team's manager."""
        rows = await self._pool.fetch(QUERIES["record_warnings"], limit, self._warn_team_manager)
        return [_warning(r) for r in rows]

    async def next_event_at(self, after: datetime | None = None) -> NextEvent:
        """The soonest warning or deadline after ``after`` (default: the database's now)."""
        row = await self._pool.fetchrow(QUERIES["next_event_at"], after)
        assert row is not None
        return NextEvent(at=row["next_at"], db_now=row["db_now"])


def _breached(r: asyncpg.Record) -> BreachedTicket:
    return BreachedTicket(
        ticket_id=r["id"],
        tracking_number=r["tracking_number"],
        tenant_id=r["tenant_id"],
        category=r["category"],
        status=r["status"],
        breach_type=r["breach_type"],
        deadline=r["deadline"],
        overdue_by_hours=r["overdue_by_hours"],
    )


def _warning(r: asyncpg.Record) -> WarningTicket:
    return WarningTicket(
        ticket_id=r["ticket_id"],
        tracking_number=r["tracking_number"],
        deadline_kind=r["deadline_kind"],
        deadline=r["deadline"],
        warn_at=r["warn_at"],
        staff_alert=r.get("staff_alert"),
    )
