"""Which loops are failing, since when and why: what /healthz and the watchdog report.

The daemon restarts a loop after every database error, so a loop that can never work
(a revoked privilege, a read-only database) still looks alive. This keeps the truth:
each loop's first failure time and cause. The cause is logged when it changes, not on
every retry, named from the underlying error (unwrapped from task-group exception
groups, with PostgreSQL's SQLSTATE), so the log says what to fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import asyncpg

from .metrics import Metrics

__all__ = ["LoopHealth", "connection_lost", "describe_error"]

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """The distinct underlying errors of ``exc``, e.g. ``InsufficientPrivilegeError:
    permission denied for table wakeups (SQLSTATE 42501)``."""
    return "; ".join(dict.fromkeys(_describe_one(e) for e in _leaves(exc)))


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _describe_one(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "42501":  # insufficient_privilege: the fix is a GRANT
        return f"{described} (SQLSTATE 42501: a grant is missing; sla-daemon check names it)"
    return f"{described} (SQLSTATE {sqlstate})" if sqlstate else described


#: SQLSTATE classes of a lost or refused connection: 08 connection exception, 57P0x
#: shutdown (admin, crash, cannot connect now).
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Every underlying error of ``exc`` says the connection went (not what to fix)."""
    return all(_lost_one(e) for e in _leaves(exc))


def _lost_one(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True  # refused, no socket, closed mid-operation, ...
    if isinstance(exc, asyncpg.InternalClientError):
        return "cannot switch to state" in str(exc)  # asyncpg, on a connection cut mid-query
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate.startswith(_CONNECTION_STATES)


class LoopHealth:
    """Per loop: failing since when (monotonic clock) and why; nothing while it runs."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._since: dict[str, float] = {}
        self._cause: dict[str, str] = {}
        self._quiet: set[str] = set()  # loops whose failures were only a lost connection

    def started(self, name: str) -> None:
        """Show the loop's series at 0 from the start, so a dashboard can tell 0 from absent."""
        self._metrics.loop_failures.labels(name)
        self._metrics.loop_failing_seconds.labels(name).set(0)

    def failed(self, name: str, exc: BaseException, retry_in: float) -> None:
        cause = describe_error(exc)
        self._since.setdefault(name, self._clock())
        self._metrics.loop_failures.labels(name).inc()
        if self._cause.get(name) == cause:
            log.debug("%s loop failed again: %s", name, cause)
            return
        self._cause[name] = cause
        if connection_lost(exc):  # the listener tells the outage once, for all loops
            self._quiet.add(name)
            log.debug("%s loop failed: %s; restarting in %.1fs", name, cause, retry_in)
            return
        log.warning(
            "%s loop failed: %s; restarting in %.1fs with backoff"
            " (logged again when the cause changes)",
            name,
            cause,
            retry_in,
        )

    def failing(self, name: str) -> bool:
        return name in self._since

    def recovered(self, name: str) -> None:
        since = self._since.pop(name, None)
        self._cause.pop(name, None)
        self._metrics.loop_failing_seconds.labels(name).set(0)
        quiet = name in self._quiet
        self._quiet.discard(name)
        if since is not None:
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s loop runs again after %.1fs of failures",
                name,
                self._clock() - since,
            )

    def update_metrics(self) -> None:
        now = self._clock()
        for name, since in self._since.items():
            self._metrics.loop_failing_seconds.labels(name).set(now - since)

    def problems(self, bound: float) -> list[str]:
        """One line per loop that has been failing for ``bound`` seconds or more."""
        now = self._clock()
        return [
            f"{name} loop failing for {now - since:.0f}s: {self._cause[name]}"
            for name, since in self._since.items()
            if now - since >= bound
        ]
