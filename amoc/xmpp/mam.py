"""Message archive lookups (XEP-0313, urn:xmpp:mam:2) paged with RSM (XEP-0059), on either
client.

    found = await mam.lookup(client, with_jid=bob, start=run_began, page_size=50)
    for m in found.messages:             # Archived: archive id, sender, body, stamp, ...
        ...
    found.complete, found.pages, found.count, found.time_ms

    page = await mam.query(client, with_jid=bob, page_size=10)      # one page
    after = await mam.query(client, with_jid=bob, page_size=10, after=page.fin.last)

The archived messages arrive as `<message><result queryid=.../></message>` before the IQ
result that ends the page (`<fin/>`, with the RSM first/last ids and maybe a count): a
handler registered before the query is sent collects them, so nothing is lost to the
buffer or raced. `lookup` pages with RSM `after` until the archive says `complete`, a page
comes back empty, or `max_pages` pages were read (then `complete` is False).

ejabberd 23.01 and Prosody 0.12 both speak urn:xmpp:mam:2 and archive both directions of a
chat in each user's archive. Prosody answers an unknown RSM id with item-not-found (an
`IqError`); ejabberd 23.01 (mnesia) does not check it: its ids are microsecond timestamps,
compared by position, and a non-numeric one gives an empty, complete page.
Prosody stamps archived messages to the second, ejabberd to the microsecond.

Metrics: histogram xmpp.mam.lookup_time_ms (a whole lookup, every page), counters
xmpp.mam.messages (archived messages returned), xmpp.mam.pages, xmpp.mam.truncated
(lookups stopped by max_pages); each page's IQ is timed as xmpp.iq.mam_query.time_ms.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from amoc import metrics
from amoc.xmpp import stamp, stanza
from amoc.xmpp.errors import XmppError
from amoc.xmpp.parser import Element
from amoc.xmpp.pred import bare, mam_result
from amoc.xmpp.session import Session

_RESULT = f"{stanza.MAM_NS} result"
_FIN = f"{stanza.MAM_NS} fin"
_FORWARDED = f"{stanza.FORWARD_NS} forwarded"
_MESSAGE = f"{stanza.CLIENT_NS} message"
_BODY = f"{stanza.CLIENT_NS} body"
_DELAY = f"{stanza.DELAY_NS} delay"
_STAMP = f"{stamp.NAMESPACE} stamp"
_SET = f"{stanza.RSM_NS} set"

_ids = itertools.count(1)

Time = datetime | float | int | str


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived message of a lookup."""

    id: str  # the archive's id for it (an RSM item id: `after` and `before` take it)
    sender: str  # `from` of the archived message
    to: str
    body: str | None
    stamp: str  # when the archive stored it (XEP-0082), "" if the server said nothing
    sent_us: int | None  # amoc's send stamp inside the message, if it had one
    message: Element  # the archived message itself


@dataclass(frozen=True, slots=True)
class Fin:
    """The end of one page: is the archive done, the RSM ids of the page, the total count."""

    complete: bool
    first: str | None = None
    last: str | None = None
    count: int | None = None  # how many messages match the query in all (if the server says)


@dataclass(frozen=True, slots=True)
class Page:
    """One query's answer."""

    messages: list[Archived]
    fin: Fin


@dataclass(frozen=True, slots=True)
class Lookup:
    """All the pages of a lookup."""

    messages: list[Archived]
    pages: int
    complete: bool  # the archive said so (False: stopped at max_pages)
    count: int | None  # the server's count of matching messages, if it gave one
    time_ms: float


