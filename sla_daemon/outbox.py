"""The outbox sender: claim due rows, send each through Twilio, record every outcome.

Claims, supersession and per-ticket ordering are decided by the database
(``sla_daemon.claim_outbox``); this loop keeps a bounded number of rows in flight,
sends them concurrently, and writes their outcomes back in batches. A transient
failure goes back to 'pending' with its next attempt time stored in the row (so the
backoff survives restarts); a permanent one goes 'dead' at once.

Every claim carries a fencing token, and every finish names it: an outcome from an
older claim (its lease ran out and the row was claimed again) changes nothing. A row
is POSTed only while its lease still covers the send timeout plus a margin; a row
that waited longer in the send queue has its lease extended first, or is handed back.

While Twilio refuses the credentials (the sender's TwilioGate is paused) nothing is
claimed and queued rows are handed back uncounted; one row is claimed and sent as a
probe every SLA_DAEMON_TWILIO_PROBE_SECONDS until Twilio accepts it. A row that met
a rate limit is retried when the sender's Twilio-wide pause ends, its attempt
counted, but a rate limit alone never makes it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

import asyncpg

from .aio import wait_any
from .backoff import retry_delay
from .config import LEASE_MARGIN_SECONDS, Settings
from .db import DB_ERRORS, QUERIES
from .metrics import Metrics
from .notifications import Guard, NotificationService, SendResult
from .staff import alert_values, is_staff

if TYPE_CHECKING:
    from .conversation import Conversation

__all__ = ["OutboxProcessor", "OutboxRow", "retry_delay"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    claim_token: int
    ticket_id: UUID
    kind: str
    old_status: str | None
    new_status: str
    attempts: int
    created_at: datetime
    tracking_number: str | None
    #: the recipient's (the citizen's, or for a staff alert the staff member's)
    phone: str | None
    language: str | None
    # --- issue 12: staff alerts (recipient_id NULL: the ticket's citizen) ---
    recipient_id: UUID | None = None
    category: str | None = None
    level: int | None = None
    #: the deadline missed (escalation) or warned of (warning)
    deadline_at: datetime | None = None
    #: the ticket's calendar's time zone (staff alerts show the deadline in it)
    time_zone: str | None = None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> OutboxRow:
        return cls(**dict(r.items()))

    @property
    def key(self) -> tuple[int, int]:
        """One claim of one row: the same row claimed again is another send."""
        return (self.id, self.claim_token)


@dataclass(frozen=True)
class _Outcome:
    row_id: int
    token: int
    state: str
    sid: str | None = None
    code: int | None = None
    error: str | None = None
    retry_in: float | None = None
    language: str | None = None


class AwakeMark(Protocol):
    """Where writers look to see that the sender is awake (the daemon's Listener)."""

    def mark_awake_soon(self) -> None: ...

    async def mark_asleep(self) -> None: ...


class OutboxProcessor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        notifications: NotificationService,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        awake: AwakeMark,
        conversation: Conversation | None = None,  # issue 13: opt-outs, window, sensitive
    ) -> None:
        self._pool = pool
        self._conversation = conversation
        self._awake = awake
        self._notifications = notifications
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._worker = settings.worker_id
        self._capacity = max(settings.outbox_batch_size, settings.send_concurrency)
        self._inflight: dict[tuple[int, int], asyncio.Task[None]] = {}
        #: monotonic time by which each claim's lease runs out (counted from before
        #: the claim was asked for, so never later than the database's)
        self._lease_until: dict[tuple[int, int], float] = {}
        self._gate = notifications.gate
        #: the one claim sent while sending is paused, to learn whether Twilio accepts us
        self._probe: tuple[int, int] | None = None
        self._results: list[_Outcome] = []
        self._have_results = asyncio.Event()
        self._progress = asyncio.Event()
        self._flushing = False

    async def send_status_notification(
        self, row: OutboxRow, guard: Guard | None = None
    ) -> SendResult:
        """Send one outbox row: the escalation notice for an SLA escalation, a staff
        alert to its recipient, else the status."""
        if self._conversation is not None:  # issue 13: it decides whether and how
            return await self._conversation.send(row, guard)
        if row.tracking_number is None:
            return SendResult("dead", error="ticket no longer exists")
        if is_staff(row):  # issue 12
            return await self._notifications.send_staff_alert(
                row.phone, row.kind, row.language, alert_values(row), guard
            )
        if row.kind == "escalation":
            return await self._notifications.send_escalation_notice(
                row.phone, row.tracking_number, row.language, guard
            )
        return await self._notifications.send_status_update(
            row.phone,
            row.tracking_number,
            row.new_status,
            row.language,
            guard,
            old_status=row.old_status,
        )

    def _guard(self, row: OutboxRow) -> Guard:
        """May this claim still POST? Yes while the lease covers the send; else extend it."""
        s = self._settings
        needed = s.send_timeout_seconds + LEASE_MARGIN_SECONDS

        async def may_send() -> bool:
            if self._gate.paused and row.key != self._probe:
                return False  # handed back uncounted; the probe finds out when to resume
            started = time.monotonic()
            if started + needed < self._lease_until.get(row.key, 0.0):
                return True
            try:
                held = await self._pool.fetch(
                    QUERIES["extend_outbox"],
                    row.claim_token,
                    [row.id],
                    s.outbox_lease_seconds,
                )
            except DB_ERRORS as exc:
                log.warning("could not extend the lease of outbox row %s (%s)", row.id, exc)
                return False
            if not held:
                log.info("outbox row %s not sent: its claim lapsed or a newer status came", row.id)
                return False
            self._lease_until[row.key] = started + s.outbox_lease_seconds
            return True

        return may_send

    async def run(self, wake: asyncio.Event, stopping: asyncio.Event) -> None:
        """Claim and send until stopped; then let in-flight sends finish, within a bound."""
        if self._results:  # outcomes left from before a database failure: write them now
            self._have_results.set()
        flusher = asyncio.create_task(self._flush_loop(stopping))
        try:
            await self._claim_loop(wake, stopping)
        finally:
            await self._drain()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self._flush()

    async def _claim_loop(self, wake: asyncio.Event, stopping: asyncio.Event) -> None:
        poll = self._settings.outbox_poll_seconds
        while not stopping.is_set():
            if self._gate.paused:
                await self._probe_paused(stopping)
                continue
            room = self._capacity - len(self._inflight)
            if room <= 0:
                await wait_any(self._progress, stopping, timeout=poll)
                self._progress.clear()
                continue
            wake.clear()
            self._progress.clear()
            self._awake.mark_awake_soon()  # claims need not wait for it
            rows = await self._claim(room)
            if rows:
                self._start(rows)
                continue
            if self._inflight or self._results or self._flushing:
                # rows of tickets in flight become claimable once those are recorded
                await wait_any(self._progress, wake, stopping, timeout=poll)
                continue
            # Idle: ask writers to wake us (flag first, then drop the awake mark
            # writers test before the flag), then look once more: a row committed
            # between the empty claim and the flag would otherwise wait for the poll.
            await self._pool.execute(QUERIES["outbox_sleep"])
            await self._awake.mark_asleep()
            rows = await self._claim(room)
            if rows:
                self._start(rows)
                continue
            await wait_any(wake, stopping, timeout=poll)

    async def _probe_paused(self, stopping: asyncio.Event) -> None:
        """Twilio refused the credentials: wait a probe interval (or until sending
        resumes), then claim and send one row, unless the last probe is still out."""
        await wait_any(stopping, self._gate.resumed, timeout=self._settings.twilio_probe_seconds)
        if stopping.is_set() or not self._gate.paused or self._probe in self._inflight:
            return
        rows = await self._claim(1)
        if rows:
            self._probe = rows[0].key
            log.info("Twilio sending paused: probing with outbox row %s", rows[0].id)
            self._start(rows)

    async def _claim(self, limit: int) -> list[OutboxRow]:
        asked = time.monotonic()
        records = await self._pool.fetch(
            QUERIES["claim_outbox"],
            self._worker,
            min(limit, self._settings.outbox_batch_size),
            self._settings.outbox_lease_seconds,
        )
        rows = [OutboxRow.from_record(r) for r in records]
        if self._conversation is not None:  # issue 13: one query for the batch's plans
            await self._conversation.prepare(rows)
        lease_until = asked + self._settings.outbox_lease_seconds
        for row in rows:
            self._lease_until[row.key] = lease_until
        return rows

    def _start(self, rows: list[OutboxRow]) -> None:
        for row in rows:
            self._inflight[row.key] = asyncio.create_task(self._send_one(row))

    async def _send_one(self, row: OutboxRow) -> None:
        try:
            result = await self.send_status_notification(row, self._guard(row))
        except Exception as exc:  # a bug must not lose the row: an attempt like any other
            log.exception("sending outbox row %s failed unexpectedly", row.id)
            result = SendResult("retry", error=f"unexpected {type(exc).__name__}")
        outcome = self._outcome(row, result)
        # Cancelled (shutdown) rows stay in _inflight, so _drain releases them.
        self._inflight.pop(row.key, None)
        self._lease_until.pop(row.key, None)
        self._record(row, outcome)

    def _delay(self, row: OutboxRow) -> float:
        s = self._settings
        return retry_delay(row.attempts, s.retry_base_seconds, s.retry_max_seconds)

    def _outcome(self, row: OutboxRow, result: SendResult) -> _Outcome:
        lang = result.language
        token = row.claim_token
        if result.outcome in ("sent", "dry_run", "released"):
            return _Outcome(row.id, token, result.outcome, sid=result.sid, language=lang)
        if result.outcome in ("opted_out", "withheld"):  # issue 13: final, nothing sent
            return _Outcome(row.id, token, result.outcome, error=result.error, language=lang)
        if result.outcome == "dead":
            return _Outcome(
                row.id, token, "dead", code=result.error_code, error=result.error, language=lang
            )
        # A rate limit is the sender's pause, not the row's fault: never dead for it alone,
        # and retried when the Twilio-wide pause ends.
        if row.attempts >= self._settings.max_attempts and not result.rate_limited:
            return _Outcome(
                row.id,
                token,
                "dead",
                code=result.error_code,
                error=f"gave up after {row.attempts} attempts: {result.error}",
                language=lang,
            )
        return _Outcome(
            row.id,
            token,
            "pending",
            code=result.error_code,
            error=result.error,
            retry_in=self._delay(row) if result.retry_after is None else result.retry_after,
            language=lang,
        )

    def _record(self, row: OutboxRow, outcome: _Outcome) -> None:
        m = self._metrics
        if outcome.state != "released":
            label = "retry" if outcome.state == "pending" else outcome.state
            m.messages.labels(label, outcome.language or "unknown").inc()
        if outcome.state in ("sent", "dry_run"):
            m.send_latency.observe(max(0.0, time.time() - row.created_at.timestamp()))
        self._results.append(outcome)
        self._have_results.set()

    async def _flush_loop(self, stopping: asyncio.Event) -> None:
        delay = 0.1
        while True:
            await self._have_results.wait()
            self._have_results.clear()
            try:
                await self._flush()
                delay = 0.1
            except DB_ERRORS as exc:
                # The outcomes stay buffered and are written as soon as the database
                # answers: retried here with a short, capped backoff, not on new traffic.
                log.warning("could not record outbox outcomes (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._have_results.set()

    async def _flush(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        self._flushing = True
        try:
            await self._pool.execute(
                QUERIES["finish_outbox"],
                [o.token for o in batch],
                [o.row_id for o in batch],
                [o.state for o in batch],
                [o.sid for o in batch],
                [o.code for o in batch],
                [o.error for o in batch],
                [o.retry_in for o in batch],
                [o.language for o in batch],
            )
        except BaseException:
            self._results[:0] = batch
            raise
        finally:
            self._flushing = False
        self._progress.set()

    async def _drain(self) -> None:
        """Shutdown: wait for in-flight sends within the grace period, release the rest."""
        if self._inflight:
            log.info("waiting for %d in-flight sends", len(self._inflight))
            _done, pending = await asyncio.wait(
                list(self._inflight.values()), timeout=self._settings.shutdown_grace_seconds
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        leftover = list(self._inflight)
        self._inflight.clear()
        self._lease_until.clear()
        self._results.extend(_Outcome(row_id, token, "released") for row_id, token in leftover)
        if leftover:
            log.warning("released %d unfinished sends back to the outbox", len(leftover))
