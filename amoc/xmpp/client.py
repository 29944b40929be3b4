"""One simulated user's XMPP session over slixmpp: connect, presence, chat, wait, stop.

Costs per user are what limits a load generator, so a client is built lean (see FACTS.md):
it is created inside the running loop, shares one SSLContext with every other client, loads
no XEP plugins (only the stream features slixmpp always registers), never tries direct TLS
on a plain port, never retries a failed connection, and sends its own stanzas as ready-made
text instead of building stanza objects.

Timeouts given to methods are in milliseconds (`timeout_ms`), like every duration in amoc.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from slixmpp import ClientXMPP

from amoc import metrics
from amoc.config import Config
from amoc.xmpp import naming, stamp
from amoc.xmpp.errors import ConnectionLost, LoginError, Reason, XmppError
from amoc.xmpp.inbox import Inbox, Message
from amoc.xmpp.settings import Settings, settings
from amoc.xmpp.tls import shared_context

log = logging.getLogger("amoc.xmpp")

_DELAY_TAG = "{urn:xmpp:delay}delay"
_BODY_TAG = "{jabber:client}body"


class _State(enum.Enum):
    NEW = "new"
    LOGGING_IN = "logging in"
    ONLINE = "online"
    CLOSING = "closing"
    CLOSED = "closed"


class _Stream(ClientXMPP):
    """slixmpp's client, with exceptions raised in handlers logged instead of dropped."""

    def exception(self, exception: Exception) -> None:
        log.warning("%s: error in an XMPP handler: %r", self.boundjid.bare, exception)


