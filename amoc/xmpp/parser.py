"""Incremental parsing of an XMPP stream with expat: bytes in, one `Element` per stanza out.

    parser = StreamParser(handler)   # handler.stream_opened / .stanza / .stream_closed
    parser.feed(data)   # any split: byte by byte, several stanzas, inside a UTF-8 character
    parser.restart()    # after SASL success: the server sends a new stream header

Expat (C) does all the XML work: tokens, UTF-8, namespaces, well-formedness. An expat parser
costs about 10 KiB, more than everything else a connection holds, so connections do not
keep one each. Between two stanzas a stream's parser is inside the stream root with nothing
pending, and any parser in that state, under a root with the same namespace declarations,
parses the next stanza exactly alike. So a connection that is between stanzas holds no
parser: it borrows an idle one from a pool for each read and gives it back when the read
ended on a stanza boundary. A read that ends inside a stanza keeps the parser until the
stanza is complete. The pool holds a few parsers for thousands of connections.

Restricted XML (RFC 6120 §11.1): a DOCTYPE, comment or processing instruction is an error,
so no entity can be declared and expanded.

`stamped_chats` is the receive path's shortcut for the commonest stanza of a load test, a
chat message with a body and amoc's TTD stamp and nothing else, as a server delivers it:
one regular expression instead of expat and its seven callbacks (see its docstring).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NoReturn, Protocol
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

STREAMS_NS = "http://etherx.jabber.org/streams"
XML_NS = "http://www.w3.org/XML/1998/namespace"
# Tags are "namespace local" (expat's form with a space separator), interned once.
STREAM_TAG = f"{STREAMS_NS} stream"

# Idle parsers kept per set of root namespace declarations; more are dropped.
POOL_SIZE = 16

NsKey = tuple[tuple[str, str], ...]


class XmlError(Exception):
    """The peer sent malformed or restricted XML; the stream cannot go on."""


class Element:
    """One parsed element: tag ("namespace local"), attributes, children, text."""

    __slots__ = ("attrs", "children", "tag", "text")

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[Element] = []
        self.text = ""

    def __repr__(self) -> str:
        return f"<Element {self.tag!r} {self.attrs!r} {len(self.children)} children>"

    def get(self, name: str, default: str = "") -> str:
        """An attribute's value."""
        return self.attrs.get(name, default)

    def find(self, tag: str) -> Element | None:
        """The first child with `tag`, or None."""
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findtext(self, tag: str, default: str = "") -> str:
        """The text of the first child with `tag`, or `default`."""
        child = self.find(tag)
        return default if child is None else child.text

    def findall(self, tag: str) -> list[Element]:
        """Every child with `tag`, in order."""
        return [child for child in self.children if child.tag == tag]

    def iter(self) -> Iterator[Element]:
        """This element and all its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.iter()

    @property
    def ns(self) -> str:
        """The namespace of the tag."""
        return self.tag.rpartition(" ")[0]

    @property
    def name(self) -> str:
        """The local name of the tag."""
        return self.tag.rpartition(" ")[2]

    def to_xml(self, parent_ns: str = "jabber:client") -> str:
        """The element as XML text (xmlns declared where it differs from the parent's)."""
        ns, _, name = self.tag.rpartition(" ")
        parts = [f"<{name}"]
        if ns != parent_ns:
            parts.append(f" xmlns={quoteattr(ns)}")
        for key, value in self.attrs.items():
            parts.append(f" {_attr_name(key)}={quoteattr(value)}")
        if not self.children and not self.text:
            parts.append("/>")
            return "".join(parts)
        parts.append(">")
        if self.text:
            parts.append(escape(self.text))
        parts.extend(child.to_xml(ns) for child in self.children)
        parts.append(f"</{name}>")
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_xml()


def _attr_name(key: str) -> str:
    """expat's "ns local" attribute names back to XML (only xml: is expected)."""
    if " " not in key:
        return key
    ns, _, local = key.rpartition(" ")
    return f"xml:{local}" if ns == XML_NS else local


def from_etree(node: Any) -> Element:
    """An `Element` from an xml.etree element (`{ns}tag` names), as slixmpp hands them."""
    tag = node.tag
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        tag = f"{ns} {local}"
    attrs = {}
    for key, value in node.attrib.items():
        if key.startswith("{"):
            ns, _, local = key[1:].partition("}")
            key = f"{ns} {local}"
        attrs[key] = value
    element = Element(tag, attrs)
    element.text = node.text or ""
    element.children = [from_etree(child) for child in node]
    return element


class StreamHandler(Protocol):
    """What a `StreamParser` calls back."""

    def stream_opened(self, attrs: dict[str, str]) -> None:
        """The peer's stream header (attributes without namespace declarations)."""

    def stanza(self, element: Element) -> None:
        """A complete top-level element."""

    def stream_closed(self) -> None:
        """The peer's `</stream:stream>`."""


class _Restart(Exception):
    """Raised inside expat to stop it at the first event after a stream restart."""


_names: dict[str, str] = {}  # shared intern table: one string per tag and attribute name
_PENDING = -2  # stop_at while a restart waits for the next event


class _Expat:
    """An expat parser and the state its handlers build; `sink` gets what they find.

    The handlers are bound methods, so the parser and this object refer to each other:
    `dispose()` breaks that cycle, and every parser that is dropped is disposed, so that
    parsers (about 10 KiB each) are freed at once rather than by the cyclic collector.
    """

    __slots__ = ("depth", "fed", "key", "opening", "parser", "sink", "stack", "stop_at", "xmlns")

    def __init__(self, sink: StreamParser | None, opening: bool = True) -> None:
        p = expat.ParserCreate(None, " ", intern=_names)
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        p.StartNamespaceDeclHandler = self._xmlns
        p.StartDoctypeDeclHandler = self._doctype
        p.CommentHandler = self._comment
        p.ProcessingInstructionHandler = self._pi
        self.parser = p
        self.sink = sink
        self.opening = opening  # report the root to the sink (not for a primed parser)
        self.depth = 0
        self.fed = 0
        self.stack: list[Element] = []
        self.xmlns: list[tuple[str, str]] = []
        self.key: NsKey | None = None
        self.stop_at = -1

    @classmethod
    def primed(cls, key: NsKey) -> _Expat:
        """A parser inside a stream root that declares the namespaces of `key`."""
        self = cls(None, opening=False)
        decls = " ".join(
            f"xmlns{':' if prefix else ''}{prefix}={quoteattr(uri)}" for prefix, uri in key
        )
        prefix = next((p for p, uri in key if uri == STREAMS_NS), "")
        root = f"{prefix}:stream" if prefix else "stream"
        self.feed(f"<{root} {decls}>".encode())
        if self.key != key or self.depth != 1:
            raise XmlError(f"cannot open a stream root with the namespaces {key!r}")
        return self

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.Parse(data, False)

    def dispose(self) -> None:
        """Break the parser <-> handlers cycle (the parser is never used again)."""
        p = self.parser
        p.StartElementHandler = p.EndElementHandler = p.CharacterDataHandler = None
        p.StartNamespaceDeclHandler = p.StartDoctypeDeclHandler = None
        p.CommentHandler = p.ProcessingInstructionHandler = None
        self.sink = None
        self.stack = []

    def stop_at_next_event(self) -> None:
        """Stop at the next event and record its position: a new stream starts there."""
        p = self.parser
        p.StartElementHandler = p.EndElementHandler = p.CharacterDataHandler = self._stop
        self.sink = None
        self.stop_at = _PENDING

    # -- expat handlers (the hot path) ------------------------------------------------------

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        depth = self.depth = self.depth + 1
        if depth > 2:
            stack = self.stack
            element = Element(tag, attrs)
            stack[-1].children.append(element)
            stack.append(element)
            return
        if depth == 2:
            self.stack.append(Element(tag, attrs))
            return
        # The stream root: remember its namespace declarations, the key of its pool.
        self.key = tuple(sorted(self.xmlns))
        self.xmlns = []
        self.parser.StartNamespaceDeclHandler = None
        if tag != STREAM_TAG:
            ns, _, local = tag.rpartition(" ")
            raise XmlError(
                f"the peer did not open an XMPP stream: root element {local!r} in namespace {ns!r}"
            )
        if self.opening and self.sink is not None:
            self.sink.handler.stream_opened(attrs)

    def _end(self, _tag: str) -> None:
        depth = self.depth
        self.depth = depth - 1
        if depth > 2:
            self.stack.pop()
        elif depth == 2:
            stanza = self.stack.pop()
            if self.sink is not None:
                self.sink.handler.stanza(stanza)
        elif self.sink is not None:
            self.sink.closed()

    def _text(self, data: str) -> None:
        if self.depth > 1:
            element = self.stack[-1]
            element.text += data

    def _xmlns(self, prefix: str | None, uri: str) -> None:
        if self.depth == 0:
            self.xmlns.append((prefix or "", uri))

    def _doctype(self, *_args: Any) -> None:
        raise XmlError("restricted XML: the peer sent a DOCTYPE (RFC 6120 §11.1)")

    def _comment(self, _data: str) -> None:
        raise XmlError("restricted XML: the peer sent a comment (RFC 6120 §11.1)")

    def _pi(self, target: str, _data: str) -> None:
        raise XmlError(f"restricted XML: the peer sent a processing instruction <?{target}?>")

    def _stop(self, *_args: Any) -> None:
        # Installed for every event once a restart is asked: the old stream ends here.
        self.stop_at = self.parser.CurrentByteIndex
        raise _Restart


_pool: dict[NsKey, list[_Expat]] = {}


def pool_size() -> int:
    """How many idle parsers the pool holds (for tests and memory checks)."""
    return sum(len(idle) for idle in _pool.values())


def _describe(exc: expat.ExpatError, x: _Expat, data: bytes) -> str:
    """expat's reason and the bytes around the error (a pooled parser's line is useless)."""
    at = x.parser.ErrorByteIndex - (x.fed - len(data))
    if not 0 <= at <= len(data):
        return expat.ErrorString(exc.code)
    return f"{expat.ErrorString(exc.code)} at {data[max(0, at - 40) : at + 40]!r}"


# A chat message as servers deliver amoc's own: `<message ...>` with a `<body>text</body>`
# and a `<stamp xmlns='urn:amoc:ttd' us='digits'/>` in either order, then at most the
# `<stanza-id xmlns='urn:xmpp:sid:0' .../>` of a server that archives (XEP-0359) and nothing
# else, attributes one space apart (as servers write them). Only what expat reads exactly alike
# passes: attribute values without quotes, `=`, `<`, `&` (no entity to expand) or control
# characters (tab, CR and LF would be normalised); names unprefixed or `xml:`-prefixed (any
# other prefix needs a declaration); body text without markup, entities, CR (line-end
# normalisation) or characters XML does not allow. Values without quotes make the quotes
# the only delimiters: splitting the attributes at them gives every name and value.
_VALUE = r"""(?:'[^'"=<&\x00-\x1f\ufffe\uffff]*+'|"[^'"=<&\x00-\x1f\ufffe\uffff]*+")"""
_ATTRS = rf"((?: (?:xml:)?[A-Za-z_][\w.-]*={_VALUE})*)"
_BODY = r"<body>([^<&\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*+)</body>"
_NS = """(?:'urn:amoc:ttd'|"urn:amoc:ttd")"""
_US = """(?:'([0-9]{1,19})'|"([0-9]{1,19})")"""
_STAMP = rf"<stamp (?:xmlns={_NS} us={_US}|us={_US} xmlns={_NS}) ?/>"
# Two children, each a body or a stamp: a group keeps its last match, so a body text and a
# stamp's digits both found mean one of each.
_STAMPED_CHAT = re.compile(
    rf"<message{_ATTRS}>(?:{_BODY}|{_STAMP}){{2}}(?:<stanza-id{_ATTRS} ?/>)?</message>",
    re.ASCII,
)
_CHAT_KINDS = (None, "chat", "normal", "headline")
Chat = tuple[str, str, str]  # from, body text, the stamp's `us`


def _attributes(text: str) -> dict[str, str] | None:
    """ " to='a' from='b'" -> {" to=": "a", " from=": "b"}; None if a name repeats."""
    parts = text.replace('"', "'").split("'")  # names and values alternate
    attrs = dict(zip(parts[0::2], parts[1::2], strict=False))
    return attrs if len(attrs) == len(parts) // 2 else None


def _stanza_id(text: str) -> bool:
    """Whether a `<stanza-id>`'s attributes are amiss (repeated, or not XEP-0359's)."""
    attrs = _attributes(text)
    return attrs is None or attrs.get(" xmlns=") != "urn:xmpp:sid:0"


def stamped_chats(data: bytes) -> tuple[list[Chat], bytes]:
    """The stamped chat messages `data` begins with, and the bytes after them.

    Each is (from, body text, the stamp's `us`), exactly what expat would read. `data` must
    begin at a stanza boundary of a stream whose default namespace is jabber:client; the
    rest (b"" when every stanza was one) goes to the parser. A message in another namespace,
    of type error or groupchat, with a repeated attribute, any other child or text, or not
    valid UTF-8, is left to expat, as is everything after it. A regular expression and a
    split instead of expat and the seven callbacks that build the elements: fewer objects
    and less code per message, for the commonest stanza of a load test.
    """
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return [], data
    chats: list[Chat] = []
    at, end = 0, len(text)
    match = _STAMPED_CHAT.match
    while at < end:
        found = match(text, at)
        if found is None:
            break
        head, body, us1, us2, us3, us4, sid = found.groups()
        us = us1 or us2 or us3 or us4
        attrs = _attributes(head)
        if (
            body is None
            or us is None
            or attrs is None
            or attrs.get(" type=") not in _CHAT_KINDS
            or attrs.get(" xmlns=", "jabber:client") != "jabber:client"
            or (sid is not None and _stanza_id(sid))
            or "]]>" in body
        ):
            break
        chats.append((attrs.get(" from=", ""), body, us))
        at = found.end()
    if not chats:
        return chats, data
    return chats, (text[at:].encode() if at < end else b"")


class StreamParser:
    """The receiving side of one XMPP stream: feed bytes, get `handler` callbacks.

    `feed` raises `XmlError` on malformed or restricted XML; the stream is then unusable
    (XMPP has no recovery). `close()` when the connection ends returns what it holds.
    """

    __slots__ = ("_broken", "_closed", "_key", "_own", "handler")

    def __init__(self, handler: StreamHandler) -> None:
        self.handler = handler
        self._key: NsKey | None = None  # the root's namespaces, once a stream is open
        self._own: _Expat | None = None  # a parser held across reads (login, split stanza)
        self._broken: str | None = None
        self._closed = False

    @property
    def between_stanzas(self) -> bool:
        """Whether the next byte read starts a stanza of an open stream (`stamped_chats`)."""
        return self._own is None and self._key is not None and not self._closed

    @property
    def holds_parser(self) -> bool:
        """Whether this stream keeps a parser of its own now (mid-stanza or opening)."""
        return self._own is not None

    def feed(self, data: bytes) -> None:
        """Parse the next bytes of the stream, calling back for what completes."""
        if self._broken is not None:
            raise XmlError(self._broken)
        if self._closed:
            if data.strip():
                self._fail(XmlError("the peer sent data after closing its stream"))
            return
        x = self._own or self._take_parser()
        try:
            x.fed += len(data)
            x.parser.Parse(data, False)
        except _Restart:
            self._restarted(x, data, x.stop_at)
            return
        except expat.ExpatError as exc:
            if x.stop_at == _PENDING:  # the new stream's <?xml ...?> in the old parser
                self._restarted(x, data, x.parser.ErrorByteIndex)
                return
            self._fail(XmlError(f"malformed XML from the peer: {_describe(exc, x, data)}"))
        except XmlError as exc:
            self._fail(exc)
        except BaseException:
            self.close()  # expat stopped mid-read: the parser's state is unknown
            raise
        if self._own is not x:  # the handler closed the stream during the read
            return
        if x.stop_at == _PENDING:  # restart asked, and nothing followed in this read
            self._restarted(x, data, x.parser.CurrentByteIndex)
        elif x.depth == 1 and x.parser.CurrentByteIndex == x.fed and x.key is not None:
            self._give_back(x)  # between stanzas, nothing pending

    def _take_parser(self) -> _Expat:
        """A parser for this read: a new one for a new stream, else one from the pool."""
        key = self._key
        if key is None:
            x = _Expat(self)
        else:
            idle = _pool.get(key)
            x = idle.pop() if idle else _Expat.primed(key)
            x.sink = self
        self._own = x
        return x

    def _give_back(self, x: _Expat) -> None:
        """The parser goes back to the pool of its namespaces (or away, if it is full)."""
        self._own = None
        key = self._key = x.key
        assert key is not None
        x.sink = None
        idle = _pool.get(key)
        if idle is None:
            _pool[key] = [x]
        elif len(idle) < POOL_SIZE:
            idle.append(x)
        else:
            x.dispose()

    def restart(self) -> None:
        """The stream restarts (RFC 6120 §4.3.3): what follows is a new stream header.

        Call it from `stanza()` (after SASL success) or between reads; bytes that follow
        in the same read go to the new stream.
        """
        self._key = None
        if self._own is not None:
            self._own.stop_at_next_event()

    def close(self) -> None:
        """The connection is gone: drop the parser this stream holds, if any."""
        x, self._own = self._own, None
        if x is not None:
            x.dispose()

    def closed(self) -> None:
        """The peer's root element ended."""
        self._closed = True
        self.handler.stream_closed()

    def _restarted(self, old: _Expat, data: bytes, at: int) -> None:
        start_of_read = old.fed - len(data)
        rest = data[max(0, at - start_of_read) :].lstrip()
        old.dispose()
        self._own = None
        if rest:
            self.feed(rest)

    def _fail(self, error: XmlError) -> NoReturn:
        self.close()
        self._broken = str(error)
        raise error