def timestamp(value: Time) -> str:
    """A XEP-0082 date-time (UTC, microseconds) from a datetime, epoch seconds or a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, datetime | int | float):
        raise TypeError(f"expected a datetime, epoch seconds or a string, got {value!r}")
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    else:
        if not math.isfinite(value):
            raise ValueError(f"not a time: {value!r}")
        moment = datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def archived_of(result: Element) -> Archived | None:
    """The archived message in a `<result/>` element (None if it holds none)."""
    forwarded = result.find(_FORWARDED)
    if forwarded is None:
        return None
    message = forwarded.find(_MESSAGE)
    if message is None:
        return None
    delay = forwarded.find(_DELAY)
    body = message.find(_BODY)
    sent = message.find(_STAMP)
    return Archived(
        id=result.get("id"),
        sender=message.get("from"),
        to=message.get("to"),
        body=body.text if body is not None else None,
        stamp=delay.get("stamp") if delay is not None else "",
        sent_us=stamp.decode_value(sent.get("us")) if sent is not None else None,
        message=message,
    )


def fin_of(reply: Element) -> Fin:
    """The `<fin/>` of a query's IQ result (complete when the server gave no fin)."""
    fin = reply.find(_FIN)
    if fin is None:
        return Fin(complete=True)
    rsm = fin.find(_SET)
    first = last = None
    total = None
    if rsm is not None:
        first = rsm.findtext(f"{stanza.RSM_NS} first") or None
        last = rsm.findtext(f"{stanza.RSM_NS} last") or None
        text = rsm.findtext(f"{stanza.RSM_NS} count").strip()
        total = int(text) if text.isdigit() else None
    return Fin(fin.get("complete") in ("true", "1"), first, last, total)


async def query(
    client: Session,
    *,
    with_jid: str | None = None,
    start: Time | None = None,
    end: Time | None = None,
    page_size: int | None = None,
    after: str | None = None,
    before: str | None = None,
    to: str | None = None,
    timeout_ms: float | None = None,
) -> Page:
    """One page of the archive (the user's own, or with `to` a room's or service's).

    `IqError` if the server refuses the query (item-not-found for an unknown RSM id on
    Prosody), `ReceiveTimeout` if it does not answer in time.
    """
    if page_size is not None and (
        isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1
    ):
        raise XmppError(f"MAM page_size must be an integer >= 1, got {page_size!r}")
    qid = f"{client.user_id}-mam{next(_ids)}"
    owner = bare(to) if to is not None else bare(client.jid)
    found: list[Archived] = []

    def collect(e: Element) -> bool:
        sender = e.attrs.get("from")
        if sender and bare(sender) != owner:
            return False  # results come from the archive's owner (or carry no from)
        result = e.find(_RESULT)
        archived = archived_of(result) if result is not None else None
        if archived is not None:
            found.append(archived)
        return True

    request = stanza.mam_query(
        qid,
        to=to,
        with_jid=with_jid,
        start=timestamp(start) if start is not None else None,
        end=timestamp(end) if end is not None else None,
        max_results=page_size,
        after=after,
        before=before,
    )
    ref = client.add_handler(mam_result(qid), collect)
    try:
        reply = await client.iq(request, timeout_ms)
    finally:
        client.remove_handler(ref)
    metrics.counter("xmpp.mam.pages").inc()
    if found:
        metrics.counter("xmpp.mam.messages").inc(len(found))
    return Page(found, fin_of(reply))


async def lookup(
    client: Session,
    *,
    with_jid: str | None = None,
    start: Time | None = None,
    end: Time | None = None,
    page_size: int = 50,
    max_pages: int = 100,
    to: str | None = None,
    timeout_ms: float | None = None,
) -> Lookup:
    """Every archived message that matches, page after page (`timeout_ms` per page)."""
    if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
        raise XmppError(f"MAM max_pages must be an integer >= 1, got {max_pages!r}")
    loop = asyncio.get_running_loop()
    began = loop.time()
    messages: list[Archived] = []
    after: str | None = None
    pages = 0
    complete = False
    total: int | None = None
    while pages < max_pages:
        page = await query(
            client,
            with_jid=with_jid,
            start=start,
            end=end,
            page_size=page_size,
            after=after,
            to=to,
            timeout_ms=timeout_ms,
        )
        pages += 1
        messages.extend(page.messages)
        if page.fin.count is not None:
            total = page.fin.count
        after = page.fin.last or (page.messages[-1].id if page.messages else None)
        if page.fin.complete or not page.messages or after is None:
            complete = True
            break
    if not complete:
        metrics.counter("xmpp.mam.truncated").inc()
    elapsed = (loop.time() - began) * 1000.0
    metrics.histogram("xmpp.mam.lookup_time_ms").record(elapsed)
    return Lookup(messages, pages, complete, total, elapsed)
