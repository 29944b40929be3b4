"""PubSub: one publisher and its subscribers per node (XEP-0060); every item reaches every
subscriber.

Users are grouped as they log in, with `amoc.coordinator` (over the whole cluster): every
1 + `subscribers_per_node` users form a group, whose lowest id is the publisher. A group
that stays short for `group_timeout` ms (the last one, when the user count is not a multiple
of the group size) goes ahead with the users it has (counted as `pubsub.groups.partial`).

Each run of a user: log in, send presence, join a group, then

- the publisher creates node `<pubsub_node_prefix><id>_<run>` on `pubsub_service`, tells each
  subscriber its name (a bodiless control message), waits (up to `ready_timeout` ms) until
  every subscriber said it subscribed, publishes `items_per_publisher` stamped items, one
  every `publish_interval` ms (each a timed IQ round trip: xmpp.iq.pubsub_publish.time_ms),
  waits until every subscriber said it is done (at most `receive_timeout` ms after its last
  item), and deletes the node;
- a subscriber waits for the node's name, subscribes (its bare JID), tells the publisher,
  waits until it has every item (at most `ready_timeout` + items x interval +
  `receive_timeout` ms; else `pubsub.incomplete`), unsubscribes and tells the publisher.

Nobody publishes before its subscribers are subscribed, and no node is deleted before its
subscribers have everything, so every item reaches every subscriber.

`pubsub_mode = "pep"` publishes on the publisher's own PEP service instead (XEP-0163; the
node is created with an open access model, and subscribers subscribe to it explicitly at
the publisher's bare JID, as to any PubSub service).

Counts: xmpp.pubsub.items.published (items), xmpp.pubsub.items.received (items received, over
all subscribers: subscribers x items when nothing is lost), xmpp.pubsub.ttd_ms (time to
delivery per subscriber); the scenario's pubsub.expected, pubsub.received and
pubsub.incomplete (per subscriber), pubsub.groups and pubsub.groups.partial, pubsub.unready
(publishers that gave up waiting for a subscriber), pubsub.groups.failed (subscribers whose
publisher could not create its node), pubsub.retries (node creations and deletions tried
again after a transient refusal, see TRANSIENT).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from amoc import coordinator, metrics, xmpp
from amoc.config import (
    amoc_config,
    at_least,
    non_negative_ms,
    optional_text,
    param,
)
from amoc.xmpp import pred, pubsub
from amoc.xmpp.parser import Element
from amoc.xmpp.tally import Tally

log = logging.getLogger("amoc.scenario.xmpp_pubsub")

COORDINATOR = "xmpp_pubsub"
SIGNAL_NS = "urn:amoc:pubsub:group"
_SIGNAL = f"{SIGNAL_NS} group"
READY, SUBSCRIBED, DONE, FAILED = "ready", "subscribed", "done", "failed"
MODES = ("service", "pep")
# ejabberd 23.01 (mnesia) aborts concurrent node creations and deletions now and then
# (a lock cycle on its node table): "internal-server-error (Database failure)". Such
# requests are tried again, each failure still counted in xmpp.iq.pubsub_*.errors.
TRANSIENT = ("internal-server-error", "resource-constraint")
ATTEMPTS = 5


def _service(value: Any) -> str | None:
    text = optional_text(value)
    if text is not None and (any(c.isspace() or c in "@/" for c in text) or "." not in text):
        raise ValueError("must be a service domain such as pubsub.localhost (or None)")
    return text


def _prefix(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if any(c.isspace() or c in "\"&'<>" for c in value):
        raise ValueError("must not contain spaces or any of \" & ' < >")
    return value


def _positive_ms(value: Any) -> float | int:
    ms = non_negative_ms(value)
    if ms == 0:
        raise ValueError("must be > 0 ms")
    return ms


PARAMETERS = [
    *xmpp.PARAMETERS,
    param("subscribers_per_node", 10, "subscribers of each publisher's node", at_least(1)),
    param("items_per_publisher", 10, "items each publisher publishes per run", at_least(1)),
    param("publish_interval", 1000, "ms between two items of a publisher", non_negative_ms),
    param("pubsub_service", None, "the PubSub service (None: pubsub.<xmpp_domain>)", _service),
    param("pubsub_mode", "service", "service: nodes on pubsub_service; pep: own PEP nodes", MODES),
    param(
        "pubsub_node_prefix", "amoc_node_", "node name = prefix + publisher id + _ + run", _prefix
    ),
    param(
        "group_timeout",
        10_000,
        "ms without a new user after which a short group goes ahead",
        _positive_ms,
    ),
    param(
        "ready_timeout",
        30_000,
        "ms a publisher waits for its subscribers (and they for the node)",
        non_negative_ms,
    ),
    param(
        "receive_timeout",
        30_000,
        "ms a subscriber waits, after the publisher's last item is due, for the items",
        non_negative_ms,
    ),
]


@dataclass
class Plan:
    """This node's run: the group size, and per user the runs started."""

    group_size: int
    runs: dict[int, int] = field(default_factory=dict)


