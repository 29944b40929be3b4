"""MUC and PubSub helpers against a scripted peer (no server), and the pure parts of the
xmpp_muc and xmpp_pubsub scenarios: room layout, parameters, group messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import ModuleType

import pytest

from amoc import metrics, xmpp
from amoc.config import Config, amoc_config
from amoc.errors import AmocError, ConfigError
from amoc.runner import Controller
from amoc.xmpp import muc, pred, pubsub, stamp
from amoc.xmpp.base import State
from amoc.xmpp.parser import Element
from amoc.xmpp.router import to_element
from tests.unit.files import ROOT, load_file

pytestmark = pytest.mark.unit

ROOM = "room1@conference.localhost"
ME = "user_1@localhost/amoc"
MUC_USER = "http://jabber.org/protocol/muc#user"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

Answer = Callable[[Element], list[str]]


class Peer:
    """A scripted server at the stanza level: what the client writes is answered by
    `answer(element)` with stanzas that arrive on the next turns of the loop."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent: list[Element] = []
        self.client: xmpp.LeanClient | None = None

    def write(self, data: bytes) -> None:
        element = to_element(data.decode())
        self.sent.append(element)
        loop = asyncio.get_running_loop()
        assert self.client is not None
        for reply in self.answer(element):
            loop.call_soon(self.client._online, to_element(reply))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def online(answer: Answer = lambda _e: []) -> tuple[xmpp.LeanClient, Peer]:
    client = xmpp.LeanClient(1, xmpp.settings(Config(environ={})), "user_1")
    peer = Peer(answer)
    peer.client = client
    client._transport = peer  # type: ignore[assignment]
    client._state = State.ONLINE
    client.bound_jid = ME
    return client, peer


def count(name: str) -> float:
    return metrics.counter(name).value


def occupant(nick: str, *codes: str, type: str | None = None, jid: str = "") -> str:
    kind = f" type='{type}'" if type else ""
    status = "".join(f"<status code='{c}'/>" for c in codes)
    item = f"<item affiliation='none' role='participant'{f' jid={jid!r}' if jid else ''}/>"
    return (
        f"<presence from='{ROOM}/{nick}' to='{ME}'{kind}>"
        f"<x xmlns='{MUC_USER}'>{item}{status}</x></presence>"
    )


def groupchat(nick: str, body: str = "hi", stamped: bool = True, delayed: bool = False) -> str:
    extra = stamp.encode(stamp.now_us() - 2000) if stamped else ""
    if delayed:
        extra += "<delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>"
    return (
        f"<message from='{ROOM}/{nick}' to='{ME}' type='groupchat'>"
        f"<body>{body}</body>{extra}</message>"
    )


def room_server(others: tuple[str, ...] = (), created: bool = False) -> Answer:
    """A room that has `others` in it: answers joins, the owner form, messages, leaving."""

    def answer(e: Element) -> list[str]:
        to = e.get("to")
        if e.name == "presence" and to.startswith(ROOM + "/"):
            nick = to.partition("/")[2]
            if e.get("type") == "unavailable":
                return [occupant(nick, "110", type="unavailable")]
            codes = ("201", "110") if created else ("110",)
            caps = (
                f"<presence from='{ROOM}'><c xmlns='http://jabber.org/protocol/caps'/></presence>"
            )
            subject = f"<message from='{ROOM}' type='groupchat'><subject/></message>"
            return [caps, *(occupant(o) for o in others), occupant(nick, *codes), subject]
        if e.name == "iq" and to == ROOM:
            return [f"<iq type='result' id='{e.get('id')}' from='{ROOM}'/>"]
        if e.name == "message" and e.get("type") == "groupchat":
            body = e.findtext("jabber:client body")
            return [groupchat("me", body)]
        return []

    return answer


# -- MUC ------------------------------------------------------------------------------------


def test_create_joins_accepts_the_instant_room_and_keeps_the_buffer_clear() -> None:
    async def run() -> None:
        client, peer = online(room_server(created=True))
        created = count("xmpp.muc.rooms.created")
        joins = metrics.histogram("xmpp.muc.join_time_ms").count
        room = await muc.create(client, ROOM, "me", timeout_ms=1000)
        assert room.created and room.joined and room.occupants == {"me"}
        assert room.presences_at_join == 0 and room.join_ms >= 0
        form = peer.sent[-1]
        assert form.name == "iq" and form.get("to") == ROOM
        x = form.find(f"{xmpp.stanza.MUC_OWNER_NS} query")
        assert x is not None and x.find("jabber:x:data x").get("type") == "submit"  # type: ignore[union-attr]
        assert count("xmpp.muc.rooms.created") == created + 1
        assert metrics.histogram("xmpp.muc.join_time_ms").count == joins + 1
        await asyncio.sleep(0.01)  # the subject arrives after the self-presence
        assert client.buffered() == []  # caps presence, occupants and subject: consumed

    asyncio.run(run())


