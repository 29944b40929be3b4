"""Multi-user chat (XEP-0045) for scenarios, on either client (the `Session` API).

    from amoc.xmpp import muc

    room = await muc.create(client, "room1@conference.localhost", "alice")  # instant room
    room = await muc.join(other, "room1@conference.localhost", "bob")      # MucError if refused
    await room.wait_occupants(2, timeout_ms=5000)      # room.occupants: the nicks present
    room.send()                                        # a stamped groupchat message
    await room.wait_received(1, timeout_ms=5000)       # from the other occupants
    await room.leave()

A `Room` follows the room through one handler: occupants come and go with their presences,
groupchat messages are counted (`received` from the others, `echoes` of our own: a room sends
every message to every occupant, the sender included). By default (`consume=True`) the room's
presences and groupchat messages stop there: they do not fill the stanza buffer, and a
`client.wait_for` does not see them; pass `consume=False` to let them through.

Errors: a refused join raises `MucError` with the server's `condition` (`conflict`: the nick
is taken; `registration-required`: members only; `service-unavailable`: the room is full;
`forbidden`: banned; `not-authorized`: a password is needed; `not-allowed`: the service lets
this user create no room); a join that gets no answer raises `ReceiveTimeout`.

Metrics: histogram xmpp.muc.join_time_ms (join sent -> own presence, status 110); counters
xmpp.muc.joins, xmpp.muc.joins.failed.<condition>, xmpp.muc.joins.timeouts,
xmpp.muc.rooms.created, xmpp.muc.messages.sent. The router counts every groupchat message
received (xmpp.muc.messages.received) and times stamped ones (xmpp.muc.ttd_ms): both include
the echo of the user's own messages, so a message sent in a room of n occupants counts n
times, and xmpp.muc.ttd_ms is the time to delivery to every occupant, the sender included.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from xml.sax.saxutils import escape, quoteattr

from amoc import metrics
from amoc.xmpp import pred, stanza
from amoc.xmpp.errors import Reason, ReceiveTimeout, XmppError
from amoc.xmpp.parser import Element
from amoc.xmpp.router import HandlerRef, stanza_error
from amoc.xmpp.session import Session
from amoc.xmpp.tally import Tally

_PRESENCE = f"{stanza.CLIENT_NS} presence"
_MESSAGE = f"{stanza.CLIENT_NS} message"
_BODY = f"{stanza.CLIENT_NS} body"
_DELAY = f"{stanza.DELAY_NS} delay"
_MUC_USER_X = f"{stanza.MUC_USER_NS} x"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"

# What a join refusal means, for the error message (XEP-0045 §7.2).
HINTS = {
    "conflict": "the nick is already taken in the room",
    "registration-required": "the room is members-only",
    "service-unavailable": "the room is full (its maximum of occupants is reached)",
    "forbidden": "the user is banned from the room",
    "not-authorized": "the room needs a password",
    "not-allowed": "the service lets this user create no room",
    "item-not-found": "the room does not exist or is locked",
    "jid-malformed": "the nick is missing or malformed",
}

_ids = itertools.count(1)


class MucError(XmppError):
    """The room refused or failed a request: `condition` (RFC 6120 §8.3.3), `text`, `room`."""

    def __init__(
        self,
        message: str,
        condition: str,
        text: str = "",
        room: str = "",
        user_id: int | None = None,
    ) -> None:
        super().__init__(message, None, user_id)
        self.condition = condition
        self.text = text
        self.room = room


def _statuses(x: Element) -> set[str]:
    return {c.attrs.get("code", "") for c in x.children if c.name == "status"}


class Room:
    """One user's presence in one room: occupants, counts, and the calls that wait on them."""

    __slots__ = (
        "_handler",
        "_joined",
        "_left",
        "_refused",
        "_tally",
        "client",
        "consume",
        "created",
        "delayed",
        "echoes",
        "jid",
        "join_ms",
        "nick",
        "occupants",
        "on_message",
        "presences_at_join",
        "received",
        "sent",
    )

    def __init__(
        self,
        client: Session,
        jid: str,
        nick: str,
        consume: bool = True,
        on_message: Callable[[Element], object] | None = None,
    ) -> None:
        self.client = client
        self.jid = jid  # the bare room JID
        self.nick = nick  # ours (the room may change it: status 210)
        self.consume = consume
        self.on_message = on_message
        self.occupants: set[str] = set()  # nicks present, ours included once joined
        self.created = False  # the join created the room (status 201)
        self.join_ms = 0.0
        self.presences_at_join = 0  # other occupants' presences received while joining
        self.received = 0  # groupchat messages with a body from the other occupants
        self.echoes = 0  # our own messages as the room sent them back to us
        self.delayed = 0  # messages from the room's history (with <delay/>)
        self.sent = 0
        self._joined = False
        self._left = False
        self._refused: MucError | None = None
        self._tally = Tally(client)
        self._handler: HandlerRef | None = None

    def __repr__(self) -> str:
        state = "joined" if self.joined else "not joined"
        return f"<Room {self.jid} as {self.nick!r}, {state}, {len(self.occupants)} occupants>"

    @property
    def joined(self) -> bool:
        """True from our own presence in the room until we leave it (or are removed)."""
        return self._joined and not self._left

    @property
    def occupant_count(self) -> int:
        """How many occupants the room has now, as its presences told (ours included)."""
        return len(self.occupants)

    # -- what the room sends ----------------------------------------------------------------

    def _listen(self) -> None:
        room, prefix = self.jid, self.jid + "/"

        def from_room(e: Element) -> bool:
            sender = e.attrs.get("from", "")
            return sender == room or sender.startswith(prefix)

        self._handler = self.client.add_handler(pred.Pred(from_room, f"from room {room}"), self._on)

    def _forget(self) -> None:
        if self._handler is not None:
            self.client.remove_handler(self._handler)
            self._handler = None

    def _on(self, element: Element) -> bool:
        tag = element.tag
        if tag == _PRESENCE:
            used = self._on_presence(element)
        elif tag == _MESSAGE and element.attrs.get("type") == "groupchat":
            used = self._on_groupchat(element)
        else:  # IQ answers, errors to messages, invitations: not ours to keep
            return False
        return used and self.consume

    def _on_presence(self, element: Element) -> bool:
        attrs = element.attrs
        kind = attrs.get("type")
        nick = attrs.get("from", "").partition("/")[2]
        if kind == "error":
            if self._joined or self._refused is not None:
                return False  # not about our join (another Room of this client, say)
            condition, text = stanza_error(element)
            hint = HINTS.get(condition, "")
            self._refused = MucError(
                f"{self.client.jid}: joining room {self.jid} as {self.nick!r} was refused: "
                f"{condition}{' (' + text + ')' if text else ''}{': ' + hint if hint else ''}",
                condition,
                text,
                self.jid,
                self.client.user_id,
            )
            self._tally.changed()
            return True
        x = element.find(_MUC_USER_X)
        if not nick or x is None:  # the room's own presence (ejabberd: its caps)
            return True
        codes = _statuses(x)
        if kind == "unavailable":
            self.occupants.discard(nick)
            if "303" in codes:  # a nick change: the new nick is in the item
                item = x.find(f"{stanza.MUC_USER_NS} item")
                new = item.attrs.get("nick", "") if item is not None else ""
                if new:
                    self.occupants.add(new)
                    if "110" in codes:
                        self.nick = new
            elif "110" in codes:
                self._left = True
        else:
            self.occupants.add(nick)
            if "110" in codes:
                if not self._joined:
                    self._joined = True
                    self.nick = nick
                    self.created = "201" in codes
            elif not self._joined:
                self.presences_at_join += 1
        self._tally.changed()
        return True

    def _on_groupchat(self, element: Element) -> bool:
        body = element.find(_BODY)
        if body is None:  # the subject, or a status message from the room
            return True
        if element.find(_DELAY) is not None:
            self.delayed += 1
        elif element.attrs.get("from", "").partition("/")[2] == self.nick:
            self.echoes += 1
        else:
            self.received += 1
        if self.on_message is not None:
            self.on_message(element)
        self._tally.changed()
        return True

    # -- what we do -------------------------------------------------------------------------

    def send(self, body: str | None = None) -> None:
        """Send a stamped groupchat message to everyone in the room (ourselves included)."""
        self.sent += 1
        text = f"message {self.sent} from {self.nick}" if body is None else body
        self.client.send(stanza.groupchat(self.jid, text))
        metrics.counter("xmpp.muc.messages.sent").inc()

    async def wait_occupants(self, count: int, timeout_ms: float | None = None) -> None:
        """Wait until the room has at least `count` occupants (ours included)."""
        await self._tally.until(
            lambda: len(self.occupants) >= count,
            timeout_ms,
            f"{count} occupants in room {self.jid} (has {len(self.occupants)})",
        )

    async def wait_received(
        self, count: int, timeout_ms: float | None = None, echoes: int = 0
    ) -> None:
        """Wait until `count` messages from the others (and `echoes` of ours) have arrived."""
        await self._tally.until(
            lambda: self.received >= count and self.echoes >= echoes,
            timeout_ms,
            f"{count} messages from others and {echoes} echoes in room {self.jid} "
            f"(got {self.received} and {self.echoes})",
        )

    async def leave(self, timeout_ms: float | None = None) -> None:
        """Leave the room and wait (up to `timeout_ms`) for the room to confirm it."""
        try:
            if self.joined and self.client.connected:
                self.client.send(stanza.muc_leave(self.jid, self.nick))
                await self._tally.until(
                    lambda: self._left, timeout_ms, f"confirmation of leaving room {self.jid}"
                )
        finally:
            self._left = True
            self.occupants.clear()
            self._forget()

    async def _join(self, password: str | None, history: int, timeout_ms: float | None) -> None:
        client = self.client
        loop = asyncio.get_running_loop()
        self._listen()
        began = loop.time()
        try:
            client.send(stanza.muc_join(self.jid, self.nick, password, history))
            await self._tally.until(
                lambda: self._joined or self._refused is not None,
                timeout_ms,
                f"own presence from room {self.jid} (joining as {self.nick!r})",
            )
        except ReceiveTimeout:
            metrics.counter("xmpp.muc.joins.timeouts").inc()
            self._forget()
            raise
        except BaseException:
            self._forget()
            raise
        if self._refused is not None:
            metrics.counter(f"xmpp.muc.joins.failed.{self._refused.condition}").inc()
            self._forget()
            raise self._refused
        self.join_ms = (loop.time() - began) * 1000.0
        metrics.histogram("xmpp.muc.join_time_ms").record(self.join_ms)
        metrics.counter("xmpp.muc.joins").inc()


