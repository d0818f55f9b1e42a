"""A fake Twilio Messages API on 127.0.0.1, served in the tests' own process.

It answers ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` the way Twilio does
(201 with the Message JSON, or Twilio's error JSON), and ``GET .../Messages/{Sid}.json``
with a message's status (``statuses``, for reconciliation), checks Basic auth, and can be
scripted to fail or stall the next requests, to refuse every request until told
otherwise (a revoked token), to send ``Retry-After``, and to answer a share of the
requests slowly. Every POST is also recorded on arrival (``arrivals``), with whether
its answer reached the client, so duplicates and reorderings can be counted by what
Twilio would have received (``delivery_faults``). (The benchmark's throughput fake is
leaner: ``benchmarks/recording_twilio.py``, which shares ``message_resource``.)

    async with FakeTwilio() as fake:
        fake.fail_next(status=429, code=20429)
        ...
        await fake.wait_for(2, timeout=5)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

__all__ = [
    "TEST_ACCOUNT_SID",
    "TEST_AUTH_TOKEN",
    "Arrival",
    "DeliveryFaults",
    "FakeTwilio",
    "Planned",
    "ReceivedMessage",
    "delivery_faults",
    "message_resource",
]

TEST_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TEST_AUTH_TOKEN = "fake-twilio-auth-token"
API_VERSION = "2010-04-01"

_ERROR_TEXT = {
    400: "Bad Request",
    401: "Authenticate",
    403: "Forbidden",
    404: "The requested resource was not found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def message_resource(
    account_sid: str, sid: str, from_: str, to: str, body: str, date: str
) -> dict[str, object]:
    """A Message resource as Twilio's API returns it for a newly queued message."""
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": date,
        "date_sent": None,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": from_,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": to,
        "uri": f"{uri}.json",
    }


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message, as the fake saw it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    body: str | None
    content_sid: str | None
    content_variables: str | None
    received_monotonic: float
    received_time: float
    status_callback: str | None = None


@dataclass
class Arrival:
    """One well-formed POST, recorded when it arrived (before any planned delay)."""

    to: str
    body: str | None
    received_monotonic: float
    #: the answer was 201 and reached the client (False: an error, or the client had
    #: given up, so a sender must assume nothing and may send again)
    answered: bool = False


@dataclass(frozen=True)
class Planned:
    """How to answer one future request: wait ``delay`` seconds, then fail or accept."""

    status: int = 201
    code: int | None = None
    message: str | None = None
    delay: float = 0.0
    #: a Retry-After header (seconds, or an HTTP date) on the answer
    retry_after: str | None = None


@dataclass(frozen=True)
class DeliveryFaults:
    """Per ticket, by arrival at the fake: what a citizen would have seen wrong."""

    #: a ticket's status arriving again after an earlier POST of it was answered
    duplicates: int
    #: an older status arriving after a newer one
    reorderings: int
    #: POSTs whose answer did not reach the sender (which may then send again)
    unanswered: int


def delivery_faults(
    arrivals: list[Arrival], key: Callable[[str | None], tuple[str, int] | None]
) -> DeliveryFaults:
    """Count duplicates and reorderings; ``key`` maps a body to (ticket, status rank)."""
    answered: set[tuple[str, int]] = set()
    newest: dict[str, int] = {}
    duplicates = reorderings = unanswered = 0
    for arrival in arrivals:
        unanswered += not arrival.answered
        found = key(arrival.body)
        if found is None:
            continue
        ticket, rank = found
        duplicates += found in answered
        reorderings += rank < newest.get(ticket, rank)
        newest[ticket] = max(rank, newest.get(ticket, rank))
        if arrival.answered:
            answered.add(found)
    return DeliveryFaults(duplicates, reorderings, unanswered)


@dataclass
class _Waiter:
    count: int
    event: asyncio.Event = field(default_factory=asyncio.Event)


