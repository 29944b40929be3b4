"""Roster, subscriptions, presence, MAM lookups, ping and unregistration without a server: an
online lean client whose far end is a script answering each stanza it sends."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amoc import metrics, xmpp
from amoc.config import Config, amoc_config
from amoc.errors import ConfigError, ScenarioError
from amoc.runner import Controller
from amoc.scenario import load
from amoc.xmpp import account, mam, ping, roster, stamp, stanza
from amoc.xmpp.base import State
from amoc.xmpp.parser import Element
from amoc.xmpp.router import to_element
from tests.unit.test_xmpp_lean import CLOSE, FEATURES, HEADER, Script, lean, read_until, with_peer

pytestmark = pytest.mark.unit

ME = "user_1@localhost"
BOB = "user_2@localhost"
ROSTER = "jabber:iq:roster"
Answer = Callable[[Element], list[str]]


class Peer:
    """A transport whose far end is `answer`: each stanza the client writes is kept, and
    what `answer` returns for it reaches the client on the next loop turn, in order."""

    def __init__(self, client: xmpp.LeanClient, answer: Answer) -> None:
        self.client = client
        self.answer = answer
        self.sent: list[Element] = []

    def write(self, data: bytes) -> None:
        if data == b"</stream:stream>":  # the client closes: so does the far end
            asyncio.get_running_loop().call_soon(self.client.connection_lost, None)
            return
        element = to_element(data.decode())
        self.sent.append(element)
        replies = self.answer(element)
        if replies:
            asyncio.get_running_loop().call_soon(self._deliver, replies)

    def _deliver(self, replies: list[str]) -> None:
        for text in replies:
            self.client._online(to_element(text))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def online(answer: Answer, **env: str) -> tuple[xmpp.LeanClient, Peer]:
    config = xmpp.settings(Config(environ={f"AMOC_{k.upper()}": v for k, v in env.items()}))
    client = xmpp.LeanClient(1, config, "user_1")
    peer = Peer(client, answer)
    client._transport = peer  # type: ignore[assignment]
    client._state = State.ONLINE
    client.bound_jid = f"{ME}/amoc"
    return client, peer


def silent(_e: Element) -> list[str]:
    return []


def count(name: str) -> float:
    return metrics.counter(name).value


def hist(name: str) -> int:
    return metrics.histogram(name).count


def result(e: Element, payload: str = "") -> str:
    return stanza.iq_result(None, e.get("id"), payload)


def error(e: Element, condition: str) -> str:
    return stanza.iq_error(None, e.get("id"), condition)


# -- the roster -----------------------------------------------------------------------------

ITEMS = (
    f"<item jid='{BOB}' subscription='both' name='Bob'><group>friends</group><group>g2</group>"
    "</item><item jid='carol@localhost/phone' subscription='none' ask='subscribe'/>"
)


def versioning_server(e: Element) -> list[str]:
    query = e.find(f"{ROSTER} query")
    if e.get("type") != "get" or query is None:
        return [result(e)]
    if query.get("ver") == "v7":
        return [result(e)]  # unchanged since v7: an empty result
    return [result(e, f"<query xmlns='{ROSTER}' ver='v7'>{ITEMS}</query>")]


def test_get_parses_items_and_a_versioned_get_of_an_unchanged_roster_keeps_them() -> None:
    async def run() -> None:
        client, peer = online(versioning_server)
        sizes = hist("xmpp.roster.items")
        unchanged = count("xmpp.roster.unchanged")
        first = await roster.get(client)
        assert peer.sent[-1].find(f"{ROSTER} query").get("ver", "absent") == ""  # type: ignore[union-attr]
        assert first.version == "v7" and not first.unchanged and len(first) == 2
        bob = first.get(BOB + "/any")
        assert bob == roster.Item(BOB, "both", "Bob", False, ("friends", "g2"))
        carol = first.get("carol@localhost")
        assert carol is not None and carol.ask and carol.subscription == "none"
        assert "carol@localhost/other" in first and "dave@localhost" not in first
        again = await roster.get(client, first)
        assert peer.sent[-1].find(f"{ROSTER} query").get("ver") == "v7"  # type: ignore[union-attr]
        assert again.unchanged and again.items == first.items and again.version == "v7"
        plain = await roster.get(client, versioning=False)
        assert "ver" not in peer.sent[-1].find(f"{ROSTER} query").attrs  # type: ignore[union-attr]
        assert len(plain) == 2
        assert hist("xmpp.roster.items") == sizes + 2
        assert count("xmpp.roster.unchanged") == unchanged + 1

    asyncio.run(run())


def test_an_empty_answer_to_an_unversioned_get_is_an_error() -> None:
    async def run() -> None:
        client, _peer = online(lambda e: [result(e)])
        with pytest.raises(xmpp.XmppError, match="without a roster"):
            await roster.get(client, versioning=False)

    asyncio.run(run())


def test_add_sends_name_and_groups_and_remove_tolerates_a_missing_item() -> None:
    gone: set[str] = set()

    def server(e: Element) -> list[str]:
        item = e.find(f"{ROSTER} query").find(f"{ROSTER} item")  # type: ignore[union-attr]
        assert item is not None
        if item.get("subscription") == "remove":
            if item.get("jid") in gone:
                return [error(e, "item-not-found")]
            gone.add(item.get("jid"))
        return [result(e)]

    async def run() -> None:
        client, peer = online(server)
        await roster.add(client, BOB + "/res", name="B & b", groups=("x",))
        item = peer.sent[-1].find(f"{ROSTER} query").find(f"{ROSTER} item")  # type: ignore[union-attr]
        assert item is not None and (item.get("jid"), item.get("name")) == (BOB, "B & b")
        assert [g.text for g in item.children] == ["x"]
        assert await roster.remove(client, BOB) is True
        assert await roster.remove(client, BOB) is False
        with pytest.raises(xmpp.IqError) as caught:
            await roster.remove(client, BOB, missing_ok=False)
        assert caught.value.condition == "item-not-found"

    asyncio.run(run())


def test_a_live_roster_follows_the_pushes_between_versioned_gets() -> None:
    async def run() -> None:
        client, peer = online(versioning_server)
        live = await roster.follow(client)
        assert len(live.roster) == 2 and live.roster.version == "v7"
        client._online(
            to_element(
                f"<iq type='set' id='p1'><query xmlns='{ROSTER}' ver='v7'>"
                f"<item jid='dave@localhost' subscription='to'/>"
                f"<item jid='{BOB}' subscription='remove'/></query></iq>"
            )
        )
        client._online(
            to_element(
                f"<iq type='set' id='p2' from='mallory@localhost'><query xmlns='{ROSTER}'>"
                "<item jid='eve@localhost'/></query></iq>"
            )
        )  # not from our server: not a push
        assert sorted(live.roster.items) == ["carol@localhost", "dave@localhost"]
        assert peer.sent[-2].get("id") == "p1" and peer.sent[-2].get("type") == "result"
        refreshed = await live.refresh()  # v7 again: unchanged, the pushes kept
        assert refreshed.unchanged and sorted(refreshed.items) == sorted(live.roster.items)
        assert "dave@localhost" in refreshed
        live.close()
        assert not client._handlers

    asyncio.run(run())


def test_pushes_are_recognised_with_their_items() -> None:
    push = to_element(f"<iq type='set' id='p'><query xmlns='{ROSTER}'>{ITEMS}</query></iq>")
    assert roster.pushed()(push) and roster.pushed(BOB)(push)
    assert not roster.pushed("dave@localhost")(push)
    assert "dave@localhost" in roster.pushed("dave@localhost").name
    assert [i.jid for i in roster.pushed_items(push)] == [BOB, "carol@localhost"]


# -- subscriptions --------------------------------------------------------------------------


def contact(answer: str, presence: bool = True) -> Answer:
    def server(e: Element) -> list[str]:
        if e.get("type") != "subscribe":
            return []
        to = e.get("to")
        replies = [f"<presence from='{to}' to='{ME}' type='{answer}'/>"]
        if presence:
            replies.append(f"<presence from='{to}/phone' to='{ME}'/>")
        return replies

    return server


def test_subscribe_waits_for_subscribed_and_the_contacts_presence() -> None:
    async def run() -> None:
        client, peer = online(contact("subscribed"))
        done = count("xmpp.subscriptions.completed")
        times = hist("xmpp.subscriptions.time_ms")
        available = count("xmpp.presences.received.available")
        seen: list[Element] = []
        client.add_handler(xmpp.pred.presence(), lambda e: seen.append(e))
        elapsed = await roster.subscribe(client, BOB + "/whatever", timeout_ms=2000)
        assert peer.sent[-1].get("to") == BOB and peer.sent[-1].get("type") == "subscribe"
        assert 0 <= elapsed < 2000
        assert count("xmpp.subscriptions.completed") == done + 1
        assert hist("xmpp.subscriptions.time_ms") == times + 1
        assert count("xmpp.presences.received.available") == available + 1
        # The answer is taken; the contact's presence goes on to other handlers.
        assert [e.get("type", "available") for e in seen] == ["subscribed", "available"]
        assert client._handlers is not None and len(client._handlers) == 1  # its own is gone

    asyncio.run(run())


def test_a_refused_or_unanswered_subscription_says_so() -> None:
    async def run() -> None:
        client, _peer = online(contact("unsubscribed"))
        refused = count("xmpp.subscriptions.refused")
        with pytest.raises(roster.SubscriptionRefused, match=f"{BOB} refused"):
            await roster.subscribe(client, BOB, timeout_ms=2000)
        assert count("xmpp.subscriptions.refused") == refused + 1
        quiet, _ = online(silent)
        timeouts = count("xmpp.subscriptions.timeouts")
        with pytest.raises(xmpp.ReceiveTimeout, match=f"no 'subscribed' from {BOB} within 50"):
            await roster.subscribe(quiet, BOB, timeout_ms=50)
        offline, _ = online(contact("subscribed", presence=False))
        with pytest.raises(xmpp.ReceiveTimeout, match="no available presence after 'subscribed'"):
            await roster.subscribe(offline, BOB, timeout_ms=100)
        assert await roster.subscribe(offline, BOB, available=False, timeout_ms=2000) >= 0
        assert count("xmpp.subscriptions.timeouts") == timeouts + 2
        assert not quiet._handlers and not offline._handlers

    asyncio.run(run())


def test_answers_and_presence_updates_are_sent_as_asked() -> None:
    client, peer = online(silent)
    roster.approve(client, BOB + "/x")
    roster.cancel(client, BOB)
    roster.unsubscribe(client, BOB)
    sent = count("xmpp.presences.sent")
    roster.presence(client, status="busy", show="dnd", stamped=True)
    roster.presence(client, to=BOB + "/x", priority=3)
    roster.unavailable(client)
    kinds = [(e.get("type"), e.get("to")) for e in peer.sent]
    assert kinds == [
        ("subscribed", BOB),
        ("unsubscribed", BOB),
        ("unsubscribe", BOB),
        ("", ""),
        ("", BOB + "/x"),
        ("unavailable", ""),
    ]
    update = peer.sent[3]
    assert update.findtext("jabber:client status") == "busy"
    assert update.find(f"{stamp.NAMESPACE} stamp") is not None
    assert peer.sent[4].findtext("jabber:client priority") == "3"
    assert count("xmpp.presences.sent") == sent + 3


def test_received_presences_are_counted_per_kind_and_stamped_updates_timed() -> None:
    client, _peer = online(silent)
    names = ("available", "unavailable", "probe", "other")
    before = {n: count(f"xmpp.presences.received.{n}") for n in names}
    total = count("xmpp.presences.received")
    ttd = hist("xmpp.presences.ttd_ms")
    mark = stamp.encode(stamp.now_us() - 2000)
    for text in (
        f"<presence from='{BOB}/a'><status>s</status>{mark}</presence>",
        f"<presence from='{BOB}/a'>{mark}<delay xmlns='urn:xmpp:delay' stamp='x'/></presence>",
        f"<presence from='{BOB}/a' type='unavailable'>{mark}</presence>",
        f"<presence from='{BOB}/a' type='probe'/>",
        f"<presence from='{BOB}/a' type='made-up'/>",
    ):
        client._online(to_element(text))
    after = {n: count(f"xmpp.presences.received.{n}") - before[n] for n in names}
    assert after == {"available": 2, "unavailable": 1, "probe": 1, "other": 1}
    assert count("xmpp.presences.received") == total + 5
    assert hist("xmpp.presences.ttd_ms") == ttd + 1  # not the delayed one, not unavailable


# -- MAM ------------------------------------------------------------------------------------

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"


def archive(size: int, complete_flag: bool = True, sender: str = "") -> Answer:
    """A MAM service with `size` messages (ids m0..), paging by RSM like Prosody."""
    ids = [f"m{i}" for i in range(size)]

    def server(e: Element) -> list[str]:
        query = e.find(f"{MAM} query")
        if query is None:
            return []
        rsm = query.find(f"{RSM} set")
        limit = int(rsm.findtext(f"{RSM} max")) if rsm is not None else size
        after = rsm.findtext(f"{RSM} after") if rsm is not None else ""
        if after and after not in ids:
            return [error(e, "item-not-found")]
        begin = ids.index(after) + 1 if after else 0
        page = ids[begin : begin + limit]
        qid = query.get("queryid")
        frm = f" from='{sender}'" if sender else ""
        replies = [
            f"<message to='{ME}/amoc'{frm}><result xmlns='{MAM}' queryid='{qid}' id='{i}'>"
            "<forwarded xmlns='urn:xmpp:forward:0'>"
            "<delay xmlns='urn:xmpp:delay' stamp='2026-12-02T04:33:13Z'/>"
            f"<message xmlns='jabber:client' from='{BOB}/amoc' to='{ME}/amoc' type='chat'>"
            f"<body>body {i}</body>{stamp.encode(1_700_000_000_000_000 + n)}</message>"
            "</forwarded></result></message>"
            for n, i in enumerate(page, begin)
        ]
        done = begin + limit >= size
        complete = " complete='true'" if done and complete_flag else ""
        rsm_out = f"<first>{page[0]}</first><last>{page[-1]}</last>" if page else ""
        replies.append(
            result(e, f"<fin xmlns='{MAM}'{complete}><set xmlns='{RSM}'>{rsm_out}"
                      f"<count>{size}</count></set></fin>")
        )  # fmt: skip
        return replies

    return server


def test_a_lookup_pages_through_the_archive_until_it_is_complete() -> None:
    async def run() -> None:
        client, peer = online(archive(7))
        pages, messages = count("xmpp.mam.pages"), count("xmpp.mam.messages")
        lookups, iqs = hist("xmpp.mam.lookup_time_ms"), hist("xmpp.iq.mam_query.time_ms")
        began = datetime(2026, 12, 2, 4, 0, 0, 250_000, tzinfo=UTC)
        found = await mam.lookup(client, with_jid=BOB, start=began, page_size=3)
        assert [m.body for m in found.messages] == [f"body m{i}" for i in range(7)]
        assert [m.id for m in found.messages] == [f"m{i}" for i in range(7)]
        first = found.messages[0]
        assert (first.sender, first.to, first.stamp) == (
            f"{BOB}/amoc",
            f"{ME}/amoc",
            "2026-12-02T04:33:13Z",
        )
        assert first.sent_us == 1_700_000_000_000_000 and first.message.name == "message"
        assert (found.pages, found.complete, found.count) == (3, True, 7)
        assert found.time_ms >= 0
        queries = [e.find(f"{MAM} query") for e in peer.sent]
        afters = [q.find(f"{RSM} set").findtext(f"{RSM} after") for q in queries]  # type: ignore[union-attr]
        assert afters == ["", "m2", "m5"]
        form = {
            f.get("var"): f.findtext("jabber:x:data value")
            for f in queries[0].find("jabber:x:data x").children  # type: ignore[union-attr]
        }
        assert form["with"] == BOB and form["start"] == "2026-12-02T04:00:00.250000Z"
        assert count("xmpp.mam.pages") == pages + 3
        assert count("xmpp.mam.messages") == messages + 7
        assert hist("xmpp.mam.lookup_time_ms") == lookups + 1
        assert hist("xmpp.iq.mam_query.time_ms") == iqs + 3
        assert not client._handlers and client.buffered() == []  # nothing left behind

    asyncio.run(run())


def test_a_lookup_stops_at_max_pages_and_at_an_empty_page() -> None:
    async def run() -> None:
        client, _peer = online(archive(10))
        truncated = count("xmpp.mam.truncated")
        found = await mam.lookup(client, page_size=2, max_pages=3)
        assert (len(found.messages), found.pages, found.complete) == (6, 3, False)
        assert count("xmpp.mam.truncated") == truncated + 1
        # A server that never says complete: the empty page after the last ends it.
        endless, _ = online(archive(4, complete_flag=False))
        found = await mam.lookup(endless, page_size=2)
        assert (len(found.messages), found.pages, found.complete) == (4, 3, True)
        empty, _ = online(archive(0))
        found = await mam.lookup(empty, page_size=5)
        assert (found.messages, found.pages, found.complete) == ([], 1, True)

    asyncio.run(run())


def test_a_bad_rsm_id_is_item_not_found_and_foreign_results_are_not_taken() -> None:
    async def run() -> None:
        client, _peer = online(archive(3))
        errors = count("xmpp.iq.mam_query.errors")
        with pytest.raises(xmpp.IqError) as caught:
            await mam.query(client, page_size=2, after="no-such-id")
        assert caught.value.condition == "item-not-found" and caught.value.kind == "mam_query"
        assert count("xmpp.iq.mam_query.errors") == errors + 1
        spoofed, _ = online(archive(2, sender="mallory@localhost"))
        page = await mam.query(spoofed, page_size=5)  # results from elsewhere stay out
        assert page.messages == [] and page.fin.complete and page.fin.count == 2
        assert len(spoofed.buffered()) == 2
        own, _ = online(archive(2, sender=ME))
        assert len((await mam.query(own)).messages) == 2

    asyncio.run(run())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "2026-01-02T03:04:05.000006Z"),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000000Z"),
        (0, "1970-01-01T00:00:00.000000Z"),
        (1.5, "1970-01-01T00:00:01.500000Z"),
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"),
    ],
)
def test_times_are_xep_0082(value: mam.Time, text: str) -> None:
    assert mam.timestamp(value) == text


def test_bad_query_arguments_are_refused_naming_them() -> None:
    async def run() -> None:
        client, _peer = online(archive(1))
        with pytest.raises(xmpp.XmppError, match="page_size must be an integer >= 1, got 0"):
            await mam.query(client, page_size=0)
        with pytest.raises(xmpp.XmppError, match="max_pages must be an integer >= 1"):
            await mam.lookup(client, max_pages=0)
        with pytest.raises(TypeError, match="expected a datetime"):
            mam.timestamp(True)
        with pytest.raises(ValueError, match="not a time"):
            mam.timestamp(float("nan"))

    asyncio.run(run())


# -- ping and unregister --------------------------------------------------------------------


def test_ping_returns_the_round_trip_recorded_once_per_ping() -> None:
    async def run() -> None:
        client, peer = online(lambda e: [result(e)])
        before = hist("xmpp.iq.ping.time_ms")
        rtt = await ping.ping(client)
        assert 0 <= rtt < 1000 and peer.sent[-1].find("urn:xmpp:ping ping") is not None
        assert peer.sent[-1].get("to", "") == ""  # the user's own server
        await ping.ping(client, to=BOB + "/amoc")
        assert peer.sent[-1].get("to") == BOB + "/amoc"
        assert hist("xmpp.iq.ping.time_ms") == before + 2
        refusing, _ = online(lambda e: [error(e, "service-unavailable")])
        with pytest.raises(xmpp.IqError, match="service-unavailable"):
            await ping.ping(refusing, to=BOB)
        assert hist("xmpp.iq.ping.time_ms") == before + 3  # an answer all the same

    asyncio.run(run())


def test_unregister_counts_the_outcome_and_stops_the_client() -> None:
    async def run() -> None:
        ok = count("xmpp.unregistrations.ok")
        client, peer = online(lambda e: [result(e)] if e.name == "iq" else [])
        client._online_counted = False
        await account.unregister(client, timeout_ms=2000)
        assert peer.sent[0].find("jabber:iq:register query").children[0].name == "remove"  # type: ignore[union-attr]
        assert not client.connected and count("xmpp.unregistrations.ok") == ok + 1
        refused = count("xmpp.unregistrations.failed.not-allowed")
        denied, _ = online(lambda e: [error(e, "not-allowed")] if e.name == "iq" else [])
        denied._online_counted = False
        with pytest.raises(xmpp.IqError, match="not-allowed"):
            await account.unregister(denied)
        assert not denied.connected
        assert count("xmpp.unregistrations.failed.not-allowed") == refused + 1
        quiet, _ = online(silent)
        quiet._online_counted = False
        with pytest.raises(xmpp.ReceiveTimeout):
            await account.unregister(quiet, timeout_ms=50)
        assert not quiet.connected

    asyncio.run(run())


# -- the scenarios' parameters ----------------------------------------------------------------

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize(
    ("name", "settings", "error"),
    [
        ("xmpp_presence_roster", {"presence_updates": -1}, "'presence_updates' = -1.*>= 0"),
        ("xmpp_presence_roster", {"subscription_timeout": 0}, "'subscription_timeout'.*> 0"),
        ("xmpp_presence_roster", {"pair_timeout": "soon"}, "'pair_timeout'.*number"),
        ("xmpp_mam_lookup", {"page_size": 0}, "'page_size' = 0.*between 1 and 1000"),
        ("xmpp_mam_lookup", {"max_pages": 1.5}, "'max_pages'.*integer"),
        (
            "xmpp_mam_lookup",
            {"messages_per_user": 20, "page_size": 5, "max_pages": 3},
            "page_size \\* max_pages = 15 messages, fewer than the 2 \\* messages_per_user = 40",
        ),
        ("xmpp_registration", {"registrations_per_minute": 0}, "'registrations_per_minute'"),
        ("xmpp_registration", {"registration_prefix": "Reg User"}, "'registration_prefix'.*lower"),
        ("xmpp_registration", {"unregister": "yes"}, "'unregister'.*true or false"),
        ("xmpp_registration", {"registration_prefix": "user_"}, "would remove the pre-registered"),
        ("xmpp_registration", {"xmpp_client": "slixmpp"}, "needs the lean client"),
    ],
)
def test_a_bad_scenario_parameter_is_refused_before_any_user_starts(
    name: str, settings: dict[str, object], error: str
) -> None:
    async def run() -> None:
        ctl = Controller(scenario_dirs=[SCENARIOS])
        try:
            with pytest.raises((ConfigError, ScenarioError), match=error):
                await ctl.do(name, 1, 2, settings=settings)
            assert ctl.status().users.started == 0
        finally:
            await ctl.close()
            for key in settings:
                amoc_config.unset(key)

    asyncio.run(run())


def test_the_scenarios_declare_their_parameters_and_the_xmpp_ones() -> None:
    wanted = {
        "xmpp_presence_roster": {"presence_updates", "presence_interval", "pair_timeout"},
        "xmpp_mam_lookup": {"messages_per_user", "page_size", "max_pages", "receive_timeout"},
        "xmpp_registration": {"registrations_per_minute", "registration_prefix", "unregister"},
    }
    for name, params in wanted.items():
        scenario = load(name, [SCENARIOS])
        names = {p.name for p in scenario.params}
        assert params | {"xmpp_port", "xmpp_tls", "xmpp_client"} <= names, name
        assert all(p.description for p in scenario.params), name
        assert scenario.module.__doc__ and "Metrics:" in scenario.module.__doc__
    mam_lookup = load("xmpp_mam_lookup", [SCENARIOS]).module
    assert [mam_lookup.neighbour(i) for i in range(1, 5)] == [2, 1, 4, 3]


# -- in-band registration on a scripted stream -------------------------------------------------

REGISTER_FEATURES = FEATURES.replace(
    b"</stream:features>",
    b"<register xmlns='http://jabber.org/features/iq-register'/></stream:features>",
)


def registering(answer: str) -> Script:
    """A server that answers the registration with `answer` ('' for a result), then, unless
    it refused, takes a PLAIN login (bind without a session)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(HEADER + REGISTER_FEATURES)
        request = await read_until(reader, b"</iq>")
        assert b"jabber:iq:register" in request and b"<username>user_1</username>" in request
        assert b"<password>password_1</password>" in request
        found = re.search(rb"id=['\"]([^'\"]+)['\"]", request)
        assert found is not None
        ident = found.group(1)
        if answer:
            writer.write(
                b"<iq type='error' id='" + ident + b"'><error type='cancel'><" + answer.encode()
                + b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            )  # fmt: skip
            if answer != "conflict":
                await read_until(reader, CLOSE)
                return
        else:
            writer.write(b"<iq type='result' id='" + ident + b"'/>")
        await read_until(reader, b"</auth>")
        writer.write(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        await read_until(reader, b"<stream:stream")
        writer.write(
            HEADER + b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
            b"</stream:features>"
        )
        await read_until(reader, b"</iq>")
        writer.write(
            b"<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<jid>user_1@localhost/amoc</jid></bind></iq>"
        )
        await read_until(reader, CLOSE)
        writer.write(CLOSE)

    return script


@pytest.mark.parametrize("answer", ["", "conflict"])
def test_registration_then_login_on_the_same_stream(answer: str) -> None:
    name = "xmpp.registrations.ok" if not answer else f"xmpp.registrations.failed.{answer}"
    before = count(name)
    timed = hist("xmpp.registrations.time_ms")

    async def body(port: int) -> bool:
        client = await lean(port, register=True)
        try:
            return client.connected
        finally:
            await client.stop()

    assert asyncio.run(with_peer(registering(answer), body)) is True
    assert count(name) == before + 1 and hist("xmpp.registrations.time_ms") == timed + 1


def test_a_refused_registration_is_a_login_error_naming_the_condition() -> None:
    before = count("xmpp.registrations.failed.not-acceptable")

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port, register=True)
        return caught.value

    err = asyncio.run(with_peer(registering("not-acceptable"), body))
    assert err.reason is xmpp.Reason.REGISTRATION and "refused: not-acceptable" in str(err)
    assert count("xmpp.registrations.failed.not-acceptable") == before + 1


def test_registration_before_starttls_says_to_set_xmpp_tls() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(
            HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
            b"<required/></starttls></stream:features>"
        )
        await read_until(reader, CLOSE)

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port, register=True)
        return caught.value

    err = asyncio.run(with_peer(script, body))
    assert err.reason is xmpp.Reason.REGISTRATION and "set xmpp_tls = starttls" in str(err)
