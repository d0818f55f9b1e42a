"""Twilio-wide trouble, decided once for the whole sender instead of row by row.

A refused token (HTTP 401/403, Twilio error 20003) fails every message alike, and no
restart can fix it: sending pauses, the rows that met it go back to the outbox with
their attempt not counted, and the outbox probes with one message at a time until
Twilio answers otherwise. A rate limit (HTTP 429, errors 20429 and 63018) means the
whole sender is too fast: no POST goes out until Twilio's ``Retry-After`` has passed,
or, without one, an exponential backoff (capped) that grows only while rate limits
keep coming after a pause ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

from .backoff import retry_delay
from .metrics import Metrics

__all__ = ["AUTH_FAILURE_CODES", "TwilioGate", "is_auth_failure", "parse_retry_after"]

log = logging.getLogger(__name__)

#: Twilio error codes meaning "these credentials are not accepted".
AUTH_FAILURE_CODES = frozenset({20003})


def is_auth_failure(status: int | None, code: int | None) -> bool:
    """Does this answer say the account's credentials were refused?"""
    return status in (401, 403) or code in AUTH_FAILURE_CODES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds, or an HTTP date; None if absent
    or unreadable (the caller then backs off on its own)."""
    if value is None or not (value := value.strip()):
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class TwilioGate:
    """The sender's Twilio-wide state: paused (credentials refused) and held (rate limit)."""

    def __init__(
        self,
        *,
        backoff_base: float,
        backoff_cap: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = backoff_base
        self._cap = backoff_cap
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._refused: str | None = None
        self._paused_at = 0.0
        #: set while sending is not paused, so a waiting claim loop wakes on resume
        self.resumed = asyncio.Event()
        self.resumed.set()
        self._held_until = 0.0
        self._held_at = float("-inf")
        self._steps = 0
        self._metrics.twilio_paused.set(0)

    # --- credentials ------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._refused is not None

    def problem(self) -> str | None:
        """What /healthz says while sending is paused, else None."""
        return "twilio=unauthorized" if self.paused else None

    def refused(self, detail: str) -> None:
        """Twilio refused the credentials: pause all sending (logged once per pause)."""
        if self._refused is None:
            self._paused_at = self._clock()
            log.error(
                "Twilio refused the credentials (%s): all sending paused, rows stay queued"
                " with their attempts uncounted; one message is sent as a probe every"
                " SLA_DAEMON_TWILIO_PROBE_SECONDS until Twilio accepts it"
                " (fix TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN; no restart needed)",
                detail,
            )
            self._metrics.twilio_paused.set(1)
            self.resumed.clear()
        self._refused = detail

    def accepted(self) -> None:
        """Twilio answered without refusing the credentials: sending resumes if paused."""
        if self._refused is not None:
            log.info(
                "Twilio accepts the credentials again after %.0fs: sending resumed",
                self._clock() - self._paused_at,
            )
            self._refused = None
            self._metrics.twilio_paused.set(0)
            self.resumed.set()

    # --- rate limits --------------------------------------------------------------------

    @property
    def held_until(self) -> float:
        """Monotonic time before which no POST may start (a rate limit's pause)."""
        return self._held_until

    def rate_limited(self, started: float, retry_after: float | None) -> float:
        """A POST started at ``started`` met a rate limit: hold every POST; return the
        seconds until sending resumes.

        Twilio's Retry-After wins (capped). Without it the pause doubles (with jitter)
        for each rate limit met by a POST started after the previous pause began;
        POSTs that were already under way when it began do not double it again."""
        now = self._clock()
        if retry_after is not None:
            delay = min(retry_after, self._cap)
        elif started < self._held_at:
            delay = max(0.0, self._held_until - now)
        else:
            self._steps += 1
            delay = retry_delay(self._steps, self._base, self._cap)
        until = now + delay
        if until > self._held_until:
            if now >= self._held_until:
                self._metrics.twilio_slowdowns.inc()
                log.warning(
                    "Twilio rate limit: no message is sent for %.1fs (%s)",
                    delay,
                    "as its Retry-After asks" if retry_after is not None else "backing off",
                )
            self._held_until = until
            self._held_at = now
        return max(0.0, self._held_until - now)

    def sent(self) -> None:
        """A message went through: the credentials work and the backoff starts over."""
        self._steps = 0
        self.accepted()
