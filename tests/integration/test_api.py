"""The REST API through a real HTTP client: in-process on a Controller, then on a release node.

Every bad request is followed by a check that the running scenario did not move.
/api-docs is rendered by a real headless Chromium.
"""

from __future__ import annotations

import asyncio
import html.parser
import http.client
import itertools
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from amoc.api import PARAMETERS, local_provider, start_node_api
from amoc.api.routes import ENDPOINTS
from amoc.api.server import ApiServer
from amoc.api.store import ScenarioStore
from amoc.config import Config
from amoc.errors import ConfigError
from amoc.home import Home
from amoc.runner import Controller
from tests.conftest import ROOT
from tests.e2e.terminal import amoc
from tests.net import free_port
from tests.wait import until, wait_until

pytestmark = pytest.mark.integration

TOKEN = "secret"
_NO_BODY: Any = object()
_names = itertools.count()

SLEEPER = '''"""Sleeper: each user sleeps `sleeper_wait` ms per run, then counts it."""

import asyncio

from amoc import metrics
from amoc.config import amoc_config, param

PARAMETERS = [param("sleeper_wait", 1000, "ms each run of start sleeps")]

_runs = metrics.counter("sleeper.runs")


async def start(user_id):
    await asyncio.sleep(amoc_config.get("sleeper_wait") / 1000)
    _runs.inc()
'''

# -- a small synchronous client (http.client); async tests call it in a thread -----------


@dataclass
class Answer:
    status: int
    body: Any
    text: str
    headers: http.client.HTTPMessage

    def refused(self, status: int, field: str | None) -> Answer:
        """Assert a JSON error with this status naming this field."""
        assert self.status == status, (self.status, self.text)
        assert self.headers.get_content_type() == "application/json", self.text
        assert set(self.body) == {"error", "field"} and self.body["error"], self.body
        assert self.body["field"] == field, self.body
        return self


class Client:
    """Calls the API of host:port with a bearer token."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port, self.token = port, token

    def call(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        *,
        token: str | None = "",
        raw: bytes | None = None,
    ) -> Answer:
        """One request; `token=""` means the client's own, None none at all."""
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else None if body is _NO_BODY else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        is_json = response.headers.get_content_type() == "application/json"
        return Answer(
            response.status, json.loads(text) if is_json else None, text, response.headers
        )

    def ok(self, method: str, path: str, body: Any = _NO_BODY, status: int = 200) -> Any:
        """The JSON answer of a call that must succeed."""
        answer = self.call(method, path, body)
        assert answer.status == status, (method, path, answer.status, answer.text)
        return answer.body

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> Any:
        """Poll /api/status until `predicate` holds on it."""
        return wait_until(
            lambda: self.ok("GET", "/api/status"),
            "the status to meet the condition",
            timeout,
            holds=predicate,
        )


# -- (a) in process: an ApiServer on a Controller, port 0 ---------------------------------

ASLEEP = '''"""Asleep: users sleep for a minute."""

import asyncio


async def start(user_id):
    await asyncio.sleep(60)
'''


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    """An ApiServer on a fresh Controller: (client, controller, store)."""
    bundled, uploaded = tmp_path / "scenarios", tmp_path / "uploaded"
    bundled.mkdir()
    (bundled / "asleep.py").write_text(ASLEEP)
    config = Config(environ={})
    config.set("interarrival", 0)
    controller = Controller([uploaded, bundled], config)
    store = ScenarioStore(controller.scenario_dirs, uploaded)
    server = ApiServer(local_provider(controller, "local1"), config, store, TOKEN, port=0)
    await server.start()
    try:
        yield Client(server.port), controller, store
    finally:
        await server.stop()
        await controller.close()


