"""Starting a node's REST API with the node, and the token it is reached with."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amoc.api.settings import PARAMETERS, TOKEN_FILE
from amoc.config import Config

if TYPE_CHECKING:
    from amoc.api.server import ApiServer
    from amoc.home import Home
    from amoc.runner import Controller

log = logging.getLogger("amoc.api")


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
    from amoc.api.provider import local_provider, master_provider
    from amoc.api.server import ApiServer
    from amoc.api.store import ScenarioStore

    token, token_path = await asyncio.to_thread(node_token, values["api_token"], home.run_dir)
    server = ApiServer(
        master_provider(master, home.name)
        if master is not None
        else local_provider(controller, home.name),
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
