"""The servers tools/xmpp_server.py runs: ejabberd and Prosody with STARTTLS required, logins
with the lean client, and the features load tests use (MUC, PubSub, PEP, MAM, stream
management, offline messages, in-band registration, direct TLS, BOSH, WebSocket), checked over
a bare XMPP stream of the test's own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import socket
import ssl
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from amoc import xmpp
from tests.integration.xmpp_fixture import (  # noqa: F401 - fixtures
    TOOL,
    XmppServer,
    ejabberd_tls_server,
    own_server,
    prosody_server,
)
from tests.net import free_port
from tools.xmpp_server import free_ports

pytestmark = pytest.mark.integration

KINDS = ["ejabberd", "prosody"]
FIXTURES = {"ejabberd": "ejabberd_tls_server", "prosody": "prosody_server"}

CLIENT_NS = "jabber:client"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
MUC = "http://jabber.org/protocol/muc"
PUBSUB = "http://jabber.org/protocol/pubsub"
MAM = "urn:xmpp:mam:2"
SM = "urn:xmpp:sm:3"


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest) -> XmppServer:
    """Each kind's session server: STARTTLS required (Prosody with SCRAM storage)."""
    got: XmppServer = request.getfixturevalue(FIXTURES[request.param])
    return got


def lean_kw(server: XmppServer, **extra: object) -> dict[str, object]:
    """connect() overrides for `server` with the lean client over STARTTLS."""
    kw: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "domain": server.domain,
        "tls": True,
        "client": "lean",
    }
    return {**kw, **extra}


# -- a bare client stream ---------------------------------------------------------------------


def q(tag: str, ns: str = CLIENT_NS) -> str:
    return f"{{{ns}}}{tag}"


