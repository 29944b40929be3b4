"""The REST API of a node: its parameters, its token, and starting it with the node."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amoc.config import Config, Param, non_negative_ms, optional_port

if TYPE_CHECKING:
    from amoc.api.server import ApiServer
    from amoc.home import Home
    from amoc.runner import Controller

log = logging.getLogger("amoc.api")

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


def node_token(configured: str | None, run_dir: Path) -> tuple[str, Path | None]:
    """The configured token, or a new random one written to a file only the owner reads."""
    path = run_dir / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale token must not outlive its node, nor be a planted symlink
    if configured:
        return configured, None
    token = secrets.token_urlsafe(32)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, path


async def start_node_api(
    config: Config, controller: Controller, home: Home, master: Any = None
) -> ApiServer | None:
    """Start the node's API when `api_port` is set; None when it is off.

    On a cluster master (`master` given) the run verbs drive the cluster."""
    config.declare(PARAMETERS)
    values = config.resolve(PARAMETERS)
    if values["api_port"] is None:
        return None
    # Imported here: a node without the API does not load aiohttp.
    from amoc.api.provider import LocalProvider, MasterProvider
    from amoc.api.server import ApiServer
    from amoc.api.store import ScenarioStore

    token, token_path = await asyncio.to_thread(node_token, values["api_token"], home.run_dir)
    server = ApiServer(
        MasterProvider(master, home.name)
        if master is not None
        else LocalProvider(controller, home.name),
        config,
        ScenarioStore(
            controller.scenario_dirs,
            home.uploaded_dir,
            timeout=lambda: float(config.get("scenario_check_timeout")) / 1000,
        ),
        token=token,
        host=values["api_host"],
        port=values["api_port"],
        token_file=token_path,
    )
    try:
        await server.start()
    except BaseException:
        if token_path is not None:
            token_path.unlink(missing_ok=True)
        raise
    where = f"in {token_path} (owner only)" if token_path else "from api_token"
    log.info("REST API on %s/api-docs; bearer token %s", server.url, where)
    if not _is_loopback(values["api_host"]):
        log.warning("the REST API listens on %s: reachable from other hosts", values["api_host"])
    return server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
