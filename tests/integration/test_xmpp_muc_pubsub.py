"""MUC and PubSub against the managed ejabberd and Prosody, each with STARTTLS required: the
helpers on both clients, and the xmpp_muc and xmpp_pubsub scenarios through the runner with a
few hundred users, where every groupchat message must reach every occupant and every item
every subscriber."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.xmpp import muc, pred, pubsub
from tests.integration.xmpp_fixture import XmppServer, count, run_scenario, server_settings

pytestmark = pytest.mark.integration

FIXTURES = {"ejabberd": "ejabberd_tls_server", "prosody": "prosody_server"}
# Ids of their own (other test files use 1.. and 30_001..), aligned on the room groups.
_helper_ids = itertools.count(40_001, 10)
_runs = itertools.count(1)


@pytest.fixture(params=sorted(FIXTURES))
def server(request: pytest.FixtureRequest) -> XmppServer:
    """Each kind's session server (STARTTLS required)."""
    got: XmppServer = request.getfixturevalue(FIXTURES[request.param])
    return got


def kw(server: XmppServer, client: str) -> dict[str, Any]:
    """connect() overrides for `server` over STARTTLS (its self-signed certificate)."""
    return {
        "host": server.host,
        "port": server.port,
        "domain": server.domain,
        "tls": True,
        "tls_verify": False,
        "client": client,
    }


def counters(*names: str) -> dict[str, int]:
    return {name: count(name) for name in names}


def grown(before: dict[str, int]) -> dict[str, int]:
    return {name: count(name) - value for name, value in before.items()}


def scenario_settings(server: XmppServer, **extra: Any) -> dict[str, Any]:
    return {
        **server_settings(server, "lean"),
        "xmpp_tls": True,
        "xmpp_tls_verify": False,
        "xmpp_connect_timeout": 30_000,  # Prosody logs in about 100 users a second
        "interarrival": 5,
        "repeat_num": 1,
        **extra,
    }


# -- helpers, on both clients ---------------------------------------------------------------


@pytest.mark.parametrize("client", ["lean", "slixmpp"])
def test_rooms_create_join_chat_refuse_and_leave(server: XmppServer, client: str) -> None:
    first = next(_helper_ids)
    server.register(first, first + 3)
    room = f"helpers{first}{client}@{server.muc_domain}"
    closed = f"closed{first}{client}@{server.muc_domain}"
    before = counters("xmpp.muc.messages.sent", "xmpp.muc.messages.received", "xmpp.muc.joins")

    async def go() -> None:
        users = [await xmpp.connect(first + i, **kw(server, client)) for i in range(4)]
        try:
            for user in users:
                await user.send_presence()
            assert not await muc.exists(users[0], room)
            owner = await muc.create(users[0], room, "owner", timeout_ms=5000)
            assert owner.created and await muc.exists(users[1], room)
            guest = await muc.join(users[1], room, "guest", timeout_ms=5000)
            assert not guest.created and guest.presences_at_join == 1
            await owner.wait_occupants(2, timeout_ms=5000)
            assert owner.occupants == guest.occupants == {"owner", "guest"}
            owner.send("hello")
            guest.send()
            for me in (owner, guest):
                await me.wait_received(1, timeout_ms=5000, echoes=1)
                assert (me.received, me.echoes) == (1, 1)
            with pytest.raises(muc.MucError, match="the nick is already taken") as taken:
                await muc.join(users[2], room, "owner", timeout_ms=5000)
            assert taken.value.condition == "conflict"
            # Members only: a stranger is refused, and the error says why.
            members = await muc.create(
                users[2], closed, "boss", config={"muc#roomconfig_membersonly": True}
            )
            with pytest.raises(muc.MucError, match="members-only") as refused:
                await muc.join(users[3], closed, "stranger", timeout_ms=5000)
            assert refused.value.condition == "registration-required"
            await members.leave(timeout_ms=5000)
            # A wait for a message that never comes names what it waited for.
            seen = await muc.join(users[3], room, "watcher", consume=False, timeout_ms=5000)
            with pytest.raises(xmpp.ReceiveTimeout, match=r"no groupchat message \(room="):
                await users[3].wait_for(pred.groupchat(room, nick="nobody"), timeout_ms=300)
            await seen.leave(timeout_ms=5000)
            await guest.leave(timeout_ms=5000)
            await owner.wait_occupants(1, timeout_ms=5000)
            assert not guest.joined and owner.occupant_count == 1
            await owner.leave(timeout_ms=5000)
        finally:
            for user in users:
                await user.stop()

    asyncio.run(go())
    assert grown(before) == {
        "xmpp.muc.messages.sent": 2,
        "xmpp.muc.messages.received": 4,  # each message to both occupants
        "xmpp.muc.joins": 4,  # the refused ones do not count
    }


