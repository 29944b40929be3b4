"""The REST API's settings: where it listens, its token, the upload check's time limit.

Its own module so that whatever needs the settings (the node, the CLI, the routes) does not
load the code that starts the server."""

from __future__ import annotations

from typing import Any

from amoc.config import Param, non_negative_ms, optional_port

TOKEN_FILE = "api_token"


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"expected an address such as '127.0.0.1', got {value!r}")
    return value.strip()


def _optional_token(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # AMOC_API_TOKEN=1234 parses as a number
    if not isinstance(value, str):
        raise TypeError(f"expected a string or None, got {type(value).__name__}")
    if any(c.isspace() or not c.isprintable() for c in value) or not value.isascii():
        raise ValueError("must be printable ASCII without spaces (it travels in a header)")
    return value


def _check_timeout(value: Any) -> float:
    value = non_negative_ms(value)
    if not 100 <= value <= 600_000:
        raise ValueError("must be between 100 and 600000 ms")
    return float(value)


PARAMETERS: tuple[Param, ...] = (
    Param(
        "api_port",
        None,
        "port of the REST API (None: off, 0: any free port)",
        optional_port,
        start_only=True,
    ),
    Param("api_host", "127.0.0.1", "address the REST API listens on", _host, start_only=True),
    Param(
        "api_token",
        None,
        f"bearer token of the REST API (None: a random one in run/<node>/{TOKEN_FILE})",
        _optional_token,
        secret=True,
        start_only=True,
    ),
    Param(
        "scenario_check_timeout",
        10_000,
        "ms an upload's check (a separate process importing it) may take before it is killed",
        _check_timeout,
    ),
)
