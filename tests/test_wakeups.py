"""How status changes wake the sender, and what they cost writers (migration 0005).

Writers NOTIFY only when no daemon is marked awake and the sender has set its
wake-up flag; then once per sleep. A sentinel NOTIFY sent after the writes proves
that nothing else arrived: notifications are delivered in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest
from asyncpg.transaction import Transaction

from sla_daemon.listener import Listener

from . import factories as f
from .waiting import eventually

CHANNEL = "sla_daemon_outbox"
#: the wake-up hint writers read: 1 while a daemon is marked awake, 2 otherwise
HINT = "SELECT last_value FROM sla_daemon.outbox_hint"
#: whether the backend with pid $1 holds the sender's awake mark
HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1"
    " AND classid = 5459011 AND objid = 1 AND mode = 'ShareLock' AND granted"
)


class Wakeups:
    """A LISTENing session that counts the outbox wake-ups writers send."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.payloads: asyncio.Queue[str] = asyncio.Queue()

    async def count_after(self, writer: asyncpg.Connection) -> int:
        """Wake-ups received up to now, proven complete by a sentinel sent last."""
        await writer.execute(f"NOTIFY {CHANNEL}, 'sentinel'")
        count = 0
        while await asyncio.wait_for(self.payloads.get(), 10) != "sentinel":
            count += 1
        return count


@pytest.fixture
async def wakeups(dsn: str) -> AsyncIterator[Wakeups]:
    conn = await asyncpg.connect(dsn)
    w = Wakeups(conn)
    await conn.add_listener(CHANNEL, lambda *a: w.payloads.put_nowait(a[3]))
    try:
        yield w
    finally:
        await conn.close()


async def flip(conn: asyncpg.Connection, tid: UUID, times: int) -> None:
    """Change the ticket's status ``times`` times, each in its own transaction."""
    for _ in range(times):
        status = await conn.fetchval("SELECT status::text FROM tickets WHERE id = $1", tid)
        new = "in_progress" if status == "open" else "open"
        await conn.execute("UPDATE tickets SET status = $1 WHERE id = $2", new, tid)


@contextlib.asynccontextmanager
async def waking_writer(dsn: str, tid: UUID) -> AsyncIterator[Transaction]:
    """A writer whose status change (no daemon marked) took the wake-up lock, held
    until the caller commits or rolls back the transaction it is given."""
    writer = await asyncpg.connect(dsn)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid)
        yield tx
    finally:
        await writer.close()


async def test_one_wake_up_per_sleep(conn: asyncpg.Connection, wakeups: Wakeups) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("SELECT sla_daemon.outbox_sleep()")
    await flip(conn, tid, 5)
    assert await wakeups.count_after(conn) == 1
    # the sender slept again: the next change wakes it, once
    await conn.execute("SELECT sla_daemon.outbox_sleep()")
    await flip(conn, tid, 3)
    assert await wakeups.count_after(conn) == 1


async def test_no_wake_up_while_a_daemon_is_marked_awake(
    conn: asyncpg.Connection, dsn: str, wakeups: Wakeups
) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    daemon = await asyncpg.connect(dsn)
    try:
        assert await daemon.fetchval("SELECT sla_daemon.outbox_awake()") is True
        await daemon.execute("SELECT sla_daemon.outbox_sleep()")  # flag set, still awake
        await flip(conn, tid, 4)
        assert await wakeups.count_after(conn) == 0
        assert await daemon.fetchval("SELECT sla_daemon.outbox_release()") is True
        await flip(conn, tid, 2)
        assert await wakeups.count_after(conn) == 1
    finally:
        await daemon.close()
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.messages") == 6


async def test_no_daemon_no_wake_ups(conn: asyncpg.Connection, wakeups: Wakeups) -> None:
    # A daemon that died asleep leaves the flag set: one NOTIFY clears it, then none.
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("SELECT sla_daemon.outbox_sleep()")
    await flip(conn, tid, 1)
    assert await wakeups.count_after(conn) == 1
    await flip(conn, tid, 20)
    assert await wakeups.count_after(conn) == 0
    assert await conn.fetchval("SELECT count(*) FROM sla_daemon.messages") == 21


