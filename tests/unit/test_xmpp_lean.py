"""The lean XMPP client without a real server: parser, SCRAM, settings, a scripted peer."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from amoc import metrics, xmpp
from amoc.config import Config
from amoc.errors import ConfigError
from amoc.xmpp import parser as parser_mod
from amoc.xmpp import scram
from amoc.xmpp.parser import Element, StreamParser, XmlError

pytestmark = pytest.mark.unit

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>"
)
FEATURES = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>"
    b"</stream:features>"
)
MESSAGE = (
    "<message from='user_2@localhost/amoc' type='chat'><body>héllo € &lt;3 𝄞</body>"
    "<stamp xmlns='urn:amoc:ttd' us='1764041123456789'/></message>"
).encode()
CLOSE = b"</stream:stream>"


class Recorder:
    """A StreamHandler that keeps what it is told, as plain tuples."""

    def __init__(self, restart_on: str = "") -> None:
        self.events: list[Any] = []
        self.restart_on = restart_on
        self.parser = StreamParser(self)

    def stream_opened(self, attrs: dict[str, str]) -> None:
        self.events.append(("open", attrs.get("id")))

    def stanza(self, element: Element) -> None:
        self.events.append(describe(element))
        if self.restart_on and element.tag.endswith(self.restart_on):
            self.parser.restart()

    def stream_closed(self) -> None:
        self.events.append("close")

    def feed_in(self, data: bytes, size: int) -> list[Any]:
        for i in range(0, len(data), size):
            self.parser.feed(data[i : i + size])
        return self.events


def describe(element: Element) -> tuple[Any, ...]:
    return (
        element.tag,
        element.attrs,
        element.text,
        [describe(child) for child in element.children],
    )


def parse_whole(data: bytes, restart_on: str = "") -> list[Any]:
    return Recorder(restart_on).feed_in(data, len(data))


# -- the parser: splits and merges ----------------------------------------------------------

STREAM = HEADER + FEATURES + MESSAGE + MESSAGE + b"\n " + MESSAGE + CLOSE


def test_a_whole_stream_gives_header_stanzas_and_close() -> None:
    events = parse_whole(STREAM)
    assert events[0] == ("open", "s1")
    assert events[1][0] == "http://etherx.jabber.org/streams features"
    message = events[2]
    assert message[0] == "jabber:client message"
    assert message[1] == {"from": "user_2@localhost/amoc", "type": "chat"}
    assert message[3][0] == ("jabber:client body", {}, "héllo € <3 𝄞", [])
    assert message[3][1] == ("urn:amoc:ttd stamp", {"us": "1764041123456789"}, "", [])
    assert events[2] == events[3] == events[4] and events[5] == "close"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_any_split_gives_the_same_events(size: int) -> None:
    assert Recorder().feed_in(STREAM, size) == parse_whole(STREAM)


def test_a_split_inside_each_multibyte_character() -> None:
    whole = parse_whole(STREAM)
    start = len(HEADER + FEATURES)
    # Every cut inside the message, in particular inside é, € and the 4-byte 𝄞.
    for cut in range(start, start + len(MESSAGE)):
        rec = Recorder()
        rec.parser.feed(STREAM[:cut])
        rec.parser.feed(STREAM[cut:])
        assert rec.events == whole, cut


def test_many_stanzas_in_one_read_then_a_partial_one() -> None:
    rec = Recorder()
    rec.parser.feed(HEADER + FEATURES + MESSAGE * 50 + MESSAGE[:30])
    assert len(rec.events) == 52 and rec.parser.holds_parser  # mid-stanza: keeps a parser
    rec.parser.feed(MESSAGE[30:])
    assert len(rec.events) == 53 and not rec.parser.holds_parser


def test_connections_between_stanzas_hold_no_parser_and_the_pool_stays_small() -> None:
    recs = [Recorder() for _ in range(200)]
    for rec in recs:
        rec.parser.feed(HEADER + FEATURES)
    for rec in recs:
        rec.parser.feed(MESSAGE[:10])  # some stop mid-stanza...
    for rec in recs:
        rec.parser.feed(MESSAGE[10:] + MESSAGE)  # ...and finish
    assert all(len(rec.events) == 4 and not rec.parser.holds_parser for rec in recs)
    assert parser_mod.pool_size() <= parser_mod.POOL_SIZE


def test_a_stream_restart_in_the_same_read_goes_to_a_new_parser() -> None:
    success = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    second = HEADER.replace(b"id='s1'", b"id='s2'")
    data = HEADER + FEATURES + success + second + MESSAGE
    for size in (len(data), 1, 7):
        events = Recorder(restart_on="success").feed_in(data, size)
        assert [e[0] if isinstance(e, tuple) else e for e in events] == [
            "open",
            "http://etherx.jabber.org/streams features",
            "urn:ietf:params:xml:ns:xmpp-sasl success",
            "open",
            "jabber:client message",
        ]
        assert events[3] == ("open", "s2")


def test_other_prefixes_for_the_stream_namespace_work() -> None:
    header = (
        b"<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' version='1.0'>"
    )
    rec = Recorder()
    rec.feed_in(header + b"<s:features/>" + MESSAGE + MESSAGE + b"</s:stream>", 9)
    assert rec.events[1][0] == "http://etherx.jabber.org/streams features"
    assert [e[0] for e in rec.events[2:4]] == ["jabber:client message"] * 2
    assert rec.events[-1] == "close"


# -- the parser: bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "malformed XML from the peer: not well-formed"),
        (HEADER + b"<message><body>x</message>", "malformed XML from the peer: mismatched tag"),
        (HEADER + b"<message a='1' a='2'/>", "duplicate attribute"),
        (HEADER + b"<p:x/>", "unbound prefix"),
        (b"<html><body/></html>", "did not open an XMPP stream: root element 'html'"),
        (HEADER + b"<!-- hello -->", "restricted XML: the peer sent a comment"),
        (b"<!DOCTYPE s [<!ENTITY e 'x'>]><s/>", "restricted XML: the peer sent a DOCTYPE"),
        (HEADER + b"<?php echo 1 ?>", "processing instruction"),
        (HEADER + b"<message>\xff\xfe</message>", "not well-formed"),
    ],
)
def test_malformed_input_is_a_clear_error(data: bytes, expected: str) -> None:
    rec = Recorder()
    with pytest.raises(XmlError, match=expected.replace("(", r"\(")):
        rec.feed_in(data, len(data))
    # The stream stays broken: the same error again, at once, for any further bytes.
    with pytest.raises(XmlError, match="malformed|restricted|did not open"):
        rec.parser.feed(MESSAGE)
    assert not rec.parser.holds_parser


def test_malformed_input_byte_by_byte_fails_as_soon_as_it_is_wrong() -> None:
    rec = Recorder()
    data = HEADER + b"<message></mess>" + MESSAGE
    fed = 0
    with pytest.raises(XmlError, match="mismatched tag"):
        for i in range(len(data)):
            rec.parser.feed(data[i : i + 1])
            fed = i + 1
    assert fed == len(HEADER) + len(b"<message></mess")  # the error is on its ">"


def test_data_after_the_stream_closed_is_an_error() -> None:
    rec = Recorder()
    rec.parser.feed(HEADER + CLOSE)
    assert rec.events == [("open", "s1"), "close"]
    rec.parser.feed(b"  \n")  # whitespace is harmless
    with pytest.raises(XmlError, match="after closing"):
        rec.parser.feed(MESSAGE)


# -- the parser's shortcut for stamped chat messages -----------------------------------------

EJABBERD_CHAT = (
    "<message xml:lang='en' to='user_2@localhost/amoc' from='user_1@localhost/amoc' "
    "type='chat' id='1-1'><stamp xmlns='urn:amoc:ttd' us='1764041123456789'/>"
    "<body>message 1 from user_1 é€𝄞</body></message>"
)
PROSODY_CHAT = (
    "<message xml:lang='en' to='user_2@localhost/amoc' from='user_1@localhost/amoc' "
    "type='chat' id='1-1'><body>message 1 from user_1</body><stamp us='1764041123456789' "
    "xmlns='urn:amoc:ttd'/><stanza-id xmlns='urn:xmpp:sid:0' by='user_2@localhost' "
    "id='5D2FhsVDaSeBmxUC'/></message>"
)
# Each a variant of one of the two: (from, to) replacements. The shortcut takes these:
TAKEN = [
    (EJABBERD_CHAT, []),
    (PROSODY_CHAT, []),
    (EJABBERD_CHAT, [("'", '"')]),  # double quotes
    (EJABBERD_CHAT, [(" xml:lang='en'", " xmlns='jabber:client'")]),
    (EJABBERD_CHAT, [("type='chat' ", "")]),  # a normal message
    (EJABBERD_CHAT, [("<body>message 1 from user_1 é€𝄞", "<body>")]),  # empty
    (EJABBERD_CHAT, [("us='1764041123456789'/>", "us='1764041123456789' />")]),
]
# and leaves these to expat: what expat reads differently or refuses, and what the router
# does not count as a plain chat message.
LEFT = [
    (EJABBERD_CHAT, [("type='chat'", "type='error'")]),
    (EJABBERD_CHAT, [("type='chat'", "type='groupchat'")]),
    (EJABBERD_CHAT, [(" xml:lang='en'", " xmlns='jabber:server'")]),
    (EJABBERD_CHAT, [("id='1-1'", "id='1-1' id='1-2'")]),  # duplicate attribute
    (EJABBERD_CHAT, [("xml:lang", "p:lang")]),  # unbound prefix
    (EJABBERD_CHAT, [("from user_1", "&amp; &lt;3")]),  # entities
    (EJABBERD_CHAT, [("from user_1", "]]>")]),  # not allowed in text
    (EJABBERD_CHAT, [("from user_1", "a\r\nb")]),  # line ends are normalised
    (EJABBERD_CHAT, [("from user_1", "a\x01b")]),  # not an XML character
    (EJABBERD_CHAT, [("id='1-1'", "id='1\t1'")]),  # attribute values are normalised
    (EJABBERD_CHAT, [("id='1-1'", "id='a=b'")]),
    (EJABBERD_CHAT, [("urn:amoc:ttd", "urn:other")]),
    (EJABBERD_CHAT, [("us='1764041123456789'", "us='17640x1123456789'")]),
    (EJABBERD_CHAT, [("<stamp ", "<stamp us='1' ")]),
    (EJABBERD_CHAT, [("<body>", "<body xml:lang='en'>")]),
    (EJABBERD_CHAT, [("</body>", "</body><delay xmlns='urn:xmpp:delay'/>")]),
    (EJABBERD_CHAT, [("<body>message 1 from user_1 é€𝄞</body>", "")]),
    (EJABBERD_CHAT, [("</body>", "</body><body>again</body>")]),
    (PROSODY_CHAT, [("urn:xmpp:sid:0", "urn:xmpp:delay")]),
    (PROSODY_CHAT, [("by='user_2@localhost'", "by='a' by='b'")]),
    (EJABBERD_CHAT, [("</message>", "</mess>")]),
]


def _variant(base: str, changes: list[tuple[str, str]]) -> bytes:
    for old, new in changes:
        assert old in base
        base = base.replace(old, new)
    return base.encode()


def _what_expat_reads(data: bytes) -> tuple[str, str, str | None] | str:
    """(from, body, stamp) of the one message the parser reads, or what is wrong."""
    try:
        events = parse_whole(HEADER + data)
    except XmlError as exc:
        return f"refused: {exc}"
    [_open, (_tag, attrs, _text, children)] = events
    kids = {child[0]: child for child in children}
    body = kids.get("jabber:client body")
    stamp = kids.get("urn:amoc:ttd stamp")
    return (
        attrs.get("from", ""),
        body[2] if body else "",
        stamp[1].get("us") if stamp else None,
    )


@pytest.mark.parametrize(("base", "changes"), TAKEN)
def test_the_shortcut_reads_what_expat_reads(base: str, changes: list[tuple[str, str]]) -> None:
    data = _variant(base, changes)
    chats, rest = parser_mod.stamped_chats(data)
    assert rest == b""
    assert chats == [_what_expat_reads(data)]


@pytest.mark.parametrize(("base", "changes"), LEFT)
def test_the_shortcut_leaves_the_rest_to_expat(base: str, changes: list[tuple[str, str]]) -> None:
    data = _variant(base, changes)
    assert parser_mod.stamped_chats(data) == ([], data)  # all of it for the parser


def test_the_shortcut_takes_the_messages_a_read_begins_with_and_leaves_the_rest() -> None:
    one, two = EJABBERD_CHAT.encode(), PROSODY_CHAT.encode()
    other = b"<presence from='user_3@localhost/amoc'/>"
    chats, rest = parser_mod.stamped_chats(one + two + other + one)
    assert [c[1] for c in chats] == ["message 1 from user_1 é€𝄞", "message 1 from user_1"]
    assert rest == other + one
    assert parser_mod.stamped_chats(one[:-3]) == ([], one[:-3])  # a split message
    assert parser_mod.stamped_chats(b"\xff" + one) == ([], b"\xff" + one)


def test_a_lean_client_counts_shortcut_and_parsed_messages_alike() -> None:
    """The same message, once by the shortcut and once by the parser (a handler watches),
    is counted, timed and kept alike."""
    from amoc.xmpp.base import State

    client = xmpp.LeanClient(1, xmpp.settings(Config(environ={})), "user_1")
    client._state = State.ONLINE
    client._step = xmpp.LeanClient._online
    client._parser = StreamParser(client)
    client.data_received(HEADER)
    received, ttds = count("xmpp.messages.received"), metrics.histogram("xmpp.ttd_ms").count
    client.data_received(EJABBERD_CHAT.encode())
    assert not client._parser.holds_parser
    ref = client.add_handler(xmpp.pred.chat(), lambda _stanza: False)
    client.data_received(EJABBERD_CHAT.encode())
    client.remove_handler(ref)
    first, second = client.take_messages()
    assert first._replace(ttd_ms=0.0) == second._replace(ttd_ms=0.0)
    assert first.sender == "user_1@localhost/amoc" and first.sent_us == 1764041123456789
    assert not first.delayed and first.ttd_ms is not None and second.ttd_ms is not None
    assert count("xmpp.messages.received") == received + 2 == client.received + received
    assert metrics.histogram("xmpp.ttd_ms").count == ttds + 2


# -- SCRAM-SHA-1 ----------------------------------------------------------------------------

# RFC 5802, section 5.
RFC_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
RFC_SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
)
RFC_SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="


def test_scram_sha1_matches_the_rfc_5802_example() -> None:
    exchange = scram.Scram("user", "pencil", nonce=RFC_NONCE)
    assert exchange.client_first() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    assert exchange.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    exchange.verify(RFC_SERVER_FINAL)
    assert exchange.verified


def test_scram_refuses_a_server_that_does_not_know_the_password() -> None:
    exchange = scram.Scram("user", "not-pencil", nonce=RFC_NONCE)
    exchange.client_final(RFC_SERVER_FIRST)
    with pytest.raises(scram.ScramError, match="does not know the password"):
        exchange.verify(RFC_SERVER_FINAL)


@pytest.mark.parametrize(
    ("server_first", "expected"),
    [
        (b"r=someone-elses-nonce,s=QSXCR+Q6sek8bf92,i=4096", "nonce"),
        (b"r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096", "nonce"),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxx,s=!!,i=4096", "salt"),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxx,s=QSXCR+Q6sek8bf92,i=0", "iteration"),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxx,s=QSXCR+Q6sek8bf92,i=99999999", "iteration"),
        (b"m=ext,r=fyko+d2lbbFgONRv9qkxdawLxx", "extension"),
        (b"garbage", "malformed"),
    ],
)
def test_scram_refuses_bad_server_first_messages(server_first: bytes, expected: str) -> None:
    with pytest.raises(scram.ScramError, match=expected):
        scram.Scram("user", "pencil", nonce=RFC_NONCE).client_final(server_first)


def test_scram_sha256_matches_the_rfc_7677_example() -> None:
    exchange = scram.Scram("user", "pencil", "SCRAM-SHA-256", nonce="rOprNGfwEbeRWgbNEkqO")
    assert exchange.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert exchange.client_final(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    exchange.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert exchange.verified


def test_scram_plus_binds_the_channel_and_y_flags_a_downgrade() -> None:
    plus = scram.Scram("u", "p", "SCRAM-SHA-512-PLUS", nonce="abc", binding=b"\x01\x02")
    assert plus.client_first() == b"p=tls-unique,,n=u,r=abc"
    final = plus.client_final(b"r=abcdef,s=c2FsdA==,i=4096")
    assert final.startswith(b"c=" + base64.b64encode(b"p=tls-unique,,\x01\x02") + b",r=abcdef,p=")
    assert len(base64.b64decode(final.rsplit(b"p=", 1)[1])) == 64  # a SHA-512 proof
    assert scram.Scram(
        "u", "p", "SCRAM-SHA-1", nonce="n", binding_supported=True
    ).client_first() == (b"y,,n=u,r=n")
    with pytest.raises(scram.ScramError, match="needs channel-binding data"):
        scram.Scram("u", "p", "SCRAM-SHA-256-PLUS")
    with pytest.raises(scram.ScramError, match="unknown SCRAM mechanism"):
        scram.Scram("u", "p", "SCRAM-MD5")


@pytest.mark.parametrize(
    ("offered", "wanted", "binding", "chosen"),
    [
        (["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], "AUTO", False, "SCRAM-SHA-256"),
        (["PLAIN", "SCRAM-SHA-512", "SCRAM-SHA-512-PLUS"], "AUTO", False, "SCRAM-SHA-512"),
        (["SCRAM-SHA-1", "SCRAM-SHA-1-PLUS"], "AUTO", True, "SCRAM-SHA-1-PLUS"),
        (["PLAIN", "X-OAUTH2"], "AUTO", True, "PLAIN"),
        (["X-OAUTH2"], "AUTO", True, None),
        (["PLAIN", "SCRAM-SHA-1"], "SCRAM-SHA-256", False, None),
        (["SCRAM-SHA-256-PLUS"], "SCRAM-SHA-256-PLUS", False, None),
        (["PLAIN", "SCRAM-SHA-1"], "PLAIN", False, "PLAIN"),
    ],
)
def test_the_mechanism_is_the_strongest_offered_that_the_settings_allow(
    offered: list[str], wanted: str, binding: bool, chosen: str | None
) -> None:
    assert scram.choose(offered, wanted, tls=binding, binding=binding) == chosen


def test_the_salted_password_is_computed_once_per_user() -> None:
    first = scram.Scram("u", "cached-pw", "SCRAM-SHA-256", nonce="n1")
    server_first = b"r=n1x,s=c2FsdHk=,i=4096"
    assert first.salt_needed(server_first) == ("sha256", "cached-pw", b"salty", 4096)
    first.client_final(server_first)
    again = scram.Scram("u", "cached-pw", "SCRAM-SHA-256", nonce="n1")
    assert again.salt_needed(server_first) is None
    assert again.client_final(server_first) == first.client_final(server_first)


def test_scram_escapes_names_and_plain_packs_its_fields() -> None:
    assert scram.Scram("a=b,c", "p", nonce="n").client_first() == b"n,,n=a=3Db=2Cc,r=n"
    assert scram.plain("user_1", "pw") == b"\0user_1\0pw"


# -- the setting ----------------------------------------------------------------------------


def settings_from(**env: str) -> xmpp.Settings:
    return xmpp.settings(Config(environ={f"AMOC_{k.upper()}": v for k, v in env.items()}))


def test_xmpp_client_is_declared_verified_and_overridable() -> None:
    assert "xmpp_client" in {p.name for p in xmpp.PARAMETERS}
    assert settings_from().client in ("slixmpp", "lean")
    assert settings_from(xmpp_client="'LEAN'").client == "lean"
    assert xmpp.settings(Config(environ={}), client="slixmpp").client == "slixmpp"
    with pytest.raises(ConfigError, match="xmpp_client"):
        settings_from(xmpp_client="'tsung'")


# -- the client against a scripted peer -----------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_until(reader: asyncio.StreamReader, marker: bytes, limit: float = 5.0) -> bytes:
    """Read until `marker` has arrived (bounded in time)."""
    data = b""
    async with asyncio.timeout(limit):
        while marker not in data:
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionError(f"peer closed before {marker!r}; got {data!r}")
            data += chunk
    return data


async def log_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server's side of a PLAIN login, with a required legacy session."""
    await read_until(reader, b"<stream:stream")
    writer.write(HEADER + FEATURES)
    auth = await read_until(reader, b"</auth>")
    assert base64.b64encode(b"\0user_1\0password_1") in auth
    writer.write(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    await read_until(reader, b"<stream:stream")
    writer.write(
        HEADER.replace(b"s1", b"s2") + b"<stream:features>"
        b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></stream:features>"
    )
    await read_until(reader, b"</iq>")
    writer.write(
        b"<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<jid>user_1@localhost/amoc</jid></bind></iq>"
    )
    await read_until(reader, b"xmpp-session")
    writer.write(b"<iq type='result' id='session'/>")


async def with_peer(script: Script, body: Callable[[int], Awaitable[Any]]) -> Any:
    """Run `body(port)` against a one-connection server that follows `script`."""
    done: list[BaseException] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except BaseException as exc:
            done.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            return await body(port)
    finally:
        server.close()
        # The peer's socket errors are the client leaving (a failed login): not the test's.
        if done and not isinstance(done[0], OSError | asyncio.CancelledError):
            raise done[0]


def lean(port: int, **kw: Any) -> Awaitable[xmpp.Session]:
    kw.setdefault("sasl", "PLAIN")
    return xmpp.connect(1, client="lean", port=port, config=Config(environ={}), **kw)


def count(name: str) -> int:
    return int(metrics.counter(name).value)


def test_login_with_a_required_session_then_chat_ping_and_server_close() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await log_in(reader, writer)
        await read_until(reader, b"<presence/>")
        # Presence echo, a ping, an unknown request, two messages: one read.
        writer.write(
            b"<presence from='user_1@localhost/amoc' to='user_1@localhost/amoc'/>"
            b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            b"<iq type='get' id='v1' from='localhost'><query xmlns='jabber:iq:version'/></iq>"
            + MESSAGE
            + MESSAGE.replace(b"chat'>", b"chat'><delay xmlns='urn:xmpp:delay'/>")
        )
        sent = await read_until(reader, b"</message>")  # our answers, then the chat
        assert b'<iq type="result" id="p1" to="localhost"/>' in sent
        assert b'id="v1" to="localhost"><error type="cancel"><service-unavailable' in sent
        assert b'to="user_2@localhost/amoc"' in sent and b"urn:amoc:ttd" in sent
        writer.write(CLOSE)  # the server ends the session
        await read_until(reader, CLOSE)

    async def body(port: int) -> tuple[list[xmpp.Message], BaseException]:
        client = await lean(port)
        assert client.connected
        await client.send_presence(timeout_ms=2000)
        await client.wait_received(2, timeout_ms=2000)
        client.send_chat(2)
        with pytest.raises(xmpp.ConnectionLost) as lost:
            await client.wait_message(timeout_ms=3000)
            await client.wait_message(timeout_ms=3000)
            await client.wait_message(timeout_ms=3000)
        return client.take_messages(), lost.value

    before = count("xmpp.disconnects")
    messages, lost = asyncio.run(with_peer(script, body))
    assert lost.reason is xmpp.Reason.CLOSED and "ended the session" in str(lost)
    assert count("xmpp.disconnects") == before + 1
    assert messages == []  # both were read by wait_message before the close


def test_a_stream_error_during_login_is_its_reason() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(
            HEADER + b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no such domain</text>"
            b"</stream:error>" + CLOSE
        )

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port)
        return caught.value

    err = asyncio.run(with_peer(script, body))
    assert err.reason is xmpp.Reason.STREAM_ERROR
    assert "host-unknown: no such domain" in str(err)