@pytest.mark.parametrize("client", ["lean", "slixmpp"])
def test_pubsub_nodes_items_and_errors(server: XmppServer, client: str) -> None:
    first = next(_helper_ids)
    server.register(first, first + 2)
    service = server.pubsub_domain
    node = f"helpers{first}{client}"
    before = counters("xmpp.pubsub.items.received", "xmpp.pubsub.items.published")

    async def go() -> None:
        owner, *readers = [await xmpp.connect(first + i, **kw(server, client)) for i in range(3)]
        try:
            for user in (owner, *readers):
                await user.send_presence()
            await pubsub.create_node(owner, service, node)
            watching = [pubsub.Items(r, service, node) for r in readers]
            for reader in readers:
                assert await pubsub.subscribe(reader, service, node) == "subscribed"
            ids = [await pubsub.publish(owner, service, node) for _ in range(3)]
            assert len(set(ids)) == 3 and all(ids)
            for items in watching:
                await items.wait(3, timeout_ms=5000)
            assert [i.received for i in watching] == [3, 3]
            assert len(await pubsub.items(owner, service, node)) == 3
            for reader in readers:
                await pubsub.unsubscribe(reader, service, node)
            await pubsub.delete_node(owner, service, node)
            with pytest.raises(xmpp.IqError, match="item-not-found") as missing:
                await pubsub.items(owner, service, node)
            assert missing.value.condition == "item-not-found"
            if server.kind == "prosody":
                with pytest.raises(xmpp.IqError, match="pubsub_publish request") as gone:
                    await pubsub.publish(owner, service, node)
                assert gone.value.condition == "item-not-found"
            else:  # ejabberd creates a node a local user publishes to
                await pubsub.publish(owner, service, node)
                await pubsub.delete_node(owner, service, node)
        finally:
            for user in (owner, *readers):
                await user.stop()

    asyncio.run(go())
    published = 3 if server.kind == "prosody" else 4
    assert grown(before) == {
        "xmpp.pubsub.items.received": 6,
        "xmpp.pubsub.items.published": published,
    }


# -- the scenarios through the runner -------------------------------------------------------

MUC_USERS, ROOM_SIZE, MUC_MESSAGES = 200, 10, 3


def test_muc_scenario_every_message_reaches_every_occupant(server: XmppServer) -> None:
    first = 100_001 if server.kind == "ejabberd" else 110_001
    last = first + MUC_USERS - 1
    server.register(first, last)
    before = counters(
        "xmpp.muc.messages.sent", "xmpp.muc.messages.received", "xmpp.muc.rooms.created",
        "xmpp.muc.joins", "muc.expected", "muc.received", "muc.incomplete", "muc.unfilled",
        "users.failed", "xmpp.logins.failed",
    )  # fmt: skip
    settings = scenario_settings(
        server,
        users_per_room=ROOM_SIZE,
        rooms_per_user=1,
        messages_per_user=MUC_MESSAGES,
        message_interval=300,
        join_timeout=60_000,
        receive_timeout=20_000,
        muc_room_prefix=f"it{next(_runs)}_",
    )
    timed = metrics.histogram("xmpp.muc.ttd_ms").count
    status = asyncio.run(run_scenario(settings, first, last, deadline_s=100, name="xmpp_muc"))
    assert status["users"]["finished"] == MUC_USERS
    sent = MUC_USERS * MUC_MESSAGES
    # Every delivery was timed: the stamp survives the room on this server.
    assert metrics.histogram("xmpp.muc.ttd_ms").count - timed == sent * ROOM_SIZE
    assert grown(before) == {
        "xmpp.muc.messages.sent": sent,
        # Every message reaches every occupant of its room, its sender's echo included.
        "xmpp.muc.messages.received": sent * ROOM_SIZE,
        "xmpp.muc.rooms.created": MUC_USERS // ROOM_SIZE,
        "xmpp.muc.joins": MUC_USERS,
        "muc.expected": sent * (ROOM_SIZE - 1),
        "muc.received": sent * (ROOM_SIZE - 1),
        "muc.incomplete": 0,
        "muc.unfilled": 0,
        "users.failed": 0,
        "xmpp.logins.failed": 0,
    }


