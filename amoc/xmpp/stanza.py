"""Stanza builders: XML text ready for `client.send`, and `Iq` requests for `client.iq`.

    client.send(stanza.presence(to=room_jid + "/" + nick, children=stanza.MUC_JOIN))
    client.send(stanza.message(room_jid, "hi", type="groupchat", stamped=True))
    roster = await client.iq(stanza.roster_get())

Builders return text (formatted once, no tree to build), so they cost little on a hot path.
Attribute values and bodies are escaped here; `children` is XML text inserted as it is.
An `Iq` carries its type, payload and `kind`, the name its timing is recorded under
(`xmpp.iq.<kind>.time_ms`); the client gives it an id when it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from amoc.xmpp import stamp as _stamp

CLIENT_NS = "jabber:client"
ROSTER_NS = "jabber:iq:roster"
PING_NS = "urn:xmpp:ping"
REGISTER_NS = "jabber:iq:register"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"
MUC_OWNER_NS = "http://jabber.org/protocol/muc#owner"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
PUBSUB_EVENT_NS = "http://jabber.org/protocol/pubsub#event"
PUBSUB_OWNER_NS = "http://jabber.org/protocol/pubsub#owner"
MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
DATA_NS = "jabber:x:data"
FORWARD_NS = "urn:xmpp:forward:0"
DELAY_NS = "urn:xmpp:delay"
SM_NS = "urn:xmpp:sm:3"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

# Joining a room: the <x/> of a MUC join presence (XEP-0045 §7.2), without history.
MUC_JOIN = f"<x xmlns='{MUC_NS}'><history maxstanzas='0'/></x>"


def _attrs(**values: str | int | None) -> str:
    """` name='value'` for each value that is not None (a trailing _ is dropped)."""
    return "".join(
        f" {name.rstrip('_')}={quoteattr(str(value))}"
        for name, value in values.items()
        if value is not None
    )


def text_element(name: str, text: str, ns: str | None = None) -> str:
    """`<name xmlns=ns>text</name>` with the text escaped."""
    return f"<{name}{_attrs(xmlns=ns)}>{escape(text)}</{name}>"


# -- the three stanzas ----------------------------------------------------------------------


def message(
    to: str,
    body: str | None = None,
    *,
    type: str = "chat",
    id: str | None = None,
    children: str = "",
    stamped: bool = True,
) -> str:
    """A `<message/>`; `stamped` adds amoc's time-to-delivery stamp (read by receivers)."""
    inner = text_element("body", body) if body is not None else ""
    if stamped:
        inner += _stamp.encode(_stamp.now_us())
    return f"<message{_attrs(to=to, type=type, id=id)}>{inner}{children}</message>"


def presence(
    to: str | None = None,
    *,
    type: str | None = None,
    id: str | None = None,
    show: str | None = None,
    status: str | None = None,
    priority: int | None = None,
    children: str = "",
) -> str:
    """A `<presence/>`: available when `type` is None, else subscribe, unavailable, ..."""
    inner = ""
    if show is not None:
        inner += text_element("show", show)
    if status is not None:
        inner += text_element("status", status)
    if priority is not None:
        inner += f"<priority>{int(priority)}</priority>"
    inner += children
    head = f"<presence{_attrs(to=to, type=type, id=id)}"
    return f"{head}>{inner}</presence>" if inner else f"{head}/>"


@dataclass(frozen=True, slots=True)
class Iq:
    """An IQ request: `type` get or set, its payload (XML text), recipient and metric kind."""

    type: str
    payload: str
    to: str | None = None
    kind: str = "iq"

    def xml(self, id: str) -> str:
        """The request as text with the id the client picked."""
        return f"<iq{_attrs(type=self.type, id=id, to=self.to)}>{self.payload}</iq>"


def iq(
    type: str,
    payload: str = "",
    *,
    to: str | None = None,
    kind: str = "iq",
) -> Iq:
    """An IQ request for `client.iq` (the client adds the id)."""
    if type not in ("get", "set"):
        raise ValueError(f"an IQ request is of type get or set, not {type!r}")
    return Iq(type, payload, to, kind)


def iq_result(to: str | None, id: str, payload: str = "") -> str:
    """The result answering an IQ request `id` from `to`."""
    head = f"<iq{_attrs(type='result', id=id, to=to)}"
    return f"{head}>{payload}</iq>" if payload else f"{head}/>"


