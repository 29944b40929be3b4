"""The roster (RFC 6121 §2), presence subscriptions (§3) and presence updates, for scenarios
on either client.

    mine = await roster.get(client)                      # Roster: items by bare JID, version
    await roster.add(client, bob, name="Bob", groups=("friends",))   # add or update
    await roster.subscribe(client, bob)                  # until bob's 'subscribed' (and presence)
    roster.approve(client, alice)                        # answer alice's request yourself
    roster.presence(client, status="busy", stamped=True) # broadcast to the subscribers
    roster.presence(client, to=bob, show="chat")         # directed
    await roster.remove(client, bob)                     # the item and both subscriptions
    later = await roster.get(client, mine)               # versioned: "unchanged" costs no items
    live = await roster.follow(client)                   # kept up to date by roster pushes
    await live.refresh(); live.roster; live.close()

Servers send roster pushes and answers to subscription requests only to "interested"
resources, the ones that asked for the roster (RFC 6121 §2.1.6; Prosody holds to it, ejabberd
pushes anyway): `get` the roster once before subscribing.

Roster versioning (RFC 6121 §2.6): `get` asks with `ver` (the empty string the first time);
when the server's answer carries a version, a later `get(client, known)` sends it, and a
server with nothing new answers with an empty result (`Roster.unchanged`, the items of
`known`). A server that does not version answers in full every time (`version` None).
A cache that only trusts versions can go stale (Prosody 0.12 says version "1" for an empty
roster and again after the first change): `follow` applies the pushes as well.

Incoming subscription requests are answered by the client as `xmpp_subscription_requests`
says (accept, refuse, ignore); with "ignore", `approve` and `cancel` answer them here.

Metrics: histogram xmpp.roster.items (roster size at each full get), counter
xmpp.roster.unchanged; xmpp.subscriptions.completed / .refused / .timeouts and histogram
xmpp.subscriptions.time_ms (request to 'subscribed'); xmpp.presences.sent. The clients count
presences received per kind (xmpp.presences.received.<kind>) and time stamped ones
(xmpp.presences.ttd_ms); the IQs are timed as xmpp.iq.roster_get / roster_set /
roster_remove.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from amoc import metrics
from amoc.xmpp import stamp, stanza
from amoc.xmpp.errors import IqError, Reason, ReceiveTimeout, XmppError
from amoc.xmpp.parser import Element
from amoc.xmpp.pred import Pred, bare
from amoc.xmpp.session import Session

_QUERY = f"{stanza.ROSTER_NS} query"
_ITEM = f"{stanza.ROSTER_NS} item"
_GROUP = f"{stanza.ROSTER_NS} group"
_PRESENCE = f"{stanza.CLIENT_NS} presence"
_IQ = f"{stanza.CLIENT_NS} iq"

SUBSCRIPTIONS = ("none", "to", "from", "both", "remove")


class SubscriptionRefused(XmppError):
    """The contact answered a subscription request with 'unsubscribed'."""


@dataclass(frozen=True, slots=True)
class Item:
    """One roster item."""

    jid: str  # bare JID
    subscription: str = "none"  # none, to (we see them), from (they see us), both
    name: str = ""
    ask: bool = False  # our subscription request is pending
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Roster:
    """The roster as the server sent it, with its version (None: not versioned)."""

    items: Mapping[str, Item] = field(default_factory=dict)
    version: str | None = None
    unchanged: bool = False  # a versioned get found nothing new: the items are the known ones

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, jid: object) -> bool:
        return isinstance(jid, str) and bare(jid) in self.items

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items.values())

    def get(self, jid: str) -> Item | None:
        """The item of `jid` (bare or full), or None."""
        return self.items.get(bare(jid))


def item_of(element: Element) -> Item:
    """An `Item` from a roster `<item/>` element."""
    subscription = element.get("subscription", "none")
    return Item(
        jid=bare(element.get("jid")),
        subscription=subscription if subscription in SUBSCRIPTIONS else "none",
        name=element.get("name"),
        ask=element.get("ask") == "subscribe",
        groups=tuple(g.text for g in element.findall(_GROUP)),
    )


def pushed(jid: str | None = None) -> Pred:
    """A roster push (an IQ set with a roster query), about `jid` when given."""
    want = bare(jid) if jid is not None else None

    def test(e: Element) -> bool:
        if e.tag != _IQ or e.attrs.get("type") != "set":
            return False
        query = e.find(_QUERY)
        if query is None:
            return False
        return want is None or any(bare(i.get("jid")) == want for i in query.findall(_ITEM))

    return Pred(test, f"roster push about {want}" if want else "roster push")


def pushed_items(element: Element) -> list[Item]:
    """The items of a roster push."""
    query = element.find(_QUERY)
    return [item_of(i) for i in query.findall(_ITEM)] if query is not None else []


# -- the roster -----------------------------------------------------------------------------


async def get(
    client: Session,
    known: Roster | None = None,
    *,
    versioning: bool = True,
    timeout_ms: float | None = None,
) -> Roster:
    """The roster; versioned (with `known`'s version) unless `versioning` is False."""
    version: str | None = None
    if versioning:
        version = known.version if known is not None and known.version is not None else ""
    reply = await client.iq(stanza.roster_get(version), timeout_ms)
    query = reply.find(_QUERY)
    if query is None:  # RFC 6121 §2.6.3: nothing changed since `version`
        if known is None or not versioning or not version:
            raise XmppError(
                f"{client.jid}: the server answered a roster request without a roster",
                Reason.IQ_ERROR,
                client.user_id,
            )
        metrics.counter("xmpp.roster.unchanged").inc()
        return Roster(known.items, known.version, unchanged=True)
    items = {item.jid: item for item in (item_of(e) for e in query.findall(_ITEM))}
    metrics.histogram("xmpp.roster.items").record(len(items))
    return Roster(items, query.attrs.get("ver"))


async def add(
    client: Session,
    jid: str,
    *,
    name: str | None = None,
    groups: tuple[str, ...] = (),
    timeout_ms: float | None = None,
) -> None:
    """Add `jid` to the roster, or update its name and groups (no subscription)."""
    await client.iq(stanza.roster_set(bare(jid), name=name, groups=tuple(groups)), timeout_ms)


async def remove(
    client: Session, jid: str, *, missing_ok: bool = True, timeout_ms: float | None = None
) -> bool:
    """Remove `jid` from the roster, ending both subscriptions; False if it was not there
    (Prosody answers item-not-found, ejabberd a result; `missing_ok=False` raises)."""
    try:
        await client.iq(stanza.roster_remove(bare(jid)), timeout_ms)
    except IqError as exc:
        if missing_ok and exc.condition == "item-not-found":
            return False
        raise
    return True


class Live:
    """A roster kept up to date by the server's roster pushes (RFC 6121 §2.1.6), refreshed
    with versioned gets; `close()` when done. Make one with `follow`."""

    __slots__ = ("_ref", "client", "roster", "versioning")

    def __init__(self, client: Session, versioning: bool = True) -> None:
        self.client = client
        self.versioning = versioning
        self.roster = Roster()
        self._ref = client.add_handler(pushed(), self._on_push)

    def _on_push(self, element: Element) -> None:
        sender = element.attrs.get("from")
        if sender and bare(sender) not in (bare(self.client.jid), self.client.settings.domain):
            return None  # not from our server: not a push (the client refuses it)
        items = dict(self.roster.items)
        for item in pushed_items(element):
            if item.subscription == "remove":
                items.pop(item.jid, None)
            else:
                items[item.jid] = item
        query = element.find(_QUERY)
        version = query.attrs.get("ver") if query is not None else None
        self.roster = Roster(items, version if version is not None else self.roster.version)
        return None  # the client still answers the push

    async def refresh(self, timeout_ms: float | None = None) -> Roster:
        """Ask the server (with the version held); the roster, pushes included."""
        known = self.roster if self.roster.version is not None or self.roster.items else None
        got = await get(self.client, known, versioning=self.versioning, timeout_ms=timeout_ms)
        self.roster = (
            got
            if not got.unchanged
            else Roster(self.roster.items, self.roster.version, unchanged=True)
        )
        return self.roster

    def close(self) -> None:
        """Stop following the pushes."""
        self.client.remove_handler(self._ref)


async def follow(
    client: Session, *, versioning: bool = True, timeout_ms: float | None = None
) -> Live:
    """Get the roster and keep it up to date from the pushes that follow (`Live.roster`).

    Prosody 0.12 reports version "1" for an empty roster and again after the first change,
    so a versioned get may answer "unchanged" when something did change: following the
    pushes keeps the roster right regardless.
    """
    live = Live(client, versioning)
    try:
        await live.refresh(timeout_ms)
    except BaseException:
        live.close()
        raise
    return live


# -- subscriptions --------------------------------------------------------------------------


async def subscribe(
    client: Session,
    jid: str,
    *,
    available: bool = True,
    timeout_ms: float | None = None,
) -> float:
    """Ask `jid` for its presence and wait for its 'subscribed' (and, with `available`, the
    contact's available presence that follows it); the ms until 'subscribed'.

    `SubscriptionRefused` if the contact answers 'unsubscribed', `ReceiveTimeout` if no
    answer (or no presence) comes within `timeout_ms` (default xmpp_reply_timeout).
    """
    contact = bare(jid)
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[Element] = loop.create_future()
    seen: asyncio.Future[None] = loop.create_future()

    def on_presence(e: Element) -> bool:
        if bare(e.attrs.get("from", "")) != contact:
            return False
        kind = e.attrs.get("type")
        if kind in ("subscribed", "unsubscribed"):
            if not answered.done():
                answered.set_result(e)
            return True  # the answer to this request: nobody else's business
        if kind is None and not seen.done():
            seen.set_result(None)
        return False  # the contact's presence goes on to whoever counts presences

    ref = client.add_handler(Pred(lambda e: e.tag == _PRESENCE, "presence"), on_presence)
    started = loop.time()
    timeout = client.settings.reply_timeout if timeout_ms is None else timeout_ms
    waiting = "'subscribed'"
    try:
        client.send(stanza.subscribe(contact))
        async with asyncio.timeout(timeout / 1000.0):
            answer = await answered
            elapsed = (loop.time() - started) * 1000.0
            if answer.attrs.get("type") == "unsubscribed":
                metrics.counter("xmpp.subscriptions.refused").inc()
                raise SubscriptionRefused(
                    f"{client.jid}: {contact} refused the presence subscription",
                    None,
                    client.user_id,
                )
            metrics.counter("xmpp.subscriptions.completed").inc()
            metrics.histogram("xmpp.subscriptions.time_ms").record(elapsed)
            if available:
                waiting = "available presence after 'subscribed'"
                await seen
    except TimeoutError:
        metrics.counter("xmpp.subscriptions.timeouts").inc()
        raise ReceiveTimeout(
            f"{client.jid}: no {waiting} from {contact} within {timeout} ms",
            Reason.TIMEOUT,
            client.user_id,
        ) from None
    finally:
        client.remove_handler(ref)
    return elapsed


def approve(client: Session, jid: str) -> None:
    """Let `jid` see our presence (answer its request, or pre-approve, RFC 6121 §3.4)."""
    client.send(stanza.subscribed(bare(jid)))


def cancel(client: Session, jid: str) -> None:
    """Refuse `jid`'s request, or end its subscription to our presence."""
    client.send(stanza.unsubscribed(bare(jid)))


def unsubscribe(client: Session, jid: str) -> None:
    """End our subscription to `jid`'s presence."""
    client.send(stanza.unsubscribe(bare(jid)))


# -- presence -------------------------------------------------------------------------------


def presence(
    client: Session,
    *,
    to: str | None = None,
    show: str | None = None,
    status: str | None = None,
    priority: int | None = None,
    stamped: bool = False,
) -> None:
    """Send available presence: to every subscriber (broadcast) or, with `to`, directed.

    `stamped` adds amoc's time stamp: the receivers time it into xmpp.presences.ttd_ms.
    """
    children = stamp.encode(stamp.now_us()) if stamped else ""
    client.send(stanza.presence(to, show=show, status=status, priority=priority, children=children))
    metrics.counter("xmpp.presences.sent").inc()


def unavailable(client: Session, *, to: str | None = None, status: str | None = None) -> None:
    """Send unavailable presence: to every subscriber or, with `to`, directed."""
    client.send(stanza.presence(to, type="unavailable", status=status))
    metrics.counter("xmpp.presences.sent").inc()
