"""BOSH (XEP-0124, XEP-0206) in the lean client, against a scripted connection manager: an
aiohttp server on 127.0.0.1 that speaks just enough XMPP (SASL PLAIN, restart, bind,
presence echo, chat between its users) and records every request."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

import pytest
import uvloop
from aiohttp import web

from amoc import xmpp
from amoc.xmpp import bosh
from amoc.xmpp.parser import Element, StreamParser, from_etree
from tests.wait import until

pytestmark = pytest.mark.unit

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
CLIENT = "jabber:client"
STREAMS = "http://etherx.jabber.org/streams"
MECHANISMS = (
    f"<stream:features><mechanisms xmlns='{SASL}'><mechanism>PLAIN</mechanism></mechanisms>"
    "</stream:features>"
)
BIND_FEATURES = f"<stream:features><bind xmlns='{BIND}'/></stream:features>"


@dataclass
class Request:
    """One request the server got: its body's attributes, children and bytes."""

    sid: str
    attrs: dict[str, str]
    children: list[ElementTree.Element]
    raw: bytes
    remote: str  # the client's address
    at: float  # when it came (the loop's time)

    @property
    def rid(self) -> int:
        return int(self.attrs["rid"])


@dataclass
class FakeSession:
    """One BOSH session of the fake server: requests in rid order, one held at most."""

    server: FakeBosh
    sid: str
    expected: int  # the next rid to process
    wait: float
    jid: str = ""
    queue: list[str] = field(default_factory=list)  # what is to be sent
    held: list[asyncio.Future[str]] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    terminated: bool = False
    gone: bool = False  # answer HTTP 404 from now on
    reorder: tuple[str, str] | None = None  # the next two answers: the newer first
    drop_next: bool = False  # close the next request's connection without an answer
    turn: asyncio.Condition = field(default_factory=asyncio.Condition)

    def body(self, items: list[str], extra: str = "") -> str:
        return (
            f"<body xmlns='{HTTPBIND}' xmlns:stream='{STREAMS}' sid='{self.sid}'{extra}>"
            f"{''.join(items)}</body>"
        )

    def send(self, item: str) -> None:
        """Queue an element for the client; the oldest held request takes it."""
        self.queue.append(item)
        self._flush()

    def _flush(self) -> None:
        while self.queue and self.held:
            items, self.queue = self.queue, []
            self.held.pop(0).set_result(self.body(items))

    def terminate(self, condition: str) -> None:
        """End the session from the server's side, as a shutdown would."""
        self.terminated = True
        extra = f" type='terminate' condition='{condition}'"
        while self.held:
            self.held.pop(0).set_result(self.body([], extra))

    async def handle(self, req: Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            async with self.turn:
                await asyncio.wait_for(
                    self.turn.wait_for(lambda: self.expected >= req.rid), timeout=5
                )
                self.expected = req.rid + 1
                self.turn.notify_all()
            if self.gone:
                return web.Response(status=404, text="gone")
            if self.terminated:
                return web.Response(text=self.body([], " type='terminate'"))
            if req.attrs.get(f"{{{XBOSH}}}restart") == "true":
                self.queue.append(BIND_FEATURES)
            for child in req.children:
                self._stanza(child)
            if req.attrs.get("type") == "terminate":
                self.terminated = True
                while self.held:
                    self.held.pop(0).set_result(self.body([], " type='terminate'"))
                return web.Response(text=self.body([], " type='terminate'"))
            loop = asyncio.get_running_loop()
            if self.reorder is not None and self.held:  # answer this one before the older
                older, (first, second) = self.held.pop(0), self.reorder
                self.reorder = None
                loop.call_later(0.05, older.set_result, self.body([first]))
                return web.Response(text=self.body([second]))
            future: asyncio.Future[str] = loop.create_future()
            self.held.append(future)
            self._flush()
            if len(self.held) > 1:  # hold='1': the older one goes back empty
                self.held.pop(0).set_result(self.body([]))
            try:
                text = await asyncio.wait_for(asyncio.shield(future), self.wait)
            except TimeoutError:
                if future in self.held:
                    self.held.remove(future)
                text = self.body([])
            return web.Response(text=text)
        finally:
            self.inflight -= 1

    def _stanza(self, child: ElementTree.Element) -> None:
        tag = child.tag
        if tag == f"{{{SASL}}}auth":
            _, user, password = base64.b64decode(child.text or "").split(b"\0")
            if password.decode() == f"password_{user.decode().removeprefix('user_')}":
                self.jid = f"{user.decode()}@localhost/amoc"
                self.queue.append(f"<success xmlns='{SASL}'/>")
            else:
                self.queue.append(f"<failure xmlns='{SASL}'><not-authorized/></failure>")
        elif tag == f"{{{CLIENT}}}iq" and child.find(f"{{{BIND}}}bind") is not None:
            self.server.by_jid[self.jid] = self
            self.queue.append(
                f"<iq xmlns='{CLIENT}' type='result' id='{child.get('id')}'>"
                f"<bind xmlns='{BIND}'><jid>{self.jid}</jid></bind></iq>"
            )
        elif tag == f"{{{CLIENT}}}presence":
            self.queue.append(f"<presence xmlns='{CLIENT}' from='{self.jid}' to='{self.jid}'/>")
        elif tag == f"{{{CLIENT}}}message":
            element = from_etree(child)
            element.attrs["from"] = self.jid
            target = self.server.by_jid.get(child.get("to", ""))
            if target is not None:
                target.send(element.to_xml(parent_ns=""))
            self.server.messages.append(element)


class FakeBosh:
    """The scripted connection manager: `/bosh` on 127.0.0.1, port in `.port`."""

    def __init__(
        self, features_later: bool = False, wait: float = 60.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.features_later = features_later
        self.tls = tls
        self.wait = wait
        self.requests: list[Request] = []
        self.sessions: dict[str, FakeSession] = {}
        self.by_jid: dict[str, FakeSession] = {}
        self.messages: list[Element] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bosh", self._handle)
        self._runner = runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        for session in self.sessions.values():
            session.terminate("system-shutdown")
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/bosh") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def of(self, client: Any) -> FakeSession:
        """The session of a logged-in client."""
        return self.by_jid[client.bound_jid]

    def sent_by(self, client: Any) -> list[Request]:
        sid = self.of(client).sid
        return [r for r in self.requests if r.sid == sid]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        root = ElementTree.fromstring(raw)
        sid = root.get("sid", "")
        remote = request.remote or ""
        at = asyncio.get_running_loop().time()
        self.requests.append(Request(sid, dict(root.attrib), list(root), raw, remote, at))
        if not sid:
            return self._create(root)
        session = self.sessions.get(sid)
        if session is None:
            return web.Response(status=404, text="no such session")
        if session.drop_next and request.transport is not None:
            session.drop_next = False  # as a keep-alive connection closed under a request
            request.transport.close()
            return web.Response()
        return await session.handle(self.requests[-1])

    def _create(self, root: ElementTree.Element) -> web.Response:
        if root.get("to") != "localhost":
            return web.Response(
                text=f"<body xmlns='{HTTPBIND}' type='terminate' condition='host-unknown'/>"
            )
        sid = f"sid{len(self.sessions) + 1}"
        wait = min(float(root.get("wait", "60")), self.wait)
        session = FakeSession(self, sid, int(root.get("rid", "0")) + 1, wait)
        self.sessions[sid] = session
        features = "" if self.features_later else MECHANISMS
        if self.features_later:
            session.queue.append(MECHANISMS)
        return web.Response(
            text=(
                f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' xmlns:stream='{STREAMS}' "
                f"sid='{sid}' wait='{wait:g}' requests='2' hold='1' polling='2' "
                f"inactivity='30' ver='1.6' from='localhost' xmpp:version='1.0' "
                f"authid='{sid}'>{features}</body>"
            )
        )


@pytest.fixture
async def server() -> AsyncIterator[FakeBosh]:
    fake = FakeBosh()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def login(server: FakeBosh, user_id: int, **extra: Any) -> Any:
    return await xmpp.connect(
        user_id, transport=server.url(), sasl="PLAIN", connect_timeout=5000, **extra
    )


# -- the session -------------------------------------------------------------------------------


async def test_the_session_request_asks_for_one_held_poll_and_the_link_logs_in(
    server: FakeBosh,
) -> None:
    client = await login(server, 1)
    try:
        create = server.requests[0]
        assert create.sid == "" and not create.children
        attrs = create.attrs
        assert attrs["hold"] == "1" and attrs["wait"] == str(bosh.WAIT_S)
        assert attrs["to"] == "localhost" and attrs["ver"] == "1.6"
        assert attrs[f"{{{XBOSH}}}version"] == "1.0"
        assert client.bound_jid == "user_1@localhost/amoc"
        assert type(client._transport).__name__ == "BoshLink"
        assert client._transport.get_extra_info("ssl_object") is None
        assert {r.sid for r in server.requests[1:]} == {"sid1"}
    finally:
        await client.stop()


async def test_rids_increase_by_one_and_at_most_two_requests_are_out(server: FakeBosh) -> None:
    a, b = await login(server, 1), await login(server, 2)
    try:
        await a.send_presence()
        await b.send_presence()
        for round_ in range(10):
            a.send_chat(2)
            await asyncio.sleep(0)
            b.send_chat(1)
            if round_ % 3 == 0:
                await asyncio.sleep(0.01)
        await a.wait_received(10, timeout_ms=5000)
        await b.wait_received(10, timeout_ms=5000)
        for client in (a, b):
            rids = [r.rid for r in server.sent_by(client)]
            assert rids == list(range(rids[0], rids[0] + len(rids))), rids
            session = server.of(client)
            assert session.max_inflight <= 2
            # Idle: exactly one long poll stays with the server.
            await until(lambda s=session: s.inflight == 1 and len(s.held) == 1, "one poll")
        create = [r for r in server.requests if not r.sid]
        assert all(int(c.attrs["rid"]) + 1 == server.sent_by(x)[0].rid
                   for c, x in zip(create, (a, b), strict=True))  # fmt: skip
    finally:
        await a.stop()
        await b.stop()


async def test_the_stream_restarts_after_sasl_with_an_empty_restart_request(
    server: FakeBosh,
) -> None:
    client = await login(server, 1)
    try:
        sent = server.sent_by(client)
        auth = next(i for i, r in enumerate(sent) if r.children and "auth" in r.children[0].tag)
        restarts = [r for r in sent if r.attrs.get(f"{{{XBOSH}}}restart") == "true"]
        assert len(restarts) == 1
        restart = restarts[0]
        assert sent.index(restart) > auth and not restart.children
        assert restart.attrs["to"] == "localhost"
        bind = next(r for r in sent if r.children and r.children[0].tag == f"{{{CLIENT}}}iq")
        assert sent.index(bind) > sent.index(restart)
    finally:
        await client.stop()


async def test_the_features_may_come_with_the_first_poll() -> None:
    fake = FakeBosh(features_later=True)
    await fake.start()
    try:
        client = await login(fake, 1)
        assert client.bound_jid == "user_1@localhost/amoc"
        await client.stop()
    finally:
        await fake.stop()


async def test_the_stanzas_of_one_loop_turn_travel_in_one_request(server: FakeBosh) -> None:
    a, b = await login(server, 1), await login(server, 2)
    try:
        await a.send_presence()
        await b.send_presence()
        before = len(server.sent_by(a))
        for _ in range(30):
            a.send_chat(2)
        await b.wait_received(30, timeout_ms=5000)
        carrying = [r for r in server.sent_by(a)[before:] if r.children]
        assert len(carrying) == 1 and len(carrying[0].children) == 30
        assert carrying[0].raw.count(b"<message xmlns='jabber:client' ") == 30
        assert [m.ttd_ms is not None for m in b.take_messages()] == [True] * 30
    finally:
        await a.stop()
        await b.stop()


async def test_answers_are_taken_in_rid_order(server: FakeBosh) -> None:
    client = await login(server, 1)
    try:
        await client.send_presence()
        session = server.of(client)
        await until(lambda: len(session.held) == 1, "a held poll")
        one, two = (
            f"<message xmlns='jabber:client' from='user_2@localhost/amoc' type='chat'>"
            f"<body>{n}</body></message>"
            for n in ("first", "second")
        )
        session.reorder = (one, two)  # the poll gets `one` 50 ms after the next gets `two`
        client.send_chat(2)
        await client.wait_received(2, timeout_ms=5000)
        assert [m.body for m in client.take_messages()] == ["first", "second"]
    finally:
        await client.stop()


async def test_a_reply_goes_with_the_next_poll_and_a_later_send_keeps_its_distance(
    server: FakeBosh,
) -> None:
    a, b = await login(server, 1), await login(server, 2)
    try:
        await a.send_presence()
        await b.send_presence()
        session = server.of(a)
        a.send_chat(2)
        await b.wait_message(timeout_ms=5000)
        before = len(server.sent_by(b))
        b.send_chat(1)  # at once, on reading it: it goes with b's next poll
        await a.wait_message(timeout_ms=5000)
        sent = server.sent_by(b)[before:]
        assert len(sent[0].children) == 1 and sent[0].children[0].tag == f"{{{CLIENT}}}message"
        # A send just after a poll went out waits: the two must reach the server in order.
        await until(lambda: len(session.held) == 1, "a held poll")
        before = len(server.sent_by(a))
        session.send(
            f"<message xmlns='{CLIENT}' from='user_2@localhost/amoc'><body>x</body></message>"
        )
        await a.wait_message(timeout_ms=5000)
        await until(lambda: len(server.sent_by(a)) > before, "a new poll")
        a.send_chat(2)
        await b.wait_message(timeout_ms=5000)
        poll, chat = server.sent_by(a)[before : before + 2]
        assert not poll.children and chat.children
        assert chat.at - poll.at >= bosh._SPACING_S * 0.8
    finally:
        await a.stop()
        await b.stop()


async def test_users_share_one_pool_closed_when_the_last_one_stops(server: FakeBosh) -> None:
    assert bosh.pools() == 0
    a, b = await login(server, 1), await login(server, 2)
    assert a._transport._pool is b._transport._pool and bosh.pools() == 1
    await a.stop()
    assert bosh.pools() == 1
    await b.stop()
    assert bosh.pools() == 0


# -- the end -----------------------------------------------------------------------------------


async def test_stop_terminates_the_session(server: FakeBosh) -> None:
    client = await login(server, 1)
    session = server.of(client)
    await client.send_presence()
    await client.stop()
    last = server.sent_by(client)[-1]
    assert last.attrs.get("type") == "terminate" and session.terminated
    assert not client.connected and client._transport is None
    await until(lambda: session.inflight == 0, "no request left")


async def test_a_server_terminate_ends_the_session_naming_the_condition(
    server: FakeBosh,
) -> None:
    client = await login(server, 1)
    await client.send_presence()
    session = server.of(client)
    await until(lambda: len(session.held) == 1, "a held poll")
    session.terminate("system-shutdown")
    with pytest.raises(xmpp.ConnectionLost, match="system-shutdown"):
        await client.wait_message(timeout_ms=5000)
    assert not client.connected
    await client.stop()
    assert bosh.pools() == 0


async def test_a_session_the_server_forgot_ends_the_session(server: FakeBosh) -> None:
    client = await login(server, 1)
    await client.send_presence()
    server.of(client).gone = True
    client.send_chat(2)
    with pytest.raises(xmpp.ConnectionLost, match="HTTP 404"):
        await client.wait_message(timeout_ms=5000)
    await client.stop()


async def test_a_request_whose_connection_drops_is_sent_again_with_its_rid(
    server: FakeBosh,
) -> None:
    a, b = await login(server, 1), await login(server, 2)
    try:
        await a.send_presence()
        await b.send_presence()
        server.of(a).drop_next = True
        a.send_chat(2)
        await b.wait_received(1, timeout_ms=5000)
        carrying = [r for r in server.sent_by(a) if r.children and "message" in r.children[0].tag]
        assert len(carrying) == 2 and carrying[0].rid == carrying[1].rid
        assert a.connected and len(b.take_messages()) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_abort_cuts_the_requests_at_once(server: FakeBosh) -> None:
    client = await login(server, 1)
    await client.send_presence()
    session = server.of(client)
    await until(lambda: len(session.held) == 1, "a held poll")
    client.drop_connection()
    with pytest.raises(xmpp.ConnectionLost):
        await client.wait_message(timeout_ms=5000)
    assert not session.terminated and bosh.pools() == 0  # the server learns by inactivity
    await client.stop()


# -- refusals ----------------------------------------------------------------------------------


async def test_a_wrong_path_is_refused_naming_the_url_and_the_paths(server: FakeBosh) -> None:
    with pytest.raises(xmpp.LoginError) as caught:
        await xmpp.connect(1, transport=server.url("/http-bind"), sasl="PLAIN")
    text = str(caught.value)
    assert "HTTP 404" in text and server.url("/http-bind") in text
    assert "ejabberd: /bosh" in text and "Prosody: /http-bind" in text
    assert caught.value.reason is xmpp.Reason.CONNECTION_ERROR
    assert bosh.pools() == 0


async def test_an_unknown_domain_is_refused_naming_the_condition(server: FakeBosh) -> None:
    with pytest.raises(xmpp.LoginError, match="host-unknown.*xmpp_domain"):
        await login(server, 1, domain="example.net")


async def test_nothing_listening_is_refused(server: FakeBosh) -> None:
    port = server.port
    await server.stop()
    with pytest.raises(xmpp.LoginError) as caught:
        await xmpp.connect(1, transport="bosh", http_port=port, sasl="PLAIN")
    assert caught.value.reason is xmpp.Reason.REFUSED
    assert f"cannot reach http://127.0.0.1:{port}/bosh" in str(caught.value)
    assert "xmpp_http_port" in str(caught.value)


async def test_a_wrong_password_fails_the_login_and_ends_the_session(server: FakeBosh) -> None:
    with pytest.raises(xmpp.LoginError) as caught:
        await login(server, 1, password="wrong")
    assert caught.value.reason is xmpp.Reason.AUTH
    assert bosh.pools() == 0


# -- what a response holds ---------------------------------------------------------------------


def _stream_of(body: bytes) -> list[Element]:
    """The elements the client's parser gets from one response body."""
    start = bosh._BODY.search(body)
    assert start is not None
    got: list[Element] = []

    class Sink:
        def stream_opened(self, attrs: dict[str, str]) -> None:
            pass

        def stanza(self, element: Element) -> None:
            got.append(element)

        def stream_closed(self) -> None:
            pass

    parser = StreamParser(Sink())
    parser.feed(bosh._header("s1", "localhost") + bosh._children(body, start))
    return got


@pytest.mark.parametrize(
    ("body", "tags"),
    [
        (f"<body xmlns='{HTTPBIND}' sid='s'/>", []),
        (f"<body xmlns='{HTTPBIND}'></body>", []),
        (
            f"<?xml version='1.0'?><body xmlns='{HTTPBIND}' xmlns:stream='{STREAMS}'>"
            f"{MECHANISMS}</body>",
            [f"{STREAMS} features"],
        ),
        (  # another prefix for the stream namespace, declared on <body> only
            f'<body xmlns="{HTTPBIND}" xmlns:s="{STREAMS}"><s:features/>'
            f"<message xmlns='{CLIENT}'/></body>",
            [f"{STREAMS} features", f"{CLIENT} message"],
        ),
        (  # a prefix used in a stanza, declared on <body>
            f"<body xmlns='{HTTPBIND}' xmlns:x='urn:example'><message xmlns='{CLIENT}'>"
            "<x:extra a='1'>t</x:extra><body>xmpp: 1 &lt; 2</body></message></body>",
            [f"{CLIENT} message"],
        ),
    ],
)
def test_the_children_of_a_body_reach_the_parser_with_their_namespaces(
    body: str, tags: list[str]
) -> None:
    got = _stream_of(body.encode())
    assert [e.tag for e in got] == tags
    if got and got[-1].tag == f"{CLIENT} message" and got[-1].children:
        extra, text = got[-1].children
        assert extra.tag == "urn:example extra" and extra.text == "t"
        assert text.text == "xmpp: 1 < 2"


def test_stanzas_are_qualified_with_jabber_client() -> None:
    link = bosh.BoshLink.__new__(bosh.BoshLink)
    link._sid = "s"
    link._rid = 5
    body = link._body([bosh._qualified(b"<presence/>"), bosh._qualified(b"<message to='x'/>")])
    assert (
        body
        == (
            f"<body rid='5' sid={quoteattr('s')} xmlns='{HTTPBIND}'>"
            f"<presence xmlns='{CLIENT}'/><message xmlns='{CLIENT}' to='x'/></body>"
        ).encode()
    )


# -- TLS, source addresses, uvloop ------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server context with a fresh self-signed certificate for localhost, and its file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    where = tmp_path_factory.mktemp("bosh_tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(Path(cert), Path(key))
    return ctx, str(cert)


async def test_https_verifies_the_certificate_by_the_server_name(
    certificate: tuple[ssl.SSLContext, str],
) -> None:
    ctx, cert = certificate
    fake = FakeBosh(tls=ctx)
    await fake.start()
    try:
        client = await login(fake, 1, tls_verify=True, tls_ca_file=cert)
        assert client._tls and client.bound_jid == "user_1@localhost/amoc"
        await client.stop()
        with pytest.raises(xmpp.LoginError) as caught:
            await login(fake, 1, tls_verify=True)  # the system's CAs do not know it
        assert caught.value.reason is xmpp.Reason.TLS
        assert "not trusted" in str(caught.value) and "xmpp_tls_ca_file" in str(caught.value)
        with pytest.raises(xmpp.LoginError, match="xmpp_tls_server_name"):
            await login(fake, 1, tls_verify=True, tls_ca_file=cert, tls_server_name="other.net")
    finally:
        await fake.stop()
    assert bosh.pools() == 0


async def test_users_go_out_from_their_source_addresses(server: FakeBosh) -> None:
    sources = ["127.0.0.2", "127.0.0.3"]
    clients = [await login(server, i, source_addresses=sources) for i in (1, 2)]
    try:
        assert bosh.pools() == 2
        remotes: dict[str, set[str]] = {server.of(c).sid: set() for c in clients}
        for r in server.requests:
            if r.sid in remotes:
                remotes[r.sid].add(r.remote)
        assert sorted(min(v) for v in remotes.values()) == sources
        assert all(len(v) == 1 for v in remotes.values())
    finally:
        for c in clients:
            await c.stop()


def test_login_and_chat_on_uvloop() -> None:
    async def run() -> list[str]:
        fake = FakeBosh()
        await fake.start()
        try:
            a, b = await login(fake, 1), await login(fake, 2)
            await a.send_presence()
            await b.send_presence()
            for _ in range(5):
                a.send_chat(2)
            await b.wait_received(5, timeout_ms=5000)
            await a.stop()
            await b.stop()
            return [m.body for m in b.take_messages()]
        finally:
            await fake.stop()

    assert uvloop.run(run()) == [f"message {n} from user_1" for n in range(1, 6)]
