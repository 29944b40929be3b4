"""A real Prometheus (Debian's `prometheus`) on loopback with its own config and data directory.

    with Prometheus(tmp_path / "prom", {"amoc_node": [f"127.0.0.1:{port}"]}) as prom:
        prom.wait_scraped("amoc_node")
        prom.query('sum(rate(amoc_xmpp_messages_sent_total[5s]))')

Never the system service: each instance is our own process, stopped by its pid.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

from amoc.metrics.promnames import TIME_BUCKETS
from tests.net import free_port
from tests.wait import wait_until

PROMETHEUS = Path("/usr/bin/prometheus")
HOST = "127.0.0.1"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def config_text(jobs: Mapping[str, Sequence[str]]) -> str:
    """A prometheus.yml scraping each job's targets every SCRAPE_INTERVAL (JSON is YAML)."""
    return json.dumps(
        {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in jobs.items()
            ],
        },
        indent=2,
    )


class PrometheusError(AssertionError):
    """Prometheus answered a query with an error (the message names the query)."""


class Prometheus:
    """One prometheus process: start, query over the HTTP API, stop."""

    def __init__(self, root: Path, jobs: Mapping[str, Sequence[str]]) -> None:
        if not os.access(PROMETHEUS, os.X_OK):
            pytest.fail(f"{PROMETHEUS} is not installed: run `make deps` (prometheus)")
        self.root = root
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.config = root / "prometheus.yml"
        self.data = root / "data"
        self.log_path = root / "prometheus.log"
        self.jobs = dict(jobs)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.data.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text(jobs))

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start it; return once /-/ready answers 200."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address={HOST}:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        try:
            wait_until(
                self._ready,
                lambda: f"prometheus ready on {self.url}\n{self.log_tail()}",
                START_TIMEOUT,
                every=0.1,
            )
        except AssertionError:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM our process (SIGKILL after STOP_TIMEOUT) and wait for it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The end of Prometheus' log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no prometheus log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- the HTTP API ---------------------------------------------------------------------

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; the `data` of a success, PrometheusError otherwise."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"{self.url}/api/v1/{path}?{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector (at `at`, seconds since the epoch; default now)."""
        params: dict[str, str | float] = {"query": promql}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (promql, data)
        return list(data["result"])

    def value(self, promql: str, at: float | None = None) -> float:
        """The one value of an instant query that gives one series."""
        result = self.query(promql, at)
        assert len(result) == 1, f"{promql}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query's matrix."""
        data = self.api("query_range", query=promql, start=start, end=end, step=step)
        assert data["resultType"] == "matrix", (promql, data)
        return list(data["result"])

    def targets_up(self, job: str) -> bool:
        """Whether every target of `job` was scraped successfully last time."""
        active = self.api("targets", state="active")["activeTargets"]
        mine = [t for t in active if t["labels"].get("job") == job]
        return bool(mine) and all(t["health"] == "up" for t in mine)


def bucket_of(seconds: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the exposition's time bucket (TIME_BUCKETS) that holds
    `seconds`."""
    lower = 0.0
    for bound in TIME_BUCKETS:
        if seconds <= bound:
            return lower, bound
        lower = bound
    return lower, math.inf
