"""What the fake Twilio received, reconciled against what each part expects."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .common import log


class FakeClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url
        self._session = session

    async def count(self) -> int:
        async with self._session.get(f"{self._base}/_bench/count") as r:
            return int((await r.json())["count"])

    async def messages(self, since: int) -> list[tuple[float, str, str]]:
        async with self._session.get(f"{self._base}/_bench/messages?since={since}") as r:
            doc = await r.json()
        return [(float(t), str(to), str(body)) for t, to, body in doc["messages"]]

    async def wait_for(
        self, since: int, expected: int, timeout: float, label: str
    ) -> tuple[bool, float]:
        """Poll until ``expected`` messages arrived after ``since``; (all there, when)."""
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while True:
            got = await self.count() - since
            if got >= expected:
                return True, time.time()
            if time.monotonic() > deadline:
                log(f"{label}: only {got}/{expected} messages after {timeout:g}s")
                return False, time.time()
            if time.monotonic() - last_report > 2:
                log(f"{label}: {got}/{expected} messages received")
                last_report = time.monotonic()
            await asyncio.sleep(0.02)


@dataclass
class Expected:
    """Message bodies a part expects, each keyed (tracking number, status or 'escalation')."""

    bodies: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, key: tuple[str, str], body: str) -> None:
        self.bodies[body] = key

    @property
    def keys(self) -> set[tuple[str, str]]:
        return set(self.bodies.values())


def reconcile(
    received: Iterable[tuple[float, str, str]],
    expected: Expected,
    only: set[str] | None = None,
    staff: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[tuple[str, str], float]]:
    """Counts, and each expected key's first arrival time; ``only``: the tracking
    numbers whose messages must have arrived (default: all expected); ``staff``: the
    WhatsApp addresses of staff, whose alerts are counted apart."""
    counts: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], float] = {}
    unexpected = 0
    staff_alerts: Counter[str] = Counter()
    for t, to, body in received:
        if to in staff:
            staff_alerts[body] += 1
            continue
        key = expected.bodies.get(body)
        if key is None:
            unexpected += 1
            continue
        counts[key] += 1
        if key not in first or t < first[key]:
            first[key] = t
    keys = expected.keys
    if only is not None:
        keys = {k for k in keys if k[0] in only}
    return (
        {
            "expected": len(keys),
            "received": sum(counts.values()),
            "missing": len(keys - counts.keys()),
            "duplicates": sum(c - 1 for c in counts.values() if c > 1),
            "unexpected": unexpected,
            "staff_alerts": sum(staff_alerts.values()),
            "staff_alert_duplicates": sum(c - 1 for c in staff_alerts.values() if c > 1),
        },
        first,
    )


def delivery_report(
    stats: dict[str, Any], states: dict[str, int], expected_rows: int, complete: bool = True
) -> dict[str, Any]:
    """``complete``: every expected row exists and had time to be sent; otherwise rows
    still pending are work in progress, and only dead ones count as lost."""
    not_done = sum(n for s, n in states.items() if s not in ("sent", "superseded"))
    if not complete:
        not_done = states.get("dead", 0)
    return {
        **stats,
        "outbox_states": states,
        "outbox_rows": sum(states.values()),
        "outbox_rows_expected": expected_rows,
        "superseded": states.get("superseded", 0),
        "lost": not_done + stats["missing"],
        "duplicates": stats["duplicates"],
    }