async def test_listener_carries_the_awake_mark(
    conn: asyncpg.Connection, dsn: str, wakeups: Wakeups
) -> None:
    tid = await f.ticket(conn, await f.municipality(conn))
    woken = asyncio.Event()
    listener = Listener(dsn, {CHANNEL: woken}, health_interval=0.2, health_timeout=2)
    stopping = asyncio.Event()
    await listener.connect()
    runner = asyncio.create_task(listener.run(stopping))
    try:
        await conn.execute("SELECT sla_daemon.outbox_sleep()")
        await listener.mark_awake()
        await listener.mark_awake()  # idempotent: one mark, one release
        assert await conn.fetchval(HELD, listener.backend_pid) == 1
        await flip(conn, tid, 2)
        assert await wakeups.count_after(conn) == 0
        await listener.mark_asleep()
        assert await conn.fetchval(HELD, listener.backend_pid) == 0
        await flip(conn, tid, 1)
        await asyncio.wait_for(woken.wait(), 10)

        # A lost connection takes the mark with it; the new one starts unmarked.
        await listener.mark_awake()
        old_pid = listener.backend_pid
        assert await conn.fetchval(HELD, old_pid) == 1
        await conn.execute("SELECT pg_terminate_backend($1)", old_pid)
        await eventually(lambda: listener.healthy and listener.backend_pid != old_pid)
        await listener.mark_awake()
        assert await conn.fetchval(HELD, listener.backend_pid) == 1
    finally:
        stopping.set()
        await asyncio.wait_for(runner, 10)
        await listener.close()


async def test_an_older_row_taken_in_late_is_superseded(conn: asyncpg.Connection) -> None:
    # Intake rows are taken in heap order, so a ticket's older row can reach the
    # outbox after its newer one was sent; it must then never be sent.
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", tid)
    await conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", tid)
    older = await conn.fetchrow(
        "DELETE FROM sla_daemon.outbox_intake WHERE new_status = 'in_progress' RETURNING *"
    )
    assert older is not None
    claimed = await conn.fetch("SELECT * FROM sla_daemon.claim_outbox('w', 10, 60)")
    assert [r["new_status"] for r in claimed] == ["resolved"]
    newer = claimed[0]["id"]
    assert older["id"] < newer
    await conn.execute(
        "SELECT sla_daemon.finish_outbox($1, $2, '{sent}', '{SM1}', '{NULL}', '{NULL}',"
        " '{NULL}', '{en}')",
        [claimed[0]["claim_token"]],
        [newer],
    )
    await conn.execute(
        "INSERT INTO sla_daemon.outbox_intake"
        " (id, ticket_id, kind, old_status, new_status, created_at)"
        " OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6)",
        *(older[c] for c in ("id", "ticket_id", "kind", "old_status", "new_status", "created_at")),
    )
    assert await conn.fetch("SELECT * FROM sla_daemon.claim_outbox('w', 10, 60)") == []
    row = await conn.fetchrow(
        "SELECT state, superseded_by FROM sla_daemon.outbox WHERE id = $1", older["id"]
    )
    assert row is not None
    assert (row["state"], row["superseded_by"]) == ("superseded", newer)


async def test_the_hint_follows_the_awake_mark(
    conn: asyncpg.Connection, dsn: str, wakeups: Wakeups
) -> None:
    # Writers read a hint (a sequence) before trying the wake-up lock: 1 while a daemon
    # holds the awake mark, 2 from before it drops the mark. A daemon that died while
    # awake leaves 1: writers then send no wake-up until a daemon marks itself again.
    tid = await f.ticket(conn, await f.municipality(conn))
    assert await conn.fetchval(HINT) == 2
    daemon = await asyncpg.connect(dsn)
    try:
        assert await daemon.fetchval("SELECT sla_daemon.outbox_awake()") is True
        assert await conn.fetchval(HINT) == 1
        assert await daemon.fetchval("SELECT sla_daemon.outbox_release()") is True
        assert await conn.fetchval(HINT) == 2
        await daemon.execute("SELECT sla_daemon.outbox_sleep()")
        await flip(conn, tid, 1)
        assert await wakeups.count_after(conn) == 1
        # died awake: the lock goes with the session, the hint stays
        assert await daemon.fetchval("SELECT sla_daemon.outbox_awake()") is True
        await daemon.execute("SELECT sla_daemon.outbox_sleep()")
    finally:
        await daemon.close()
    assert await conn.fetchval(HINT) == 1
    await flip(conn, tid, 2)
    assert await wakeups.count_after(conn) == 0
    # the next daemon to mark itself awake and asleep restores it
    again = await asyncpg.connect(dsn)
    try:
        assert await again.fetchval("SELECT sla_daemon.outbox_awake()") is True
        assert await again.fetchval("SELECT sla_daemon.outbox_release()") is True
    finally:
        await again.close()
    await flip(conn, tid, 1)
    assert await wakeups.count_after(conn) == 1