class FakeTwilio:
    """The fake server; ``messages`` holds accepted messages, ``requests`` every attempt."""

    def __init__(
        self,
        account_sid: str = TEST_ACCOUNT_SID,
        auth_token: str = TEST_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.messages: list[ReceivedMessage] = []
        #: (account SID, HTTP status) of every POST, accepted or not.
        self.requests: list[tuple[str, int]] = []
        #: monotonic time each POST was answered, in answer order (with ``requests``)
        self.answered_at: list[float] = []
        #: every well-formed POST, in arrival order
        self.arrivals: list[Arrival] = []
        self._plan: collections.deque[Planned] = collections.deque()
        self._failing: Planned | None = None
        self._slow_every = 0
        self._slow_seconds = 0.0
        self._posts = 0
        self._waiters: list[_Waiter] = []
        self._expected_auth = "Basic " + base64.b64encode(
            f"{account_sid}:{auth_token}".encode()
        ).decode("ascii")
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._date_second = -1
        self._date_text = ""
        #: With enforce_window, body text to a number not in ``window`` (one that has
        #: not written in 24 h) is answered by a signed 'failed' 63016 callback.
        self.enforce_window = False
        self.window: set[str] = set()
        self.window_failure_delay = 0.3
        #: The 63016 callback is sent (and answered) before the POST is answered: it
        #: reaches the daemon while the row is still 'sending'.
        self.window_failure_before_answer = False
        #: What ``GET .../Messages/{sid}.json`` answers (reconciliation): the status and
        #: error code per SID; a message sent here and not listed is 'sent'; any other
        #: SID is 404. Every lookup's SID is recorded in ``lookups``.
        self.statuses: dict[str, tuple[str, int | None]] = {}
        self.lookups: list[str] = []
        #: Content API: templates created, and WhatsApp approval requests.
        self.contents: list[dict[str, object]] = []
        self.approvals: list[tuple[str, dict[str, object]]] = []
        self._background: set[asyncio.Task[int]] = set()
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(
            "/2010-04-01/Accounts/{account_sid}/Messages.json", self._create_message
        )
        app.router.add_get(
            "/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json", self._fetch_message
        )
        app.router.add_post("/v1/Content", self._create_content)
        app.router.add_post("/v1/Content/{sid}/ApprovalRequests/whatsapp", self._request_approval)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        self._closing.set()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- scripting ------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        code: int | None = None,
        message: str | None = None,
        times: int = 1,
        delay: float = 0.0,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests with this error (Twilio's error JSON)."""
        self._plan.extend([Planned(status, code, message, delay, retry_after)] * times)

    def fail_all(self, status: int, code: int | None = None, message: str | None = None) -> None:
        """Answer every request with this error until ``recover()`` (a revoked token)."""
        self._failing = Planned(status, code, message)

    def recover(self) -> None:
        """Stop failing every request."""
        self._failing = None

    def slow(self, seconds: float, every: int = 2) -> None:
        """Answer every ``every``-th POST (the 1st, the 3rd, ...) after ``seconds``."""
        self._slow_every, self._slow_seconds = every, seconds

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Accept the next ``times`` requests, but only after ``seconds``."""
        self._plan.extend([Planned(delay=seconds)] * times)

    def reset(self) -> None:
        """Forget received messages and planned responses."""
        self.messages.clear()
        self.requests.clear()
        self.answered_at.clear()
        self.arrivals.clear()
        self._plan.clear()
        self._failing = None
        self._slow_every = 0

    async def wait_for(
        self,
        count: int,
        timeout: float = 5.0,
    ) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages were accepted; TimeoutError otherwise."""
        if len(self.messages) < count:
            waiter = _Waiter(count)
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter.event.wait()
            except TimeoutError:
                raise TimeoutError(
                    f"fake Twilio received {len(self.messages)} of {count} messages "
                    f"within {timeout}s"
                ) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return list(self.messages)

    # --- webhooks: what Twilio sends to the daemon, signed ---------------------------

    async def signed_post(
        self, url: str, params: dict[str, str], *, token: str | None = None
    ) -> int:
        """POST a form to ``url`` signed as Twilio signs it (the real RequestValidator)."""
        signature = RequestValidator(token or self.auth_token).compute_signature(url, params)
        return await self.post(url, params, {"X-Twilio-Signature": signature})

    async def post(self, url: str, params: dict[str, str], headers: dict[str, str]) -> int:
        """POST a form with the given headers; the HTTP status."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            url, data=params, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            await response.read()
            return response.status

    async def callback(
        self, message: ReceivedMessage, status: str, error_code: int | None = None
    ) -> int:
        """One status callback for ``message`` to its StatusCallback URL."""
        assert message.status_callback, "the message was sent without a StatusCallback"
        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "From": message.from_,
            "MessageSid": message.sid,
            "MessageStatus": status,
            "SmsSid": message.sid,
            "SmsStatus": status,
            "To": message.to,
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return await self.signed_post(message.status_callback, params)

    async def _window_failure(self, message: ReceivedMessage) -> int:
        """Twilio reports 63016 a while after accepting the request, as here."""
        try:
            async with asyncio.timeout(self.window_failure_delay):
                await self._closing.wait()
        except TimeoutError:
            pass
        return await self.callback(message, "failed", error_code=63016)

    async def inbound(self, url: str, from_: str, body: str, sid: str | None = None) -> int:
        """A citizen writes ``body`` from ``from_`` (whatsapp:+27...); opens its window."""
        self.window.add(from_)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "Body": body,
            "From": from_,
            "MessageSid": sid or "SM" + uuid.uuid4().hex,
            "NumMedia": "0",
            "To": "whatsapp:+14155238886",
        }
        return await self.signed_post(url, params)

    # --- looking a message up (reconciliation) ----------------------------------------

    async def _fetch_message(self, request: web.Request) -> web.Response:
        account_sid, sid = request.match_info["account_sid"], request.match_info["sid"]
        if request.headers.get("Authorization") != self._expected_auth:
            return await self._error(request, account_sid, Planned(401, 20003, "Authenticate"))
        self.lookups.append(sid)
        sent = next((m for m in self.messages if m.sid == sid), None)
        if sid not in self.statuses and sent is None:
            return await self._error(
                request, account_sid, Planned(404, 20404, f"Message {sid} was not found")
            )
        status, code = self.statuses.get(sid, ("sent", None))
        to = sent.to if sent else "whatsapp:+27821234567"
        from_ = sent.from_ if sent else "whatsapp:+14155238886"
        payload = message_resource(
            account_sid, sid, from_, to, (sent.body or "") if sent else "", self._date(time.time())
        )
        payload.update(status=status, error_code=code)
        return web.json_response(payload)

    # --- the Content API -------------------------------------------------------------

    async def _create_content(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self._expected_auth:
            return await self._error(request, self.account_sid, Planned(401, 20003, "Authenticate"))
        definition = await request.json()
        if not isinstance(definition, dict) or not definition.get("types"):
            return await self._error(
                request, self.account_sid, Planned(400, 20001, "types is required")
            )
        sid = "HX" + uuid.uuid4().hex
        self.contents.append({**definition, "sid": sid})
        payload = {**definition, "sid": sid, "account_sid": self.account_sid}
        return web.json_response(payload, status=201)

    async def _request_approval(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self._expected_auth:
            return await self._error(request, self.account_sid, Planned(401, 20003, "Authenticate"))
        body = await request.json()
        self.approvals.append((request.match_info["sid"], body))
        return web.json_response(
            {"name": body.get("name"), "category": body.get("category"), "status": "received"},
            status=201,
        )

    # --- the API --------------------------------------------------------------------

    async def _create_message(self, request: web.Request) -> web.StreamResponse:
        account_sid = request.match_info["account_sid"]
        if request.headers.get("Authorization") != self._expected_auth:
            return await self._error(request, account_sid, Planned(401, 20003, "Authenticate"))
        form = await request.post()
        to, from_ = form.get("To"), form.get("From")
        if not isinstance(to, str) or not isinstance(from_, str):
            return await self._error(
                request, account_sid, Planned(400, 21604, "A 'To' and a 'From' are required.")
            )
        body, content_sid = form.get("Body"), form.get("ContentSid")
        content_variables = form.get("ContentVariables")
        callback = form.get("StatusCallback")
        if not isinstance(body, str) and not isinstance(content_sid, str):
            return await self._error(
                request, account_sid, Planned(400, 21619, "A text message Body is required.")
            )
        arrival = Arrival(to, body if isinstance(body, str) else None, time.monotonic())
        self.arrivals.append(arrival)
        self._posts += 1
        plan = self._plan.popleft() if self._plan else self._failing
        delay = plan.delay if plan is not None else 0.0
        if self._slow_every and self._posts % self._slow_every == 1 % self._slow_every:
            delay = max(delay, self._slow_seconds)
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await self._closing.wait()
            except TimeoutError:
                pass
        if plan is not None and plan.status >= 300:
            return await self._error(request, account_sid, plan)
        sid = "SM" + uuid.uuid4().hex
        now = time.time()
        self.messages.append(
            ReceivedMessage(
                sid=sid,
                account_sid=account_sid,
                to=to,
                from_=from_,
                body=body if isinstance(body, str) else None,
                content_sid=content_sid if isinstance(content_sid, str) else None,
                content_variables=content_variables if isinstance(content_variables, str) else None,
                received_monotonic=time.monotonic(),
                received_time=now,
                status_callback=callback if isinstance(callback, str) else None,
            )
        )
        message = self.messages[-1]
        if self.enforce_window and message.body is not None and to not in self.window:
            # WhatsApp accepts the request, then fails free-form text outside the window.
            if self.window_failure_before_answer:
                await self.callback(message, "failed", error_code=63016)
            else:
                self._background.add(asyncio.create_task(self._window_failure(message)))
        if self._waiters:
            self._wake()
        date = self._date(now)
        payload = message_resource(
            account_sid, sid, from_, to, body if isinstance(body, str) else "", date
        )
        response = web.Response(
            status=201, body=json.dumps(payload).encode(), content_type="application/json"
        )
        arrival.answered = await self._answer(request, response, account_sid)
        return response

    async def _answer(self, request: web.Request, response: web.Response, account_sid: str) -> bool:
        """Write the answer now; False when the client had already gone (answer lost)."""
        self.requests.append((account_sid, response.status))
        self.answered_at.append(time.monotonic())
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        try:
            await response.prepare(request)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _error(self, request: web.Request, account_sid: str, plan: Planned) -> web.Response:
        payload = {
            "code": plan.code,
            "message": plan.message or _ERROR_TEXT.get(plan.status, "Error"),
            "more_info": f"https://www.twilio.com/docs/errors/{plan.code or plan.status}",
            "status": plan.status,
        }
        headers = {"Retry-After": plan.retry_after} if plan.retry_after is not None else None
        response = web.Response(
            status=plan.status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers=headers,
        )
        await self._answer(request, response, account_sid)
        return response

    def _wake(self) -> None:
        received = len(self.messages)
        for waiter in self._waiters:
            if received >= waiter.count:
                waiter.event.set()

    def _date(self, now: float) -> str:
        """RFC 2822 date as Twilio writes it, formatted once per second."""
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_text = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(second))
        return self._date_text