async def test_in_process_run_with_aiohttp_client(served: Any) -> None:
    client, controller, _store = served
    base = f"http://127.0.0.1:{client.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/status") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = {"scenario": "asleep", "users": 3, "comment": "in process"}
        async with http.post(f"{base}/api/run", json=body, headers=auth) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["scenario"] == "asleep"
        await until(lambda: controller.status().users.running >= 3, controller.status, timeout=5)
        bad = {"scenario": "asleep", "first": 0, "last": 3}
        async with http.post(f"{base}/api/run", json=bad, headers=auth) as response:
            assert response.status == 400
            assert await response.json() == {
                "error": "'first' must be >= 1, got 0",
                "field": "first",
            }
        async with http.get(f"{base}/api/cluster", headers=auth) as response:
            cluster = await response.json()
    assert cluster["count"] == 1 and cluster["nodes"][0]["node"] == "local1"
    assert controller.user_ids() == [1, 2, 3]
    assert controller.status().comment == "in process"


async def test_openapi_document_matches_the_routes(served: Any) -> None:
    client = served[0]
    doc = (await asyncio.to_thread(client.call, "GET", "/api-docs/openapi.json", token=None)).body
    assert doc["openapi"].startswith("3.")
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert operations == {(e.method, e.path) for e in ENDPOINTS}
    for item in doc["paths"].values():
        for op in item.values():
            assert op["summary"] and op["responses"]
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(op)):
                assert ref in doc["components"]["schemas"], ref
    # Every documented operation is routed (a missing route would be 404 or 405).
    for method, path in operations:
        answer = await asyncio.to_thread(client.call, method, path.replace("{name}", "asleep"), {})
        assert answer.status not in (404, 405), (method, path, answer.text)


