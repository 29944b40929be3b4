"""amoc.xmpp without a server: naming, parameters, the TTD stamp, the receive path."""

import asyncio
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from amoc import xmpp
from amoc.config import Config
from amoc.errors import AmocError, ConfigError
from amoc.scenario import load
from amoc.xmpp import stamp
from amoc.xmpp.client import Client
from amoc.xmpp.parser import from_etree

pytestmark = pytest.mark.unit

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def defaults(**env: str) -> xmpp.Settings:
    return xmpp.settings(Config(environ={f"AMOC_{k.upper()}": v for k, v in env.items()}))


# -- naming ---------------------------------------------------------------------------------


def test_names_follow_the_prefixes_and_the_domain() -> None:
    s = defaults()
    assert xmpp.username(7, s) == "user_7"
    assert xmpp.password(7, s) == "password_7"
    assert xmpp.jid(7, s) == "user_7@localhost"
    assert xmpp.jid(7, s, resource=True) == "user_7@localhost/amoc"


def test_names_use_configured_prefixes() -> None:
    s = defaults(xmpp_username_prefix="'bob'", xmpp_password_prefix="'pw'", xmpp_domain="'ex.org'")
    assert (xmpp.username(3, s), xmpp.password(3, s), xmpp.jid(3, s)) == (
        "bob3",
        "pw3",
        "bob3@ex.org",
    )


def test_empty_resource_gives_a_bare_jid() -> None:
    s = defaults(xmpp_resource="''")
    assert xmpp.jid(1, s, resource=True) == "user_1@localhost"


# -- parameters -----------------------------------------------------------------------------


def test_parameters_are_declared_with_descriptions() -> None:
    names = {p.name for p in xmpp.PARAMETERS}
    for expected in (
        "xmpp_host",
        "xmpp_port",
        "xmpp_domain",
        "xmpp_tls",
        "xmpp_tls_verify",
        "xmpp_sasl",
        "xmpp_username_prefix",
        "xmpp_password_prefix",
        "xmpp_resource",
        "xmpp_connect_timeout",
    ):
        assert expected in names
    assert all(p.description for p in xmpp.PARAMETERS)


def test_defaults() -> None:
    s = defaults()
    assert (s.host, s.port, s.domain, s.tls, s.sasl) == (
        "127.0.0.1",
        5222,
        "localhost",
        "none",
        "AUTO",
    )
    assert s.connect_timeout == 10_000


def test_environment_values_are_verified_and_normalised() -> None:
    s = defaults(xmpp_port="5223", xmpp_sasl="'scram-sha-1'", xmpp_tls="True")
    assert (s.port, s.sasl, s.tls) == (5223, "SCRAM-SHA-1", "starttls")
    assert defaults(xmpp_tls="'Direct'").tls == "direct"