def init() -> Plan:
    """Group users as they arrive: one publisher and subscribers_per_node subscribers."""
    size = 1 + amoc_config.get("subscribers_per_node")
    coordinator.start(COORDINATOR, [(size, _formed)], timeout=amoc_config.get("group_timeout"))
    return Plan(size)


def _formed(event: str, users: list[tuple[int, Any]]) -> None:
    metrics.counter("pubsub.groups").inc()
    if event != coordinator.COORDINATE:
        metrics.counter("pubsub.groups.partial").inc()
        log.warning(
            "a group of %d users (ids %s) went ahead short of its %d after group_timeout",
            len(users),
            ", ".join(str(u) for u, _ in sorted(users)),
            1 + amoc_config.get("subscribers_per_node"),
        )


def signal(to: str, step: str, node: str, service: str | None) -> str:
    """A control message of the group (no body: no chat metric counts it)."""
    where = f" service={quoteattr(service)}" if service else ""
    return (
        f"<message to={quoteattr(to)}><group xmlns='{SIGNAL_NS}' step={quoteattr(step)} "
        f"node={quoteattr(node)}{where}/></message>"
    )


def signal_of(step: str, sender: str | None = None) -> pred.Pred:
    """A group control message of `step` (from `sender`, a bare JID)."""

    def test(e: Element) -> bool:
        found = e.find(_SIGNAL)
        return (
            found is not None
            and found.attrs.get("step") == step
            and (sender is None or pred.bare(e.attrs.get("from", "")) == sender)
        )

    return pred.Pred(test, f"group message {step!r}" + (f" from {sender}" if sender else ""))


async def start(user_id: int, plan: Plan) -> None:
    """One run of `user_id`: join a group, then publish or subscribe."""
    run = plan.runs.get(user_id, 0) + 1
    plan.runs[user_id] = run
    client = await xmpp.connect(user_id)
    try:
        await client.send_presence()
        me = pred.bare(client.jid)
        group = await coordinator.add(COORDINATOR, user_id, data=me)
        publisher_id, publisher = min(group)
        if publisher_id == user_id:
            subscribers = [jid for uid, jid in group if uid != user_id]
            await _publish(
                client, f"{amoc_config.get('pubsub_node_prefix')}{user_id}_{run}", subscribers
            )
        else:
            await _subscribe(client, publisher)
    finally:
        await client.stop()


def _service_of(client: xmpp.Session) -> str | None:
    if amoc_config.get("pubsub_mode") == "pep":
        return None
    return amoc_config.get("pubsub_service") or f"pubsub.{client.settings.domain}"