def test_muc_scenario_with_two_rooms_per_user(ejabberd_tls_server: XmppServer) -> None:
    """Rooms of 5, each user in 2: groups of 10 ids, 4 rooms each."""
    server, first, users = ejabberd_tls_server, 120_001, 40
    server.register(first, first + users - 1)
    before = counters(
        "xmpp.muc.messages.received", "muc.received", "muc.incomplete", "muc.unfilled"
    )
    settings = scenario_settings(
        server,
        users_per_room=5,
        rooms_per_user=2,
        messages_per_user=2,
        message_interval=200,
        muc_room_prefix=f"it{next(_runs)}_",
    )
    asyncio.run(run_scenario(settings, first, first + users - 1, deadline_s=60, name="xmpp_muc"))
    sent = users * 2 * 2  # two messages in each of two rooms
    assert grown(before) == {
        "xmpp.muc.messages.received": sent * 5,
        "muc.received": sent * 4,
        "muc.incomplete": 0,
        "muc.unfilled": 0,
    }


PUBSUB_USERS, SUBSCRIBERS, ITEMS = 110, 10, 5


@pytest.mark.parametrize("mode", ["service", "pep"])
def test_pubsub_scenario_every_item_reaches_every_subscriber(server: XmppServer, mode: str) -> None:
    first = {"ejabberd": 130_001, "prosody": 140_001}[server.kind] + (1000 if mode == "pep" else 0)
    users = PUBSUB_USERS if mode == "service" else 2 * (SUBSCRIBERS + 1)
    last = first + users - 1
    server.register(first, last)
    groups = users // (SUBSCRIBERS + 1)
    before = counters(
        "xmpp.pubsub.items.published", "xmpp.pubsub.items.received", "xmpp.pubsub.nodes.created",
        "xmpp.pubsub.nodes.deleted", "pubsub.expected", "pubsub.received", "pubsub.incomplete",
        "pubsub.groups", "pubsub.groups.partial", "pubsub.unready", "users.failed",
        "pubsub.cleanup_refused",
    )  # fmt: skip
    settings = scenario_settings(
        server,
        subscribers_per_node=SUBSCRIBERS,
        items_per_publisher=ITEMS,
        publish_interval=200,
        pubsub_mode=mode,
        pubsub_node_prefix=f"it{next(_runs)}_",
        ready_timeout=60_000,
        receive_timeout=20_000,
    )
    timed = metrics.histogram("xmpp.pubsub.ttd_ms").count
    status = asyncio.run(run_scenario(settings, first, last, deadline_s=100, name="xmpp_pubsub"))
    assert status["users"]["finished"] == users
    delivered = groups * SUBSCRIBERS * ITEMS
    # ejabberd also sends a PEP publisher its own items.
    own = groups * ITEMS if mode == "pep" and server.kind == "ejabberd" else 0
    # Every item was timed per receiver: this server's event format keeps the stamp.
    assert metrics.histogram("xmpp.pubsub.ttd_ms").count - timed == delivered + own
    grew = grown(before)
    # ejabberd may refuse an owner's delete under load: counted apart, every node is gone
    # or counted.
    refused = grew.pop("pubsub.cleanup_refused")
    assert refused == 0 or server.kind == "ejabberd"
    grew["xmpp.pubsub.nodes.deleted"] += refused
    assert grew == {
        "xmpp.pubsub.items.published": groups * ITEMS,
        "xmpp.pubsub.items.received": delivered + own,
        "xmpp.pubsub.nodes.created": groups,
        "xmpp.pubsub.nodes.deleted": groups,
        "pubsub.expected": delivered,
        "pubsub.received": delivered,
        "pubsub.incomplete": 0,
        "pubsub.groups": groups,
        "pubsub.groups.partial": 0,
        "pubsub.unready": 0,
        "users.failed": 0,
    }
