"""`connect()`: log a user in with the client implementation `xmpp_client` names.

Both implementations offer the helper API typed here as `Session`, count the same metrics
and raise the same errors, so a scenario switches with one setting:

    xmpp_client = "lean"      # amoc.xmpp.lean: an asyncio Protocol and expat (default)
    xmpp_client = "slixmpp"   # amoc.xmpp.client: over slixmpp
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol
from xml.etree import ElementTree as ET

from amoc.config import Config, amoc_config
from amoc.xmpp import addressing, lean, naming
from amoc.xmpp.base import RETRIED
from amoc.xmpp.errors import LoginError, NotSupported
from amoc.xmpp.inbox import Message
from amoc.xmpp.parser import Element
from amoc.xmpp.pred import Pred
from amoc.xmpp.router import Handler, HandlerRef
from amoc.xmpp.settings import Settings, settings
from amoc.xmpp.stanza import Iq

if TYPE_CHECKING:
    from amoc.xmpp import client


class Session(Protocol):
    """What a logged-in user offers a scenario, whichever client implements it."""

    user_id: int
    jid: str
    received: int
    sent: int
    settings: Settings

    @property
    def connected(self) -> bool:
        """True while the session is up."""

    async def send_presence(self, wait: bool = True, timeout_ms: float | None = None) -> None:
        """Send initial presence; with `wait`, return once the server echoed it back."""

    def send_chat(self, to: int | str, body: str | None = None) -> None:
        """Send a stamped chat message to user id `to` or to a JID string."""

    async def wait_message(self, timeout_ms: float | None = None) -> Message:
        """The oldest unread chat message, waiting up to `timeout_ms`."""

    async def wait_received(self, count: int, timeout_ms: float | None = None) -> None:
        """Wait until `received` reaches `count`."""

    def inbox(self) -> list[Message]:
        """The unread messages, oldest first (they stay unread)."""

    def take_messages(self) -> list[Message]:
        """Remove and return the unread messages, oldest first."""

    def send(self, stanza: str | bytes | Element | ET.Element) -> None:
        """Send any stanza (text from `amoc.xmpp.stanza`, bytes or an element)."""

    async def wait_for(
        self, predicate: Pred | Callable[[Element], bool], timeout_ms: float | None = None
    ) -> Element:
        """The next stanza matching `predicate`; ReceiveTimeout naming it."""

    def add_handler(
        self, predicate: Pred | Callable[[Element], bool], handler: Handler
    ) -> HandlerRef:
        """Call `handler(element)` for every matching stanza (True: handled, stop there)."""

    def remove_handler(self, ref: HandlerRef) -> None:
        """Stop calling a handler."""

    def buffered(self) -> list[Element]:
        """Received stanzas nothing has taken yet."""

    async def iq(
        self,
        request: Iq | str | bytes | Element,
        timeout_ms: float | None = None,
        kind: str | None = None,
    ) -> Element:
        """Send an IQ request; its result, or IqError / ReceiveTimeout (timed per kind)."""

    @property
    def unacked(self) -> int:
        """Stanzas sent that the server has not acknowledged (XEP-0198; 0 without it)."""

    def drop_connection(self) -> None:
        """Abort the TCP connection without closing the stream: a simulated network failure
        (with xmpp_stream_management = "resume" the lean client resumes)."""

    async def stop(self) -> None:
        """Close the stream cleanly; safe to call twice."""


# Resolving the settings reads 16 parameters from every config source (about 0.1 ms, a
# tenth of a lean login): thousands of logins a second share one resolution. A run-time
# set/unset changes the key at once; the environment and app.config are read again
# after CACHE_S.
CACHE_S = 1.0
_resolved: weakref.WeakKeyDictionary[Config, dict[Hashable, tuple[float, Settings]]] = (
    weakref.WeakKeyDictionary()
)


def _settings(config: Config | None, overrides: dict[str, Any]) -> Settings:
    cfg = config or amoc_config
    try:
        key = (tuple(sorted(cfg.runtime_values().items())), tuple(sorted(overrides.items())))
        hash(key)
    except TypeError:  # an unhashable value: resolve every time
        return settings(cfg, **overrides)
    now = time.monotonic()
    per_config = _resolved.setdefault(cfg, {})
    found = per_config.get(key)
    if found is not None and now - found[0] < CACHE_S:
        return found[1]
    if len(per_config) > 64:
        per_config.clear()
    resolved = settings(cfg, **overrides)
    per_config[key] = (now, resolved)
    return resolved


async def connect(
    user_id: int,
    *,
    username: str | None = None,
    password: str | None = None,
    config: Config | None = None,
    register: bool = False,
    **overrides: Any,
) -> Session:
    """Log user `user_id` in (connect, SASL, bind) and return its online session.

    Settings come from amoc_config; `overrides` replace them by short name (`port=5223`,
    `sasl="SCRAM-SHA-1"`, `client="lean"`). With `register`, the account is registered
    in-band first (XEP-0077, lean client only). Raises `LoginError` with a `reason`.
    """
    s = _settings(config, overrides)
    if register and s.client != "lean":
        raise NotSupported(
            "in-band registration (connect(register=True)) needs the lean client: "
            "set xmpp_client = 'lean'"
        )
    name = username or naming.username(user_id, s)
    secret = naming.password(user_id, s) if password is None else password
    attempts = s.connect_attempts
    for attempt in range(attempts):
        last = attempt == attempts - 1
        where = addressing.target(s, user_id, attempt)
        session: lean.LeanClient | client.Client
        if s.client == "lean":
            session = lean.LeanClient(user_id, where, name)
            session._register = register
        else:
            from amoc.xmpp import client  # slixmpp, imported only by a process that uses it

            session = client.Client(user_id, where, name)
        try:
            await session._open(secret, last)
        except LoginError as exc:
            if last or exc.reason not in RETRIED or session._tcp:
                raise
            # Backoff before the next attempt (to the next server of xmpp_servers).
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
            continue
        return session
    raise AssertionError("unreachable: the last attempt returns or raises")
