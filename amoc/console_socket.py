"""The node's console socket: newline-delimited JSON over a Unix socket, for `attach` and the CLI.

(Not the cluster's control plane: that is ZeroMQ, in amoc.cluster.)

Only the node's owner may connect: the socket's directory is mode 0700, the socket
0600, and every connection's peer uid is checked (SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from amoc.errors import NodeError

log = logging.getLogger("amoc.console_socket")

MAX_LINE = 1 << 20

Handler = Callable[[dict[str, Any], "Connection"], Awaitable[dict[str, Any] | None]]


def encode(message: dict[str, Any]) -> bytes:
    """One message as a JSON line."""
    return json.dumps(message, default=repr).encode() + b"\n"


class Connection:
    """One client of the console socket, as the server sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.session: Any = None  # a console session, once the client asks for one

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message and wait for the buffer to drain."""
        self.writer.write(encode(message))
        await self.writer.drain()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on `path`; each request line goes to `handler`, its answer back as a line."""
    if path.exists():
        path.unlink()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and peer_uid(sock) != os.getuid():
            log.warning("refused a console connection from uid %s", peer_uid(sock))
            writer.close()
            return
        conn = Connection(reader, writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    await conn.send({"error": "request too large"})
                    break
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    await conn.send({"error": f"malformed request: {exc}"})
                    continue
                try:
                    answer = await handler(request, conn)
                except Exception as exc:
                    log.exception("console socket request %r failed", request.get("op"))
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                if answer is not None:
                    await conn.send(answer)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_LINE)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


class ConsoleClient:
    """A blocking client of a node's console socket (for the CLI and attach)."""

    def __init__(self, path: Path, timeout: float | None = 10.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise NodeError(f"no node is listening on {path}") from exc
        except PermissionError as exc:
            self.sock.close()
            raise NodeError(
                f"not allowed to open {path}: the node belongs to another user"
            ) from exc
        self._file = self.sock.makefile("rb")

    def request(self, message: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
        """Send one request and return its answer."""
        self.sock.settimeout(timeout)
        self.sock.sendall(encode(message))
        line = self._file.readline(MAX_LINE)
        if not line:
            raise NodeError("the node closed the connection")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self.sock.close()

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
