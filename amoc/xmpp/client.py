"""One simulated user's XMPP session over slixmpp: connect, presence, chat, wait, stop.

Costs per user are what limits a load generator, so a client is built lean (slixmpp's
defaults cost about 900 KiB and 37 ms per client, mostly a CA store loaded for each one):
it is created inside the running loop, shares one SSLContext with every other client, loads
no XEP plugins (only the stream features slixmpp always registers), never tries direct TLS
on a plain port, never retries a failed connection, and sends its own stanzas as ready-made
text instead of building stanza objects.

Timeouts given to methods are in milliseconds (`timeout_ms`), like every duration in amoc.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from slixmpp import ClientXMPP

from amoc import metrics
from amoc.xmpp import naming, stamp
from amoc.xmpp.base import ClientBase, State
from amoc.xmpp.errors import NotSupported, Reason
from amoc.xmpp.parser import from_etree
from amoc.xmpp.settings import Settings
from amoc.xmpp.tls import shared_context

log = logging.getLogger("amoc.xmpp")
_warned: list[bool] = []  # the SCRAM cost warning, once per process
# slixmpp logs its own warnings and tracebacks for what this client reports once, with its
# reason ("No appropriate login method", certificate chains, connection errors): keep them
# off the console. AMOC_SLIXMPP_LOG=DEBUG (or INFO, WARNING) brings them back.
logging.getLogger("slixmpp").setLevel(os.environ.get("AMOC_SLIXMPP_LOG", "CRITICAL").upper())

_PRESENCE_TAG = "{jabber:client}presence"


class _Stream(ClientXMPP):
    """slixmpp's client, with exceptions raised in handlers logged instead of dropped."""

    def exception(self, exception: Exception) -> None:
        log.warning("%s: error in an XMPP handler: %r", self.boundjid.bare, exception)


