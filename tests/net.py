"""Network helpers for the tests (loopback only)."""

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def relay(host: str, target: tuple[str, int]) -> Iterator[int]:
    """A TCP relay on `host` (a free port: yielded) to `target`, in a thread of its own,
    closed at the end: hosts in network namespaces reach a loopback-only server through it."""
    loop = asyncio.new_event_loop()
    started: list[asyncio.Server] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start() -> None:
        started.append(await asyncio.start_server(serve, host, 0, backlog=1024))

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, name="relay", daemon=True)
    thread.start()
    try:
        yield int(started[0].sockets[0].getsockname()[1])
    finally:
        started[0].close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
