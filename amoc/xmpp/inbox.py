"""What both XMPP clients do with received chat messages: count, time, keep, wait for them.

`Inbox` is a mixin: a client provides `settings`, `jid`, `user_id`, `received`, `_inbox`,
`_waiters` and `_live()` (which raises when the session is not up), and calls `_deliver`
for each chat message its transport parsed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from amoc import metrics
from amoc.xmpp import stamp
from amoc.xmpp.errors import Reason, ReceiveTimeout, XmppError
from amoc.xmpp.settings import Settings


class Message(NamedTuple):
    """A received chat message as `wait_message` returns it (a named tuple: made for every
    message received, and a tuple is the cheapest object to make)."""

    sender: str  # the full JID the server reports as `from`
    body: str
    sent_us: int | None  # the sender's stamp (wall clock, µs), None if unstamped
    ttd_ms: float | None  # time to delivery, None if unstamped
    delayed: bool  # delivered from offline storage (carries <delay/>)


class Inbox:
    """Receiving, shared by the slixmpp and the lean client."""

    __slots__ = ("_inbox", "_waiters", "received")

    settings: Settings
    jid: str
    user_id: int
    received: int  # chat messages since login
    # A list, made at the first message kept: oldest first, at most inbox_size long. A deque
    # costs 760 bytes however short; a list of a few messages about 100 (at 100 000 users,
    # 64 MiB), and what it loses on pop(0) is a memmove of inbox_size pointers at most.
    _inbox: list[Message] | None
    _waiters: list[asyncio.Future[None]]

    def _live(self) -> Any:
        raise NotImplementedError

    def _deliver(
        self, sender: str, body: str, sent_us: int | None, received_us: int, delayed: bool
    ) -> None:
        """A chat message arrived: count it, record its TTD, keep it, wake the waiters."""
        self._keep(sender, body, sent_us, self._count_chat(sent_us, received_us), delayed)

    def _count_chat(self, sent_us: int | None, received_us: int) -> float | None:
        """Count a received chat message and record its TTD (returned, None if unstamped)."""
        self.received += 1
        metrics.counter("xmpp.messages.received").inc()
        if sent_us is None:
            return None
        ttd = stamp.ttd_ms(sent_us, received_us)
        metrics.histogram("xmpp.ttd_ms").record(ttd)
        return ttd

    def _keep(
        self, sender: str, body: str, sent_us: int | None, ttd: float | None, delayed: bool
    ) -> None:
        """Keep a counted chat message for wait_message and wake the waiters."""
        size = self.settings.inbox_size
        if size > 0:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = []
            elif len(inbox) >= size:  # full (only this appends): the oldest goes
                del inbox[0]
                metrics.counter("xmpp.messages.dropped").inc()
            inbox.append(Message(sender, body, sent_us, ttd, delayed))
        if self._waiters:
            self._wake()

    async def wait_message(self, timeout_ms: float | None = None) -> Message:
        """The oldest unread chat message, waiting up to `timeout_ms` (default reply timeout)."""
        if self.settings.inbox_size <= 0:
            raise XmppError(f"{self.jid}: wait_message needs an inbox (xmpp_inbox_size > 0)")
        if not self._inbox:
            await self._wait_until(lambda: bool(self._inbox), timeout_ms, "message")
        assert self._inbox is not None
        return self._inbox.pop(0)

    async def wait_received(self, count: int, timeout_ms: float | None = None) -> None:
        """Wait until `received` (chat messages since login) reaches `count`."""
        if self.received < count:
            await self._wait_until(
                lambda: self.received >= count,
                timeout_ms,
                f"{count} messages (got {self.received})",
            )

    def inbox(self) -> list[Message]:
        """The unread messages, oldest first (they stay unread)."""
        return list(self._inbox or ())

    def take_messages(self) -> list[Message]:
        """Remove and return the unread messages, oldest first (no waiting)."""
        taken, self._inbox = self._inbox, None
        return taken or []

    async def _wait_until(
        self, ready: Callable[[], bool], timeout_ms: float | None, what: str
    ) -> None:
        timeout = self.settings.reply_timeout if timeout_ms is None else timeout_ms
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout / 1000.0):
                while not ready():
                    self._live()
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
        except TimeoutError:
            metrics.counter("xmpp.messages.timeouts").inc()
            raise ReceiveTimeout(
                f"{self.jid}: no {what} within {timeout} ms", Reason.TIMEOUT, self.user_id
            ) from None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
