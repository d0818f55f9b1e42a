"""The demo's stand-in for Twilio's side of the webhooks (issue 13).

The demo runs dry: nothing reaches WhatsApp, so no real callback ever comes. This plays
Twilio's part over real HTTP, into the daemon's real webhook endpoint: each request is
signed with the demo's own auth token exactly as Twilio signs (twilio's
``RequestValidator``), so what the demo shows (delivered and read ticks, a STOP) went
through the same signature check, parsing and ``record_delivery``/``record_inbound``
as in production.
"""

from __future__ import annotations

import secrets

import aiohttp
from twilio.request_validator import RequestValidator

from .conversation import INBOUND_PATH, STATUS_PATH

__all__ = ["DEMO_PUBLIC_URL", "SimulatedTwilio"]

#: What the demo's daemon believes Twilio calls (and signs); never contacted.
DEMO_PUBLIC_URL = "http://127.0.0.1/sla-daemon-demo"
ACCOUNT_SID = "AC" + "d" * 32
DESK_NUMBER = "whatsapp:+14155238886"


class SimulatedTwilio:
    """Signed status callbacks and inbound messages to the daemon on ``port``."""

    def __init__(self, port: int, auth_token: str) -> None:
        self._base = f"http://127.0.0.1:{port}"
        self._validator = RequestValidator(auth_token)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(self, outbox_id: int, sid: str, to: str, status: str) -> int:
        """One status callback for the message ``sid`` of outbox row ``outbox_id``."""
        params = {
            "AccountSid": ACCOUNT_SID,
            "MessageSid": sid,
            "MessageStatus": status,
            "From": DESK_NUMBER,
            "To": to,
        }
        return await self._post(f"{STATUS_PATH}?outbox={outbox_id}", params)

    async def inbound(self, from_: str, body: str) -> int:
        """A citizen writes ``body`` from ``from_`` (whatsapp:+27...)."""
        params = {
            "AccountSid": ACCOUNT_SID,
            "MessageSid": new_sid(),
            "From": from_,
            "To": DESK_NUMBER,
            "Body": body,
            "NumMedia": "0",
        }
        return await self._post(INBOUND_PATH, params)

    async def _post(self, path: str, params: dict[str, str]) -> int:
        assert self._session is not None, "SimulatedTwilio.start() was not called"
        signature = self._validator.compute_signature(f"{DEMO_PUBLIC_URL}{path}", params)
        async with self._session.post(
            f"{self._base}{path}", data=params, headers={"X-Twilio-Signature": signature}
        ) as response:
            await response.read()
            return response.status


def new_sid() -> str:
    """A made-up message SID, shaped like Twilio's."""
    return "SM" + secrets.token_hex(16)