def test_create_refuses_a_room_that_exists_unless_exist_ok() -> None:
    async def run() -> None:
        client, _peer = online(room_server(others=("bob",)))
        with pytest.raises(muc.MucError, match="exists already") as caught:
            await muc.create(client, ROOM, "me", timeout_ms=1000)
        assert caught.value.condition == "conflict" and caught.value.room == ROOM
        room = await muc.create(client, ROOM, "me", exist_ok=True, timeout_ms=1000)
        assert not room.created and room.occupants == {"me", "bob"}

    asyncio.run(run())


def test_join_counts_occupants_and_follows_arrivals_departures_and_nick_changes() -> None:
    async def run() -> None:
        client, _peer = online(room_server(others=("bob", "carol")))
        room = await muc.join(client, ROOM, "me", timeout_ms=1000)
        assert room.presences_at_join == 2 and room.occupant_count == 3
        waiting = asyncio.ensure_future(room.wait_occupants(4, timeout_ms=2000))
        await asyncio.sleep(0)
        client._online(to_element(occupant("dave")))
        await waiting
        client._online(to_element(occupant("bob", type="unavailable")))
        renamed = to_element(occupant("carol", "303", type="unavailable"))
        item = renamed.find(f"{MUC_USER} x").find(f"{MUC_USER} item")  # type: ignore[union-attr]
        assert item is not None
        item.attrs["nick"] = "caroline"
        client._online(renamed)
        assert room.occupants == {"me", "dave", "caroline"}
        with pytest.raises(xmpp.ReceiveTimeout, match=r"9 occupants in room .* \(has 3\)"):
            await room.wait_occupants(9, timeout_ms=30)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("condition", "hint"),
    [
        ("conflict", "the nick is already taken"),
        ("service-unavailable", "the room is full"),
        ("registration-required", "the room is members-only"),
    ],
)
def test_a_refused_join_raises_the_condition_with_what_it_means(condition: str, hint: str) -> None:
    def answer(e: Element) -> list[str]:
        return [
            f"<presence from='{e.get('to')}' type='error'><error type='cancel'>"
            f"<{condition} xmlns='{STANZAS}'/><text xmlns='{STANZAS}'>no</text></error></presence>"
        ]

    async def run() -> None:
        client, _peer = online(answer)
        before = count(f"xmpp.muc.joins.failed.{condition}")
        with pytest.raises(muc.MucError, match=f"refused: {condition} \\(no\\): {hint}") as caught:
            await muc.join(client, ROOM, "me", timeout_ms=1000)
        assert caught.value.condition == condition and caught.value.text == "no"
        assert count(f"xmpp.muc.joins.failed.{condition}") == before + 1
        assert not client._handlers  # the room's handler is gone

    asyncio.run(run())


def test_a_join_without_answer_times_out_naming_the_room() -> None:
    async def run() -> None:
        client, _peer = online()
        before = count("xmpp.muc.joins.timeouts")
        with pytest.raises(xmpp.ReceiveTimeout, match=f"own presence from room {ROOM}"):
            await muc.join(client, ROOM, "me", timeout_ms=30)
        assert count("xmpp.muc.joins.timeouts") == before + 1 and not client._handlers

    asyncio.run(run())