class FakeCluster:
    """A provider as a master would plug in: two nodes, commands recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def status(self) -> dict[str, Any]:
        return {"node": "master", "role": "master", "state": "idle", "scenario": None}

    async def nodes(self) -> list[dict[str, Any]]:
        return [{"node": "n1", "state": "idle"}, {"node": "n2", "state": "idle"}]

    async def do(
        self, scenario: str, first: int, last: int, settings: dict[str, Any], comment: str
    ) -> dict[str, Any]:
        self.calls.append(("do", scenario, first, last, settings, comment))
        return {"state": "running", "scenario": scenario}

    async def add(self, count: int) -> dict[str, Any]:
        self.calls.append(("add", count))
        return {"state": "running"}

    async def remove(self, count: int, force: bool) -> dict[str, Any]:
        self.calls.append(("remove", count, force))
        return {"state": "running"}

    async def stop(self) -> dict[str, Any]:
        self.calls.append(("stop",))
        return {"state": "idle"}


async def test_a_cluster_provider_plugs_in(tmp_path: Path) -> None:
    (tmp_path / "asleep.py").write_text(ASLEEP)
    fake = FakeCluster()
    server = ApiServer(fake, Config(environ={}), ScenarioStore([tmp_path], tmp_path), TOKEN)
    await server.start()
    try:
        client = Client(server.port)
        cluster = await asyncio.to_thread(client.ok, "GET", "/api/cluster")
        assert cluster["role"] == "master" and [n["node"] for n in cluster["nodes"]] == ["n1", "n2"]
        body = {"scenario": "asleep", "first": 1, "last": 100, "settings": {"interarrival": 5}}
        await asyncio.to_thread(client.ok, "POST", "/api/run", body)
        await asyncio.to_thread(client.ok, "POST", "/api/add", {"count": 7})
        await asyncio.to_thread(client.ok, "POST", "/api/remove", {"count": 2, "force": True})
        await asyncio.to_thread(client.ok, "POST", "/api/stop")
    finally:
        await server.stop()
    assert fake.calls == [
        ("do", "asleep", 1, 100, {"interarrival": 5}, ""),
        ("add", 7),
        ("remove", 2, True),
        ("stop",),
    ]


async def test_node_api_is_off_by_default_and_writes_a_private_token(tmp_path: Path) -> None:
    home = Home(tmp_path, "tok")
    home.make_dirs()
    config = Config(environ={})
    config.declare(PARAMETERS)
    controller = Controller([home.uploaded_dir, home.scenarios_dir], config)
    assert await start_node_api(config, controller, home) is None  # api_port None: off
    with pytest.raises(ConfigError, match="'api_port' is read when the node starts.*restart"):
        config.set("api_port", 0)  # read at start: a change now would change nothing
    config = Config(environ={})
    config.declare(PARAMETERS)
    config.set("api_port", 0)  # before the start: taken
    server = await start_node_api(config, controller, home)
    assert server is not None
    try:
        token_file = home.run_dir / "api_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        client = Client(server.port, token)
        assert (await asyncio.to_thread(client.call, "GET", "/api/status")).status == 200
        wrong = await asyncio.to_thread(client.call, "GET", "/api/status", token="x" + token)
        wrong.refused(401, "Authorization")
        rows = (await asyncio.to_thread(client.ok, "GET", "/api/config"))["parameters"]
        assert token not in json.dumps(rows)
        assert {r["name"]: r["value"] for r in rows}["api_token"] is None  # generated, not set
        again = Config(environ={"AMOC_API_PORT": str(server.port)})  # a second API there
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(api_host"):
            await start_node_api(again, controller, home)
        assert not token_file.exists()  # the failed start took its token with it
    finally:
        await server.stop()
        await controller.close()
    assert not token_file.exists()  # the token dies with the API


# -- (b) a release node: bin/amoc start with AMOC_API_PORT and AMOC_API_TOKEN -------------


@dataclass
class NodeApi:
    release: Path
    name: str
    port: int
    client: Client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def node(release: Path) -> Iterator[NodeApi]:
    """A release node with the API on a free port; stopped at the end whatever happens."""
    name = f"api{os.getpid()}_{next(_names)}"
    port = free_port()
    env = {"AMOC_API_PORT": str(port), "AMOC_API_TOKEN": TOKEN}
    started = amoc(release, "--name", name, "start", env=env)
    assert started.returncode == 0, started.stderr
    try:
        yield NodeApi(release, name, port, Client(port))
    finally:
        stopped = amoc(release, "--name", name, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not (release / "run" / name / "api_token").exists()  # a token was configured


def undisturbed(client: Client, before: dict[str, Any]) -> None:
    """The run in `before` goes on exactly as it was."""
    now = client.ok("GET", "/api/status")
    for key in ("state", "scenario", "since", "comment"):
        assert now[key] == before[key], (key, now, before)
    for key in ("running", "pending", "started", "removed", "failed_runs"):
        assert now["users"][key] == before["users"][key], (key, now, before)


def test_node_drives_every_endpoint(node: NodeApi) -> None:
    client = node.client
    status = client.ok("GET", "/api/status")
    assert status["node"] == node.name and status["state"] == "idle"
    assert status["version"] and status["pid"] > 0

    names = {s["name"]: s for s in client.ok("GET", "/api/scenarios")["scenarios"]}
    assert names["dummy"]["origin"] == "bundled"
    dummy = client.ok("GET", "/api/scenarios/dummy")
    assert "async def start" in dummy["source"]
    assert dummy["parameters"] == [
        {
            "name": "dummy_wait",
            "default": 1000,
            "required": False,
            "description": "ms each run of start waits",
        }
    ]

    uploaded = client.ok("POST", "/api/scenarios", {"name": "sleeper", "source": SLEEPER}, 201)
    assert uploaded["replaced"] is None and uploaded["parameters"][0]["name"] == "sleeper_wait"
    assert (node.release / "priv" / "scenarios" / "sleeper.py").read_text() == SLEEPER
    listed = {s["name"]: s for s in client.ok("GET", "/api/scenarios")["scenarios"]}
    assert listed["sleeper"]["origin"] == "uploaded"
    assert listed["sleeper"]["description"].startswith("Sleeper:")

    rows = {r["name"]: r for r in client.ok("GET", "/api/config")["parameters"]}
    assert rows["repeat_num"]["value"] == "infinity"  # JSON has no Infinity: a string
    values = {"interarrival": 0, "repeat_interval": 0, "repeat_num": 50}
    config = client.ok("PATCH", "/api/config", values)
    assert config["warnings"] == [] and len(config["parameters"]) == 3
    rows = {r["name"]: r for r in client.ok("GET", "/api/config")["parameters"]}
    assert rows["interarrival"]["value"] == 0
    assert rows["interarrival"]["source"] == "run-time value"
    assert rows["repeat_num"]["value"] == 50
    assert rows["api_token"]["value"] == "***" and not rows["api_token"]["settable"]
    assert rows["api_port"]["value"] == node.port

    run = {
        "scenario": "sleeper",
        "first": 1,
        "last": 5,
        "comment": "over REST",
        "settings": {"sleeper_wait": 200},
    }
    assert client.ok("POST", "/api/run", run)["scenario"] == "sleeper"
    running = client.wait(lambda s: s["users"]["running"] == 5)
    assert running["comment"] == "over REST" and abs(running["since"] - time.time()) < 30
    added = client.ok("POST", "/api/add", {"count": 3})
    assert added["next_id"] == 9
    client.wait(lambda s: s["users"]["running"] == 8)
    removed = client.ok("POST", "/api/remove", {"count": 2, "force": True})
    assert removed["removed"] == [8, 7] and removed["users"]["running"] == 6
    gentle = client.ok("POST", "/api/remove", {"count": 1})
    assert gentle["removed"] == [6] and gentle["force"] is False
    client.wait(lambda s: s["users"]["stopping"] == 0 and s["users"]["running"] == 5)

    def runs() -> int:
        return int(client.ok("GET", "/api/metrics")["metrics"].get("sleeper.runs", 0))

    # Each user runs start again right away (repeat_interval 0).
    wait_until(lambda: runs() >= 10, lambda: client.ok("GET", "/api/metrics"), every=0.1)
    summary = client.ok("GET", "/api/metrics")["metrics"]
    assert summary["users.started"] >= 8

    cluster = client.ok("GET", "/api/cluster")
    assert cluster["count"] == 1 and cluster["nodes"][0]["node"] == node.name
    assert cluster["nodes"][0]["scenario"] == "sleeper"

    stopped = client.ok("POST", "/api/stop")
    assert stopped["state"] == "idle" and stopped["users"]["started"] == 8
    assert client.ok("GET", "/api/status")["state"] == "idle"


def test_node_refuses_bad_requests_and_disturbs_nothing(node: NodeApi) -> None:
    client = node.client
    client.ok("POST", "/api/stop")
    client.ok("PATCH", "/api/config", {"interarrival": 0})
    client.ok(
        "POST", "/api/run", {"scenario": "dummy", "users": 4, "settings": {"dummy_wait": 60000}}
    )
    before = client.wait(lambda s: s["users"]["running"] == 4)

    def refused(
        status: int, field: str | None, method: str, path: str, body: Any = _NO_BODY, **kw: Any
    ) -> Answer:
        answer = client.call(method, path, body, **kw).refused(status, field)
        undisturbed(client, before)
        return answer

    # Authentication: every call but the docs, uploads included, even on loopback.
    refused(401, "Authorization", "GET", "/api/status", token=None)
    refused(401, "Authorization", "GET", "/api/metrics", token="wrong")
    upload = {"name": "intruder", "source": "async def start(u): pass\n"}
    refused(401, "Authorization", "POST", "/api/scenarios", upload, token=None)
    refused(401, "Authorization", "POST", "/api/scenarios", upload, token="secreT")
    refused(401, "Authorization", "POST", "/api/stop", token=None)
    assert not (node.release / "priv" / "scenarios" / "intruder.py").exists()

    # Sizes: the body, then a scenario under the body limit but over the source limit.
    refused(413, "body", "POST", "/api/scenarios", raw=b" " * (600 * 1024))
    refused(413, "source", "POST", "/api/scenarios", {"name": "huge", "source": "#" * 300_000})

    # Malformed and mistyped bodies name the field.
    refused(400, "body", "POST", "/api/run", raw=b'{"scenario": "dummy",')
    refused(400, "body", "POST", "/api/add", raw=b"[1, 2]")
    refused(400, "first", "POST", "/api/run", {"scenario": "dummy", "first": "1", "last": 2})
    refused(400, "first", "POST", "/api/run", {"scenario": "dummy", "first": 0, "last": 2})
    refused(400, "last", "POST", "/api/run", {"scenario": "dummy", "first": 9, "last": 3})
    refused(400, "last", "POST", "/api/run", {"scenario": "dummy", "first": 1, "last": 10**9})
    refused(400, "last", "POST", "/api/run", {"scenario": "dummy", "first": 1, "last": None})
    refused(400, "users", "POST", "/api/run", {"scenario": "dummy", "users": 2, "last": 3})
    refused(400, "frist", "POST", "/api/run", {"scenario": "dummy", "frist": 1, "last": 2})
    refused(400, "count", "POST", "/api/add", {"count": "3"})
    refused(400, "count", "POST", "/api/add", {"count": 0})
    refused(400, "force", "POST", "/api/remove", {"count": 1, "force": "yes"})
    refused(
        400,
        "settings.nope",
        "POST",
        "/api/run",
        {"scenario": "dummy", "users": 1, "settings": {"nope": 1}},
    )
    refused(400, "repeat_num", "PATCH", "/api/config", {"interarrival": 5, "repeat_num": -1})
    refused(400, "interarival", "PATCH", "/api/config", {"interarival": 5})
    refused(400, "api_token", "PATCH", "/api/config", {"api_token": "mine"})
    rows = {r["name"]: r for r in client.ok("GET", "/api/config")["parameters"]}
    assert rows["interarrival"]["value"] == 0  # the valid value in a refused body was not set

    # Scenarios: unknown, path traversal, not compiling, without start.
    refused(404, "scenario", "POST", "/api/run", {"scenario": "nope", "users": 1})
    refused(404, "name", "GET", "/api/scenarios/nope")
    refused(400, "name", "GET", "/api/scenarios/..%2F..%2Fetc%2Fpasswd")
    refused(400, "name", "GET", "/api/scenarios/..%2Fpriv%2Fapp.config")
    refused(400, "scenario", "POST", "/api/run", {"scenario": "../dummy", "users": 1})
    for evil in ("../../evil", "/tmp/evil", "evil.py", "a/b"):
        refused(400, "name", "POST", "/api/scenarios", {"name": evil, "source": SLEEPER})
    assert not list(node.release.rglob("evil*")) and not Path("/tmp/evil.py").exists()
    broken = "async def start(user_id):\n    pass\n\ndef oops(:\n    pass\n"
    answer = refused(400, "source", "POST", "/api/scenarios", {"name": "broken", "source": broken})
    assert "line 4" in answer.body["error"], answer.body
    answer = refused(
        # A name of its own: the console tests write a startless.py into the shared release.
        400,
        "source",
        "POST",
        "/api/scenarios",
        {"name": "upload_startless", "source": "x = 1\n"},
    )
    assert "no start function" in answer.body["error"]
    assert not (node.release / "priv" / "scenarios" / "broken.py").exists()

    # What does not fit the running scenario.
    refused(409, "scenario", "POST", "/api/run", {"scenario": "dummy", "users": 2})
    refused(409, "count", "POST", "/api/remove", {"count": 5})
    refused(404, None, "GET", "/api/nothing")
    refused(405, None, "DELETE", "/api/status")

    final = client.ok("POST", "/api/stop")
    assert final["users"]["started"] == 4 and final["users"]["failed_runs"] == 0


# -- /api-docs in a real browser ----------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (installed by `make deps`; installed here when missing)."""
    found = shutil.which("chromium")
    if found is None:
        subprocess.run([str(ROOT / "tools" / "deps.sh"), "chromium"], check=True, timeout=600)
        found = shutil.which("chromium")
    assert found, "chromium is missing: run `make deps`"
    return found


def headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


class _Operations(html.parser.HTMLParser):
    """(method, path) of each operation the page's script rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[tuple[str, str]] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "details" and values.get("data-path") and values.get("data-method"):
            self.found.add((str(values["data-method"]), str(values["data-path"])))


def png_facts(data: bytes) -> tuple[int, int, int]:
    """Width, height and how many distinct byte values the pixels hold."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    pos, pixels = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            pixels += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(pixels)))


def test_api_docs_render_in_chromium(node: NodeApi, chromium: str, tmp_path: Path) -> None:
    page = node.client.call("GET", "/api-docs", token=None)
    assert page.status == 200 and page.headers.get_content_type() == "text/html"
    for outside in ("http://", "https://", "src=", "<link", "@import"):
        assert outside not in page.text, outside  # self-contained: works offline
    doc = node.client.call("GET", "/api-docs/openapi.json", token=None).body
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}

    shot = tmp_path / "api-docs.png"
    made = headless(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        f"{node.url}/api-docs",
    )
    assert shot.is_file(), made.stderr
    width, height, distinct = png_facts(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    assert shot.stat().st_size > 20_000 and distinct > 50, (shot.stat().st_size, distinct)

    dom = headless(chromium, tmp_path / "profile", "--dump-dom", f"{node.url}/api-docs")
    rendered = _Operations()
    rendered.feed(dom.stdout)
    assert rendered.found == documented, dom.stderr[-2000:]
    assert len(rendered.found) == len(ENDPOINTS)


# The page's "Send" buttons, driven as a user would: no token, then the token typed in.
TRY_IT = """(async () => {
  const answer = async (path, body) => {
    const op = document.querySelector(`details[data-path="${path}"]`);
    if (body !== undefined) op.querySelector("textarea").value = body;
    const out = op.querySelector(".response");
    out.textContent = "";
    op.querySelector("button").click();
    for (let i = 0; i < 200 && /^(|sending\\.\\.\\.)$/.test(out.textContent); i++) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    return out.textContent;
  };
  const token = document.getElementById("token");
  const without = await answer("/api/status");
  token.value = "TOKEN";
  token.dispatchEvent(new Event("input"));
  return [without, await answer("/api/status"),
          await answer("/api/run", '{"scenario": "dummy", "first": 9, "last": 1}')];
})()"""


async def test_api_docs_send_calls_with_the_token(
    node: NodeApi, chromium: str, tmp_path: Path
) -> None:
    port = free_port()
    browser = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--remote-debugging-port={port}",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            while True:  # until the browser answers on its debugging port
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                        targets = await response.json()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = itertools.count(1)

                async def devtools(method: str, **params: Any) -> dict[str, Any]:
                    await ws.send_json({"id": (n := next(ids)), "method": method, "params": params})
                    while (message := await ws.receive_json()).get("id") != n:
                        pass
                    return dict(message.get("result", {}))

                await devtools("Page.enable")
                await devtools("Page.navigate", url=f"{node.url}/api-docs")
                while (await ws.receive_json()).get("method") != "Page.loadEventFired":
                    pass
                result = await devtools(
                    "Runtime.evaluate",
                    expression=TRY_IT.replace("TOKEN", TOKEN),
                    awaitPromise=True,
                    returnByValue=True,
                )
    finally:
        browser.kill()
        await browser.wait()
    without, status, bad_run = result["result"]["value"]
    assert without.startswith("401") and '"field": "Authorization"' in without, without
    assert status.startswith("200") and f'"node": "{node.name}"' in status, status
    assert bad_run.startswith("400") and '"field": "last"' in bad_run, bad_run
