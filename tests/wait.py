"""Wait for a condition with a deadline: the tests' one poll-until (no sleep as synchronisation).

    wait_until(lambda: path.exists(), "the report", timeout=5)        # blocking
    await until(lambda: client.connected, "the login")                # in an event loop
    status = wait_until(fetch_status, "a running node", holds=lambda s: s["state"] == "running")

Both return the value that met the condition; after `timeout` seconds they fail with an
AssertionError naming `what` and the last value seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

What = str | Callable[[], object]


def _failure(what: What, timeout: float, last: object) -> AssertionError:
    name = what() if callable(what) else what
    seen = repr(last)
    if len(seen) > 600:
        seen = seen[:300] + " ... " + seen[-300:]
    return AssertionError(f"not within {timeout} s: {name} (last value: {seen})")


def wait_until(
    probe: Callable[[], T],
    what: What,
    timeout: float = 10.0,
    *,
    holds: Callable[[T], object] = bool,
    every: float = 0.05,
) -> T:
    """Call `probe()` every `every` s until `holds(value)` is true (by default: the value is
    true); return that value. `what` (or what it returns, called at the deadline) names
    what was awaited in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if holds(value):
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, value)
        time.sleep(every)


async def until(
    probe: Callable[[], T],
    what: What,
    timeout: float = 10.0,
    *,
    holds: Callable[[T], object] = bool,
    every: float = 0.01,
) -> T:
    """`wait_until` for a test inside an event loop: between probes the loop runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if holds(value):
            return value
        if loop.time() > deadline:
            raise _failure(what, timeout, value)
        await asyncio.sleep(every)
