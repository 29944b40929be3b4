"""Roster and presence: pairs of users subscribe to each other, then fan out presence updates.

Each run of a user:

1. log in, send initial presence, fetch its roster (which makes the session an "interested
   resource" for roster pushes, RFC 6121 §2.1.6) and remove what an earlier, interrupted run
   left in it (counted `presence_roster.leftovers`);
2. join the coordinator `presence_roster_pairs`: users are paired as they arrive, over the
   whole cluster (a user left alone after `pair_timeout` ms counts
   `presence_roster.unpaired` and logs out);
3. add the contact to its roster, subscribe to its presence and wait (at most
   `subscription_timeout` ms) for its 'subscribed' and its available presence; the contact's
   own request is answered here, explicitly ('subscribed' to the contact, nobody else:
   the session ignores other requests whatever `xmpp_subscription_requests` says). Done both
   ways: `presence_roster.subscribed`, else `presence_roster.subscription_failed`;
4. send `presence_updates` presence updates, one every `presence_interval` ms (the first at
   a random point of the second interval), each with a numbered status and amoc's stamp
   (receivers time them into xmpp.presences.ttd_ms), and count the contact's updates it
   receives (each number once): `presence_roster.updates_sent`, `.updates_received`;
5. wait (at most `receive_timeout` ms after its last update) until it has every update of
   its contact, else count `presence_roster.incomplete` and the missing ones in
   `presence_roster.updates_missing`;
6. remove the contact from its roster (both subscriptions end, so a rerun starts clean) and
   log out.

The counts add up: with an even number of users every update sent is received,
`presence_roster.updates_received` = `presence_roster.updates_sent` = users *
`presence_updates`. Nobody removes its contact before it has received all the contact's
updates, and its own were sent before on the same stream, so the server routes them before
the removal.

Metrics: the xmpp.* set (logins, xmpp.subscriptions.completed and .time_ms, xmpp.roster.items,
xmpp.presences.received.<kind>, xmpp.presences.ttd_ms, xmpp.iq.roster_*.time_ms), plus the
presence_roster.* counters above.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from amoc import coordinator, metrics, xmpp
from amoc.config import amoc_config, non_negative_int, non_negative_ms, param, positive_ms
from amoc.xmpp import pred, roster
from amoc.xmpp.parser import Element

log = logging.getLogger("amoc.scenario.xmpp_presence_roster")

COORDINATOR = "presence_roster_pairs"
STATUS = "amoc presence update "


PARAMETERS = [
    *xmpp.PARAMETERS,
    param("presence_updates", 5, "presence updates each user sends per run", non_negative_int),
    param("presence_interval", 1000, "ms between two updates of one user", non_negative_ms),
    param(
        "subscription_timeout",
        10_000,
        "ms a user waits for its contact's 'subscribed' (and its request)",
        positive_ms,
    ),
    param(
        "receive_timeout",
        30_000,
        "ms a user waits, after its last update, for its contact's updates",
        non_negative_ms,
    ),
    param(
        "pair_timeout",
        30_000,
        "ms the coordinator waits for a user's partner before leaving it alone",
        positive_ms,
    ),
]


@dataclass
class Contact:
    """One user's view of its contact: who, the requests seen, the updates received."""

    jid: str = ""
    requests: set[str] = field(default_factory=set)  # bare JIDs that asked to subscribe
    approved: asyncio.Event = field(default_factory=asyncio.Event)
    updates: set[int] = field(default_factory=set)
    expected: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)


async def init() -> None:
    """Pair the users as they arrive (over the cluster, on the master)."""
    coordinator.start(COORDINATOR, [(2, _paired)], timeout=amoc_config.get("pair_timeout"))


def _paired(_event: str) -> None:
    """Nothing to do: each member's `coordinator.add` returns the pair."""


