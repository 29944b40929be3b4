"""JSON responses: strict JSON (no NaN or Infinity, which browsers refuse) and errors."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web


def jsonable(value: Any) -> Any:
    """`value` with what JSON cannot carry made readable: inf -> "infinity", objects -> repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "infinity" if value > 0 else "-infinity"
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return repr(value)


def ok(data: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.Response(
        text=json.dumps(jsonable(data), allow_nan=False),
        status=status,
        content_type="application/json",
    )


def error(status: int, message: str, field: str | None = None) -> web.Response:
    """The API's error shape: {"error": message, "field": the request field at fault}."""
    response = ok({"error": message, "field": field}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="amoc"'
    return response
