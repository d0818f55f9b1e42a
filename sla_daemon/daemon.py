"""The daemon: wires the pool, the listener, the sender and the timer into one process.

Loops run in one ``asyncio.TaskGroup``. SIGTERM/SIGINT stop the claiming, let
in-flight sends finish within a bound (then release their claims), close the
connections and return 0. State is told through logs, metrics, /healthz and systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import asyncpg

from . import db, systemd
from .aio import wait_any
from .config import Settings
from .conversation import Conversation
from .escalation import EscalationService
from .health import LoopHealth, describe_error
from .listener import Listener
from .messages import MessageCatalog
from .metrics import Metrics, MetricsServer
from .notifications import NotificationService
from .outbox import OutboxProcessor
from .reconcile import Reconciler
from .sla import SLAService
from .templates import template_keys
from .timer import SLATimer
from .webhooks import WebhookServer

__all__ = ["Daemon", "DaemonError"]

log = logging.getLogger(__name__)

OUTBOX_CHANNEL = "sla_daemon_outbox"
TIMER_CHANNEL = "sla_daemon_timer"


class DaemonError(RuntimeError):
    """The daemon cannot start (schema not current, database unreachable, ...)."""


class Daemon:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        if not settings.database_url:
            raise DaemonError("DATABASE_URL is not set")
        if settings.twilio_partial and not settings.dry_run:
            raise DaemonError("Twilio is half configured (sla-daemon check says what is missing)")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.outbox: OutboxProcessor | None = None
        self.timer: SLATimer | None = None
        self.listener: Listener | None = None
        self.notifications: NotificationService | None = None
        self.metrics_server: MetricsServer | None = None
        self.webhook_server: WebhookServer | None = None
        self._pool: asyncpg.Pool | None = None
        self._pool_ok = False
        self._pool_read_only = False
        self._backlog = (0, 0)
        self.loops = LoopHealth(self.metrics)

    def stop(self) -> None:
        """Ask the daemon to shut down (what SIGTERM does)."""
        self.stopping.set()

    def health(self) -> tuple[bool, str]:
        """Ready (/healthz 200) only while messages can go out: alive, and Twilio has not
        refused the credentials (``twilio=unauthorized``)."""
        ok, detail = self.liveness()
        twilio = self.notifications.gate.problem() if self.notifications else None
        if twilio is None:
            return ok, detail
        head, _, problems = detail.partition("; ")
        return False, "; ".join(filter(None, [f"{head} {twilio}", problems]))

    def liveness(self) -> tuple[bool, str]:
        """Alive (watchdog pings) while work can be done: the listener and the pool answer,
        the pool can write, and no loop has been failing for
        SLA_DAEMON_UNHEALTHY_AFTER_SECONDS. A refused Twilio token is not in it: a
        restart cannot fix a token, and the daemon resumes by itself once it is fixed."""
        listener_ok = self.listener is not None and self.listener.healthy
        pool = "down" if not self._pool_ok else "read-only" if self._pool_read_only else "ok"
        problems = self.loops.problems(self.settings.unhealthy_after_seconds)
        ok = listener_ok and pool == "ok" and not problems and not self.stopping.is_set()
        detail = f"listener={'ok' if listener_ok else 'down'} pool={pool}"
        return ok, "; ".join([detail, *problems])

    async def run(self, *, handle_signals: bool = True) -> int:
        s = self.settings
        assert s.database_url
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        if s.metrics_address:
            await self._start_metrics(s.metrics_address)
        try:
            return await self._run(s.database_url)
        finally:
            if self.metrics_server is not None:
                await self.metrics_server.close()

    async def _run(self, dsn: str) -> int:
        s = self.settings
        catalog = MessageCatalog.load()
        if s.effective_dry_run:
            log.warning(
                "DRY RUN: %s; messages are rendered and logged (phones masked), not sent",
                "SLA_DAEMON_DRY_RUN is set" if s.dry_run else "no Twilio setting is given",
            )
        if s.webhooks_on and (missing := _missing_templates(s, catalog)):
            log.warning(
                "no approved template for %s: outside the 24-hour window those messages"
                " end dead (sla-daemon templates push; SLA_DAEMON_TWILIO_CONTENT_SIDS)",
                ", ".join(missing),
            )
        pool = await self._connect_pool(dsn)
        self._pool = pool
        try:
            async with pool.acquire() as conn:
                pending = await db.pending_migrations(conn)
            if pending:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
                raise DaemonError(
                    f"the schema is not current ({names} missing): run sla-daemon migrate"
                )
            self._pool_ok = True
            if s.webhook_address:
                await self._start_webhooks(pool)
            fallbacks = self.metrics.language_fallbacks
            async with NotificationService(
                s,
                catalog,
                metrics=self.metrics,
                on_fallback=lambda lang: fallbacks.labels(lang).inc(),
            ) as notifications:
                self.notifications = notifications
                await self._serve(pool, notifications)
        finally:
            systemd.stopping()
            if self.webhook_server is not None:
                await self.webhook_server.close()
            if self.listener is not None:
                await self.listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
            log.info("stopped")
        return 0

    async def _serve(self, pool: asyncpg.Pool, notifications: NotificationService) -> None:
        s = self.settings
        assert s.database_url
        outbox_wake, timer_wake = asyncio.Event(), asyncio.Event()
        self.listener = Listener(
            s.database_url,
            {OUTBOX_CHANNEL: outbox_wake, TIMER_CHANNEL: timer_wake},
            health_interval=s.health_interval_seconds,
            health_timeout=s.health_timeout_seconds,
            reconnect_max=s.reconnect_max_seconds,
            on_reconnect=self.metrics.listener_reconnects.inc,
        )
        try:
            await self.listener.connect(self.stopping)
        except asyncio.CancelledError:
            if self.stopping.is_set():
                return
            raise
        sla = SLAService(
            pool, batch_size=s.breach_batch_size, warn_team_manager=s.warn_team_manager
        )
        escalation = EscalationService(
            pool,
            concurrency=s.escalation_concurrency,
            batch_size=s.escalation_batch_size,
            metrics=self.metrics,
        )
        self.outbox = OutboxProcessor(
            pool,
            notifications,
            s,
            self.metrics,
            awake=self.listener,
            conversation=Conversation(pool, notifications, s),
        )
        self.timer = SLATimer(
            pool, sla, escalation, safety_interval=s.safety_interval_seconds, metrics=self.metrics
        )
        outbox, timer = self.outbox, self.timer
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.listener.run(self.stopping))
            tg.create_task(
                self._resilient("outbox", lambda: outbox.run(outbox_wake, self.stopping))
            )
            tg.create_task(self._resilient("timer", lambda: timer.run(timer_wake, self.stopping)))
            tg.create_task(self._watch(pool))
            if s.webhooks_on and not s.effective_dry_run and s.reconcile_after_seconds > 0:
                reconciler = Reconciler(pool, notifications, s, self.metrics)  # issue 13
                tg.create_task(self._resilient("reconcile", lambda: reconciler.run(self.stopping)))
            if s.outbox_retention_days > 0 or s.event_retention_days > 0:
                tg.create_task(self._resilient("housekeeping", lambda: self._purge(pool)))
            self.ready.set()
            systemd.ready()
            log.info(
                "running as %s (%s)", s.worker_id, "dry run" if s.effective_dry_run else "sending"
            )

    async def _start_metrics(self, address: str) -> None:
        """Serve /metrics and /healthz first: a taken port stops start-up with one line."""
        server = MetricsServer(self.metrics, address, self.health)
        await _bind(
            server.start,
            f"/metrics and /healthz on {address}",
            " (another sla-daemon on this host? each needs its own SLA_DAEMON_METRICS_ADDRESS)",
        )
        self.metrics_server = server

    async def _start_webhooks(self, pool: asyncpg.Pool) -> None:
        """Twilio's callbacks and inbound messages; a taken address stops start-up."""
        server = WebhookServer(pool, self.settings, self.metrics)
        await _bind(server.start, f"Twilio webhooks on {self.settings.webhook_address}")
        self.webhook_server = server

    async def _connect_pool(self, dsn: str) -> asyncpg.Pool:
        s = self.settings
        try:
            return await asyncio.wait_for(
                db.create_pool(dsn, min_size=s.pool_min_size, max_size=s.pool_max_size), 30
            )
        except db.DB_ERRORS as exc:
            raise DaemonError(f"cannot connect to the database: {exc}") from exc

    async def _resilient(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; when the database fails under it, back off and start it again.

        Failures are recorded in ``self.loops`` (health, metrics, one log line per
        cause). A restarted loop that then runs for a health interval without failing
        counts as working again: each loop's first statement touches the database."""
        delay = 0.5
        self.loops.started(name)
        while not self.stopping.is_set():
            task = asyncio.ensure_future(loop())
            try:
                if self.loops.failing(name):
                    await asyncio.wait({task}, timeout=self.settings.health_interval_seconds)
                    if not task.done() or (not task.cancelled() and task.exception() is None):
                        self.loops.recovered(name)
                        delay = 0.5
                await task
                return
            except Exception as exc:
                if not _only_db_errors(exc):
                    raise
                self.loops.failed(name, exc, delay)
                await wait_any(self.stopping, timeout=delay)
                delay = min(delay * 2, self.settings.reconnect_max_seconds)
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _watch(self, pool: asyncpg.Pool) -> None:
        """Pool health, backlog gauges, systemd WATCHDOG=1 and STATUS=, while running."""
        s = self.settings
        interval = s.health_interval_seconds
        if (wd := systemd.watchdog_interval()) is not None:
            interval = min(interval, wd)
        while not self.stopping.is_set():
            try:
                read_only = await asyncio.wait_for(self._check_pool(pool), s.health_timeout_seconds)
                if not self._pool_ok:
                    log.info("the database pool answers again")
                self._pool_ok = True
                await self._note_read_only(pool, read_only)
            except db.DB_ERRORS as exc:
                if self._pool_ok:  # once per outage, not per check
                    log.warning("database pool failed its health check: %s", describe_error(exc))
                self._pool_ok = False
            self.loops.update_metrics()
            ok, detail = self.health()
            self.metrics.healthy.set(1 if ok else 0)
            if self.liveness()[0]:
                systemd.watchdog()
            nxt = self.timer.next_at if self.timer else None
            systemd.status(
                f"{'healthy' if ok else 'UNHEALTHY ' + detail}; backlog {self._backlog[0]},"
                f" dead {self._backlog[1]}; next deadline "
                + (nxt.isoformat(timespec="seconds") if nxt else "none")
            )
            # While unhealthy, look again soon: recovery is seen within a second.
            await wait_any(self.stopping, timeout=interval if ok else min(interval, 1.0))

    async def _check_pool(self, pool: asyncpg.Pool) -> bool:
        """Backlog gauges, and whether the pool's session can write (True: read-only)."""
        async with pool.acquire() as conn:
            row = await conn.fetchrow(db.QUERIES["outbox_backlog"])
            read_only: bool = await conn.fetchval(db.QUERIES["session_read_only"])
        assert row is not None
        self._backlog = (row["backlog"], row["dead"])
        self.metrics.outbox_backlog.set(row["backlog"])
        self.metrics.outbox_dead.set(row["dead"])
        return read_only

    async def _note_read_only(self, pool: asyncpg.Pool, read_only: bool) -> None:
        """A read-only session fails every write: say so, and open new sessions.

        After a failover the pool still talks to the old primary (now a standby); with
        the connections expired, each reconnects on its next use, so a multi-host
        DATABASE_URL with target_session_attrs=read-write finds the new primary, and a
        database made writable again is used again."""
        if read_only != self._pool_read_only:
            if read_only:
                log.error(
                    "the database session is read-only (a standby after a failover, or"
                    " default_transaction_read_only): writes fail; reconnecting the pool"
                )
            else:
                log.info("the database session can write again")
        self._pool_read_only = read_only
        if read_only:
            await pool.expire_connections()

    async def _purge(self, pool: asyncpg.Pool) -> None:
        """Delete finished outbox rows, old events, delivery states and citizens' messages
        past retention, hourly, in batches."""
        s = self.settings
        retention = {"purge_outbox": s.outbox_retention_days}
        retention["purge_events"] = s.event_retention_days
        # issue 13: delivery states go with the messages, citizens' messages with events
        retention["purge_deliveries"] = s.outbox_retention_days
        retention["purge_inbound"] = s.event_retention_days
        while not self.stopping.is_set():
            for query, days in retention.items():
                total = 0
                while days > 0 and not self.stopping.is_set():
                    deleted = await pool.fetchval(db.QUERIES[query], days, 5000)
                    total += deleted
                    if deleted < 5000:
                        break
                if total:
                    log.info("%s: deleted %d rows older than %g days", query, total, days)
            await wait_any(self.stopping, timeout=3600)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        systemd.stopping()
        self.stop()


def _missing_templates(settings: Settings, catalog: MessageCatalog) -> list[str]:
    keys = template_keys(
        catalog,
        neutral=settings.sensitive_messages == "neutral",
        staff_warning=settings.warn_team_manager,
    )
    return [k for k in keys if k not in settings.twilio_content_sids]


async def _bind(start: Callable[[], Awaitable[None]], what: str, hint: str = "") -> None:
    """Start a server; a taken or foreign address stops start-up with one line (69)."""
    try:
        await start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise DaemonError(f"cannot serve {what}: {reason.lower()}{hint}") from None


def _only_db_errors(exc: BaseException) -> bool:
    """A database error, or a task group's bundle of nothing but database errors."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_db_errors(e) for e in exc.exceptions)
    return isinstance(exc, db.DB_ERRORS)