async def _again(what: Callable[[], Awaitable[None]], done_if: tuple[str, ...] = ()) -> bool:
    """Run an owner's request, again (up to ATTEMPTS times) after a transient refusal.

    ejabberd 23.01 can report a database failure for a request it did carry out: on a
    retry, a condition in `done_if` (a deleted node is no longer ours: forbidden) means
    the first attempt took effect (then True)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await what()
            return False
        except xmpp.IqError as exc:
            if attempt > 1 and exc.condition in done_if:
                return True
            if exc.condition not in TRANSIENT or attempt == ATTEMPTS:
                raise
            metrics.counter("pubsub.retries").inc()
            await asyncio.sleep(random.uniform(0.02, 0.2) * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _publish(client: xmpp.Session, node: str, subscribers: list[str]) -> None:
    service = _service_of(client)
    heard: dict[str, set[str]] = {SUBSCRIBED: set(), DONE: set()}
    tally = Tally(client)

    def on_signal(e: Element) -> bool:
        found = e.find(_SIGNAL)
        assert found is not None
        step = found.attrs.get("step", "")
        if step in heard and found.attrs.get("node") == node:
            heard[step].add(pred.bare(e.attrs.get("from", "")))
            tally.changed()
            return True
        return False

    listening = client.add_handler(pred.has_child(SIGNAL_NS, "group"), on_signal)
    # ejabberd sends a PEP publisher its own items too: keep them out of the buffer.
    own = pubsub.Items(client, pred.bare(client.jid), node) if service is None else None
    try:
        await _create(client, service, node, subscribers)
        try:
            await tally.until(
                lambda: len(heard[SUBSCRIBED]) >= len(subscribers),
                amoc_config.get("ready_timeout"),
                f"subscription of all {len(subscribers)} subscribers to node {node}",
            )
        except xmpp.ReceiveTimeout:
            metrics.counter("pubsub.unready").inc()
            log.warning(
                "%s: %d of %d subscribers subscribed to %s in time; publishing anyway",
                client.jid,
                len(heard[SUBSCRIBED]),
                len(subscribers),
                node,
            )
        await _publish_items(client, service, node)
        try:
            await tally.until(
                lambda: len(heard[DONE]) >= len(heard[SUBSCRIBED]),
                amoc_config.get("receive_timeout"),
                f"the end of all subscriptions to node {node}",
            )
        except xmpp.ReceiveTimeout:
            log.warning("%s: not every subscriber of %s is done; deleting it", client.jid, node)
        await _delete(client, service, node)
    finally:
        client.remove_handler(listening)
        if own is not None:
            own.close()


async def _create(
    client: xmpp.Session, service: str | None, node: str, subscribers: list[str]
) -> None:
    """Create the node and tell the subscribers where it is (or that it never came)."""
    config = {"pubsub#access_model": "open"} if service is None else None
    # PEP subscribers address the publisher's bare JID; they learn the node from us.
    where = service or pred.bare(client.jid)
    try:
        await _again(lambda: pubsub.create_node(client, service, node, config))
    except BaseException:
        if client.connected:  # the subscribers need not wait for a node that never comes
            for jid in subscribers:
                client.send(signal(jid, FAILED, node, where))
        raise
    for jid in subscribers:
        client.send(signal(jid, READY, node, where))


async def _publish_items(client: xmpp.Session, service: str | None, node: str) -> None:
    """items_per_publisher items, publish_interval apart."""
    loop = asyncio.get_running_loop()
    count = amoc_config.get("items_per_publisher")
    interval = amoc_config.get("publish_interval") / 1000.0
    began = loop.time()
    for i in range(count):
        delay = began + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await pubsub.publish(client, service, node)


async def _delete(client: xmpp.Session, service: str | None, node: str) -> None:
    try:
        earlier = await _again(
            lambda: pubsub.delete_node(client, service, node),
            done_if=("forbidden", "item-not-found"),
        )
    except xmpp.IqError as exc:
        # Cleanup, after every item was delivered: ejabberd 23.01 sometimes refuses the
        # owner's delete under load (forbidden, mnesia lock cycles). Counted, not a
        # failed run: the load test's figures are whole.
        metrics.counter("pubsub.cleanup_refused").inc()
        log.warning("%s: node %s was not deleted: %s", client.jid, node, exc)
    else:
        if earlier:  # deleted by the attempt the server reported as failed
            metrics.counter("xmpp.pubsub.nodes.deleted").inc()


async def _subscribe(client: xmpp.Session, publisher: str) -> None:
    ready_ms = amoc_config.get("ready_timeout")
    ready = await client.wait_for(
        signal_of(READY, publisher) | signal_of(FAILED, publisher), ready_ms
    )
    found = ready.find(_SIGNAL)
    assert found is not None
    node = found.attrs.get("node", "")
    if found.attrs.get("step") == FAILED:
        metrics.counter("pubsub.groups.failed").inc()
        raise xmpp.XmppError(
            f"{client.jid}: publisher {publisher} could not create node {node}", None, None
        )
    service = found.attrs.get("service") or None
    items = pubsub.Items(client, service, node)
    try:
        await pubsub.subscribe(client, service, node)
        client.send(signal(publisher, SUBSCRIBED, node, service))
        count = amoc_config.get("items_per_publisher")
        metrics.counter("pubsub.expected").inc(count)
        span_ms = count * amoc_config.get("publish_interval")
        try:
            await items.wait(count, ready_ms + span_ms + amoc_config.get("receive_timeout"))
        except xmpp.ReceiveTimeout:
            metrics.counter("pubsub.incomplete").inc()
            log.warning(
                "%s: got %d of the %d items of node %s", client.jid, items.received, count, node
            )
        metrics.counter("pubsub.received").inc(items.received)
        await pubsub.unsubscribe(client, service, node)
    finally:
        items.close()
        if client.connected:
            client.send(signal(publisher, DONE, node, service))