async def test_a_daemon_marks_itself_awake_past_a_writer_waking_it(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # While no daemon is marked, a writer's status change takes the wake-up lock for the
    # rest of its transaction. At 32 writers one of them nearly always holds it, and a
    # daemon that only tried the lock stayed unmarked (93 % of wake-ups in
    # benchmarks.writer_overhead), leaving every writer on the dear path. The daemon now
    # waits briefly for the lock, queued ahead of writers, whose tries then fail at once.
    m = await f.municipality(conn)
    first, second = await f.ticket(conn, m), await f.ticket(conn, m)
    await conn.execute("SELECT sla_daemon.outbox_sleep()")
    daemon = await asyncpg.connect(dsn)
    try:
        async with waking_writer(dsn, first) as tx:
            marking = asyncio.create_task(daemon.fetchval("SELECT sla_daemon.outbox_awake()"))

            async def daemon_waits() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                        daemon.get_server_pid(),
                    )
                )

            await eventually(daemon_waits, timeout=5, interval=0.005, what="the daemon queued")
            # another writer meanwhile: its try fails at once (the daemon is queued first)
            await asyncio.wait_for(
                conn.execute("UPDATE tickets SET status = 'in_progress' WHERE id = $1", second),
                5,
            )
            await tx.commit()
        assert await asyncio.wait_for(marking, 5) is True
        assert await conn.fetchval(HINT) == 1
        assert await daemon.fetchval("SELECT sla_daemon.outbox_release()") is True
    finally:
        await daemon.close()


async def test_a_writers_long_transaction_delays_the_awake_mark_only_briefly(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # A writer that keeps its transaction open after waking the sender holds the lock
    # for as long: the daemon waits at most sla_daemon.outbox_awake's lock_timeout, then
    # goes on unmarked (writers' tries fail against the holder meanwhile: no wake-ups).
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("SELECT sla_daemon.outbox_sleep()")
    daemon = await asyncpg.connect(dsn)
    try:
        async with waking_writer(dsn, tid) as tx:
            loop = asyncio.get_running_loop()
            started = loop.time()
            awake = await asyncio.wait_for(daemon.fetchval("SELECT sla_daemon.outbox_awake()"), 5)
            assert awake is False
            assert loop.time() - started < 2  # the bound is 50 ms; generous for a busy CI
            assert await daemon.fetchval(HINT) == 2
            await tx.rollback()
        assert await daemon.fetchval("SELECT sla_daemon.outbox_awake()") is True
    finally:
        await daemon.close()


async def test_after_a_failed_mark_the_listener_waits_before_trying_again(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # The sender tries to mark itself (in the background) before every claim; while a
    # writer's open transaction holds the wake-up lock each try waits out outbox_awake's
    # lock_timeout, so after a failed try the listener waits mark_retry seconds.
    tid = await f.ticket(conn, await f.municipality(conn))
    await conn.execute("SELECT sla_daemon.outbox_sleep()")
    listener = Listener(dsn, {CHANNEL: asyncio.Event()}, health_timeout=2, mark_retry=60)
    await listener.connect()
    try:
        async with waking_writer(dsn, tid) as tx:
            await listener.mark_awake()  # waits out the bound, fails
            await tx.commit()  # the lock is free now, but the listener does not ask yet
        await listener.mark_awake()
        assert await conn.fetchval(HELD, listener.backend_pid) == 0
    finally:
        await listener.close()
    again = Listener(dsn, {CHANNEL: asyncio.Event()}, health_timeout=2, mark_retry=0)
    await again.connect()
    try:
        await again.mark_awake()
        assert await conn.fetchval(HELD, again.backend_pid) == 1
    finally:
        await again.close()


async def test_a_mark_tried_in_the_background_is_never_left_behind(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # The sender marks itself awake in the background (its claim does not wait for the
    # lock); going to sleep at once after must still leave no mark and the hint at 2.
    listener = Listener(dsn, {CHANNEL: asyncio.Event()}, health_timeout=2)
    await listener.connect()
    try:
        listener.mark_awake_soon()
        await listener.mark_asleep()
        if listener._marking is not None:  # let a try left running (the bug) finish first
            await listener._marking
        assert await conn.fetchval(HELD, listener.backend_pid) == 0
        assert await conn.fetchval(HINT) == 2
        listener.mark_awake_soon()
        await eventually(lambda: conn.fetchval(HELD, listener.backend_pid), what="marked")
        assert await conn.fetchval(HINT) == 1
        await listener.mark_asleep()
        assert await conn.fetchval(HELD, listener.backend_pid) == 0
    finally:
        await listener.close()
