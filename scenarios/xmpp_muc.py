"""Group chat: users meet in MUC rooms (XEP-0045) and every message reaches every occupant.

Rooms are formed from user ids alone, so that every node of a cluster knows them without
asking: ids go in groups of `users_per_room` x `rooms_per_user` (G), 1..G, G+1..2G, ...; in a
group, room layer j (0 <= j < rooms_per_user) cuts the ring of the group's G ids into blocks
of `users_per_room`, shifted by j * users_per_room // rooms_per_user. With rooms_per_user = 1,
users 1..10 share a room, 11..20 the next, and so on; with 2 (rooms of 10), users 1..20 form
four rooms: 1..10, 11..20, 6..15 and 16..20 + 1..5. Each user is in `rooms_per_user` rooms of
exactly `users_per_room`; run whole groups (the user count a multiple of G, from id 1) or
some rooms never fill.

Each run of a user: log in, send presence, and in each of its rooms at once:

1. the room's first user (its lowest id) creates it (an instant room); the others ask
   (disco#info, every 100 ms) until it exists, then join, with their user name as nick;
2. wait, up to `join_timeout` ms from the login, until the room holds all its occupants
   (a room that does not fill is left again: counted as `muc.unfilled`, with a warning
   naming the users it lacks);
3. send `messages_per_user` stamped groupchat messages to the room, one every
   `message_interval` ms (the first at a random point of the first interval);
4. wait, up to `receive_timeout` ms after its last send, until it has every message of the
   other occupants and the room's echo of each of its own (else `muc.incomplete`), leave.

Nobody sends before the room is full, and nobody leaves before it has everything the others
sent, so every message reaches every occupant. Each run uses its own rooms (the run number is
in the room name: `<muc_room_prefix><run>_<room>@<muc_service>`), so users who repeat do not
mix runs, as long as they run the same number of times.

Counts: in a room of n, each message is received n times (n - 1 others and the sender's
echo): xmpp.muc.messages.received = n x xmpp.muc.messages.sent when nothing is lost, and
xmpp.muc.ttd_ms (groupchat time to delivery) includes the echoes. The scenario's own
counters count messages from the other occupants only: muc.expected (what each user waited
for), muc.received (what came), muc.incomplete and muc.unfilled (rooms, per user);
xmpp.muc.join_time_ms times the joins.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from amoc import metrics, xmpp
from amoc.config import (
    amoc_config,
    at_least,
    non_negative_int,
    non_negative_ms,
    optional_text,
    param,
)
from amoc.errors import ConfigError
from amoc.xmpp import muc

log = logging.getLogger("amoc.scenario.xmpp_muc")

POLL_MS = 100.0  # how often a user asks whether its room exists yet


def _service(value: Any) -> str | None:
    text = optional_text(value)
    if text is not None and (any(c.isspace() or c in "@/" for c in text) or "." not in text):
        raise ValueError("must be a service domain such as conference.localhost (or None)")
    return text


def _prefix(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if any(c.isspace() or c in "@/\"&'<>:" for c in value):
        raise ValueError("must not contain spaces or any of @ / \" & ' < > :")
    return value


PARAMETERS = [
    *xmpp.PARAMETERS,
    param("users_per_room", 10, "occupants of each room", at_least(1)),
    param(
        "rooms_per_user",
        1,
        "rooms each user is in (1 to users_per_room)",
        at_least(1),
    ),
    param(
        "messages_per_user",
        10,
        "groupchat messages each user sends to each of its rooms per run",
        non_negative_int,
    ),
    param("message_interval", 1000, "ms between two messages of a user in a room", non_negative_ms),
    param(
        "muc_service",
        None,
        "the MUC service (None: conference.<xmpp_domain>)",
        _service,
    ),
    param("muc_room_prefix", "amoc_room_", "room name = prefix + run + '_' + room", _prefix),
    param(
        "join_timeout",
        30_000,
        "ms after its login a user waits for its rooms to exist and fill",
        non_negative_ms,
    ),
    param(
        "receive_timeout",
        30_000,
        "ms a user waits, after its last send, for the other occupants' messages",
        non_negative_ms,
    ),
]


@dataclass(frozen=True)
class Layout:
    """Which rooms a user is in and who is in a room: a function of the ids alone."""

    per_room: int  # users in each room (n)
    per_user: int  # rooms of each user (r), 1 <= r <= n

    def __post_init__(self) -> None:
        if self.per_room < 1:
            raise ConfigError(f"users_per_room = {self.per_room}: must be >= 1")
        if not 1 <= self.per_user <= self.per_room:
            raise ConfigError(
                f"rooms_per_user = {self.per_user} with users_per_room = {self.per_room}: "
                "must be between 1 and users_per_room (each room layer is a shifted cut of "
                "a group of users_per_room x rooms_per_user ids)"
            )

    @property
    def group(self) -> int:
        """Users per group (G): the rooms of a group hold exactly its users."""
        return self.per_room * self.per_user

    @property
    def rooms_per_group(self) -> int:
        """Rooms per group: rooms_per_user layers of rooms_per_user rooms."""
        return self.per_user * self.per_user

    def _offset(self, layer: int) -> int:
        return layer * self.per_room // self.per_user

    def rooms_of(self, user_id: int) -> list[int]:
        """The room numbers of `user_id` (ids from 1), one per layer."""
        if user_id < 1:
            raise ValueError(f"user id {user_id}: rooms are formed from ids >= 1")
        group, position = divmod(user_id - 1, self.group)
        return [
            group * self.rooms_per_group
            + layer * self.per_user
            + ((position - self._offset(layer)) % self.group) // self.per_room
            for layer in range(self.per_user)
        ]

    def members(self, room: int) -> list[int]:
        """The user ids of room number `room`, sorted."""
        group, rest = divmod(room, self.rooms_per_group)
        layer, index = divmod(rest, self.per_user)
        start = index * self.per_room + self._offset(layer)
        return sorted(
            group * self.group + (start + t) % self.group + 1 for t in range(self.per_room)
        )


@dataclass
class Plan:
    """This node's run: the layout, where the rooms are, and per user the runs started."""

    layout: Layout
    prefix: str
    service: str | None
    runs: dict[int, int] = field(default_factory=dict)