def test_messages_from_others_echoes_and_history_are_counted_apart() -> None:
    async def run() -> None:
        client, peer = online(room_server(others=("bob",)))
        room = await muc.join(client, ROOM, "me", timeout_ms=1000)
        got: list[str] = []
        room.on_message = lambda e: got.append(e.findtext("jabber:client body"))
        received = count("xmpp.muc.messages.received")
        sent = count("xmpp.muc.messages.sent")
        ttd = metrics.histogram("xmpp.muc.ttd_ms").count
        room.send()
        room.send("second")
        assert [e.findtext("jabber:client body") for e in peer.sent[-2:]] == [
            "message 1 from me",
            "second",
        ]
        waiting = asyncio.ensure_future(room.wait_received(2, timeout_ms=2000, echoes=2))
        await asyncio.sleep(0)
        for text in ("a", "b"):
            client._online(to_element(groupchat("bob", text)))
        client._online(to_element(groupchat("bob", "old", delayed=True)))
        await waiting
        assert (room.received, room.echoes, room.delayed, room.sent) == (2, 2, 1, 2)
        assert sorted(got) == ["a", "b", "message 1 from me", "old", "second"]
        assert count("xmpp.muc.messages.sent") == sent + 2
        # The router counts every groupchat message (echoes and history too), times the
        # fresh stamped ones: 2 echoes + 2 from bob.
        assert count("xmpp.muc.messages.received") == received + 5
        assert metrics.histogram("xmpp.muc.ttd_ms").count == ttd + 4
        assert client.buffered() == []

    asyncio.run(run())


def test_without_consume_the_room_lets_stanzas_through_to_wait_for() -> None:
    async def run() -> None:
        client, _peer = online(room_server(others=("bob",)))
        room = await muc.join(client, ROOM, "me", timeout_ms=1000, consume=False)
        waiting = asyncio.ensure_future(client.wait_for(pred.groupchat(ROOM, "bob"), 2000))
        await asyncio.sleep(0)
        client._online(to_element(groupchat("bob")))
        assert (await waiting).get("from") == f"{ROOM}/bob" and room.received == 1
        with pytest.raises(xmpp.ReceiveTimeout, match=r"no groupchat message \(room="):
            await client.wait_for(pred.groupchat(ROOM, "nobody"), timeout_ms=30)

    asyncio.run(run())


def test_leave_waits_for_the_room_and_forgets_it() -> None:
    async def run() -> None:
        client, peer = online(room_server())
        room = await muc.join(client, ROOM, "me", timeout_ms=1000)
        await room.leave(timeout_ms=1000)
        assert peer.sent[-1].get("type") == "unavailable" and not room.joined
        assert not client._handlers and room.occupants == set()
        await room.leave()  # twice: nothing to do

    asyncio.run(run())


def test_a_lost_session_ends_a_room_wait_at_once() -> None:
    async def run() -> None:
        client, _peer = online(room_server())
        room = await muc.join(client, ROOM, "me", timeout_ms=1000)
        client._online_counted = False
        waiting = asyncio.ensure_future(room.wait_received(5, timeout_ms=60_000))
        await asyncio.sleep(0.01)
        client._end_session(ConnectionResetError("reset"))
        async with asyncio.timeout(2):
            with pytest.raises(xmpp.ConnectionLost, match="the server ended the session"):
                await waiting

    asyncio.run(run())


def iq_errors() -> float:
    return sum(
        v for k, v in metrics.show().items() if k.startswith("xmpp.iq.") and k.endswith(".errors")
    )


def test_exists_asks_disco_info_without_counting_no_as_an_error() -> None:
    answers = {"here": "result", "gone": "item-not-found", "wrong": "remote-server-not-found"}

    def answer(e: Element) -> list[str]:
        what = answers[e.get("to").partition("@")[0]]
        if what == "result":
            return [f"<iq type='result' id='{e.get('id')}'/>"]
        return [
            f"<iq type='error' id='{e.get('id')}'><error type='cancel'>"
            f"<{what} xmlns='{STANZAS}'/></error></iq>"
        ]

    async def run() -> None:
        client, _peer = online(answer)
        errors = iq_errors()
        assert await muc.exists(client, "here@conference.localhost", 1000)
        assert not await muc.exists(client, "gone@conference.localhost", 1000)
        with pytest.raises(muc.MucError, match="remote-server-not-found; is there a MUC service"):
            await muc.exists(client, "wrong@conference.localhost", 1000)
        with pytest.raises(xmpp.ReceiveTimeout, match="gone@conference.localhost still does not"):
            await muc.wait_exists(client, "gone@conference.localhost", 60, poll_ms=10)
        assert iq_errors() == errors

    asyncio.run(run())


def test_configure_form_submits_the_fields() -> None:
    form = to_element(muc.configure_form(ROOM, {"muc#roomconfig_maxusers": 5, "x": True}).xml("c"))
    values = {
        f.get("var"): f.findtext("jabber:x:data value") for f in form.iter() if f.name == "field"
    }
    assert values == {
        "FORM_TYPE": muc.ROOMCONFIG,
        "muc#roomconfig_maxusers": "5",
        "x": "1",
    }


