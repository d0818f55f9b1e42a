"""The one dedicated LISTEN connection: wake-ups in, health out.

A NOTIFY is only a hint to look at the tables, so a lost one costs a delay, never
work. What matters is noticing a dead connection: it is checked with a timed query,
watched for termination, and after a loss re-opened with backoff; then every
channel is woken, because notifications sent meanwhile are gone.

The connection also carries the sender's "awake" mark: a session-level advisory lock
that status-change triggers test instead of reading the wake-up flag (see migration
0005). Being a session lock, it goes with the connection: a daemon that dies or
loses it never leaves writers believing it awake.

A peer that vanishes without closing (a crashed host, a dropped NAT entry) leaves a
half-open TCP socket that neither side notices while idle. Keepalives are set on
both ends of the connection: on the daemon's socket, so a dead server is noticed even
between health checks, and on the server's (``tcp_keepalives_*``), so a dead daemon's
session, and with it the awake mark writers trust, goes within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_random_exponential,
)

from . import db
from .db import QUERIES
from .health import connection_lost

__all__ = ["KEEPALIVE", "Listener", "set_keepalive"]

log = logging.getLogger(__name__)

#: TCP keepalive: first probe after IDLE idle seconds, then every INTERVAL, the peer
#: dead after COUNT unanswered (about 11 s); unacknowledged data gives up as soon.
KEEPALIVE = {"idle": 5, "interval": 2, "count": 3}
_GIVE_UP_MS = (KEEPALIVE["idle"] + KEEPALIVE["interval"] * KEEPALIVE["count"]) * 1000
#: The same for the server's end (ignored by PostgreSQL on a Unix socket).
SERVER_SETTINGS = {
    "application_name": "sla-daemon",
    "tcp_keepalives_idle": str(KEEPALIVE["idle"]),
    "tcp_keepalives_interval": str(KEEPALIVE["interval"]),
    "tcp_keepalives_count": str(KEEPALIVE["count"]),
    "tcp_user_timeout": str(_GIVE_UP_MS),
}


def set_keepalive(sock: socket.socket | None) -> bool:
    """Turn on short keepalives on a TCP socket; False (and nothing done) for any other."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE["idle"]),
        ("TCP_KEEPINTVL", KEEPALIVE["interval"]),
        ("TCP_KEEPCNT", KEEPALIVE["count"]),
        ("TCP_USER_TIMEOUT", _GIVE_UP_MS),
    ):
        if hasattr(socket, option):  # Linux has all four; others fewer
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return True


#: After a failed try to mark the sender awake (a writer's transaction held the
#: wake-up lock past outbox_awake's lock_timeout), claims go on unmarked this long
#: before the next try, so such a writer keeps the LISTEN connection (whose health
#: checks queue behind a try) waiting a fifth of the time at most.
MARK_RETRY_SECONDS = 0.25