def init() -> Plan:
    """Check that the room parameters fit together; fresh run counters."""
    layout = Layout(amoc_config.get("users_per_room"), amoc_config.get("rooms_per_user"))
    log.info(
        "rooms of %d users, %d per user: run whole groups of %d users from id 1 "
        "(1..%d, %d..%d, ...), else some rooms never fill",
        layout.per_room,
        layout.per_user,
        layout.group,
        layout.group,
        layout.group + 1,
        2 * layout.group,
    )
    return Plan(layout, amoc_config.get("muc_room_prefix"), amoc_config.get("muc_service"))


def describe_ids(ids: list[int]) -> str:
    """`[3, 4, 5, 9]` -> `3..5, 9`."""
    parts: list[str] = []
    run_start = previous = None
    for i in [*ids, None]:
        if previous is not None and i == previous + 1:
            previous = i
            continue
        if run_start is not None and previous is not None:
            parts.append(str(run_start) if run_start == previous else f"{run_start}..{previous}")
        run_start = previous = i
    return ", ".join(parts)


async def start(user_id: int, plan: Plan) -> None:
    """One run of `user_id`: its rooms, each filled, chatted in and left."""
    run = plan.runs.get(user_id, 0) + 1
    plan.runs[user_id] = run
    loop = asyncio.get_running_loop()
    join_by = loop.time() + amoc_config.get("join_timeout") / 1000.0
    client = await xmpp.connect(user_id)
    try:
        await client.send_presence()
        service = plan.service or f"conference.{client.settings.domain}"
        rooms = plan.layout.rooms_of(user_id)
        outcomes = await asyncio.gather(
            *(
                _in_room(
                    client, user_id, plan, f"{plan.prefix}{run}_{room}@{service}", room, join_by
                )
                for room in rooms
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    finally:
        await client.stop()


async def _in_room(
    client: xmpp.Session, user_id: int, plan: Plan, room_jid: str, room: int, join_by: float
) -> None:
    loop = asyncio.get_running_loop()
    members = plan.layout.members(room)
    nick = xmpp.username(user_id, client.settings)
    creator = members[0]
    try:
        joined = await _enter(client, room_jid, nick, user_id == creator, join_by)
    except xmpp.ReceiveTimeout:
        if user_id == creator:
            raise
        metrics.counter("muc.unfilled").inc()
        log.warning(
            "user %d: room %s was not created within join_timeout: its first user, %d, did "
            "not create it (its users are %s; run whole groups of %d users from id 1)",
            user_id,
            room_jid,
            creator,
            describe_ids(members),
            plan.layout.group,
        )
        return
    try:
        try:
            await joined.wait_occupants(len(members), max(0.0, join_by - loop.time()) * 1000.0)
        except xmpp.ReceiveTimeout:
            names = {xmpp.username(m, client.settings): m for m in members}
            missing = sorted(m for name, m in names.items() if name not in joined.occupants)
            metrics.counter("muc.unfilled").inc()
            log.warning(
                "user %d: room %s has %d of its %d occupants after join_timeout: it lacks "
                "users %s (its users are %s; run whole groups of %d users from id 1)",
                user_id,
                room_jid,
                joined.occupant_count,
                len(members),
                describe_ids(missing),
                describe_ids(members),
                plan.layout.group,
            )
            return
        count = amoc_config.get("messages_per_user")
        interval = amoc_config.get("message_interval") / 1000.0
        began = loop.time() + interval * random.random()
        for i in range(count):
            delay = began + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            joined.send()
        expected = (len(members) - 1) * count
        metrics.counter("muc.expected").inc(expected)
        try:
            await joined.wait_received(
                expected, amoc_config.get("receive_timeout"), echoes=joined.sent
            )
        except xmpp.ReceiveTimeout:
            metrics.counter("muc.incomplete").inc()
            log.warning(
                "user %d: room %s: got %d of the %d messages of the other occupants and %d "
                "of its %d echoes",
                user_id,
                room_jid,
                joined.received,
                expected,
                joined.echoes,
                joined.sent,
            )
        metrics.counter("muc.received").inc(joined.received)
    finally:
        await joined.leave()


async def _enter(
    client: xmpp.Session, room_jid: str, nick: str, creator: bool, join_by: float
) -> muc.Room:
    """Create the room (its first user) or join it once it exists (the others)."""
    loop = asyncio.get_running_loop()

    def left_ms() -> float:
        return max(1.0, (join_by - loop.time()) * 1000.0)

    if creator:
        return await muc.create(client, room_jid, nick, exist_ok=True, timeout_ms=left_ms())
    while True:
        await muc.wait_exists(client, room_jid, left_ms(), POLL_MS)
        try:
            return await muc.join(client, room_jid, nick, timeout_ms=left_ms())
        except muc.MucError as exc:
            # A server that locks new rooms until configured refuses joins until then.
            if exc.condition != "item-not-found" or loop.time() + POLL_MS / 1000 > join_by:
                raise
        await asyncio.sleep(POLL_MS / 1000.0)
