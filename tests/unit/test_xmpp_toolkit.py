"""The stanza toolkit without a server: builders, predicates, the parser on feature stanzas,
routing (wait_for, handlers, iq, default answers) and the feature figures of the reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from amoc import metrics, xmpp
from amoc.config import Config
from amoc.report import figures, live
from amoc.report import html as report_html
from amoc.xmpp import pred, stamp, stanza
from amoc.xmpp.base import State
from amoc.xmpp.parser import Element, StreamParser
from amoc.xmpp.router import iq_kind, to_element

pytestmark = pytest.mark.unit

ROOM = "room1@conference.localhost"


def el(text: str) -> Element:
    return to_element(text)


# -- builders -------------------------------------------------------------------------------


def test_message_and_presence_builders_escape_and_stamp() -> None:
    m = el(stanza.message("a@b/c'd", "x < y & 'z'", id="m1"))
    assert m.tag == "jabber:client message"
    assert (m.get("to"), m.get("type"), m.get("id")) == ("a@b/c'd", "chat", "m1")
    assert m.findtext("jabber:client body") == "x < y & 'z'"
    sent = m.find(f"{stamp.NAMESPACE} stamp")
    assert sent is not None and stamp.decode_value(sent.get("us"))
    assert el(stanza.message("a@b", "hi", stamped=False)).find(f"{stamp.NAMESPACE} stamp") is None
    assert stanza.presence() == "<presence/>"
    p = el(stanza.presence("x@y", type="subscribe", show="dnd", status="<busy>", priority=5))
    assert p.get("type") == "subscribe" and p.findtext("jabber:client status") == "<busy>"
    assert p.findtext("jabber:client priority") == "5"


def test_iq_builders_carry_their_kind_and_take_the_id_at_send_time() -> None:
    request = stanza.roster_set("friend@localhost", name="F & G", groups=("g1",))
    assert request.kind == "roster_set" and request.type == "set"
    iq = el(request.xml("q7"))
    item = iq.find("jabber:iq:roster query").find("jabber:iq:roster item")  # type: ignore[union-attr]
    assert iq.get("id") == "q7" and item is not None
    assert (item.get("jid"), item.get("name")) == ("friend@localhost", "F & G")
    assert el(stanza.roster_remove("f@l").xml("1")).iter().__next__().get("type") == "set"
    with pytest.raises(ValueError, match="get or set"):
        stanza.iq("result")
    kinds = {
        stanza.ping().kind,
        stanza.register("u", "p").kind,
        stanza.disco_items("localhost").kind,
        stanza.muc_instant_room(ROOM).kind,
        stanza.pubsub_create("pubsub.localhost", "n").kind,
        stanza.pubsub_publish("pubsub.localhost", "n").kind,
        stanza.mam_query("q1").kind,
    }
    assert kinds == {
        "ping", "register", "disco_items", "muc_create", "pubsub_create", "pubsub_publish",
        "mam_query",
    }  # fmt: skip


def test_muc_pubsub_and_mam_builders_are_well_formed() -> None:
    join = el(stanza.muc_join(ROOM, "nick 1", password="s", history=3))
    assert join.get("to") == f"{ROOM}/nick 1"
    x = join.find(f"{stanza.MUC_NS} x")
    assert x is not None and x.find(f"{stanza.MUC_NS} history").get("maxstanzas") == "3"  # type: ignore[union-attr]
    publish = el(stanza.pubsub_publish("pubsub.localhost", "news", item_id="i1").xml("p1"))
    entries = [e for e in publish.iter() if e.name == "stamp"]
    assert len(entries) == 1 and publish.get("to") == "pubsub.localhost"
    created = el(stanza.pubsub_create(None, "n", {"pubsub#max_items": "10"}).xml("c"))
    assert created.get("to") == "" and any(
        e.get("var") == "pubsub#max_items" for e in created.iter()
    )
    query = el(
        stanza.mam_query(
            "q1", with_jid="u@l", max_results=50, after="a1", start="2026-01-01T00:00:00Z"
        ).xml("m")
    )
    names = [e.name for e in query.iter()]
    assert {"query", "x", "field", "set", "max", "after"} <= set(names)
    assert any(e.name == "value" and e.text == "u@l" for e in query.iter())
    assert iq_kind(el("<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>")) == "mam_query"
    assert iq_kind(el("<iq type='get'><vCard xmlns='vcard-temp'/></iq>")) == "vcard_temp"


def test_to_xml_round_trips_namespaces_and_escapes() -> None:
    text = (
        "<message to='a@b' type='groupchat'><body>1 &lt; 2 &amp; &quot;q&quot;</body>"
        "<x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></message>"
    )
    once = el(text)
    again = el(once.to_xml())
    assert again.to_xml() == once.to_xml()
    assert again.findtext("jabber:client body") == '1 < 2 & "q"'
    assert 'xmlns="http://jabber.org/protocol/muc#user"' in once.to_xml()
    with pytest.raises(xmpp.XmppError, match="not a well-formed stanza"):
        to_element("<message><body></message>")
    with pytest.raises(xmpp.XmppError, match="exactly one stanza"):
        to_element("<presence/><presence/>")


# -- predicates -----------------------------------------------------------------------------

MUC_SELF = (
    f"<presence from='{ROOM}/me' to='u@localhost/amoc'>"
    "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/>"
    "<status code='110'/><status code='201'/></x></presence>"
)
GROUPCHAT = f"<message from='{ROOM}/other' type='groupchat'><body>hi</body></message>"
SUBJECT = f"<message from='{ROOM}' type='groupchat'><subject>topic</subject></message>"
EVENT = (
    "<message from='pubsub.localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'>"
    "<items node='news'><item id='i1'><entry xmlns='urn:amoc:item'>"
    "<stamp xmlns='urn:amoc:ttd' us='1764041123456789'/></entry></item></items></event></message>"
)
MAM = (
    "<message><result xmlns='urn:xmpp:mam:2' queryid='q1' id='a1'>"
    "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='x'/>"
    "<message from='u@l/r' type='chat'><body>old</body></message></forwarded></result></message>"
)
IQ_ERROR = (
    "<iq type='error' id='e1'><error type='cancel'>"
    "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
    "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no such node</text></error></iq>"
)


@pytest.mark.parametrize(
    ("predicate", "matches", "misses"),
    [
        (pred.groupchat(ROOM), [GROUPCHAT], [SUBJECT, MUC_SELF, EVENT]),
        (pred.groupchat(ROOM, nick="other"), [GROUPCHAT], [GROUPCHAT.replace("other", "x")]),
        (pred.muc_subject(ROOM), [SUBJECT], [GROUPCHAT]),
        (pred.muc_self_presence(ROOM), [MUC_SELF], [MUC_SELF.replace("110", "100")]),
        (pred.muc_room_created(ROOM), [MUC_SELF], [MUC_SELF.replace("201", "200")]),
        (pred.muc_presence(ROOM, "me"), [MUC_SELF], [MUC_SELF.replace("/me", "/you")]),
        (pred.pubsub_event("news"), [EVENT], [EVENT.replace("news", "old"), GROUPCHAT]),
        (pred.mam_result("q1"), [MAM], [MAM.replace("q1", "q2"), EVENT]),
        (pred.error("item-not-found"), [IQ_ERROR], [IQ_ERROR.replace("item-not", "feature-not")]),
        (pred.iq(type="error", id="e1"), [IQ_ERROR], [GROUPCHAT]),
        (pred.presence("available", sender=ROOM), [MUC_SELF], [SUBJECT]),
        (pred.chat("u@l") | pred.groupchat(), [GROUPCHAT], [MAM]),
        (~pred.groupchat() & pred.message(), [SUBJECT, EVENT], [GROUPCHAT]),
        (pred.has_child("urn:xmpp:mam:2", "result"), [MAM], [EVENT]),
        (pred.sender("pubsub.localhost"), [EVENT], [MAM]),
    ],
)
def test_predicates_match_what_they_say(
    predicate: pred.Pred, matches: list[str], misses: list[str]
) -> None:
    for text in matches:
        assert predicate(el(text)), f"{predicate} should match {text}"
    for text in misses:
        assert not predicate(el(text)), f"{predicate} should not match {text}"


def test_predicates_are_named_for_what_they_wait_for() -> None:
    assert str(pred.groupchat(ROOM, nick="n")) == f"groupchat message (room={ROOM!r}, nick='n')"
    both = pred.presence("subscribed") & pred.sender("x@y")
    assert str(both) == "presence (type='subscribed') and from x@y"
    assert "or" in str(pred.chat() | pred.groupchat())


# -- the parser on feature stanzas ----------------------------------------------------------

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>"
)


class Keeper:
    def __init__(self) -> None:
        self.stanzas: list[str] = []
        self.parser = StreamParser(self)

    def stream_opened(self, attrs: dict[str, str]) -> None:
        pass

    def stanza(self, element: Element) -> None:
        self.stanzas.append(element.to_xml())

    def stream_closed(self) -> None:
        pass


def test_feature_stanzas_split_at_every_byte_parse_the_same() -> None:
    body = "".join((MUC_SELF, GROUPCHAT, SUBJECT, EVENT, MAM, IQ_ERROR)).encode()
    whole = Keeper()
    whole.parser.feed(HEADER + body)
    assert len(whole.stanzas) == 6
    for cut in range(1, len(body)):
        split = Keeper()
        split.parser.feed(HEADER + body[:cut])
        split.parser.feed(body[cut:])
        assert split.stanzas == whole.stanzas, f"split at byte {cut}"


# -- routing --------------------------------------------------------------------------------


class Wire:
    """A transport that keeps what the client writes."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data.decode())

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def online(**env: str) -> tuple[xmpp.LeanClient, Wire]:
    config = xmpp.settings(Config(environ={f"AMOC_{k.upper()}": v for k, v in env.items()}))
    client = xmpp.LeanClient(1, config, "user_1")
    wire = Wire()
    client._transport = wire  # type: ignore[assignment]
    client._state = State.ONLINE
    client.bound_jid = "user_1@localhost/amoc"
    return client, wire