class Listener:
    def __init__(
        self,
        dsn: str,
        channels: Mapping[str, asyncio.Event],
        *,
        health_interval: float = 5.0,
        health_timeout: float = 2.0,
        reconnect_max: float = 3.0,
        on_reconnect: Callable[[], None] | None = None,
        mark_retry: float = MARK_RETRY_SECONDS,
    ) -> None:
        self._dsn = dsn
        self._channels = channels
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self._reconnect_max = reconnect_max
        self._on_reconnect = on_reconnect
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._ops = asyncio.Lock()  # one query at a time on the connection
        self._awake = False
        self._mark_retry = mark_retry
        self._unmarked_until = 0.0  # monotonic: no new try to mark awake before this
        self._marking: asyncio.Task[None] | None = None  # mark_awake_soon()'s try
        self._lost_since: float | None = None  # monotonic start of an outage
        self.healthy = False
        self.backend_pid: int | None = None

    async def connect(self, stopping: asyncio.Event | None = None) -> None:
        """Open the connection and LISTEN, retrying with backoff until it works."""
        stopping = stopping or asyncio.Event()

        async def pause(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)
            if stopping.is_set():
                raise asyncio.CancelledError

        def failed(state: RetryCallState) -> None:
            """One line per outage (the first failure); the retries at DEBUG."""
            cause = state.outcome.exception() if state.outcome else None
            if self._lost_since is None:
                self._lost_since = time.monotonic()
                log.warning(
                    "database connection failed (%s); retrying every %gs at most",
                    _one_line(cause),
                    self._reconnect_max,
                )
            else:
                log.debug("database connection still failing (%s)", _one_line(cause))

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(db.DB_ERRORS),
            wait=wait_random_exponential(multiplier=0.2, max=self._reconnect_max),
            sleep=pause,
            before_sleep=failed,
        ):
            with attempt:
                await self._open()
        if self._lost_since is not None:
            log.info("database connection back after %.1fs", time.monotonic() - self._lost_since)
            self._lost_since = None

    async def _open(self) -> None:
        await self._close_quietly()
        conn = await db.connect(
            self._dsn, command_timeout=self._health_timeout * 5, server_settings=SERVER_SETTINGS
        )
        try:
            transport = getattr(conn, "_transport", None)
            set_keepalive(transport.get_extra_info("socket") if transport else None)
            for channel, event in self._channels.items():
                await conn.add_listener(channel, _setter(event))
            conn.add_termination_listener(lambda _c: self._lost.set())
        except BaseException:
            await conn.close(timeout=1)
            raise
        self._conn = conn
        self._awake = False
        self.backend_pid = conn.get_server_pid()
        self._lost.clear()
        self.healthy = True
        log.log(
            logging.DEBUG if self._lost_since else logging.INFO,
            "listening on %s",
            ", ".join(self._channels),
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Health-check until stopped; on a loss reconnect, then wake every channel."""
        while not stopping.is_set():
            lost = asyncio.ensure_future(self._lost.wait())
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait(
                    {lost, stop}, timeout=self._health_interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                lost.cancel()
                stop.cancel()
            if stopping.is_set():
                break
            cause = "the server closed it" if self._lost.is_set() else await self._check()
            if cause is None:
                continue
            self.healthy = False
            self._lost_since = time.monotonic()
            log.warning(
                "database connection lost (%s); reconnecting every %gs at most",
                cause,
                self._reconnect_max,
            )
            try:
                await self.connect(stopping)
            except asyncio.CancelledError:
                if stopping.is_set():
                    break
                raise
            if self._on_reconnect:
                self._on_reconnect()
            for event in self._channels.values():
                event.set()  # re-read the tables: what was notified meanwhile is gone

    async def _check(self) -> str | None:
        """None while the connection answers in time; else why not."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return "the connection is closed"
        try:
            async with self._ops:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self._health_timeout)
        except db.DB_ERRORS as exc:
            return f"health check: {_one_line(exc)}"
        return None

    async def mark_awake(self) -> None:
        """Tell writers the sender is awake, so their triggers skip the wake-up flag.

        A no-op while marked. Marking waits briefly for a writer that holds the
        wake-up lock (outbox_awake's lock_timeout) and fails only when that writer's
        transaction outlasts it; then calls are no-ops for ``mark_retry`` seconds."""
        await self._set_awake(True)

    def mark_awake_soon(self) -> None:
        """mark_awake() in the background, so a claim need not wait for the lock."""
        if self._awake or time.monotonic() < self._unmarked_until:
            return
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self.mark_awake())

    async def mark_asleep(self) -> None:
        """Drop the awake mark; call after the wake-up flag is set. A try to mark
        awake still under way ends first, so the mark is never left behind."""
        if self._marking is not None:
            await self._marking
        await self._set_awake(False)

    async def _set_awake(self, awake: bool) -> None:
        conn = self._conn
        if conn is None or conn.is_closed() or self._awake == awake:
            return
        if awake and time.monotonic() < self._unmarked_until:
            return
        query = QUERIES["outbox_awake" if awake else "outbox_release"]
        try:
            async with self._ops:
                done = await asyncio.wait_for(conn.fetchval(query), self._health_timeout)
        except db.DB_ERRORS as exc:
            # Without the mark writers read the flag: slower for them, never a loss. A lost
            # connection is told by run() once.
            log.log(
                logging.DEBUG if connection_lost(exc) else logging.WARNING,
                "LISTEN connection failed to mark the sender %s: %s",
                "awake" if awake else "asleep",
                exc,
            )
            self._lost.set()
            return
        if conn is self._conn:
            self._awake = awake and bool(done)
            if awake and not done:
                self._unmarked_until = time.monotonic() + self._mark_retry

    async def close(self) -> None:
        self.healthy = False
        if self._marking is not None and not self._marking.done():
            self._marking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._marking
        await self._close_quietly()

    async def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown cause"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _setter(event: asyncio.Event) -> Callable[..., None]:
    def on_notify(*_args: object) -> None:
        event.set()

    return on_notify
