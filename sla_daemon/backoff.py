"""Exponential backoff with jitter, shared by the outbox's per-row retries and the
sender's Twilio-wide slow-down after a rate limit."""

from __future__ import annotations

import random

__all__ = ["retry_delay"]


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2^(n-1)).

    The exponent is bounded, so no attempt count overflows a float."""
    ceiling = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 64))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))
