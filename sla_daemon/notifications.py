"""WhatsApp status messages through Twilio: the only module that talks to Twilio.

It never raises for a failed send: it returns a SendResult saying whether the outbox
should record the SID, retry later, hand the row back uncounted, or dead-letter the
message. Twilio has no idempotency key, so nothing here retries by itself (a
timed-out POST may have been accepted); retries belong to the outbox, whose backoff
survives restarts. Trouble that is Twilio-wide rather than the message's (refused
credentials, rate limits) is told to the sender's TwilioGate, which pauses or slows
every send at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from sla_daemon.config import Settings
from sla_daemon.messages import REOPENED_FROM, CatalogError, MessageCatalog
from sla_daemon.metrics import Metrics
from sla_daemon.phones import InvalidPhoneError, mask_phone, normalize_phone, whatsapp_address
from sla_daemon.twilio_gate import TwilioGate, is_auth_failure, parse_retry_after

__all__ = [
    "PERMANENT_CODES",
    "RATE_LIMIT_CODES",
    "Guard",
    "NotificationService",
    "Outcome",
    "SendOptions",
    "SendResult",
    "TokenBucket",
    "classify_failure",
]

#: 'released': not sent through no fault of the message (its claim no longer covers a
#: send, or Twilio refused the credentials): hand it back with its attempt uncounted.
Outcome = Literal["sent", "dry_run", "retry", "dead", "released", "opted_out", "withheld"]
#: Called with the send slot and rate token held, just before the POST: False means
#: "do not send" (the outbox's claim no longer covers a send, or sending is paused),
#: and the result is 'released'.
Guard = Callable[[], Awaitable[bool]]

#: Twilio error codes that will fail the same way for this message every time.
PERMANENT_CODES = frozenset({21211, 21408, 21610, 21614, 63003, 63016})
#: Twilio error codes that mean "too fast, try later".
RATE_LIMIT_CODES = frozenset({20429, 63018})
#: twilio-python logs every request (URL, headers, and at DEBUG the form with numbers).
TWILIO_HTTP_LOGGER = "twilio.async_http_client"

_PHONE_LIKE = re.compile(r"\+?\d[\d ()\-]{5,}\d")
_MAX_ERROR_LENGTH = 200


@dataclass(frozen=True)
class SendOptions:
    """Issue 13: how to send one message (chosen by sla_daemon.conversation).

    ``template``: True sends the approved template (the row dies without one), False
    the body text, None the template when one is configured (the window unknown)."""

    template: bool | None = None
    status_callback: str | None = None


@dataclass(frozen=True)
class SendResult:
    """What happened to one message; ``error`` never contains a phone number or secret."""

    outcome: Outcome
    sid: str | None = None
    error_code: int | None = None
    error: str | None = None
    body: str | None = None
    http_status: int | None = None
    language: str | None = None
    content_sid: str | None = None
    #: after a rate limit: seconds until the sender POSTs again
    retry_after: float | None = None

    @property
    def rate_limited(self) -> bool:
        """True when Twilio asked us to slow down, so the caller may back off globally."""
        return self.http_status == 429 or self.error_code in RATE_LIMIT_CODES


def classify_failure(status: int | None, code: int | None) -> Literal["retry", "dead", "released"]:
    """Twilio's HTTP status and error code -> retry later, give up on this message, or
    hand it back uncounted."""
    if status == 429 or code in RATE_LIMIT_CODES:
        return "retry"
    if code in PERMANENT_CODES:
        return "dead"
    if is_auth_failure(status, code):
        # Bad or rotated credentials fail every message alike, and not through any
        # fault of the message: it goes back to the queue uncounted (sending pauses).
        return "released"
    if status is not None and 400 <= status < 500:
        return "dead"
    return "retry"


class TokenBucket:
    """Reservation token bucket: each caller takes a slot now and sleeps until it is due.

    Reserving is synchronous, so callers are served in arrival order without a lock, and
    the wait is computed rather than polled (which also makes it testable). A global
    "not before" time (``hold_until``, after a rate limit) holds every caller, those
    already waiting too; the bucket then starts again from one token, at its rate.
    """

    def __init__(
        self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()
        self._not_before = float("-inf")

    def hold_until(self, when: float) -> None:
        """No token is used before ``when`` (the clock's time); later holds win."""
        if when > self._not_before:
            self._not_before = when
            self._tokens = min(self._tokens, 1.0)
            self._updated = max(self._updated, when)

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before using it (0 if available)."""
        real = self._clock()
        now = max(real, self._not_before)
        refill = max(0.0, now - self._updated) * self.rate
        self._tokens = min(self.burst, self._tokens + refill)
        self._updated = max(self._updated, now)
        self._tokens -= 1.0
        wait = now - real
        return wait if self._tokens >= 0 else wait - self._tokens / self.rate

    async def acquire(self) -> None:
        """Wait for a token; a hold set while waiting means waiting for a new one."""
        held = self._not_before
        wait = self.reserve()
        while True:
            if wait > 0:
                await asyncio.sleep(wait)
            if self._not_before <= held:
                return
            held = self._not_before
            wait = self.reserve()


class NotificationService:
    """Renders, rate-limits and sends WhatsApp messages; use inside ``async with``."""

    def __init__(
        self,
        settings: Settings,
        catalog: MessageCatalog,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._log = logger or logging.getLogger(__name__)
        self._on_fallback = on_fallback
        self._fallen_back: set[str] = set()
        self._semaphore = asyncio.Semaphore(settings.send_concurrency)
        rate = settings.send_rate_per_second
        self.bucket = TokenBucket(rate, burst=max(1.0, min(rate / 4, 20.0)))
        self.gate = TwilioGate(
            backoff_base=settings.retry_base_seconds,
            backoff_cap=settings.twilio_backoff_max_seconds,
            metrics=metrics,
        )
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Any = None
        self._from: str | None = None
        if settings.twilio_whatsapp_number:
            self._from = whatsapp_address(settings.twilio_whatsapp_number)

    @property
    def dry_run(self) -> bool:
        return self._settings.effective_dry_run

    async def start(self) -> None:
        """Create the one Twilio client; must run inside the event loop (aiohttp session)."""
        if self.dry_run or self._client is not None:
            return
        logging.getLogger(TWILIO_HTTP_LOGGER).setLevel(logging.WARNING)
        auth_token = self._settings.twilio_auth_token
        if auth_token is None:  # unreachable: effective_dry_run means Twilio is configured
            raise RuntimeError("Twilio credentials are missing")
        # No max_retries: its aiohttp_retry wrapper re-POSTs on 5xx and can send twice.
        self._http = _HeaderKeepingHttpClient(logger=logging.getLogger(TWILIO_HTTP_LOGGER))
        # A non-empty environment keeps twilio from reading TWILIO_EDGE/TWILIO_REGION from
        # os.environ, which would rewrite the host of TWILIO_API_BASE_URL.
        self._client = Client(
            self._settings.twilio_account_sid,
            auth_token.get_secret_value(),
            http_client=self._http,
            environment={"SLA_DAEMON": "1"},
        )
        # Every Api-domain URL (client.messages included) is built from this attribute.
        self._client.api.base_url = self._settings.twilio_api_base_url

    async def close(self) -> None:
        """Close the aiohttp session; safe to call twice."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def __aenter__(self) -> NotificationService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send_status_update(
        self,
        phone: str | None,
        tracking_number: str,
        new_status: str,
        language: str | None,
        guard: Guard | None = None,
        options: SendOptions | None = None,  # issue 13: template choice, status callback
        old_status: str | None = None,
    ) -> SendResult:
        """Tell the citizen their ticket is now ``new_status`` (reopened: its own text)."""
        lang = self._language(language)
        try:
            if new_status == "open" and old_status in REOPENED_FROM:
                body = self._catalog.render_reopened(lang, tracking_number)
                key = f"reopened:{lang}"
            else:
                body = self._catalog.render_status(new_status, lang, tracking_number)
                key = f"{new_status}:{lang}"
            label = self._catalog.status_label(new_status, lang)
        except CatalogError as exc:
            return SendResult("dead", error=str(exc), language=lang)
        return await self._send(phone, body, key, lang, tracking_number, label, guard, options)

    def _language(self, language: str | None) -> str:
        """The catalog for ``language``; a fallback to English is logged once per language
        and counted on every message."""
        if self._catalog.falls_back(language):
            assert language is not None
            shown = language.strip().lower()[:20]
            if shown not in self._fallen_back:
                self._fallen_back.add(shown)
                self._log.warning(
                    "no message catalog for language %r: sending English (add"
                    " sla_daemon/catalogs/<code>.toml; logged once per language)",
                    shown,
                )
            if self._on_fallback is not None:
                self._on_fallback(shown)
        return self._catalog.normalize_language(language)

    async def send_escalation_notice(
        self,
        phone: str | None,
        tracking_number: str,
        language: str | None,
        guard: Guard | None = None,
        options: SendOptions | None = None,  # issue 13
    ) -> SendResult:
        """Tell the citizen a missed deadline put their ticket in a manager's hands."""
        lang = self._language(language)
        body = self._catalog.render_escalation(lang, tracking_number)
        label = self._catalog.status_label("escalated", lang)
        return await self._send(
            phone, body, f"escalation:{lang}", lang, tracking_number, label, guard, options
        )

    # --- issue 13: sensitive tickets --------------------------------------------------
    async def send_neutral_notice(
        self,
        phone: str | None,
        tracking_number: str,
        language: str | None,
        guard: Guard | None = None,
        options: SendOptions | None = None,
    ) -> SendResult:
        """A sensitive ticket's update: no category, no status, no detail."""
        lang = self._language(language)
        body = self._catalog.render_neutral(lang, tracking_number)
        return await self._send(
            phone, body, f"neutral:{lang}", lang, tracking_number, "", guard, options
        )

    # --- issue 12: staff alerts ----------------------------------------------------------
    async def send_staff_alert(
        self,
        phone: str | None,
        kind: str,
        language: str | None,
        values: Mapping[str, str],
        guard: Guard | None = None,
        options: SendOptions | None = None,
    ) -> SendResult:
        """Tell a staff member about a ticket (``staff_escalation``, ``staff_warning``),
        in their language; its template's variables are the text's placeholders, in
        template order (sla_daemon.messages.VARIABLE_ORDER)."""
        lang = self._language(language)
        try:
            body = self._catalog.render_staff(kind, lang, values)
            names = self._catalog.variables(kind)
        except CatalogError as exc:
            return SendResult("dead", error=str(exc), language=lang)
        variables = {str(i): values[name] for i, name in enumerate(names, 1)}
        tracking_number = values["tracking_number"]
        return await self._send(
            phone, body, f"{kind}:{lang}", lang, tracking_number, "", guard, options, variables
        )

    # --- issue 13: reconciliation -------------------------------------------------------
    async def fetch_message(self, sid: str) -> tuple[str | None, int | None, str | None]:
        """Twilio's status, error code and 'to' for one message; (None, None, None) when
        Twilio does not know it (404). Twilio's and the network's errors are raised."""
        if self._client is None:
            raise RuntimeError("NotificationService.start() was not called")
        try:
            async with asyncio.timeout(self._settings.send_timeout_seconds):
                message = await self._client.messages(sid).fetch_async()
        except TwilioRestException as exc:
            if exc.status == 404:
                return None, None, None
            raise
        status = str(message.status) if message.status is not None else None
        return status, _int_or_none(message.error_code), message.to

    async def _send(
        self,
        phone: str | None,
        body: str,
        template_key: str,
        lang: str,
        tracking_number: str,
        label: str,
        guard: Guard | None = None,
        options: SendOptions | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> SendResult:
        """Send ``body``, or the template of ``template_key`` with ``variables`` (by
        default: 1 the tracking number, 2 the status label)."""
        try:
            to = whatsapp_address(normalize_phone(phone, self._settings.default_region))
        except InvalidPhoneError as exc:
            self._log.warning(
                "not sending %s for %s to %s: %s",
                template_key,
                tracking_number,
                mask_phone(phone),
                exc,
            )
            return SendResult(
                "dead", error=f"unusable phone number: {exc}", body=body, language=lang
            )
        content_sid = self._settings.twilio_content_sids.get(template_key)
        # --- issue 13: the window decides body or template (sla_daemon.conversation) ---
        options = options or SendOptions()
        if options.template is False:
            content_sid = None
        elif options.template and not content_sid:
            return SendResult(
                "dead",
                error=f"outside the 24-hour WhatsApp window and no approved template for"
                f" {template_key} (SLA_DAEMON_TWILIO_CONTENT_SIDS)",
                body=body,
                language=lang,
            )
        # --- end issue 13 ---
        if self.dry_run:
            # The body is the citizen's message: whole only at DEBUG.
            self._log.info(
                "dry run: would send %s for %s to %s", template_key, tracking_number, mask_phone(to)
            )
            self._log.debug("dry run: the text for %s: %s", tracking_number, body)
            return SendResult("dry_run", body=body, language=lang, content_sid=content_sid)
        if self._client is None:
            raise RuntimeError("NotificationService.start() was not called")
        kwargs: dict[str, str] = {"to": to, "from_": str(self._from)}
        if content_sid:
            kwargs["content_sid"] = content_sid
            kwargs["content_variables"] = json.dumps(
                dict(variables) if variables is not None else {"1": tracking_number, "2": label}
            )
        else:
            kwargs["body"] = body
        if options.status_callback:  # issue 13
            kwargs["status_callback"] = options.status_callback
        result = await self._post(kwargs, body, lang, content_sid, guard)
        level = logging.DEBUG if result.outcome in ("sent", "released") else logging.WARNING
        if self._log.isEnabledFor(level):  # mask_phone parses the number: not for nothing
            self._log.log(
                level,
                "%s %s for %s to %s: %s",
                result.outcome,
                template_key,
                tracking_number,
                mask_phone(to),
                result.sid or result.error,
            )
        return result

    async def _post(
        self,
        kwargs: dict[str, str],
        body: str,
        lang: str,
        content_sid: str | None,
        guard: Guard | None = None,
    ) -> SendResult:
        """One bounded, rate-limited, timed Twilio call, classified; never raises."""
        timeout = self._settings.send_timeout_seconds

        def failed(outcome: Outcome, error: str, **extra: Any) -> SendResult:
            return SendResult(
                outcome, error=error, body=body, language=lang, content_sid=content_sid, **extra
            )

        async with self._semaphore:
            await self.bucket.acquire()
            if guard is not None and not await guard():
                return SendResult("released", body=body, language=lang, content_sid=content_sid)
            started = time.monotonic()
            answers: list[Mapping[str, str]] = []
            kept = _ANSWER_HEADERS.set(answers)
            try:
                async with asyncio.timeout(timeout):
                    message = await self._client.messages.create_async(**kwargs)
            except (TwilioRestException, TwilioServiceException) as exc:
                status = _int_or_none(getattr(exc, "status", None))
                code = _int_or_none(getattr(exc, "code", None))
                said = getattr(exc, "msg", None) or getattr(exc, "title", None) or "error"
                text = _scrub(f"HTTP {status}: {said}")
                outcome = classify_failure(status, code)
                retry_after = None
                if status == 429 or code in RATE_LIMIT_CODES:
                    asked = parse_retry_after(answers[-1].get("Retry-After") if answers else None)
                    retry_after = self.gate.rate_limited(started, asked)
                    self.bucket.hold_until(time.monotonic() + retry_after)
                elif outcome == "released":
                    self.gate.refused(f"HTTP {status}, error {code}")
                else:
                    self.gate.accepted()
                return failed(
                    outcome, text, error_code=code, http_status=status, retry_after=retry_after
                )
            except TimeoutError:  # before OSError: TimeoutError is one
                return failed("retry", f"no answer within {timeout:g}s; Twilio may have sent it")
            except (aiohttp.ClientError, OSError) as exc:
                return failed("retry", _scrub(f"{type(exc).__name__}: {exc}"))
            except Exception as exc:
                self._log.exception("unexpected error from the Twilio client")
                return failed("retry", f"unexpected {type(exc).__name__}")
            finally:
                _ANSWER_HEADERS.reset(kept)
        self.gate.sent()
        return SendResult(
            "sent", sid=str(message.sid), body=body, language=lang, content_sid=content_sid
        )


#: Where the HTTP client puts the headers of each answer, for the send that asked.
_ANSWER_HEADERS: ContextVar[list[Mapping[str, str]] | None] = ContextVar(
    "twilio_answer_headers", default=None
)


class _HeaderKeepingHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio-python's own client, keeping each answer's headers for the send that asked.

    TwilioRestException carries no headers, and Twilio's Retry-After is one. Each send
    runs in its own task, so a context variable set around the call reaches this
    method and no other send's (the client's one ``_test_only_last_response`` is
    shared by all concurrent requests)."""

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        response = await super().request(*args, **kwargs)
        answers = _ANSWER_HEADERS.get()
        if answers is not None and response.headers is not None:
            answers.append(response.headers)
        return response


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _scrub(text: str) -> str:
    """Twilio's messages quote the 'To' number; keep error codes, drop anything phone-like."""
    return _PHONE_LIKE.sub("[number]", text)[:_MAX_ERROR_LENGTH]
