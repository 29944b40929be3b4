"""XEP-0198 stream management in the lean client, against a scripted peer that parses what
the client sends (with amoc's own stream parser) and answers as a server would."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop

from amoc import metrics, xmpp
from amoc.config import Config
from amoc.errors import ConfigError
from amoc.xmpp import sm
from amoc.xmpp.parser import Element, StreamParser
from tests.unit.test_xmpp_lean import FEATURES, HEADER
from tests.wait import until

pytestmark = pytest.mark.unit

T = TypeVar("T")

SM = b"urn:xmpp:sm:3"
SUCCESS = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
BIND_FEATURES = b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
SM_FEATURE = b"<sm xmlns='urn:xmpp:sm:3'/>"
JID = "user_1@localhost/amoc"
PEER_MESSAGE = (
    b"<message from='user_2@localhost/amoc' to='user_1@localhost/amoc' type='chat'>"
    b"<body>%d</body></message>"
)


class Conn:
    """The server's end of one connection: the client's stream, parsed into elements."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = StreamParser(self)
        self.elements: deque[Element] = deque()
        self.opened = 0
        self.closed = False

    # StreamHandler
    def stream_opened(self, attrs: dict[str, str]) -> None:
        self.opened += 1

    def stanza(self, element: Element) -> None:
        self.elements.append(element)

    def stream_closed(self) -> None:
        self.closed = True

    async def _read(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("the client closed the connection")
        self.parser.feed(data)

    async def wait_open(self, count: int) -> None:
        async with asyncio.timeout(5):
            while self.opened < count:
                await self._read()

    async def next(self) -> Element:
        async with asyncio.timeout(5):
            while not self.elements:
                await self._read()
        return self.elements.popleft()

    async def expect(self, name: str) -> Element:
        element = await self.next()
        assert element.name == name, f"expected <{name}/>, got {element.to_xml()}"
        return element

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def drop(self) -> None:
        """Cut the connection as a network failure would (a reset, no stream close)."""
        self.writer.transport.abort()

    async def closing(self) -> list[Element]:
        """Read until the client closes its stream (what came before it), then close ours."""
        async with asyncio.timeout(5):
            while not self.closed:
                await self._read()
        self.send(b"</stream:stream>")
        rest = list(self.elements)
        self.elements.clear()
        return rest

    async def login(self, sm_feature: bool = True) -> None:
        """The server's side of a PLAIN login and a bind, with <sm/> offered."""
        await self.authenticate(sm_feature)
        await self.bind()

    async def authenticate(self, sm_feature: bool = True) -> None:
        """SASL PLAIN, then the features after it: bind, and <sm/> if `sm_feature`."""
        await self.wait_open(1)
        self.send(HEADER + FEATURES)
        auth = await self.expect("auth")
        assert base64.b64decode(auth.text) == b"\0user_1\0password_1"
        self.parser.restart()
        self.send(SUCCESS)
        await self.wait_open(2)
        extra = SM_FEATURE if sm_feature else b""
        self.send(HEADER + b"<stream:features>" + BIND_FEATURES + extra + b"</stream:features>")

    async def bind(self) -> None:
        bind = await self.expect("iq")
        assert bind.find("urn:ietf:params:xml:ns:xmpp-bind bind") is not None
        self.send(
            f"<iq type='result' id='{bind.get('id')}'>"
            f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{JID}</jid></bind></iq>".encode()
        )

    async def enable(self, resume: bool, ident: str = "sm-1") -> None:
        enable = await self.expect("enable")
        assert enable.ns == "urn:xmpp:sm:3"
        assert enable.get("resume") == ("true" if resume else "")
        flag = b" resume='true' max='60'" if resume else b""
        self.send(b"<enabled xmlns='urn:xmpp:sm:3' id='" + ident.encode() + b"'" + flag + b"/>")

    async def messages(self, count: int) -> list[str]:
        """The ids of the next `count` messages (acks requests in between are skipped)."""
        ids = []
        while len(ids) < count:
            element = await self.next()
            if element.name == "r":
                continue
            assert element.name == "message", element.to_xml()
            ids.append(element.get("id"))
        return ids


Script = Callable[[Conn], Awaitable[None]]


async def with_server(scripts: list[Script], body: Callable[[int], Awaitable[T]]) -> T:
    """Run `body(port)` against a server whose n-th connection follows `scripts[n]`; more
    connections than scripts are refused (closed at once)."""
    pending = deque(scripts)
    errors: list[BaseException] = []
    finished = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not pending:
            writer.transport.abort()
            return
        script = pending.popleft()
        try:
            await script(Conn(reader, writer))
            async with asyncio.timeout(10):
                await finished.wait()  # keep the connection until the body is done
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(15):
            result = await body(port)
    except BaseException:
        if errors and not isinstance(errors[0], asyncio.CancelledError):
            raise errors[0] from None  # the script's complaint says more
        raise
    finally:
        finished.set()
        server.close()
    await asyncio.sleep(0)  # let the scripts see `finished`
    real = [e for e in errors if not isinstance(e, ConnectionError | asyncio.CancelledError)]
    if real:
        raise real[0]
    return result


def connect(port: int, mode: bool | str = True, **kw: Any) -> Awaitable[xmpp.Session]:
    kw.setdefault("sm_ack_every", 100)
    kw.setdefault("sasl", "PLAIN")
    return xmpp.connect(
        1, client="lean", port=port, config=Config(environ={}), stream_management=mode, **kw
    )


def lean(client: xmpp.Session) -> xmpp.LeanClient:
    assert isinstance(client, xmpp.LeanClient)
    return client


def state(client: xmpp.Session) -> sm.StreamManagement:
    found = lean(client).stream_management
    assert found is not None
    return found


def count(name: str) -> int:
    return int(metrics.counter(name).value)


def unacked_gauge() -> float:
    return metrics.gauge("xmpp.sm.unacked").value


# -- the protocol state on its own ----------------------------------------------------------


class Wire:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def enabled(resume: bool = True) -> Element:
    return Element(f"{sm.SM_NS} enabled", {"id": "x", "resume": "true"} if resume else {})


def test_acks_trim_the_queue_and_h_wraps_at_2_to_the_32() -> None:
    state_ = sm.StreamManagement(resume=True, ack_every=3)
    wire = Wire()
    state_.enabled_by(enabled(), wire)
    assert state_.resumable and state_.id == "x"
    # As if 2**32 - 2 stanzas had been sent and acknowledged already.
    state_.sent = state_.acked = state_.written = sm.MOD - 2
    for i in range(5):
        state_.write(b"<message id='%d'/>" % i)
    assert wire.data.count(sm.REQUEST) == 1  # after the third
    assert state_.unacked == 5
    assert state_.acked_to(1) == 3  # (2**32 - 2 + 3) mod 2**32
    assert state_.queue == [b"<message id='3'/>", b"<message id='4'/>"]
    assert state_.acked_to(1) == 0  # the same h again: nothing more
    assert state_.acked_to(3) == 2 and state_.unacked == 0
    assert sm.answer(sm.MOD + 7) == b"<a xmlns='urn:xmpp:sm:3' h='7'/>"
    state_.close(RuntimeError("end"))


def test_a_too_high_h_drops_only_what_was_sent() -> None:
    state_ = sm.StreamManagement(resume=False, ack_every=100)
    state_.enabled_by(enabled(resume=False), Wire())
    assert not state_.resumable
    state_.write(b"<presence/>")
    assert state_.acked_to(5) == 1 and state_.unacked == 0 and state_.acked == 1
    with pytest.raises(ValueError, match="bad h"):
        sm.read_h(Element(f"{sm.SM_NS} a", {"h": "-1"}))
    with pytest.raises(ValueError, match="bad h"):
        sm.read_h(Element(f"{sm.SM_NS} a", {"h": str(sm.MOD)}))


def test_a_refused_resumption_loses_what_was_written_and_keeps_the_outage_sends() -> None:
    state_ = sm.StreamManagement(resume=True, ack_every=100)
    first = Wire()
    state_.enabled_by(enabled(), first)
    for i in range(4):
        state_.write(b"<message type='chat' id='%d'/>" % i)
    state_.write(b"<iq type='get' id='q'/>")
    state_.dropped(0.0)
    state_.write(b"<message type='chat' id='outage'/>")  # not written: the link is down
    assert b"outage" not in first.data and state_.unacked == 6
    lost = state_.refused(1, first=b"<presence/>")  # the server had got the first one
    assert lost == [b"<message type='chat' id='%d'/>" % i for i in (1, 2, 3)] + [
        b"<iq type='get' id='q'/>"
    ]
    assert [sm.is_chat(s) for s in lost] == [True, True, True, False]
    second = Wire()
    assert state_.enabled_by(enabled(), second) == 2  # a new session: presence, then outage
    assert second.data == b"<presence/><message type='chat' id='outage'/>" + sm.REQUEST
    assert state_.sent == 2 and state_.acked == 0
    state_.close(RuntimeError("end"))


class Frames:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_a_framed_transport_gets_one_element_per_write() -> None:
    state_ = sm.StreamManagement(resume=True, ack_every=2)
    frames = Frames()
    state_.enabled_by(enabled(), frames, framed=True)
    state_.write(b"<presence/>")
    state_.write(b"<message id='1'/>")
    assert frames.writes == [b"<presence/>", b"<message id='1'/>", sm.REQUEST]
    state_.dropped(0.0)
    again = Frames()
    assert state_.resumed_by(0, again, framed=True) == 2  # each stanza, then the request
    assert again.writes == [b"<presence/>", b"<message id='1'/>", sm.REQUEST]
    state_.close(RuntimeError("end"))


def test_an_ack_wait_ends_when_everything_sent_before_it_is_acknowledged() -> None:
    async def run() -> tuple[bool, int]:
        state_ = sm.StreamManagement(resume=False, ack_every=100)
        state_.enabled_by(enabled(resume=False), Wire())
        for _ in range(4):
            state_.write(b"<message/>")
        waiter = state_.wait_ack()
        state_.acked_to(2)  # the answer to an earlier request: not enough
        early = waiter.done()
        state_.acked_to(4)
        return early, await waiter

    assert asyncio.run(run()) == (False, 4)


# -- settings -------------------------------------------------------------------------------


def settings_from(**env: str) -> xmpp.Settings:
    return xmpp.settings(Config(environ={f"AMOC_{k.upper()}": v for k, v in env.items()}))


def test_the_settings_are_declared_verified_and_normalised() -> None:
    names = {p.name for p in xmpp.PARAMETERS}
    assert {"xmpp_stream_management", "xmpp_sm_ack_every", "xmpp_sm_resume_timeout"} <= names
    assert settings_from().stream_management is False
    assert settings_from(xmpp_stream_management="resume").stream_management == "resume"
    assert settings_from(xmpp_stream_management="'RESUME'").stream_management == "resume"
    assert settings_from(xmpp_stream_management="True").stream_management is True
    assert settings_from(xmpp_stream_management="'false'").stream_management is False
    assert settings_from(xmpp_sm_ack_every="5").sm_ack_every == 5
    assert settings_from(xmpp_sm_resume_timeout="2500").sm_resume_timeout == 2500


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("xmpp_stream_management", "'yes'", 'true \\(acks\\) or "resume"'),
        ("xmpp_stream_management", "1", 'true \\(acks\\) or "resume"'),
        ("xmpp_sm_ack_every", "0", "between 1 and 10000"),
        ("xmpp_sm_ack_every", "10001", "between 1 and 10000"),
        ("xmpp_sm_ack_every", "2.5", "number of stanzas"),
        ("xmpp_sm_resume_timeout", "0", "> 0"),
        ("xmpp_sm_resume_timeout", "600001", "at most 600000 ms"),
        ("xmpp_sm_resume_timeout", "'soon'", "milliseconds"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(name: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'.*{why}"):
        settings_from(**{name: value})


def test_slixmpp_with_stream_management_is_not_supported_and_connects_nowhere() -> None:
    async def run() -> tuple[xmpp.NotSupported, int]:
        accepted = 0

        def on_connect(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(xmpp.NotSupported) as caught:
                await xmpp.connect(
                    1,
                    client="slixmpp",
                    port=port,
                    stream_management="resume",
                    config=Config(environ={}),
                )
            await asyncio.sleep(0.05)  # a connection, had one been started, would be in
            return caught.value, accepted
        finally:
            server.close()

    error, accepted = asyncio.run(run())
    assert "xmpp_client = 'lean'" in str(error) and "xmpp_stream_management" in str(error)
    assert error.reason is xmpp.Reason.NOT_SUPPORTED and accepted == 0


# -- enabling, acks -------------------------------------------------------------------------


def test_enable_then_the_servers_ack_requests_get_the_stanzas_handled() -> None:
    answers: list[str] = []

    async def script(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=False)
        # Two messages, a ping (answered: a stanza the client sends) and an ack request.
        conn.send(
            PEER_MESSAGE % 1
            + PEER_MESSAGE % 2
            + b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            + b"<r xmlns='urn:xmpp:sm:3'/>"
        )
        assert (await conn.expect("iq")).get("type") == "result"
        answers.append((await conn.expect("a")).get("h"))
        # An <a/> from the server is not a stanza: of these three, only the message counts.
        conn.send(
            b"<a xmlns='urn:xmpp:sm:3' h='1'/>" + PEER_MESSAGE % 3 + b"<r xmlns='urn:xmpp:sm:3'/>"
        )
        answers.append((await conn.expect("a")).get("h"))
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode=True)
        s = state(client)
        assert s.enabled and not s.resumable
        await client.wait_received(3, timeout_ms=3000)
        await until(lambda: len(answers) == 2, "two answers")
        assert client.unacked == 0 and s.acked == 1 and s.sent == 1  # the ping's result
        await client.stop()

    before = count("xmpp.sm.enabled")
    asyncio.run(with_server([script], body))
    assert answers == ["3", "4"]
    assert count("xmpp.sm.enabled") == before + 1


def test_acks_are_requested_every_n_stanzas_and_trim_the_queue() -> None:
    seen: list[str] = []

    async def script(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True)
        for _ in range(9):  # 7 messages and 2 ack requests, after the 3rd and the 6th
            seen.append((await conn.next()).name)
        conn.send(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")
        assert (await conn.expect("r")) is not None  # request_ack()
        conn.send(b"<a xmlns='urn:xmpp:sm:3' h='7'/>")
        await conn.closing()

    async def body(port: int) -> tuple[int, float]:
        gauge = unacked_gauge()
        client = await connect(port, mode="resume", sm_ack_every=3)
        for _ in range(7):
            client.send_chat(2)
        assert client.unacked == 7
        await until(lambda: client.unacked == 2, "the queue trimmed by <a h='5'/>")
        assert state(client).acked == 5
        h = await lean(client).request_ack(timeout_ms=3000)
        assert client.unacked == 0 and unacked_gauge() == gauge
        await client.stop()
        return h, gauge

    acks = count("xmpp.sm.acks_received")
    h, gauge = asyncio.run(with_server([script], body))
    assert h == 7
    assert seen == ["message"] * 3 + ["r"] + ["message"] * 3 + ["r", "message"]
    assert count("xmpp.sm.acks_received") == acks + 2
    assert unacked_gauge() == gauge
    assert metrics.histogram("xmpp.sm.ack_time_ms").count >= 1


def test_a_server_without_stream_management_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(conn: Conn) -> None:
        await conn.login(sm_feature=False)
        assert (await conn.expect("message")).get("id") == "1-1"  # no <enable/> before it
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode="resume")
        assert lean(client).stream_management is None
        client.send_chat(2)
        assert client.unacked == 0
        with pytest.raises(xmpp.XmppError, match="needs stream management"):
            await lean(client).request_ack()
        await client.stop()

    sm._said.discard("unavailable")
    before = count("xmpp.sm.unavailable")
    with caplog.at_level(logging.WARNING, logger="amoc.xmpp"):
        asyncio.run(with_server([script], body))
        asyncio.run(with_server([script], body))
    assert count("xmpp.sm.unavailable") == before + 2
    warnings = [r for r in caplog.records if "does not offer XEP-0198" in r.getMessage()]
    assert len(warnings) == 1


def test_a_refused_enable_goes_on_without_stream_management() -> None:
    async def script(conn: Conn) -> None:
        await conn.login()
        await conn.expect("enable")
        conn.send(
            b"<failed xmlns='urn:xmpp:sm:3'>"
            b"<unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        )
        assert (await conn.expect("message")).get("id") == "1-1"
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode=True)
        assert client.connected and lean(client).stream_management is None
        client.send_chat(2)
        await client.stop()

    before = count("xmpp.sm.enable_failed")
    asyncio.run(with_server([script], body))
    assert count("xmpp.sm.enable_failed") == before + 1


# -- resumption -----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_dropped_connection_is_resumed_and_the_unacked_tail_sent_again(loop: str) -> None:
    go = asyncio.Event()
    resumed_with: list[Element] = []
    tail: list[str] = []

    async def first(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True, ident="sess-1")
        assert await conn.messages(5) == [f"1-{i}" for i in range(1, 6)]
        conn.send(
            b"<a xmlns='urn:xmpp:sm:3' h='2'/>"
            + PEER_MESSAGE % 1
            + PEER_MESSAGE % 2
            + b"<r xmlns='urn:xmpp:sm:3'/>"
        )
        assert (await conn.expect("a")).get("h") == "2"  # the client has handled both
        conn.drop()

    async def second(conn: Conn) -> None:
        await conn.authenticate()
        resumed_with.append(await conn.expect("resume"))
        await go.wait()
        # The server had got 4 of the 5; then it delivers what it kept during the outage.
        conn.send(b"<resumed xmlns='urn:xmpp:sm:3' h='4' previd='sess-1'/>" + PEER_MESSAGE % 3)
        tail.extend(await conn.messages(3))
        assert (await conn.expect("r")) is not None
        conn.send(b"<a xmlns='urn:xmpp:sm:3' h='7'/>")
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode="resume")
        connected = metrics.gauge("xmpp.connected").value
        for _ in range(5):
            client.send_chat(2)
        waiter = asyncio.ensure_future(client.wait_received(3, timeout_ms=8000))
        await until(lambda: client.received == 2, "two messages before the drop")
        await until(lambda: lean(client).resuming, "a resumption under way")
        assert client.connected
        client.send_chat(2)  # during the outage: kept, not raised
        client.send_chat(2)
        assert client.unacked == 3 + 2
        go.set()
        await waiter  # a waiter from before the drop got the message from after it
        await until(lambda: client.unacked == 0, "everything acknowledged")
        assert not lean(client).resuming and metrics.gauge("xmpp.connected").value == connected
        await client.stop()

    before = {n: count(n) for n in ("xmpp.sm.resumed", "xmpp.sm.resent", "xmpp.disconnects")}
    times = metrics.histogram("xmpp.sm.resume_time_ms").count
    run = asyncio.run if loop == "asyncio" else uvloop.run
    run(with_server([first, second], body))
    assert resumed_with[0].get("previd") == "sess-1" and resumed_with[0].get("h") == "2"
    assert tail == ["1-5", "1-6", "1-7"]  # the unacked one, then the two from the outage
    assert count("xmpp.sm.resumed") == before["xmpp.sm.resumed"] + 1
    assert count("xmpp.sm.resent") == before["xmpp.sm.resent"] + 3
    assert count("xmpp.disconnects") == before["xmpp.disconnects"]
    assert metrics.histogram("xmpp.sm.resume_time_ms").count == times + 1


def test_a_refused_resumption_counts_the_lost_and_binds_a_new_session() -> None:
    go = asyncio.Event()
    flushed: list[str] = []

    async def first(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True, ident="sess-1")
        assert (await conn.expect("presence")).get("type") == ""
        conn.send(f"<presence from='{JID}' to='{JID}'/>".encode())
        assert await conn.messages(4) == [f"1-{i}" for i in range(1, 5)]
        conn.send(b"<r xmlns='urn:xmpp:sm:3'/>")
        await conn.expect("a")
        conn.drop()

    async def second(conn: Conn) -> None:
        await conn.authenticate()
        await conn.expect("resume")
        await go.wait()
        # The session expired; the server still says it had got the presence and one chat.
        conn.send(
            b"<failed xmlns='urn:xmpp:sm:3' h='2'>"
            b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        )
        await conn.bind()
        await conn.enable(resume=True, ident="sess-2")
        # The new session needs the initial presence again, then the outage's send.
        flushed.append((await conn.expect("presence")).to_xml())
        flushed.extend(await conn.messages(1))
        assert (await conn.expect("r")) is not None
        conn.send(b"<a xmlns='urn:xmpp:sm:3' h='2'/>")
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode="resume")
        await client.send_presence(timeout_ms=3000)
        for _ in range(4):
            client.send_chat(2)
        await until(lambda: lean(client).resuming, "a resumption under way")
        client.send_chat(2)
        go.set()
        await until(lambda: not lean(client).resuming, "a new session")
        assert client.connected and state(client).id == "sess-2"
        await until(lambda: client.unacked == 0, "the new session's stanzas acknowledged")
        await client.stop()

    names = ("xmpp.sm.resume_failed", "xmpp.sm.lost", "xmpp.messages.lost", "xmpp.sm.resumed")
    before = {n: count(n) for n in names}
    asyncio.run(with_server([first, second], body))
    assert flushed == ["<presence/>", "1-5"]
    assert count("xmpp.sm.resume_failed") == before["xmpp.sm.resume_failed"] + 1
    assert count("xmpp.sm.lost") == before["xmpp.sm.lost"] + 3  # chats 2, 3 and 4
    assert count("xmpp.messages.lost") == before["xmpp.messages.lost"] + 3
    assert count("xmpp.sm.resumed") == before["xmpp.sm.resumed"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_failed_reconnect_attempts_are_retried_until_resumed(loop: str) -> None:
    async def first(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True, ident="sess-1")
        await conn.messages(1)
        conn.drop()

    async def refused(conn: Conn) -> None:
        conn.drop()  # accepted, then reset at once

    async def silent(conn: Conn) -> None:
        await conn.wait_open(1)  # and never answers: the attempt times out

    async def resumed(conn: Conn) -> None:
        await conn.authenticate()
        assert (await conn.expect("resume")).get("h") == "0"
        conn.send(b"<resumed xmlns='urn:xmpp:sm:3' h='0' previd='sess-1'/>")
        assert await conn.messages(1) == ["1-1"]
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode="resume", connect_timeout=300)
        client.send_chat(2)
        await until(lambda: lean(client).resuming, "a resumption under way")
        await until(lambda: not lean(client).resuming, "resumed", timeout=8)
        assert client.connected and client.unacked == 1
        await client.stop()

    before = count("xmpp.sm.resumed")
    run = asyncio.run if loop == "asyncio" else uvloop.run
    run(with_server([first, refused, silent, resumed], body))
    assert count("xmpp.sm.resumed") == before + 1


def test_no_reconnect_within_the_resume_timeout_ends_the_session() -> None:
    async def first(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True)
        await conn.messages(2)
        conn.drop()  # and every later connection is refused

    async def body(port: int) -> tuple[xmpp.ConnectionLost, float]:
        loop = asyncio.get_running_loop()
        gauge = unacked_gauge()
        client = await connect(port, mode="resume", sm_resume_timeout=600)
        waiter = asyncio.ensure_future(client.wait_message(timeout_ms=5000))
        client.send_chat(2)
        client.send_chat(2)
        await until(lambda: lean(client).resuming, "a resumption under way")
        started = loop.time()
        with pytest.raises(xmpp.ConnectionLost) as caught:
            await waiter
        assert not client.connected and client.unacked == 0 and unacked_gauge() == gauge
        with pytest.raises(xmpp.ConnectionLost):
            client.send_chat(2)
        await client.stop()
        return caught.value, loop.time() - started

    names = ("xmpp.sm.resume_timeouts", "xmpp.sm.lost", "xmpp.messages.lost", "xmpp.disconnects")
    before = {n: count(n) for n in names}
    connected = metrics.gauge("xmpp.connected").value
    lost, took = asyncio.run(with_server([first], body))
    assert "xmpp_sm_resume_timeout = 600 ms" in str(lost) and took < 2.0
    assert count("xmpp.sm.resume_timeouts") == before["xmpp.sm.resume_timeouts"] + 1
    assert count("xmpp.sm.lost") == before["xmpp.sm.lost"] + 2
    assert count("xmpp.messages.lost") == before["xmpp.messages.lost"] + 2
    assert count("xmpp.disconnects") == before["xmpp.disconnects"] + 1
    assert metrics.gauge("xmpp.connected").value == connected


def test_stop_during_a_resumption_ends_it_at_once() -> None:
    async def first(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True)
        await conn.messages(1)
        conn.drop()

    async def stalled(conn: Conn) -> None:
        await conn.wait_open(1)  # the resumption's login never goes on

    async def body(port: int) -> float:
        loop = asyncio.get_running_loop()
        gauge = unacked_gauge()
        client = await connect(port, mode="resume")
        waiter = asyncio.ensure_future(client.wait_message(timeout_ms=5000))
        client.send_chat(2)
        await until(lambda: lean(client).resuming, "a resumption under way")
        task = state(client).task
        assert task is not None
        started = loop.time()
        await client.stop()
        took = loop.time() - started
        with pytest.raises(xmpp.XmppError, match="closed"):
            await waiter
        await until(task.done, "the resumption task ended")
        assert not client.connected and unacked_gauge() == gauge
        return took

    before = {n: count(n) for n in ("xmpp.disconnects", "xmpp.sm.lost")}
    connected = metrics.gauge("xmpp.connected").value
    took = asyncio.run(with_server([first, stalled], body))
    assert took < 1.0
    assert {n: count(n) for n in before} == before  # a stop is no loss
    assert metrics.gauge("xmpp.connected").value == connected


@pytest.mark.parametrize("mode", [False, True])
def test_without_resumption_a_dropped_connection_ends_the_session(mode: bool) -> None:
    async def script(conn: Conn) -> None:
        await conn.login()
        if mode:
            await conn.enable(resume=False)
        await conn.messages(3)
        conn.drop()

    async def body(port: int) -> xmpp.ConnectionLost:
        client = await connect(port, mode=mode)
        for _ in range(3):
            client.send_chat(2)
        with pytest.raises(xmpp.ConnectionLost) as caught:
            await client.wait_message(timeout_ms=5000)
        assert not client.connected
        return caught.value

    before = {n: count(n) for n in ("xmpp.disconnects", "xmpp.sm.lost")}
    asyncio.run(with_server([script], body))
    assert count("xmpp.disconnects") == before["xmpp.disconnects"] + 1
    # With acks on, the three unacknowledged chats are counted lost.
    assert count("xmpp.sm.lost") == before["xmpp.sm.lost"] + (3 if mode else 0)


def test_drop_connection_is_a_network_failure_the_client_resumes_from() -> None:
    go = asyncio.Event()

    async def first(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True, ident="sess-1")
        conn.send(PEER_MESSAGE % 1)
        with pytest.raises(ConnectionError):
            await conn.next()  # the client aborts: no </stream:stream>, no more bytes
        assert not conn.closed

    async def second(conn: Conn) -> None:
        await conn.authenticate()
        assert (await conn.expect("resume")).get("h") == "1"
        await go.wait()
        conn.send(b"<resumed xmlns='urn:xmpp:sm:3' h='0' previd='sess-1'/>")
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode="resume")
        await client.wait_received(1, timeout_ms=3000)
        client.drop_connection()
        await until(lambda: lean(client).resuming, "a resumption under way")
        go.set()
        await until(lambda: not lean(client).resuming, "resumed")
        assert client.connected
        await client.stop()

    asyncio.run(with_server([first, second], body))


def test_the_server_closing_its_stream_ends_the_session_without_resuming() -> None:
    async def script(conn: Conn) -> None:
        await conn.login()
        await conn.enable(resume=True)
        conn.send(b"</stream:stream>")
        await conn.closing()

    async def body(port: int) -> None:
        client = await connect(port, mode="resume")
        with pytest.raises(xmpp.ConnectionLost):
            await client.wait_message(timeout_ms=5000)
        assert not lean(client).resuming and not client.connected

    before = count("xmpp.sm.interruptions")
    asyncio.run(with_server([script], body))
    assert count("xmpp.sm.interruptions") == before