async def join(
    client: Session,
    room: str,
    nick: str,
    *,
    password: str | None = None,
    history: int = 0,
    timeout_ms: float | None = None,
    consume: bool = True,
    on_message: Callable[[Element], object] | None = None,
) -> Room:
    """Join `room` (a bare room JID) as `nick`; returns once the room sent our own presence.

    Creates the room if it does not exist (then `room.created`; see `create`). `history`:
    how many past messages the room may send (0: none). `on_message(element)` is called for
    each groupchat message with a body. Raises `MucError` (the condition) or `ReceiveTimeout`.
    """
    joined = Room(client, room, nick, consume, on_message)
    await joined._join(password, history, timeout_ms)
    return joined


def configure_form(room: str, fields: Mapping[str, str | bool | int]) -> stanza.Iq:
    """The owner's submitted room configuration (XEP-0045 §10.2): `muc#roomconfig_*` fields."""
    values = "".join(
        f"<field var={quoteattr(var)}><value>{escape(_form_value(value))}</value></field>"
        for var, value in fields.items()
    )
    form = (
        f"<x xmlns='{stanza.DATA_NS}' type='submit'><field var='FORM_TYPE'>"
        f"<value>{ROOMCONFIG}</value></field>{values}</x>"
    )
    return stanza.iq(
        "set", f"<query xmlns='{stanza.MUC_OWNER_NS}'>{form}</query>", to=room, kind="muc_configure"
    )


