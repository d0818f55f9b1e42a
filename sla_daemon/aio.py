"""Small asyncio helpers shared by the daemon's loops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "wait_any"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop, the daemon's event loop; plain asyncio where it is missing."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)
    return uvloop.run(coro)


async def wait_any(*events: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Wait until any event is set or the timeout passes; True if an event was set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return bool(done)
