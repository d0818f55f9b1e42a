"""A minimal, fast fake of Twilio's Messages API that records when each message arrived.

The benchmark's fake: the daemon keeps its real twilio-python client and posts here
exactly as it would to api.twilio.com. Unlike ``tests/fake_twilio.py`` (aiohttp, for
tests), this one is a bare ``asyncio.Protocol`` speaking just enough HTTP/1.1
(keep-alive, Content-Length bodies), so the fake costs as little CPU as possible on a
machine it shares with the daemon and PostgreSQL. It records ``time.time()`` when a
request's body is complete, with the ``To`` and ``Body`` (or content variables).

    python -m benchmarks.recording_twilio --port 0     # prints the port; stops on SIGTERM

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json   (Basic auth) -> 201 Message JSON
    GET  /_bench/count                 -> {"count": accepted, "requests": n, "errors": n}
    GET  /_bench/messages?since=N      -> {"count": accepted, "messages": [[time, to, body], ...]}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
import time
import uuid
from typing import cast
from urllib.parse import parse_qs, urlsplit

from sla_daemon import aio
from tests.fake_twilio import API_VERSION, TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, message_resource

__all__ = ["RecordingTwilio", "main"]

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
_MAX_HEADER = 64 * 1024


class RecordingTwilio:
    """Shared state of all connections: the accepted messages, in arrival order."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.expected_auth = (
            "basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode("ascii")
        ).encode()
        self.prefix = f"/{API_VERSION}/Accounts/".encode()
        self.messages: list[tuple[float, str, str]] = []
        self.requests = 0
        self.errors = 0
        self._date_second = -1
        self._date_text = ""

    def date(self, now: float) -> str:
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_text = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(second))
        return self._date_text

    def handle(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, bytes]:
        if method == b"POST" and target.startswith(self.prefix):
            return self._create(target, headers, body)
        if method == b"GET" and target.startswith(b"/_bench/"):
            return self._bench(target.decode("ascii", "replace"))
        return 404, _error(404, 20404, "The requested resource was not found")

    def _create(self, target: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[int, bytes]:
        now = time.time()
        self.requests += 1
        account_sid = target[len(self.prefix) :].split(b"/", 1)[0].decode("ascii", "replace")
        if headers.get(b"authorization", b"").lower() != self.expected_auth.lower():
            self.errors += 1
            return 401, _error(401, 20003, "Authenticate")
        form = parse_qs(body.decode("utf-8", "replace"))
        to = form.get("To", [None])[0]
        from_ = form.get("From", [None])[0]
        text = form.get("Body", [None])[0]
        if text is None and "ContentSid" in form:
            text = form["ContentSid"][0] + " " + form.get("ContentVariables", [""])[0]
        if to is None or from_ is None:
            self.errors += 1
            return 400, _error(400, 21604, "A 'To' and a 'From' are required.")
        if text is None:
            self.errors += 1
            return 400, _error(400, 21619, "A text message Body is required.")
        self.messages.append((now, to, text))
        sid = "SM" + uuid.uuid4().hex
        date = self.date(now)
        payload = message_resource(account_sid, sid, from_, to, text, date)
        return 201, json.dumps(payload).encode()

    def _bench(self, target: str) -> tuple[int, bytes]:
        url = urlsplit(target)
        if url.path == "/_bench/count":
            doc = {"count": len(self.messages), "requests": self.requests, "errors": self.errors}
            return 200, json.dumps(doc).encode()
        if url.path == "/_bench/messages":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            doc2 = {"count": len(self.messages), "messages": self.messages[since:]}
            return 200, json.dumps(doc2).encode()
        return 404, _error(404, 20404, "The requested resource was not found")


def _error(status: int, code: int, message: str) -> bytes:
    return json.dumps(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
    ).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; requests may arrive split or pipelined."""

    def __init__(self, state: RecordingTwilio) -> None:
        self._state = state
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self._transport is not None and self._one():
            pass

    def _one(self) -> bool:
        """Answer one complete request from the buffer; False when more bytes are needed."""
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEADER:
                self._close()
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        try:
            method, target, _version = lines[0].split(b" ", 2)
        except ValueError:
            self._close()
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._close()  # twilio-python sends urlencoded forms with a Content-Length
            return False
        length = int(headers.get(b"content-length", b"0") or 0)
        if len(self._buf) < end + 4 + length:
            return False
        body = bytes(self._buf[end + 4 : end + 4 + length])
        del self._buf[: end + 4 + length]
        status, payload = self._state.handle(method, target, headers, body)
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: keep-alive\r\n\r\n%s"
            % (status, _REASONS.get(status, "Error").encode(), len(payload), payload)
        )
        if headers.get(b"connection", b"").lower() == b"close":
            self._close()
            return False
        return True

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def _serve(host: str, port: int, account_sid: str, auth_token: str) -> None:
    state = RecordingTwilio(account_sid, auth_token)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(lambda: _Connection(state), host, port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        print(
            f"recording twilio: {len(state.messages)} messages accepted, {state.errors} refused",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--account-sid", default=TEST_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=TEST_AUTH_TOKEN)
    args = parser.parse_args(argv)
    aio.run(_serve(args.host, args.port, args.account_sid, args.auth_token))


if __name__ == "__main__":
    main()
