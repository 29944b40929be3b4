"""In-band registration (XEP-0077) against the managed ejabberd and Prosody, each with
STARTTLS required: connect(register=True), its errors by condition, account.unregister, and
the xmpp_registration scenario through the runner under its throttle."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from typing import Any

import pytest

from amoc import xmpp
from amoc.xmpp import account
from tests.integration.xmpp_fixture import XmppServer, count, run_scenario, server_settings

pytestmark = pytest.mark.integration

FIXTURES = {"ejabberd": "ejabberd_tls_server", "prosody": "prosody_server"}
_ids = itertools.count(66_001)
# How a login to a removed account fails: refused before the SASL proof (SCRAM on both
# servers says so), or after it.
GONE = (xmpp.Reason.UNKNOWN_USER, xmpp.Reason.AUTH)


@pytest.fixture(params=sorted(FIXTURES))
def server(request: pytest.FixtureRequest) -> XmppServer:
    """Each kind's session server (STARTTLS required; Prosody with SCRAM storage)."""
    got: XmppServer = request.getfixturevalue(FIXTURES[request.param])
    return got


def prefix() -> str:
    """Account names no other test uses."""
    return f"ibr{secrets.token_hex(3)}_"


def kw(server: XmppServer, **extra: Any) -> dict[str, Any]:
    """connect() overrides for `server` over STARTTLS with the lean client."""
    return {
        "host": server.host,
        "port": server.port,
        "domain": server.domain,
        "tls": "starttls",
        "tls_verify": False,
        "client": "lean",
        **extra,
    }


def test_register_conflict_unregister_and_the_errors_by_condition(server: XmppServer) -> None:
    user, name = next(_ids), prefix()
    names = [
        "xmpp.registrations.ok",
        "xmpp.registrations.failed.conflict",
        "xmpp.unregistrations.ok",
        "xmpp.disconnects",
        "xmpp.logins.failed.registration",
    ]
    refused = "jid-malformed" if server.kind == "ejabberd" else "not-acceptable"
    names.append(f"xmpp.registrations.failed.{refused}")
    before = {n: count(n) for n in names}
    creds = {"username": f"{name}{user}", "password": f"pw{user}"}

    async def run() -> list[xmpp.LoginError]:
        fresh = await xmpp.connect(user, register=True, **creds, **kw(server))
        await fresh.send_presence()
        await fresh.stop()
        # The account exists: counted as a conflict, and logged in to all the same.
        again = await xmpp.connect(user, register=True, **creds, **kw(server))
        assert again.connected
        await account.unregister(again)
        assert not again.connected
        errors = []
        for attempt in (
            {**creds},  # the account is gone
            {"username": "Not A Name", "password": "x", "register": True},
            {**creds, "register": True, "tls": False},  # registration only over TLS
        ):
            with pytest.raises(xmpp.LoginError) as caught:
                await xmpp.connect(user, **{**kw(server), **attempt})
            errors.append(caught.value)
        return errors

    gone, bad_name, plain = asyncio.run(run())
    delta = {n: count(n) - before[n] for n in names}
    assert gone.reason in GONE
    assert bad_name.reason is xmpp.Reason.REGISTRATION and refused in str(bad_name)
    assert plain.reason is xmpp.Reason.REGISTRATION and "set xmpp_tls = starttls" in str(plain)
    assert delta == {
        "xmpp.registrations.ok": 1,
        "xmpp.registrations.failed.conflict": 1,
        "xmpp.unregistrations.ok": 1,
        "xmpp.disconnects": 0,  # the server's end of the stream after the removal
        "xmpp.logins.failed.registration": 2,
        f"xmpp.registrations.failed.{refused}": 1,
    }


# -- the scenario ---------------------------------------------------------------------------


def scenario_settings(server: XmppServer, **extra: Any) -> dict[str, Any]:
    return {
        **server_settings(server, "lean"),
        "xmpp_tls": "starttls",
        "xmpp_tls_verify": False,
        "repeat_num": 1,
        "interarrival": 0,  # the throttle paces the registrations
        **extra,
    }


