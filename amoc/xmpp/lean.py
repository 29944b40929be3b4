"""One simulated user's XMPP session on a bare asyncio Protocol: the lean client.

The same helper API, metrics and errors as the slixmpp-based `amoc.xmpp.client.Client`;
pick it with `xmpp_client = "lean"`. What makes it lean (see bench/RESULTS.md):

- the client is the Protocol: one object per user, plus the transport and the socket;
- received bytes go to expat (`amoc.xmpp.parser`), which borrows a pooled parser per read,
  so a connection between stanzas holds no parser at all;
- stanzas it sends are formatted text, written at once (no send queue, no task);
- no task and no timer per client: timeouts exist only while a call waits.

It speaks RFC 6120 client streams: stream header, STARTTLS (with `xmpp_tls`, over the shared
SSLContext of `amoc.xmpp.tls`), SASL PLAIN or SCRAM-SHA-1 (verifying the server's
signature), stream restarts, resource binding, the legacy session if the server requires
it, stream errors, and answers the server's IQ requests (ping, else service-unavailable).

With `xmpp_stream_management` it speaks XEP-0198 (the counting and the queue are in
`amoc.xmpp.sm`): `<enable/>` after binding, acks both ways, and with "resume" a connection
that drops while online is re-established (TCP, TLS, SASL again) and the session resumed,
the unacknowledged stanzas written again; sends during the outage are kept, waiters keep
waiting. A resumption the server refuses binds a new session (what was lost is counted);
one that cannot reconnect within xmpp_sm_resume_timeout ends the session (ConnectionLost).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import functools
import logging
import random
import ssl
from collections.abc import Callable
from typing import cast
from xml.sax.saxutils import escape, quoteattr

from amoc import metrics
from amoc.xmpp import addressing, naming, scram, sm, stamp, stanza
from amoc.xmpp.base import ClientBase, State
from amoc.xmpp.errors import LoginError, Reason, ReceiveTimeout, XmppError
from amoc.xmpp.parser import STREAMS_NS, Element, StreamParser, XmlError, stamped_chats
from amoc.xmpp.router import stanza_error
from amoc.xmpp.settings import STREAM_RESUME, Settings
from amoc.xmpp.tls import shared_context
from amoc.xmpp.websocket import WebSocketLink

log = logging.getLogger("amoc.xmpp")

_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
_CLIENT = "jabber:client"
_TLS = "urn:ietf:params:xml:ns:xmpp-tls"

_FEATURES = f"{STREAMS_NS} features"
_REGISTER_FEATURE = "http://jabber.org/features/iq-register register"
_STARTTLS = f"{_TLS} starttls"
_PROCEED = f"{_TLS} proceed"
_TLS_FAILURE = f"{_TLS} failure"
_STREAM_ERROR = f"{STREAMS_NS} error"
_MECHANISMS = f"{_SASL} mechanisms"
_CHALLENGE = f"{_SASL} challenge"
_SUCCESS = f"{_SASL} success"
_FAILURE = f"{_SASL} failure"
_BIND_TAG = f"{_BIND} bind"
_JID = f"{_BIND} jid"
_SESSION_TAG = f"{_SESSION} session"
_OPTIONAL = f"{_SESSION} optional"
_PRESENCE = f"{_CLIENT} presence"
_IQ = f"{_CLIENT} iq"
_MESSAGE = f"{_CLIENT} message"
_STANZA_TAGS = frozenset((_MESSAGE, _PRESENCE, _IQ))  # what XEP-0198 counts

# Reconnecting for a resumption: the first attempt at once, then after 0.1, 0.2, 0.4 ...
# up to 2 s (each randomised by +-50%, so that users dropped together do not come back in
# lockstep), until xmpp_sm_resume_timeout.
_RETRY_FIRST_S = 0.1
_RETRY_MAX_S = 2.0
# How long an aborted connection attempt may take to report its end.
_ABORT_WAIT_S = 0.5

_CLOSE = b"</stream:stream>"
_PRESENCE_TEXT = b"<presence/>"
_STAMP_HEAD = f"<stamp xmlns='{stamp.NAMESPACE}' us='"


@functools.lru_cache(maxsize=64)
def _header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{_CLIENT}' xmlns:stream='{STREAMS_NS}' "
        f"to={quoteattr(domain)} version='1.0' xml:lang='en'>"
    ).encode()


def _itself(client: LeanClient) -> LeanClient:
    return client


def _untrusted(exc: ssl.SSLCertVerificationError, name: str) -> str:
    return (
        f"the server certificate is not trusted for {name!r} ({exc.verify_message}): set "
        "xmpp_tls_ca_file to the CA (or the test server's certificate), xmpp_tls_server_name "
        "to the name it carries, or xmpp_tls_verify = false for a test server"
    )


def _local(tag: str) -> str:
    """'ns local' -> 'local'."""
    return tag.rpartition(" ")[2]


def _condition(element: Element, namespace: str) -> tuple[str, str]:
    """(condition, text) of a stream, SASL or stanza error element."""
    condition, text = "", ""
    for child in element.children:
        ns, _, name = child.tag.rpartition(" ")
        if name == "text":
            text = child.text
        elif ns == namespace and not condition:
            condition = name
    return condition or "undefined-condition", text


class LeanClient(ClientBase, asyncio.Protocol):
    """A logged-in XMPP user on its own asyncio Protocol; see `amoc.xmpp.connect`."""

    __slots__ = (
        "_closed",
        "_echoed",
        "_features",
        "_framed",
        "_parser",
        "_password",
        "_register",
        "_registering_since",
        "_scram",
        "_session_required",
        "_sm",
        "_step",
        "_tls",
        "_to",
        "_transport",
        "_upgrade",
        "bound_jid",
        "mechanism",
    )

    def __init__(self, user_id: int, config: Settings, username: str) -> None:
        super().__init__(user_id, config, username)
        self.bound_jid = ""  # the full JID the server bound
        self.mechanism = ""  # the SASL mechanism used
        self._closed: asyncio.Future[None] | None = None
        self._echoed = False
        self._framed = False  # over WebSocket or BOSH: no STARTTLS, the URL says TLS
        self._features: Element | None = None  # the stream features kept while registering
        self._registering_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._parser: StreamParser | None = None
        # The current login step or the online handler, as a plain function: a bound
        # method kept in an attribute would make each client a reference cycle.
        self._step: Callable[[LeanClient, Element], None] = LeanClient._unexpected
        self._password = ""
        self._register = False  # in-band registration (XEP-0077) before the login
        self._scram: scram.Scram | None = None
        self._session_required = False
        self._to: tuple[int, str] = (0, "")  # the last user id sent to, and _message_head
        self._tls = False  # STARTTLS done
        self._upgrade: asyncio.Task[None] | None = None  # the TLS handshake, while it runs
        # XEP-0198 state, made when the server offers it and xmpp_stream_management asks.
        self._sm: sm.StreamManagement | None = None

    # -- login ------------------------------------------------------------------------------

    async def _connect(self, password: str) -> None:
        s = self.settings
        self._password = password  # until logged in or torn down
        ep = addressing.endpoint(s, self.user_id)
        protocol: Callable[[], asyncio.Protocol]
        if ep.kind == "tcp":
            direct = s.tls == "direct"  # XEP-0368: TLS from the first byte, then the stream
            protocol = functools.partial(_itself, self)
        elif ep.kind == "websocket":
            direct = ep.tls  # wss://
            protocol = functools.partial(WebSocketLink, self, f"{ep.host}:{ep.port}", ep.path)
        else:  # BOSH: HTTP requests, not one connection
            from amoc.xmpp import bosh  # aiohttp: 7 MiB a process that does not use it spares

            self._tls = ep.tls
            self._framed = True
            await bosh.open_link(self, ep, s)
            return
        self._tls = direct
        self._framed = ep.kind != "tcp"
        try:
            await asyncio.get_running_loop().create_connection(
                protocol,
                ep.host,
                ep.port,
                ssl=shared_context(s.tls_verify, s.tls_ca_file) if direct else None,
                server_hostname=s.tls_name if direct else None,
                local_addr=addressing.source_address(s.source_addresses),
            )
        except ssl.SSLCertVerificationError as exc:
            raise LoginError(_untrusted(exc, s.tls_name), Reason.TLS) from None
        except ssl.SSLError as exc:
            raise LoginError(
                f"TLS handshake failed: {exc} (is {s.host}:{s.port} a direct-TLS port? "
                "xmpp_tls = starttls is for the plain client port)",
                Reason.TLS,
            ) from None
        except ConnectionRefusedError:
            raise LoginError(
                "connection refused: is the XMPP server running on that host and port?",
                Reason.REFUSED,
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                hint = (
                    "the local ports of the source address ran out: give more addresses in "
                    "xmpp_source_addresses (e.g. '127.0.0.2/30' on loopback), or more servers"
                    if not s.source_addresses
                    else "a source address of xmpp_source_addresses is not on this host, or "
                    "its local ports ran out: add addresses"
                )
                raise LoginError(
                    f"cannot connect: {exc} ({hint})", Reason.CONNECTION_ERROR
                ) from None
            raise LoginError(f"cannot connect: {exc}", Reason.CONNECTION_ERROR) from None

    def _link_refused(self, detail: str) -> None:
        self._fail_login(Reason.CONNECTION_ERROR, detail)

    def _forget_secrets(self) -> None:
        self._password = ""
        self._scram = None

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _send_raw(self, text: str) -> None:
        sm_ = self._sm
        if sm_ is not None and sm_.enabled:
            sm_.write(text.encode())
        else:
            self._write(text.encode())

    # The login steps: each takes the next stanza of the stream.

    def _sasl_features(self, features: Element) -> None:
        if features.tag != _FEATURES:
            return self._unexpected(features)
        if self.settings.tls == "starttls" and not self._tls and not self._framed:
            if features.find(_STARTTLS) is None:
                return self._fail_login(
                    Reason.TLS, "xmpp_tls = starttls but the server does not offer STARTTLS"
                )
            self._write(f"<starttls xmlns='{_TLS}'/>".encode())
            self._step = LeanClient._tls_answer
            return None
        if self._register:
            return self._send_registration(features)
        mechanisms = features.find(_MECHANISMS)
        offered = [m.text.strip() for m in mechanisms.children] if mechanisms else []
        binding = self._channel_binding()
        mech = scram.choose(offered, self.settings.sasl, self._tls, binding is not None)
        if mech is None:
            return self._fail_login(Reason.NO_MECHANISM, self._no_mechanism(offered, binding))
        self.mechanism = mech
        if mech == "PLAIN":
            initial = scram.plain(self.username, self._password)
        else:
            self._scram = scram.Scram(
                self.username,
                self._password,
                mech,
                binding=binding if mech.endswith("-PLUS") else None,
                binding_supported=binding is not None and any(m.endswith("-PLUS") for m in offered),
            )
            initial = self._scram.client_first()
        self._write(
            f"<auth xmlns='{_SASL}' mechanism='{mech}'>"
            f"{base64.b64encode(initial).decode()}</auth>".encode()
        )
        self._step = LeanClient._sasl_answer

    def _scram_name(self) -> str:
        return self.mechanism

    def _channel_binding(self) -> bytes | None:
        """tls-unique of the TLS connection (for -PLUS mechanisms), None without TLS."""
        if not self._tls or self._transport is None:
            return None
        ssl_object = self._transport.get_extra_info("ssl_object")
        try:
            data = ssl_object.get_channel_binding(scram.CHANNEL_BINDING) if ssl_object else None
        except (ValueError, AttributeError):
            return None
        return data or None

    def _no_mechanism(self, offered: list[str], binding: bytes | None) -> str:
        wanted = self.settings.sasl
        listed = ", ".join(offered) or "none"
        if not offered:
            hint = " (does the server require STARTTLS? set xmpp_tls)" if not self._tls else ""
            return f"the server offers no SASL mechanism{hint}"
        if wanted.endswith("-PLUS") and binding is None:
            why = "needs TLS with channel binding (set xmpp_tls)"
            return f"xmpp_sasl = {wanted} {why}; the server offers {listed}"
        return (
            f"the server offers {listed}, not xmpp_sasl = {wanted}: set xmpp_sasl to one of "
            f"them (or AUTO, the strongest offered)"
        )

    def _send_registration(self, features: Element) -> None:
        """XEP-0077 §3.1: register the account on the open stream, then log in."""
        if features.find(_REGISTER_FEATURE) is None:
            if features.find(_STARTTLS) is not None:  # servers offer registration over TLS
                return self._fail_login(
                    Reason.REGISTRATION,
                    "no in-band registration (XEP-0077) is offered before STARTTLS, which "
                    "the server offers: set xmpp_tls = starttls",
                )
            return self._fail_login(
                Reason.REGISTRATION,
                "the server does not offer in-band registration (XEP-0077) in its stream "
                "features: enable it (ejabberd mod_register, Prosody allow_registration)",
            )
        self._register = False
        self._features = features
        self._registering_since = asyncio.get_running_loop().time()
        self._send_raw(stanza.register(self.username, self._password).xml("register"))
        self._step = LeanClient._registered
        return None

    def _registered(self, iq: Element) -> None:
        if iq.tag != _IQ or iq.get("id") != "register":
            return self._unexpected(iq)
        features, self._features = self._features, None
        elapsed = (asyncio.get_running_loop().time() - self._registering_since) * 1000.0
        metrics.histogram("xmpp.registrations.time_ms").record(elapsed)
        if iq.get("type") == "result":
            metrics.counter("xmpp.registrations.ok").inc()
        else:
            condition, text = stanza_error(iq)
            metrics.counter(f"xmpp.registrations.failed.{condition}").inc()
            if condition != "conflict":  # an existing account: log in to it all the same
                why = f"{condition} ({text})" if text else condition
                return self._fail_login(
                    Reason.REGISTRATION, f"in-band registration of {self.username} refused: {why}"
                )
        assert features is not None
        return self._sasl_features(features)

    def _tls_answer(self, answer: Element) -> None:
        if answer.tag == _TLS_FAILURE:
            return self._fail_login(Reason.TLS, "the server refused STARTTLS (<failure/>)")
        if answer.tag != _PROCEED:
            return self._unexpected(answer)
        # RFC 6120 §5.4.3.3: TLS on the same connection, then a new stream.
        assert self._parser is not None
        self._parser.restart()
        self._step = LeanClient._unexpected
        self._upgrade = asyncio.get_running_loop().create_task(self._start_tls())
        return None

    async def _start_tls(self) -> None:
        transport, s = self._transport, self.settings
        if transport is None:
            return
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                self,
                shared_context(s.tls_verify, s.tls_ca_file),
                server_hostname=s.tls_name,
            )
        except ssl.SSLCertVerificationError as exc:
            self._fail_login(Reason.TLS, _untrusted(exc, s.tls_name))
        except (ssl.SSLError, OSError) as exc:
            self._fail_login(Reason.TLS, f"TLS handshake failed: {exc}")
        else:
            if self._state not in (State.LOGGING_IN, State.RESUMING) or tls is None:
                return
            self._transport = tls
            self._tls = True
            self._step = LeanClient._sasl_features
            tls.write(_header(s.domain))
        finally:
            self._upgrade = None

    def _sasl_answer(self, answer: Element) -> None:
        tag = answer.tag
        data = b""
        if tag in (_CHALLENGE, _SUCCESS):
            text = answer.text.strip()
            try:
                data = base64.b64decode(text, validate=True) if text != "=" else b""
            except binascii.Error:
                return self._fail_login(Reason.AUTH, f"malformed base64 in SASL {_local(tag)}")
        try:
            if tag == _CHALLENGE:
                return self._sasl_challenge(data)
            if tag == _SUCCESS:
                return self._sasl_success(data)
        except scram.ScramError as exc:
            return self._fail_login(Reason.AUTH, f"{self._scram_name()} failed: {exc}")
        if tag == _FAILURE:
            return self._sasl_failure(answer)
        return self._unexpected(answer)

    def _sasl_challenge(self, data: bytes) -> None:
        if self._scram is None:
            raise scram.ScramError("a challenge to PLAIN")
        if self._scram.answered:  # the final message came as a challenge
            self._scram.verify(data)
            self._write(f"<response xmlns='{_SASL}'/>".encode())
            return
        key = self._scram.salt_needed(data) if scram.OFF_LOOP else None
        if key is None:
            self._send_final(data)
            return
        # A PBKDF2 of thousands of rounds: not in the loop.
        work = asyncio.get_running_loop().run_in_executor(None, scram.salted_password, *key)
        work.add_done_callback(functools.partial(self._salted, data))

    def _sasl_success(self, data: bytes) -> None:
        if self._scram is not None and data:
            self._scram.verify(data)
        elif self._scram is not None and not self._scram.verified:
            raise scram.ScramError("success without the server's signature")
        # RFC 6120 §6.4.6: a new stream on the same connection.
        assert self._parser is not None
        self._parser.restart()
        self._write(_header(self.settings.domain))
        self._step = LeanClient._bind_features

    def _sasl_failure(self, answer: Element) -> None:
        condition, text = _condition(answer, _SASL)
        why = f"{condition} ({text})" if text else condition
        mech = self._scram_name()
        if self._scram is not None and not self._scram.answered:
            # Refused before the proof: the server found no such account (Prosody
            # does that; ejabberd answers every unknown user with a fake salt).
            return self._fail_login(
                Reason.UNKNOWN_USER,
                f"the server refused {mech} for {self.username} before any proof: {why} "
                "(the user is not registered)",
            )
        hint = "wrong password" if self._scram is not None else "wrong password, or the "
        hint += "" if self._scram is not None else "user is not registered"
        return self._fail_login(
            Reason.AUTH, f"the server refused {mech} authentication: {why} ({hint})"
        )

    def _send_final(self, server_first: bytes) -> None:
        assert self._scram is not None
        final = base64.b64encode(self._scram.client_final(server_first)).decode()
        self._write(f"<response xmlns='{_SASL}'>{final}</response>".encode())

    def _salted(self, server_first: bytes, work: asyncio.Future[bytes]) -> None:
        """The PBKDF2 of the executor is done (and cached): answer the challenge."""
        if work.cancelled() or self._scram is None:
            return
        if self._state is not State.LOGGING_IN and self._state is not State.RESUMING:
            return
        try:
            work.result()
            self._send_final(server_first)
        except (scram.ScramError, ValueError) as exc:
            self._fail_login(Reason.AUTH, f"{self._scram_name()} failed: {exc}")

    def _bind_features(self, features: Element) -> None:
        if features.tag != _FEATURES:
            return self._unexpected(features)
        if features.find(_BIND_TAG) is None:
            return self._fail_login(
                Reason.CONNECTION_ERROR, "the server offers no resource binding after login"
            )
        session = features.find(_SESSION_TAG)
        self._session_required = session is not None and session.find(_OPTIONAL) is None
        if self.settings.stream_management:
            offered = features.find(sm.FEATURE) is not None
            sm_ = self._sm
            if sm_ is None and offered:
                resume = self.settings.stream_management == STREAM_RESUME
                sm_ = self._sm = sm.StreamManagement(resume, self.settings.sm_ack_every)
            elif sm_ is None:
                metrics.counter("xmpp.sm.unavailable").inc()
                sm.say_once(
                    "unavailable",
                    "xmpp_stream_management is set but the server at %s:%s does not offer "
                    "XEP-0198 (<sm xmlns='urn:xmpp:sm:3'/>): sessions go on without it "
                    "(counted in xmpp.sm.unavailable)",
                    self.settings.host,
                    self.settings.port,
                )
            if sm_ is not None:
                sm_.offered = offered
                if self._state is State.RESUMING and sm_.resumable:
                    if offered:
                        self._write(sm.resume_request(sm_.handled, sm_.id))
                        self._step = LeanClient._resume_answer
                        return None
                    self._resume_refused(None, "the server no longer offers stream management")
        return self._send_bind()

    def _send_bind(self) -> None:
        resource = self.settings.resource
        what = f"<resource>{escape(resource)}</resource>" if resource else ""
        self._write(f"<iq type='set' id='bind'><bind xmlns='{_BIND}'>{what}</bind></iq>".encode())
        self._step = LeanClient._bound

    def _bound(self, iq: Element) -> None:
        if iq.tag != _IQ or iq.get("id") != "bind":
            return self._unexpected(iq)
        if iq.get("type") != "result":
            condition, _text = _condition(iq.find(f"{_CLIENT} error") or iq, _STANZA_ERRORS)
            detail = f"resource binding failed: {condition}"
            return self._fail_login(Reason.CONNECTION_ERROR, detail)
        bind = iq.find(_BIND_TAG)
        self.bound_jid = (bind.findtext(_JID) if bind is not None else "").strip() or self.jid
        if self._session_required:
            self._write(f"<iq type='set' id='session'><session xmlns='{_SESSION}'/></iq>".encode())
            self._step = LeanClient._session_started
        else:
            self._logged_in()

    def _session_started(self, iq: Element) -> None:
        if iq.tag != _IQ or iq.get("id") != "session":
            return self._unexpected(iq)
        if iq.get("type") != "result":
            condition, _text = _condition(iq.find(f"{_CLIENT} error") or iq, _STANZA_ERRORS)
            return self._fail_login(Reason.CONNECTION_ERROR, f"session failed: {condition}")
        self._logged_in()

    def _logged_in(self) -> None:
        """Bound (and the session started): enable stream management, or be online."""
        sm_ = self._sm
        if sm_ is not None and sm_.offered:
            self._write(sm.ENABLE_RESUME if sm_.resume else sm.ENABLE)
            self._step = LeanClient._enable_answer
            return
        if sm_ is not None:  # a resumption's new session on a server without SM now
            self._sm_off()
        self._session_ready()

    def _session_ready(self) -> None:
        """The stream is ready for stanzas: the login (or a resumption) is done."""
        sm_ = self._sm
        self._step = LeanClient._online if sm_ is None else LeanClient._online_sm
        if sm_ is not None and sm_.resumable:
            sm_.password = self._password  # a resumption logs in again
        self._forget_secrets()
        if self._state is State.RESUMING:
            self._back_online()
        else:
            super()._logged_in()

    def _unexpected(self, element: Element) -> None:
        if element.tag == _STREAM_ERROR:
            return self._on_stream_error(element)
        if element.tag == _IQ:
            return self._route_iq(element)
        if self._state is State.LOGGING_IN:
            log.debug("%s: ignored during login: %r", self.jid, element)
        return None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """TCP is up: open the stream."""
        # uvloop's transports are not asyncio.Transport instances: no isinstance check.
        self._transport = transport = cast(asyncio.Transport, transport)
        self._tcp = True
        metrics.counter("xmpp.connections.ok").inc()
        self._parser = StreamParser(self)
        self._step = LeanClient._sasl_features
        transport.write(_header(self.settings.domain))

    def data_received(self, data: bytes) -> None:
        """Bytes from the server: to the parser, which calls back per stanza.

        The stamped chat messages a read begins with, while online with nobody watching
        the stanzas, take the parser's shortcut (`parser.stamped_chats`): the commonest read
        of a load test, counted and kept as the router would; the rest goes to the parser.
        """
        parser = self._parser
        if parser is None:
            return
        if (
            self._step is _ONLINE_STEP
            and data.endswith(b"</message>")
            and not self._handlers
            and not self._watchers
            and parser.between_stanzas
        ):
            chats, data = stamped_chats(data)
            for chat in chats:
                self._route_stamped_chat(*chat)
            if not data:
                return
        try:
            parser.feed(data)
        except XmlError as exc:
            self._protocol_error("not-well-formed", f"the server sent bad XML: {exc}")

    def eof_received(self) -> bool | None:
        """The server shut its side: close ours (connection_lost follows)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: fail the login, or end the session, and wake waiters."""
        self._transport = None
        self._drop_parser()
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(None)
        if self._state is State.LOGGING_IN or self._state is State.RESUMING:
            if self._upgrade is None:  # else the TLS handshake failed: _start_tls says why
                self._closed_during_login()
        elif self._state is State.ONLINE:
            sm_ = self._sm
            if sm_ is not None and sm_.resumable and not self._stream_error:
                self._start_resumption(sm_, exc)
            else:
                self._end_session(exc)
                self._sm_ended()

    # -- what the parser finds --------------------------------------------------------------

    def stream_opened(self, attrs: dict[str, str]) -> None:
        """The server's stream header: only XMPP 1.x streams can go on."""
        version = attrs.get("version", "0.9")
        if not version.startswith("1."):
            self._protocol_error(
                "unsupported-version", f"the server speaks XMPP stream version {version}"
            )

    def stanza(self, element: Element) -> None:
        """A stanza (or login element) from the server: to the current step."""
        self._step(self, element)

    def stream_closed(self) -> None:
        """The server ended its stream: end ours; connection_lost tells who waits."""
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(None)
            return
        if self._sm is not None and self._state is not State.RESUMING:
            self._sm.id = ""  # a closed stream ends the session: nothing to resume
        if self._transport is not None:
            self._transport.write(_CLOSE)
            self._transport.close()

    def _online(self, element: Element) -> None:
        tag = element.tag
        if tag == _PRESENCE and not self._echoed:
            attrs = element.attrs
            if attrs.get("from") == self.bound_jid and attrs.get("type") is None:
                self._echoed = True
                self._wake()
                return
        if tag == _STREAM_ERROR:
            self._on_stream_error(element)
        else:
            self._route(element)

    def _online_sm(self, element: Element) -> None:
        """Online with stream management: count stanzas, answer `<r/>`, take `<a/>`."""
        sm_ = self._sm
        tag = element.tag
        if sm_ is not None:
            if tag in _STANZA_TAGS:
                sm_.handled += 1
            elif tag == sm.REQUEST_TAG:
                self._write(sm.answer(sm_.handled))
                return
            elif tag == sm.ANSWER_TAG:
                try:
                    sm_.acked_to(sm.read_h(element))
                except ValueError as exc:
                    self._protocol_error("undefined-condition", str(exc))
                return
        self._online(element)

    def _on_stream_error(self, element: Element) -> None:
        self._stream_error_received(*_condition(element, _STREAM_ERRORS))

    def _protocol_error(self, condition: str, detail: str) -> None:
        log.debug("%s: %s", self.jid, detail)
        self._stream_error = f"{condition} (ours: {detail})"
        self._fail_login(Reason.STREAM_ERROR, detail)
        self._drop_parser()
        transport = self._transport
        if transport is not None:
            transport.write(
                f"<stream:error><{condition} xmlns='{_STREAM_ERRORS}'/></stream:error>".encode()
                + _CLOSE
            )
            transport.close()

    # -- sending ----------------------------------------------------------------------------

    async def send_presence(self, wait: bool = True, timeout_ms: float | None = None) -> None:
        """Send initial presence; with `wait`, return once the server echoed it back."""
        transport = self._live()
        self._echoed = False
        transport.write(_PRESENCE_TEXT)
        if wait:
            await self._wait_until(lambda: self._echoed, timeout_ms, "echo of its presence")

    def send_chat(self, to: int | str, body: str | None = None) -> None:
        """Send a stamped chat message to user id `to` or to a JID string.

        A user id is addressed by its full JID (with xmpp_resource), as the slixmpp client
        does (see its `send_chat` for why).
        """
        transport = self._live()
        self.sent = sent = self.sent + 1
        if isinstance(to, int):
            last_id, head = self._to
            if last_id != to or not head:
                head = self._message_head(naming.jid(to, self.settings, resource=True))
                self._to = (to, head)
        else:
            head = self._message_head(to)
        text = f"message {sent} from {self.username}" if body is None else escape(body)
        transport.write(
            f"{head}{sent}'><body>{text}</body>{_STAMP_HEAD}{stamp.now_us()}'/></message>".encode()
        )
        metrics.counter("xmpp.messages.sent").inc()

    def _message_head(self, to: str) -> str:
        """A chat message's text up to its number: `<message to=... id='<user id>-`."""
        return f"<message to={quoteattr(to)} type='chat' id='{self.user_id}-"

    # -- receiving --------------------------------------------------------------------------

    def _live(self) -> sm.Writer:
        sm_ = self._sm
        if sm_ is None or not sm_.enabled:
            transport = self._transport
            if self._state is State.ONLINE and transport is not None:
                return transport
        elif self._state is State.ONLINE or self._state is State.RESUMING:
            return sm_  # counts and keeps each stanza; holds them while the link is down
        self._not_live()

    # -- stream management (XEP-0198) -------------------------------------------------------

    @property
    def stream_management(self) -> sm.StreamManagement | None:
        """The XEP-0198 state (`.sent`, `.acked`, `.handled`, `.id`...: read it, do not
        change it); None without stream management."""
        return self._sm

    @property
    def unacked(self) -> int:
        """Stanzas sent that the server has not acknowledged yet (0 without SM)."""
        sm_ = self._sm
        return 0 if sm_ is None else len(sm_.queue)

    @property
    def resuming(self) -> bool:
        """True while a dropped connection is being re-established and resumed."""
        return self._state is State.RESUMING

    async def request_ack(self, timeout_ms: float | None = None) -> int:
        """Ask the server for an ack (`<r/>`) and return its h (the number of our stanzas it
        has handled, mod 2**32) once it covers every stanza sent before the call;
        ReceiveTimeout if that does not come in time."""
        self._live()
        sm_ = self._sm
        if sm_ is None or not sm_.enabled:
            raise XmppError(
                f"{self.jid}: request_ack needs stream management (xmpp_stream_management, "
                "and a server that offers it)",
                None,
                self.user_id,
            )
        future = sm_.wait_ack()
        sm_.request()  # while resuming: sent with the resumption
        timeout = self.settings.reply_timeout if timeout_ms is None else timeout_ms
        try:
            async with asyncio.timeout(timeout / 1000.0):
                return await future
        except TimeoutError:
            metrics.counter("xmpp.sm.ack_timeouts").inc()
            raise ReceiveTimeout(
                f"{self.jid}: no stream management ack within {timeout} ms",
                Reason.TIMEOUT,
                self.user_id,
            ) from None
        finally:
            sm_.forget(future)

    def drop_connection(self) -> None:
        """Abort the TCP connection without closing the stream, as a network failure would
        (the server sees a reset): with resumption the client resumes, else the session
        ends (ConnectionLost)."""
        transport = self._transport
        if transport is not None:
            transport.abort()

    def _enable_answer(self, answer: Element) -> None:
        sm_ = self._sm
        if answer.tag == sm.ENABLED and sm_ is not None and self._transport is not None:
            sm_.enabled_by(answer, self._transport, self._framed)
            metrics.counter("xmpp.sm.enabled").inc()
            if sm_.resume and not sm_.resumable:
                metrics.counter("xmpp.sm.resume_unavailable").inc()
                sm.say_once(
                    "no-resume",
                    "xmpp_stream_management = 'resume' but the server at %s:%s enabled stream "
                    "management without resumption (counted in xmpp.sm.resume_unavailable)",
                    self.settings.host,
                    self.settings.port,
                )
            return self._session_ready()
        if answer.tag == sm.FAILED:
            metrics.counter("xmpp.sm.enable_failed").inc()
            sm.say_once(
                "enable-failed",
                "the server at %s:%s refused to enable stream management (%s): sessions go "
                "on without it (counted in xmpp.sm.enable_failed)",
                self.settings.host,
                self.settings.port,
                sm.failed_condition(answer),
            )
            self._sm_off()
            return self._session_ready()
        return self._unexpected(answer)

    def _sm_off(self) -> None:
        """Go on without stream management; what was kept for it is written as it is."""
        sm_, self._sm = self._sm, None
        if sm_ is not None:
            kept = sm_.close(XmppError(f"{self.jid}: stream management is off"))
            transport = self._transport
            if kept and transport is not None:
                for data in kept if self._framed else (b"".join(kept),):
                    transport.write(data)

    def _sm_ended(self) -> None:
        """The session ended unexpectedly: what the server never acknowledged is lost."""
        sm_ = self._sm
        if sm_ is not None:
            lost = self._lost or XmppError(f"{self.jid}: the session ended")
            sm.count_lost(sm_.close(lost))

    def _start_resumption(self, sm_: sm.StreamManagement, exc: Exception | None) -> None:
        loop = asyncio.get_running_loop()
        self._state = State.RESUMING
        sm_.dropped(loop.time())
        metrics.counter("xmpp.sm.interruptions").inc()
        log.debug("%s: connection lost (%s), resuming session %s", self.jid, exc, sm_.id)
        sm_.task = loop.create_task(self._resume(sm_))

    async def _resume(self, sm_: sm.StreamManagement) -> None:
        """Reconnect and log in again until resumed, or until xmpp_sm_resume_timeout."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = sm_.dropped_at + s.sm_resume_timeout / 1000.0
        delay = _RETRY_FIRST_S
        why = "no attempt"
        login: asyncio.Future[None] | None = None
        try:
            while (remaining := deadline - loop.time()) > 0:
                self._login = login = loop.create_future()
                self._tls = False
                self._stream_error = ""
                try:
                    async with asyncio.timeout(min(remaining, s.connect_timeout / 1000.0)):
                        await self._connect(sm_.password)
                        await login
                    return  # online again: the handlers did the rest
                except LoginError as exc:
                    why = str(exc)
                    if exc.reason is Reason.AUTH:
                        break  # the same password will not work better next time
                except TimeoutError:
                    why = "no answer within the attempt's time"
                self._login = None  # what the dropped attempt reports next is not news
                if not login.done():
                    login.cancel()
                await self._abort_attempt()
                wait = min(delay * random.uniform(0.5, 1.5), deadline - loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                delay = min(delay * 2, _RETRY_MAX_S)
        finally:
            if login is not None and self._login is login:
                self._login = None
            if sm_.task is asyncio.current_task():
                sm_.task = None
        await self._abort_attempt()
        metrics.counter("xmpp.sm.resume_timeouts").inc()
        self._end_session(
            ConnectionError(
                f"dropped, and not resumed within xmpp_sm_resume_timeout = "
                f"{s.sm_resume_timeout} ms (last attempt: {why})"
            )
        )
        self._sm_ended()

    async def _abort_attempt(self) -> None:
        """Drop a failed attempt's connection and let it report its end before the next
        one (this client is the protocol of every connection it makes)."""
        if self._upgrade is not None:
            self._upgrade.cancel()
        transport = self._transport
        if transport is None:
            return
        self._closed = closed = asyncio.get_running_loop().create_future()
        transport.abort()
        try:
            async with asyncio.timeout(_ABORT_WAIT_S):
                await closed
        except TimeoutError:
            pass
        finally:
            self._closed = None
            self._transport = None
            self._drop_parser()

    def _resume_answer(self, answer: Element) -> None:
        sm_ = self._sm
        if sm_ is None or self._transport is None:
            return None
        if answer.tag == sm.RESUMED:
            try:
                h = sm.read_h(answer)
            except ValueError as exc:
                return self._protocol_error("undefined-condition", str(exc))
            self._step = LeanClient._online_sm
            resent = sm_.resumed_by(h, self._transport, self._framed)
            metrics.counter("xmpp.sm.resumed").inc()
            if resent:
                metrics.counter("xmpp.sm.resent").inc(resent)
            elapsed = (asyncio.get_running_loop().time() - sm_.dropped_at) * 1000.0
            metrics.histogram("xmpp.sm.resume_time_ms").record(elapsed)
            log.debug("%s: resumed after %.0f ms, %d resent", self.jid, elapsed, resent)
            self._forget_secrets()
            return self._back_online()
        if answer.tag == sm.FAILED:
            try:  # XEP-0198 1.6: the server may say what it got of the old session
                known: int | None = sm.read_h(answer) if answer.get("h") else None
            except ValueError:
                known = None
            self._resume_refused(known, sm.failed_condition(answer))
            return self._send_bind()  # a new session, with stream management enabled again
        return self._unexpected(answer)

    def _resume_refused(self, h: int | None, why: str) -> None:
        """The server cannot resume (session expired, unknown): count what is lost."""
        sm_ = self._sm
        assert sm_ is not None
        lost = sm_.refused(h, _PRESENCE_TEXT if self._echoed else None)
        sm.count_lost(lost)
        metrics.counter("xmpp.sm.resume_failed").inc()
        log.debug("%s: resumption refused (%s): %d stanzas lost", self.jid, why, len(lost))

    def _back_online(self) -> None:
        """A resumption is over: the stream is up again (resumed, or a new session)."""
        self._state = State.ONLINE
        if self._sm is not None:
            self._sm.task = None  # it only has to return now
        login, self._login = self._login, None
        if login is not None and not login.done():
            login.set_result(None)

    # -- closing ----------------------------------------------------------------------------

    async def _close_stream(self) -> None:
        transport = self._transport
        if self._sm is not None and self._sm.task is not None:
            return  # stopped while resuming: no stream to close, the teardown aborts
        if transport is not None:
            self._closed = closed = asyncio.get_running_loop().create_future()
            transport.write(_CLOSE)
            async with asyncio.timeout(self.settings.stop_timeout / 1000.0):
                await closed  # the server's </stream:stream>, or the connection's end

    def _drop_parser(self) -> None:
        parser, self._parser = self._parser, None
        if parser is not None:
            parser.close()

    def _teardown(self, graceful: bool = False) -> None:
        self._state = State.CLOSED
        self._forget_secrets()
        if self._upgrade is not None:
            self._upgrade.cancel()
        sm_ = self._sm
        if sm_ is not None:
            if sm_.task is not None:
                sm_.task.cancel()
            sm_.close(XmppError(f"{self.jid}: the client was stopped", None, self.user_id))
        transport, self._transport = self._transport, None
        self._drop_parser()
        if transport is not None:
            if graceful:
                transport.close()
            else:
                transport.abort()


_ONLINE_STEP = LeanClient._online  # the step of a session online without XEP-0198


async def connect(
    user_id: int,
    config: Settings,
    username: str | None = None,
    password: str | None = None,
    register: bool = False,
) -> LeanClient:
    """Log user `user_id` in with resolved settings; `LoginError` with a `reason` if not.

    With `register`, the account is first registered in-band (XEP-0077) on the same
    stream; an account that exists already (conflict) is counted and logged in to.
    """
    client = LeanClient(user_id, config, username or naming.username(user_id, config))
    client._register = register
    await client._open(naming.password(user_id, config) if password is None else password)
    return client
