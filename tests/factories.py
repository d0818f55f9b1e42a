"""Small builders for platform rows, so tests say what matters and nothing else."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

_seq = itertools.count(1)

Executor = asyncpg.Connection | asyncpg.Pool


async def municipality(conn: Executor, name: str = "eThekwini") -> UUID:
    mid: UUID = await conn.fetchval(
        "INSERT INTO municipalities (name) VALUES ($1) RETURNING id", name
    )
    return mid


async def user(
    conn: Executor, phone: str | None = "0821234567", language: str | None = "en"
) -> UUID:
    uid: UUID = await conn.fetchval(
        "INSERT INTO users (phone, preferred_language) VALUES ($1, $2) RETURNING id",
        phone,
        language,
    )
    return uid


async def team(conn: Executor, tenant: UUID, manager: UUID | None = None) -> UUID:
    tid: UUID = await conn.fetchval(
        "INSERT INTO teams (tenant_id, name, manager_id) VALUES ($1, $2, $3) RETURNING id",
        tenant,
        f"team-{next(_seq)}",
        manager,
    )
    return tid


async def sla_config(
    conn: Executor,
    municipality_id: UUID,
    category: str | None,
    response_hours: float,
    resolution_hours: float,
    warning_pct: int = 80,
    active: bool = True,
) -> None:
    await conn.execute(
        "INSERT INTO sla_configs (municipality_id, category, response_hours, resolution_hours,"
        " warning_threshold_pct, is_active) VALUES ($1, $2, $3, $4, $5, $6)",
        municipality_id,
        category,
        response_hours,
        resolution_hours,
        warning_pct,
        active,
    )


async def ticket(
    conn: Executor,
    tenant: UUID,
    category: str = "water",
    user_id: UUID | None = None,
    **columns: Any,
) -> UUID:
    values: dict[str, Any] = {
        "tenant_id": tenant,
        "tracking_number": f"TKT-{next(_seq):06d}",
        "category": category,
        "user_id": user_id,
        **columns,
    }
    names = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    tid: UUID = await conn.fetchval(
        f"INSERT INTO tickets ({names}) VALUES ({params}) RETURNING id", *values.values()
    )
    return tid


async def deadlines(conn: Executor, ticket_id: UUID) -> tuple[datetime | None, datetime | None]:
    row = await conn.fetchrow(
        "SELECT sla_response_deadline, sla_resolution_deadline FROM tickets WHERE id = $1",
        ticket_id,
    )
    assert row is not None
    return row[0], row[1]