def _form_value(value: str | bool | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


async def create(
    client: Session,
    room: str,
    nick: str,
    *,
    config: Mapping[str, str | bool | int] | None = None,
    exist_ok: bool = False,
    timeout_ms: float | None = None,
    consume: bool = True,
    on_message: Callable[[Element], object] | None = None,
) -> Room:
    """Create `room` and join it as its owner: join, then accept the default configuration
    (an instant room, XEP-0045 §10.1.2) or submit `config` (`{"muc#roomconfig_maxusers": 10}`).

    A room that exists already is joined as it is with `exist_ok`, else `MucError`
    (condition "conflict") after leaving it again.
    """
    joined = await join(
        client, room, nick, timeout_ms=timeout_ms, consume=consume, on_message=on_message
    )
    if not joined.created:
        if exist_ok:
            return joined
        await joined.leave(timeout_ms)
        raise MucError(
            f"{client.jid}: room {room} exists already (the join did not create it)",
            "conflict",
            room=room,
            user_id=client.user_id,
        )
    try:
        request = configure_form(room, config) if config else stanza.muc_instant_room(room)
        await client.iq(request, timeout_ms)
    except BaseException:
        if client.connected:
            await joined.leave(timeout_ms)
        joined._forget()
        raise
    metrics.counter("xmpp.muc.rooms.created").inc()
    return joined


async def exists(client: Session, room: str, timeout_ms: float | None = None) -> bool:
    """Whether `room` exists (its disco#info answers), without counting "no" as an IQ error.

    Raises `MucError` when the answer is an error other than item-not-found (no MUC
    service at that address, say).
    """
    ident = f"{client.user_id}-room{next(_ids)}"
    client.send(
        f"<iq type='get' id={quoteattr(ident)} to={quoteattr(room)}>"
        f"<query xmlns='{stanza.DISCO_INFO_NS}'/></iq>"
    )
    answer = await client.wait_for(pred.iq(id=ident), timeout_ms)
    if answer.get("type") == "result":
        return True
    condition, text = stanza_error(answer)
    if condition == "item-not-found":
        return False
    raise MucError(
        f"{client.jid}: asking whether room {room} exists failed: {condition}"
        f"{' (' + text + ')' if text else ''}; is there a MUC service at "
        f"{room.partition('@')[2]!r}?",
        condition,
        text,
        room,
        client.user_id,
    )


async def wait_exists(client: Session, room: str, timeout_ms: float, poll_ms: float = 100.0) -> int:
    """Ask every `poll_ms` until `room` exists (another user creates it); how many asks.

    `ReceiveTimeout` if it still does not exist after `timeout_ms`.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_ms / 1000.0
    asks = 0
    while True:
        asks += 1
        left_ms = max(1.0, (end - loop.time()) * 1000.0)
        if await exists(client, room, min(left_ms, client.settings.reply_timeout)):
            return asks
        if loop.time() + poll_ms / 1000.0 > end:
            raise ReceiveTimeout(
                f"{client.jid}: room {room} still does not exist after {timeout_ms} ms "
                f"({asks} asks): did its creator log in and create it?",
                Reason.TIMEOUT,
                client.user_id,
            )
        await asyncio.sleep(poll_ms / 1000.0)
