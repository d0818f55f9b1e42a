"""Prometheus metrics, and the HTTP endpoint that serves them with a health check.

Each daemon gets its own registry, so several can live in one process (tests) and
nothing is registered at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .config import split_host_port

__all__ = ["Metrics", "MetricsServer"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter(
            "sla_daemon_messages",
            "Outbox rows finished, by outcome (sent, dry_run, retry, dead, superseded)"
            " and language",
            ["outcome", "language"],
            registry=r,
        )
        self.send_latency = Histogram(
            "sla_daemon_send_latency_seconds",
            "From the status change's commit to Twilio's answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.escalations = Counter(
            "sla_daemon_escalations",
            "Tickets escalated, by breach type",
            ["breach_type"],
            registry=r,
        )
        self.escalation_failures = Counter(
            "sla_daemon_escalation_failures",
            "Escalations that failed and will be retried on the ticket's own backoff, by"
            " cause (locked: its advisory lock is held elsewhere; lock_timeout: its row is"
            " locked by a long transaction; error: anything else)",
            ["cause"],
            registry=r,
        )
        self.language_fallbacks = Counter(
            "sla_daemon_language_fallbacks",
            "Messages sent in English because no catalog has the citizen's language",
            ["language"],
            registry=r,
        )
        self.escalation_levels = Counter(
            "sla_daemon_escalation_levels",
            "Escalation levels 2, 3, ... fired (level 1 is sla_daemon_escalations_total)",
            ["level"],
            registry=r,
        )
        self.warnings = Counter(
            "sla_daemon_warnings", "Deadline warnings recorded", ["deadline_kind"], registry=r
        )
        self.staff_alerts = Counter(
            "sla_daemon_staff_alerts",
            "Staff alerts, by kind (escalation, warning) and outcome (queued, or why none"
            " was: no_phone, no_user, no_recipient, sensitive, moot)",
            ["kind", "outcome"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "sla_daemon_outbox_backlog", "Outbox rows pending or being sent", registry=r
        )
        self.outbox_dead = Gauge("sla_daemon_outbox_dead", "Dead-lettered outbox rows", registry=r)
        self.listener_reconnects = Counter(
            "sla_daemon_listener_reconnects",
            "Times the LISTEN connection was re-established",
            registry=r,
        )
        self.next_deadline = Gauge(
            "sla_daemon_next_deadline_seconds",
            "Seconds until the next deadline or warning the timer waits for (-1: none)",
            registry=r,
        )
        self.healthy = Gauge(
            "sla_daemon_healthy",
            "1 while the listener and the pool answer, the pool can write and no loop"
            " has been failing too long",
            registry=r,
        )
        self.loop_failures = Counter(
            "sla_daemon_loop_failures",
            "Times a loop (outbox, timer, housekeeping) failed and was restarted",
            ["loop"],
            registry=r,
        )
        self.loop_failing_seconds = Gauge(
            "sla_daemon_loop_failing_seconds",
            "How long a loop has been failing without a break (0: it runs)",
            ["loop"],
            registry=r,
        )

        # --- issue 13: webhooks and delivery truth ---
        self.webhook_requests = Counter(
            "sla_daemon_webhook_requests",
            "Twilio webhook requests, by endpoint (status, inbound) and outcome (accepted,"
            " replayed, unsigned, bad_signature, too_large, malformed, error)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.deliveries = Counter(
            "sla_daemon_deliveries",
            "Messages whose delivery state moved forward, by new state (sent, delivered,"
            " read, failed, undelivered, ...) and language",
            ["status", "language"],
            registry=r,
        )
        self.inbound = Counter(
            "sla_daemon_inbound_messages",
            "Messages citizens sent, by kind (stop, start, reply)",
            ["kind"],
            registry=r,
        )
        self.replies = Counter(
            "sla_daemon_replies",
            "Citizens' replies, by what they did (reopened: a 'not fixed' reply reopened"
            " the ticket; not_fixed: recorded for staff; linked: recorded against the"
            " citizen's ticket; unknown: from a number never messaged)",
            ["action"],
            registry=r,
        )
        self.reconcile_lookups = Counter(
            "sla_daemon_reconcile_lookups",
            "Messages looked up through Twilio's API for want of a final delivery state,"
            " by outcome (changed: the state moved; unchanged; not_found; error)",
            ["outcome"],
            registry=r,
        )
        self.twilio_paused = Gauge(
            "sla_daemon_twilio_paused",
            "1 while sending is paused because Twilio refused the credentials (401/403,"
            " 20003), probed with one message at a time; 0 otherwise",
            registry=r,
        )
        self.twilio_slowdowns = Counter(
            "sla_daemon_twilio_slowdowns",
            "Times Twilio's rate limit (429, 20429, 63018) paused every POST of this"
            " daemon (for Retry-After, or an exponential backoff)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` for Prometheus and ``/healthz`` (503 when the daemon is unhealthy)."""

    def __init__(self, metrics: Metrics, address: str, health: Callable[[], tuple[bool, str]]):
        self._metrics = metrics
        self._host, self._port = split_host_port(address)
        self._health = health
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError:  # the address is taken or not ours: leave nothing behind
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        host = f"[{self._host}]" if ":" in self._host else self._host
        log.info("metrics and health on http://%s:%s/metrics", host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _serve_health(self, request: web.Request) -> web.Response:
        ok, detail = self._health()
        return web.json_response({"ok": ok, "detail": detail}, status=200 if ok else 503)
