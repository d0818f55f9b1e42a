"""Exactly once and in order with two daemons, short leases and a slow Twilio.

Half of the POSTs are answered slowly, the send queue is narrow, so claimed rows wait
there longer than their lease: each must have its lease extended before it is POSTed,
or be handed back, and a ticket's newer status must never overtake its older one.
Counted by arrival at the fake (what Twilio would have received).
"""

from __future__ import annotations

from collections import Counter

import asyncpg

from sla_daemon.messages import MessageCatalog

from .daemon_harness import daemon_settings, running
from .fake_twilio import DeliveryFaults, FakeTwilio, delivery_faults
from .test_daemon import make_tickets, outbox_states, wait_until_finished

CATALOG = MessageCatalog.load()
STATUSES = ("in_progress", "resolved")


def faults(fake: FakeTwilio, tns: list[str]) -> DeliveryFaults:
    """Duplicates and reorderings among the fake's arrivals, for these tickets."""
    bodies = {
        CATALOG.render_status(status, "en", tn): (tn, rank)
        for tn in tns
        for rank, status in enumerate(STATUSES)
    }
    return delivery_faults(fake.arrivals, lambda body: bodies.get(body or ""))


async def test_the_fake_counts_duplicates_and_reorderings() -> None:
    """The counter itself: a resend after an answered POST is a duplicate, after a lost
    answer it is not; an older status after a newer one is a reordering."""
    from .fake_twilio import Arrival

    def body(status: str, tn: str) -> str:
        return CATALOG.render_status(status, "en", tn)

    arrivals = [
        Arrival("a", body("in_progress", "T1"), 0, answered=False),
        Arrival("a", body("in_progress", "T1"), 1, answered=True),  # answer lost before: ok
        Arrival("a", body("in_progress", "T1"), 2, answered=True),  # duplicate
        Arrival("a", body("resolved", "T2"), 3, answered=True),
        Arrival("a", body("in_progress", "T2"), 4, answered=True),  # reordering
    ]
    fake = FakeTwilio()
    fake.arrivals = arrivals
    assert faults(fake, ["T1", "T2"]) == DeliveryFaults(duplicates=1, reorderings=1, unanswered=1)


async def test_two_daemons_and_a_slow_twilio_send_nothing_twice_and_nothing_out_of_order(
    conn: asyncpg.Connection, dsn: str
) -> None:
    tickets = 150
    _, tns = await make_tickets(conn, tickets)
    async with FakeTwilio() as fake:
        fake.slow(0.6)  # every other POST; below the send timeout, so answers arrive
        common = {
            "send_timeout_seconds": 1.0,
            "outbox_lease_seconds": 6.5,  # the least allowed: > send timeout + 5 s
            "send_concurrency": 3,
            "outbox_batch_size": 60,  # ~60 queued rows at ~10/s: longer than the lease
            "metrics_address": "off",
        }
        async with (
            running(daemon_settings(dsn, fake, worker_id="slow-a", **common)),
            running(daemon_settings(dsn, fake, worker_id="slow-b", **common)),
        ):
            await conn.execute("UPDATE tickets SET status = 'in_progress'")
            await fake.wait_for(40, timeout=20)  # first statuses queued and in flight
            await conn.execute("UPDATE tickets SET status = 'resolved'")
            states = await wait_until_finished(conn, timeout=60)
    found = faults(fake, tns)
    assert found.duplicates == 0 and found.reorderings == 0, found
    assert found.unanswered == 0, found
    # nothing lost: every ticket's newest status arrived, every row ended
    assert states["sent"] + states["superseded"] == 2 * tickets, states
    last = {tn: CATALOG.render_status("resolved", "en", tn) for tn in tns}
    received = Counter(a.body for a in fake.arrivals)
    assert all(received[body] == 1 for body in last.values())
    assert await outbox_states(conn) == states
