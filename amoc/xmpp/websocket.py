"""XMPP over WebSocket (RFC 7395) for the lean client, with wsproto doing the framing.

`WebSocketLink` is the asyncio Protocol of the TCP (or TLS) connection; to the client it
is the transport. It translates between the two framings, so the client and its parser
see an ordinary XMPP stream:

- the client's stream header becomes `<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>`
  and its `</stream:stream>` a `<close/>`; every other write (one stanza) is one text
  message;
- the server's `<open/>` becomes a stream header for the parser (always the same one, so
  pooled parsers are shared with TCP streams), each message is fed as it is, and the
  server's `<close/>` ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol
from xml.sax.saxutils import quoteattr

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger("amoc.xmpp")

FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"
_CLOSE_STREAM = b"</stream:stream>"
_CLOSE = f"<close xmlns='{FRAMING_NS}'/>"
_ATTR = re.compile(r"""([\w:.-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")""")
_HEADER_TO = re.compile(rb"""\sto=(?:'([^']*)'|"([^"]*)")""")


class Client(Protocol):
    """What the link calls on the XMPP client (an asyncio Protocol itself)."""

    def connection_made(self, transport: Any) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def _link_refused(self, detail: str) -> None: ...


def _stream_header(opening: str) -> bytes:
    """A stream header for the parser, from the server's `<open/>` (its id, from, version)."""
    attrs = {
        m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _ATTR.finditer(opening)
    }
    kept = "".join(
        f" {name}={quoteattr(attrs[name])}" for name in ("id", "from", "version") if name in attrs
    )
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams'{kept}>"
    ).encode()


def _qualified(stanza: bytes) -> bytes:
    """RFC 7395 §3.3.3: each message is a document of its own, so a stanza without an
    xmlns gets jabber:client's (on a stream it inherits it from the stream header)."""
    end = stanza.find(b">")
    if end < 0 or b" xmlns=" in stanza[:end] or not stanza.startswith(b"<"):
        return stanza
    name_end = end
    for stop in (b" ", b"/"):
        at = stanza.find(stop, 1, end)
        if 0 < at < name_end:
            name_end = at
    return stanza[:name_end] + b" xmlns='jabber:client'" + stanza[name_end:]


class WebSocketLink(asyncio.Protocol):
    """One user's WebSocket connection, seen by its XMPP client as the transport."""

    __slots__ = ("_client", "_closed", "_host", "_path", "_text", "_transport", "_ws")

    def __init__(self, client: Client, host: str, path: str) -> None:
        self._client = client
        self._host = host  # the Host header: host[:port]
        self._path = path
        self._transport: asyncio.Transport | None = None
        self._ws: WSConnection | None = None
        self._text: list[str] | None = None  # a fragmented message being received
        self._closed = False

    # -- the TCP side -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """TCP (or TLS) is up: ask for the upgrade to WebSocket with the xmpp subprotocol."""
        self._transport = transport  # type: ignore[assignment]
        self._ws = ws = WSConnection(ConnectionType.CLIENT)
        request = Request(host=self._host, target=self._path, subprotocols=[SUBPROTOCOL])
        transport.write(ws.send(request))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        """Bytes from the server: WebSocket events, then XMPP for the client."""
        ws, transport = self._ws, self._transport
        if ws is None or transport is None:
            return
        try:
            ws.receive_data(data)
            for event in ws.events():
                self._event(event, ws, transport)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            log.debug("websocket protocol error: %s", exc)
            self._client._link_refused(f"WebSocket protocol error: {exc}")
            transport.abort()

    def _event(self, event: Any, ws: WSConnection, transport: asyncio.Transport) -> None:
        handler = _EVENTS.get(type(event))
        if handler is not None:  # Pong, BytesMessage: nothing to do
            handler(self, event, ws, transport)

    def _on_text(self, event: TextMessage, _ws: WSConnection, _t: asyncio.Transport) -> None:
        if not event.message_finished:
            self._text = [*(self._text or ()), event.data]
            return
        text = "".join((*self._text, event.data)) if self._text else event.data
        self._text = None
        self._incoming(text)

    def _on_accept(
        self, event: AcceptConnection, _ws: WSConnection, transport: asyncio.Transport
    ) -> None:
        if event.subprotocol != SUBPROTOCOL:
            self._client._link_refused(
                f"the server did not accept the {SUBPROTOCOL!r} WebSocket subprotocol"
            )
            transport.abort()
            return
        self._client.connection_made(self)

    def _on_reject(
        self, event: RejectConnection, _ws: WSConnection, transport: asyncio.Transport
    ) -> None:
        self._client._link_refused(
            f"the server refused the WebSocket upgrade of {self._path} "
            f"(HTTP {event.status_code}): is it the server's WebSocket path?"
        )
        if not event.has_body:
            transport.close()

    def _on_reject_data(
        self, event: RejectData, _ws: WSConnection, transport: asyncio.Transport
    ) -> None:
        if event.body_finished:
            transport.close()

    def _on_ping(self, event: Ping, ws: WSConnection, transport: asyncio.Transport) -> None:
        transport.write(ws.send(event.response()))

    def _on_close(
        self, event: CloseConnection, ws: WSConnection, transport: asyncio.Transport
    ) -> None:
        if not self._closed:
            self._closed = True
            self._client.data_received(_CLOSE_STREAM)
        if ws.state.name not in ("CLOSED", "LOCAL_CLOSING"):
            transport.write(ws.send(event.response()))
        transport.close()

    def _incoming(self, text: str) -> None:
        head = text.lstrip()[:6]
        if head.startswith("<open"):
            self._client.data_received(_stream_header(text))
        elif head.startswith("<close"):
            if not self._closed:
                self._closed = True
                self._client.data_received(_CLOSE_STREAM)
        else:
            self._client.data_received(text.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is gone."""
        self._transport = None
        self._ws = None
        self._client.connection_lost(exc)

    # -- the client's transport -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """One stanza, a stream header or the stream's end, as one WebSocket message."""
        ws, transport = self._ws, self._transport
        if ws is None or transport is None or ws.state.name != "OPEN":
            return
        if data.startswith(b"<?xml") or data.startswith(b"<stream:stream"):
            found = _HEADER_TO.search(data)
            to = (found.group(1) or found.group(2)).decode() if found else ""
            text = f"<open xmlns='{FRAMING_NS}' to={quoteattr(to)} version='1.0'/>"
        elif data.endswith(_CLOSE_STREAM):
            rest = data[: -len(_CLOSE_STREAM)]
            if rest:  # a stream error before the end
                transport.write(ws.send(Message(data=rest.decode())))
            text = _CLOSE
        else:
            text = _qualified(data).decode()
        transport.write(ws.send(Message(data=text)))

    def close(self) -> None:
        """Close the WebSocket (code 1000), then the connection."""
        ws, transport = self._ws, self._transport
        if transport is None:
            return
        if ws is not None and ws.state.name == "OPEN":
            transport.write(ws.send(CloseConnection(code=1000)))
        transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        """Whether the connection is closing or gone."""
        return self._transport is None or self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The TCP transport's (the TLS object for wss, the peer's address)."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)


# The wsproto events a link acts on, by type (the others, Pong and bytes, need nothing).
_EVENTS: dict[type, Callable[[WebSocketLink, Any, WSConnection, asyncio.Transport], None]] = {
    TextMessage: WebSocketLink._on_text,
    AcceptConnection: WebSocketLink._on_accept,
    RejectConnection: WebSocketLink._on_reject,
    RejectData: WebSocketLink._on_reject_data,
    Ping: WebSocketLink._on_ping,
    CloseConnection: WebSocketLink._on_close,
}