def count(name: str) -> float:
    return metrics.counter(name).value


def test_wait_for_takes_the_first_match_and_finds_earlier_stanzas_in_the_buffer() -> None:
    async def run() -> None:
        client, _wire = online()
        client._online(el(SUBJECT))  # nothing waits: buffered
        assert [e.name for e in client.buffered()] == ["message"]
        got = await client.wait_for(pred.muc_subject(ROOM), timeout_ms=100)
        assert got.find("jabber:client subject") is not None and client.buffered() == []
        waiting = asyncio.ensure_future(client.wait_for(pred.groupchat(ROOM), timeout_ms=2000))
        await asyncio.sleep(0)
        client._online(el(EVENT))
        client._online(el(GROUPCHAT))
        assert (await waiting).get("from") == f"{ROOM}/other"
        assert [e.name for e in client.buffered()] == ["message"]  # the event stays

    asyncio.run(run())


def test_a_predicate_that_never_matches_times_out_naming_it() -> None:
    async def run() -> None:
        client, _wire = online()
        before = count("xmpp.stanzas.timeouts")
        with pytest.raises(xmpp.ReceiveTimeout, match=r"no pubsub event \(node='nope'\) within 50"):
            await client.wait_for(pred.pubsub_event("nope"), timeout_ms=50)
        assert count("xmpp.stanzas.timeouts") == before + 1
        assert client._watchers == []

    asyncio.run(run())


