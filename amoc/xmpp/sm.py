"""XEP-0198 stream management for the lean client: the counters, the queue of stanzas the
server has not acknowledged yet, and the protocol's elements.

A client that enabled stream management holds one `StreamManagement` (a client without it
holds None and pays nothing). Counts are absolute Python ints; the wire carries them mod
2**32 (XEP-0198 §4), and `<a h/>` from the server is read as "how far past our last ack".

- every stanza sent is counted and kept, as the bytes written, until an `<a h/>` covers it;
  while the connection is down (a resumption under way) stanzas are kept and not written;
- `<r/>` is sent after every `ack_every` stanzas; the server's `<r/>` gets `<a h/>` with the
  number of stanzas (message, presence, iq) handled since `<enabled/>`;
- `<resumed h/>` drops what the server got and writes the rest again; `<failed/>` to a
  resumption loses what was written before the drop and not acknowledged (`xmpp.sm.lost`,
  chat messages among them also `xmpp.messages.lost`); what was sent during the outage was
  never written and goes out on the new session.

Metrics (here and in `amoc.xmpp.lean`):
- counters xmpp.sm.enabled (sessions), .unavailable (the server offers no XEP-0198),
  .enable_failed, .resume_unavailable (enabled without resumption), .acks_received,
  .ack_timeouts (request_ack), .interruptions (connections dropped while resumable),
  .resumed, .resent (stanzas written again), .resume_failed (refused by the server),
  .resume_timeouts (no reconnection in time: the session ends), .lost, and
  xmpp.messages.lost (the chat messages among the lost);
- gauge xmpp.sm.unacked: stanzas sent and not yet acknowledged, over every client (it
  grows when the server falls behind), updated at each ack request and ack;
- histograms xmpp.sm.ack_time_ms (from an `<r/>` to the `<a/>`) and
  xmpp.sm.resume_time_ms (from the drop to `<resumed/>`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol
from xml.sax.saxutils import quoteattr

from amoc import metrics
from amoc.xmpp.parser import Element
from amoc.xmpp.stanza import SM_NS

log = logging.getLogger("amoc.xmpp")

MOD = 1 << 32  # h wraps at 2**32

FEATURE = f"{SM_NS} sm"
ENABLED = f"{SM_NS} enabled"
RESUMED = f"{SM_NS} resumed"
FAILED = f"{SM_NS} failed"
REQUEST_TAG = f"{SM_NS} r"
ANSWER_TAG = f"{SM_NS} a"

REQUEST = f"<r xmlns='{SM_NS}'/>".encode()
ENABLE = f"<enable xmlns='{SM_NS}'/>".encode()
ENABLE_RESUME = f"<enable xmlns='{SM_NS}' resume='true'/>".encode()


def resume_request(h: int, previd: str) -> bytes:
    """`<resume h previd/>`: take over the session `previd`, having handled `h` stanzas."""
    return f"<resume xmlns='{SM_NS}' h='{h % MOD}' previd={quoteattr(previd)}/>".encode()


def answer(h: int) -> bytes:
    """`<a h/>`: the stanzas handled so far."""
    return f"<a xmlns='{SM_NS}' h='{h % MOD}'/>".encode()


def read_h(element: Element) -> int:
    """The `h` attribute of `<a/>`, `<resumed/>` or `<failed/>`; ValueError if malformed."""
    text = element.get("h")
    if not text.isdigit() or int(text) >= MOD:
        raise ValueError(f"stream management: bad h={text!r} in <{element.name}/>")
    return int(text)


def failed_condition(element: Element) -> str:
    """The condition of a `<failed/>` (item-not-found, unexpected-request, ...)."""
    for child in element.children:
        return child.name
    return "undefined-condition"


def is_chat(data: bytes) -> bool:
    """Whether a kept stanza is a chat message (what `xmpp.messages.sent` counts)."""
    return data.startswith(b"<message") and (b"type='chat'" in data or b'type="chat"' in data)


def count_lost(stanzas: list[bytes]) -> None:
    """Stanzas the server never acknowledged and never will: count them lost."""
    if stanzas:
        metrics.counter("xmpp.sm.lost").inc(len(stanzas))
        chats = sum(1 for data in stanzas if is_chat(data))
        if chats:
            metrics.counter("xmpp.messages.lost").inc(chats)


_said: set[str] = set()


def say_once(key: str, message: str, *args: Any) -> None:
    """Log a warning once per process: a setting the server does not honour, not per user."""
    if key not in _said:
        _said.add(key)
        log.warning(message, *args)


class Writer(Protocol):
    """Where stanzas go: the connection's transport."""

    def write(self, data: bytes) -> None:
        """Write bytes."""