# -- PubSub ---------------------------------------------------------------------------------

EJABBERD_EVENT = (
    "<message to='user_1@localhost' from='{src}' type='headline'>"
    "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='news'>"
    "<item id='7042D'><entry xmlns='urn:amoc:item'>{stamp}</entry></item></items></event>"
    "<addresses xmlns='http://jabber.org/protocol/address'>"
    "<address jid='user_2@localhost/amoc' type='replyto'/></addresses></message>"
)
PROSODY_EVENT = (
    "<message id='x1' to='user_1@localhost' type='headline' from='{src}'>"
    "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='news'>"
    "<item id='b1fe' publisher='user_2@localhost'><entry xmlns='urn:amoc:item'>{stamp}"
    "</entry></item></items></event></message>"
)


@pytest.mark.parametrize("event", [EJABBERD_EVENT, PROSODY_EVENT], ids=["ejabberd", "prosody"])
def test_items_of_both_servers_event_formats_are_counted_and_timed(event: str) -> None:
    async def run() -> None:
        client, _peer = online()
        items = pubsub.Items(client, "pubsub.localhost", "news")
        received = count("xmpp.pubsub.items.received")
        ttd = metrics.histogram("xmpp.pubsub.ttd_ms")
        timed = ttd.count
        waiting = asyncio.ensure_future(items.wait(2, timeout_ms=2000))
        await asyncio.sleep(0)
        fresh = stamp.encode(stamp.now_us() - 5000)
        for _ in range(2):
            client._online(to_element(event.format(src="pubsub.localhost", stamp=fresh)))
        other = event.format(src="pubsub.localhost", stamp=fresh).replace("'news'", "'other'")
        client._online(to_element(other))  # another node: not this Items'
        await waiting
        assert items.received == 2
        assert count("xmpp.pubsub.items.received") == received + 3
        assert ttd.count == timed + 3  # the router times every stamped item it gets
        assert len(client.buffered()) == 1  # only the other node's event
        items.close()
        assert not client._handlers

    asyncio.run(run())


def test_publish_subscribe_and_delete_go_through_timed_iq_requests() -> None:
    def answer(e: Element) -> list[str]:
        ident = e.get("id")
        payload = e.children[0]
        verb = payload.children[0].name
        if verb == "publish":
            return [
                f"<iq type='result' id='{ident}'><pubsub xmlns='{xmpp.stanza.PUBSUB_NS}'>"
                "<publish node='news'><item id='item-7'/></publish></pubsub></iq>"
            ]
        if verb == "subscribe":
            return [
                f"<iq type='result' id='{ident}'><pubsub xmlns='{xmpp.stanza.PUBSUB_NS}'>"
                "<subscription node='news' jid='user_1@localhost' subscription='pending'/>"
                "</pubsub></iq>"
            ]
        if payload.children[0].get("node") == "missing":
            return [
                f"<iq type='error' id='{ident}'><error type='cancel'>"
                f"<item-not-found xmlns='{STANZAS}'/></error></iq>"
            ]
        return [f"<iq type='result' id='{ident}'/>"]

    async def run() -> None:
        client, peer = online(answer)
        published = count("xmpp.pubsub.items.published")
        timed = metrics.histogram("xmpp.iq.pubsub_publish.time_ms").count
        await pubsub.create_node(client, "pubsub.localhost", "news", {"pubsub#max_items": "5"})
        assert await pubsub.subscribe(client, "pubsub.localhost", "news") == "pending"
        assert peer.sent[-1].children[0].children[0].get("jid") == "user_1@localhost"
        assert await pubsub.publish(client, "pubsub.localhost", "news") == "item-7"
        assert [e for e in peer.sent[-1].iter() if e.name == "stamp"]
        assert count("xmpp.pubsub.items.published") == published + 1
        assert metrics.histogram("xmpp.iq.pubsub_publish.time_ms").count == timed + 1
        with pytest.raises(xmpp.IqError, match="pubsub_delete request to pubsub.localhost failed"):
            await pubsub.delete_node(client, "pubsub.localhost", "missing")
        await pubsub.create_node(client, None, "urn:amoc:pep")
        assert peer.sent[-1].get("to") == ""  # the user's own PEP service

    asyncio.run(run())


# -- the scenarios' pure parts --------------------------------------------------------------


def load_scenario(name: str) -> ModuleType:
    return load_file(ROOT / "scenarios" / f"{name}.py", f"_test_{name}")