def test_the_buffer_is_bounded_and_counts_what_it_drops() -> None:
    client, _wire = online(xmpp_stanza_buffer="2")
    before = count("xmpp.stanzas.unclaimed")
    for _ in range(5):
        client._online(el(SUBJECT))
    assert len(client.buffered()) == 2 and count("xmpp.stanzas.unclaimed") == before + 3


def test_iq_returns_the_result_and_times_it_per_kind() -> None:
    async def run() -> None:
        client, wire = online()
        before = metrics.histogram("xmpp.iq.roster_get.time_ms").count
        asking = asyncio.ensure_future(client.iq(stanza.roster_get(), timeout_ms=2000))
        await asyncio.sleep(0)
        request = el(wire.sent[-1])
        assert request.get("type") == "get" and request.get("id")
        client._online(
            el(f"<iq type='result' id='{request.get('id')}'><query xmlns='jabber:iq:roster'>"
               "<item jid='a@l' subscription='both'/></query></iq>")
        )  # fmt: skip
        result = await asking
        assert result.find("jabber:iq:roster query") is not None
        assert metrics.histogram("xmpp.iq.roster_get.time_ms").count == before + 1

    asyncio.run(run())


def test_an_iq_error_names_its_condition_and_is_counted() -> None:
    async def run() -> None:
        client, wire = online()
        before = count("xmpp.iq.pubsub_publish.errors")
        asking = asyncio.ensure_future(
            client.iq(stanza.pubsub_publish("pubsub.localhost", "none"), timeout_ms=2000)
        )
        await asyncio.sleep(0)
        ident = el(wire.sent[-1]).get("id")
        client._online(el(IQ_ERROR.replace("id='e1'", f"id='{ident}'")))
        with pytest.raises(xmpp.IqError) as caught:
            await asking
        assert caught.value.condition == "item-not-found" and caught.value.text == "no such node"
        assert "pubsub_publish request to pubsub.localhost failed: item-not-found" in str(
            caught.value
        )
        assert count("xmpp.iq.pubsub_publish.errors") == before + 1

    asyncio.run(run())


