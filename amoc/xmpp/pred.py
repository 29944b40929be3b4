"""Stanza predicates for `client.wait_for` and `client.add_handler`, named for errors.

    msg = await client.wait_for(pred.groupchat(room) & pred.has_body(), timeout_ms=5000)
    await client.wait_for(pred.muc_self_presence(room))
    client.add_handler(pred.presence(type="subscribe"), on_request)

A `Pred` is a function of an `Element` (see `amoc.xmpp.parser`) with a name; `&`, `|` and
`~` combine them, and the name says what was awaited when `wait_for` times out.
"""

from __future__ import annotations

from collections.abc import Callable

from amoc.xmpp import stanza as ns
from amoc.xmpp.parser import Element

_MESSAGE = f"{ns.CLIENT_NS} message"
_PRESENCE = f"{ns.CLIENT_NS} presence"
_IQ = f"{ns.CLIENT_NS} iq"
_BODY = f"{ns.CLIENT_NS} body"
_ERROR = f"{ns.CLIENT_NS} error"


class Pred:
    """A named test of a stanza."""

    __slots__ = ("name", "test")

    def __init__(self, test: Callable[[Element], bool], name: str) -> None:
        self.test = test
        self.name = name

    def __call__(self, element: Element) -> bool:
        return bool(self.test(element))

    def __and__(self, other: Pred) -> Pred:
        return Pred(lambda e: self.test(e) and other.test(e), f"{self.name} and {other.name}")

    def __or__(self, other: Pred) -> Pred:
        return Pred(lambda e: self.test(e) or other.test(e), f"({self.name} or {other.name})")

    def __invert__(self) -> Pred:
        return Pred(lambda e: not self.test(e), f"not {self.name}")

    def __repr__(self) -> str:
        return f"<pred {self.name}>"

    def __str__(self) -> str:
        return self.name


def named(name: str) -> Callable[[Callable[[Element], bool]], Pred]:
    """Decorator: a function of an Element becomes a `Pred` called `name`."""

    def wrap(test: Callable[[Element], bool]) -> Pred:
        return Pred(test, name)

    return wrap


def bare(jid: str) -> str:
    """`user@domain/resource` -> `user@domain`."""
    return jid.partition("/")[0]


def resource(jid: str) -> str:
    """The resource of a full JID ('' for a bare one); a room occupant's nick."""
    return jid.partition("/")[2]


anything = Pred(lambda _e: True, "any stanza")


def _optional(element: Element, attr: str, want: str | None) -> bool:
    return want is None or element.attrs.get(attr) == want


def _sender(element: Element, sender: str | None) -> bool:
    if sender is None:
        return True
    got = element.attrs.get("from", "")
    return got == sender if "/" in sender else bare(got) == sender


def _describe(what: str, **filters: str | None) -> str:
    given = ", ".join(f"{k.rstrip('_')}={v!r}" for k, v in filters.items() if v is not None)
    return f"{what} ({given})" if given else what


def message(type: str | None = None, sender: str | None = None) -> Pred:
    """A `<message/>`; of `type`, from `sender` (a bare JID matches any of its resources)."""

    def test(e: Element) -> bool:
        return e.tag == _MESSAGE and _optional(e, "type", type) and _sender(e, sender)

    return Pred(test, _describe("message", type=type, sender=sender))


def chat(sender: str | None = None) -> Pred:
    """A chat message with a body."""
    return message("chat", sender) & has_body()


def groupchat(room: str | None = None, nick: str | None = None) -> Pred:
    """A groupchat message with a body, from `room` (bare room JID) and `nick`."""

    def test(e: Element) -> bool:
        if e.tag != _MESSAGE or e.attrs.get("type") != "groupchat" or e.find(_BODY) is None:
            return False
        room_jid, _, sender_nick = e.attrs.get("from", "").partition("/")
        return (room is None or room_jid == room) and (nick is None or sender_nick == nick)

    return Pred(test, _describe("groupchat message", room=room, nick=nick))


def has_body(text: str | None = None) -> Pred:
    """A stanza with a `<body/>` (with exactly `text`, when given)."""

    def test(e: Element) -> bool:
        body = e.find(_BODY)
        return body is not None and (text is None or body.text == text)

    return Pred(test, _describe("with a body", text=text))


def presence(type: str | None = None, sender: str | None = None) -> Pred:
    """A `<presence/>` of `type` ("available" matches no type attribute) from `sender`."""

    def test(e: Element) -> bool:
        if e.tag != _PRESENCE or not _sender(e, sender):
            return False
        got = e.attrs.get("type")
        return type is None or got == type or (type == "available" and got is None)

    return Pred(test, _describe("presence", type=type, sender=sender))


