"""Reconciliation (issue 13): messages whose delivery state a lost callback left unknown.

Twilio's status callbacks can be lost (the endpoint down, a proxy dropping them). A
sent message with no final state (delivered, read, failed, undelivered) some time
after it was sent (``SLA_DAEMON_RECONCILE_AFTER_SECONDS``) is looked up through
Twilio's API and what it says recorded exactly as a callback would be
(``sla_daemon.record_lookup`` -> ``record_delivery``: once per status, only forward; a
63016 re-queues the row for its template). A message still not final is asked about
again only after the same bound, and messages older than a week are left alone.

Lookups are bounded: at most ``SLA_DAEMON_RECONCILE_BATCH_SIZE`` per pass, paced at
``SLA_DAEMON_RECONCILE_RATE_PER_SECOND``, a pass every
``SLA_DAEMON_RECONCILE_INTERVAL_SECONDS``. Runs only with the webhooks on (without
them no message has a delivery state to wait for) and Twilio configured.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import asyncpg
from twilio.base.exceptions import TwilioRestException, TwilioServiceException

from .aio import wait_any
from .config import Settings
from .conversation import plain_e164
from .db import QUERIES
from .metrics import Metrics
from .notifications import NotificationService, TokenBucket
from .phones import mask_phone

__all__ = ["GIVE_UP_SECONDS", "Reconciler"]

log = logging.getLogger(__name__)

#: Messages sent longer ago than this are not looked up any more.
GIVE_UP_SECONDS = 7 * 86400.0

_LOOKUP_ERRORS = (TwilioRestException, TwilioServiceException, TimeoutError, aiohttp.ClientError,
                  OSError)  # fmt: skip


class Reconciler:
    """Looks up, at a bounded rate, sent messages whose final state never came."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        notifications: NotificationService,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._notifications = notifications
        self._settings = settings
        self._metrics = metrics
        self._bucket = TokenBucket(settings.reconcile_rate_per_second)

    async def run(self, stopping: asyncio.Event) -> None:
        """A pass every reconcile interval until stopped."""
        while not stopping.is_set():
            await self.run_once()
            await wait_any(stopping, timeout=self._settings.reconcile_interval_seconds)

    async def run_once(self) -> int:
        """One pass: look up at most a batch of messages; returns how many were."""
        s = self._settings
        max_age = GIVE_UP_SECONDS
        if s.outbox_retention_days > 0:  # a purged delivery would look unknown again
            max_age = min(max_age, s.outbox_retention_days * 86400)
        rows = await self._pool.fetch(
            QUERIES["reconcile_candidates"],
            s.reconcile_after_seconds,
            max_age,
            s.reconcile_batch_size,
        )
        for row in rows:
            await self._bucket.acquire()
            await self._look_up(row["id"], row["message_sid"])
        if rows:
            log.debug("reconciliation looked up %d messages", len(rows))
        return len(rows)

    async def _look_up(self, outbox_id: int, sid: str) -> None:
        try:
            status, code, to = await self._notifications.fetch_message(sid)
        except _LOOKUP_ERRORS as exc:
            # Not noted as looked up: the next pass asks again (still within its bound).
            log.warning("could not look up message %s: %s", sid, type(exc).__name__)
            self._metrics.reconcile_lookups.labels("error").inc()
            return
        phone = plain_e164(to)
        row = await self._pool.fetchrow(
            QUERIES["record_lookup"],
            sid,
            status.lower() if status else None,
            code,
            outbox_id,
            phone,
        )
        assert row is not None
        if status is None:
            outcome = "not_found"
        elif row["changed"]:
            outcome = "changed"
            self._metrics.deliveries.labels(status, row["language"] or "unknown").inc()
            log.info(
                "message %s to %s: %s (%s), found by lookup", sid, mask_phone(phone), status, code
            )
        else:
            outcome = "unchanged"
        self._metrics.reconcile_lookups.labels(outcome).inc()