def iq_error(
    to: str | None,
    id: str,
    condition: str = "service-unavailable",
    error_type: str = "cancel",
) -> str:
    """An error answering the IQ request `id` (RFC 6120 §8.3)."""
    return (
        f"<iq{_attrs(type='error', id=id, to=to)}><error type={quoteattr(error_type)}>"
        f"<{condition} xmlns='{STANZAS_NS}'/></error></iq>"
    )


# -- roster and presence subscriptions (RFC 6121) -------------------------------------------


def roster_get(version: str | None = None) -> Iq:
    """Ask for the roster (with `version`, XEP-0237 roster versioning)."""
    return iq("get", f"<query{_attrs(xmlns=ROSTER_NS, ver=version)}/>", kind="roster_get")


def roster_set(jid: str, name: str | None = None, groups: tuple[str, ...] = ()) -> Iq:
    """Add or update a roster item."""
    inner = "".join(text_element("group", g) for g in groups)
    item = (
        f"<item{_attrs(jid=jid, name=name)}>{inner}</item>"
        if inner
        else f"<item{_attrs(jid=jid, name=name)}/>"
    )
    return iq("set", f"<query xmlns='{ROSTER_NS}'>{item}</query>", kind="roster_set")


def roster_remove(jid: str) -> Iq:
    """Remove a roster item (and its subscriptions)."""
    item = f"<item{_attrs(jid=jid, subscription='remove')}/>"
    return iq("set", f"<query xmlns='{ROSTER_NS}'>{item}</query>", kind="roster_remove")


def subscribe(to: str) -> str:
    """Ask `to` for a presence subscription."""
    return presence(to, type="subscribe")


def subscribed(to: str) -> str:
    """Accept `to`'s subscription request."""
    return presence(to, type="subscribed")


def unsubscribe(to: str) -> str:
    """End our subscription to `to`'s presence."""
    return presence(to, type="unsubscribe")


def unsubscribed(to: str) -> str:
    """Refuse or cancel `to`'s subscription to our presence."""
    return presence(to, type="unsubscribed")


# -- ping (XEP-0199), registration (XEP-0077), service discovery (XEP-0030) -----------------


def ping(to: str | None = None) -> Iq:
    """A ping (to the server when `to` is None)."""
    return iq("get", f"<ping xmlns='{PING_NS}'/>", to=to, kind="ping")


def register(username: str, password: str) -> Iq:
    """In-band registration of an account."""
    payload = (
        f"<query xmlns='{REGISTER_NS}'>{text_element('username', username)}"
        f"{text_element('password', password)}</query>"
    )
    return iq("set", payload, kind="register")


def unregister() -> Iq:
    """Remove the logged-in account (XEP-0077 §3.2)."""
    return iq("set", f"<query xmlns='{REGISTER_NS}'><remove/></query>", kind="unregister")


def disco_info(to: str, node: str | None = None) -> Iq:
    """Service discovery: what `to` is and offers."""
    return iq("get", f"<query{_attrs(xmlns=DISCO_INFO_NS, node=node)}/>", to=to, kind="disco_info")


def disco_items(to: str, node: str | None = None) -> Iq:
    """Service discovery: the items (rooms, nodes, services) of `to`."""
    return iq(
        "get", f"<query{_attrs(xmlns=DISCO_ITEMS_NS, node=node)}/>", to=to, kind="disco_items"
    )


# -- MUC (XEP-0045) -------------------------------------------------------------------------


def muc_join(room: str, nick: str, password: str | None = None, history: int = 0) -> str:
    """The presence that joins (or creates) `room` as `nick`."""
    secret = text_element("password", password) if password is not None else ""
    x = f"<x xmlns='{MUC_NS}'><history maxstanzas='{int(history)}'/>{secret}</x>"
    return presence(f"{room}/{nick}", children=x)


def muc_leave(room: str, nick: str) -> str:
    """The presence that leaves `room`."""
    return presence(f"{room}/{nick}", type="unavailable")


def muc_instant_room(room: str) -> Iq:
    """Accept the default configuration of a new room (an empty submit form, §10.1.2)."""
    payload = f"<query xmlns='{MUC_OWNER_NS}'><x xmlns='{DATA_NS}' type='submit'/></query>"
    return iq("set", payload, to=room, kind="muc_create")


def groupchat(room: str, body: str, *, id: str | None = None, stamped: bool = True) -> str:
    """A stamped groupchat message to everyone in `room`."""
    return message(room, body, type="groupchat", id=id, stamped=stamped)


