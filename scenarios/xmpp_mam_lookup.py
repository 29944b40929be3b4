"""Message archive lookups: pairs of users chat, then each pages through its archive with
the other (XEP-0313 with RSM) and checks that it holds what they exchanged.

Neighbours are pairs as in xmpp_one_to_one: 1 <-> 2, 3 <-> 4, ... Each run of a user:

1. log in, send presence (the server archives every message: ejabberd `mod_mam` with
   `default: always`, Prosody `mod_mam`);
2. send `messages_per_user` chat messages to its neighbour, one every `message_interval` ms
   (the first at a random point of the second interval), each body unique to this session;
3. wait (at most `receive_timeout` ms) for its neighbour's `messages_per_user` messages;
4. look its archive up with the neighbour (the `with` filter) since this node's start of the
   run (minus `STALE_MARGIN_S`, for clocks), `page_size` messages a page, at most
   `max_pages` pages, each page within xmpp_reply_timeout, timed as
   xmpp.mam.lookup_time_ms (each page as xmpp.iq.mam_query.time_ms);
5. check that every message it sent and received in this session is in the archive. If
   some are not, it looks once more: those found then count `mam_lookup.late` (the archive
   lagged behind the delivery), those still absent `mam_lookup.missing` (and the user
   `mam_lookup.incomplete`). `mam_lookup.found` counts every one found, at either look. A
   lookup stopped by `max_pages` counts `mam_lookup.truncated`. Then it logs out.

Run an even number of users from an odd id: every user then finds 2 * `messages_per_user`
messages, `mam_lookup.found` = 2 * users * `messages_per_user` and nothing is missing. The
archive may hold more (earlier runs within the margin, repeats): the check is "at least".
A user whose neighbour never comes counts `mam_lookup.receive_incomplete` and still looks
up what it sent.

Metrics: the xmpp.* set (logins, messages, xmpp.mam.lookup_time_ms, xmpp.mam.messages,
xmpp.mam.pages, xmpp.iq.mam_query.time_ms), plus the mam_lookup.* counters above.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from amoc import metrics, xmpp
from amoc.config import amoc_config, non_negative_int, non_negative_ms, param
from amoc.errors import ScenarioError
from amoc.xmpp import mam, naming

log = logging.getLogger("amoc.scenario.xmpp_mam_lookup")

STALE_MARGIN_S = 5
MAX_PAGE_SIZE = 1000


def _page_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise ValueError(f"must be between 1 and {MAX_PAGE_SIZE}")
    return value


def _pages(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    if value < 1:
        raise ValueError("must be >= 1")
    return value


PARAMETERS = [
    *xmpp.PARAMETERS,
    param("messages_per_user", 10, "chat messages each user sends per run", non_negative_int),
    param("message_interval", 200, "ms between two messages of one user", non_negative_ms),
    param(
        "receive_timeout",
        30_000,
        "ms a user waits, after its last send, for its neighbour's messages",
        non_negative_ms,
    ),
    param(
        "page_size", 10, f"archived messages per MAM page (RSM max, 1..{MAX_PAGE_SIZE})", _page_size
    ),
    param("max_pages", 100, "pages a lookup reads at most", _pages),
]


def neighbour(user_id: int) -> int:
    """The user `user_id` chats with: 1 <-> 2, 3 <-> 4, ..."""
    return user_id + 1 if user_id % 2 else user_id - 1


@dataclass
class Run:
    """This node's run: when it began (the lookups' start filter)."""

    since: float = field(default_factory=lambda: time.time() - STALE_MARGIN_S)


def init() -> Run:
    """Check that a lookup can hold a session's messages, and stamp the start of the run."""
    per_user = amoc_config.get("messages_per_user")
    capacity = amoc_config.get("page_size") * amoc_config.get("max_pages")
    if 2 * per_user > capacity:
        raise ScenarioError(
            f"a lookup reads at most page_size * max_pages = {capacity} messages, fewer than "
            f"the 2 * messages_per_user = {2 * per_user} each user exchanges: raise page_size "
            "or max_pages"
        )
    return Run()


async def start(user_id: int, run: Run) -> None:
    """One session of `user_id`: chat with the neighbour, then check the archive."""
    count = amoc_config.get("messages_per_user")
    interval = amoc_config.get("message_interval") / 1000.0
    peer = neighbour(user_id)
    tag = secrets.token_hex(4)  # bodies unique to this session
    client = await xmpp.connect(
        user_id, inbox_size=max(amoc_config.get("xmpp_inbox_size"), 2 * count + 10)
    )
    sent: set[str] = set()
    received: set[str] = set()
    since_us = int(run.since * 1_000_000)

    def absorb(messages: list[xmpp.Message]) -> None:
        for m in messages:
            if m.sent_us is not None and m.sent_us >= since_us and m.body.startswith("mam "):
                received.add(m.body)

    try:
        await client.send_presence()
        loop = asyncio.get_running_loop()
        began = loop.time() + interval * random.random()
        for i in range(count):
            delay = began + (i + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = f"mam {tag} {i} from {user_id}"
            client.send_chat(peer, body=body)
            sent.add(body)
            absorb(client.take_messages())
        deadline = loop.time() + amoc_config.get("receive_timeout") / 1000.0
        try:
            while len(received) < count:
                remaining_ms = max(0.0, deadline - loop.time()) * 1000.0
                absorb([await client.wait_message(timeout_ms=remaining_ms)])
        except xmpp.ReceiveTimeout:
            metrics.counter("mam_lookup.receive_incomplete").inc()
            log.warning(
                "user %d: got %d of the %d messages of user %d", user_id, len(received), count, peer
            )
        expected = sent | received
        found = await _lookup(client, peer, run)
        missing = expected - {m.body for m in found.messages}
        if missing:  # once more: does the archive lag behind delivery, or did it lose them?
            again = await _lookup(client, peer, run)
            late = missing & {m.body for m in again.messages}
            if late:
                metrics.counter("mam_lookup.late").inc(len(late))
                log.warning(
                    "user %d: %d messages exchanged with user %d were in the archive only at "
                    "the second lookup (the first: %d messages in %d pages, complete %s)",
                    user_id,
                    len(late),
                    peer,
                    len(found.messages),
                    found.pages,
                    found.complete,
                )
            missing -= late
            found = again
        metrics.counter("mam_lookup.found").inc(len(expected) - len(missing))
        if missing:
            metrics.counter("mam_lookup.missing").inc(len(missing))
            metrics.counter("mam_lookup.incomplete").inc()
            log.warning(
                "user %d: %d of the %d messages exchanged with user %d are not in the archive "
                "(%d archived since %s in %d pages, complete %s, the server counted %s)",
                user_id,
                len(missing),
                len(expected),
                peer,
                len(found.messages),
                mam.timestamp(run.since),
                found.pages,
                found.complete,
                found.count,
            )
    finally:
        await client.stop()


async def _lookup(client: xmpp.Session, peer: int, run: Run) -> mam.Lookup:
    """The archive with `peer` since the start of the run; counts a truncated lookup."""
    found = await mam.lookup(
        client,
        with_jid=naming.jid(peer, client.settings),
        start=run.since,
        page_size=amoc_config.get("page_size"),
        max_pages=amoc_config.get("max_pages"),
    )
    if not found.complete:
        metrics.counter("mam_lookup.truncated").inc()
    return found