@pytest.mark.parametrize(("per_room", "per_user"), [(1, 1), (10, 1), (10, 2), (5, 3), (4, 4)])
def test_the_room_layout_puts_every_user_in_its_rooms_of_exactly_n(
    per_room: int, per_user: int
) -> None:
    layout = load_scenario("xmpp_muc").Layout(per_room, per_user)
    users = range(1, 3 * layout.group + 1)
    rooms: dict[int, list[int]] = {}
    for user in users:
        mine = layout.rooms_of(user)
        assert len(set(mine)) == per_user, (user, mine)
        for room in mine:
            rooms.setdefault(room, []).append(user)
    assert len(rooms) == 3 * layout.rooms_per_group
    for room, members in rooms.items():
        assert sorted(members) == layout.members(room), room
        assert len(members) == per_room
    if per_user > 1:  # layers mix: a user meets more than its own block
        met = {u for room in layout.rooms_of(1) for u in layout.members(room)}
        assert len(met) > per_room


def test_the_room_layout_and_parameters_refuse_what_makes_no_sense() -> None:
    scenario = load_scenario("xmpp_muc")
    with pytest.raises(ConfigError, match="rooms_per_user = 11 with users_per_room = 10"):
        scenario.Layout(10, 11)
    with pytest.raises(ValueError, match="ids >= 1"):
        scenario.Layout(10, 1).rooms_of(0)
    params = {p.name: p for p in scenario.PARAMETERS}
    with pytest.raises(ConfigError, match=r"'users_per_room' = 0 .* must be >= 1"):
        params["users_per_room"].check(0, "test")
    with pytest.raises(ConfigError, match="'muc_service'"):
        params["muc_service"].check("room@conference", "test")
    with pytest.raises(ConfigError, match="'muc_room_prefix'"):
        params["muc_room_prefix"].check("a b", "test")
    assert params["muc_service"].check("", "test") is None
    assert scenario.describe_ids([1, 2, 3, 7, 9, 10]) == "1..3, 7, 9..10"
    assert scenario.describe_ids([]) == ""


def test_pubsub_parameters_and_group_messages() -> None:
    scenario = load_scenario("xmpp_pubsub")
    params = {p.name: p for p in scenario.PARAMETERS}
    with pytest.raises(ConfigError, match=r"'subscribers_per_node' = 0 .* must be >= 1"):
        params["subscribers_per_node"].check(0, "test")
    with pytest.raises(ConfigError, match="'pubsub_mode' = 'both'"):
        params["pubsub_mode"].check("both", "test")
    with pytest.raises(ConfigError, match="'group_timeout' = 0"):
        params["group_timeout"].check(0, "test")
    message = to_element(scenario.signal("a@localhost", "ready", "n'1", "pubsub.localhost"))
    message.attrs["from"] = "b@localhost/amoc"
    assert message.find("jabber:client body") is None  # no chat metric counts it
    assert scenario.signal_of("ready", "b@localhost")(message)
    assert not scenario.signal_of("done")(message)
    group = message.find(f"{scenario.SIGNAL_NS} group")
    assert group is not None and group.get("node") == "n'1"


@pytest.mark.parametrize(
    ("scenario", "settings", "message"),
    [
        ("xmpp_muc", {"users_per_room": 0}, r"'users_per_room' = 0 .*must be >= 1"),
        ("xmpp_muc", {"messages_per_user": -1}, r"'messages_per_user' = -1 .*must be >= 0"),
        (
            "xmpp_muc",
            {"users_per_room": 5, "rooms_per_user": 6},
            "rooms_per_user = 6 with users_per_room = 5: must be between 1 and users_per_room",
        ),
        ("xmpp_pubsub", {"subscribers_per_node": 0}, r"'subscribers_per_node' = 0 .*must be >= 1"),
        ("xmpp_pubsub", {"items_per_publisher": 0}, r"'items_per_publisher' = 0 .*must be >= 1"),
    ],
)
async def test_nonsense_parameters_are_refused_before_any_user_starts(
    scenario: str, settings: dict[str, int], message: str
) -> None:
    ctl = Controller(scenario_dirs=[ROOT / "scenarios"])
    try:
        with pytest.raises(AmocError, match=message):
            await ctl.do(scenario, 1, 10, settings=settings)
        assert ctl.status().state == "idle" and ctl.status().users.started == 0
    finally:
        await ctl.close()
        for name in settings:
            amoc_config.unset(name)
