"""XMPP over BOSH (XEP-0124, XEP-0206) for the lean client, with aiohttp doing the HTTP.

`BoshLink` is what the client takes for its transport; it translates between the client's
stream and BOSH's requests, so the client and its parser see an ordinary XMPP stream:

- `open_link` creates the BOSH session first (the client's stream header is then a no-op);
  a later header, after SASL success, is the stream restart (`xmpp:restart='true'`), and
  the client's `</stream:stream>` ends the session (`type='terminate'`);
- every other write is a stanza; the stanzas written in one turn of the event loop travel
  in one request; at most `requests` requests (the server's figure, 2 on ejabberd and
  Prosody) are outstanding, rid strictly increasing, and when nothing is to be sent one
  long poll (`hold=1`, `wait=WAIT_S`) stays with the server for what it has to say;
- a response's children are fed to the parser as they are, after a synthetic stream
  header (websocket.py's: the same text, so pooled parsers are shared with other streams),
  in rid order; a `type='terminate'` ends the stream (`</stream:stream>`), then the link.

Connections: one `aiohttp.ClientSession` (one keep-alive pool) per server, TLS settings,
source address and event loop, shared by all the users that go there, made at the first
of them and closed as the last one leaves. Each user keeps its long poll (one task while
a request is outstanding) and so about one HTTP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import random
import re
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

import aiohttp
from yarl import URL

from amoc.xmpp import addressing
from amoc.xmpp.addressing import Endpoint
from amoc.xmpp.errors import LoginError, Reason
from amoc.xmpp.parser import STREAMS_NS
from amoc.xmpp.settings import Settings
from amoc.xmpp.tls import shared_context
from amoc.xmpp.websocket import _ATTR, Client, _qualified, _stream_header

log = logging.getLogger("amoc.xmpp")

HTTPBIND_NS = "http://jabber.org/protocol/httpbind"
XBOSH_NS = "urn:xmpp:xbosh"
# How long the server may hold a poll (s). ejabberd and Prosody accept up to 120 s; longer
# holds cost nothing on a loaded node, a shorter one only adds empty round trips.
WAIT_S = 60
# A request not answered this long after the server's wait has failed (s).
_LATE_S = 30
# Keep-alive connections idle this long are closed (s): a user's poll is re-sent at once,
# so idle connections are only those left by the second request of a busy moment.
_KEEPALIVE_S = 10
# A request goes at least this long after the previous one while that one is out (s); more
# when the server is slow to take requests (twice its lag), up to the maximum. See
# BoshLink._too_soon.
_SPACING_S = 0.01
_SPACING_MAX_S = 0.1

_CLOSE_STREAM = b"</stream:stream>"
_BODY = re.compile(rb"""<body\b((?:\s+[\w:.-]+\s*=\s*(?:'[^']*'|"[^"]*"))*)\s*(/?)>""")
_BODY_END = b"</body>"
_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}

# The link's states.
_NEW, _OPEN, _CLOSING, _TERMINATING, _CLOSED = range(5)

# What a server's terminate condition (XEP-0124 §17.2) most likely means for the user.
_CONDITIONS = {
    "host-unknown": "the server does not serve that domain: is xmpp_domain right?",
    "improper-addressing": "the server wants another 'to' domain: is xmpp_domain right?",
    "internal-server-error": "the server could not start the session: is xmpp_domain one "
    "of its hosts?",
    "item-not-found": "the server does not know the session (it expired, or a request id "
    "was out of range)",
    "policy-violation": "too many or too frequent requests for the server's policy",
    "system-shutdown": "the server is shutting down",
    "bad-request": "the server did not understand a request",
}


def _hint(condition: str) -> str:
    return _CONDITIONS.get(condition, "see the server's log")


def _path_hint(endpoint: Endpoint) -> str:
    return (
        f"is {endpoint.path} the server's BOSH path on port {endpoint.port}? (ejabberd: /bosh, "
        "Prosody: /http-bind; set xmpp_bosh_path or give the URL in xmpp_transport)"
    )


# -- the connection pools -------------------------------------------------------------------


class _Pool:
    """One aiohttp session, its keep-alive connections shared by the users that go there."""

    __slots__ = ("key", "lag", "poll_timeout", "server_name", "session", "users")

    def __init__(self, key: tuple[Any, ...], endpoint: Endpoint, settings: Settings) -> None:
        source = key[-1]
        ssl = shared_context(settings.tls_verify, settings.tls_ca_file) if endpoint.tls else None
        connector = aiohttp.TCPConnector(
            limit=0,  # a held poll occupies a connection per user: no cap of our own
            ssl=ssl if ssl is not None else True,
            local_addr=source,
            keepalive_timeout=_KEEPALIVE_S,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=_HEADERS,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self.key = key
        self.users = 0
        self.server_name = settings.tls_name if endpoint.tls else None
        self.poll_timeout = aiohttp.ClientTimeout(total=WAIT_S + _LATE_S)
        self.lag = 0.0  # how long the server takes to take a request (s, a moving average)

    def lagged(self, seconds: float) -> None:
        """A request took the server `seconds` to take (it answered the one it held)."""
        self.lag += (min(seconds, _SPACING_MAX_S) - self.lag) * 0.05

    def spacing(self) -> float:
        """How long a request waits after the previous one, if that one is still out."""
        return min(_SPACING_MAX_S, max(_SPACING_S, 2.0 * self.lag))

    def release(self) -> None:
        """One user less; the last one closes the session and its connections."""
        self.users -= 1
        if self.users > 0:
            return
        if _pools.get(self.key) is self:
            del _pools[self.key]
        connector = self.session.connector
        if connector is None or connector.closed:
            return
        # close() closes every connection at once; what it returns only waits for their
        # transports to report it. Nothing needs to wait for that, but it must be awaited
        # (aiohttp warns otherwise): its first step does that, here, whatever the caller
        # (a task made for it could be cancelled before its first step, at the loop's end).
        waiting = connector.close().__await__()
        with contextlib.suppress(StopIteration):
            waiting.send(None)


_pools: dict[tuple[Any, ...], _Pool] = {}


def _acquire(endpoint: Endpoint, settings: Settings) -> _Pool:
    """The pool for `endpoint` (made in the running loop at its first user), one user more."""
    loop = asyncio.get_running_loop()
    source = addressing.source_address(settings.source_addresses)
    tls = (settings.tls_verify, settings.tls_ca_file, settings.tls_name) if endpoint.tls else ()
    key = (loop, endpoint.host, endpoint.port, tls, source)
    pool = _pools.get(key)
    if pool is None:
        for stale in [k for k in _pools if k[0].is_closed()]:  # users that never ended
            del _pools[stale]
        pool = _pools[key] = _Pool(key, endpoint, settings)
    pool.users += 1
    return pool


def pools() -> int:
    """How many pools (aiohttp sessions) are open (for tests and memory checks)."""
    return len(_pools)


@functools.lru_cache(maxsize=256)
def _url(endpoint: Endpoint) -> URL:
    return URL(endpoint.url)


def _header(sid: str, domain: str) -> bytes:
    """The stream header the parser gets at the start and at each restart."""
    return _stream_header(f"<open id={quoteattr(sid)} from={quoteattr(domain)} version='1.0'/>")


def _children(data: bytes, start: re.Match[bytes]) -> bytes:
    """The children of a response `<body/>` as stream bytes."""
    if start.group(2):
        return b""
    end = data.rfind(_BODY_END)
    inner = data[start.end() : end if end >= start.end() else len(data)]
    if b"xmlns:" not in start.group(1):
        return inner
    # Prefixes declared on <body> are not declared on our stream root, except stream:
    # (the same URI). Children that use another one are written out again on their own.
    for name, quoted, dquoted in _ATTR.findall(start.group(1).decode()):
        if not name.startswith("xmlns:"):
            continue
        prefix, uri = name[6:], quoted or dquoted
        if (prefix != "stream" or uri != STREAMS_NS) and f"{prefix}:".encode() in inner:
            root = ElementTree.fromstring(data)
            return b"".join(
                ElementTree.tostring(child, encoding="utf-8", xml_declaration=False)
                for child in root
            )
    return inner


def _attrs(start: re.Match[bytes]) -> dict[str, str]:
    return {
        name: quoted or dquoted for name, quoted, dquoted in _ATTR.findall(start.group(1).decode())
    }


# -- the link ---------------------------------------------------------------------------------


class BoshLink:
    """One user's BOSH session, seen by its XMPP client as the transport."""

    __slots__ = (
        "_busy",
        "_client",
        "_early",
        "_header_due",
        "_next",
        "_opened",
        "_pending",
        "_pool",
        "_requests",
        "_restart",
        "_rid",
        "_scheduled",
        "_sent_at",
        "_settings",
        "_sid",
        "_state",
        "_tasks",
        "_url",
    )

    def __init__(self, client: Client, pool: _Pool, url: URL, settings: Settings) -> None:
        self._client = client
        self._pool = pool
        self._url = url
        self._settings = settings
        self._state = _NEW
        self._sid = ""
        self._rid = random.randint(1 << 20, 1 << 40)  # XEP-0124 §14.3: large and random
        self._next = 0  # the rid whose response is to be taken next
        self._requests = 1  # how many may be outstanding (the server says)
        self._busy = 0  # how many are outstanding
        self._sent_at = 0.0  # when the last one was sent (the loop's time)
        self._tasks: list[asyncio.Task[None]] = []  # one per outstanding request
        self._pending: list[bytes] | None = None  # stanzas written, not yet sent
        self._early: dict[int, bytes] | None = None  # responses that overtook an older one
        self._scheduled = False  # a flush is due in this turn of the loop
        self._opened = False  # the client wrote its first stream header
        self._restart = False  # the client restarted its stream: to be sent
        # The client restarted its stream: the next answer taken starts the new one (the
        # server may answer an older request with it: Prosody does, after SCRAM).
        self._header_due = False

    # -- the session ------------------------------------------------------------------------

    async def _create(self, endpoint: Endpoint, settings: Settings) -> bytes:
        """The session creation request (XEP-0206 §5); the stream bytes of its answer."""
        rid = self._rid
        self._rid += 1
        body = (
            f"<body content='text/xml; charset=utf-8' hold='1' rid='{rid}' "
            f"to={quoteattr(settings.domain)} ver='1.6' wait='{WAIT_S}' xml:lang='en' "
            f"xmpp:version='1.0' xmlns='{HTTPBIND_NS}' xmlns:xmpp='{XBOSH_NS}'/>"
        ).encode()
        where = endpoint.url
        pool = self._pool
        try:
            async with pool.session.post(
                self._url, data=body, server_hostname=pool.server_name
            ) as response:
                status, reason = response.status, response.reason
                data = await response.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise LoginError(
                f"the certificate of {where} is not trusted for {settings.tls_name!r} "
                f"({exc.certificate_error}): set xmpp_tls_ca_file, xmpp_tls_server_name, or "
                "xmpp_tls_verify = false for a test server",
                Reason.TLS,
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise LoginError(
                f"TLS with {where} failed: {exc} (is port {endpoint.port} an HTTPS port?)",
                Reason.TLS,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            if exc.os_error.errno == errno.EADDRNOTAVAIL:
                hint = (
                    "a source address of xmpp_source_addresses is not on this host, or the "
                    "local ports ran out: give more addresses (e.g. '127.0.0.2/30' on loopback)"
                )
            else:
                hint = (
                    f"is the server's HTTP listener on port {endpoint.port}? set "
                    "xmpp_http_port or the URL"
                )
            raise LoginError(
                f"cannot reach {where}: {exc.os_error.strerror or exc} ({hint})",
                Reason.REFUSED if refused else Reason.CONNECTION_ERROR,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise LoginError(
                f"the BOSH session request to {where} failed: {exc or type(exc).__name__}",
                Reason.CONNECTION_ERROR,
            ) from None
        if status != 200:
            raise LoginError(
                f"{where} answered HTTP {status} {reason or ''}: {_path_hint(endpoint)}".strip(),
                Reason.CONNECTION_ERROR,
            )
        start = _BODY.search(data)
        if start is None:
            raise LoginError(
                f"{where} did not answer with a BOSH <body/>: {_path_hint(endpoint)}",
                Reason.CONNECTION_ERROR,
            )
        attrs = _attrs(start)
        if attrs.get("type") == "terminate":
            condition = attrs.get("condition", "undefined-condition")
            raise LoginError(
                f"{where} refused the BOSH session: {condition} ({reason}): {_hint(condition)}",
                Reason.CONNECTION_ERROR,
            )
        sid = attrs.get("sid", "")
        if not sid:
            raise LoginError(
                f"{where} answered without a session id: {_path_hint(endpoint)}",
                Reason.CONNECTION_ERROR,
            )
        self._sid = sid
        self._next = self._rid
        hold = _number(attrs.get("hold"), 1)
        self._requests = max(1, _number(attrs.get("requests"), hold + 1))
        return _children(data, start)

    def _started(self, stream: bytes) -> None:
        """The session exists: the client's stream begins, with the creation's answer."""
        self._state = _OPEN
        client = self._client
        client.connection_made(self)  # it writes its stream header: the session is that
        if self._state is _OPEN:
            client.data_received(_header(self._sid, self._settings.domain) + stream)
        self._pump()

    # -- requests ---------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send what is due while the server takes more requests; keep one poll out."""
        while self._busy < self._requests:
            state = self._state
            if state is _OPEN:
                if not (self._pending or self._restart or self._busy == 0):
                    return
            elif state is not _CLOSING:
                return
            if self._busy and self._too_soon():
                return
            if state is _CLOSING:
                self._state = _TERMINATING
                self._send(self._body(self._take_pending(), b" type='terminate'"), True)
                return
            if self._pending:
                self._send(self._body(self._take_pending()))
            elif self._restart:
                self._restart = False
                restart = (
                    f" to={quoteattr(self._settings.domain)} xml:lang='en' xmpp:restart='true'"
                )
                self._send(self._body(None, restart.encode()))
            else:
                self._send(self._body(None))  # the long poll

    def _too_soon(self) -> bool:
        """Whether the last request may not have reached the server yet; then flush later.

        Two requests sent together travel on two connections and may arrive in either
        order. ejabberd then holds the newer one unprocessed until the user is sent
        something (a held poll with nothing to say: up to `wait`, or for ever), so a
        request follows another one still out by at least the pool's spacing.
        """
        loop = asyncio.get_running_loop()
        at = self._sent_at + self._pool.spacing()
        if loop.time() >= at:
            return False
        self._scheduled = True
        loop.call_at(at, self._flush)
        return True

    def _take_pending(self) -> list[bytes] | None:
        pending, self._pending = self._pending, None
        return pending

    def _body(self, payload: list[bytes] | None, extra: bytes = b"") -> bytes:
        head = f"<body rid='{self._rid}' sid={quoteattr(self._sid)}".encode()
        if extra:  # a restart (xmpp:) or a terminate (its payload may hold a stream:error)
            namespaces = f" xmlns='{HTTPBIND_NS}' xmlns:xmpp='{XBOSH_NS}' "
            namespaces += f"xmlns:stream='{STREAMS_NS}'"
        else:
            namespaces = f" xmlns='{HTTPBIND_NS}'"
        if not payload:
            return b"".join((head, extra, namespaces.encode(), b"/>"))
        return b"".join((head, extra, namespaces.encode(), b">", *payload, _BODY_END))

    def _send(self, body: bytes, terminate: bool = False) -> None:
        rid = self._rid
        self._rid = rid + 1
        self._busy += 1
        loop = asyncio.get_running_loop()
        self._sent_at = loop.time()
        self._tasks.append(loop.create_task(self._post(rid, body, terminate)))

    async def _post(self, rid: int, body: bytes, terminate: bool) -> None:
        """One request and its answer, handed to the client in rid order."""
        pool = self._pool
        timeout = pool.poll_timeout
        if terminate:
            timeout = aiohttp.ClientTimeout(total=self._settings.stop_timeout / 1000.0)
        try:
            status, reason, data = await self._request(pool, body, timeout)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._finished()
            why = str(exc) or type(exc).__name__
            self._broken(f"the BOSH request to {self._url} failed: {why}")
            return
        self._finished()
        if self._state is _CLOSED:
            return
        loop = asyncio.get_running_loop()
        if self._busy and rid < self._rid - 1:  # released by a newer request, most likely
            pool.lagged(loop.time() - self._sent_at)
        if status != 200:
            self._refused(status, reason)
            return
        self._in_order(rid, data)
        # At the end of this turn: what the client writes on reading this answer (in its
        # tasks woken by it) goes with the next request, the poll.
        self._scheduled = True
        loop.call_soon(self._flush)

    async def _request(
        self, pool: Any, body: bytes, timeout: aiohttp.ClientTimeout
    ) -> tuple[int, str | None, bytes]:
        """POST `body`: status, reason, data. A connection the server had closed is tried
        again once (the same rid: servers answer a repeated one, XEP-0124 §14.3)."""
        for attempt in (1, 2):
            try:
                async with pool.session.post(
                    self._url, data=body, timeout=timeout, server_hostname=pool.server_name
                ) as response:
                    status, reason = response.status, response.reason
                    return status, reason, await response.read()
            except aiohttp.ClientConnectorError:
                raise
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                ConnectionResetError,
            ):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _refused(self, status: int, reason: str | None) -> None:
        """An answer other than 200 ends the session, saying what it likely means."""
        if status == 404:
            why = "the server no longer knows the session, or the path is wrong"
        else:
            why = "the server refused the request"
        self._broken(f"{self._url} answered HTTP {status} {reason or ''} ({why})")

    def _in_order(self, rid: int, data: bytes) -> None:
        """Answer `rid` to the client, and those that came early after it; keep it while
        an older request is still out (its answer comes first)."""
        if rid != self._next:
            early = self._early
            if early is None:
                early = self._early = {}
            early[rid] = data
            return
        self._answer(rid, data)
        early = self._early
        while early and self._state is not _CLOSED:
            found = early.pop(self._next, None)
            if found is None:
                break
            self._answer(self._next, found)
        if not early:
            self._early = None

    def _finished(self) -> None:
        """The request of the current task is over (answered or failed)."""
        self._busy -= 1
        task = asyncio.current_task()
        if task in self._tasks:
            self._tasks.remove(task)

    def _answer(self, rid: int, data: bytes) -> None:
        """Take the response to request `rid` (in rid order): its stanzas to the client."""
        self._next = rid + 1
        start = _BODY.search(data)
        if start is None:
            self._broken(f"{self._url} answered without a BOSH <body/>")
            return
        try:
            stream = _children(data, start)
        except ElementTree.ParseError as exc:
            self._broken(f"{self._url} answered with bad XML: {exc}")
            return
        if self._header_due:
            self._header_due = False
            stream = _header(self._sid, self._settings.domain) + stream
        if stream:
            self._client.data_received(stream)
        head = start.group(1)
        if b"type=" in head:
            attrs = _attrs(start)
            if attrs.get("type") == "terminate":
                self._terminated(attrs.get("condition", ""))

    def _terminated(self, condition: str) -> None:
        """The server ended the session: the stream ends, then the link."""
        if self._state is _CLOSED:
            return
        exc = None
        if condition:
            detail = f"the server terminated the BOSH session: {condition} ({_hint(condition)})"
            self._client._link_refused(detail)
            exc = ConnectionError(detail)
        self._end(exc, stream_end=True)

    def _broken(self, detail: str) -> None:
        """A request failed: the session cannot go on (rids would leave the window)."""
        if self._state is _CLOSED:
            return
        log.debug("%s", detail)
        self._client._link_refused(detail)
        self._end(ConnectionError(detail))

    def _end(self, exc: Exception | None, stream_end: bool = False, soon: bool = False) -> None:
        self._state = _CLOSED
        self._pending = self._early = None
        current = asyncio.current_task()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task is not current:
                task.cancel()
        self._pool.release()
        client = self._client
        if stream_end:
            client.data_received(_CLOSE_STREAM)
        if soon:  # as asyncio's transports do: not inside the caller's own call
            asyncio.get_running_loop().call_soon(client.connection_lost, exc)
        else:
            client.connection_lost(exc)

    def _flush(self) -> None:
        self._scheduled = False
        self._pump()

    # -- the client's transport -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """A stanza (batched with the others of this loop turn), a stream header (the
        first: nothing to do; later: a restart) or the stream's end (terminate)."""
        if self._state is not _OPEN:
            return
        if data.startswith(b"<?xml") or data.startswith(b"<stream:stream"):
            if not self._opened:
                self._opened = True
                return
            self._restart = self._header_due = True
        elif data.endswith(_CLOSE_STREAM):
            rest = data[: -len(_CLOSE_STREAM)]
            if rest:  # a stream error before the end
                self._queue(rest)
            self._state = _CLOSING
        else:
            self._queue(_qualified(data))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _queue(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
        else:
            pending.append(data)

    def close(self) -> None:
        """End the session (terminate) after what was written; the answer ends the link."""
        if self._state is _OPEN:
            self.write(_CLOSE_STREAM)

    def abort(self) -> None:
        """Drop the session at once, as a network failure would (the requests are cut; the
        server ends the session after its inactivity timeout)."""
        if self._state is not _CLOSED:
            self._end(None, soon=True)

    def is_closing(self) -> bool:
        """Whether the session is ending or over."""
        return self._state is not _OPEN

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Nothing of one connection: a session's requests go over pooled ones (so no
        channel binding either)."""
        return default


def _number(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


async def open_link(client: Client, endpoint: Endpoint, settings: Settings) -> None:
    """Start a BOSH session for `client` at `endpoint`; then `client.connection_made`.

    LoginError if the server cannot be reached or refuses the session, naming the URL and
    the likely fix (the path differs: ejabberd /bosh, Prosody /http-bind).
    """
    pool = _acquire(endpoint, settings)
    link = BoshLink(client, pool, _url(endpoint), settings)
    try:
        stream = await link._create(endpoint, settings)
    except BaseException:
        link._state = _CLOSED
        pool.release()
        raise
    link._started(stream)
