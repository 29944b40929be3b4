"""Control-plane messages: a msgpack map per ZeroMQ frame, checked before use.

Every message has `op` (an `Op`); requests carry `id`, their replies the same `id`. A frame
that is too large, not msgpack, or not a map with a known `op` raises ProtocolError: the
receiver logs it and drops it, it never stops a node.
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack

from amoc.errors import AmocError

# Scenario sources travel in `do`; 256 KiB of source is the upload limit, metrics snapshots
# of a busy node are far smaller than the rest.
MAX_FRAME = 8 << 20


class ProtocolError(AmocError):
    """A control message that cannot be understood."""


class Op(enum.StrEnum):
    """Message kinds."""

    HEARTBEAT = "heartbeat"  # slave -> master: who I am, what runs, my ids, my metrics
    METRICS = "metrics"  # slave -> master: a part of a snapshot too large for a heartbeat
    PING = "ping"  # master -> slave: I am alive (and your config, when you are new)
    REFUSE = "refuse"  # master -> slave: another node holds your name; stay out
    REQUEST = "request"  # master -> slave: a verb to run on the slave's controller
    REPLY = "reply"  # slave -> master: the verb's result or error
    COORDINATE = "coordinate"  # slave -> master: a user joins a coordinator
    BATCH = "batch"  # master -> slave: a coordinator batch formed


class Verb(enum.StrEnum):
    """What a master asks a slave to do."""

    PLACE = "place"  # run exactly these ids of this run (the whole set, with its version)
    STOP = "stop"
    SOURCE = "source"  # the source of the run you carry, and your run-time config
    CONFIG = "config"
    THROTTLE = "throttle"


def encode(op: Op, **fields: Any) -> bytes:
    """One frame."""
    data: bytes = msgpack.packb({"op": op.value, **fields}, use_bin_type=True)
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"{op.value} message of {len(data)} bytes exceeds {MAX_FRAME}")
    return data


def decode(frame: bytes) -> dict[str, Any]:
    """The message in `frame`, or ProtocolError saying what is wrong with it."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise ProtocolError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"not a map but {type(msg).__name__}")
    try:
        msg["op"] = Op(msg.get("op") or "")
    except ValueError:
        raise ProtocolError(f"unknown op {msg.get('op')!r}") from None
    return msg


def field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """`msg[name]`, checked to be of `kind`."""
    value = msg.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise ProtocolError(f"{msg['op'].value}: field {name!r} is missing or not {kind}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def sent(result: Any) -> bool:
    """Whether a non-blocking send of a zmq.asyncio socket went out.

    Such a send reports failure (EAGAIN: no peer; EHOSTUNREACH: ROUTER_MANDATORY and the
    peer is gone) in the future it returns, not by raising; an unread failure would be
    logged as "never retrieved".
    """
    if not hasattr(result, "add_done_callback"):
        return True
    if result.done():
        return not result.cancelled() and result.exception() is None
    result.add_done_callback(lambda f: f.cancelled() or f.exception())
    return True