class Raw:
    """One XMPP client stream by hand: STARTTLS or direct TLS, SASL PLAIN, bind; stanzas as
    ElementTree elements. For checks that the lean client has no API for."""

    def __init__(self, server: XmppServer) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=server.cert)  # verifies cert and name
        self.stanzas: list[ET.Element] = []

    async def connect(self, direct: bool = False) -> ET.Element:
        """Open the stream (TLS negotiated); the stream features before SASL."""
        s = self.server
        if direct:
            self.reader, self.writer = await asyncio.open_connection(
                s.host, s.tls_port, ssl=self.ctx, server_hostname=s.domain
            )
            return await self.open()
        self.reader, self.writer = await asyncio.open_connection(s.host, s.port)
        features = await self.open()
        assert features.find(q("starttls", "urn:ietf:params:xml:ns:xmpp-tls")) is not None
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert (await self.next()).tag.endswith("proceed")
        await self.writer.start_tls(self.ctx, server_hostname=s.domain)
        return await self.open()

    async def login(self, user: str, password: str, direct: bool = False) -> ET.Element:
        """Connect, SASL PLAIN, bind; the stream features after SASL."""
        await self.connect(direct)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        answer = await self.next()
        assert answer.tag.endswith("success"), ET.tostring(answer)
        features = await self.open()
        bound = await self.iq(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>raw</resource></bind></iq>"
        )
        assert bound.get("type") == "result", ET.tostring(bound)
        self.jid = f"{user}@{self.server.domain}"
        return features

    async def open(self) -> ET.Element:
        """(Re)start the stream: a new parser, our header; the server's features."""
        self.parser = ET.XMLPullParser(("start", "end"))
        self.depth = 0
        self.send(
            f"<?xml version='1.0'?><stream:stream to='{self.server.domain}' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
        features = await self.next()
        assert features.tag == "{http://etherx.jabber.org/streams}features"
        return features

    def send(self, text: str) -> None:
        self.writer.write(text.encode())

    async def next(self, timeout: float = 10) -> ET.Element:
        """The next top-level element the server sends."""
        async with asyncio.timeout(timeout):
            while not self.stanzas:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError("the server closed the stream")
                self.parser.feed(chunk)
                for event, elem in self.parser.read_events():
                    if event == "start":
                        self.depth += 1
                        if self.depth == 1:
                            self.root = elem
                    else:
                        self.depth -= 1
                        if self.depth == 1:
                            self.stanzas.append(elem)
                            self.root.remove(elem)
        return self.stanzas.pop(0)

    async def until(self, match: Callable[[ET.Element], bool]) -> ET.Element:
        """The next element that `match`es (others are dropped)."""
        while not match(got := await self.next()):
            pass
        return got

    async def iq(self, text: str) -> ET.Element:
        """Send an iq (its id is in `text`) and return the answer to it."""
        ident = ET.fromstring(text).get("id")
        self.send(text)
        return await self.until(lambda e: e.tag == q("iq") and e.get("id") == ident)

    async def close(self) -> None:
        self.send("</stream:stream>")
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


# -- logins with the lean client -----------------------------------------------------------


@pytest.mark.parametrize("sasl", ["PLAIN", "SCRAM-SHA-1"])
def test_lean_login_presence_and_chat_over_starttls(server: XmppServer, sasl: str) -> None:
    first = 101 if sasl == "PLAIN" else 103
    server.register(first, first + 1)

    async def go() -> xmpp.Message:
        a = await xmpp.connect(first, sasl=sasl, **lean_kw(server))
        b = await xmpp.connect(first + 1, sasl=sasl, **lean_kw(server))
        try:
            await a.send_presence()
            await b.send_presence()
            a.send_chat(first + 1)
            return await b.wait_message(timeout_ms=5000)
        finally:
            await a.stop()
            await b.stop()

    got = asyncio.run(go())
    assert got.body == f"message 1 from user_{first}"
    assert got.sender == f"user_{first}@{server.domain}/amoc"


def test_plain_tcp_login_is_refused_when_starttls_is_required(server: XmppServer) -> None:
    server.register(111, 111)

    async def go() -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await xmpp.connect(111, **lean_kw(server, tls=False))
        return caught.value

    err = asyncio.run(go())
    assert err.reason is xmpp.Reason.NO_MECHANISM, err


def test_the_certificate_is_the_domains_and_kept_in_the_instance(server: XmppServer) -> None:
    assert Path(server.cert).is_file() and server.state()["cert"] == server.cert
    ctx = ssl.create_default_context(cafile=server.cert)
    with (
        socket.create_connection((server.host, server.tls_port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname=server.domain) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# -- the features, over a bare stream ---------------------------------------------------------


def test_disco_lists_muc_pubsub_and_mam_and_the_stream_offers_sm(server: XmppServer) -> None:
    server.register(121, 121)

    async def go() -> tuple[ET.Element, ET.Element, ET.Element, ET.Element]:
        raw = Raw(server)
        features = await raw.login("user_121", "password_121")
        items = await raw.iq(
            f"<iq type='get' to='{server.domain}' id='d1'><query xmlns='{DISCO_ITEMS}'/></iq>"
        )
        info = await raw.iq(
            f"<iq type='get' to='{raw.jid}' id='d2'><query xmlns='{DISCO_INFO}'/></iq>"
        )
        ping = await raw.iq(
            f"<iq type='get' to='{server.domain}' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        await raw.close()
        return features, items, info, ping

    features, items, info, ping = asyncio.run(go())
    assert features.find(q("sm", SM)) is not None, ET.tostring(features)
    assert features.find(q("ver", "urn:xmpp:features:rosterver")) is not None
    jids = {i.get("jid") for i in items.iter(q("item", DISCO_ITEMS))}
    assert {server.muc_domain, server.pubsub_domain} <= jids, ET.tostring(items)
    features_of_account = {f.get("var") for f in info.iter(q("feature", DISCO_INFO))}
    assert MAM in features_of_account, ET.tostring(info)
    assert ping.get("type") == "result"


def test_muc_pubsub_pep_mam_offline_and_stream_management_work(server: XmppServer) -> None:
    server.register(131, 133)
    room = f"room131@{server.muc_domain}"

    async def go() -> dict[str, object]:
        raw = Raw(server)
        await raw.login("user_131", "password_131")
        seen: dict[str, object] = {}
        # MUC: an instant room (the owner submits an empty form), a groupchat echoed back.
        raw.send(f"<presence to='{room}/u131'><x xmlns='{MUC}'/></presence>")
        joined = await raw.until(lambda e: e.get("from") == f"{room}/u131")
        codes = {s.get("code") for s in joined.iter(q("status", f"{MUC}#user"))}
        seen["muc_codes"] = codes
        owner = await raw.iq(
            f"<iq type='set' to='{room}' id='o1'><query xmlns='{MUC}#owner'>"
            "<x xmlns='jabber:x:data' type='submit'/></query></iq>"
        )
        seen["owner"] = owner.get("type")
        raw.send(f"<message to='{room}' type='groupchat' id='g1'><body>hello room</body></message>")
        echo = await raw.until(lambda e: e.tag == q("message") and e.get("type") == "groupchat")
        seen["groupchat"] = echo.findtext(q("body"))
        # PubSub: any local user creates a node and publishes to it; PEP on one's own JID.
        node = f"amoc-test-{server.kind}"
        created = await raw.iq(
            f"<iq type='set' to='{server.pubsub_domain}' id='c1'><pubsub xmlns='{PUBSUB}'>"
            f"<create node='{node}'/></pubsub></iq>"
        )
        seen["create"] = (created.get("type"), ET.tostring(created))
        published = await raw.iq(
            f"<iq type='set' to='{server.pubsub_domain}' id='c2'><pubsub xmlns='{PUBSUB}'>"
            f"<publish node='{node}'><item id='i1'><entry xmlns='urn:amoc:test'>one</entry>"
            "</item></publish></pubsub></iq>"
        )
        seen["publish"] = published.get("type")
        pep = await raw.iq(
            f"<iq type='set' id='c3'><pubsub xmlns='{PUBSUB}'><publish node='urn:amoc:test'>"
            "<item id='current'><entry xmlns='urn:amoc:test'>mine</entry></item>"
            "</publish></pubsub></iq>"
        )
        seen["pep"] = pep.get("type")
        # A chat message to a user who is offline: archived (MAM), kept for later (offline).
        raw.send(
            f"<message to='user_132@{server.domain}' type='chat' id='m1'>"
            "<body>while you were away</body></message>"
        )
        answer = await raw.iq(f"<iq type='set' id='q1'><query xmlns='{MAM}' queryid='mq'/></iq>")
        seen["mam_answer"] = answer.get("type")
        # Stream management with resumption.
        raw.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = await raw.until(lambda e: e.tag in (q("enabled", SM), q("failed", SM)))
        seen["sm"] = (enabled.tag, enabled.get("resume"))
        await raw.close()
        offline = await xmpp.connect(132, **lean_kw(server))
        try:
            await offline.send_presence()
            msg = await offline.wait_message(timeout_ms=5000)
            seen["offline"] = (msg.body, msg.delayed)
        finally:
            await offline.stop()
        archived = Raw(server)
        await archived.login("user_131", "password_131")
        archived.send(f"<iq type='set' id='q2'><query xmlns='{MAM}' queryid='mq2'/></iq>")
        results = []
        while (e := await archived.next()).tag != q("iq"):
            if e.find(q("result", MAM)) is not None:
                results.append(ET.tostring(e, encoding="unicode"))
        seen["archive"] = results
        await archived.close()
        return seen

    seen = asyncio.run(go())
    assert "110" in seen["muc_codes"] and "201" in seen["muc_codes"], seen  # type: ignore[operator]
    assert seen["owner"] == "result" and seen["groupchat"] == "hello room"
    assert seen["create"][0] == "result", seen["create"]  # type: ignore[index]
    assert seen["publish"] == "result" and seen["pep"] == "result"
    assert seen["mam_answer"] == "result"
    assert seen["sm"] == (q("enabled", SM), "true"), seen["sm"]
    assert seen["offline"] == ("while you were away", True)
    assert any("while you were away" in r for r in seen["archive"]), seen["archive"]  # type: ignore[attr-defined]


def test_in_band_registration_is_open_and_direct_tls_works(server: XmppServer) -> None:
    async def go() -> tuple[str | None, str]:
        raw = Raw(server)
        await raw.connect()
        answer = await raw.iq(
            "<iq type='set' id='r1'><query xmlns='jabber:iq:register'>"
            "<username>ibr_141</username><password>secret_141</password></query></iq>"
        )
        await raw.close()
        direct = Raw(server)
        await direct.login("ibr_141", "secret_141", direct=True)
        await direct.close()
        client = await xmpp.connect(
            141, username="ibr_141", password="secret_141", **lean_kw(server)
        )
        jid = client.bound_jid
        await client.stop()
        return answer.get("type"), jid

    kind, jid = asyncio.run(go())
    assert kind == "result"
    assert jid == f"ibr_141@{server.domain}/amoc"


def test_bosh_and_websocket_answer_on_the_http_port(server: XmppServer) -> None:
    bosh_path, ws_path = (
        ("/bosh", "/ws") if server.kind == "ejabberd" else ("/http-bind", "/xmpp-websocket")
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    body = (
        f"<body rid='1' to='{server.domain}' xmlns='http://jabber.org/protocol/httpbind' "
        "wait='5' hold='1' ver='1.6' xml:lang='en' xmpp:version='1.0' "
        "xmlns:xmpp='urn:xmpp:xbosh'/>"
    )
    conn.request("POST", bosh_path, body, {"Content-Type": "text/xml; charset=utf-8"})
    answer = conn.getresponse()
    text = answer.read().decode()
    conn.close()
    assert answer.status == 200 and "sid=" in text and "PLAIN" in text, text
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        key = base64.b64encode(b"amoc-test-key-16").decode()
        sock.sendall(
            f"GET {ws_path} HTTP/1.1\r\nHost: 127.0.0.1:{server.http_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: xmpp\r\n\r\n".encode()
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 101"), head


# -- Prosody without TLS, and its account files -------------------------------------------


def test_prosody_without_tls_takes_plain_logins_and_keeps_plain_passwords() -> None:
    name = f"pytest_prosody_plain{free_port()}"
    with own_server(name, users=2, kind="prosody", mam=False) as server:
        assert not server.cert and server.state()["kind"] == "prosody"

        async def go() -> list[str]:
            jids = []
            for sasl in ("PLAIN", "SCRAM-SHA-1"):
                client = await xmpp.connect(1, sasl=sasl, **lean_kw(server, tls=False))
                jids.append(client.bound_jid)
                await client.stop()
            return jids

        assert asyncio.run(go()) == ["user_1@localhost/amoc"] * 2
        out = server.tool("register", "--first", "1", "--last", "3")
        assert "registered 1 users (2 existed)" in out
        status = server.tool("status")
        assert ": answering;" in status and "plain storage; no MAM" in status
        accounts = Path(server.state()["dir"]) / "data" / "localhost" / "accounts"
        assert (accounts / "user%5f3.dat").read_text() == (
            'return {\n\t["password"] = "password_3";\n};\n'
        )


# -- an ejabberd cluster ----------------------------------------------------------------------


def _tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_ejabberd_cluster_of_two_nodes_chats_across_them() -> None:
    """`start --nodes 2`: two ejabberd nodes joined by ejabberdctl into one cluster, users
    registered before the join log in on either node, and messages cross between them."""
    name = f"pytest_cluster{free_port()}"
    port = free_ports(2)
    http_port = free_ports(2, port + 2)
    refused = _tool("start", "--name", name, "--nodes", "2", "--kind", "prosody")
    assert refused.returncode == 1 and "only ejabberd clusters" in refused.stderr
    try:
        up = _tool("start", "--name", name, "--nodes", "2", "--port", str(port), "--http-port",
                   str(http_port), "--no-mam", "--first", "1", "--last", "4")  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"xmpp_servers 127.0.0.1:{port},127.0.0.1:{port + 1}" in up.stdout
        status = _tool("status", "--name", name)
        assert status.returncode == 0 and "2 of 2 nodes joined" in status.stdout, status.stdout
        pids = [int(p) for p in _tool("pid", "--name", name).stdout.strip().split(",")]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        # Registered after the join, on the cluster: every node knows the account at once.
        assert "registered 1 users" in _tool("register", "--name", name, "--last", "5").stdout

        async def go() -> list[xmpp.Message]:
            kw = {"host": "127.0.0.1", "domain": "localhost", "client": "lean", "tls": False}
            one = await xmpp.connect(1, port=port, **kw)
            two = await xmpp.connect(2, port=port + 1, **kw)
            five = await xmpp.connect(5, port=port + 1, **kw)
            try:
                for c in (one, two, five):
                    await c.send_presence()
                one.send_chat(2)
                two.send_chat(1)
                five.send_chat(1)
                got = [await two.wait_message(timeout_ms=5000),
                       await one.wait_message(timeout_ms=5000),
                       await one.wait_message(timeout_ms=5000)]  # fmt: skip
                # The session count is the cluster's, whichever node is asked.
                shown = _tool("status", "--name", name).stdout
                assert shown.count("; 3 sessions;") == 2, shown
                return got
            finally:
                for c in (one, two, five):
                    await c.stop()

        got = asyncio.run(go())
        senders = [m.sender.split("/")[0] for m in got]
        # Two senders to user 1 on two connections: either may arrive first.
        assert senders[0] == "user_1@localhost"
        assert sorted(senders[1:]) == ["user_2@localhost", "user_5@localhost"]
        assert all(m.ttd_ms is not None and m.ttd_ms < 1000 for m in got)
    finally:
        gone = _tool("remove", "--name", name)
    assert gone.returncode == 0 and "removed" in gone.stdout
    assert not any(_alive(p) for p in pids)
