"""The one-to-one scenario driven through the release's console against a real ejabberd."""

import os
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.terminal import Terminal
from tests.integration.xmpp_fixture import XmppServer
from tests.net import free_port

pytestmark = pytest.mark.e2e

USERS, PER_USER, FIRST = 200, 5, 20_001


def scrape(port: int) -> dict[str, float]:
    """The Prometheus endpoint's samples (name with labels -> value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def family_sum(samples: dict[str, float], name: str) -> float:
    """The sum of a family's samples over their labels (node, scenario)."""
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)


def test_one_to_one_through_the_console(release: Path, xmpp_server: XmppServer) -> None:
    xmpp_server.register(FIRST, FIRST + USERS)  # and one whose neighbour never comes
    prometheus = free_port()
    env = {
        "AMOC_XMPP_PORT": str(xmpp_server.port),
        "AMOC_XMPP_DOMAIN": xmpp_server.domain,
        "AMOC_INTERARRIVAL": "2",
        "AMOC_REPEAT_NUM": "1",
        "AMOC_MESSAGES_PER_USER": str(PER_USER),
        # A first message must not race the neighbour's login (ejabberd can lose one stored
        # offline meanwhile), and PLAIN keeps the server's logins from queueing.
        "AMOC_MESSAGE_INTERVAL": "1000",
        "AMOC_XMPP_SASL": "PLAIN",
        "AMOC_RECEIVE_TIMEOUT": "20000",
        "AMOC_PROMETHEUS_PORT": str(prometheus),
    }
    term = Terminal(release, ["--name", f"x{os.getpid()}", "console"], env)
    try:
        out = term.run(f'amoc_local.do("xmpp_one_to_one", {FIRST}, {FIRST + USERS - 1})')
        assert out.startswith("running xmpp_one_to_one"), out
        term.wait('status()["state"]', lambda s: s == "finished", timeout=90)
        shown = term.value("dict(metrics.show())")
        assert isinstance(shown, dict)
        assert shown["xmpp.logins.ok"] == USERS
        assert shown.get("xmpp.logins.failed", 0) == 0
        assert shown["xmpp.messages.sent"] == USERS * PER_USER
        assert shown["xmpp.messages.received"] == USERS * PER_USER
        assert shown["one_to_one.received"] == USERS * PER_USER
        assert shown.get("one_to_one.incomplete", 0) == 0
        assert shown["xmpp.ttd_ms"]["count"] == USERS * PER_USER
        assert 0 < shown["xmpp.ttd_ms"]["p50"] <= shown["xmpp.ttd_ms"]["p99"]
        assert shown["xmpp.connected"] == 0
        samples = scrape(prometheus)
        assert family_sum(samples, "amoc_xmpp_messages_received_total") == USERS * PER_USER
        assert family_sum(samples, "amoc_xmpp_ttd_seconds_count") == USERS * PER_USER

        # A user whose neighbour never logs in: counted as incomplete, with a reason logged.
        term.run('amoc_config.set("receive_timeout", 1500)')
        lonely = FIRST + USERS  # an odd id: its neighbour lonely + 1 is not even registered
        term.run(f'amoc_local.do("xmpp_one_to_one", {lonely}, {lonely})')
        term.wait('status()["state"]', lambda s: s == "finished", timeout=30)
        assert term.value('metrics.show()["one_to_one.incomplete"]') == 1
        assert term.value('status()["users"]["failed_runs"]') == 0
    finally:
        term.leave()
    log = (release / "log" / f"x{os.getpid()}.log").read_text()
    assert f"user {lonely}: got 0 of the {PER_USER} messages user {lonely + 1} sent" in log