# Prosody hashes each new password (SCRAM, 10 000 iterations) and each login costs it 7-12 ms.
USERS = {"ejabberd": 200, "prosody": 120}
PER_MINUTE = {"ejabberd": 6000, "prosody": 4800}


def test_every_registration_succeeds_logs_in_again_and_is_removed(server: XmppServer) -> None:
    users, rate, name = USERS[server.kind], PER_MINUTE[server.kind], prefix()
    first = 1  # the prefix keeps the accounts apart
    names = [
        "registration.ok",
        "registration.failed",
        "registration.relogins",
        "registration.unregistered",
        "xmpp.registrations.ok",
        "xmpp.registrations.failed.conflict",
        "xmpp.logins.ok",
        "xmpp.logins.failed",
        "xmpp.unregistrations.ok",
        "xmpp.disconnects",
        "throttle.registrations.executions",
    ]
    before = {n: count(n) for n in names}
    settings = scenario_settings(
        server, registration_prefix=name, registrations_per_minute=rate, relogin=True
    )
    status = asyncio.run(
        run_scenario(settings, first, first + users - 1, deadline_s=60, name="xmpp_registration")
    )
    took = status["took_s"]
    delta = {n: count(n) - before[n] for n in names}
    assert status["users"]["finished"] == users and status["users"]["failed_runs"] == 0
    for n in ("registration.ok", "registration.relogins", "registration.unregistered"):
        assert delta[n] == users, n
    assert delta["xmpp.registrations.ok"] == users
    assert delta["xmpp.unregistrations.ok"] == users
    assert delta["xmpp.logins.ok"] == 2 * users  # on the registering stream, then afresh
    assert delta["registration.failed"] == delta["xmpp.logins.failed"] == 0
    assert delta["xmpp.registrations.failed.conflict"] == 0
    assert delta["xmpp.disconnects"] == 0
    assert delta["throttle.registrations.executions"] == users
    # Never above the rate: the last one is released (users - 1) spacings after the first.
    assert took >= (users - 1) * 60.0 / rate * 0.95

    async def login(user: int) -> xmpp.Reason | None:
        try:
            client = await xmpp.connect(
                user, username=f"{name}{user}", password=f"password_{user}", **kw(server)
            )
        except xmpp.LoginError as exc:
            return exc.reason
        await client.stop()
        return None

    async def sample() -> list[xmpp.Reason | None]:
        return [await login(u) for u in (first, first + users // 2, first + users - 1)]

    assert all(r in GONE for r in asyncio.run(sample()))  # removed: a rerun starts afresh


def test_kept_accounts_log_in_and_a_rerun_logs_in_to_them(server: XmppServer) -> None:
    users, name = 20, prefix()
    first = 1  # the prefix keeps the accounts apart
    conflicts = count("xmpp.registrations.failed.conflict")
    ok = count("registration.ok")
    settings = scenario_settings(
        server, registration_prefix=name, registrations_per_minute=60_000, unregister=False
    )
    for _run in range(2):  # the second run finds every account there
        status = asyncio.run(
            run_scenario(
                dict(settings), first, first + users - 1, deadline_s=30, name="xmpp_registration"
            )
        )
        assert status["users"]["failed_runs"] == 0
    assert count("registration.ok") == ok + 2 * users
    assert count("xmpp.registrations.failed.conflict") == conflicts + users

    async def log_in_and_remove() -> int:
        removed = 0
        for user in range(first, first + users):
            client = await xmpp.connect(
                user, username=f"{name}{user}", password=f"password_{user}", **kw(server)
            )
            await account.unregister(client)
            removed += 1
        return removed

    began = time.monotonic()
    assert asyncio.run(log_in_and_remove()) == users
    assert time.monotonic() - began < 30