def test_an_unanswered_iq_times_out_and_a_raw_request_needs_get_or_set() -> None:
    async def run() -> None:
        client, _wire = online()
        before = count("xmpp.iq.disco_info.timeouts")
        with pytest.raises(xmpp.ReceiveTimeout, match="no answer to the disco_info request"):
            await client.iq(stanza.disco_info("localhost"), timeout_ms=30)
        assert count("xmpp.iq.disco_info.timeouts") == before + 1
        with pytest.raises(xmpp.XmppError, match="needs an <iq type='get'|'set'/>"):
            await client.iq("<message to='a@b'/>")
        raw = asyncio.ensure_future(
            client.iq("<iq type='get' id='mine'><ping xmlns='urn:xmpp:ping'/></iq>")
        )
        await asyncio.sleep(0)
        client._online(el("<iq type='result' id='mine'/>"))
        assert (await raw).get("id") == "mine"

    asyncio.run(run())


def test_server_requests_get_default_answers_unless_a_handler_answers() -> None:
    client, wire = online()
    client._online(el("<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"))
    client._online(
        el("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='x@l'/></query></iq>")
    )
    client._online(
        el("<iq type='get' id='v1' from='x@l/r'><query xmlns='jabber:iq:version'/></iq>")
    )
    assert el(wire.sent[0]).get("type") == "result" and el(wire.sent[0]).get("id") == "p1"
    assert el(wire.sent[1]).get("type") == "result" and el(wire.sent[1]).get("id") == "r1"
    assert "service-unavailable" in wire.sent[2] and el(wire.sent[2]).get("to") == "x@l/r"
    seen: list[Element] = []

    def answer(e: Element) -> bool:
        seen.append(e)
        client.send(
            stanza.iq_result(e.get("from"), e.get("id"), "<query xmlns='jabber:iq:version'/>")
        )
        return True

    client.add_handler(pred.iq(type="get", xmlns="jabber:iq:version"), answer)
    client._online(
        el("<iq type='get' id='v2' from='x@l/r'><query xmlns='jabber:iq:version'/></iq>")
    )
    assert len(seen) == 1 and "service-unavailable" not in wire.sent[-1]
    assert el(wire.sent[-1]).get("id") == "v2"


@pytest.mark.parametrize(
    ("policy", "answer"), [("accept", "subscribed"), ("refuse", "unsubscribed")]
)
def test_subscription_requests_are_answered_as_set(policy: str, answer: str) -> None:
    client, wire = online(xmpp_subscription_requests=policy)
    client._online(el("<presence type='subscribe' from='friend@localhost'/>"))
    assert (
        el(wire.sent[-1]).get("type") == answer
        and el(wire.sent[-1]).get("to") == "friend@localhost"
    )
    ignoring, quiet = online(xmpp_subscription_requests="ignore")
    ignoring._online(el("<presence type='subscribe' from='friend@localhost'/>"))
    assert quiet.sent == [] and ignoring.buffered()[0].get("type") == "subscribe"


def test_a_bad_subscription_policy_is_refused_naming_the_setting() -> None:
    with pytest.raises(xmpp.XmppError.__mro__[1], match="xmpp_subscription_requests"):
        online(xmpp_subscription_requests="maybe")


