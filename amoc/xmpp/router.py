"""What both XMPP clients do with the stanzas they receive, and the toolkit built on that:
`send`, `wait_for(predicate)`, handlers, and `iq` requests with their timing.

Every stanza of an online session goes through `_route`:

- chat messages with a body are counted and timed (`xmpp.ttd_ms`) and go to the inbox
  (`wait_message`), unless a handler or a `wait_for` takes them first;
- stamped groupchat messages are timed into `xmpp.muc.ttd_ms`, stamped PubSub items into
  `xmpp.pubsub.ttd_ms` (per receiver, whoever waits for them);
- IQ results and errors answer the request that waits for their id; IQ requests from the
  server go to the handlers, and unless one of them says it answered, pings and roster
  pushes get a result and anything else `service-unavailable`;
- presences are counted per kind (`xmpp.presences.received.available`, `.unavailable`,
  `.subscribe`, ...) and stamped available ones without `<delay/>` timed into
  `xmpp.presences.ttd_ms`;
- presence subscription requests are answered as `xmpp_subscription_requests` says;
- then the stanza goes to the handlers, to the first `wait_for` whose predicate matches,
  or else into a small buffer (`xmpp_stanza_buffer`) where a later `wait_for` finds it.

`Router` is a mixin over `Inbox`: a client provides `_send_raw(text)` and calls `_route`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from amoc import metrics
from amoc.xmpp import stamp
from amoc.xmpp import stanza as ns
from amoc.xmpp.errors import ConnectionLost, IqError, Reason, ReceiveTimeout, XmppError
from amoc.xmpp.inbox import Inbox
from amoc.xmpp.parser import Element, from_etree
from amoc.xmpp.pred import Pred, bare

_MESSAGE = f"{ns.CLIENT_NS} message"
_PRESENCE = f"{ns.CLIENT_NS} presence"
_IQ = f"{ns.CLIENT_NS} iq"
_BODY = f"{ns.CLIENT_NS} body"
_ERROR = f"{ns.CLIENT_NS} error"
_STAMP = f"{stamp.NAMESPACE} stamp"
_DELAY = f"{ns.DELAY_NS} delay"
_EVENT = f"{ns.PUBSUB_EVENT_NS} event"
_PING = f"{ns.PING_NS} ping"
_ROSTER_QUERY = f"{ns.ROSTER_NS} query"

Handler = Callable[[Element], Any]
HandlerRef = tuple[Pred, Handler]

# The metric kind of an IQ request sent as text or an Element: by its payload's namespace.
_KINDS = {
    ns.ROSTER_NS: "roster",
    ns.PING_NS: "ping",
    ns.REGISTER_NS: "register",
    ns.DISCO_INFO_NS: "disco_info",
    ns.DISCO_ITEMS_NS: "disco_items",
    ns.MUC_OWNER_NS: "muc_owner",
    ns.PUBSUB_NS: "pubsub",
    ns.PUBSUB_OWNER_NS: "pubsub_owner",
    ns.MAM_NS: "mam_query",
}

_ids = itertools.count(1)

_PRESENCE_KINDS = {
    kind: f"xmpp.presences.received.{kind}"
    for kind in (
        "available", "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed",
        "probe", "error",
    )
}  # fmt: skip
_OTHER_PRESENCE = "xmpp.presences.received.other"


def iq_kind(element: Element) -> str:
    """The metric name of an IQ request: its payload's namespace, shortened."""
    for child in element.children:
        known = _KINDS.get(child.ns)
        if known:
            return known
        tail = child.ns.rstrip("/").rpartition("/")[2].rpartition(":")[2]
        return "".join(c if c.isalnum() else "_" for c in tail) or "iq"
    return "iq"


def to_element(stanza: str | bytes | Element | ET.Element) -> Element:
    """A stanza given as text, bytes or an xml.etree element, as an `Element`."""
    if isinstance(stanza, Element):
        return stanza
    if isinstance(stanza, ET.Element):
        return from_etree(stanza)
    text = stanza.decode() if isinstance(stanza, bytes) else stanza
    try:
        wrapper = ET.fromstring(f"<wrapper xmlns='{ns.CLIENT_NS}'>{text}</wrapper>")
    except ET.ParseError as exc:
        raise XmppError(f"not a well-formed stanza ({exc}): {text[:200]!r}") from None
    if len(wrapper) != 1:
        raise XmppError(f"expected exactly one stanza, got {len(wrapper)}: {text[:200]!r}")
    return from_etree(wrapper[0])