def test_malformed_xml_from_the_server_fails_the_login_at_once() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await read_until(reader, b"not-well-formed")  # we tell the peer why we leave

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port, connect_timeout=5000)
        return caught.value

    err = asyncio.run(with_peer(script, body))
    assert err.reason is xmpp.Reason.STREAM_ERROR and "bad XML" in str(err)


def test_scram_login_checks_the_server_signature() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(HEADER + FEATURES)
        auth = await read_until(reader, b"</auth>")
        first = base64.b64decode(auth.split(b">")[1].split(b"<")[0])
        nonce = first.split(b"r=")[1]
        server_first = b"r=" + nonce + b"srv,s=" + base64.b64encode(b"salt") + b",i=4096"
        writer.write(
            b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            + base64.b64encode(server_first)
            + b"</challenge>"
        )
        await read_until(reader, b"</response>")
        forged = base64.b64encode(b"v=" + base64.b64encode(b"x" * 20))
        writer.write(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>" + forged + b"</success>")
        await asyncio.sleep(1)

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port, sasl="SCRAM-SHA-1")
        return caught.value

    err = asyncio.run(with_peer(script, body))
    assert err.reason is xmpp.Reason.AUTH and "does not know the password" in str(err)


def test_a_missing_mechanism_is_no_mechanism() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(HEADER + FEATURES.replace(b"<mechanism>PLAIN</mechanism>", b""))
        await asyncio.sleep(1)

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port)
        return caught.value

    err = asyncio.run(with_peer(script, body))
    assert err.reason is xmpp.Reason.NO_MECHANISM
    assert "the server offers SCRAM-SHA-1, not xmpp_sasl = PLAIN: set xmpp_sasl" in str(err)


