"""A fake Twilio Messages API on 127.0.0.1, served in the tests' own process.

It answers ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` the way Twilio does
(201 with the Message JSON, or Twilio's error JSON), checks Basic auth, and can be
scripted to fail or stall the next requests. (The benchmark has its own, leaner
fake: ``benchmarks/recording_twilio.py``, which shares ``message_resource``.)

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
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

__all__ = [
    "TEST_ACCOUNT_SID",
    "TEST_AUTH_TOKEN",
    "FakeTwilio",
    "Planned",
    "ReceivedMessage",
    "message_resource",
]

TEST_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TEST_AUTH_TOKEN = "fake-twilio-auth-token"
API_VERSION = "2010-04-01"

_ERROR_TEXT = {
    400: "Bad Request",
    401: "Authenticate",
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


@dataclass(frozen=True)
class Planned:
    """How to answer one future request: wait ``delay`` seconds, then fail or accept."""

    status: int = 201
    code: int | None = None
    message: str | None = None
    delay: float = 0.0


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
        #: The To of every authenticated POST as it arrives, before any planned delay:
        #: which messages are in flight while their answers are held back.
        self.arrivals: list[str] = []
        self._plan: collections.deque[Planned] = collections.deque()
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
    ) -> None:
        """Answer the next ``times`` requests with this error (Twilio's error JSON)."""
        self._plan.extend([Planned(status, code, message, delay)] * times)

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Accept the next ``times`` requests, but only after ``seconds``."""
        self._plan.extend([Planned(delay=seconds)] * times)

    def reset(self) -> None:
        """Forget received messages and planned responses."""
        self.messages.clear()
        self.requests.clear()
        self.arrivals.clear()
        self._plan.clear()

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

    # --- the Content API -------------------------------------------------------------

    async def _create_content(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self._expected_auth:
            return self._error(self.account_sid, 401, 20003, "Authenticate")
        definition = await request.json()
        if not isinstance(definition, dict) or not definition.get("types"):
            return self._error(self.account_sid, 400, 20001, "types is required")
        sid = "HX" + uuid.uuid4().hex
        self.contents.append({**definition, "sid": sid})
        payload = {**definition, "sid": sid, "account_sid": self.account_sid}
        return web.json_response(payload, status=201)

    async def _request_approval(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self._expected_auth:
            return self._error(self.account_sid, 401, 20003, "Authenticate")
        body = await request.json()
        self.approvals.append((request.match_info["sid"], body))
        return web.json_response(
            {"name": body.get("name"), "category": body.get("category"), "status": "received"},
            status=201,
        )

    # --- the API --------------------------------------------------------------------

    async def _create_message(self, request: web.Request) -> web.Response:
        account_sid = request.match_info["account_sid"]
        if request.headers.get("Authorization") != self._expected_auth:
            return self._error(account_sid, 401, 20003, "Authenticate")
        form = await request.post()
        self.arrivals.append(str(form.get("To")))
        plan = self._plan.popleft() if self._plan else None
        if plan is not None and plan.delay > 0:
            try:
                async with asyncio.timeout(plan.delay):
                    await self._closing.wait()
            except TimeoutError:
                pass
        if plan is not None and plan.status >= 300:
            return self._error(account_sid, plan.status, plan.code, plan.message)
        to, from_ = form.get("To"), form.get("From")
        if not isinstance(to, str) or not isinstance(from_, str):
            return self._error(account_sid, 400, 21604, "A 'To' and a 'From' are required.")
        body, content_sid = form.get("Body"), form.get("ContentSid")
        content_variables = form.get("ContentVariables")
        callback = form.get("StatusCallback")
        if not isinstance(body, str) and not isinstance(content_sid, str):
            return self._error(account_sid, 400, 21619, "A text message Body is required.")
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
            self._background.add(asyncio.create_task(self._window_failure(message)))
        self.requests.append((account_sid, 201))
        if self._waiters:
            self._wake()
        date = self._date(now)
        payload = message_resource(
            account_sid, sid, from_, to, body if isinstance(body, str) else "", date
        )
        return web.Response(
            status=201, body=json.dumps(payload).encode(), content_type="application/json"
        )

    def _error(
        self, account_sid: str, status: int, code: int | None, message: str | None
    ) -> web.Response:
        self.requests.append((account_sid, status))
        payload = {
            "code": code,
            "message": message or _ERROR_TEXT.get(status, "Error"),
            "more_info": f"https://www.twilio.com/docs/errors/{code or status}",
            "status": status,
        }
        return web.Response(
            status=status, body=json.dumps(payload).encode(), content_type="application/json"
        )

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