def iq(type: str | None = None, id: str | None = None, xmlns: str | None = None) -> Pred:
    """An `<iq/>` of `type` with `id`, whose first child is in namespace `xmlns`."""

    def test(e: Element) -> bool:
        if e.tag != _IQ or not _optional(e, "type", type) or not _optional(e, "id", id):
            return False
        if xmlns is None:
            return True
        return any(child.ns == xmlns for child in e.children)

    return Pred(test, _describe("iq", type=type, id=id, xmlns=xmlns))


def error(condition: str | None = None) -> Pred:
    """A stanza of type error (with the defined `condition`, when given)."""

    def test(e: Element) -> bool:
        if e.attrs.get("type") != "error":
            return False
        if condition is None:
            return True
        err = e.find(_ERROR)
        return err is not None and any(
            c.tag == f"{ns.STANZAS_NS} {condition}" for c in err.children
        )

    return Pred(test, _describe("error", condition=condition))


def has_child(xmlns: str, name: str | None = None) -> Pred:
    """A stanza with a direct child in `xmlns` (called `name`, when given)."""

    def test(e: Element) -> bool:
        return any(c.ns == xmlns and (name is None or c.name == name) for c in e.children)

    return Pred(test, _describe("with a child", xmlns=xmlns, name=name))


def sender(jid: str) -> Pred:
    """A stanza from `jid` (a bare JID matches any of its resources)."""
    return Pred(lambda e: _sender(e, jid), f"from {jid}")


# -- MUC ------------------------------------------------------------------------------------


def _muc_statuses(e: Element) -> set[str]:
    x = e.find(f"{ns.MUC_USER_NS} x")
    if x is None:
        return set()
    return {c.attrs.get("code", "") for c in x.children if c.name == "status"}


def muc_presence(room: str, nick: str | None = None) -> Pred:
    """An occupant's presence from `room` (bare room JID), for `nick` when given."""

    def test(e: Element) -> bool:
        if e.tag != _PRESENCE or e.find(f"{ns.MUC_USER_NS} x") is None:
            return False
        room_jid, _, who = e.attrs.get("from", "").partition("/")
        return room_jid == room and (nick is None or who == nick)

    return Pred(test, _describe("room presence", room=room, nick=nick))


def muc_self_presence(room: str) -> Pred:
    """The room's presence about ourselves (status 110): the join is complete."""

    def test(e: Element) -> bool:
        if e.tag != _PRESENCE or bare(e.attrs.get("from", "")) != room:
            return False
        return "110" in _muc_statuses(e)

    return Pred(test, f"own presence from room {room}")


def muc_room_created(room: str) -> Pred:
    """The self-presence that says the room was just created (status 201)."""

    def test(e: Element) -> bool:
        return (
            e.tag == _PRESENCE
            and bare(e.attrs.get("from", "")) == room
            and ("201" in _muc_statuses(e))
        )

    return Pred(test, f"room {room} created")


def muc_subject(room: str) -> Pred:
    """The room's subject message (sent last when joining, XEP-0045 §7.2.15)."""

    def test(e: Element) -> bool:
        return (
            e.tag == _MESSAGE
            and e.attrs.get("type") == "groupchat"
            and bare(e.attrs.get("from", "")) == room
            and e.find(f"{ns.CLIENT_NS} subject") is not None
            and e.find(_BODY) is None
        )

    return Pred(test, f"subject of room {room}")


# -- PubSub ---------------------------------------------------------------------------------


def pubsub_event(node: str | None = None, service: str | None = None) -> Pred:
    """A message carrying PubSub event items (of `node`, from `service`)."""

    def test(e: Element) -> bool:
        if e.tag != _MESSAGE:
            return False
        if service is not None and bare(e.attrs.get("from", "")) != service:
            return False
        event = e.find(f"{ns.PUBSUB_EVENT_NS} event")
        if event is None:
            return False
        items = event.find(f"{ns.PUBSUB_EVENT_NS} items")
        return items is not None and (node is None or items.attrs.get("node") == node)

    return Pred(test, _describe("pubsub event", node=node, service=service))


# -- MAM ------------------------------------------------------------------------------------


def mam_result(query_id: str | None = None) -> Pred:
    """A message carrying one archived message of a MAM query (`queryid`)."""

    def test(e: Element) -> bool:
        if e.tag != _MESSAGE:
            return False
        result = e.find(f"{ns.MAM_NS} result")
        return result is not None and (query_id is None or result.attrs.get("queryid") == query_id)

    return Pred(test, _describe("MAM result", queryid=query_id))