def stanza_error(element: Element) -> tuple[str, str]:
    """(condition, text) of a stanza's `<error/>` child."""
    err = element.find(_ERROR)
    condition, text = "", ""
    if err is not None:
        for child in err.children:
            if child.name == "text":
                text = child.text
            elif child.ns == ns.STANZAS_NS and not condition:
                condition = child.name
    return condition or "undefined-condition", text


class Router(Inbox):
    """Receiving and the stanza toolkit, shared by the slixmpp and the lean client."""

    __slots__ = ("_handlers", "_iqs", "_kept", "_watchers")

    _handlers: list[HandlerRef] | None
    _watchers: list[tuple[Pred, asyncio.Future[Element]]] | None
    _kept: deque[Element] | None
    _iqs: dict[str, asyncio.Future[Element]] | None

    def _init_router(self) -> None:
        self._handlers = None
        self._watchers = None
        self._kept = None
        self._iqs = None

    def _send_raw(self, text: str) -> None:
        raise NotImplementedError

    # -- the toolkit ------------------------------------------------------------------------

    def send(self, stanza: str | bytes | Element | ET.Element) -> None:
        """Send any stanza: XML text (see `amoc.xmpp.stanza`), bytes or an element."""
        self._live()
        if isinstance(stanza, Element):
            text = stanza.to_xml()
        elif isinstance(stanza, ET.Element):
            text = ET.tostring(stanza, encoding="unicode", default_namespace=None)
        elif isinstance(stanza, bytes):
            text = stanza.decode()
        else:
            text = stanza
        self._send_raw(text)
        metrics.counter("xmpp.stanzas.sent").inc()

    async def wait_for(
        self, predicate: Pred | Callable[[Element], bool], timeout_ms: float | None = None
    ) -> Element:
        """The next stanza that matches `predicate` (one already buffered first).

        Raises `ReceiveTimeout` naming the predicate, or `ConnectionLost`.
        """
        test = predicate if isinstance(predicate, Pred) else Pred(predicate, repr(predicate))
        kept = self._kept
        if kept:
            for element in kept:
                if test.test(element):
                    kept.remove(element)
                    return element
        self._live()
        future: asyncio.Future[Element] = asyncio.get_running_loop().create_future()
        watcher = (test, future)
        if self._watchers is None:
            self._watchers = []
        self._watchers.append(watcher)
        timeout = self.settings.reply_timeout if timeout_ms is None else timeout_ms
        try:
            async with asyncio.timeout(timeout / 1000.0):
                return await future
        except TimeoutError:
            metrics.counter("xmpp.stanzas.timeouts").inc()
            raise ReceiveTimeout(
                f"{self.jid}: no {test.name} within {timeout} ms", Reason.TIMEOUT, self.user_id
            ) from None
        finally:
            watchers = self._watchers
            if watchers is not None and watcher in watchers:
                watchers.remove(watcher)

    def add_handler(
        self, predicate: Pred | Callable[[Element], bool], handler: Handler
    ) -> HandlerRef:
        """Call `handler(element)` for each stanza matching `predicate`, until removed.

        A handler that returns True has dealt with the stanza: it goes no further (no
        waiter, no buffer, and for an IQ request no default answer).
        """
        test = predicate if isinstance(predicate, Pred) else Pred(predicate, repr(predicate))
        ref = (test, handler)
        if self._handlers is None:
            self._handlers = []
        self._handlers.append(ref)
        return ref

    def remove_handler(self, ref: HandlerRef) -> None:
        """Stop calling a handler that `add_handler` returned."""
        if self._handlers is not None and ref in self._handlers:
            self._handlers.remove(ref)

    def buffered(self) -> list[Element]:
        """The received stanzas nothing has taken yet, oldest first."""
        return list(self._kept or ())

    async def iq(
        self,
        request: ns.Iq | str | bytes | Element,
        timeout_ms: float | None = None,
        kind: str | None = None,
    ) -> Element:
        """Send an IQ request and return the result; `IqError` (with its condition) if the
        answer is an error, `ReceiveTimeout` if none comes in time.

        Timed into `xmpp.iq.<kind>.time_ms` (kind: the builder's, or the payload's
        namespace); `.timeouts` and `.errors` are counted.
        """
        self._live()
        ident = f"{self.user_id}-q{next(_ids)}"
        if isinstance(request, ns.Iq):
            kind = kind or request.kind
            text = request.xml(ident)
            to = request.to
        else:
            element = to_element(request)
            if element.tag != _IQ or element.get("type") not in ("get", "set"):
                raise XmppError(f"iq() needs an <iq type='get'|'set'/> request, not {element!r}")
            ident = element.get("id") or ident
            element.attrs["id"] = ident
            kind = kind or iq_kind(element)
            text = element.to_xml()
            to = element.get("to") or None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Element] = loop.create_future()
        if self._iqs is None:
            self._iqs = {}
        self._iqs[ident] = future
        timeout = self.settings.reply_timeout if timeout_ms is None else timeout_ms
        started = loop.time()
        try:
            self._send_raw(text)
            async with asyncio.timeout(timeout / 1000.0):
                reply = await future
        except TimeoutError:
            metrics.counter(f"xmpp.iq.{kind}.timeouts").inc()
            raise ReceiveTimeout(
                f"{self.jid}: no answer to the {kind} request (id {ident}"
                f"{', to ' + to if to else ''}) within {timeout} ms",
                Reason.TIMEOUT,
                self.user_id,
            ) from None
        finally:
            if self._iqs is not None:
                self._iqs.pop(ident, None)
        metrics.histogram(f"xmpp.iq.{kind}.time_ms").record((loop.time() - started) * 1000.0)
        if reply.get("type") == "error":
            metrics.counter(f"xmpp.iq.{kind}.errors").inc()
            condition, text_ = stanza_error(reply)
            detail = f" ({text_})" if text_ else ""
            raise IqError(
                f"{self.jid}: the {kind} request{' to ' + to if to else ''} failed: "
                f"{condition}{detail}",
                condition,
                text_,
                kind,
                self.user_id,
            )
        return reply

    # -- routing ----------------------------------------------------------------------------

    def _route(self, element: Element) -> None:
        """A stanza of the online session: count, time, answer, and hand it on."""
        tag = element.tag
        if tag == _MESSAGE:
            self._route_message(element)
        elif tag == _PRESENCE:
            self._route_presence(element)
        elif tag == _IQ:
            self._route_iq(element)
        else:
            self._offer(element)

    def _route_message(self, element: Element) -> None:
        received_us = stamp.now_us()
        attrs = element.attrs
        kind = attrs.get("type")
        if kind == "error":
            metrics.counter("xmpp.messages.errors").inc()
            self._offer(element)
            return
        body: Element | None = None
        sent_us = None
        delayed = False
        event: Element | None = None
        for child in element.children:
            tag = child.tag
            if tag == _BODY:
                body = child
            elif tag == _STAMP:
                sent_us = stamp.decode_value(child.attrs.get("us"))
            elif tag == _DELAY:
                delayed = True
            elif tag == _EVENT:
                event = child
        if kind == "groupchat":
            if body is not None:
                self._count_groupchat(sent_us, received_us, delayed)
            self._offer(element)
            return
        if event is not None:
            self._count_items(event, received_us, delayed)
            self._offer(element)
            return
        if body is None:  # receipts, chat states, MAM results, ...
            self._offer(element)
            return
        ttd = self._count_chat(sent_us, received_us)
        if (self._handlers or self._watchers) and self._offer(element, keep=False):
            return
        self._keep(attrs.get("from", ""), body.text, sent_us, ttd, delayed)

    def _route_stamped_chat(self, sender: str, body: str, us: str) -> None:
        """What `_route_message` does with a stamped chat message that nobody watches (the
        lean client's shortcut, `parser.stamped_chats`, read it without a parser)."""
        received_us = stamp.now_us()
        sent_us = stamp.decode_value(us)
        self._keep(sender, body, sent_us, self._count_chat(sent_us, received_us), False)

    @staticmethod
    def _count_groupchat(sent_us: int | None, received_us: int, delayed: bool) -> None:
        metrics.counter("xmpp.muc.messages.received").inc()
        if sent_us is not None and not delayed:  # history replayed on join is not timed
            metrics.histogram("xmpp.muc.ttd_ms").record(stamp.ttd_ms(sent_us, received_us))

    def _count_items(self, event: Element, received_us: int, delayed: bool) -> None:
        for items in event.children:
            if items.name != "items":
                continue
            for item in items.children:
                if item.name != "item":
                    continue
                metrics.counter("xmpp.pubsub.items.received").inc()
                if delayed:
                    continue
                for found in item.iter():
                    if found.tag == _STAMP:
                        sent_us = stamp.decode_value(found.attrs.get("us"))
                        if sent_us is not None:
                            metrics.histogram("xmpp.pubsub.ttd_ms").record(
                                stamp.ttd_ms(sent_us, received_us)
                            )
                        break

    def _route_presence(self, element: Element) -> None:
        received_us = stamp.now_us()
        metrics.counter("xmpp.presences.received").inc()
        kind = element.attrs.get("type")
        # Per kind, from a fixed set: a metric name never comes from the peer's text.
        metrics.counter(_PRESENCE_KINDS.get(kind or "available", _OTHER_PRESENCE)).inc()
        # Stamped updates of others are timed (not our own, which the server echoes to us).
        if kind is None and element.children and bare(element.attrs.get("from", "")) != self.jid:
            sent_us = None
            for child in element.children:
                if child.tag == _STAMP:
                    sent_us = stamp.decode_value(child.attrs.get("us"))
                elif child.tag == _DELAY:  # the contact's last presence, not this update
                    sent_us = None
                    break
            if sent_us is not None:
                metrics.histogram("xmpp.presences.ttd_ms").record(
                    stamp.ttd_ms(sent_us, received_us)
                )
        if kind == "subscribe":
            policy = self.settings.subscription_requests
            sender = element.attrs.get("from", "")
            if policy != "ignore" and sender:
                answer = "subscribed" if policy == "accept" else "unsubscribed"
                self._send_raw(ns.presence(bare(sender), type=answer))
                metrics.counter(f"xmpp.subscriptions.{policy}ed").inc()
        self._offer(element)

    def _route_iq(self, element: Element) -> None:
        kind = element.attrs.get("type")
        if kind in ("result", "error"):
            iqs = self._iqs
            future = iqs.pop(element.attrs.get("id", ""), None) if iqs else None
            if future is not None:
                if not future.done():
                    future.set_result(element)
                return
            self._offer(element)
            return
        if kind not in ("get", "set"):
            return
        if self._handlers and self._run_handlers(element):
            return
        sender = element.attrs.get("from")
        ident = element.attrs.get("id", "")
        if kind == "get" and element.find(_PING) is not None:
            self._send_raw(ns.iq_result(sender, ident))
            return
        if (
            kind == "set"
            and element.find(_ROSTER_QUERY) is not None
            and (not sender or bare(sender) in (self.jid, self.settings.domain))
        ):
            self._send_raw(ns.iq_result(sender, ident))  # RFC 6121 §2.1.6: a roster push
            metrics.counter("xmpp.roster.pushes").inc()
            self._give(element)
            return
        self._send_raw(ns.iq_error(sender, ident))

    def _run_handlers(self, element: Element) -> bool:
        for test, handler in list(self._handlers or ()):
            if test.test(element) and handler(element) is True:
                return True
        return False

    def _offer(self, element: Element, keep: bool = True) -> bool:
        """To the handlers, then a waiter, then (with `keep`) the buffer; True if taken."""
        if self._handlers and self._run_handlers(element):
            return True
        return self._give(element, keep)

    def _give(self, element: Element, keep: bool = True) -> bool:
        watchers = self._watchers
        if watchers:
            for watcher in watchers:
                test, future = watcher
                if not future.done() and test.test(element):
                    watchers.remove(watcher)
                    future.set_result(element)
                    return True
        if not keep:
            return False
        size = self.settings.stanza_buffer
        if size > 0:
            kept = self._kept
            if kept is None:
                kept = self._kept = deque(maxlen=size)
            elif len(kept) == kept.maxlen:
                metrics.counter("xmpp.stanzas.unclaimed").inc()
            kept.append(element)
        return False

    def _fail_waiting(self, error: ConnectionLost | XmppError) -> None:
        """The session ended: every `wait_for` and `iq` gets `error`."""
        watchers, self._watchers = self._watchers, None
        iqs, self._iqs = self._iqs, None
        for _test, future in watchers or ():
            if not future.done():
                future.set_exception(error)
        for future in (iqs or {}).values():
            if not future.done():
                future.set_exception(error)