class Client(ClientBase):
    """A logged-in XMPP user; make one with `await amoc.xmpp.connect(user_id)`."""

    __slots__ = ("_echoed", "xmpp")

    def __init__(self, user_id: int, config: Settings, username: str) -> None:
        if config.stream_management:
            raise NotSupported(
                f"xmpp_stream_management = {config.stream_management!r} (XEP-0198) needs the "
                "lean client: set xmpp_client = 'lean' (or xmpp_stream_management = false)",
                Reason.NOT_SUPPORTED,
                user_id,
            )
        if any(t != "tcp" for t in config.transport):
            raise NotSupported(
                f"xmpp_transport = {list(config.transport)!r}: WebSocket and BOSH need the "
                "lean client: set xmpp_client = 'lean'",
                Reason.NOT_SUPPORTED,
                user_id,
            )
        if config.tls_server_name and config.tls_server_name != config.domain:
            raise NotSupported(
                "xmpp_tls_server_name (a certificate name other than xmpp_domain) needs the "
                "lean client: set xmpp_client = 'lean'",
                Reason.NOT_SUPPORTED,
                user_id,
            )
        super().__init__(user_id, config, username)
        self.xmpp: ClientXMPP | None = None
        self._echoed = False

    # -- login ------------------------------------------------------------------------------

    async def _connect(self, password: str) -> None:
        s = self.settings
        if s.sasl != "PLAIN" and not _warned:
            _warned.append(True)
            log.warning(
                "xmpp_client = slixmpp computes SCRAM's PBKDF2 in the event loop at every "
                "login (1-30 ms of CPU each, by the server's iteration count: some 25 logins/s "
                "against Prosody's default 10 000); the lean client computes it once per user, "
                "beside the loop"
            )
        full_jid = f"{self.jid}/{s.resource}" if s.resource else self.jid
        xmpp = _Stream(
            full_jid,
            password,
            plugin_config={
                "feature_mechanisms": {
                    "unencrypted_plain": not s.encrypted,
                    "unencrypted_scram": not s.encrypted,
                }
            },
            sasl_mech=None if s.sasl == "AUTO" else s.sasl,
            ssl_context=shared_context(s.tls_verify, s.tls_ca_file),
        )
        xmpp.enable_direct_tls = s.tls == "direct"
        xmpp.enable_starttls = s.tls == "starttls"
        xmpp.enable_plaintext = s.tls == "none"
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
        ):
            xmpp.add_event_handler(event, handler)
        # Online, every stanza goes to amoc's router (as in the lean client), not slixmpp's.
        xmpp.add_filter("in", self._on_stanza)
        policy = s.subscription_requests
        # None ("ignore") leaves a request unanswered: slixmpp reads it so, though it hints bool.
        xmpp.roster.auto_authorize = {"accept": True, "refuse": False}.get(policy)  # type: ignore[assignment]
        xmpp.roster.auto_subscribe = False
        self.xmpp = xmpp
        xmpp.connect(s.host, s.port)

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
            f"the server refused {self.settings.sasl.replace('AUTO', 'SASL')} authentication: "
            f"{condition} "
            "(wrong password, or the user is not registered)",
        )

    def _on_no_auth(self, _event: Any) -> None:
        hint = "" if self.settings.encrypted else " (does the server require TLS? set xmpp_tls)"
        self._fail_login(Reason.NO_MECHANISM, f"the server offers no usable SASL mechanism{hint}")

    def _on_stream_negotiated(self, _event: Any) -> None:
        xmpp = self.xmpp
        if xmpp is not None and not xmpp.authenticated:
            self._on_no_auth(None)

    def _on_invalid_certificate(self, error: Any) -> None:
        self._fail_login(
            Reason.TLS,
            f"the server certificate is not trusted ({error}): set xmpp_tls_ca_file to the "
            "CA (or the test server's certificate), or xmpp_tls_verify = false for a test server",
        )

    def _on_stream_error(self, error: Any) -> None:
        self._stream_error_received(error["condition"] or "undefined-condition", error["text"])

    def _on_session_start(self, _event: Any) -> None:
        self._logged_in()

    def _on_disconnected(self, _reason: Any) -> None:
        if self._state is State.LOGGING_IN:
            # Deferred one loop turn: a failed TLS handshake closes the connection before
            # slixmpp reports why, and the specific reason should win.
            asyncio.get_running_loop().call_soon(self._closed_during_login)
        elif self._state is State.ONLINE:
            self._end_session()
            self._cancel_send_task()

    def _on_stanza(self, stanza: Any) -> Any:
        if self._state is not State.ONLINE:
            return stanza
        xml = stanza.xml
        if (
            not self._echoed
            and xml.tag == _PRESENCE_TAG
            and xml.get("type") is None
            and self.xmpp is not None
            and xml.get("from") == str(self.xmpp.boundjid)
        ):
            self._echoed = True
            self._wake()
            return None
        if xml.tag.startswith("{jabber:client}"):
            self._route(from_etree(xml))
            return None
        return stanza

    def _send_raw(self, text: str) -> None:
        if self.xmpp is not None:
            self.xmpp.send_raw(text)

    # -- sending ----------------------------------------------------------------------------

    async def send_presence(self, wait: bool = True, timeout_ms: float | None = None) -> None:
        """Send initial presence; with `wait`, return once the server echoed it back."""
        xmpp = self._live()
        self._echoed = False
        xmpp.send_raw("<presence/>")
        if wait:
            await self._wait_until(lambda: self._echoed, timeout_ms, "echo of its presence")

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

    def drop_connection(self) -> None:
        """Abort the TCP connection without closing the stream: a network failure."""
        xmpp = self.xmpp
        if xmpp is not None and xmpp.transport is not None:
            xmpp.transport.abort()

    # -- receiving --------------------------------------------------------------------------

    def _live(self) -> ClientXMPP:
        if self._state is State.ONLINE and self.xmpp is not None:
            return self.xmpp
        self._not_live()

    # -- closing ----------------------------------------------------------------------------

    async def _close_stream(self) -> None:
        xmpp = self.xmpp
        if xmpp is not None and xmpp.transport is not None:
            wait = self.settings.stop_timeout / 1000.0
            async with asyncio.timeout(wait + 0.5):
                await xmpp.disconnect(wait=wait)

    def _teardown(self, graceful: bool = False) -> None:
        """Abort the connection (also after a clean close: slixmpp's transport lingers)."""
        self._state = State.CLOSED
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