# -- STARTTLS -------------------------------------------------------------------------------

TLS_FEATURES = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
    b"</starttls></stream:features>"
)


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(Path(cert), Path(key))
    return ctx


def starttls_script(ctx: ssl.SSLContext) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(HEADER + TLS_FEATURES)
        await read_until(reader, b"<starttls")
        writer.write(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await writer.drain()
        await writer.start_tls(ctx)
        await log_in(reader, writer)  # the rest of the login, encrypted
        await read_until(reader, b"<presence/>")
        writer.write(b"<presence from='user_1@localhost/amoc'/>" + MESSAGE)
        await read_until(reader, CLOSE)
        writer.write(CLOSE)

    return script


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_starttls_then_login_and_chat(server_tls: ssl.SSLContext, loop: str) -> None:
    async def body(port: int) -> list[xmpp.Message]:
        client = await lean(port, tls=True)
        assert client.connected
        await client.send_presence(timeout_ms=2000)
        await client.wait_received(1, timeout_ms=2000)
        messages = client.take_messages()
        await client.stop()
        return messages

    run = asyncio.run if loop == "asyncio" else uvloop.run
    messages = run(with_peer(starttls_script(server_tls), body))
    assert [m.body for m in messages] == ["héllo € <3 𝄞"]


def test_an_untrusted_certificate_is_a_tls_login_error(server_tls: ssl.SSLContext) -> None:
    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port, tls=True, tls_verify=True)
        return caught.value

    before = count("xmpp.logins.failed.tls")
    err = asyncio.run(with_peer(starttls_script(server_tls), body))
    assert err.reason is xmpp.Reason.TLS and "not trusted" in str(err)
    assert "xmpp_tls_verify = false" in str(err)
    assert count("xmpp.logins.failed.tls") == before + 1


def test_tls_required_by_us_but_not_offered() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, b"<stream:stream")
        writer.write(HEADER + FEATURES)
        await asyncio.sleep(1)

    async def body(port: int) -> xmpp.LoginError:
        with pytest.raises(xmpp.LoginError) as caught:
            await lean(port, tls=True)
        return caught.value

    err = asyncio.run(with_peer(script, body))
    assert err.reason is xmpp.Reason.TLS and "does not offer STARTTLS" in str(err)
