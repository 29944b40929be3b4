"""The REST API of a master with two slaves: the cluster, an uploaded scenario run on slaves."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster
from tests.net import free_port
from tests.wait import wait_until

pytestmark = pytest.mark.e2e

TOKEN = "cluster-secret"

UPLOADED = """
import asyncio
from amoc import metrics

async def start(user_id):
    metrics.counter("uploaded.starts").inc()
    await asyncio.sleep(600)
"""


def call(
    port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_masters_api_drives_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    # The slaves run from another copy of the release: they lack what is uploaded.
    other = tmp_path / "other" / "amoc"
    shutil.copytree(
        cluster.release, other, symlinks=True, ignore=shutil.ignore_patterns("run", "log")
    )
    port = free_port()
    term = cluster.start_master(AMOC_API_PORT=str(port), AMOC_API_TOKEN=TOKEN)
    for i in (1, 2):
        cluster.start_slave(i, release=other)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)

    status, nodes = call(port, "GET", "/api/cluster")
    assert status == 200, nodes
    assert sorted(n["name"] for n in nodes["nodes"]) == [cluster.node(1), cluster.node(2)]
    assert all(n["up"] for n in nodes["nodes"])

    # Each slave's clock offset to the master, once a heartbeat measured it (one machine:
    # within a few ms of nothing).
    def offsets() -> list[Any]:
        return [n["clock_offset_ms"] for n in call(port, "GET", "/api/cluster")[1]["nodes"]]

    wait_until(lambda: None not in offsets(), "the clock offsets", 10, every=0.2)
    assert all(abs(offset) < 20 for offset in offsets()), offsets()

    # Uploading needs the token, even on loopback.
    status, error = call(port, "POST", "/api/scenarios", {"name": "up1", "source": UPLOADED}, None)
    assert status == 401 and "error" in error
    status, _ = call(port, "POST", "/api/scenarios", {"name": "up1", "source": UPLOADED})
    assert status == 201

    status, run = call(port, "POST", "/api/run", {"scenario": "up1", "first": 1, "last": 6})
    assert status == 200, run
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 6)
    assert cluster.slave_users(1) == [1, 3, 5] and cluster.slave_users(2) == [2, 4, 6]
    # The slaves' copy did not have it: the master shipped its source (checked by hash).
    shipped = other / "priv" / "scenarios" / "up1.py"
    assert shipped.read_text() == UPLOADED
    logs = cluster.log(cluster.name(1)) + cluster.log(cluster.name(2))
    assert "scenario up1 (sha256" in logs and "received from the master" in logs

    status, body = call(port, "POST", "/api/add", {"count": 2})
    assert status == 200, body
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 8)
    status, body = call(port, "POST", "/api/remove", {"count": 3, "force": True})
    assert status == 200, body
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 5)

    status, body = call(port, "POST", "/api/run", {"scenario": "up1", "first": 9, "last": 1})
    assert status == 400 and body["field"] == "last"
    status, body = call(port, "GET", "/api/status")
    assert status == 200 and body["role"] == "master" and body["users"]["running"] == 5

    status, body = call(port, "GET", "/api/metrics")
    assert status == 200
    wait_until(
        lambda: call(port, "GET", "/api/metrics")[1]["metrics"].get("uploaded.starts") == 8,
        "metrics",
        10,
        every=0.1,
    )

    status, body = call(port, "POST", "/api/stop")
    assert status == 200
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 0)