def test_tls_names_and_ca_files_are_checked_before_any_connection(tmp_path: Path) -> None:
    s = defaults(xmpp_tls="'starttls'", xmpp_tls_server_name="'xmpp.example.net'")
    assert (s.tls_name, s.encrypted) == ("xmpp.example.net", True)
    assert defaults().tls_name == "localhost" and not defaults().encrypted
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for path, why in ((tmp_path / "missing.pem", "no such file"), (garbage, "no PEM")):
        with pytest.raises(ConfigError, match=f"xmpp_tls_ca_file.*{why}"):
            defaults(xmpp_tls_ca_file=repr(str(path)))


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("xmpp_port", "70000"),
        ("xmpp_port", "'5222'"),
        ("xmpp_sasl", "'DIGEST-MD5'"),
        ("xmpp_tls", "'yes'"),
        ("xmpp_tls", "'ssl'"),
        ("xmpp_sasl", "'SCRAM-MD5'"),
        ("xmpp_tls_server_name", "'a b'"),
        ("xmpp_connect_timeout", "0"),
        ("xmpp_host", "''"),
        ("xmpp_domain", "'a b'"),
        ("xmpp_inbox_size", "-1"),
    ],
)
def test_invalid_values_are_refused_naming_the_parameter(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        defaults(**{name: raw})


def test_overrides_by_short_name_are_verified() -> None:
    base = defaults()
    assert xmpp.settings(Config(environ={}), port=25222).port == 25222
    with pytest.raises(ConfigError, match="unknown xmpp setting 'prot'"):
        xmpp.settings(Config(environ={}), prot=1)
    with pytest.raises(ConfigError, match="port"):
        xmpp.settings(Config(environ={}), port=0)
    assert base.port == 5222


def test_errors_are_amoc_errors_with_a_reason() -> None:
    err = xmpp.LoginError("no", xmpp.Reason.AUTH, 3)
    assert isinstance(err, xmpp.XmppError) and isinstance(err, AmocError)
    assert (err.reason, err.user_id, str(xmpp.Reason.AUTH)) == (xmpp.Reason.AUTH, 3, "auth")


# -- TTD stamp ------------------------------------------------------------------------------


def test_stamp_round_trips_through_a_message() -> None:
    sent = stamp.now_us()
    xml = ET.fromstring(
        "<message xmlns='jabber:client' to='a@b'><body>x</body>" + stamp.encode(sent) + "</message>"
    )
    assert stamp.read(xml) == sent
    assert stamp.ttd_ms(sent, sent + 1500) == 1.5


@pytest.mark.parametrize("value", [None, "", "abc", "-5", "0", "1.5"])
def test_bad_stamps_read_as_none(value: str | None) -> None:
    assert stamp.decode_value(value) is None


def test_unstamped_message_reads_as_none() -> None:
    assert (
        stamp.read(ET.fromstring("<message xmlns='jabber:client'><body>x</body></message>")) is None
    )


# -- receive path (no connection) -----------------------------------------------------------


def _route(client: Client, stanza: "_Stanza") -> None:
    client._route(from_etree(stanza.xml))


class _Stanza:
    def __init__(self, text: str) -> None:
        self.xml = ET.fromstring(text)


def _chat(sent_us: int | None, body: str = "hi", extra: str = "") -> _Stanza:
    mark = stamp.encode(sent_us) if sent_us is not None else ""
    return _Stanza(
        f"<message xmlns='jabber:client' from='user_2@localhost/amoc' type='chat'>"
        f"<body>{body}</body>{mark}{extra}</message>"
    )


def test_received_messages_are_counted_kept_and_timed() -> None:
    async def run() -> None:
        client = Client(1, defaults(), "user_1")
        sent = stamp.now_us() - 2000
        _route(client, _chat(sent, "a &lt; b"))
        _route(client, _chat(None, extra="<delay xmlns='urn:xmpp:delay' stamp='x'/>"))
        _route(
            client, _Stanza("<message xmlns='jabber:client' type='error'><body>e</body></message>")
        )
        assert client.received == 2
        first = client.take_messages()[0]
        assert (first.sender, first.body, first.sent_us, first.delayed) == (
            "user_2@localhost/amoc",
            "a < b",
            sent,
            False,
        )
        assert first.ttd_ms is not None and 2.0 <= first.ttd_ms < 1000
        assert client.take_messages() == []

    asyncio.run(run())


def test_inbox_keeps_the_newest_messages() -> None:
    async def run() -> None:
        client = Client(1, defaults(xmpp_inbox_size="2"), "user_1")
        for body in ("1", "2", "3"):
            _route(client, _chat(stamp.now_us(), body))
        assert [m.body for m in client.inbox()] == ["2", "3"]
        assert client.received == 3

    asyncio.run(run())


def test_a_client_that_is_not_online_refuses_to_send_or_wait() -> None:
    async def run() -> None:
        client = Client(1, defaults(), "user_1")
        with pytest.raises(xmpp.XmppError, match="new"):
            client.send_chat(2)
        with pytest.raises(xmpp.XmppError):
            await client.wait_message(timeout_ms=10)
        await client.stop()  # nothing to close: a no-op
        client_no_inbox = Client(1, defaults(xmpp_inbox_size="0"), "user_1")
        with pytest.raises(xmpp.XmppError, match="inbox"):
            await client_no_inbox.wait_message()

    asyncio.run(run())


# -- the one-to-one scenario ----------------------------------------------------------------


def test_one_to_one_pairs_neighbours_and_declares_its_parameters() -> None:
    scenario = load("xmpp_one_to_one", [SCENARIOS])
    neighbour = scenario.module.neighbour
    assert [neighbour(i) for i in range(1, 7)] == [2, 1, 4, 3, 6, 5]
    assert all(neighbour(neighbour(i)) == i for i in range(1, 1000))
    names = {p.name for p in scenario.params}
    assert {"messages_per_user", "message_interval", "receive_timeout", "xmpp_port"} <= names
    assert scenario.start_takes_state and scenario.init is not None