async def start(user_id: int) -> None:
    """One run of `user_id`: pair, subscribe both ways, fan out presence, clean up."""
    updates = amoc_config.get("presence_updates")
    contact = Contact(expected=updates)
    # The contact's request is answered below, explicitly, and nobody else's.
    client = await xmpp.connect(user_id, subscription_requests="ignore")
    client.add_handler(pred.presence(), lambda e: _on_presence(client, contact, e))
    try:
        await client.send_presence()
        await _clear_roster(client)
        partner = await _partner(user_id, client)
        if partner is None:
            return
        contact.jid = partner
        try:
            await _subscribe_both_ways(client, contact)
        except (xmpp.ReceiveTimeout, roster.SubscriptionRefused) as exc:
            metrics.counter("presence_roster.subscription_failed").inc()
            log.warning("user %d: %s", user_id, exc)
            return
        metrics.counter("presence_roster.subscribed").inc()
        if updates == 0:
            contact.complete.set()
        await _send_updates(client, updates)
        await _wait_for_updates(user_id, contact)
        await roster.remove(client, contact.jid)
    finally:
        await client.stop()


def _on_presence(client: xmpp.Session, contact: Contact, e: Element) -> bool | None:
    """Subscription requests (the contact's approved, others noted) and its updates."""
    sender = pred.bare(e.attrs.get("from", ""))
    kind = e.attrs.get("type")
    if kind == "subscribe":
        if sender == contact.jid:
            _approve(client, contact)
        else:
            contact.requests.add(sender)
        return True
    if kind is None and sender == contact.jid and contact.jid:
        status = e.findtext(f"{xmpp.stanza.CLIENT_NS} status")
        if status.startswith(STATUS) and status[len(STATUS) :].isdigit():
            _count_update(contact, int(status[len(STATUS) :]))
    return None


def _count_update(contact: Contact, number: int) -> None:
    if number not in contact.updates and 1 <= number <= contact.expected:
        contact.updates.add(number)
        metrics.counter("presence_roster.updates_received").inc()
        if len(contact.updates) >= contact.expected:
            contact.complete.set()


async def _clear_roster(client: xmpp.Session) -> None:
    """Contacts left over from an earlier run (one that was stopped) go first."""
    leftovers = await roster.get(client)
    for item in leftovers:
        await roster.remove(client, item.jid)
    if len(leftovers):
        metrics.counter("presence_roster.leftovers").inc(len(leftovers))


async def _partner(user_id: int, client: xmpp.Session) -> str | None:
    """The JID the coordinator pairs this user with (None: no partner in time)."""
    batch = await coordinator.add(COORDINATOR, user_id, data=client.jid)
    others = [data for uid, data in batch if uid != user_id]
    if not others:
        metrics.counter("presence_roster.unpaired").inc()
        log.warning("user %d: no partner within pair_timeout", user_id)
        return None
    return str(others[0])


async def _send_updates(client: xmpp.Session, updates: int) -> None:
    """`updates` presence changes, presence_interval apart, from a random offset."""
    interval = amoc_config.get("presence_interval") / 1000.0
    loop = asyncio.get_running_loop()
    began = loop.time() + interval * random.random()
    for i in range(1, updates + 1):
        delay = began + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        roster.presence(client, status=f"{STATUS}{i}", stamped=True)
        metrics.counter("presence_roster.updates_sent").inc()


async def _wait_for_updates(user_id: int, contact: Contact) -> None:
    try:
        async with asyncio.timeout(amoc_config.get("receive_timeout") / 1000.0):
            await contact.complete.wait()
    except TimeoutError:
        missing = contact.expected - len(contact.updates)
        metrics.counter("presence_roster.incomplete").inc()
        metrics.counter("presence_roster.updates_missing").inc(missing)
        log.warning(
            "user %d: got %d of the %d updates of %s",
            user_id,
            len(contact.updates),
            contact.expected,
            contact.jid,
        )


def _approve(client: xmpp.Session, contact: Contact) -> None:
    if not contact.approved.is_set():
        roster.approve(client, contact.jid)
        contact.approved.set()


async def _subscribe_both_ways(client: xmpp.Session, contact: Contact) -> None:
    """Subscribe to the contact and answer its request: presence flows both ways after."""
    timeout_ms = amoc_config.get("subscription_timeout")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000.0
    await roster.add(client, contact.jid)
    if contact.jid in contact.requests:  # it asked before we knew it was our contact
        _approve(client, contact)
    await roster.subscribe(client, contact.jid, timeout_ms=timeout_ms)
    try:
        async with asyncio.timeout(max(0.0, deadline - loop.time())):
            await contact.approved.wait()
    except TimeoutError:
        raise xmpp.ReceiveTimeout(
            f"{client.jid}: no subscription request from {contact.jid} within {timeout_ms} ms",
            xmpp.Reason.TIMEOUT,
            client.user_id,
        ) from None
