"""Twilio's webhooks: message status callbacks and inbound WhatsApp messages (issue 13).

Served on its own address (``SLA_DAEMON_WEBHOOK_ADDRESS``), apart from /metrics, behind
a TLS-terminating reverse proxy. Every request must carry a valid
``X-Twilio-Signature``: an HMAC, with the auth token, over the URL Twilio called (the
public one, ``SLA_DAEMON_WEBHOOK_PUBLIC_URL`` + path and query) and the POST
parameters, checked by twilio's own ``RequestValidator``. Anything unsigned, badly
signed, too large or malformed is answered 403/413/400, counted, and changes nothing.

- ``POST /twilio/status?outbox=<id>``: a message's status; stored once per
  (MessageSid, status), moving the message's state only forward
  (``sla_daemon.record_delivery``).
- ``POST /twilio/inbound``: a citizen wrote. STOP/START keywords, the 24-hour window
  (``sla_daemon.record_inbound``); replies linked to the citizen's ticket, "not
  fixed" reopening it or recorded for staff (``sla_daemon.record_reply``). Answered
  with empty TwiML, so Twilio sends no reply of its own.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import asyncpg
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from .config import Settings, split_host_port
from .conversation import INBOUND_PATH, STATUS_PATH, classify_inbound, plain_e164
from .db import DB_ERRORS, QUERIES
from .metrics import Metrics
from .phones import mask_phone
from .replies import says_not_fixed

__all__ = ["WebhookServer"]

log = logging.getLogger(__name__)

_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
_FORM = "application/x-www-form-urlencoded"
_MAX_SID = 64


class _Rejected(Exception):
    """A request that changes nothing: its HTTP status and the metric's outcome."""

    def __init__(self, status: int, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.outcome = outcome


class WebhookServer:
    """The aiohttp server for both endpoints; ``port`` is the bound one after start."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> None:
        token = settings.twilio_auth_token
        if not (settings.webhook_address and settings.webhook_public_url and token):
            raise ValueError("webhooks need an address, a public URL and the auth token")
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._public = settings.webhook_public_url
        self._validator = RequestValidator(token.get_secret_value())
        self._host, self._port = split_host_port(settings.webhook_address)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=self._settings.webhook_max_body_bytes)
        app.router.add_post(STATUS_PATH, self._status)
        app.router.add_post(INBOUND_PATH, self._inbound)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = int(self._runner.addresses[0][1])
        log.info("Twilio webhooks on port %s, signed for %s", self.port, self._public)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the two endpoints -------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        return await self._handle(request, "status")

    async def _inbound(self, request: web.Request) -> web.Response:
        return await self._handle(request, "inbound")

    async def _handle(self, request: web.Request, endpoint: str) -> web.Response:
        try:
            params = await self._verified(request)
            if endpoint == "status":
                outcome = await self._record_status(request, params)
                response = web.Response(status=204)
            else:
                outcome = await self._record_inbound(params)
                response = web.Response(text=_EMPTY_TWIML, content_type="text/xml")
        except _Rejected as exc:
            log.warning("webhook %s rejected (%s): %s", endpoint, exc.outcome, exc)
            self._metrics.webhook_requests.labels(endpoint, exc.outcome).inc()
            return web.Response(status=exc.status, text=f"{exc.outcome}\n")
        except DB_ERRORS as exc:
            # Not recorded: a 5xx lets Twilio try again (inbound) or reconciliation find it.
            log.warning("webhook %s not recorded: %s", endpoint, exc)
            self._metrics.webhook_requests.labels(endpoint, "error").inc()
            return web.Response(status=503, text="error\n")
        self._metrics.webhook_requests.labels(endpoint, outcome).inc()
        return response

    async def _verified(self, request: web.Request) -> MultiDict[str]:
        """The POST parameters, once the size, form and signature check out."""
        limit = self._settings.webhook_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Rejected(413, "too_large", f"{request.content_length} bytes")
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise _Rejected(403, "unsigned", f"no {SIGNATURE_HEADER}")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Rejected(413, "too_large", f"over {limit} bytes") from None
        if request.content_type != _FORM:
            raise _Rejected(400, "malformed", "not a form post")
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise _Rejected(400, "malformed", "the form does not parse") from None
        params: MultiDict[str] = MultiDict(pairs)
        url = f"{self._public}{request.raw_path}"
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        if not self._validator.validate(url, params, signature, algorithm):
            raise _Rejected(403, "bad_signature", "the signature does not match")
        account = params.get("AccountSid")
        if self._settings.twilio_account_sid and account != self._settings.twilio_account_sid:
            raise _Rejected(403, "bad_signature", "another account's request")
        return params

    async def _record_status(self, request: web.Request, params: MultiDict[str]) -> str:
        sid = _sid(params.get("MessageSid") or params.get("SmsSid"))
        status = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
        code_text = (params.get("ErrorCode") or "").strip()
        outbox_text = request.query.get("outbox", "")
        if not status or (code_text and not code_text.isdigit()):
            raise _Rejected(400, "malformed", "no MessageStatus, or a non-numeric ErrorCode")
        if outbox_text and not outbox_text.isdigit():
            raise _Rejected(400, "malformed", "outbox is not a row id")
        code = int(code_text) if code_text else None
        phone = plain_e164(params.get("To"))
        try:
            row = await self._pool.fetchrow(
                QUERIES["record_delivery"],
                sid,
                status,
                code,
                int(outbox_text) if outbox_text else None,
                phone,
            )
        except asyncpg.InvalidParameterValueError:
            raise _Rejected(400, "malformed", "unknown MessageStatus") from None
        assert row is not None
        if row["changed"]:
            self._metrics.deliveries.labels(status, row["language"] or "unknown").inc()
            if code is not None:
                log.info("message %s to %s: %s (%s)", sid, mask_phone(phone), status, code)
        return "accepted" if row["changed"] or row["requeued"] else "replayed"

    async def _record_inbound(self, params: MultiDict[str]) -> str:
        sid = _sid(params.get("MessageSid") or params.get("SmsMessageSid"))
        phone = plain_e164(params.get("From"))
        if phone is None:
            raise _Rejected(400, "malformed", "From is not a WhatsApp number")
        body = params.get("Body") or ""
        s = self._settings
        kind = classify_inbound(body, s.opt_out_keywords, s.opt_in_keywords)
        if kind == "reply":
            return await self._record_reply(sid, phone, body)
        recorded = await self._pool.fetchval(QUERIES["record_inbound"], sid, phone, kind, body)
        if not recorded:
            return "replayed"
        self._metrics.inbound.labels(kind).inc()
        log.info("%s from %s", kind.upper(), mask_phone(phone))
        return "accepted"

    async def _record_reply(self, sid: str, phone: str, body: str) -> str:
        """A reply: linked to the citizen's ticket; "not fixed" reopens it or is recorded."""
        s = self._settings
        not_fixed = says_not_fixed(body, s.not_fixed_keywords)
        row = await self._pool.fetchrow(
            QUERIES["record_reply"], sid, phone, body, not_fixed, s.not_fixed_action == "reopen"
        )
        assert row is not None
        if not row["recorded"]:
            return "replayed"
        self._metrics.inbound.labels("reply").inc()
        action = row["reply_action"] or "linked"
        self._metrics.replies.labels(action).inc()
        if row["reply_action"] in ("reopened", "not_fixed"):
            log.info("reply from %s: not fixed, %s", mask_phone(phone), row["reply_action"])
        return "accepted"


def _sid(value: str | None) -> str:
    if not value or len(value) > _MAX_SID or not value.isalnum():
        raise _Rejected(400, "malformed", "no usable MessageSid")
    return value
