"""Checks of request bodies: each failure is an ApiError naming the field to fix."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from amoc.errors import AmocError

# Bounds that keep a single request from exhausting the node.
MAX_BODY_BYTES = 512 * 1024
MAX_USERS_PER_REQUEST = 1_000_000
MAX_COMMENT_CHARS = 1000

_MISSING: Any = object()


class ApiError(AmocError):
    """A request the API refuses: an HTTP status, a message and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is an empty object."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", "body") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the body must be a JSON object, got {_kind(value)}", "body")
    return value


def only(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse fields the endpoint does not know (a typo must not be silently ignored)."""
    names = list(allowed)
    for key in body:
        if key not in names:
            raise ApiError(
                400, f"unknown field {key!r}; this endpoint takes: {', '.join(names)}", key
            )


def integer(
    body: Mapping[str, Any],
    name: str,
    minimum: int,
    maximum: int,
    default: Any = _MISSING,
) -> int:
    """Field `name` as an integer in [minimum, maximum]."""
    value = body.get(name, default)
    if value is _MISSING:
        raise ApiError(400, f"{name!r} is required (an integer >= {minimum})", name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name!r} must be an integer, got {_kind(value)}", name)
    if value < minimum:
        raise ApiError(400, f"{name!r} must be >= {minimum}, got {value}", name)
    if value > maximum:
        raise ApiError(400, f"{name!r} must be <= {maximum}, got {value}", name)
    return value


def boolean(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """Field `name` as a JSON boolean."""
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name!r} must be true or false, got {_kind(value)}", name)
    return value


def string(
    body: Mapping[str, Any], name: str, default: Any = _MISSING, max_chars: int = 10_000
) -> str:
    """Field `name` as a string of at most `max_chars` characters."""
    value = body.get(name, default)
    if value is _MISSING:
        raise ApiError(400, f"{name!r} is required (a string)", name)
    if not isinstance(value, str):
        raise ApiError(400, f"{name!r} must be a string, got {_kind(value)}", name)
    if len(value) > max_chars:
        raise ApiError(400, f"{name!r} is longer than {max_chars} characters", name)
    return value


def obj(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Field `name` as a JSON object (absent: empty)."""
    value = body.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{name!r} must be an object, got {_kind(value)}", name)
    return value


def user_range(body: Mapping[str, Any]) -> tuple[int, int]:
    """`first`/`last`, or `users` counted from `first` (default 1), as a checked id range."""
    first = integer(body, "first", 1, 2**62, default=1 if "users" in body else _MISSING)
    if "users" in body:
        if "last" in body:
            raise ApiError(400, "give either 'last' or 'users', not both", "users")
        users = integer(body, "users", 1, MAX_USERS_PER_REQUEST)
        return first, first + users - 1
    last = integer(body, "last", 1, 2**62)
    if last < first:
        raise ApiError(400, f"'last' ({last}) must be >= 'first' ({first})", "last")
    if last - first + 1 > MAX_USERS_PER_REQUEST:
        raise ApiError(
            400, f"at most {MAX_USERS_PER_REQUEST} users per request; add more later", "last"
        )
    return first, last


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"the number {value!r}"
    return names.get(type(value), type(value).__name__)
