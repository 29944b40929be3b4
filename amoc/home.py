"""Where a node keeps its files: the release layout."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Unix socket paths are limited to 107 bytes on Linux; keep a margin.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Home:
    """The files of node `name` in release directory `root`."""

    root: Path
    name: str = "amoc"

    @classmethod
    def discover(cls, name: str | None = None) -> Home:
        """The release named by AMOC_HOME (set by bin/amoc), else the current directory."""
        root = Path(os.environ.get("AMOC_HOME") or Path.cwd()).resolve()
        return cls(root, name or os.environ.get("AMOC_NODE_NAME") or "amoc")

    @property
    def scenarios_dir(self) -> Path:
        """Bundled and user scenarios."""
        return self.root / "scenarios"

    @property
    def uploaded_dir(self) -> Path:
        """Scenarios uploaded at run time (REST, cluster)."""
        return self.root / "priv" / "scenarios"

    @property
    def app_config(self) -> Path:
        """The rendered app config."""
        return self.root / "priv" / "app.config"

    @property
    def run_dir(self) -> Path:
        """Pid file and console socket of this node (mode 0700)."""
        return self.root / "run" / self.name

    @property
    def pidfile(self) -> Path:
        """The running node's pid."""
        return self.run_dir / "node.pid"

    @property
    def busy_file(self) -> Path:
        """Written by the node's watchdog while its event loop is blocked: since when."""
        return self.run_dir / "loop.busy"

    @property
    def log_file(self) -> Path:
        """The node's log."""
        return self.root / "log" / f"{self.name}.log"

    @property
    def history_file(self) -> Path:
        """Console history, shared by `console` and `attach`."""
        return self.root / "run" / ".console_history"

    @property
    def socket(self) -> Path:
        """The console socket; under a private /tmp directory when the path would be too long."""
        path = self.run_dir / "console.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"amoc-{os.getuid()}" / f"{digest}.sock"

    def make_dirs(self) -> None:
        """Create the run, log and socket directories, private to the owner."""
        for directory in (self.run_dir, self.socket.parent):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)

    def lock(self) -> int:
        """Take the node's name for this process: the pid file, locked while it lives.

        The lock goes with the process, however it ends, so that a live node (busy or not)
        is told from a dead one's leftover file. Raises BlockingIOError if a live node
        holds it. Returns the file descriptor to keep open.
        """
        self.make_dirs()
        fd = os.open(self.pidfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def holder(self) -> int | None:
        """The pid of the live process that holds this node's name, or None."""
        try:
            fd = os.open(self.pidfile, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # a dead node's file
        finally:
            os.close(fd)

    def busy_for(self) -> float | None:
        """Seconds the node's event loop has been blocked, when its watchdog says so."""
        with contextlib.suppress(OSError, ValueError):
            return max(0.0, time.time() - float(self.busy_file.read_text()))
        return None
