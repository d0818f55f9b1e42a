"""Bounded waits for state that lives in another process (the database, a server).

Where the code under test offers an event (the fake Twilio's ``wait_for``), tests
await it. Database rows and HTTP answers offer none, so they are re-read here at a
short interval until they hold, and the wait fails loudly at its bound.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    timeout: float = 10,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Return check()'s first truthy value; TimeoutError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise TimeoutError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(interval)