class StreamManagement:
    """One client's stream management state; see the module docstring."""

    __slots__ = (
        "_reported",
        "_requested_at",
        "_since_request",
        "ack_every",
        "acked",
        "dropped_at",
        "enabled",
        "framed",
        "handled",
        "id",
        "max_s",
        "offered",
        "password",
        "queue",
        "resume",
        "sent",
        "task",
        "transport",
        "waiters",
        "written",
    )

    def __init__(self, resume: bool, ack_every: int) -> None:
        self.resume = resume  # resumption asked for
        self.ack_every = ack_every
        self.enabled = False  # <enabled/> received: stanzas are counted and kept
        self.offered = False  # the last stream's features offered XEP-0198
        self.framed = False  # one element per write (WebSocket, RFC 7395): no batching
        self.id = ""  # the session's id while it can be resumed
        self.max_s: int | None = None  # how long the server keeps a dropped session
        self.handled = 0  # stanzas received since <enabled/> (our h)
        self.sent = 0  # stanzas counted since <enabled/>
        self.acked = 0  # of those, how many the server acknowledged (its h)
        self.written = 0  # of those, how many went to a connection
        self.queue: list[bytes] = []  # stanzas acked+1 .. sent
        self.transport: Writer | None = None  # None while the connection is down
        self.password = ""  # kept for the login of a resumption
        self.task: asyncio.Task[None] | None = None  # the resumption under way
        self.dropped_at = 0.0  # loop time the connection dropped
        # request_ack() callers: (the count they wait to see acknowledged, their future)
        self.waiters: list[tuple[int, asyncio.Future[int]]] | None = None
        self._since_request = 0
        self._requested_at = 0.0  # monotonic time of the oldest unanswered <r/>
        self._reported = 0  # this client's part of the xmpp.sm.unacked gauge

    def __repr__(self) -> str:
        return (
            f"<StreamManagement id={self.id!r} sent={self.sent} acked={self.acked} "
            f"handled={self.handled} unacked={len(self.queue)}>"
        )

    @property
    def unacked(self) -> int:
        """Stanzas sent and not acknowledged yet (with those waiting for a resumption)."""
        return len(self.queue)

    @property
    def resumable(self) -> bool:
        """Whether a dropped connection can be resumed."""
        return bool(self.id)

    # -- sending ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send one stanza: count it, keep it, write it unless the connection is down."""
        self.sent += 1
        self.queue.append(data)
        transport = self.transport
        if transport is None:
            return
        self.written = self.sent
        self._since_request = since = self._since_request + 1
        if since < self.ack_every:
            transport.write(data)
        elif self.framed:
            transport.write(data)
            transport.write(REQUEST)
            self._requested()
        else:
            transport.write(data + REQUEST)  # one write, one syscall
            self._requested()

    def request(self) -> None:
        """Ask the server for an ack now (nothing while the connection is down)."""
        transport = self.transport
        if transport is not None:
            transport.write(REQUEST)
            self._requested()

    def _requested(self) -> None:
        self._since_request = 0
        if not self._requested_at:
            self._requested_at = time.monotonic()
        self._report()

    def _flush(self, transport: Writer, framed: bool) -> int:
        """Write every kept stanza to a fresh connection (and ask for an ack); how many."""
        self.transport = transport
        self.framed = framed
        queue = self.queue
        if queue or self.waiters:
            if framed:
                for data in queue:
                    transport.write(data)
                transport.write(REQUEST)
            else:
                transport.write(b"".join(queue) + REQUEST)
            self._requested()
        self.written = self.sent
        return len(queue)

    # -- the server's side ------------------------------------------------------------------

    def enabled_by(self, element: Element, transport: Writer, framed: bool = False) -> int:
        """`<enabled/>`: count from zero; stanzas sent meanwhile go out now (how many)."""
        self.enabled = True
        self.id = (
            element.get("id") if self.resume and element.get("resume") in ("true", "1") else ""
        )
        max_s = element.get("max")
        self.max_s = int(max_s) if max_s.isdigit() else None
        self.handled = self.acked = 0
        self.sent = len(self.queue)
        self._since_request = 0
        self._requested_at = 0.0
        return self._flush(transport, framed)

    def acked_to(self, h: int) -> int:
        """`<a h/>`: drop what the server acknowledged (how many); wake `request_ack`."""
        dropped = self._trim(h)
        metrics.counter("xmpp.sm.acks_received").inc()
        if self._requested_at:
            elapsed = (time.monotonic() - self._requested_at) * 1000.0
            metrics.histogram("xmpp.sm.ack_time_ms").record(elapsed)
            self._requested_at = 0.0
        self._report()
        if self.waiters:
            self._wake(h)
        return dropped

    def dropped(self, now: float) -> None:
        """The connection is gone: keep everything, write nothing, until a resumption."""
        self.transport = None
        self.dropped_at = now
        self._since_request = 0
        self._requested_at = 0.0

    def resumed_by(self, h: int, transport: Writer, framed: bool = False) -> int:
        """`<resumed h/>`: drop what the server got, write the rest again (how many)."""
        self._trim(h)
        return self._flush(transport, framed)

    def refused(self, h: int | None, first: bytes | None = None) -> list[bytes]:
        """`<failed/>` to a resumption: the stanzas lost (written, never acknowledged).

        What was sent during the outage stays kept, for the new session's `<enabled/>`,
        after `first` (the initial presence the new session needs) if given.
        """
        if h is not None:
            self._trim(h)
        cut = max(0, self.written - self.acked)
        lost = self.queue[:cut]
        del self.queue[:cut]
        if first is not None:
            self.queue.insert(0, first)
        self.id = ""
        self.acked = self.written = self.handled = 0
        self.sent = len(self.queue)
        if self.waiters:  # they now wait for what the new session still sends
            self.waiters = [(self.sent, future) for _target, future in self.waiters]
        self._report()
        return lost

    def close(self, error: BaseException) -> list[bytes]:
        """The session ends: what was never acknowledged; `request_ack` callers get `error`."""
        self.transport = None
        self.enabled = False
        self.id = ""
        self.password = ""
        kept, self.queue = self.queue, []
        self._report()
        waiters, self.waiters = self.waiters, None
        for _target, waiter in waiters or ():
            if not waiter.done():
                waiter.set_exception(error)
        return kept

    def wait_ack(self) -> asyncio.Future[int]:
        """A future for the h of the first `<a/>` that acknowledges every stanza sent so
        far (an `<a/>` answering an earlier `<r/>` may not)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append((self.sent, future))
        return future

    def forget(self, future: asyncio.Future[int]) -> None:
        """Stop waiting with `future` (its caller gave up)."""
        if self.waiters:
            self.waiters = [w for w in self.waiters if w[1] is not future] or None

    def _wake(self, h: int) -> None:
        keep = []
        for target, future in self.waiters or ():
            if self.acked >= target:
                if not future.done():
                    future.set_result(h)
            else:
                keep.append((target, future))
        self.waiters = keep or None

    # -- bookkeeping ------------------------------------------------------------------------

    def _trim(self, h: int) -> int:
        queue = self.queue
        count = (h - self.acked) % MOD
        if count > len(queue):
            # A server that acknowledges more than was sent (XEP-0198 calls it
            # handled-count-too-high): nothing past the queue can be dropped.
            log.debug(
                "stream management: h=%d acknowledges %d, only %d unacked", h, count, len(queue)
            )
            count = len(queue)
        if count:
            del queue[:count]
            self.acked += count
        return count

    def _report(self) -> None:
        now = len(self.queue)
        delta = now - self._reported
        if delta:
            self._reported = now
            metrics.gauge("xmpp.sm.unacked").inc(delta)
