"""In-band registration (XEP-0077) under a cluster-wide rate: each user registers its own
account, logs in to it, and (by default) removes it at the end.

Each run of a user:

1. wait for the throttle `registrations` (`registrations_per_minute` over the whole
   cluster, released at even spacing);
2. register `<registration_prefix><id>` with the password `<xmpp_password_prefix><id>` on
   a new stream and log in on that stream (`connect(user_id, register=True)`, the lean
   client); an account that exists already (a rerun after `unregister = false`) is logged
   in to all the same and counted xmpp.registrations.failed.conflict;
3. with `relogin`, log out and log in again on a fresh connection, with the new account's
   credentials (`registration.relogins`);
4. with `unregister` (the default, so that a rerun registers afresh), remove the account
   (`registration.unregistered`), else log out.

A user whose registration or login fails counts `registration.failed` (the reason is in
xmpp.logins.failed.<reason> and xmpp.registrations.failed.<condition>); one that gets through
counts `registration.ok`. The prefix keeps these accounts apart from the pre-registered
`xmpp_username_prefix` ones: both being equal is refused when `unregister` is on, since it
would delete those.

The servers need open registration: tools/xmpp_server.py configures ejabberd (mod_register,
`registration_timeout: infinity`) and Prosody (`allow_registration`, loopback allowlisted)
so. Both offer registration only over TLS when STARTTLS is required: set `xmpp_tls =
starttls`.

Metrics: the xmpp.* set (xmpp.registrations.ok / .failed.<condition> / .time_ms, logins,
xmpp.unregistrations.ok / .failed.<condition>, xmpp.iq.unregister.time_ms), the throttle's
throttle.registrations.*, plus the registration.* counters above.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from amoc import metrics, throttle, xmpp
from amoc.config import amoc_config, param
from amoc.errors import ScenarioError
from amoc.xmpp import account

log = logging.getLogger("amoc.scenario.xmpp_registration")

THROTTLE = "registrations"
# A safe localpart (RFC 7622 allows more; these pass every server's nodeprep unchanged).
_LOCALPART = re.compile(r"[a-z0-9._-]+")


def _rate(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected registrations per minute as a number, got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ValueError("must be a finite number > 0")
    return value


def _prefix(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if not _LOCALPART.fullmatch(value):
        raise ValueError(
            "must be lower-case letters, digits, '.', '_' or '-' (the start of an account name)"
        )
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {value!r}")


PARAMETERS = [
    *xmpp.PARAMETERS,
    param(
        "registrations_per_minute",
        600,
        "in-band registrations per minute over the whole cluster",
        _rate,
    ),
    param("registration_prefix", "amoc_reg_", "account name = prefix + user id", _prefix),
    param("relogin", False, "log in again on a new connection after registering", _flag),
    param("unregister", True, "remove the account at the end of the run", _flag),
]


async def init() -> None:
    """Refuse a prefix that would delete pre-registered accounts; start the throttle."""
    prefix = amoc_config.get("registration_prefix")
    if amoc_config.get("unregister") and prefix == amoc_config.get("xmpp_username_prefix"):
        raise ScenarioError(
            f"registration_prefix = xmpp_username_prefix = {prefix!r} with unregister = true "
            "would remove the pre-registered accounts: pick another registration_prefix"
        )
    if amoc_config.get("xmpp_client") != "lean":
        raise ScenarioError("in-band registration needs the lean client: set xmpp_client = 'lean'")
    throttle.start(THROTTLE, amoc_config.get("registrations_per_minute"))


async def start(user_id: int) -> None:
    """One run of `user_id`: register under the throttle, log in, remove the account."""
    username = f"{amoc_config.get('registration_prefix')}{user_id}"
    password = f"{amoc_config.get('xmpp_password_prefix')}{user_id}"
    await throttle.wait(THROTTLE)
    try:
        client = await xmpp.connect(user_id, username=username, password=password, register=True)
        if amoc_config.get("relogin"):
            await client.stop()
            client = await xmpp.connect(user_id, username=username, password=password)
            metrics.counter("registration.relogins").inc()
    except xmpp.LoginError as exc:
        metrics.counter("registration.failed").inc()
        log.warning("user %d: %s", user_id, exc)
        return
    metrics.counter("registration.ok").inc()
    if amoc_config.get("unregister"):
        await account.unregister(client)
        metrics.counter("registration.unregistered").inc()
    else:
        await client.stop()