def test_groupchat_and_pubsub_stamps_are_timed_and_chat_still_reaches_the_inbox() -> None:
    client, _wire = online()
    muc = metrics.histogram("xmpp.muc.ttd_ms").count
    items = metrics.histogram("xmpp.pubsub.ttd_ms").count
    sent = stamp.now_us() - 3000
    mark = stamp.encode(sent)
    client._online(el(GROUPCHAT.replace("</body>", f"</body>{mark}")))
    client._online(
        el(GROUPCHAT.replace("</body>", "</body><delay xmlns='urn:xmpp:delay'/>" + mark))
    )
    client._online(el(EVENT.replace("1764041123456789", str(sent))))
    client._online(
        el(f"<message from='user_2@localhost/amoc' type='chat'><body>b</body>{mark}</message>")
    )
    assert metrics.histogram("xmpp.muc.ttd_ms").count == muc + 1  # the delayed one is history
    assert metrics.histogram("xmpp.pubsub.ttd_ms").count == items + 1
    [message] = client.take_messages()
    assert message.body == "b" and message.ttd_ms is not None and message.ttd_ms >= 3.0


def test_a_lost_session_fails_whoever_waits() -> None:
    async def run() -> None:
        client, _wire = online()
        client._online_counted = False
        waiting = asyncio.ensure_future(client.wait_for(pred.groupchat(), timeout_ms=5000))
        asking = asyncio.ensure_future(client.iq(stanza.ping(), timeout_ms=5000))
        await asyncio.sleep(0)
        client._end_session(ConnectionResetError("reset"))
        for task in (waiting, asking):
            with pytest.raises(xmpp.ConnectionLost, match="the server ended the session"):
                await task
        with pytest.raises(xmpp.ConnectionLost):
            client.send(stanza.presence())

    asyncio.run(run())


def test_registration_needs_the_lean_client() -> None:
    async def run() -> None:
        with pytest.raises(xmpp.NotSupported, match="lean client"):
            await xmpp.connect(1, register=True, client="slixmpp")

    asyncio.run(run())


# -- feature figures in watch() and the report ----------------------------------------------


def snapshot(counters: dict[str, float], hists: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"counters": counters, "gauges": {}, "histograms": {}}
    for name, values in hists.items():
        h = metrics.histogram(f"test.figures.{name}")
        h.reset()
        for v in values:
            h.record(v)
        out["histograms"][name] = h.snapshot()
    return out


def test_feature_figures_appear_only_when_recorded() -> None:
    plain = figures.row(snapshot({"xmpp.logins.ok": 5}, {}), None, 1.0)
    assert not any(k.startswith(("muc_", "iq_", "pubsub_")) for k in plain)
    assert figures.feature_lines(plain) == []
    before = snapshot({"xmpp.muc.messages.received": 10}, {"xmpp.muc.ttd_ms": [1.0]})
    now = snapshot(
        {"xmpp.muc.messages.received": 110, "xmpp.iq.ping.timeouts": 1, "xmpp.logins.ok": 2},
        {"xmpp.muc.ttd_ms": [1.0, *[4.0] * 99], "xmpp.iq.ping.time_ms": [2.0, 3.0]},
    )
    row = figures.row(now, before, 2.0)
    assert row["muc_s"] == 50.0 and 3.9 <= row["muc_ttd_p99"] <= 4.1 and "iq_ping_p99" in row
    assert row["iq_s"] == 1.5  # two answered and one timed out, over 2 s
    assert row["errors"] == 1.0  # the IQ timeout
    lines = figures.feature_lines(row)
    assert any("groupchat TTD" in line for line in lines) and any("ping" in line for line in lines)
    sample = {"time": 2.0, "nodes": {"n1": now}, "targets": {"n1": 2}, "scenario": "xmpp_muc"}
    assert any("groupchat TTD" in line for line in live.frame(sample, None))


def test_the_report_plots_and_lists_feature_figures(tmp_path: Any) -> None:
    rows = [
        {**dict.fromkeys((c for c, _ in figures.COLUMNS), 0.0), "t": float(t),
         "muc_ttd_p50": 1.0, "muc_ttd_p99": 2.0, "muc_s": 5.0, "iq_ping_p99": 3.0}
        for t in range(3)
    ]  # fmt: skip
    index = report_html.write(tmp_path / "r", rows, {"scenario": "xmpp_muc"}, [], {})
    page = index.read_text()
    for title in ("Feature latency (ms)", "Feature rates (per second)", "IQ response time p99"):
        assert title in page
    header = (tmp_path / "r" / "series.csv").read_text().splitlines()[0].split(",")
    assert {"muc_ttd_p99", "muc_s", "iq_ping_p99"} <= set(header)
