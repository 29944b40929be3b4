"""Waiting for counts that a stanza handler keeps (rooms, PubSub subscriptions).

A `Tally` belongs to one session. Its owner updates its counts from a handler (see
`client.add_handler`) and calls `changed()`; `await tally.until(ready, timeout_ms, what)`
returns once `ready()` holds, raises `ReceiveTimeout` naming `what` when it does not in
time, and `ConnectionLost` (or the stop's `XmppError`) as soon as the session ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from amoc.xmpp.errors import Reason, ReceiveTimeout
from amoc.xmpp.pred import Pred
from amoc.xmpp.session import Session

# Matches nothing: a wait_for on it fails only when the session ends (or at its timeout).
_NOTHING = Pred(lambda _e: False, "the end of the session")
# The guard outlives the wait itself, so that a timeout is ours and names what was awaited.
_GUARD_MARGIN_MS = 1000.0


class Tally:
    """Counts kept by a handler of `client`, and the calls waiting for them."""

    __slots__ = ("_waiters", "client")

    def __init__(self, client: Session) -> None:
        self.client = client
        self._waiters: list[asyncio.Future[None]] = []

    def changed(self) -> None:
        """The counts changed: the waiters look again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def until(self, ready: Callable[[], bool], timeout_ms: float | None, what: str) -> None:
        """Return once `ready()` is true; `ReceiveTimeout` naming `what` after `timeout_ms`."""
        if ready():
            return
        client = self.client
        timeout = client.settings.reply_timeout if timeout_ms is None else timeout_ms
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout / 1000.0
        # A session that ends wakes no handler: a wait_for that matches nothing fails then.
        guard = asyncio.ensure_future(
            client.wait_for(_NOTHING, timeout_ms=timeout + _GUARD_MARGIN_MS)
        )
        try:
            while not ready():
                left = end - loop.time()
                if left <= 0:
                    raise ReceiveTimeout(
                        f"{client.jid}: no {what} within {timeout} ms",
                        Reason.TIMEOUT,
                        client.user_id,
                    )
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                await asyncio.wait(
                    (waiter, guard), timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if guard.done():
                    guard.result()  # ConnectionLost, or the client was stopped
                if not waiter.done():
                    waiter.cancel()
        finally:
            guard.cancel()
            await asyncio.gather(guard, return_exceptions=True)
