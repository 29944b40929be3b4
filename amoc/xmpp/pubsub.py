"""PubSub (XEP-0060) and PEP (XEP-0163) for scenarios, on either client (the `Session` API).

    from amoc.xmpp import pubsub

    await pubsub.create_node(owner, "pubsub.localhost", "news")      # service None: own PEP
    await pubsub.subscribe(reader, "pubsub.localhost", "news")       # the reader's bare JID
    items = pubsub.Items(reader, "pubsub.localhost", "news")         # counts what arrives
    await pubsub.publish(owner, "pubsub.localhost", "news")          # a stamped item
    await items.wait(1, timeout_ms=5000)
    await pubsub.unsubscribe(reader, "pubsub.localhost", "news")
    await pubsub.delete_node(owner, "pubsub.localhost", "news")

Every request goes through `client.iq`: it is timed as xmpp.iq.pubsub_<verb>.time_ms
(create, subscribe, publish, unsubscribe, delete, items), and a refusal raises `IqError` with
the server's condition (item-not-found: no such node; forbidden / not-authorized: not
allowed; conflict: the node exists). ejabberd creates a node that a local user publishes to
if it does not exist; Prosody answers item-not-found.

Subscribers receive items as event messages from the service (from the publisher's bare JID
for PEP). The router counts every item received (xmpp.pubsub.items.received, items from a
node's history with <delay/> included) and times stamped fresh ones per receiver
(xmpp.pubsub.ttd_ms); an `Items` counts those of one node for the waiting, and by default
keeps them out of the stanza buffer. Counters here: xmpp.pubsub.items.published,
xmpp.pubsub.nodes.created, xmpp.pubsub.nodes.deleted.
"""

from __future__ import annotations

from collections.abc import Mapping

from amoc import metrics
from amoc.xmpp import pred, stanza
from amoc.xmpp.parser import Element
from amoc.xmpp.pred import bare
from amoc.xmpp.router import HandlerRef
from amoc.xmpp.session import Session
from amoc.xmpp.tally import Tally

_MESSAGE = f"{stanza.CLIENT_NS} message"
_EVENT = f"{stanza.PUBSUB_EVENT_NS} event"
_ITEMS = f"{stanza.PUBSUB_EVENT_NS} items"
_DELAY = f"{stanza.DELAY_NS} delay"
_PUBSUB = f"{stanza.PUBSUB_NS} pubsub"


def _where(service: str | None) -> str:
    return "the user's PEP service" if service is None else service


async def create_node(
    client: Session,
    service: str | None,
    node: str,
    config: Mapping[str, str] | None = None,
    timeout_ms: float | None = None,
) -> None:
    """Create `node` on `service` (None: the user's own PEP service), with `config`
    (`{"pubsub#access_model": "open"}`, ...) if given."""
    await client.iq(
        stanza.pubsub_create(service, node, dict(config) if config else None), timeout_ms
    )
    metrics.counter("xmpp.pubsub.nodes.created").inc()


async def delete_node(
    client: Session, service: str | None, node: str, timeout_ms: float | None = None
) -> None:
    """Delete `node` (as its owner)."""
    await client.iq(stanza.pubsub_delete(service, node), timeout_ms)
    metrics.counter("xmpp.pubsub.nodes.deleted").inc()


async def subscribe(
    client: Session,
    service: str | None,
    node: str,
    jid: str | None = None,
    timeout_ms: float | None = None,
) -> str:
    """Subscribe `jid` (default: the user's bare JID) to `node`; the subscription's state
    as the service tells it ("subscribed", or "pending" where the owner must approve)."""
    who = jid or bare(client.jid)
    reply = await client.iq(stanza.pubsub_subscribe(service, node, who), timeout_ms)
    for found in reply.iter():
        if found.name == "subscription" and found.ns == stanza.PUBSUB_NS:
            return found.attrs.get("subscription", "subscribed")
    return "subscribed"  # an empty result is a success too (XEP-0060 §6.1.2)


async def unsubscribe(
    client: Session,
    service: str | None,
    node: str,
    jid: str | None = None,
    timeout_ms: float | None = None,
) -> None:
    """End `jid`'s (default: the user's) subscription to `node`."""
    who = jid or bare(client.jid)
    await client.iq(stanza.pubsub_unsubscribe(service, node, who), timeout_ms)


async def publish(
    client: Session,
    service: str | None,
    node: str,
    payload: str | None = None,
    item_id: str | None = None,
    timeout_ms: float | None = None,
) -> str:
    """Publish a stamped item on `node` (the subscribers time it); the item's id.

    `payload` is XML text put inside the default `<entry xmlns='urn:amoc:item'/>`. The round
    trip is timed as xmpp.iq.pubsub_publish.time_ms.
    """
    reply = await client.iq(stanza.pubsub_publish(service, node, payload, item_id), timeout_ms)
    metrics.counter("xmpp.pubsub.items.published").inc()
    for found in reply.iter():
        if found.name == "item" and found.ns == stanza.PUBSUB_NS:
            return found.attrs.get("id", item_id or "")
    return item_id or ""


async def items(
    client: Session,
    service: str | None,
    node: str,
    max_items: int | None = None,
    timeout_ms: float | None = None,
) -> list[Element]:
    """The items `node` holds (the newest `max_items`), as `<item/>` elements."""
    reply = await client.iq(stanza.pubsub_items(service, node, max_items), timeout_ms)
    return [e for e in reply.iter() if e.name == "item" and e.ns == stanza.PUBSUB_NS]


class Items:
    """The items of one node that reach this user (as a subscriber, or through PEP).

    `received` counts fresh items, `delayed` those sent from the node's history (with
    <delay/>); `wait(count)` waits for `received` to reach `count`. `close()` stops it.
    """

    __slots__ = (
        "_handler",
        "_tally",
        "client",
        "consume",
        "delayed",
        "node",
        "received",
        "service",
    )

    def __init__(
        self, client: Session, service: str | None, node: str, consume: bool = True
    ) -> None:
        self.client = client
        self.service = service  # None: any sender (PEP events come from each publisher)
        self.node = node
        self.consume = consume
        self.received = 0
        self.delayed = 0
        self._tally = Tally(client)
        test = pred.pubsub_event(node, service)
        self._handler: HandlerRef | None = client.add_handler(test, self._on)

    def __repr__(self) -> str:
        return f"<Items {self.node!r} on {_where(self.service)}: {self.received} received>"

    def _on(self, element: Element) -> bool:
        delayed = element.find(_DELAY) is not None
        event = element.find(_EVENT)
        if event is not None:
            for group in event.children:
                if group.tag != _ITEMS:
                    continue
                for item in group.children:
                    if item.name == "item":
                        if delayed:
                            self.delayed += 1
                        else:
                            self.received += 1
        self._tally.changed()
        return self.consume

    async def wait(self, count: int, timeout_ms: float | None = None) -> None:
        """Wait until `count` fresh items of the node have arrived."""
        await self._tally.until(
            lambda: self.received >= count,
            timeout_ms,
            f"{count} items of node {self.node!r} on {_where(self.service)} (got {self.received})",
        )

    def close(self) -> None:
        """Stop counting; events of the node go to the stanza buffer again."""
        if self._handler is not None:
            self.client.remove_handler(self._handler)
            self._handler = None
