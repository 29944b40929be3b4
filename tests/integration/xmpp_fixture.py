"""A real ejabberd for the tests, started by tools/xmpp_server.py and always stopped, and
what the XMPP tests share: counters, the settings that reach a server, a scenario run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amoc import metrics
from amoc.config import amoc_config
from amoc.runner import Controller, State
from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "xmpp_server.py"
SCENARIOS = [ROOT / "scenarios"]


@dataclass
class XmppServer:
    """How tests reach the server, and the tool's verbs for it."""

    name: str
    host: str
    port: int
    http_port: int
    domain: str = "localhost"
    user_prefix: str = "user_"
    password_prefix: str = "password_"

    def tool(self, verb: str, *extra: str, timeout: float = 180) -> str:
        """Run tools/xmpp_server.py VERB for this instance; its output."""
        done = subprocess.run(
            [sys.executable, str(TOOL), verb, "--name", self.name, *extra],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"xmpp_server.py {verb} failed: {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> None:
        """Start (or restart after stop) on the same ports."""
        self.tool(
            "start",
            "--host", self.host, "--port", str(self.port),
            "--http-port", str(self.http_port), "--domain", self.domain,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server."""
        self.tool("stop")

    def register(self, first: int, last: int) -> None:
        """Register users first..last (user_<id> / password_<id>)."""
        self.tool("register", "--first", str(first), "--last", str(last))


@contextmanager
def own_server(name: str, users: int = 0) -> Iterator[XmppServer]:
    """An ejabberd called `name` on free loopback ports, with users 1..`users` registered;
    stopped and removed at the end."""
    server = XmppServer(name, "127.0.0.1", free_port(), free_port())
    server.tool("install", timeout=600)
    try:
        server.start()
        if users:
            server.register(1, users)
        yield server
    finally:
        server.tool("remove")


@pytest.fixture(scope="session")
def xmpp_server() -> Iterator[XmppServer]:
    """One ejabberd for the whole session on free loopback ports."""
    with own_server(f"pytest{free_port()}") as server:
        yield server


def count(name: str) -> int:
    """A counter's current value (counters are process-wide: tests compare deltas)."""
    return int(metrics.counter(name).value)


def server_settings(server: XmppServer, client: str) -> dict[str, Any]:
    """The xmpp_* settings that reach `server` with the `client` implementation."""
    return {
        "xmpp_client": client,
        "xmpp_host": server.host,
        "xmpp_port": server.port,
        "xmpp_domain": server.domain,
        "xmpp_username_prefix": server.user_prefix,
        "xmpp_password_prefix": server.password_prefix,
    }


def connect_kw(server: XmppServer, client: str) -> dict[str, Any]:
    """The same as `amoc.xmpp.connect` overrides (short names)."""
    return {k.removeprefix("xmpp_"): v for k, v in server_settings(server, client).items()}


async def run_scenario(
    settings: dict[str, Any], first: int, last: int, deadline_s: float
) -> dict[str, Any]:
    """Run xmpp_one_to_one for ids first..last with the runner; return its final status."""
    ctl = Controller(scenario_dirs=SCENARIOS)
    try:
        await ctl.do("xmpp_one_to_one", first, last, settings=settings)
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while ctl.status()["state"] != State.FINISHED.value:
            assert loop.time() < end, f"scenario still running after {deadline_s} s"
            await asyncio.sleep(0.05)
        return ctl.status()
    finally:
        await ctl.close()
        for name in settings:
            amoc_config.unset(name)
