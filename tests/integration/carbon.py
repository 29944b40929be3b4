"""A real carbon-cache (Debian's graphite-carbon) on loopback ports, writing whisper files."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import pytest
import whisper

from tests.wait import wait_until

CARBON_CACHE = Path("/usr/bin/carbon-cache")
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL = 0.05

Points = list[tuple[int, float]]

CARBON_CONF = """\
[cache]
STORAGE_DIR = {root}/storage
LOCAL_DATA_DIR = {root}/storage/whisper
WHITELISTS_DIR = {root}/storage/lists
CONF_DIR = {root}
LOG_DIR = {root}/log
PID_DIR = {root}/run
USER =
DATABASE = whisper
ENABLE_LOGROTATION = False
ENABLE_TAGS = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 100000
MAX_UPDATES_PER_SECOND_ON_SHUTDOWN = 100000
MAX_CREATES_PER_MINUTE = inf
MIN_TIMESTAMP_RESOLUTION = 1
LINE_RECEIVER_INTERFACE = {host}
LINE_RECEIVER_PORT = {port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = {host}
PICKLE_RECEIVER_PORT = {pickle_port}
CACHE_QUERY_INTERFACE = {host}
CACHE_QUERY_PORT = {query_port}
CARBON_METRIC_INTERVAL = 0
USE_FLOW_CONTROL = True
LOG_UPDATES = False
LOG_CREATES = True
LOG_CACHE_HITS = False
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = False
WHISPER_FALLOCATE_CREATE = True
"""

STORAGE_SCHEMAS = """\
[everything]
pattern = .*
retentions = 1s:1h
"""


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on the loopback interface."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


class Carbon:
    """One carbon-cache process with its own config, ports and whisper directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = HOST
        self.port, self.pickle_port, self.query_port = free_ports(3)
        self.data_dir = root / "storage" / "whisper"
        self.config = root / "carbon.conf"
        self.log_path = root / "carbon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        for sub in ("storage/whisper", "storage/lists", "log", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CARBON_CONF.format(
                root=root,
                host=self.host,
                port=self.port,
                pickle_port=self.pickle_port,
                query_port=self.query_port,
            )
        )
        (root / "storage-schemas.conf").write_text(STORAGE_SCHEMAS)

    # -- life cycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether our carbon-cache process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start carbon-cache in the foreground; return once its line port accepts."""
        if self.running:
            raise RuntimeError("carbon-cache is already running")
        (self.root / "run" / "carbon-cache-a.pid").unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(CARBON_CACHE), f"--config={self.config}", "--nodaemon", "start"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None:
                self._close_log()
                raise RuntimeError(
                    f"carbon-cache exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"carbon-cache did not listen on {self.host}:{self.port} within "
                    f"{timeout}s:\n{self.log_tail()}"
                )
            time.sleep(POLL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our carbon-cache (SIGTERM, SIGKILL after `timeout`) and wait for its exit."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The end of carbon-cache's output, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no carbon log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- reading whisper ----------------------------------------------------------------

    def path(self, series: str) -> Path:
        """The whisper file of a series."""
        return self.data_dir.joinpath(*series.split(".")).with_suffix(".wsp")

    def points(self, series: str) -> Points:
        """The (timestamp, value) points stored so far (none if the file is not there yet)."""
        path = self.path(series)
        try:
            fetched = whisper.fetch(str(path), 0)
        except (OSError, whisper.WhisperException):
            return []  # absent, or created but its header not written yet
        if fetched is None:
            return []
        (start, end, step), values = fetched
        return [
            (ts, value)
            for ts, value in zip(range(start, end, step), values, strict=False)
            if value is not None
        ]

    def read(
        self,
        series: str,
        timeout: float = 10.0,
        until: Callable[[Points], bool] | None = None,
    ) -> Points:
        """Wait until a series has points (and `until(points)` holds); return them."""
        return wait_until(
            lambda: self.points(series),
            lambda: f"matching points in {series} ({self.path(series)})\n{self.log_tail()}",
            timeout,
            holds=lambda points: bool(points) and (until is None or until(points)),
            every=POLL,
        )

    async def aread(
        self,
        series: str,
        timeout: float = 10.0,
        until: Callable[[Points], bool] | None = None,
    ) -> Points:
        """`read` from a thread, so the event loop (and its reporters) keeps running."""
        return await asyncio.to_thread(self.read, series, timeout, until)


@pytest.fixture(name="carbon")
def carbon_fixture(tmp_path: Path) -> Iterator[Carbon]:
    """A running carbon-cache, always stopped at teardown."""
    if not os.access(CARBON_CACHE, os.X_OK):
        pytest.fail(f"{CARBON_CACHE} is not installed: run `make deps` (graphite-carbon)")
    server = Carbon(tmp_path / "carbon")
    try:
        server.start()
        yield server
    finally:
        server.stop()