# -- PubSub (XEP-0060) and PEP (XEP-0163) ---------------------------------------------------


def pubsub_create(service: str | None, node: str, config: dict[str, str] | None = None) -> Iq:
    """Create `node` on `service` (None: the user's own PEP service)."""
    configure = ""
    if config:
        fields = "".join(
            f"<field var={quoteattr(var)}><value>{escape(value)}</value></field>"
            for var, value in config.items()
        )
        form = (
            f"<x xmlns='{DATA_NS}' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{PUBSUB_NS}#node_config</value></field>{fields}</x>"
        )
        configure = f"<configure>{form}</configure>"
    payload = f"<pubsub xmlns='{PUBSUB_NS}'><create node={quoteattr(node)}/>{configure}</pubsub>"
    return iq("set", payload, to=service, kind="pubsub_create")


def pubsub_delete(service: str | None, node: str) -> Iq:
    """Delete `node` (as its owner)."""
    payload = f"<pubsub xmlns='{PUBSUB_OWNER_NS}'><delete node={quoteattr(node)}/></pubsub>"
    return iq("set", payload, to=service, kind="pubsub_delete")


def pubsub_subscribe(service: str | None, node: str, jid: str) -> Iq:
    """Subscribe `jid` (a bare JID) to `node`."""
    payload = f"<pubsub xmlns='{PUBSUB_NS}'><subscribe{_attrs(node=node, jid=jid)}/></pubsub>"
    return iq("set", payload, to=service, kind="pubsub_subscribe")


def pubsub_unsubscribe(service: str | None, node: str, jid: str) -> Iq:
    """Unsubscribe `jid` from `node`."""
    payload = f"<pubsub xmlns='{PUBSUB_NS}'><unsubscribe{_attrs(node=node, jid=jid)}/></pubsub>"
    return iq("set", payload, to=service, kind="pubsub_unsubscribe")


def pubsub_publish(
    service: str | None,
    node: str,
    payload: str | None = None,
    item_id: str | None = None,
    stamped: bool = True,
) -> Iq:
    """Publish an item on `node`; `stamped` puts amoc's stamp in it (subscribers time it).

    The default payload is `<entry xmlns='urn:amoc:item'/>`, with the stamp inside.
    """
    inner = payload if payload is not None else ""
    if stamped:
        inner = f"<entry xmlns='urn:amoc:item'>{inner}{_stamp.encode(_stamp.now_us())}</entry>"
    elif not inner:
        inner = "<entry xmlns='urn:amoc:item'/>"
    item = f"<item{_attrs(id=item_id)}>{inner}</item>"
    body = f"<pubsub xmlns='{PUBSUB_NS}'><publish node={quoteattr(node)}>{item}</publish></pubsub>"
    return iq("set", body, to=service, kind="pubsub_publish")


def pubsub_items(service: str | None, node: str, max_items: int | None = None) -> Iq:
    """Fetch the items of `node`."""
    payload = (
        f"<pubsub xmlns='{PUBSUB_NS}'><items{_attrs(node=node, max_items=max_items)}/></pubsub>"
    )
    return iq("get", payload, to=service, kind="pubsub_items")


# -- MAM (XEP-0313) with RSM (XEP-0059) -----------------------------------------------------


def mam_query(
    query_id: str,
    *,
    to: str | None = None,
    with_jid: str | None = None,
    start: str | None = None,
    end: str | None = None,
    max_results: int | None = None,
    after: str | None = None,
    before: str | None = None,
) -> Iq:
    """Query the archive (the user's own when `to` is None, a room's with `to`)."""
    fields = ""
    for var, value in (("with", with_jid), ("start", start), ("end", end)):
        if value is not None:
            fields += f"<field var='{var}'><value>{escape(value)}</value></field>"
    form = ""
    if fields:
        form = (
            f"<x xmlns='{DATA_NS}' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{MAM_NS}</value></field>{fields}</x>"
        )
    rsm = ""
    if max_results is not None or after is not None or before is not None:
        inner = f"<max>{int(max_results)}</max>" if max_results is not None else ""
        if after is not None:
            inner += text_element("after", after)
        if before is not None:
            inner += text_element("before", before) if before else "<before/>"
        rsm = f"<set xmlns='{RSM_NS}'>{inner}</set>"
    payload = f"<query{_attrs(xmlns=MAM_NS, queryid=query_id)}>{form}{rsm}</query>"
    return iq("set", payload, to=to, kind="mam_query")
