"""A release node's REST API against hostile scenarios, leaked secrets and racing runs.

Uploads are checked in a child process; nothing of theirs runs in the node until a run
starts; a scenario that exits or interrupts is contained; secrets never show.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.terminal import amoc
from tests.integration.test_api import TOKEN, Answer, Client
from tests.net import free_port
from tests.wait import wait_until

pytestmark = pytest.mark.integration

CHECK_TIMEOUT_S = 3
EVENTS_URL = "http://grapher:pa55-w0rd-x@127.0.0.1:9/events/"

PATIENT = '''"""Patient: each user waits a minute per run."""

import asyncio


async def start(user_id):
    await asyncio.sleep(60)
'''


@dataclass
class Node:
    release: Path
    name: str
    client: Client
    reports: Path

    @property
    def pid(self) -> int:
        return int(self.client.ok("GET", "/api/status")["pid"])

    @property
    def log(self) -> str:
        return (self.release / "log" / f"{self.name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def node(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A release node with the API, a short check timeout and secrets in its settings."""
    name = f"iso{os.getpid()}"
    port = free_port()
    reports = tmp_path_factory.mktemp("reports") / "out"
    env = {
        "AMOC_API_PORT": str(port),
        "AMOC_API_TOKEN": TOKEN,
        "AMOC_SCENARIO_CHECK_TIMEOUT": str(CHECK_TIMEOUT_S * 1000),
        "AMOC_GRAPHITE_EVENTS_URL": EVENTS_URL,
        "AMOC_REPORT_DIR": str(reports),
        "AMOC_INTERARRIVAL": "0",
    }
    started = amoc(release, "--name", name, "start", env=env)
    assert started.returncode == 0, started.stderr
    node = Node(release, name, Client(port), reports)
    pid = node.pid
    try:
        yield node
    finally:
        stopped = amoc(release, "--name", name, "stop")
        assert stopped.returncode == 0, stopped.stderr
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _checkers(pid: int) -> list[int]:
    """Pids of the scenario checks the node `pid` has running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"scenario_check" in cmdline:
            found.append(int(entry.name))
    return found


def upload(client: Client, name: str, source: str, **extra: Any) -> Answer:
    return client.call("POST", "/api/scenarios", {"name": name, "source": source, **extra})


def idle(client: Client) -> None:
    client.ok("POST", "/api/stop")
    client.wait(lambda s: s["state"] == "idle")


def test_exit_at_import_is_refused_and_the_node_lives(node: Node) -> None:
    client = node.client
    idle(client)
    pid = node.pid
    source = '"""Exits."""\nraise SystemExit(3)\n\nasync def start(user_id):\n    pass\n'
    answer = upload(client, "exits", source).refused(400, "source")
    assert "failed to import: SystemExit(3)" in answer.body["error"], answer.body
    answer = upload(client, "interrupts", "raise KeyboardInterrupt\n").refused(400, "source")
    assert "KeyboardInterrupt" in answer.body["error"]
    assert node.pid == pid and client.ok("GET", "/api/status")["state"] == "idle"
    assert not (node.release / "priv" / "scenarios" / "exits.py").exists()


def test_blocking_uploads_time_out_while_the_node_answers(node: Node) -> None:
    client = node.client
    idle(client)
    assert upload(client, "patient", PATIENT).status == 201
    client.ok("POST", "/api/run", {"scenario": "patient", "users": 5})
    client.wait(lambda s: s["users"]["running"] == 5)
    blocking = '"""Blocks."""\nimport time\ntime.sleep(60)\n\nasync def start(u):\n    pass\n'
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = [
            pool.submit(upload, client, f"blocks{i}", blocking + f"# {i}\n") for i in range(8)
        ]
        time.sleep(1)
        assert len(_checkers(node.pid)) == 8  # each in its own process
        while not all(a.done() for a in answers):  # meanwhile the API answers at once
            asked = time.monotonic()
            status = client.ok("GET", "/api/status")
            assert time.monotonic() - asked < 1.0
            assert status["state"] == "running" and status["users"]["running"] == 5
            assert time.monotonic() - began < 4 * CHECK_TIMEOUT_S, "the checks were not stopped"
            time.sleep(0.2)
    for answer in answers:
        refused = answer.result().refused(400, "source")
        assert f"still importing after {CHECK_TIMEOUT_S} s" in refused.body["error"]
    assert time.monotonic() - began < 4 * CHECK_TIMEOUT_S
    wait_until(lambda: not _checkers(node.pid), "the checkers killed and reaped", 5, every=0.1)
    assert client.ok("GET", "/api/status")["users"]["running"] == 5
    final = client.ok("POST", "/api/stop")
    assert final["users"]["started"] == 5 and final["users"]["failed_runs"] == 0


@pytest.mark.parametrize(("name", "restored"), [("dummy", "bundled"), ("json", None)])
def test_shadowing_needs_replace_and_delete_restores(
    node: Node, name: str, restored: str | None
) -> None:
    client = node.client
    idle(client)
    mine = f'"""Mine: replaces {name}."""\n\nasync def start(user_id):\n    pass\n'
    refused = upload(client, name, mine).refused(409, "name")
    assert "replace" in refused.body["error"] and "DELETE" in refused.body["error"]
    assert not (node.release / "priv" / "scenarios" / f"{name}.py").exists()
    answer = upload(client, name, mine, replace=True)
    assert answer.status == 201, answer.text
    got = client.ok("GET", f"/api/scenarios/{name}")
    assert got["origin"] == "uploaded" and got["source"] == mine and got["replaces"]
    deleted = client.ok("DELETE", f"/api/scenarios/{name}")
    assert deleted == {"name": name, "deleted": "uploaded", "now": restored}
    if restored:
        back = client.ok("GET", f"/api/scenarios/{name}")
        assert back["origin"] == "bundled" and "dummy_wait" in back["source"]
        client.call("DELETE", f"/api/scenarios/{name}").refused(409, "name")
    else:
        client.call("GET", f"/api/scenarios/{name}").refused(404, "name")
    client.call("DELETE", "/api/scenarios/nosuchupload").refused(404, "name")


def test_reading_a_scenario_runs_none_of_its_code(node: Node, tmp_path: Path) -> None:
    client = node.client
    idle(client)
    marker = tmp_path / "imported"
    source = (
        '"""Marks: appends its pid to a file at import."""\n'
        "import asyncio, os\n"
        "from amoc.config import param\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        'PARAMETERS = [param("marks_wait", 1000, "ms")]\n\n'
        "async def start(user_id):\n"
        "    await asyncio.sleep(60)\n"
    )
    assert upload(client, "marks", source).status == 201
    checked = marker.read_text().split()
    assert len(checked) == 1 and int(checked[0]) != node.pid  # the check's own process
    for _ in range(3):
        got = client.ok("GET", "/api/scenarios/marks")
        assert got["loadable"] and got["parameters"][0]["name"] == "marks_wait"
    assert "marks" in {s["name"] for s in client.ok("GET", "/api/scenarios")["scenarios"]}
    bad = {"scenario": "marks", "users": 1, "settings": {"marks_wait": "soon"}}
    client.call("POST", "/api/run", bad).refused(400, "settings.marks_wait")  # from the check
    assert marker.read_text().split() == checked  # nothing imported it again
    client.ok("POST", "/api/run", {"scenario": "marks", "users": 2})
    client.wait(lambda s: s["users"]["running"] == 2)
    lines = marker.read_text().split()
    assert lines[:1] == checked and lines[1:] == [str(node.pid)]  # once, in the node
    idle(client)


CRASHING = '''"""Crashing: users exit the interpreter, or interrupt it, in start."""

import asyncio

from amoc.config import amoc_config, param

PARAMETERS = [param("crash_how", "exit", "exit, interrupt, sync_exit or init_exit")]


def init():
    if amoc_config.get("crash_how") == "init_exit":
        raise SystemExit(5)


async def start(user_id):
    await asyncio.sleep(0.05)
    how = amoc_config.get("crash_how")
    if how == "exit":
        raise SystemExit(4)
    if how == "interrupt":
        raise KeyboardInterrupt
    await asyncio.get_running_loop().run_in_executor(None, _sync_exit)


def _sync_exit():
    raise SystemExit(7)


def terminate():
    raise SystemExit(6)
'''


def test_a_scenario_exiting_in_init_start_or_terminate_does_not_end_the_node(
    node: Node,
) -> None:
    client = node.client
    idle(client)
    pid = node.pid
    client.ok("PATCH", "/api/config", {"repeat_interval": 0, "repeat_num": 3})
    try:
        assert upload(client, "crashing", CRASHING).status == 201
        for how in ("exit", "interrupt", "sync_exit"):
            run = {"scenario": "crashing", "users": 4, "settings": {"crash_how": how}}
            client.ok("POST", "/api/run", run)
            done = client.wait(lambda s: s["users"]["failed_runs"] == 12, timeout=20)
            assert done["users"]["started"] == 4, done
            final = client.ok("POST", "/api/stop")  # terminate raises SystemExit(6)
            assert final["users"]["failed_runs"] == 12 and final["state"] == "idle", final
            assert node.pid == pid
        run = {"scenario": "crashing", "users": 4, "settings": {"crash_how": "init_exit"}}
        answer = client.call("POST", "/api/run", run).refused(400, "scenario")
        assert "init" in answer.body["error"] and "SystemExit(5)" in answer.body["error"]
        status = client.ok("GET", "/api/status")
        assert status["pid"] == pid and status["state"] == "idle"
        assert "crashing" in node.log and "SystemExit(4)" in node.log
    finally:
        client.ok("PATCH", "/api/config", {"repeat_interval": 60_000, "repeat_num": "infinity"})


def test_secrets_are_masked_in_the_api_and_the_private_report(node: Node) -> None:
    client = node.client
    idle(client)
    answer = client.call("GET", "/api/config")
    assert answer.status == 200
    assert TOKEN not in json.dumps([r["value"] for r in answer.body["parameters"]])
    assert "pa55-w0rd-x" not in answer.text and "grapher" not in answer.text
    rows = {r["name"]: r for r in answer.body["parameters"]}
    assert rows["api_token"]["value"] == "***" and rows["api_token"]["secret"]
    assert rows["graphite_events_url"]["value"] == "http://***@127.0.0.1:9/events/"
    client.ok("POST", "/api/run", {"scenario": "dummy", "users": 2, "comment": "secrets"})
    client.wait(lambda s: s["users"]["running"] == 2)
    client.ok("POST", "/api/stop")
    wait_until(
        lambda: list(node.reports.glob("*-dummy/index.html")),
        lambda: f"the report, among {list(node.reports.rglob('*'))}",
        every=0.1,
    )
    (directory,) = {p.parent for p in node.reports.glob("*-dummy/index.html")}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = sorted(p.name for p in directory.iterdir())
    assert {"index.html", "series.csv", "summary.json"} <= set(names)
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        text = path.read_text()
        assert "pa55-w0rd-x" not in text and f">{TOKEN}<" not in text, path
    assert "http://***@127.0.0.1:9/events/" in (directory / "index.html").read_text()
    assert "pa55-w0rd-x" not in node.log


def test_a_token_in_the_query_is_refused_and_not_logged(node: Node) -> None:
    client = node.client
    marker = "q7z-not-a-token"
    for path in (f"/api/status?token={marker}", f"/api/config?access_token={marker}"):
        for token in (None, ""):  # with or without the header
            answer = client.call("GET", path, token=token).refused(401, "Authorization")
            assert "query string" in answer.body["error"] and "header" in answer.body["error"]
    assert client.call("GET", "/api/status").status == 200
    assert marker not in node.log
    assert '"GET /api/status"' in node.log  # the access log is written, without the query


def test_patch_of_a_start_only_setting_names_the_restart(node: Node) -> None:
    client = node.client
    for name, value in (("prometheus_port", 9100), ("graphite_host", "127.0.0.1")):
        answer = client.call("PATCH", "/api/config", {name: value}).refused(400, name)
        assert "read when the node starts" in answer.body["error"]
        assert f"AMOC_{name.upper()}" in answer.body["error"]
        assert "restart the node" in answer.body["error"]
    rows = {r["name"]: r for r in client.ok("GET", "/api/config")["parameters"]}
    assert rows["prometheus_port"]["value"] is None and not rows["prometheus_port"]["settable"]


def test_twenty_parallel_runs_admit_one(node: Node) -> None:
    client = node.client
    idle(client)
    assert upload(client, "patient", PATIENT).status == 201  # again: its own upload
    gate = threading.Barrier(20)

    def run(i: int) -> Answer:
        gate.wait(10)
        return client.call("POST", "/api/run", {"scenario": "patient", "first": 1, "last": 50})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(run, range(20)))
    accepted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(accepted) == 1, [a.text for a in answers]
    for answer in refused:
        answer.refused(409, "scenario")
        assert "'patient'" in answer.body["error"], answer.body
    running = client.wait(lambda s: s["users"]["running"] == 50)
    assert running["users"]["started"] == 50 and running["next_id"] == 51
    final = client.ok("POST", "/api/stop")
    assert final["users"]["started"] == 50
    time.sleep(0.5)  # an orphan would show up as running users or a gauge above 0
    after = client.ok("GET", "/api/status")
    assert after["state"] == "idle" and after["users"]["running"] == 0
    assert client.ok("GET", "/api/metrics")["metrics"].get("users.running", 0) == 0
