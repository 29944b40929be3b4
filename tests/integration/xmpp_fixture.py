"""A real ejabberd for the tests, started by tools/xmpp_server.py and always stopped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "xmpp_server.py"


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


@pytest.fixture(scope="session")
def xmpp_server() -> Iterator[XmppServer]:
    """One ejabberd for the whole session on free loopback ports."""
    server = XmppServer(f"pytest{free_port()}", "127.0.0.1", free_port(), free_port())
    server.tool("install", timeout=600)
    server.start()
    try:
        yield server
    finally:
        server.tool("remove")