class Client(Inbox):
    """A logged-in XMPP user; make one with `await amoc.xmpp.connect(user_id)`."""

    __slots__ = (
        "_login",
        "_lost",
        "_online_counted",
        "_state",
        "_stream_error",
        "_tcp",
        "jid",
        "sent",
        "settings",
        "user_id",
        "username",
        "xmpp",
    )

    def __init__(self, user_id: int, config: Settings, username: str) -> None:
        self.user_id = user_id
        self.settings = config
        self.username = username
        self.jid = f"{username}@{config.domain}"
        self.xmpp: ClientXMPP | None = None
        self.received = 0
        self.sent = 0
        self._inbox: deque[Message] | None = None  # made at the first message kept
        self._waiters: list[asyncio.Future[None]] = []
        self._state = _State.NEW
        self._login: asyncio.Future[None] | None = None
        self._lost: ConnectionLost | None = None
        self._stream_error = ""
        self._tcp = False
        self._online_counted = False

    def __repr__(self) -> str:
        return f"<amoc.xmpp.Client {self.jid} {self._state.value}>"

    @property
    def connected(self) -> bool:
        """True while the session is up (logged in, not stopped, not lost)."""
        return self._state is _State.ONLINE

    # -- login ------------------------------------------------------------------------------

    async def _open(self, password: str) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._login = loop.create_future()
        self._state = _State.LOGGING_IN
        full_jid = f"{self.jid}/{s.resource}" if s.resource else self.jid
        xmpp = _Stream(
            full_jid,
            password,
            plugin_config={
                "feature_mechanisms": {
                    "unencrypted_plain": not s.tls,
                    "unencrypted_scram": not s.tls,
                }
            },
            sasl_mech=s.sasl,
            ssl_context=shared_context(s.tls_verify),
        )
        xmpp.enable_direct_tls = False
        xmpp.enable_starttls = s.tls
        xmpp.enable_plaintext = not s.tls
        for event, handler in (
            ("connected", self._on_connected),
            ("connection_failed", self._on_connection_failed),
            ("failed_auth", self._on_failed_auth),
            ("no_auth", self._on_no_auth),
            ("stream_negotiated", self._on_stream_negotiated),
            ("ssl_invalid_chain", self._on_invalid_certificate),
            ("stream_error", self._on_stream_error),
            ("session_start", self._on_session_start),
            ("disconnected", self._on_disconnected),
            ("message", self._on_message),
        ):
            xmpp.add_event_handler(event, handler)
        self.xmpp = xmpp
        try:
            xmpp.connect(s.host, s.port)
            async with asyncio.timeout(s.connect_timeout / 1000.0):
                await self._login
        except TimeoutError:
            stage = "connected but not logged in" if self._tcp else "no TCP connection"
            self._teardown()
            raise self._login_failed(
                Reason.TIMEOUT,
                f"no session within xmpp_connect_timeout = {s.connect_timeout} ms ({stage})",
            ) from None
        except LoginError as exc:
            self._teardown()
            raise self._login_failed(exc.reason or Reason.CONNECTION_ERROR, str(exc)) from None
        except BaseException:
            self._teardown()
            raise
        self._state = _State.ONLINE
        self._online_counted = True
        metrics.counter("xmpp.logins.ok").inc()
        metrics.gauge("xmpp.connected").inc()
        metrics.histogram("xmpp.login_time_ms").record((loop.time() - started) * 1000.0)

    def _login_failed(self, reason: Reason, detail: str) -> LoginError:
        s = self.settings
        metrics.counter("xmpp.logins.failed").inc()
        metrics.counter(f"xmpp.logins.failed.{reason.value}").inc()
        if not self._tcp:
            metrics.counter("xmpp.connections.failed").inc()
        message = f"login of {self.jid} at {s.host}:{s.port} failed ({reason.value}): {detail}"
        log.debug(message)
        return LoginError(message, reason, self.user_id)

    def _fail_login(self, reason: Reason, detail: str) -> None:
        if self._state is _State.LOGGING_IN and self._login and not self._login.done():
            self._login.set_exception(LoginError(detail, reason, self.user_id))

    # -- slixmpp event handlers -------------------------------------------------------------

    def _on_connected(self, _event: Any) -> None:
        self._tcp = True
        metrics.counter("xmpp.connections.ok").inc()

    def _on_connection_failed(self, error: Any) -> None:
        reason = Reason.REFUSED if isinstance(error, ConnectionRefusedError) else None
        if reason is Reason.REFUSED:
            detail = "connection refused: is the XMPP server running on that host and port?"
        else:
            detail = f"cannot connect: {error}"
        self._fail_login(reason or Reason.CONNECTION_ERROR, detail)

    def _on_failed_auth(self, failure: Any) -> None:
        condition = failure["condition"] or "failure"
        self._fail_login(
            Reason.AUTH,
            f"the server refused {self.settings.sasl} authentication: {condition} "
            "(wrong password, or the user is not registered)",
        )

    def _on_no_auth(self, _event: Any) -> None:
        hint = "" if self.settings.tls else " (does the server require STARTTLS? set xmpp_tls)"
        self._fail_login(Reason.NO_MECHANISM, f"the server offers no usable SASL mechanism{hint}")

    def _on_stream_negotiated(self, _event: Any) -> None:
        xmpp = self.xmpp
        if xmpp is not None and not xmpp.authenticated:
            self._on_no_auth(None)

    def _on_invalid_certificate(self, error: Any) -> None:
        self._fail_login(
            Reason.TLS,
            f"the server certificate is not trusted ({error}); "
            "set xmpp_tls_verify = false for a test server",
        )

    def _on_stream_error(self, error: Any) -> None:
        condition = error["condition"] or "undefined-condition"
        text = error["text"]
        self._stream_error = f"{condition}: {text}" if text else condition
        self._fail_login(Reason.STREAM_ERROR, f"stream error {self._stream_error}")

    def _on_session_start(self, _event: Any) -> None:
        if self._state is _State.LOGGING_IN and self._login and not self._login.done():
            self._login.set_result(None)

    def _on_disconnected(self, _reason: Any) -> None:
        if self._state is _State.LOGGING_IN:
            detail = f"stream error {self._stream_error}" if self._stream_error else ""
            # Deferred one loop turn: a failed TLS handshake closes the connection before
            # slixmpp reports why, and the specific reason should win.
            asyncio.get_running_loop().call_soon(
                self._fail_login,
                Reason.STREAM_ERROR if detail else Reason.CLOSED,
                detail or "the server closed the connection during login",
            )
            return
        if self._state is not _State.ONLINE:
            return
        why = f"stream error {self._stream_error}" if self._stream_error else "connection closed"
        self._lost = ConnectionLost(
            f"{self.jid}: the server ended the session ({why})",
            Reason.STREAM_ERROR if self._stream_error else Reason.CLOSED,
            self.user_id,
        )
        log.debug("%s", self._lost)
        metrics.counter("xmpp.disconnects").inc()
        self._leave_online()
        self._state = _State.CLOSED
        self._cancel_send_task()
        self._wake()

    def _on_message(self, msg: Any) -> None:
        xml = msg.xml
        if xml.get("type") == "error":
            metrics.counter("xmpp.messages.errors").inc()
            return
        received_us = stamp.now_us()
        self._deliver(
            xml.get("from", ""),
            xml.findtext(_BODY_TAG) or "",
            stamp.read(xml),
            received_us,
            xml.find(_DELAY_TAG) is not None,
        )

    # -- sending ----------------------------------------------------------------------------

    async def send_presence(self, wait: bool = True, timeout_ms: float | None = None) -> None:
        """Send initial presence; with `wait`, return once the server echoed it back."""
        xmpp = self._live()
        if not wait:
            xmpp.send_raw("<presence/>")
            return
        own = str(xmpp.boundjid)
        echoed = False

        def on_presence(pres: Any) -> None:
            nonlocal echoed
            if pres.xml.get("from") == own:
                echoed = True
                self._wake()

        with xmpp.event_handler("presence_available", on_presence):
            xmpp.send_raw("<presence/>")
            await self._wait_until(lambda: echoed, timeout_ms, "echo of its presence")

    def send_chat(self, to: int | str, body: str | None = None) -> None:
        """Send a stamped chat message to user id `to` or to a JID string.

        A user id is addressed by its full JID (with xmpp_resource): a message to a bare JID
        whose session is bound but has not sent presence yet goes to offline storage, and
        ejabberd may store it after that presence has already emptied the storage (lost).
        """
        xmpp = self._live()
        self.sent += 1
        if isinstance(to, int):
            target = f"'{naming.jid(to, self.settings, resource=True)}'"
        else:
            target = quoteattr(to)
        text = f"message {self.sent} from {self.username}" if body is None else escape(body)
        xmpp.send_raw(
            f"<message to={target} type='chat' id='{self.user_id}-{self.sent}'>"
            f"<body>{text}</body>{stamp.encode(stamp.now_us())}</message>"
        )
        metrics.counter("xmpp.messages.sent").inc()

    # -- receiving --------------------------------------------------------------------------

    def _live(self) -> ClientXMPP:
        if self._state is _State.ONLINE and self.xmpp is not None:
            return self.xmpp
        if self._lost is not None:
            raise self._lost
        raise XmppError(f"{self.jid}: the client is {self._state.value}", None, self.user_id)

    # -- closing ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Close the stream cleanly (bounded by xmpp_stop_timeout); safe to call twice."""
        if self._state in (_State.CLOSING, _State.CLOSED) or self.xmpp is None:
            return
        if self._state is _State.LOGGING_IN:  # connect() is still running in another task
            self._fail_login(Reason.CLOSED, "stop() was called during login")
            self._teardown()
            return
        xmpp = self.xmpp
        self._state = _State.CLOSING
        self._leave_online()
        try:
            if xmpp.transport is not None:
                wait = self.settings.stop_timeout / 1000.0
                async with asyncio.timeout(wait + 0.5):
                    await xmpp.disconnect(wait=wait)
        except TimeoutError:
            log.debug("%s: clean close timed out, aborting", self.jid)
        finally:
            self._teardown()
            self._wake()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _leave_online(self) -> None:
        if self._online_counted:
            self._online_counted = False
            metrics.gauge("xmpp.connected").dec()

    def _teardown(self) -> None:
        self._state = _State.CLOSED
        xmpp = self.xmpp
        if xmpp is None:
            return
        xmpp.cancel_connection_attempt()
        xmpp.abort()
        self._cancel_send_task()

    def _cancel_send_task(self) -> None:
        task = getattr(self.xmpp, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()


async def connect(
    user_id: int,
    *,
    username: str | None = None,
    password: str | None = None,
    config: Config | None = None,
    **overrides: Any,
) -> Client:
    """Log user `user_id` in (connect, SASL, bind) and return its online `Client`.

    Settings come from amoc_config; `overrides` replace them by short name (`port=5223`,
    `sasl="SCRAM-SHA-1"`, `connect_timeout=2000`). Raises `LoginError` with a `reason`.
    """
    s = settings(config, **overrides)
    client = Client(user_id, s, username or naming.username(user_id, s))
    await client._open(naming.password(user_id, s) if password is None else password)
    return client
