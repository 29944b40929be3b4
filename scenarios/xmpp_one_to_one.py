"""One-to-one chat: pairs of users send each other stamped messages; TTD is recorded.

Each run of a user: log in, send presence (and wait for its echo), send `messages_per_user`
chat messages to its neighbour, one every `message_interval` ms (the first one between one
and two intervals after the presence, at a random point, so that users who logged in
together do not send in lockstep; `message_arrival` spaces them evenly, as a Poisson
process or in bursts: see amoc.pacing), then wait until everything the neighbour has sent
so far has arrived (at most `receive_timeout` ms after the neighbour's last message is due
at the latest: its schedule may begin up to an interval after this user's), and log out.

Neighbours are pairs: 1 <-> 2, 3 <-> 4, ... (odd n talks with n + 1, even n with n - 1).
Run an even number of users starting at an odd id and every message sent is received:
messages to a neighbour that is not online yet are kept by the server (mod_offline) and
delivered when it sends presence, and nobody logs out before it has received all of its
neighbour's messages. The count is cumulative over repeats (run k of a user expects
k * messages_per_user from its neighbour), so overlapping repeats lose nothing either.
A user whose neighbour never comes (odd count) gives up `receive_timeout` after that and
counts `one_to_one.incomplete`; so does any user that does not get everything in time.

Messages stamped more than `STALE_MARGIN_S` before this node's `init` were left in offline
storage by an earlier, interrupted run: they count as `one_to_one.stale`, not as received
(stamps are in the cluster's time base: amoc.xmpp.stamp corrects each node's clock by its
measured offset to the master's).

Metrics: the xmpp.* set of amoc.xmpp (logins, messages sent / received, xmpp.ttd_ms; TTD
includes the time a message waited in offline storage), plus one_to_one.received (fresh
messages), one_to_one.stale and one_to_one.incomplete; messages a user waited for in vain
count as xmpp.messages.missing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from amoc import metrics, pacing, xmpp
from amoc.config import amoc_config, non_negative_int, non_negative_ms, param, positive_ms
from amoc.xmpp import stamp

log = logging.getLogger("amoc.scenario.xmpp_one_to_one")

STALE_MARGIN_S = 5


def _arrival(value: object) -> str:
    if value not in pacing.ARRIVALS:
        raise ValueError(f"must be one of {', '.join(pacing.ARRIVALS)}")
    return str(value)


PARAMETERS = [
    *xmpp.PARAMETERS,
    param("messages_per_user", 10, "chat messages each user sends per run", non_negative_int),
    param("message_interval", 1000, "ms between two messages of one user", non_negative_ms),
    param(
        "message_arrival",
        "even",
        "how a user's messages are spaced: even (exactly message_interval apart), poisson "
        "(random times over the same span: many independent real users) or burst (even, "
        "bunched onto a grid of message_burst ms)",
        _arrival,
    ),
    param("message_burst", 100, "ms: the grid of message_arrival = burst", positive_ms),
    param(
        "receive_timeout",
        30_000,
        "ms a user waits for its neighbour's messages after the last is due at the latest",
        non_negative_ms,
    ),
]


def neighbour(user_id: int) -> int:
    """The user `user_id` talks with: 1 <-> 2, 3 <-> 4, ..."""
    return user_id + 1 if user_id % 2 else user_id - 1


@dataclass
class Progress:
    """This node's run: when it began, and per user the runs started and messages received."""

    since_us: int = field(default_factory=lambda: stamp.now_us() - STALE_MARGIN_S * 1_000_000)
    runs: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)


def init() -> Progress:
    """Fresh counters for this run of the scenario on this node."""
    return Progress()


class _Chat:
    """What a user's sends and counts need (slots: at 100 000 users, two closures instead
    were about 30 MiB)."""

    __slots__ = ("client", "peer", "progress", "user_id")

    def __init__(self, user_id: int, peer: int, client: xmpp.Session, progress: Progress):
        self.user_id, self.peer, self.client, self.progress = user_id, peer, client, progress

    def send(self) -> None:
        """Send the next message; count what arrived since the last send, now rather than
        at the end (the inbox holds at most an interval's messages, not the whole run's)."""
        self.client.send_chat(self.peer)
        self.absorb(self.client.take_messages())

    def absorb(self, messages: list[xmpp.Message]) -> None:
        """Count received messages: fresh ones, and stale ones from an earlier run."""
        fresh = 0
        progress = self.progress
        for msg in messages:
            if msg.sent_us is not None and msg.sent_us >= progress.since_us:
                fresh += 1
            else:
                metrics.counter("one_to_one.stale").inc()
        if fresh:
            progress.received[self.user_id] = progress.received.get(self.user_id, 0) + fresh
            metrics.counter("one_to_one.received").inc(fresh)


async def start(user_id: int, progress: Progress) -> None:
    """One session of `user_id`: log in, chat with the neighbour, wait for its messages."""
    count = amoc_config.get("messages_per_user")
    interval = amoc_config.get("message_interval") / 1000.0
    run = progress.runs.get(user_id, 0) + 1
    progress.runs[user_id] = run
    peer = neighbour(user_id)
    inbox_size = max(amoc_config.get("xmpp_inbox_size"), 2 * count + 10)
    client = await xmpp.connect(user_id, inbox_size=inbox_size)
    chat = _Chat(user_id, peer, client, progress)
    try:
        await client.send_presence()
        loop = asyncio.get_running_loop()
        # The first message waits at least one interval: the neighbour, started one
        # interarrival later, is then online. A message that races its login can be
        # stored offline after its presence emptied the storage (an ejabberd race).
        # A random phase within the next interval spreads the sends of users who logged
        # in in one burst; without it they send in lockstep and the TTD tail grows.
        began = loop.time() + interval * random.random()
        # The sends run from the loop's timers: this task wakes once, after the last.
        await pacing.every(
            interval,
            chat.send,
            count,
            start=began + interval,
            process=amoc_config.get("message_arrival"),
            burst=amoc_config.get("message_burst") / 1000.0,
        )
        chat.absorb(client.take_messages())
        expected = run * count
        # The neighbour's schedule may begin up to an interval after this one (its random
        # phase), and a poisson process ends by the span's end: its last message may come
        # that much after this user's. Counted from its latest time, not from our last send
        # (which lost every neighbour's last message more than receive_timeout behind).
        latest = began + interval * (count + 2) + amoc_config.get("message_burst") / 1000.0
        deadline = max(loop.time(), latest) + amoc_config.get("receive_timeout") / 1000.0
        try:
            while progress.received.get(user_id, 0) < expected:
                remaining_ms = max(0.0, deadline - loop.time()) * 1000.0
                chat.absorb([await client.wait_message(timeout_ms=remaining_ms)])
        except xmpp.ReceiveTimeout:
            metrics.counter("one_to_one.incomplete").inc()
            # What the neighbour sent and never arrived (a failed run says so).
            missing = expected - progress.received.get(user_id, 0)
            metrics.counter("xmpp.messages.missing").inc(max(0, missing))
            log.warning(
                "user %d: got %d of the %d messages user %d sent",
                user_id,
                progress.received.get(user_id, 0),
                expected,
                peer,
            )
    finally:
        await client.stop()
        # Messages that arrived while the stream was closing count too.
        chat.absorb(client.take_messages())
